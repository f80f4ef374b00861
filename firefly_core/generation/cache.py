"""The KV cache: preallocated per-layer buffers written in place, and the prefix bookkeeping for reuse.

transformers' DynamicCache grows by `torch.cat` at every token, which copies the whole cache of every
layer once per token (quadratic in the reply length). `KVCache` is a transformers `Cache` whose
layers keep a buffer with spare room (doubled when full) and write new keys/values into it; the
model sees a view of the filled part. It can be cropped to any length, which is what multi-turn
prefix reuse needs. Models whose layers are not plain full attention (sliding windows, linear
attention) keep transformers' own layers.

`PrefixCache` pairs a cache with the token ids it holds, so the next prompt can reuse the longest
common prefix and prefill only the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


class KVCache(DynamicCache):
    """A DynamicCache whose full-attention layers are `GrowingLayer`s (no torch.cat per token)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config=config)
        if self.layers:
            self.layers = [GrowingLayer() if type(l) is DynamicLayer else l for l in self.layers]
        else:  # layers created lazily, one per layer index
            self.layer_class_to_replicate = GrowingLayer

    def crop_to(self, length: int) -> None:
        """Keep the first `length` positions of every layer (layers may differ after an interrupted step)."""
        for layer in self.layers:
            have = layer.get_seq_length()
            if have > length:
                layer.crop(length - have)


def crop_cache(cache: Any, length: int) -> None:
    """Crop a cache to `length` positions: any object with `crop_to(length)` (ours, or a plugged-in
    decoder's own cache), else a transformers cache, layer by layer."""
    if hasattr(cache, "crop_to"):
        cache.crop_to(length)
        return
    for layer in getattr(cache, "layers", []):
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
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class PrefixCache:
    """A KV cache and the token ids whose keys/values it holds, in order."""

    cache: Any
    ids: list[int] = field(default_factory=list)

    def reuse_for(self, prompt_ids: Sequence[int]) -> int:
        """Crop to the longest prefix shared with `prompt_ids` and return its length.

        At least one prompt token is always left to prefill, since its logits start the reply.
        """
        keep = min(common_prefix_length(self.ids, prompt_ids), len(prompt_ids) - 1)
        keep = max(keep, 0)
        crop_cache(self.cache, keep)
        del self.ids[keep:]
        return keep

    def clear(self) -> None:
        crop_cache(self.cache, 0)
        self.ids.clear()
