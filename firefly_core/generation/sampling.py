"""Choosing the next token: repetition penalty, temperature, top-k, top-p, then sample or argmax.

Each filter has the semantics of its transformers logits processor (RepetitionPenaltyLogitsProcessor,
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, each with min_tokens_to_keep=1), applied
in the order `generate` applies them: penalty first, then temperature, top-k, top-p. With sampling
off (greedy), only the penalty is applied before the argmax, as in `generate(do_sample=False)`.

Logits are float32 of shape [batch, vocab] (batch is 1 in chat).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
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


# A top-p prefilter (issue 24): the few most likely tokens usually hold top_p of the mass, so the
# kept set is decided from a `torch.topk` of CANDIDATES instead of sorting the whole vocabulary,
# and the draw is made among those candidates only. Exact: it is used only when the candidates'
# mass provably covers top_p and no decision is within MARGIN of the threshold (float sums in
# another order can differ by far less) or splits tied logits; otherwise the full sort runs.
CANDIDATES = 256
MARGIN = 1e-4
# On the CPU the candidates are first taken as every score within WINDOW of the best (numpy: one
# compare and a gather read the vocabulary once, ~5x cheaper than `torch.topk` + `logsumexp` at
# 151,936 tokens); a flat distribution with more than WINDOW_LIMIT of them goes to `torch.topk`.
WINDOW = 20.0
WINDOW_LIMIT = 2048


def _window_candidates(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(values, ids, log of the whole vocabulary's sum of exp) of the scores within WINDOW of the best,
    most likely first (ties by id), or None where this shortcut does not apply. Every score left out
    is below every one kept, so the order agrees with a full sort of the vocabulary."""
    if scores.device.type != "cpu" or scores.dtype != torch.float32 or scores.size(0) != 1:
        return None
    a = scores.detach().numpy()[0]
    best = a.max()
    if not np.isfinite(best):
        return None
    ids = np.flatnonzero(a >= best - WINDOW)
    if ids.size > WINDOW_LIMIT:
        return None
    vals = a[ids]
    order = np.lexsort((ids, -vals))  # descending value, then ascending id
    total = best + np.log(np.exp(a - best).sum(dtype=np.float64))
    return (torch.from_numpy(np.ascontiguousarray(vals[order]))[None],
            torch.from_numpy(ids[order].astype(np.int64))[None],
            torch.tensor([[total]], dtype=torch.float64))


