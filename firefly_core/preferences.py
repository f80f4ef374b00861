"""Preference pairs for DPO: reading (TRL's format and multi-turn conversations), validation with
file:line, tokenization with the model's prompt format, and what `firefly data check` shows.

Accepted lines (detected by their keys):

- TRL's explicit prompt: ``{"prompt", "chosen", "rejected", "system"?}``, each of prompt/chosen/
  rejected a string or a list of ``{"role", "content"}`` messages;
- TRL's implicit prompt: ``{"chosen": [messages], "rejected": [messages]}``, two whole
  conversations that differ only in their last assistant message;
- a Firefly conversation whose last turn has two answers:
  ``{"conversation": [{"human", "assistant"}, ..., {"human", "chosen", "rejected"}], "system"?}``.

Each pair becomes one prompt (a list of `Message`s ending with the user's) and two answers, and
both sides are rendered by the model's `PromptFormat` (the code chat and SFT use); only the tokens
of the last answer are trained (earlier assistant turns are prompt).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .data import IGNORE_INDEX, BadLine, TokenizedSample, WrongKind, check_bad_lines, record_method, wrong_kind
from .errors import ConfigError, DataError
from .formats import Message, PromptFormat
from .records import BadRecord, read_records


class PromptsDiffer(ValueError):
    """Chosen and rejected are not two answers to one prompt."""


@dataclass
class Pair:
    path: str
    line: int
    format: str  # "prompt" | "implicit" | "conversation"
    prompt: list[Message]  # ends with the user's message
    chosen: str
    rejected: str

    def conversation(self, side: str) -> list[Message]:
        return [*self.prompt, Message("assistant", self.chosen if side == "chosen" else self.rejected)]


@dataclass
class TokenizedPair:
    """The chosen and the rejected conversation, labels only on the last answer."""

    chosen: TokenizedSample
    rejected: TokenizedSample
    ref: tuple[float, float] | None = None  # precomputed reference log-probs (--precompute-ref)

    @property
    def input_ids(self) -> list[int]:  # for length grouping: the longer side
        return max(self.chosen.input_ids, self.rejected.input_ids, key=len)

    @property
    def supervised(self) -> int:
        return self.chosen.supervised + self.rejected.supervised

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


@dataclass
class PairStats:
    kept: int = 0
    truncated: int = 0
    cut_away: int = 0  # an answer entirely beyond max_length: skipped
    cut_away_where: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # longer side, before truncation
    supervised_tokens: int = 0


# ---------------------------------------------------------------- reading


def _type_name(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _messages(value: Any, field_name: str, default_role: str) -> list[Message]:
    """A string (one message of `default_role`) or a list of {role, content} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"empty {field_name!r}")
        return [Message(default_role, value)]  # type: ignore[arg-type]
    if not isinstance(value, list) or not value:
        raise ValueError(f"field {field_name!r} must be a string or a non-empty array of messages, "
                         f"not {_type_name(value) if value != [] else 'an empty array'}")
    out = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"{field_name} message {i} must be an object with string 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"{field_name} message {i} has role {m['role']!r}; expected system, user or assistant")
        out.append(Message(m["role"], m["content"]))
    return out


def _check_prompt(prompt: list[Message]) -> list[Message]:
    """System first (optional), then user/assistant alternating, ending with the user."""
    body = prompt[1:] if prompt and prompt[0].role == "system" else prompt
    if not body:
        raise ValueError("the prompt has no user message")
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise ValueError(f"prompt messages must alternate user/assistant; message {i + 1} is {m.role}")
        if not m.content.strip():
            raise ValueError(f"prompt message {i + 1} is empty")
    if body[-1].role != "user":
        raise ValueError("the prompt must end with a user message")
    return prompt


def _split_answer(messages: list[Message], side: str) -> tuple[list[Message], str]:
    if not messages or messages[-1].role != "assistant":
        raise ValueError(f"{side!r} must end with an assistant message")
    if not messages[-1].content.strip():
        raise ValueError(f"the {side} answer is empty")
    return messages[:-1], messages[-1].content


def _system(obj: dict) -> list[Message]:
    system = obj.get("system")
    if system is None:
        return []
    if not isinstance(system, str):
        raise ValueError(f"field 'system' must be a string, not {_type_name(system)}")
    return [Message("system", system)] if system.strip() else []


