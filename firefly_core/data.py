"""Training data: JSONL readers for three formats, validation with file:line, tokenization with
loss labels, and length-grouped batching.

Formats (detected per line by their keys):

- ``firefly``: Firefly v1 ``{"kind", "input", "target"}`` (``kind`` optional);
- ``conversation``: multi-turn ``{"conversation": [{"human", "assistant"}, ...], "system"?}``;
- ``messages``: OpenAI-style ``{"messages": [{"role", "content"}, ...]}``.

Every sample becomes a list of `Message`s and is rendered by the model's `PromptFormat` (the same
code chat uses), so ids and the trainable mask come from one place. Labels are the ids where the
mask is True and -100 elsewhere (system, user, padding).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import ConfigError, DataError
from .formats import Message, PromptFormat
from .records import BadRecord, lone_surrogate, read_records

IGNORE_INDEX = -100
FORMATS = ("firefly", "conversation", "messages")


@dataclass
class Sample:
    """One valid line: where it came from and the conversation it holds."""

    path: str
    line: int
    format: str
    kind: str
    messages: list[Message]


@dataclass
class BadLine:
    path: str
    line: int
    reason: str
    wrong_kind: bool = False  # a valid line of another method's data (a pair in SFT data, ...)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def supervised(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)  # position 0 is never predicted


@dataclass
class TokenStats:
    """What tokenization did to a set of samples."""

    kept: int = 0
    truncated: int = 0  # cut at max_length but still with supervised tokens
    cut_away: int = 0  # supervised part entirely beyond max_length: dropped
    cut_away_where: list[str] = field(default_factory=list)  # file:line of the first few
    lengths: list[int] = field(default_factory=list)  # token lengths before truncation
    supervised_tokens: int = 0


@dataclass
class DataReport:
    """What `check_files` found: counts, bad lines, token lengths and one rendered example."""

    files: list[str]
    lines: int
    samples: list[Sample]
    bad: list[BadLine]
    by_format: dict[str, int]
    by_kind: dict[str, int]
    tokens: TokenStats | None = None
    histogram: list[tuple[int, int, int]] = field(default_factory=list)  # (low, high, count)
    example: list[tuple[str, bool]] = field(default_factory=list)  # (text piece, trained)
    max_length: int = 512

    @property
    def valid(self) -> int:
        return len(self.samples)


# ---------------------------------------------------------------- reading and validation


def _type_name(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


class _Invalid(Exception):
    pass


class WrongKind(ValueError):
    """A record that is valid data for another training method: an error naming file:line, not a
    line to skip, because the whole file was most likely given to the wrong method."""


# What each method's data looks like, for the messages that name the method a line belongs to.
KIND_NAMES = {
    "sft": "an instruction example (input/target, conversation or messages)",
    "dpo": "a preference pair (prompt, chosen, rejected)",
    "pretrain": "raw text (a 'text' field)",
}


def record_method(obj: Any) -> str | None:
    """The training method whose data `obj` looks like, by its keys ("sft", "dpo", "pretrain")."""
    if not isinstance(obj, dict):
        return None
    if "chosen" in obj or "rejected" in obj:
        return "dpo"
    turns = obj.get("conversation")
    if isinstance(turns, list) and turns and isinstance(turns[-1], dict) and (
        "chosen" in turns[-1] or "rejected" in turns[-1]
    ):
        return "dpo"  # a conversation whose last turn has two answers
    if "conversation" in obj or "messages" in obj or "input" in obj or "target" in obj:
        return "sft"
    if "text" in obj:
        return "pretrain"
    return None


def wrong_kind(found: str, wanted: str) -> WrongKind:
    return WrongKind(f"this line is {KIND_NAMES[found]}, not {KIND_NAMES[wanted]}: "
                     f"train it with --method {found}")


def _need_str(obj: dict, key: str, where: str = "", allow_empty: bool = False) -> str:
    if key not in obj:
        raise _Invalid(f"missing field {where}{key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise _Invalid(f"field {where}{key!r} must be a string, not {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise _Invalid(f"empty {where}{key!r}" if key != "target" else "empty target")
    return value


def _parse_firefly(obj: dict) -> tuple[str, list[Message]]:
    source = _need_str(obj, "input")
    target = _need_str(obj, "target")
    kind = obj.get("kind", "")
    if not isinstance(kind, str):
        raise _Invalid(f"field 'kind' must be a string, not {_type_name(kind)}")
    return kind or "(none)", [Message("user", source), Message("assistant", target)]


def _parse_conversation(obj: dict) -> tuple[str, list[Message]]:
    turns = obj["conversation"]
    if not isinstance(turns, list):
        raise _Invalid(f"field 'conversation' must be an array, not {_type_name(turns)}")
    if not turns:
        raise _Invalid("empty 'conversation'")
    messages: list[Message] = []
    system = obj.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise _Invalid(f"field 'system' must be a string, not {_type_name(system)}")
        if system.strip():
            messages.append(Message("system", system))
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise _Invalid(f"conversation turn {i} must be an object, not {_type_name(turn)}")
        messages.append(Message("user", _need_str(turn, "human", f"turn {i} ")))
        messages.append(Message("assistant", _need_str(turn, "assistant", f"turn {i} ")))
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) and obj.get("kind") else "(none)"
    return kind, messages


def _parse_messages(obj: dict) -> tuple[str, list[Message]]:
    items = obj["messages"]
    if not isinstance(items, list):
        raise _Invalid(f"field 'messages' must be an array, not {_type_name(items)}")
    messages: list[Message] = []
    for i, m in enumerate(items, 1):
        if not isinstance(m, dict):
            raise _Invalid(f"message {i} must be an object, not {_type_name(m)}")
        role = _need_str(m, "role", f"message {i} ")
        if role not in ("system", "user", "assistant"):
            raise _Invalid(f"message {i} has role {role!r}; expected system, user or assistant")
        content = _need_str(m, "content", f"message {i} ", allow_empty=role == "system")
        if role == "system" and not content.strip():
            continue
        messages.append(Message(role, content))  # type: ignore[arg-type]
    body = [m for m in messages if m.role != "system"]
    if messages and messages[0].role == "system" and any(m.role == "system" for m in messages[1:]):
        raise _Invalid("a system message is only allowed first")
    if not messages or messages[0].role not in ("system", "user") or not body:
        raise _Invalid("'messages' must start with a system or user message")
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise _Invalid(f"messages must alternate user/assistant; message {i + 1} is {m.role}")
    if body[-1].role != "assistant":
        raise _Invalid("the last message must be from the assistant (nothing to train on)")
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) and obj.get("kind") else "(none)"
    return kind, messages


def parse_record(obj: Any) -> tuple[str, str, list[Message]]:
    """(format, kind, messages) of one parsed record; raises `ValueError` with the reason."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {_type_name(obj)}")
    found = record_method(obj)
    if found not in (None, "sft"):
        raise wrong_kind(found, "sft")
    try:
        if "conversation" in obj:
            return ("conversation", *_parse_conversation(obj))
        if "messages" in obj:
            return ("messages", *_parse_messages(obj))
        if "input" in obj or "target" in obj:
            return ("firefly", *_parse_firefly(obj))
    except _Invalid as e:
        raise ValueError(str(e)) from None
    raise ValueError(
        "unknown format: expected keys input/target, conversation, or messages "
        f"(found: {', '.join(sorted(obj)) or 'none'})"
    )


