"""Reading user text and JSON records from files: the one reader `prune`, `train` and `data check` share.

Files from outside are untrusted, so every way a line can be broken is a bad record with its line
number, never a traceback and never a reason to drop the rest of the file:

- bytes are decoded line by line (invalid UTF-8 on line 3 is reported on line 3, the other lines
  are still read); a UTF-8 byte-order mark at the start of a file is accepted;
- JSON nested deeper than Python can parse (``[[[[...``) is a bad record, not a RecursionError;
- a string holding a lone surrogate (``"\\ud800"``) is a bad record: it is not text, and every
  tokenizer fails on it later;
- a file whose first character is ``[`` is a JSON array of records (the usual shape of Firefly,
  Alpaca and BELLE downloads), parsed incrementally, so it is never loaded whole.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .errors import DataError

BOM = "\ufeff"
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
CHUNK = 1 << 20
_SURROGATE = re.compile("[\ud800-\udfff]")
_WHITESPACE = " \t\r\n"


@dataclass(frozen=True)
class Record:
    """One parsed JSON value and where it starts (1-based line)."""

    path: str
    line: int
    value: Any


@dataclass(frozen=True)
class BadRecord:
    """A line (or array element) that could not be read, and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def is_json_file(path: Path) -> bool:
    """Whether a corpus file is read as JSON records (by suffix) rather than as plain text."""
    return Path(path).suffix.lower() in JSON_SUFFIXES


def _utf8_reason(raw: bytes, e: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"


def iter_lines(path: Path, keep_ends: bool = False) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, None) or (line number, None, reason) for each line; the newline is
    kept with `keep_ends`.

    Lines are decoded one by one so one bad byte costs one line; a BOM on line 1 is dropped."""
    path = Path(path)
    with _open(path) as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, None, _utf8_reason(raw, e)
                continue
            if number == 1 and text.startswith(BOM):
                text = text[1:]
            yield number, text if keep_ends else text.rstrip("\r\n"), None


def _open(path: Path) -> BinaryIO:
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no file"
        raise DataError(f"{path} is {what}, not a data file", "give a .jsonl, .json or text file")
    try:
        return path.open("rb")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None


def _loads(text: str) -> Any:
    """json.loads with Python's recursion limit turned into a reason (ValueError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise ValueError("invalid JSON: nested too deeply") from None


def lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate in any string of `value` (JSON's "\\ud800"), else None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            m = _SURROGATE.search(v)
            if m:
                return f"\\u{ord(m.group()):04x}"
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def _checked(path: str, line: int, value: Any) -> Record | BadRecord:
    bad = lone_surrogate(value)
    if bad:
        return BadRecord(path, line, f"a string holds a lone surrogate ({bad}), which is not text")
    return Record(path, line, value)


def _first_char(path: Path) -> str:
    """The first non-blank character of a file (BOM skipped), '' for an empty or binary start."""
    with _open(path) as f:
        head = f.read(4096)
    text = head.decode("utf-8", errors="ignore").lstrip(BOM + _WHITESPACE)
    return text[:1]


def read_records(path: str | Path) -> Iterator[Record | BadRecord]:
    """Every record of a JSONL file (one value a line, blank lines skipped) or of a JSON array file."""
    path = Path(path)
    if _first_char(path) == "[":
        yield from _array_records(path)
        return
    for number, text, reason in iter_lines(path):
        if reason is not None:
            yield BadRecord(str(path), number, reason)
            continue
        assert text is not None
        if not text.strip():
            continue
        try:
            value = _loads(text)
        except ValueError as e:
            yield BadRecord(str(path), number, str(e))
            continue
        yield _checked(str(path), number, value)


class _ArrayReader:
    """A JSON array read in chunks; each element is parsed on its own (json.raw_decode)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = _open(path)
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.buf = ""
        self.pos = 0
        self.line = 1  # line number of buf[pos]
        self.eof = False
        self.started = True

    def close(self) -> None:
        self.f.close()

    def more(self) -> bool:
        """Read another chunk; False at the end of the file."""
        if self.eof:
            return False
        raw = self.f.read(CHUNK)
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise ValueError(f"not valid UTF-8 ({e.reason})") from None
        if self.started:
            text = text.lstrip(BOM)
            self.started = not text
        if not raw:
            self.eof = True
        self.buf = self.buf[self.pos :] + text
        self.pos = 0
        return bool(raw)

    def advance(self, end: int) -> None:
        self.line += self.buf.count("\n", self.pos, end)
        self.pos = end

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the file), not consumed."""
        while True:
            end = self.pos
            while end < len(self.buf) and self.buf[end] in _WHITESPACE:
                end += 1
            self.advance(end)
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def value(self) -> Any:
        """The JSON value at the position (more chunks are read while it is incomplete)."""
        decoder = json.JSONDecoder()
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if not self.eof and self.more():
                    continue
                raise ValueError(f"invalid JSON: {e.msg}") from None
            except RecursionError:
                raise ValueError("invalid JSON: nested too deeply") from None
            if end == len(self.buf) and not self.eof and self.more():
                continue  # a number might go on in the next chunk
            self.advance(end)
            return value


def _array_records(path: Path) -> Iterator[Record | BadRecord]:
    reader = _ArrayReader(path)
    where = str(path)
    try:
        reader.peek()
        reader.advance(reader.pos + 1)  # the "["
        first = True
        while True:
            c = reader.peek()
            if c == "]":
                return
            if not first:
                if c != ",":
                    yield BadRecord(where, reader.line, "invalid JSON in the array: expected ',' or ']'; "
                                    "the rest of the file is not read")
                    return
                reader.advance(reader.pos + 1)
                reader.peek()
            first = False
            line = reader.line
            try:
                value = reader.value()
            except ValueError as e:
                yield BadRecord(where, line, f"{e}; the rest of the file is not read")
                return
            yield _checked(where, line, value)
    except ValueError as e:  # a bad byte: the array cannot be followed past it
        yield BadRecord(where, reader.line, f"{e}; the rest of the file is not read")
    finally:
        reader.close()
