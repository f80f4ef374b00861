"""Slicing vocabulary rows out of a safetensors checkpoint, tensor by tensor, in little memory.

The safetensors format is an 8-byte header length, a JSON header (dtype, shape and byte range of
each tensor) and the raw bytes. We read only headers, then write each output file in one pass:
tensors we do not change are copied file-to-file by the kernel (`os.copy_file_range`, no bytes
through Python), and vocabulary tensors are gathered row by row from blocks read with `pread`.
Peak memory is the new embedding plus one read block, whatever the model size; dtypes are kept
because bytes are copied, never converted. Sharded checkpoints (model.safetensors.index.json) keep
their shard layout.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidModelError, UnsupportedModelError

INDEX_FILE = "model.safetensors.index.json"
EMBED_SUFFIXES = ("word_embeddings.weight", "embed_tokens.weight", "wte.weight", "embed_in.weight", "tok_embeddings.weight")
HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight")
BLOCK_BYTES = 64 << 20  # how much of a vocabulary tensor is read at once
COPY_CHUNK = 1 << 30


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


def _copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """Copy `count` bytes at `offset` of src to the current position of dst, in the kernel if it can."""
    try:
        while count > 0:
            n = os.copy_file_range(src_fd, dst_fd, min(count, COPY_CHUNK), offset)
            if n == 0:
                raise InvalidModelError("a safetensors file ended early (truncated?)")
            offset += n
            count -= n
        return
    except (AttributeError, OSError):  # no copy_file_range here: plain reads from where it stopped
        pass
    while count > 0:
        chunk = os.pread(src_fd, min(count, 16 << 20), offset)
        if not chunk:
            raise InvalidModelError("a safetensors file ended early (truncated?)")
        _write_all(dst_fd, chunk)
        offset += len(chunk)
        count -= len(chunk)


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _gather_rows(src_fd: int, t: TensorEntry, token_map: np.ndarray) -> np.ndarray:
    """Rows `token_map` of a [rows, ...] tensor as raw bytes [len(token_map), row_bytes].

    Reads the tensor in blocks in file order (sequential IO), skipping blocks with no kept row.
    """
    rows = t.shape[0]
    row_bytes = (t.end - t.start) // rows
    out = np.empty((len(token_map), row_bytes), dtype=np.uint8)
    order = np.argsort(token_map, kind="stable")
    sorted_old = token_map[order]
    block_rows = max(1, BLOCK_BYTES // max(row_bytes, 1))
    for r0 in range(0, rows, block_rows):
        r1 = min(rows, r0 + block_rows)
        lo, hi = np.searchsorted(sorted_old, [r0, r1])
        if lo == hi:
            continue
        first, last = int(sorted_old[lo]), int(sorted_old[hi - 1]) + 1  # read only the span needed
        raw = os.pread(src_fd, (last - first) * row_bytes, t.start + first * row_bytes)
        block = np.frombuffer(raw, dtype=np.uint8).reshape(last - first, row_bytes)
        out[order[lo:hi]] = block[sorted_old[lo:hi] - first]
    return out


def write_pruned(
    ckpt: Checkpoint,
    vocab: VocabTensors,
    token_map: list[int],
    out_dir: Path,
    on_tensor: Callable[[str], None] | None = None,
) -> None:
    """Write the checkpoint into `out_dir` with the vocabulary tensors cut to `token_map`'s rows."""
    ids = np.asarray(token_map, dtype=np.int64)
    new_rows = len(token_map)
    sliced = set(vocab.names)
    weight_map: dict[str, str] = {}
    total_size = 0
    total_params = 0
    for file in ckpt.files:
        entries = ckpt.in_file(file)
        header: dict[str, Any] = {}
        meta = ckpt.file_metadata.get(file)
        if meta is not None:
            header["__metadata__"] = meta
        offset = 0
        for t in entries:
            nbytes = t.end - t.start
            shape = list(t.shape)
            if t.name in sliced:
                nbytes = nbytes // t.shape[0] * new_rows
                shape[0] = new_rows
            header[t.name] = {"dtype": t.dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            total_params += int(np.prod(shape, dtype=np.int64))
            weight_map[t.name] = file.name
        total_size += offset
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        src_fd = os.open(file, os.O_RDONLY)
        dst_fd = os.open(out_dir / file.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(dst_fd, struct.pack("<Q", len(raw)) + raw)
            for t in entries:
                if t.name in sliced:
                    _write_all(dst_fd, _gather_rows(src_fd, t, ids))
                else:
                    _copy_range(src_fd, dst_fd, t.start, t.end - t.start)
                if on_tensor:
                    on_tensor(t.name)
        finally:
            os.close(src_fd)
            os.close(dst_fd)
    if ckpt.index is not None:
        index = dict(ckpt.index)
        index["metadata"] = {**(index.get("metadata") or {}), "total_size": total_size}
        if "total_parameters" in index["metadata"]:
            index["metadata"]["total_parameters"] = total_params
        index["weight_map"] = dict(sorted(weight_map.items()))
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
