"""Scoring an exam with a model: the harness's log-likelihood of each answer, and the protocol
that goes with every number.

Tokenization is lm-evaluation-harness's `HFLM._encode_pair` (0.4.x): trailing white space of the
context moves to the front of the continuation; the context is encoded alone and the whole
(context + continuation) is encoded, and the continuation's ids are the whole's ids past the
context's length (so a merge across the boundary is scored as the harness scores it). Special
tokens are the tokenizer's default (0.4.13's `tok_encode` with `add_bos_token` unset: a Llama-style
tokenizer prepends BOS, BLOOM's and Qwen2's add nothing), except for a text that already starts with
the BOS (else EOS) token's text. An input longer than the harness's `max_length` + 1 is cut from the
left, as its `_loglikelihood_tokens` does.

The forward passes go through the decode seam (`generation.score.score_continuations`): the
subject's few-shot header is the same for every question, so one decoder cache per subject keeps
its keys/values and each question prefills only its own tokens; four one-token letters are scored
from the context's last position, in no extra pass. Any engine the model service loads works.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from ..errors import FireflyError
from .benchmarks import HARNESS_TASK, SubjectExam, context_text, continuations, description_for, doc_to_text

HARNESS = "lm-evaluation-harness 0.4.13"
HARNESS_DEFAULT_MAX_LENGTH = 2048  # HFLM._DEFAULT_MAX_LENGTH
_HUGE_TOKENIZER_LIMIT = 1000000000000000019884624838656  # transformers' "no limit" model_max_length


class EvalCancelled(FireflyError):
    """An evaluation stopped by its cancel event (the questions scored so far are dropped)."""


@dataclass(frozen=True)
class Protocol:
    """How a number was measured: stored with every result so two numbers are only compared when
    they were measured the same way."""

    benchmark: str
    harness_task: str | None  # "ceval-valid", "cmmlu" (the lm-eval group reproduced), None for mc
    shots: int
    split: str
    dtype: str
    engine: str
    prompt_template: str | None  # None: plain text as the harness; else the chat format's name
    weights: str = ""  # what the weights read were (bfloat16, q8_0, …)
    harness: str = HARNESS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        template = f", {self.prompt_template} template" if self.prompt_template else ""
        return f"{self.benchmark} {self.split}, {self.shots}-shot, {self.engine} {self.weights or self.dtype}{template}"


@dataclass(frozen=True)
class QuestionResult:
    subject: str
    index: int
    loglikelihoods: tuple[float, ...]
    answer: str
    predicted: str

    @property
    def correct(self) -> bool:
        return self.answer == self.predicted

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "index": self.index,
            "loglikelihoods": list(self.loglikelihoods),
            "answer": self.answer,
            "predicted": self.predicted,
        }


@dataclass(frozen=True)
class EvalProgress:
    """Questions scored so far, for a progress bar and an ETA."""

    model: str
    subject: str
    done: int
    total: int
    elapsed_s: float

    @property
    def eta_s(self) -> float | None:
        if self.done == 0:
            return None
        return self.elapsed_s / self.done * (self.total - self.done)


@dataclass
class ModelResult:
    """One model's answers to one exam under one protocol."""

    model: str
    protocol: Protocol
    questions: list[QuestionResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.model} ({self.protocol.engine} {self.protocol.weights})" if self.protocol.weights else self.model


# ------------------------------------------------------------------------------------ the harness


def harness_max_length(lm: Any) -> int:
    """HFLM.max_length (lm-eval's resolve_max_length): in the text config (else the config) the
    first of n_positions / max_position_embeddings / n_ctx that is set, else the tokenizer's
    model_max_length unless it means "no limit", else 2048."""
    config = getattr(getattr(lm, "model", None), "config", None)
    if config is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(lm.path)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    tml = getattr(lm.tokenizer, "model_max_length", None)
    if tml is not None and tml != _HUGE_TOKENIZER_LIMIT:
        return int(tml)
    return HARNESS_DEFAULT_MAX_LENGTH


def _special_tokens(tokenizer: Any, text: str) -> dict[str, bool]:
    """HFLM.tok_encode's choice: the tokenizer's default, but none when the text already starts
    with the text of the prefix token (BOS, else EOS)."""
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix_id is not None:
        prefix = tokenizer.decode(prefix_id)
        if prefix and text.startswith(prefix):
            return {"add_special_tokens": False}
    return {}


