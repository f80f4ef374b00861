"""Slicing vocabulary rows out of a safetensors checkpoint, tensor by tensor, in little memory.

The safetensors format is an 8-byte header length, a JSON header (dtype, shape and byte range of
each tensor) and the raw bytes. We read only headers. Each output file puts the unchanged tensors
first and the vocabulary tensors last, so the unchanged ones can be copied before the kept
vocabulary is known (pruning copies them in a background thread while it counts the corpus); they
are copied file-to-file by the kernel (`os.copy_file_range`, no bytes through Python). The kept
rows are then read straight into the new tensor with one `preadv` per run of consecutive ids, and
the header is written last into space reserved for it. Peak memory is the new embedding, whatever
the model size; dtypes are kept because bytes are copied, never converted. Sharded checkpoints
(model.safetensors.index.json) keep their shard layout.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidModelError, UnsupportedModelError

INDEX_FILE = "model.safetensors.index.json"
EMBED_SUFFIXES = ("word_embeddings.weight", "embed_tokens.weight", "wte.weight", "embed_in.weight", "tok_embeddings.weight")
HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight")
COPY_CHUNK = 64 << 20  # small enough that a cancel is seen quickly


@dataclass
class TensorEntry:
    name: str
    dtype: str
    shape: list[int]
    file: Path
    start: int  # absolute byte offsets in `file`
    end: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass
class Checkpoint:
    """The tensors of a safetensors checkpoint (one file or shards), from the headers only."""

    files: list[Path]
    tensors: dict[str, TensorEntry]
    file_metadata: dict[Path, dict[str, str] | None]
    index: dict[str, Any] | None = None

    def in_file(self, file: Path) -> list[TensorEntry]:
        return sorted((t for t in self.tensors.values() if t.file == file), key=lambda t: t.start)


@dataclass
class VocabTensors:
    """Which tensors are indexed by token id (their first dimension is the vocabulary)."""

    embedding: str
    lm_head: str | None
    others: list[str] = field(default_factory=list)  # e.g. an lm_head bias
    rows: int = 0  # the vocabulary dimension in the checkpoint (may exceed the tokenizer)

    @property
    def names(self) -> list[str]:
        return [self.embedding, *([self.lm_head] if self.lm_head else []), *self.others]


def _read_header(file: Path) -> tuple[dict[str, Any], int]:
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise InvalidModelError(f"{file} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 << 20:
            raise InvalidModelError(f"{file} is not a safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidModelError(f"{file} is not a safetensors file (bad header)") from None
    return header, 8 + n


def read_checkpoint(folder: Path) -> Checkpoint:
    """The checkpoint of a model folder: model.safetensors, or the shards its index lists."""
    folder = Path(folder)
    index = None
    if (folder / INDEX_FILE).is_file():
        index = json.loads((folder / INDEX_FILE).read_text("utf-8"))
        files = sorted({folder / f for f in index.get("weight_map", {}).values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise UnsupportedModelError(
                f"{folder} has only PyTorch .bin weights; pruning reads safetensors",
                "convert it once: load with transformers and save_pretrained(folder) (safetensors is the default)",
            )
        raise InvalidModelError(f"{folder} has no weights (*.safetensors)")
    tensors: dict[str, TensorEntry] = {}
    meta: dict[Path, dict[str, str] | None] = {}
    for file in files:
        if not file.is_file():
            raise InvalidModelError(f"{file.name} is listed in {INDEX_FILE} but missing", "download the model again")
        header, data_start = _read_header(file)
        meta[file] = header.pop("__metadata__", None)
        for name, h in header.items():
            b, e = h["data_offsets"]
            tensors[name] = TensorEntry(name, h["dtype"], list(h["shape"]), file, data_start + b, data_start + e)
    return Checkpoint(files, tensors, meta, index)


def _hidden_size(config: dict[str, Any]) -> int | None:
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def find_vocab_tensors(ckpt: Checkpoint, config: dict[str, Any]) -> VocabTensors:
    """Find the input embedding, the lm_head (absent when tied) and other vocabulary-indexed tensors."""
    two_d = {n: t for n, t in ckpt.tensors.items() if len(t.shape) == 2}
    embeds = [n for n in two_d if n.endswith(EMBED_SUFFIXES)]
    if not embeds:  # unknown architecture: the one [vocab_size, hidden] matrix that is not a head
        vocab, hidden = config.get("vocab_size"), _hidden_size(config)
        embeds = [
            n for n, t in two_d.items() if t.shape == [vocab, hidden] and not n.endswith(HEAD_SUFFIXES)
        ]
    if len(embeds) != 1:
        what = "no input embedding" if not embeds else f"several candidate embeddings ({', '.join(embeds)})"
        raise UnsupportedModelError(
            f"found {what} in the checkpoint",
            "pruning handles models with one standard token embedding (e.g. *.embed_tokens.weight) "
            "and an lm_head (or tied weights)",
        )
    embedding = embeds[0]
    rows = ckpt.tensors[embedding].shape[0]
    heads = [n for n in two_d if n.endswith(HEAD_SUFFIXES) and two_d[n].shape[0] == rows]
    if len(heads) > 1:
        raise UnsupportedModelError(f"several output heads in the checkpoint ({', '.join(heads)})")
    lm_head = heads[0] if heads else None
    tied = config.get("tie_word_embeddings", True)
    if lm_head is None and not tied:
        raise UnsupportedModelError(
            "the config says the embeddings are not tied, but the checkpoint has no lm_head",
            "is the checkpoint complete?",
        )
    others = []
    for n, t in ckpt.tensors.items():
        if n in (embedding, lm_head) or not t.shape or t.shape[0] != rows:
            continue
        if "lm_head" in n or "embed" in n or "logits_bias" in n:
            others.append(n)
        else:
            raise UnsupportedModelError(
                f"tensor {n} {t.shape} has the vocabulary's size ({rows}) but is not a known embedding or head",
                "this architecture is not supported by pruning",
            )
    return VocabTensors(embedding, lm_head, others, rows)


def count_params(ckpt: Checkpoint, vocab: VocabTensors, tied: bool, new_rows: int | None = None) -> int:
    """Parameters in the checkpoint (tied weights once), optionally with `new_rows` vocabulary rows."""
    total = 0
    for t in ckpt.tensors.values():
        if tied and t.name == vocab.lm_head:
            continue
        if new_rows is not None and t.name in vocab.names:
            total += t.numel // t.shape[0] * new_rows
        else:
            total += t.numel
    return total


def _copy_range(src_fd: int, dst_fd: int, src_offset: int, dst_offset: int, count: int, cancel: threading.Event) -> None:
    """Copy `count` bytes between two offsets, in the kernel where it can (plain reads otherwise)."""
    try:
        while count > 0 and not cancel.is_set():
            n = os.copy_file_range(src_fd, dst_fd, min(count, COPY_CHUNK), src_offset, dst_offset)
            if n == 0:
                raise InvalidModelError("a safetensors file ended early (truncated?)")
            src_offset, dst_offset, count = src_offset + n, dst_offset + n, count - n
        return
    except (AttributeError, OSError):  # no copy_file_range here: go on from where it stopped
        pass
    while count > 0 and not cancel.is_set():
        chunk = _pread(src_fd, min(count, 16 << 20), src_offset)
        if not chunk:
            raise InvalidModelError("a safetensors file ended early (truncated?)")
        _pwrite_all(dst_fd, chunk, dst_offset)
        src_offset, dst_offset, count = src_offset + len(chunk), dst_offset + len(chunk), count - len(chunk)


# Positional IO; the fallbacks (seek, then read/write) are for systems without pread/preadv
# (Windows). Each thread uses its own file descriptors, so seeking is safe.
_BINARY = getattr(os, "O_BINARY", 0)


def _pread(fd: int, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = _pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        if hasattr(os, "pwrite"):
            n = os.pwrite(fd, view, offset)
        else:
            os.lseek(fd, offset, os.SEEK_SET)
            n = os.write(fd, view)
        view, offset = view[n:], offset + n


def _gather_rows(src_fd: int, t: TensorEntry, token_map: np.ndarray) -> np.ndarray:
    """Rows `token_map` of a [rows, ...] tensor as raw bytes [len(token_map), row_bytes]: one
    `preadv` per run of consecutive old ids, straight into the new tensor (no row is read twice,
    rows that are not kept are not read)."""
    row_bytes = (t.end - t.start) // t.shape[0]
    out = np.empty((len(token_map), row_bytes), dtype=np.uint8)
    breaks = np.flatnonzero(np.diff(token_map) != 1) + 1
    starts = np.concatenate([[0], breaks]).tolist()
    ends = np.concatenate([breaks, [len(token_map)]]).tolist()
    for s, e in zip(starts, ends):
        view = memoryview(out[s:e]).cast("B")
        offset = t.start + int(token_map[s]) * row_bytes
        while view:
            n = _pread_into(src_fd, view, offset)
            if n == 0:
                raise InvalidModelError("a safetensors file ended early (truncated?)")
            view, offset = view[n:], offset + n
    return out


@dataclass
class _FilePlan:
    """One output file: unchanged tensors first (fixed offsets), vocabulary tensors last."""

    src: Path
    dst: Path
    unchanged: list[tuple[TensorEntry, int]]  # (tensor, offset in the data section)
    sliced: list[TensorEntry]
    reserved: int  # header bytes reserved (enough for any smaller vocabulary)
    sliced_start: int  # data offset where the vocabulary tensors begin


class PrunedCheckpointWriter:
    """Writes the pruned checkpoint into `out_dir` in two steps:

    `copy_unchanged()` (any time, e.g. in a thread while the corpus is counted) copies every tensor
    that pruning does not change; `finish(token_map)` then writes the vocabulary tensors, the
    headers and the shard index.
    """

    def __init__(self, ckpt: Checkpoint, vocab: VocabTensors, out_dir: Path) -> None:
        self.ckpt, self.vocab, self.out_dir = ckpt, vocab, Path(out_dir)
        self.cancel = threading.Event()
        self.copied = 0  # tensors copied so far (read by the progress reporter)
        self.total = len(ckpt.tensors)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        sliced_names = set(vocab.names)
        self.plans: list[_FilePlan] = []
        for file in ckpt.files:
            entries = ckpt.in_file(file)
            unchanged, offset = [], 0
            for t in entries:
                if t.name not in sliced_names:
                    unchanged.append((t, offset))
                    offset += t.end - t.start
            sliced = [t for t in entries if t.name in sliced_names]
            plan = _FilePlan(file, self.out_dir / file.name, unchanged, sliced, 0, offset)
            plan.reserved = len(self._header(plan, vocab.rows))  # the largest the header can be
            self.plans.append(plan)

    def _header(self, plan: _FilePlan, rows: int, pad_to: int = 0) -> bytes:
        header: dict[str, Any] = {}
        meta = self.ckpt.file_metadata.get(plan.src)
        if meta is not None:
            header["__metadata__"] = meta
        for t, offset in plan.unchanged:
            header[t.name] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.end - t.start]}
        offset = plan.sliced_start
        for t in plan.sliced:
            nbytes = (t.end - t.start) // t.shape[0] * rows
            header[t.name] = {"dtype": t.dtype, "shape": [rows, *t.shape[1:]], "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        size = max(pad_to, len(raw))
        size += -size % 8  # the data starts 8-byte aligned, as safetensors writes it
        return raw + b" " * (size - len(raw))  # JSON allows the trailing spaces

    def copy_unchanged(self) -> None:
        try:
            for plan in self.plans:
                data_start = 8 + plan.reserved
                src_fd = os.open(plan.src, os.O_RDONLY | _BINARY)
                dst_fd = os.open(plan.dst, os.O_WRONLY | os.O_CREAT | _BINARY, 0o644)
                try:
                    for t, offset in plan.unchanged:
                        if self.cancel.is_set():
                            return
                        _copy_range(src_fd, dst_fd, t.start, data_start + offset, t.end - t.start, self.cancel)
                        self.copied += 1
                finally:
                    os.close(src_fd)
                    os.close(dst_fd)
        except BaseException as e:  # handed to the thread that calls finish()
            self._error = e

    def start(self) -> None:
        """Copy the unchanged tensors in a background thread."""
        self._copied_all = threading.Event()

        def run() -> None:
            try:
                self.copy_unchanged()
            finally:
                self._copied_all.set()

        self._thread = threading.Thread(target=run, name="prune-copy", daemon=True)
        self._thread.start()

    # The waits are on an Event the copier sets when it ends, not on Thread.join: a Ctrl-C that
    # lands inside join() can leave the thread looking finished while it still writes (CPython
    # 3.11), and the output would then be cleaned up under it.
    def wait(self, on_wait: Callable[[], None] | None = None) -> None:
        if self._thread is not None:
            while not self._copied_all.wait(0.25):
                if on_wait:
                    on_wait()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        self.cancel.set()
        if self._thread is not None:
            self._copied_all.wait()

    def finish(self, token_map: list[int], on_tensor: Callable[[str], None] | None = None) -> None:
        """Write the vocabulary tensors cut to `token_map`'s rows, the headers and the index."""
        if self._thread is None:
            self.copy_unchanged()
        self.wait()
        ids = np.asarray(token_map, dtype=np.int64)
        rows = len(token_map)
        weight_map: dict[str, str] = {}
        total_size = total_params = 0
        for plan in self.plans:
            header = self._header(plan, rows, pad_to=plan.reserved)
            assert len(header) == plan.reserved
            data_start = 8 + plan.reserved
            src_fd = os.open(plan.src, os.O_RDONLY | _BINARY)
            dst_fd = os.open(plan.dst, os.O_WRONLY | os.O_CREAT | _BINARY, 0o644)
            try:
                offset = plan.sliced_start
                for t in plan.sliced:
                    block = _gather_rows(src_fd, t, ids)
                    _pwrite_all(dst_fd, block, data_start + offset)
                    offset += block.nbytes
                    if on_tensor:
                        on_tensor(t.name)
                _pwrite_all(dst_fd, struct.pack("<Q", len(header)) + header, 0)
                os.ftruncate(dst_fd, data_start + offset)
            finally:
                os.close(src_fd)
                os.close(dst_fd)
            total_size += offset
            for t, _ in plan.unchanged:
                weight_map[t.name] = plan.dst.name
                total_params += t.numel
            for t in plan.sliced:
                weight_map[t.name] = plan.dst.name
                total_params += t.numel // t.shape[0] * rows
        if self.ckpt.index is not None:
            index = dict(self.ckpt.index)
            index["metadata"] = {**(index.get("metadata") or {}), "total_size": total_size}
            if "total_parameters" in index["metadata"]:
                index["metadata"]["total_parameters"] = total_params
            index["weight_map"] = dict(sorted(weight_map.items()))
            (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def write_pruned(
    ckpt: Checkpoint,
    vocab: VocabTensors,
    token_map: list[int],
    out_dir: Path,
    on_tensor: Callable[[str], None] | None = None,
) -> None:
    """Write the checkpoint into `out_dir` with the vocabulary tensors cut to `token_map`'s rows."""
    PrunedCheckpointWriter(ckpt, vocab, out_dir).finish(token_map, on_tensor)
