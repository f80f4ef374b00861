"""Choosing the kept vocabulary: counting corpus tokens, the always-kept floor, and the merge closure.

Why the closure makes pruning exact: BPE applies, at each step, the lowest-ranked merge among
adjacent pairs. If every intermediate token on the merge path of every kept token survives (with
all merges that produce it), then for a word whose original tokens are all kept, every merge the
original tokenizer applied is still there, and no merge it did not apply can now win (the kept
merges keep their relative order). So the new tokenizer applies the very same merges.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from ..errors import ConfigError



class Parents(Protocol):
    """token id -> the (left, right) id pairs whose merge makes it (see tokenizer.MergeParents)."""

    def get(self, tid: int, default: tuple = ...) -> Sequence[tuple[int, int]]: ...



@dataclass
class Selection:
    """The kept old ids, and why each group is kept."""

    kept: set[int]
    floor: int  # specials + bytes + ids the config/post-processor/keep-file name, with their closure
    by_count: int  # chosen by corpus count
    by_closure: int  # added only because a kept token's merge path needs them


def count_tokens(
    encode_batch: Callable[[list[str]], list[list[int]]],
    texts: Iterable[str],
    size: int,
    *,
    batch_chars: int = 1 << 20,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """How often each id occurs when the texts are tokenized; int64 array of length `size`.

    Texts are sent to the (Rust, multi-threaded) tokenizer in batches of about `batch_chars`
    characters; `on_batch(chars)` reports progress.
    """
    counts = np.zeros(size, dtype=np.int64)

    def flush(batch: list[str], chars: int) -> None:
        ids = np.fromiter(chain.from_iterable(encode_batch(batch)), dtype=np.int64)
        if ids.size:
            counts[: size] += np.bincount(ids, minlength=size)[:size]
        if on_batch:
            on_batch(chars)

    batch: list[str] = []
    chars = 0
    for text in texts:
        if not text:
            continue
        batch.append(text)
        chars += len(text)
        if chars >= batch_chars:
            flush(batch, chars)
            batch, chars = [], 0
    if batch:
        flush(batch, chars)
    return counts


def _missing_closure(tid: int, kept: set[int], parents: Parents) -> set[int]:
    """`tid` and every token on its merge paths that is not kept yet."""
    missing: set[int] = set()
    stack = [tid]
    while stack:
        t = stack.pop()
        if t in kept or t in missing:
            continue
        missing.add(t)
        for a, b in parents.get(t, ()):
            stack.append(a)
            stack.append(b)
    return missing


def closure(ids: Iterable[int], parents: Parents) -> set[int]:
    """`ids` plus every intermediate token on their merge paths."""
    kept: set[int] = set()
    for t in ids:
        kept |= _missing_closure(t, kept, parents)
    return kept


def _by_count(counts: np.ndarray) -> Iterator[int]:
    """Ids seen in the corpus, most frequent first (ties: lower id first, i.e. earlier merges)."""
    order = np.argsort(-counts, kind="stable")
    for tid in order.tolist():
        if counts[tid] <= 0:
            return
        yield tid


def choose(
    counts: np.ndarray,
    floor_ids: Iterable[int],
    parents: Parents,
    *,
    keep_top: int | None = None,
    min_count: int | None = None,
) -> Selection:
    """Keep the floor, then tokens by count (`keep_top`: the new vocabulary has at most that many
    tokens, closure included; `min_count`: every token seen at least that often), closed over merges."""
    floor = closure(floor_ids, parents)
    if keep_top is not None and keep_top < len(floor):
        raise ConfigError(
            f"--keep-top {keep_top} is below the floor of {len(floor)} tokens that are always kept "
            "(special tokens, the 256 byte tokens, and the ids the config names)",
            f"use --keep-top {len(floor)} or more",
        )
    kept = set(floor)
    by_count = by_closure = 0
    for tid in _by_count(counts):
        if keep_top is not None and len(kept) >= keep_top:
            break
        if min_count is not None and counts[tid] < min_count:
            break
        if tid in kept:
            continue
        missing = _missing_closure(tid, kept, parents)
        if keep_top is not None and len(kept) + len(missing) > keep_top:
            continue  # its merge path does not fit; a later, shorter one may
        kept |= missing
        by_count += 1
        by_closure += len(missing) - 1
    return Selection(kept=kept, floor=len(floor), by_count=by_count, by_closure=by_closure)


def new_order(kept: set[int], pinned: Iterable[int]) -> list[int]:
    """The id map (position = new id, value = old id): `pinned` ids (specials) keep their id when it
    fits in the new vocabulary; everything else fills the free slots in old-id order."""
    n = len(kept)
    slots: list[int | None] = [None] * n
    pinned_here = set()
    for tid in sorted(set(pinned) & kept):
        if tid < n:
            slots[tid] = tid
            pinned_here.add(tid)
    rest = iter(sorted(kept - pinned_here))
    return [s if s is not None else next(rest) for s in slots]
