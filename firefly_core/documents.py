"""Raw text for continued pretraining: documents from .txt files and JSONL `text` fields, and
their tokens (every token trained), cut into pieces of at most max_length.

A .txt file holds one document per blank-line-separated block, so a file without blank lines is
one document. JSON files (.jsonl, .json) hold one document per record's `text` field. Lines of
another method's data (instruction examples, preference pairs) are an error naming file:line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .data import BadLine, TokenizedSample, WrongKind, check_bad_lines, record_method, wrong_kind
from .errors import DataError
from .records import BadRecord, is_json_file, iter_lines, read_records


@dataclass
class Document:
    path: str
    line: int  # where the document starts
    text: str


@dataclass
class DocumentStats:
    documents: int = 0
    pieces: int = 0  # documents longer than max_length are cut into several pieces
    tokens: int = 0
    lengths: list[int] = field(default_factory=list)  # tokens per document


def _text_documents(path: Path, bad: list[BadLine]) -> Iterable[Document]:
    block: list[str] = []
    start = 0
    for number, text, reason in iter_lines(path, keep_ends=True):
        if reason is not None:
            bad.append(BadLine(str(path), number, reason))
            continue
        assert text is not None
        if text.strip():
            if not block:
                start = number
            block.append(text)
        elif block:
            yield Document(str(path), start, "".join(block).rstrip("\r\n"))
            block = []
    if block:
        yield Document(str(path), start, "".join(block).rstrip("\r\n"))


def _json_documents(path: Path, bad: list[BadLine]) -> Iterable[Document]:
    for rec in read_records(path):
        if isinstance(rec, BadRecord):
            bad.append(BadLine(rec.path, rec.line, rec.reason))
            continue
        found = record_method(rec.value)
        if found not in (None, "pretrain"):
            e: ValueError = wrong_kind(found, "pretrain")
            bad.append(BadLine(rec.path, rec.line, str(e), isinstance(e, WrongKind)))
            continue
        text = rec.value.get("text") if isinstance(rec.value, dict) else None
        if not isinstance(text, str) or not text.strip():
            reason = "missing field 'text'" if text is None else "field 'text' must be a non-empty string"
            bad.append(BadLine(rec.path, rec.line, reason))
            continue
        yield Document(rec.path, rec.line, text)


def read_documents(paths: Iterable[str | Path]) -> tuple[list[Document], list[BadLine]]:
    docs: list[Document] = []
    bad: list[BadLine] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise DataError(f"no data file at {path}", "give .txt files or .jsonl files with a 'text' field")
        docs.extend((_json_documents if is_json_file(path) else _text_documents)(path, bad))
    return docs, bad


def load_documents(paths: Iterable[str | Path], strict: bool = False) -> tuple[list[Document], list[BadLine]]:
    docs, bad = read_documents(paths)
    check_bad_lines(bad, strict)
    if not docs:
        raise DataError("no text in the data files", "give .txt files, or .jsonl files with a 'text' field")
    return docs, bad


def tokenize_documents(docs: Sequence[Document], tokenizer, max_length: int) -> tuple[list[TokenizedSample], DocumentStats]:
    """`bos + text + eos` per document (when the tokenizer has them), every token a label, cut
    into pieces of at most max_length (a piece of one token predicts nothing and is dropped)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    out: list[TokenizedSample] = []
    stats = DocumentStats()
    for d in docs:
        ids = ([bos] if bos is not None else []) + tokenizer.encode(d.text, add_special_tokens=False)
        ids += [eos] if eos is not None else []
        stats.documents += 1
        stats.lengths.append(len(ids))
        for k in range(0, len(ids), max_length):
            piece = ids[k : k + max_length]
            if len(piece) < 2:
                continue
            out.append(TokenizedSample(piece, list(piece), len(ids) > max_length))
            stats.tokens += len(piece) - 1
    stats.pieces = len(out)
    return out, stats


@dataclass
class DocumentReport:
    """What `firefly data check` shows for raw text: documents, bad lines, tokens and packing."""

    files: list[str]
    documents: list[Document]
    bad: list[BadLine]
    tokens: DocumentStats | None = None
    max_length: int = 512


def looks_like_text(paths: Iterable[str | Path]) -> bool:
    """Whether files are raw text for pretraining: .txt-like files, or JSON whose first record has `text`."""
    paths = [Path(p) for p in paths]
    if paths and all(p.is_file() and not is_json_file(p) for p in paths):
        return True
    for path in paths:
        if path.is_file() and is_json_file(path):
            for rec in read_records(path):
                if not isinstance(rec, BadRecord):
                    return record_method(rec.value) == "pretrain"
    return False


def check_documents(paths, tokenizer=None, max_length: int = 512) -> DocumentReport:
    docs, bad = read_documents(paths)
    report = DocumentReport([str(p) for p in paths], docs, bad, max_length=max_length)
    if tokenizer is not None and docs:
        _, report.tokens = tokenize_documents(docs, tokenizer, max_length)
    return report
