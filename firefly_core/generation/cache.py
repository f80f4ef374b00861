"""Caches that know their token ids: every decoder's cache holds `ids` (what its keys/values are
for, in order) and `crop_to(length)` keeps the first `length` of them; that is all the loop, chat's
prefix reuse and scoring rely on (`TokenCache`).

transformers' DynamicCache grows by `torch.cat` at every token, which copies the whole cache of every
layer once per token (quadratic in the reply length). `KVCache` is a transformers `Cache` whose
layers keep a buffer with spare room (doubled when full) and write new keys/values into it; the
model sees a view of the filled part. Models whose layers are not plain full attention (sliding
windows, linear attention) keep transformers' own layers.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

_ROUND = 256  # buffer capacity is a multiple of this many tokens


class GrowingLayer(DynamicLayer):
    """One layer's keys/values in a buffer [batch, heads, capacity, head_dim] filled up to `length`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._len = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._len = 0
        self.is_initialized = True

    def _reserve(self, needed: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        capacity = 0 if self._k is None else self._k.shape[-2]
        if needed <= capacity:
            return
        new_cap = max(needed, 2 * capacity)
        new_cap = -(-new_cap // _ROUND) * _ROUND
        k = key_states.new_empty(*key_states.shape[:-2], new_cap, key_states.shape[-1])
        v = value_states.new_empty(*value_states.shape[:-2], new_cap, value_states.shape[-1])
        if self._len:
            k[..., : self._len, :].copy_(self._k[..., : self._len, :])
            v[..., : self._len, :].copy_(self._v[..., : self._len, :])
        self._k, self._v = k, v

    def _refresh_views(self) -> None:
        if self._k is None:
            self.keys = self.values = None
        else:
            self.keys = self._k[..., : self._len, :]
            self.values = self._v[..., : self._len, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._len + key_states.shape[-2]
        self._reserve(end, key_states, value_states)
        self._k[..., self._len : end, :].copy_(key_states)
        self._v[..., self._len : end, :].copy_(value_states)
        self._len = end
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        # Same contract as DynamicLayer.crop: a negative count of tokens to drop from the end.
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self._len = max(0, self._len + tokens_to_remove)
        self._refresh_views()

    def reset(self) -> None:
        self._k = self._v = None
        self._len = 0
        self.keys = self.values = None
        self.is_initialized = False

    def batch_repeat_interleave(self, repeats: int) -> None:  # not used by chat; keep it correct
        raise NotImplementedError("GrowingLayer does not support beam search")

    batch_select_indices = batch_repeat_interleave


class TokenCache:
    """What every decoder's cache is: the token ids whose keys/values it holds, and a crop.

    A decoder's `forward` appends to `ids` only when the pass succeeded, and leaves the storage as
    `ids` says when it fails (so an interrupt never leaves half a step behind). Subclasses say how
    their storage drops positions (`_crop_storage`).
    """

    ids: list[int]

    def crop_to(self, length: int) -> None:
        """Keep the first `length` positions (storage and ids). Not transformers' `Cache.crop`,
        which takes a negative count of tokens to drop."""
        length = max(0, int(length))
        self._crop_storage(length)
        del self.ids[length:]

    def clear(self) -> None:
        self.crop_to(0)

    def reuse_for(self, prompt_ids: Sequence[int], *, leave: int = 1) -> int:
        """Crop to the longest prefix shared with `prompt_ids`, leaving at least `leave` prompt
        tokens to run (their logits start a reply or a score); return how many are reused."""
        keep = max(0, min(common_prefix_length(self.ids, prompt_ids), len(prompt_ids) - leave))
        self.crop_to(keep)
        return keep

    def _crop_storage(self, length: int) -> None:
        raise NotImplementedError


class KVCache(TokenCache, DynamicCache):
    """A DynamicCache whose full-attention layers are `GrowingLayer`s (no torch.cat per token)."""

    def __init__(self, config: Any) -> None:
        DynamicCache.__init__(self, config=config)
        self.ids = []
        if self.layers:
            self.layers = [GrowingLayer() if type(l) is DynamicLayer else l for l in self.layers]
        else:  # layers created lazily, one per layer index
            self.layer_class_to_replicate = GrowingLayer

    def _crop_storage(self, length: int) -> None:
        # layer by layer: after an interrupted step the layers may hold different lengths
        for layer in self.layers:
            have = layer.get_seq_length()
            if have > length:
                layer.crop(length - have)


def cache_argument(model: Any) -> str:
    """The name of the KV-cache argument of `model.forward`: transformers 5 renamed
    `past_key_values` to `cache`, and the old name warns (FutureWarning) on every call."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case (the next turn extends the last), compared at C speed
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
