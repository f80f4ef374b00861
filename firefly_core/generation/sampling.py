"""Choosing the next token: repetition penalty, temperature, top-k, top-p, then sample or argmax.

Each filter has the semantics of its transformers logits processor (RepetitionPenaltyLogitsProcessor,
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, each with min_tokens_to_keep=1), applied
in the order `generate` applies them: penalty first, then temperature, top-k, top-p. With sampling
off (greedy), only the penalty is applied before the argmax, as in `generate(do_sample=False)`.

Logits are float32 of shape [batch, vocab] (batch is 1 in chat).
"""

from __future__ import annotations

from typing import Iterable

import torch

from .config import GenerationConfig


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float | torch.Tensor) -> torch.Tensor:
    """Divide positive / multiply negative logits of tokens already seen (`seen`: bool [batch, vocab]).
    `penalty` may be a device tensor (the CUDA-graph sampler uses this same function)."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature


def top_k_filter(logits: torch.Tensor, top_k: int, filter_value: float = -float("inf")) -> torch.Tensor:
    """Keep the `top_k` highest logits (and any tied with the k-th); `top_k` 0 = off."""
    if top_k <= 0:
        return logits
    k = min(top_k, logits.size(-1))
    kth = torch.topk(logits, k).values[..., -1:]
    return logits.masked_fill(logits < kth, filter_value)


def top_p_remove_sorted(sorted_asc: torch.Tensor, top_p: float | torch.Tensor) -> torch.Tensor:
    """Which of the ascending-sorted scores top-p drops (bool, same shape): the tail whose
    probability sum stays within 1 - top_p; the most likely token is always kept. `top_p` may be a
    device tensor (the CUDA-graph sampler), so this rule is written once for CPU and GPU."""
    cumulative = sorted_asc.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = False
    return remove


def top_p_filter(logits: torch.Tensor, top_p: float, filter_value: float = -float("inf")) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sum reaches `top_p`."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)
    remove_sorted = top_p_remove_sorted(sorted_logits, top_p)
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, filter_value)


class TokenSampler:
    """Per-reply sampling state: which tokens were seen (for the penalty) and the random generator.

    The penalty set covers the whole prompt plus every generated token, like transformers' processor
    which looks at all of `input_ids`. A boolean mask updated in place costs O(1) per token instead of
    a gather over a growing id list.
    """

    def __init__(
        self,
        config: GenerationConfig,
        vocab_size: int,
        prompt_ids: Iterable[int],
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.seen: torch.Tensor | None = None
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros(1, vocab_size, dtype=torch.bool, device=self.device)
            ids = [i for i in set(prompt_ids) if 0 <= i < vocab_size]
            if ids:
                self.seen[0, torch.tensor(ids, device=self.device)] = True
        self.generator: torch.Generator | None = None
        if config.do_sample:
            self.generator = torch.Generator(device=self.device)
            if config.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(config.seed)

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """The filtered logits the next token is drawn from (float32 [1, vocab])."""
        cfg = self.config
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen[:, : logits.size(-1)], cfg.repetition_penalty)
        if not cfg.do_sample:
            return logits
        if cfg.temperature != 1.0:
            logits = apply_temperature(logits, cfg.temperature)
        logits = top_k_filter(logits, cfg.top_k)
        return top_p_filter(logits, cfg.top_p)

    def pick(self, logits: torch.Tensor) -> int:
        """Choose the next token id from raw logits and remember it for the penalty."""
        scores = self.process(logits.float())
        if self.config.do_sample:
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.generator)[0, 0])
        else:
            token = int(torch.argmax(scores, dim=-1)[0])
        self.observe(token)
        return token

    def observe(self, token: int) -> None:
        if self.seen is not None and 0 <= token < self.vocab_size:
            self.seen[0, token] = True
