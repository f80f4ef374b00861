"""The supervised loss: summed next-token cross-entropy over trained tokens, plain or chunked.

Why chunked: the float32 logits of one row are tokens × vocabulary × 4 bytes (151k vocabulary ×
4k tokens = 2.5 GB), and cross-entropy's backward keeps another copy. The chunked path runs the
model body once, then the output head and the cross-entropy a chunk of positions at a time under
activation checkpointing, so only one chunk's logits exist at any moment (forward and backward).
It calls the model's body and head directly, which bypasses DDP/DeepSpeed wrappers, so it is used
only in single-process runs (`chunk_for`).
"""

from __future__ import annotations

from .packing import mask_dtype, model_inputs

CHUNK_BYTES = 64 * 2**20  # float32 logits per chunk: 64 MiB


def _inputs(batch, model) -> dict:
    if "segment_ids" in batch:
        return model_inputs(batch, mask_dtype(model))
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def token_loss_sum(model, batch):
    """Sum of next-token cross-entropy over supervised tokens (float32 logits); a packed batch
    (with segment_ids) runs with its block-diagonal mask and restarting positions."""
    import torch.nn.functional as F

    logits = model(**_inputs(batch, model)).logits
    logits = logits[:, :-1, :].float()
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum")


def body_and_head(model):
    """(model body returning hidden states, output head) of a causal LM, peft-wrapped or not;
    None when the model does not expose them the transformers way."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, "base_model", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if body is None or body is inner or head is None:
        return None
    return body, head


def chunk_for(model, batch, single_process: bool) -> int | None:
    """Positions per chunk when this batch's float32 logits exceed CHUNK_BYTES, else None."""
    if not single_process or body_and_head(model) is None:
        return None
    _, head = body_and_head(model)
    vocab = head.weight.shape[0]
    tokens = batch["input_ids"].numel()
    if tokens * vocab * 4 <= CHUNK_BYTES:
        return None
    return max(1, CHUNK_BYTES // (vocab * 4))


def _chunk_loss(hidden, weight, bias, labels):
    import torch.nn.functional as F

    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


def chunked_token_loss_sum(model, batch, chunk: int):
    """`token_loss_sum` without ever holding more than `chunk` positions' logits."""
    import torch
    from torch.utils.checkpoint import checkpoint

    body, head = body_and_head(model)
    hidden = body(**_inputs(batch, model)).last_hidden_state[:, :-1]
    labels = batch["labels"][:, 1:].reshape(-1)
    hidden = hidden.reshape(-1, hidden.size(-1))
    keep = labels != -100  # untrained positions need no logits at all
    hidden, labels = hidden[keep], labels[keep]
    total = torch.zeros((), device=hidden.device, dtype=torch.float32)
    for start in range(0, labels.numel(), chunk):
        part = slice(start, start + chunk)
        total = total + checkpoint(_chunk_loss, hidden[part], head.weight, head.bias, labels[part], use_reentrant=False)
    return total


def _chunk_logps(hidden, weight, bias, labels):
    import torch
    import torch.nn.functional as F

    logits = F.linear(hidden, weight, bias).float()
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def answer_logps(model, batch, single_process: bool = False):
    """(rows,) sum over trained tokens of log p(token | prefix), in float32 (DPO's scores);
    chunked like the loss when the batch's float32 logits would pass CHUNK_BYTES."""
    import torch

    chunk = chunk_for(model, batch, single_process)
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    if not chunk:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        return (logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask).sum(-1)
    from torch.utils.checkpoint import checkpoint

    body, head = body_and_head(model)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[:, :-1]
    rows = torch.arange(labels.size(0), device=labels.device)[:, None].expand_as(labels)[mask]
    hidden, picked = hidden[mask], labels[mask]
    total = torch.zeros(labels.size(0), device=hidden.device, dtype=torch.float32)
    for start in range(0, picked.numel(), chunk):
        part = slice(start, start + chunk)
        logps = checkpoint(_chunk_logps, hidden[part], head.weight, head.bias, picked[part], use_reentrant=False)
        total = total.index_add(0, rows[part], logps)
    return total