def parse_line(text: str) -> tuple[str, str, list[Message]]:
    """(format, kind, messages) of one JSONL line; raises `ValueError` with the reason."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise ValueError("invalid JSON: nested too deeply") from None
    bad = lone_surrogate(obj)
    if bad:
        raise ValueError(f"a string holds a lone surrogate ({bad}), which is not text")
    return parse_record(obj)


def read_samples(paths: Iterable[str | Path]) -> tuple[list[Sample], list[BadLine], int]:
    """Read JSONL or JSON-array files: valid samples, bad lines (file:line and reason), and the
    number of records. Blank lines are skipped silently; a broken line never stops the file
    (`firefly_core.records` is the one reader)."""
    samples: list[Sample] = []
    bad: list[BadLine] = []
    lines = 0
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise DataError(f"no data file at {path}", "give an existing .jsonl file (the data check shows what one holds)")
        for rec in read_records(path):
            lines += 1
            if isinstance(rec, BadRecord):
                bad.append(BadLine(rec.path, rec.line, rec.reason))
                continue
            try:
                fmt, kind, messages = parse_record(rec.value)
            except ValueError as e:
                bad.append(BadLine(rec.path, rec.line, str(e), isinstance(e, WrongKind)))
                continue
            samples.append(Sample(rec.path, rec.line, fmt, kind, messages))
    return samples, bad, lines


def load_samples(paths: Iterable[str | Path], strict: bool = False) -> tuple[list[Sample], list[BadLine]]:
    """Read and validate; with `strict`, any bad line refuses the files (all listed)."""
    samples, bad, _ = read_samples(paths)
    check_bad_lines(bad, strict)
    if not samples:
        raise DataError("no valid samples in the data files", "run: firefly data check FILE")
    return samples, bad


def check_bad_lines(bad: Sequence[BadLine], strict: bool) -> None:
    """The one rule for bad lines when training, for every method's data: lines of another
    method's data are an error (`refuse_wrong_kind`); other bad lines are skipped and counted, or,
    with `strict`, refuse the files (all listed, the first 20 shown)."""
    refuse_wrong_kind(bad)
    if strict and bad:
        shown = "\n".join(str(b) for b in bad[:20])
        more = f"\n... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(
            f"{len(bad)} bad line(s) and --strict is on:\n{shown}{more}",
            "fix the lines, or drop --strict to skip them",
        )


def refuse_wrong_kind(bad: Sequence[BadLine]) -> None:
    """Lines of another method's data are an error naming them (file:line), never skipped."""
    wrong = [b for b in bad if b.wrong_kind]
    if wrong:
        lines: dict[tuple[str, str], list[int]] = {}  # a whole file given to the wrong method: one line
        for b in wrong:
            lines.setdefault((b.path, b.reason), []).append(b.line)
        shown = [f"{path}:{nums[0]}" + (f" (and {len(nums) - 1} more lines)" if len(nums) > 1 else "") + f": {reason}"
                 for (path, reason), nums in list(lines.items())[:5]]
        raise DataError("\n".join(shown), "give each method its own files (see: firefly data check FILE)")


