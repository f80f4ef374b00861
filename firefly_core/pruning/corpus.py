"""Streaming the texts of a pruning corpus: plain text files line by line, JSON records by string fields.

Nothing is loaded whole: files are read line by line, so a corpus larger than memory works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DataError
from ..records import BadRecord, is_json_file, iter_lines, read_records


def _strings(value: Any) -> Iterator[str]:
    """Every string value inside a JSON value (Firefly's {"conversation": [{"human": ...}]}
    included); keys are field names, not text. Iterative: records may nest deeply."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, list):
            stack.extend(reversed(v))


def iter_file_texts(path: Path) -> Iterator[str]:
    """The texts of one corpus file. JSON files (.jsonl, .ndjson, .json; a JSON array of records
    too) yield each string field of each record; any other file is plain text, line by line.
    A broken line is an error naming it: a pruning corpus decides which tokens exist, so it is
    not silently skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corpus file {path} does not exist")
    if is_json_file(path):
        for rec in read_records(path):
            if isinstance(rec, BadRecord):
                raise DataError(f"{rec}", "fix or remove the line")
            yield from _strings(rec.value)
        return
    for number, text, reason in iter_lines(path, keep_ends=True):
        if reason is not None:
            raise DataError(f"{path}:{number}: {reason}", "convert the file to UTF-8")
        yield text  # the newline stays: it is text the model sees too


def iter_corpus_texts(paths: Iterable[Path]) -> Iterator[str]:
    for p in paths:
        yield from iter_file_texts(Path(p))


def corpus_bytes(paths: Iterable[Path]) -> int:
    """Total size on disk, for progress."""
    return sum(Path(p).stat().st_size for p in paths if Path(p).is_file())
