"""Packing: several tokenized samples in one row, each attending only to itself.

Why: length-grouped batches still pad, and short samples waste most of a row; packing fills rows
up to --max-length. Packing naively (one causal mask over the row) lets a sample attend to the
ones before it (TRL #1230), so here each row carries

- position ids that restart at 0 for every sample (RoPE models see the positions they see alone),
- a block-diagonal causal 4-D mask, which transformers passes to the attention as it is
  (boolean for SDPA-style attention, additive for eager attention, as transformers makes them);
  with FlashAttention no mask at all: transformers finds the samples from the restarting
  position ids and runs its variable-length kernel (not measured here: no GPU was lent),
- labels whose first token of each sample is ignored (nothing before it in its own sample).

BLOOM builds its ALiBi bias from a 2-D mask (cumsum of ones), which a 4-D mask cannot give, so
`prepare_model` lets the BloomModel build it from the 4-D mask: each token's ALiBi position is
the number of keys it may see minus one, i.e. its position inside its own sample, exactly the
bias it gets alone. `check_packing` then proves on real rows of the run that each sample's loss
packed equals its loss alone, and refuses --packing for a model where it does not.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import ConfigError
from ..data import IGNORE_INDEX, TokenizedSample

CHECK_TOLERANCE = 1e-4  # per-sample mean loss, packed vs alone (float32 on the run's device)


@dataclass
class PackedRow:
    """Samples laid end to end; `input_ids`/`labels`/`supervised` as a TokenizedSample has them."""

    samples: list[TokenizedSample] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        return [len(s.input_ids) for s in self.samples]

    @property
    def input_ids(self) -> list[int]:
        return [t for s in self.samples for t in s.input_ids]

    @property
    def labels(self) -> list[int]:
        # A sample's first token is never predicted inside its own sample.
        return [t for s in self.samples for t in [IGNORE_INDEX, *s.labels[1:]]]

    @property
    def supervised(self) -> int:
        return sum(s.supervised for s in self.samples)

    @property
    def truncated(self) -> bool:
        return any(s.truncated for s in self.samples)


def pack(samples: Sequence[TokenizedSample], max_length: int) -> list[PackedRow]:
    """First-fit decreasing: longest samples first, each into the first row with room.
    Deterministic (ties keep the data order), so every process and every resume packs alike."""
    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i].input_ids), i))
    rows: list[PackedRow] = []
    room: list[int] = []
    for i in order:
        n = len(samples[i].input_ids)
        for r, free in enumerate(room):
            if free >= n:
                rows[r].samples.append(samples[i])
                room[r] -= n
                break
        else:
            rows.append(PackedRow([samples[i]]))
            room.append(max_length - n)
    return rows


def collate_packed(rows: Sequence[PackedRow], pad_id: int):
    """Right-padded tensors: input_ids, labels, attention_mask (2-D, 1 on real tokens, for
    counting), position_ids (restarting per sample) and segment_ids (-1 on padding)."""
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        ids[b, :n] = torch.tensor(row.input_ids)
        labels[b, :n] = torch.tensor(row.labels)
        mask[b, :n] = 1
        start = 0
        for k, length in enumerate(row.lengths):
            positions[b, start : start + length] = torch.arange(length)
            segments[b, start : start + length] = k
            start += length
        positions[b, n:] = torch.arange(width - n)  # padding: a sample of its own, never trained
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": positions,
            "segment_ids": segments}


def block_causal_mask(segment_ids, dtype=None):
    """(B, 1, L, L) mask: a token sees the earlier tokens of its own sample only. Boolean (True:
    may attend) when `dtype` is None, else additive (0 or the dtype's minimum)."""
    import torch

    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    n = segment_ids.size(1)
    causal = torch.ones(n, n, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (same & causal)[:, None]
    if dtype is None:
        return allowed
    out = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return out.masked_fill_(~allowed, torch.finfo(dtype).min)


VARLEN = "varlen"  # FlashAttention: no mask at all, samples found from the restarting position ids


def mask_dtype(model):
    """How a packed batch tells the attention where samples end: VARLEN for FlashAttention
    (transformers runs its variable-length kernel from position ids), None (a boolean 4-D mask)
    for SDPA/flex attention, else the additive 4-D mask's dtype (eager attention, BLOOM)."""
    config = next((m.config for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")),
                  None)
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if getattr(config, "model_type", "") == "bloom":  # BLOOM adds the mask to its scores itself
        return dtype_of(model)
    if "flash" in impl:
        return VARLEN
    if impl != "eager":
        return None
    return dtype_of(model)


def model_inputs(batch, dtype) -> dict:
    """The keyword arguments of a packed forward (`dtype`: from `mask_dtype`)."""
    if dtype == VARLEN:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"],
            "attention_mask": block_causal_mask(batch["segment_ids"], dtype)}


def _bloom_alibi_from_mask(self, attention_mask, num_heads: int, dtype):
    """BloomModel.build_alibi_tensor that also takes a packed 4-D additive mask."""
    import torch
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes, build_alibi_tensor

    if attention_mask.ndim != 4:
        return build_alibi_tensor(attention_mask, num_heads, dtype)
    allowed = attention_mask[:, 0] if attention_mask.dtype == torch.bool else attention_mask[:, 0] == 0
    # Diagonal included, so the count is >= 1: position inside the sample = visible keys - 1.
    positions = allowed.sum(-1) - 1  # (B, L)
    slopes = _get_alibi_slopes(num_heads, attention_mask.device)
    alibi = slopes[None, :, None] * positions[:, None, :].to(slopes.dtype)  # (B, H, L)
    return alibi.reshape(-1, 1, positions.size(-1)).to(dtype)


def prepare_model(model) -> None:
    """Let modules that build position biases from a 2-D mask take the packed 4-D one (BLOOM)."""
    for module in model.modules():
        if type(module).__name__ == "BloomModel" and hasattr(module, "build_alibi_tensor"):
            module.build_alibi_tensor = types.MethodType(_bloom_alibi_from_mask, module)


def dtype_of(model):
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def check_packing(model, samples: Sequence[TokenizedSample], loss_fn, limit: int = 48) -> None:
    """Prove on this model that packing changes no sample's loss: two short samples packed in
    one row against each alone (eval mode, no gradients). Refuses --packing otherwise.

    `loss_fn(model, batch)` is the run's summed token loss for a (packed or plain) batch."""
    import torch

    from ..data import collate

    # The two shortest samples, cut to their last `limit` tokens (answers are at the end; any
    # token sequence proves the point, it need not be a whole prompt).
    shortest = sorted(samples, key=lambda s: len(s.input_ids))
    picked = [c for s in shortest if (c := TokenizedSample(s.input_ids[-limit:], s.labels[-limit:])).supervised][:2]
    if len(picked) < 2:
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = [float(loss_fn(model, collate([s], 0))) for s in picked]
            packed_row = PackedRow(picked)
            batch = collate_packed([packed_row], 0)
            # Loss of each sample inside the packed row: mask the other sample's labels.
            packed = []
            start = 0
            for k, s in enumerate(picked):
                one = dict(batch)
                labels = torch.full_like(batch["labels"], IGNORE_INDEX)
                end = start + len(s.input_ids)
                labels[:, start:end] = batch["labels"][:, start:end]
                one["labels"] = labels
                packed.append(float(loss_fn(model, one)))
                start = end
    finally:
        model.train(was_training)
    worst = max(abs(a - p) / max(1, s.supervised) for a, p, s in zip(alone, packed, picked))
    if worst > CHECK_TOLERANCE:
        name = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ConfigError(
            f"--packing is not exact for this model ({name}): a sample's loss changes by {worst:.2e} "
            "per token when packed with another",
            "train without --packing (length-grouped batches give the same result, with more padding)",
        )