def top_p_candidates(scores: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(values, ids) of what top-k then top-p keep of `scores` ([1, vocab], after penalty and
    temperature), most likely first, found without a full sort; None when the prefilter cannot
    decide exactly (then the full filters must run)."""
    vocab = scores.size(-1)
    if top_k <= 0 and top_p < 1.0 and vocab > CANDIDATES:
        window = _window_candidates(scores)
        if window is not None:
            found = _kept_by_top_p(*window, top_k=0, top_p=top_p)
            if found is not None:
                return found
    if top_k > 0:
        if top_k >= vocab or top_k > CANDIDATES:
            return None
        vals, ids = torch.topk(scores, top_k + 1)
        if vals[0, top_k] == vals[0, top_k - 1]:  # tied with the k-th: top-k keeps more than k
            return None
        vals, ids = vals[:, :top_k], ids[:, :top_k]
        total = torch.logsumexp(vals, dim=-1, keepdim=True)  # top-p sees only what top-k kept
    else:
        if top_p >= 1.0 or vocab <= CANDIDATES:
            return None
        vals, ids = torch.topk(scores, CANDIDATES)
        total = torch.logsumexp(scores, dim=-1, keepdim=True)
    if top_p >= 1.0:
        return vals, ids
    return _kept_by_top_p(vals, ids, total, top_k=top_k, top_p=top_p)


def _kept_by_top_p(vals: torch.Tensor, ids: torch.Tensor, total: torch.Tensor, *, top_k: int,
                   top_p: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The head of the descending candidates (`vals`, `ids`; `total`: log of the sum of exp over
    everything top-p sees) that top-p keeps, or None when that cannot be decided exactly from them."""
    probs = (vals.double() - total).exp()  # [1, n] descending
    before = probs.cumsum(dim=-1) - probs  # the mass of the more likely tokens
    kept = int((before < top_p).sum())  # a token stays while what precedes it is under top_p
    margin_ok = bool(((before - top_p).abs() > MARGIN).all())
    covers = top_k > 0 or kept < vals.size(-1)  # the first dropped token is a candidate: all later are dropped
    if not (margin_ok and covers) or (kept < vals.size(-1) and vals[0, kept] == vals[0, kept - 1]):
        return None
    return vals[:, :kept], ids[:, :kept]


class TokenSampler:
    """Per-reply sampling state: which tokens were seen (for the penalty) and the random generator.

    The penalty set covers the whole prompt plus every generated token, like transformers' processor
    which looks at all of `input_ids`; it is applied to those few ids only (a gather and a scatter),
    not with a pass over the vocabulary. When sampling, `top_p_candidates` finds the kept tokens
    without sorting the vocabulary where it can, and the draw is made among them.
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
        self._seen: set[int] | None = None
        self._seen_ids: torch.Tensor | None = None  # the same ids as a tensor, made when the set grows
        if config.repetition_penalty != 1.0:
            self._seen = {int(i) for i in prompt_ids if 0 <= int(i) < vocab_size}
        self.generator: torch.Generator | None = None
        if config.do_sample:
            self.generator = torch.Generator(device=self.device)
            if config.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(config.seed)

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Penalty (on the seen ids only), then temperature when sampling."""
        cfg = self.config
        scale = cfg.do_sample and cfg.temperature != 1.0
        if not scale and not self._seen:
            return logits
        # one pass over the vocabulary: the temperature's division makes the new tensor (else a copy)
        scores = apply_temperature(logits, cfg.temperature) if scale else logits.clone()
        if self._seen:
            if self._seen_ids is None:
                self._seen_ids = torch.tensor(sorted(self._seen), dtype=torch.long, device=logits.device)
            ids = self._seen_ids[self._seen_ids < logits.size(-1)]
            seen = logits[:, ids]
            penalized = torch.where(seen < 0, seen * cfg.repetition_penalty, seen / cfg.repetition_penalty)
            scores[:, ids] = apply_temperature(penalized, cfg.temperature) if scale else penalized
        return scores

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """The filtered logits the next token is drawn from (float32 [1, vocab])."""
        cfg = self.config
        scores = self._scores(logits)
        if not cfg.do_sample:
            return scores
        found = top_p_candidates(scores, cfg.top_k, cfg.top_p)
        if found is not None:
            vals, ids = found
            return torch.full_like(scores, -float("inf")).scatter_(-1, ids, vals)
        return top_p_filter(top_k_filter(scores, cfg.top_k), cfg.top_p)

    def pick(self, logits: torch.Tensor) -> int:
        """Choose the next token id from raw logits and remember it for the penalty."""
        cfg = self.config
        scores = self._scores(logits.float())
        if not cfg.do_sample:
            if scores.device.type == "cpu" and scores.dtype == torch.float32 and scores.size(0) == 1:
                token = int(np.argmax(scores.detach().numpy()[0]))  # the first best, as torch.argmax; ~10x faster
            else:
                token = int(torch.argmax(scores, dim=-1)[0])
        else:
            found = top_p_candidates(scores, cfg.top_k, cfg.top_p)
            if found is not None:  # draw among the kept candidates only
                vals, ids = found
                choice = torch.multinomial(torch.softmax(vals, dim=-1), 1, generator=self.generator)
                token = int(ids[0, choice[0, 0]])
            else:
                probs = torch.softmax(top_p_filter(top_k_filter(scores, cfg.top_k), cfg.top_p), dim=-1)
                token = int(torch.multinomial(probs, 1, generator=self.generator)[0, 0])
        self.observe(token)
        return token

    def observe(self, token: int) -> None:
        if self._seen is not None and 0 <= token < self.vocab_size and token not in self._seen:
            self._seen.add(token)
            self._seen_ids = None
