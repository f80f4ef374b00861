"""Streaming the texts of a pruning corpus: plain text files line by line, JSONL by string fields.

Nothing is loaded whole: files are read line by line, so a corpus larger than memory works.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson")


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value (Firefly's {"conversation": [{"human": ...}]} included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def iter_file_texts(path: Path) -> Iterator[str]:
    """The texts of one corpus file; JSONL (by suffix) yields each string field of each record."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corpus file {path} does not exist")
    is_jsonl = path.suffix.lower() in JSONL_SUFFIXES
    # Binary lines decoded one by one, so a bad byte is reported on its own line.
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # drop a BOM
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})", "convert the file to UTF-8") from None
            if not is_jsonl:
                yield line  # the newline stays: it is text the model sees too
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})", "fix or remove the line") from None
            yield from _strings(record)


def iter_corpus_texts(paths: Iterable[Path]) -> Iterator[str]:
    for p in paths:
        yield from iter_file_texts(Path(p))


def corpus_bytes(paths: Iterable[Path]) -> int:
    """Total size on disk, for progress."""
    return sum(Path(p).stat().st_size for p in paths if Path(p).is_file())
