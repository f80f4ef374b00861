"""Side by side: the same prompts through several models, the checks that catch a broken model, and
how closely two builds of one model agree.

What a fine-tune, a prune or an export can break, and the check for each:
- replies that never stop: a reply "stops" when the model ends it (a stop token or stop string)
  before `max_new_tokens`; the share of replies that stop is reported;
- loops: the repetition score of a reply is the share of its n-grams (n=4 tokens) already seen
  earlier in the same reply: 0 for varied text, towards 1 for a reply stuck in a loop;
- empty replies (nothing but white space);
- two builds of the same model (PyTorch vs its GGUF, an adapter vs its merged model): next-token
  agreement, the share of positions of the same text where both predict the same next token;
- perplexity on a held-out text (`--text FILE`): exp(mean negative log-likelihood per token).

Replies come from the chat's own generation entry point (`generation.generate_stream`) with the
prompt in the model's prompt format; greedy by default, so reruns give the same replies. Scores come
from the decode seam (`generation.score`), on every engine.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import DataError, FireflyError

REPETITION_N = 4
MAX_PROMPTS_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Reply:
    prompt: str
    text: str
    new_tokens: int
    stop_reason: str  # ReplyStats.stop_reason
    repetition: float

    @property
    def stopped(self) -> bool:
        """The model ended the reply itself (not cut at max_new_tokens or the window)."""
        return self.stop_reason in ("stop_token", "stop_string")

    @property
    def empty(self) -> bool:
        return not self.text.strip()


@dataclass
class ModelReplies:
    model: str
    label: str
    replies: list[Reply] = field(default_factory=list)
    perplexity: float | None = None

    def checks(self) -> dict[str, Any]:
        n = len(self.replies)
        return {
            "replies": n,
            "stopped": sum(r.stopped for r in self.replies),
            "empty": sum(r.empty for r in self.replies),
            "repetition": sum(r.repetition for r in self.replies) / n if n else 0.0,
            "looping": sum(r.repetition >= 0.5 for r in self.replies),
            "perplexity": self.perplexity,
        }


def repetition_score(ids: Sequence[int], n: int = REPETITION_N) -> float:
    """The share of the reply's n-grams that already occurred earlier in it (0 = none repeated)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeated = 0
    for g in grams:
        repeated += g in seen
        seen.add(g)
    return repeated / len(grams)


# ------------------------------------------------------------------------------------ prompts


def default_prompts_path() -> Path:
    return Path(str(resources.files("firefly_core") / "assets" / "compare_prompts.jsonl"))


def load_prompts(path: str | Path | None = None) -> list[str]:
    """Prompts from a JSONL file (`{"prompt": "..."}` a line) or a plain text file (one a line);
    default: the ~30 Chinese prompts shipped with firefly."""
    path = Path(path).expanduser() if path is not None else default_prompts_path()
    try:
        if path.stat().st_size > MAX_PROMPTS_BYTES:
            raise DataError(f"{path} is too large for a prompts file")
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path} does not exist", "pass a .jsonl ({\"prompt\": \"...\"} a line) or a text file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a prompts file") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    prompts = []
    jsonl = path.suffix.lower() == ".jsonl"
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise DataError(f"{path}, line {n} is not JSON", 'one {"prompt": "..."} a line') from None
            prompt = obj.get("prompt") if isinstance(obj, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise DataError(f"{path}, line {n} has no \"prompt\" text")
            prompts.append(prompt)
        else:
            prompts.append(line.strip())
    if not prompts:
        raise DataError(f"{path} has no prompts")
    return prompts


# ------------------------------------------------------------------------------------ replies


def reply_config(*, greedy: bool = True, seed: int | None = None, max_new_tokens: int = 200):
    """Greedy (and no repetition penalty, so loops show) unless sampling is asked for; then the
    chat's defaults with `seed`."""
    from ..generation.config import GenerationConfig

    if greedy:
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.0, seed=seed)
    return GenerationConfig(max_new_tokens=max_new_tokens, seed=seed)


def generate_replies(
    lm: Any,
    prompts: Sequence[str],
    config: Any,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[Reply]:
    """Each prompt as one user turn in the model's prompt format, answered by the chat's loop."""
    from ..formats import Message
    from ..generation.config import ReplyDone
    from ..generation.loop import generate_stream

    replies = []
    for k, prompt in enumerate(prompts):
        if cancel is not None and cancel.is_set():
            raise FireflyError("the comparison was cancelled")
        ids = lm.prompt_format.render(lm.tokenizer, [Message("user", prompt)], add_generation_prompt=True).ids
        done = None
        for event in generate_stream(lm, ids, config, cancel):
            if isinstance(event, ReplyDone):
                done = event
        assert done is not None
        reply_ids = lm.tokenizer.encode(done.text, add_special_tokens=False)
        replies.append(Reply(prompt, done.text, done.stats.new_tokens, done.stats.stop_reason, repetition_score(reply_ids)))
        if progress is not None:
            progress(k + 1, len(prompts))
    return replies


# ------------------------------------------------------------------------------------ scores


def _all_logits(lm: Any, ids: Sequence[int]):
    """Float32 logits of every position of `ids` in one pass, through the model's decoder."""
    import torch

    from ..generation.loop import decoder_for

    decoder = decoder_for(lm)
    with torch.inference_mode():
        ids = torch.tensor([list(ids)], dtype=torch.long, device=decoder.device)
        return decoder.forward(ids, decoder.new_cache(), every_position=True).float().cpu()


def _chunks(lm: Any, text: str) -> list[list[int]]:
    ids = lm.tokenizer.encode(text, add_special_tokens=False)
    window = max(2, min(int(getattr(lm, "context_length", 0) or 2048), 1024))
    return [ids[i : i + window] for i in range(0, len(ids), window) if len(ids[i : i + window]) >= 2]


def next_token_agreement(lm_a: Any, lm_b: Any, texts: Sequence[str]) -> tuple[int, int]:
    """(positions where both models predict the same next token, positions compared) over `texts`,
    tokenized by `lm_a`. The two must share a tokenizer (two builds of one model)."""
    if lm_a.tokenizer.get_vocab() != lm_b.tokenizer.get_vocab():
        raise FireflyError(
            "next-token agreement compares two builds of one model, but these two have different vocabularies",
            "compare a model with its GGUF, its merged adapter or a checkpoint",
        )
    same = total = 0
    for text in texts:
        for chunk in _chunks(lm_a, text):
            a = _all_logits(lm_a, chunk).argmax(-1)
            b = _all_logits(lm_b, chunk).argmax(-1)
            same += int((a == b).sum())
            total += len(chunk)
    return same, total


def perplexity(lm: Any, text: str) -> float:
    """exp(mean negative log-likelihood) of the text's tokens, each window of the context scored on
    its own (its first token is the context)."""
    from ..generation.score import score_continuations

    nll = 0.0
    count = 0
    for chunk in _chunks(lm, text):
        nll -= score_continuations(lm, chunk[:1], [chunk[1:]])[0].logprob
        count += len(chunk) - 1
    if not count:
        raise DataError("the text is too short to measure perplexity (fewer than 2 tokens)")
    return math.exp(nll / count)