# ---------------------------------------------------------------- tokenization


def tokenize_sample(fmt: PromptFormat, tokenizer, messages: Sequence[Message], max_length: int) -> TokenizedSample:
    """Ids and labels (-100 where not trained) of one conversation, cut at `max_length`."""
    rendered = fmt.render(tokenizer, messages, add_generation_prompt=False)
    ids = rendered.ids
    labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, rendered.trainable)]
    truncated = len(ids) > max_length
    return TokenizedSample(ids[:max_length], labels[:max_length], truncated)


def tokenize_samples(
    samples: Sequence[Sample], fmt: PromptFormat, tokenizer, max_length: int
) -> tuple[list[TokenizedSample], TokenStats]:
    """Tokenize all samples; the ones whose supervised part is cut away entirely are dropped and
    counted (the original recipe trained on them silently, with a zero loss)."""
    out: list[TokenizedSample] = []
    stats = TokenStats()
    for s in samples:
        full = fmt.render(tokenizer, s.messages, add_generation_prompt=False)
        stats.lengths.append(len(full.ids))
        ids = full.ids[:max_length]
        labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, full.trainable)]
        ts = TokenizedSample(ids, labels, len(full.ids) > max_length)
        if ts.supervised == 0:
            stats.cut_away += 1
            if len(stats.cut_away_where) < 5:
                stats.cut_away_where.append(f"{s.path}:{s.line}")
            continue
        stats.truncated += ts.truncated
        stats.supervised_tokens += ts.supervised
        out.append(ts)
    stats.kept = len(out)
    return out, stats


def length_histogram(lengths: Sequence[int], max_length: int, bins: int = 8) -> list[tuple[int, int, int]]:
    """Counts of lengths in `bins` equal ranges up to max_length, plus one for longer ones."""
    if not lengths:
        return []
    width = max(1, math.ceil(max_length / bins))
    counts = Counter(min(n // width, bins) for n in lengths)
    rows = [(i * width, (i + 1) * width - 1, counts.get(i, 0)) for i in range(bins)]
    if counts.get(bins):
        rows.append((bins * width, max(lengths), counts[bins]))
    return rows


def rendered_pieces(fmt: PromptFormat, tokenizer, messages: Sequence[Message]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) runs, for showing which tokens are trained."""
    r = fmt.render(tokenizer, messages, add_generation_prompt=False)
    pieces: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(r.ids) + 1):
        if i == len(r.ids) or r.trainable[i] != r.trainable[start]:
            pieces.append((tokenizer.decode(r.ids[start:i], skip_special_tokens=False), r.trainable[start]))
            start = i
    return pieces


def check_files(paths, tokenizer=None, prompt_format: PromptFormat | None = None, max_length: int = 512) -> DataReport:
    """Validate data files: counts per format and kind, bad lines; with a tokenizer also token
    lengths, truncation, a histogram and one rendered example."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"--max-length must be a whole number of at least 1, not {max_length!r}")
    samples, bad, lines = read_samples(paths)
    report = DataReport(
        files=[str(p) for p in paths],
        lines=lines,
        samples=samples,
        bad=bad,
        by_format=dict(Counter(s.format for s in samples)),
        by_kind=dict(Counter(s.kind for s in samples).most_common()),
        max_length=max_length,
    )
    if tokenizer is not None and samples:
        if prompt_format is None:
            from .formats import resolve_format

            prompt_format = resolve_format(tokenizer)
        _, stats = tokenize_samples(samples, prompt_format, tokenizer, max_length)
        report.tokens = stats
        report.histogram = length_histogram(stats.lengths, max_length)
        report.example = rendered_pieces(prompt_format, tokenizer, samples[0].messages)
    return report


# ---------------------------------------------------------------- batching


def plan_epoch(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group: int = 64) -> list[list[int]]:
    """Micro-batches (lists of sample indices) of one epoch, grouped by length.

    Samples are shuffled, cut into mega-batches of `group` micro-batches, sorted by length inside
    each (so a micro-batch holds similar lengths and little padding), and the micro-batches are
    shuffled again. The order depends only on (seed, epoch), which is what makes resuming exact.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(items: Sequence[TokenizedSample], pad_id: int, pad_to_multiple: int = 1):
    """Right-padded tensors: input_ids, attention_mask, labels (-100 on padding)."""
    import torch

    width = max(len(t.input_ids) for t in items)
    if pad_to_multiple > 1:
        width = math.ceil(width / pad_to_multiple) * pad_to_multiple
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, t in enumerate(items):
        n = len(t.input_ids)
        ids[row, :n] = torch.tensor(t.input_ids)
        labels[row, :n] = torch.tensor(t.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def supervised_count(labels) -> int:
    """Tokens that contribute to the loss in a batch (labels are shifted by one inside it)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
