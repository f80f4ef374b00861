"""What is trained, per method: its data (read, tokenized, packed), the unit its loss is averaged
over, its batches and its summed loss. The loop (loop.py) is the same for every method.

- ``sft``: instruction data, loss on the answer tokens, averaged per supervised token;
  `--packing` packs samples into rows (packing.py);
- ``pretrain``: raw text, every token trained, documents always packed to --max-length;
- ``dpo``: preference pairs, the DPO loss averaged per pair (dpo.py); a pair's two rows are
  never packed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError
from .losses import chunk_for, chunked_token_loss_sum, token_loss_sum
from .packing import PackedRow, check_packing, collate_packed, pack, prepare_model


def split_eval(n: int, config: Any) -> tuple[list[int], list[int]]:
    """Indices of training and evaluation samples when the eval set is a fraction of the data."""
    if config.eval_file or config.eval_fraction <= 0 or n < 2:
        return list(range(n)), []
    k = min(n - 1, max(1, round(n * config.eval_fraction)))
    held = set(random.Random(config.seed).sample(range(n), k))
    return [i for i in range(n) if i not in held], sorted(held)


@dataclass
class MethodData:
    train: list
    eval: list
    start: dict[str, Any] = field(default_factory=dict)  # StartEvent fields about the data
    eval_name: str = ""


def _split(items: list, config) -> tuple[list, list]:
    train_idx, eval_idx = split_eval(len(items), config)
    return [items[i] for i in train_idx], [items[i] for i in eval_idx]


def load_data(config, fmt, tokenizer) -> MethodData:
    """Read, validate and tokenize the run's data as its method wants it."""
    if config.method == "dpo":
        return _pairs(config, fmt, tokenizer)
    if config.method == "pretrain":
        return _documents(config, tokenizer)
    return _instructions(config, fmt, tokenizer)


def _bad(bad) -> dict:
    return {"bad_lines": len(bad), "bad_examples": [str(b) for b in bad[:10]]}


def _instructions(config, fmt, tokenizer) -> MethodData:
    from ..data import load_samples, tokenize_samples

    samples, bad = load_samples(config.data, strict=config.strict)
    train_samples, eval_samples = _split(samples, config)
    train, stats = tokenize_samples(train_samples, fmt, tokenizer, config.max_length)
    if config.eval_file:
        eval_samples, _ = load_samples([config.eval_file], strict=config.strict)
    evals, _ = tokenize_samples(eval_samples, fmt, tokenizer, config.max_length)
    if not train:
        raise DataError("no training sample has a supervised token left within --max-length",
                        f"raise --max-length (now {config.max_length})")
    start = {"train_samples": len(train), "eval_samples": len(evals), "truncated": stats.truncated,
             "cut_away": stats.cut_away, "cut_away_where": stats.cut_away_where,
             "supervised_tokens": stats.supervised_tokens, **_bad(bad)}
    if config.packing:
        rows = pack(train, config.max_length)
        start["notes"] = [f"{len(train)} samples packed into {len(rows)} rows of at most {config.max_length} tokens"]
        return MethodData(rows, pack(evals, config.max_length) if evals else [], start)
    return MethodData(train, evals, start)


def _documents(config, tokenizer) -> MethodData:
    from ..documents import load_documents, tokenize_documents

    docs, bad = load_documents(config.data, strict=config.strict)
    train_docs, eval_docs = _split(docs, config)
    if config.eval_file:
        eval_docs, _ = load_documents([config.eval_file], strict=config.strict)
    train, stats = tokenize_documents(train_docs, tokenizer, config.max_length)
    evals, _ = tokenize_documents(eval_docs, tokenizer, config.max_length)
    if not train:
        raise DataError("the documents hold no text to train on", "check the files with: firefly data check FILE")
    rows = pack(train, config.max_length)
    start = {"train_samples": stats.documents, "eval_samples": len(eval_docs),
             "truncated": sum(1 for n in stats.lengths if n > config.max_length),
             "supervised_tokens": stats.tokens, **_bad(bad),
             "notes": [f"{stats.documents} documents ({stats.pieces} pieces) packed into {len(rows)} rows "
                       f"of at most {config.max_length} tokens"]}
    return MethodData(rows, pack(evals, config.max_length) if evals else [], start)


def _pairs(config, fmt, tokenizer) -> MethodData:
    from ..preferences import load_pairs, tokenize_pairs

    pairs, bad = load_pairs(config.data, strict=config.strict)
    train_pairs, eval_pairs = _split(pairs, config)
    if config.eval_file:
        eval_pairs, _ = load_pairs([config.eval_file], strict=config.strict)
    train, stats = tokenize_pairs(train_pairs, fmt, tokenizer, config.max_length)
    evals, _ = tokenize_pairs(eval_pairs, fmt, tokenizer, config.max_length)
    if not train:
        raise DataError("no preference pair has both answers within --max-length",
                        f"raise --max-length (now {config.max_length})")
    start = {"train_samples": len(train), "eval_samples": len(evals), "truncated": stats.truncated,
             "cut_away": stats.cut_away, "cut_away_where": stats.cut_away_where,
             "supervised_tokens": stats.supervised_tokens, **_bad(bad)}
    return MethodData(train, evals, start)


class Method:
    """A run's method as the loop uses it: weights (the averaging unit), batches and the loss."""

    def __init__(self, config, pad_id: int) -> None:
        self.config = config
        self.pad_id = pad_id
        self.dpo = config.method == "dpo"
        self.packed = config.method == "pretrain" or config.packing
        self.reference = None
        self.single_process = False  # chunked cross-entropy only then (it bypasses DDP/ZeRO wrappers)
        self.accelerator = None

    @property
    def metrics(self) -> int:
        from .dpo import METRICS

        return METRICS if self.dpo else 0

    def weight(self, item) -> int:
        """What the loss is averaged over: a pair (DPO) or a supervised token."""
        return 1 if self.dpo else item.supervised

    def collate(self, items):
        if self.dpo:
            from ..preferences import collate_pairs

            return collate_pairs(items, self.pad_id)
        if self.packed:
            return collate_packed(items, self.pad_id)
        from ..data import collate

        return collate(items, self.pad_id)

    def prepare_model(self, model, accelerator, train_items) -> None:
        """Before LoRA and accelerate wrap the model: packing support (checked on this model's
        real samples) and the DPO reference."""
        from accelerate.utils import DistributedType

        self.single_process = accelerator.distributed_type == DistributedType.NO
        self.accelerator = accelerator
        if self.packed:
            prepare_model(model)
            samples = [s for row in train_items[:4] for s in row.samples]
            check_packing(model, samples, token_loss_sum)
        if self.dpo:
            from .dpo import Reference

            self.reference = Reference(model, self.config, accelerator, self.single_process)

    def loss_sum(self, model, batch):
        """(summed loss, metric sums or None) of one batch."""
        if self.dpo:
            from .dpo import pair_loss_sum

            with self.accelerator.autocast():  # a chunked path calls the body outside accelerate's wrapper
                return pair_loss_sum(model, batch, self.reference, self.config.beta, self.config.loss)
        chunk = chunk_for(model, batch, self.single_process)
        if chunk:
            # The body is called directly, outside the autocast accelerate wraps the forward in.
            with self.accelerator.autocast():
                return chunked_token_loss_sum(model, batch, chunk), None
        return token_loss_sum(model, batch), None


__all__ = ["MethodData", "Method", "PackedRow", "load_data", "token_loss_sum"]