def encode_pairs(tokenizer: Any, context: str, conts: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """HFLM._encode_pair for one context and several continuations (one tokenizer call)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        conts = [context[-n_spaces:] + c for c in conts]
        context = context[:-n_spaces]
    encoded = tokenizer([context] + [context + c for c in conts], **_special_tokens(tokenizer, context))["input_ids"]
    context_ids = list(encoded[0])
    return context_ids, [list(whole[len(context_ids):]) for whole in encoded[1:]]


# ------------------------------------------------------------------------------------ scoring


def score_exam(
    lm: Any,
    exams: Sequence[SubjectExam],
    shots: int,
    *,
    chat_template: bool = False,
    model: str = "",
    progress: Callable[[EvalProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[QuestionResult]:
    """Each question's log-likelihoods and predicted letter (the most likely; the first on a tie,
    as numpy's argmax in the harness). `chat_template`: 0-shot in the model's own prompt format
    (see `_chat_pair`; labelled in the protocol, not the harness's default protocol)."""
    from ..generation.loop import decoder_for
    from ..generation.score import score_continuations

    check_shots(exams, shots)
    decoder = decoder_for(lm)
    limit = min(harness_max_length(lm) + 1, int(getattr(lm, "context_length", 0) or 1 << 30))
    total = sum(len(e.items) for e in exams)
    done = 0
    t0 = time.perf_counter()
    results: list[QuestionResult] = []
    for exam in exams:
        prefix = decoder.new_cache()  # one per subject: its header is what is shared
        for item in exam.items:
            if cancel is not None and cancel.is_set():
                raise EvalCancelled("the evaluation was cancelled")
            if chat_template:
                ctx_ids, cont_ids = _chat_pair(lm, exam, item)
            else:
                ctx_ids, cont_ids = encode_pairs(lm.tokenizer, context_text(exam, item, shots), continuations(item))
            longest = len(ctx_ids) + max(len(c) for c in cont_ids)
            if longest <= limit:
                scores = score_continuations(lm, ctx_ids, cont_ids, prefix)
            else:  # the harness keeps the last `limit` tokens of context + continuation
                scores = [
                    score_continuations(lm, ctx_ids[len(ctx_ids) + len(c) - limit:], [c], prefix)[0] for c in cont_ids
                ]
            lls = tuple(s.logprob for s in scores)
            best = max(range(len(lls)), key=lambda i: (lls[i], -i))
            results.append(QuestionResult(exam.subject, item.index, lls, item.answer, item.letters[best]))
            done += 1
            if progress is not None:
                progress(EvalProgress(model, exam.subject, done, total, time.perf_counter() - t0))
    return results


def check_shots(exams: Sequence[SubjectExam], shots: int) -> None:
    if shots < 0:
        raise FireflyError(f"--shots must be 0 or more (got {shots})")
    for exam in exams:
        if shots > len(exam.dev):
            raise FireflyError(
                f"{shots}-shot needs {shots} dev examples of {exam.subject}, but the exam has {len(exam.dev)}",
                "use fewer --shots, or add the subject's dev file",
            )


def _chat_pair(lm: Any, exam: SubjectExam, item) -> tuple[list[int], list[list[int]]]:
    """0-shot in the model's prompt format, laid out as lm-eval's --apply_chat_template lays out a
    multiple-choice task: the description as the system message, the question as the user turn,
    and each letter with no delimiter as the start of the reply."""
    from ..formats import Message

    messages = [Message("system", description_for(exam.benchmark, exam.subject)), Message("user", doc_to_text(item))]
    rendered = lm.prompt_format.render(lm.tokenizer, messages, add_generation_prompt=True)
    return list(rendered.ids), [lm.tokenizer.encode(letter, add_special_tokens=False) for letter in item.letters]


# ------------------------------------------------------------------------------------ models


def evaluate_model(
    model: str,
    exams: Sequence[SubjectExam],
    *,
    shots: int,
    split: str,
    engine: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    quantize: str | None = None,
    chat_template: bool = False,
    progress: Callable[[EvalProgress], None] | None = None,
    status: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
) -> ModelResult:
    """Load `model` through the model service (the engine named) and score the exam."""
    from ..models.service import model_service, weights_label

    check_shots(exams, 0 if chat_template else shots)
    service = model_service()
    request = service.request_for(model, engine=engine, dtype=dtype, device=device, quantize=quantize)
    lm = service.get(request, status=(lambda s: status(s.message)) if status else None, cancel=cancel)
    benchmark = exams[0].benchmark if exams else "mc"
    protocol = Protocol(
        benchmark=benchmark,
        harness_task=None if chat_template else HARNESS_TASK.get(benchmark),
        shots=0 if chat_template else shots,
        split=split,
        dtype=str(lm.dtype).removeprefix("torch."),
        engine=lm.engine,
        prompt_template=lm.prompt_format.name if chat_template else None,
        weights=weights_label(lm),
    )
    t0 = time.perf_counter()
    with service.generation_lock(lm):
        questions = score_exam(
            lm, exams, 0 if chat_template else shots, chat_template=chat_template, model=model,
            progress=progress, cancel=cancel,
        )
    return ModelResult(model, protocol, questions, time.perf_counter() - t0)