def parse_pair(obj: Any) -> tuple[str, list[Message], str, str]:
    """(format, prompt, chosen, rejected) of one record; `ValueError` (or `PromptsDiffer`,
    `WrongKind`) with the reason."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {_type_name(obj)}")
    found = record_method(obj)
    if found != "dpo":
        if found is None:
            raise ValueError("unknown format: expected keys prompt/chosen/rejected "
                             f"(found: {', '.join(sorted(obj)) or 'none'})")
        raise wrong_kind(found, "dpo")
    if "conversation" in obj:
        return ("conversation", *_parse_conversation_pair(obj))
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise ValueError(f"missing field {key!r}")
    if "prompt" in obj:
        prompt = _system(obj) + _messages(obj["prompt"], "prompt", "user")
        sides = {}
        for key in ("chosen", "rejected"):
            before, answer = _split_answer(_messages(obj[key], key, "assistant"), key)
            sides[key] = (prompt + before, answer)
        fmt = "prompt"
    else:
        sides = {}
        for key in ("chosen", "rejected"):
            if isinstance(obj[key], str):
                raise ValueError("without a 'prompt' field, 'chosen' and 'rejected' must be whole conversations "
                                 "(arrays of messages)")
            sides[key] = _split_answer(_system(obj) + _messages(obj[key], key, "assistant"), key)
        fmt = "implicit"
    (p_c, chosen), (p_r, rejected) = sides["chosen"], sides["rejected"]
    if p_c != p_r:
        k = next((i for i, (a, b) in enumerate(zip(p_c, p_r)) if a != b), min(len(p_c), len(p_r)))
        raise PromptsDiffer(f"chosen and rejected have different prompts (they differ at message {k + 1}); "
                            "a pair is two answers to one prompt")
    if chosen == rejected:
        raise ValueError("the chosen and the rejected answer are the same (nothing to prefer)")
    return fmt, _check_prompt(p_c), chosen, rejected


def _parse_conversation_pair(obj: dict) -> tuple[list[Message], str, str]:
    turns = obj["conversation"]
    if not isinstance(turns, list) or not turns:
        raise ValueError("field 'conversation' must be a non-empty array of turns")
    prompt = _system(obj)
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise ValueError(f"conversation turn {i} must be an object, not {_type_name(turn)}")
        if not isinstance(turn.get("human"), str) or not turn["human"].strip():
            raise ValueError(f"conversation turn {i} needs a non-empty string 'human'")
        prompt.append(Message("user", turn["human"]))
        if i < len(turns):
            if not isinstance(turn.get("assistant"), str) or not turn["assistant"].strip():
                raise ValueError(f"conversation turn {i} needs a non-empty string 'assistant'")
            prompt.append(Message("assistant", turn["assistant"]))
    last = turns[-1]
    answers = []
    for key in ("chosen", "rejected"):
        value = last.get(key, obj.get(key))
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"the last conversation turn needs a non-empty string {key!r}")
        answers.append(value)
    if answers[0] == answers[1]:
        raise ValueError("the chosen and the rejected answer are the same (nothing to prefer)")
    return _check_prompt(prompt), answers[0], answers[1]


def read_pairs(paths: Iterable[str | Path]) -> tuple[list[Pair], list[BadLine], int, int]:
    """Valid pairs, bad lines (file:line and reason), the number of records, and how many of the
    bad lines are pairs whose prompts differ between chosen and rejected."""
    pairs: list[Pair] = []
    bad: list[BadLine] = []
    records = differ = 0
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise DataError(f"no data file at {path}", "give a .jsonl file of preference pairs")
        for rec in read_records(path):
            records += 1
            if isinstance(rec, BadRecord):
                bad.append(BadLine(rec.path, rec.line, rec.reason))
                continue
            try:
                fmt, prompt, chosen, rejected = parse_pair(rec.value)
            except ValueError as e:
                differ += isinstance(e, PromptsDiffer)
                bad.append(BadLine(rec.path, rec.line, str(e), isinstance(e, WrongKind)))
                continue
            pairs.append(Pair(rec.path, rec.line, fmt, prompt, chosen, rejected))
    return pairs, bad, records, differ


def load_pairs(paths: Iterable[str | Path], strict: bool = False) -> tuple[list[Pair], list[BadLine]]:
    """Read and validate for training: lines of another method's data are an error (file:line);
    other bad lines are skipped and counted, or refuse the files with `strict`."""
    pairs, bad, _, _ = read_pairs(paths)
    check_bad_lines(bad, strict)
    if not pairs:
        raise DataError("no valid preference pairs in the data files", "run: firefly data check FILE")
    return pairs, bad


# ---------------------------------------------------------------- tokenization


def tokenize_answer(fmt: PromptFormat, tokenizer, messages: Sequence[Message], max_length: int) -> tuple[TokenizedSample, int]:
    """Ids and labels of a conversation where only the last answer is trained; and the full length."""
    r = fmt.render(tokenizer, messages, add_generation_prompt=False)
    last_start = None  # start of the last trained run: the last assistant message
    for i, keep in enumerate(r.trainable):
        if keep and (i == 0 or not r.trainable[i - 1]):
            last_start = i
    labels = [t if (keep and last_start is not None and i >= last_start) else IGNORE_INDEX
              for i, (t, keep) in enumerate(zip(r.ids, r.trainable))]
    return TokenizedSample(r.ids[:max_length], labels[:max_length], len(r.ids) > max_length), len(r.ids)


def tokenize_pairs(pairs: Sequence[Pair], fmt: PromptFormat, tokenizer, max_length: int) -> tuple[list[TokenizedPair], PairStats]:
    """Tokenize both sides; a pair with an answer cut away entirely by max_length is skipped and counted."""
    out: list[TokenizedPair] = []
    stats = PairStats()
    for p in pairs:
        chosen, n_c = tokenize_answer(fmt, tokenizer, p.conversation("chosen"), max_length)
        rejected, n_r = tokenize_answer(fmt, tokenizer, p.conversation("rejected"), max_length)
        stats.lengths.append(max(n_c, n_r))
        if chosen.supervised == 0 or rejected.supervised == 0:
            stats.cut_away += 1
            if len(stats.cut_away_where) < 5:
                stats.cut_away_where.append(f"{p.path}:{p.line}")
            continue
        tp = TokenizedPair(chosen, rejected)
        stats.truncated += tp.truncated
        stats.supervised_tokens += tp.supervised
        out.append(tp)
    stats.kept = len(out)
    return out, stats


def collate_pairs(items: Sequence[TokenizedPair], pad_id: int):
    """One padded batch: the chosen rows first, then the rejected rows (TRL's layout)."""
    from .data import collate

    batch = collate([t.chosen for t in items] + [t.rejected for t in items], pad_id)
    if all(t.ref is not None for t in items):
        import torch

        ref = [t.ref for t in items]
        batch["ref_logps"] = torch.tensor([r[0] for r in ref] + [r[1] for r in ref], dtype=torch.float64)
    return batch


# ---------------------------------------------------------------- data check


@dataclass
class PairReport:
    files: list[str]
    lines: int
    pairs: list[Pair]
    bad: list[BadLine]
    prompts_differ: int
    by_format: dict[str, int]
    tokens: PairStats | None = None
    example: dict[str, list[tuple[str, bool, bool]]] = field(default_factory=dict)  # side -> (text, trained, differs)
    max_length: int = 512

    @property
    def valid(self) -> int:
        return len(self.pairs)


def _pieces(tokenizer, sample: TokenizedSample, differs: list[bool]) -> list[tuple[str, bool, bool]]:
    """Runs of (text, trained, differs from the other side). A run never ends inside a character
    (byte-level tokens split CJK characters): it goes on, and differs if any of its tokens does."""
    ids = sample.input_ids
    trained = [lab != IGNORE_INDEX for lab in sample.labels]
    out: list[tuple[str, bool, bool]] = []
    start, diff = 0, differs[0] if differs else False
    for i in range(1, len(ids) + 1):
        if i < len(ids) and trained[i] == trained[start] and differs[i] == diff:
            continue
        text = tokenizer.decode(ids[start:i], skip_special_tokens=False)
        if i < len(ids) and trained[i] == trained[start] and text.endswith("\ufffd"):
            diff = diff or differs[i]  # a character cut in two: keep it whole
            continue
        if out and out[-1][1:] == (trained[start], diff):
            out[-1] = (out[-1][0] + text, trained[start], diff)
        else:
            out.append((text, trained[start], diff))
        if i < len(ids):
            start, diff = i, differs[i]
    return out


def _differing(a: list[int], b: list[int]) -> tuple[list[bool], list[bool]]:
    """Which tokens of each side are not shared with the other (difflib on token ids)."""
    import difflib

    da, db = [True] * len(a), [True] * len(b)
    for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            da[block.a + k] = False
            db[block.b + k] = False
    return da, db


def looks_like_pairs(paths: Iterable[str | Path]) -> bool:
    """Whether the first record of the first file that has one is a preference pair."""
    for p in paths:
        path = Path(p)
        if not path.is_file():
            continue
        for rec in read_records(path):
            if isinstance(rec, BadRecord):
                continue
            return record_method(rec.value) == "dpo"
    return False


def check_pairs(paths, tokenizer=None, prompt_format: PromptFormat | None = None, max_length: int = 512) -> PairReport:
    """Validate preference files; with a tokenizer also token lengths, answers cut by max_length,
    and the first pair as trained, the tokens where chosen and rejected differ marked."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"--max-length must be a whole number of at least 1, not {max_length!r}")
    pairs, bad, lines, differ = read_pairs(paths)
    report = PairReport([str(p) for p in paths], lines, pairs, bad, differ,
                        dict(Counter(p.format for p in pairs)), max_length=max_length)
    if tokenizer is not None and pairs:
        if prompt_format is None:
            from .formats import resolve_format

            prompt_format = resolve_format(tokenizer)
        _, report.tokens = tokenize_pairs(pairs, prompt_format, tokenizer, max_length)
        first = pairs[0]
        c, _ = tokenize_answer(prompt_format, tokenizer, first.conversation("chosen"), 10**9)
        r, _ = tokenize_answer(prompt_format, tokenizer, first.conversation("rejected"), 10**9)
        dc, dr = _differing(c.input_ids, r.input_ids)
        report.example = {"chosen": _pieces(tokenizer, c, dc), "rejected": _pieces(tokenizer, r, dr)}
    return report
