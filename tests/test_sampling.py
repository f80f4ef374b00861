"""Sampling filters against transformers' own logits processors, on hand-built logits; seeding."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from firefly_core.errors import ConfigError
from firefly_core.generation import GenerationConfig, TokenSampler
from firefly_core.generation.sampling import (
    apply_repetition_penalty,
    apply_temperature,
    top_k_filter,
    top_p_filter,
)

# Hand-built: ties, negatives, zero, a clear winner, and a flat tail.
HAND = torch.tensor([[2.0, -1.0, 0.0, 2.0, 5.0, -3.5, 1.0, 1.0, 0.5, -0.5]])


def _random_logits(seed: int, vocab: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, vocab, generator=g) * 3


LOGITS = [HAND] + [_random_logits(s) for s in range(5)]


@pytest.mark.parametrize("logits", LOGITS)
@pytest.mark.parametrize("penalty", [1.2, 0.7, 1.0])
def test_repetition_penalty_matches_transformers(logits, penalty):
    seen_ids = torch.tensor([[1, 4, 4, 2, 5, 9]])  # repeats are penalised once, like transformers
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen[0, seen_ids[0]] = True
    ours = apply_repetition_penalty(logits.clone(), seen, penalty)
    ref = RepetitionPenaltyLogitsProcessor(penalty)(seen_ids, logits.clone())
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


@pytest.mark.parametrize("logits", LOGITS)
@pytest.mark.parametrize("temperature", [0.35, 1.0, 2.5])
def test_temperature_matches_transformers(logits, temperature):
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    torch.testing.assert_close(apply_temperature(logits.clone(), temperature), ref)


@pytest.mark.parametrize("logits", LOGITS)
@pytest.mark.parametrize("k", [1, 2, 4, 9, 100])
def test_top_k_matches_transformers(logits, k):
    ref = TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(top_k_filter(logits.clone(), k), ref)


def test_top_k_keeps_ties_and_zero_means_off():
    out = top_k_filter(HAND.clone(), 2)  # 5.0, then the two tied 2.0s
    assert torch.isfinite(out).sum() == 3
    assert torch.equal(top_k_filter(HAND.clone(), 0), HAND)


@pytest.mark.parametrize("logits", LOGITS)
@pytest.mark.parametrize("p", [0.01, 0.3, 0.85, 0.95, 0.999, 1.0])
def test_top_p_matches_transformers(logits, p):
    ref = TopPLogitsWarper(top_p=p)(None, logits.clone())
    assert torch.equal(top_p_filter(logits.clone(), p), ref)


def test_top_p_on_known_distribution():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.85 needs the first three tokens, 0.5 only one.
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(top_p_filter(logits, 0.85)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("logits", LOGITS)
def test_full_chain_matches_transformers_order(logits):
    """Penalty, then temperature, top-k, top-p: the order `generate` builds its processors in."""
    cfg = GenerationConfig(temperature=0.7, top_k=6, top_p=0.8, repetition_penalty=1.3, seed=0)
    prompt = [0, 3, 3, 7]
    sampler = TokenSampler(cfg, logits.shape[-1], prompt)
    ids = torch.tensor([prompt])
    ref = logits.clone()
    for proc in (
        RepetitionPenaltyLogitsProcessor(1.3),
        TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(6),
        TopPLogitsWarper(0.8),
    ):
        ref = proc(ids, ref)
    torch.testing.assert_close(sampler.process(logits.clone()), ref)


def test_greedy_ignores_warpers_but_applies_penalty():
    logits = torch.tensor([[1.0, 3.0, 2.9]])
    sampler = TokenSampler(GenerationConfig(do_sample=False, temperature=5.0, top_k=1), 3, [1])
    assert sampler.pick(logits) == 2  # 3.0 / 1.2 = 2.5 < 2.9
    assert TokenSampler(GenerationConfig(do_sample=False, repetition_penalty=1.0), 3, [1]).pick(logits) == 1


def test_picked_tokens_are_penalised_next():
    logits = torch.tensor([[3.0, 2.8, 0.0]])
    sampler = TokenSampler(GenerationConfig(do_sample=False), 3, [])
    assert [sampler.pick(logits), sampler.pick(logits), sampler.pick(logits)] == [0, 1, 0]


def test_samples_only_from_the_kept_set_and_seed_repeats():
    logits = _random_logits(7, vocab=200)
    cfg = GenerationConfig(temperature=1.0, top_k=5, top_p=1.0, repetition_penalty=1.0, seed=123)
    allowed = set(torch.topk(logits, 5).indices[0].tolist())
    draws = [TokenSampler(cfg, 200, []).pick(logits) for _ in range(3)]
    assert len(set(draws)) == 1  # a fresh sampler with the same seed draws the same token
    sampler = TokenSampler(cfg, 200, [])
    many = {sampler.pick(logits) for _ in range(200)}
    assert many <= allowed and len(many) > 1


def test_sampling_follows_the_distribution():
    probs = torch.tensor([[0.7, 0.2, 0.1]])
    cfg = GenerationConfig(temperature=1.0, top_p=1.0, repetition_penalty=1.0, seed=5)
    sampler = TokenSampler(cfg, 3, [])
    counts = torch.bincount(torch.tensor([sampler.pick(probs.log()) for _ in range(3000)]), minlength=3)
    assert torch.allclose(counts / 3000.0, probs[0], atol=0.03)


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"repetition_penalty": 0.0},
        {"max_new_tokens": 0},
        {"stop_strings": ("",)},
    ],
)
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        GenerationConfig(**bad)


def test_defaults_are_the_seeds_and_temperature_zero_is_greedy():
    cfg = GenerationConfig()
    assert (cfg.top_p, cfg.temperature, cfg.repetition_penalty, cfg.max_new_tokens) == (0.85, 0.35, 1.2, 200)
    assert cfg.do_sample and cfg.top_k == 0
    assert GenerationConfig(temperature=0).do_sample is False
    assert cfg.with_overrides(top_p=None, top_k=3).top_k == 3
    with pytest.raises(ConfigError):
        cfg.with_overrides(nucleus=0.5)


# -- the top-p prefilter (a topk of candidates instead of sorting the vocabulary) ----------------
BIG_VOCAB = 151_936  # Qwen2.5's: where a full sort per token costs milliseconds


def _lm_like_logits(seed: int, peak: float) -> torch.Tensor:
    """Logits shaped like a language model's: a long low tail and a few likely tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, BIG_VOCAB, generator=g) * 2
    top = torch.randint(0, BIG_VOCAB, (12,), generator=g)
    logits[0, top] += peak * torch.rand(12, generator=g) + peak
    return logits


def _transformers_chain(logits, cfg, prompt):
    ids = torch.tensor([prompt])
    out = logits.clone()
    procs = [RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty), TemperatureLogitsWarper(cfg.temperature)]
    if cfg.top_k:
        procs.append(TopKLogitsWarper(cfg.top_k))
    procs.append(TopPLogitsWarper(cfg.top_p))
    for proc in procs:
        out = proc(ids, out)
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "settings, decided",
    [
        (dict(temperature=0.35, top_p=0.85, top_k=0, repetition_penalty=1.2), True),  # firefly chat's defaults
        (dict(temperature=0.7, top_p=0.9, top_k=0, repetition_penalty=1.0), None),  # either way: still exact
        (dict(temperature=1.0, top_p=0.95, top_k=40, repetition_penalty=1.1), True),  # ollama-like
        (dict(temperature=1.5, top_p=0.5, top_k=0, repetition_penalty=1.0), None),
    ],
)
def test_prefilter_gives_transformers_distribution_exactly_on_a_real_vocabulary(seed, settings, decided):
    from firefly_core.generation.sampling import top_p_candidates

    logits = _lm_like_logits(seed, peak=6.0 + seed)
    prompt = list(range(0, BIG_VOCAB, 997))[:200]
    cfg = GenerationConfig(seed=0, **settings)
    sampler = TokenSampler(cfg, BIG_VOCAB, prompt)
    assert torch.equal(sampler.process(logits.clone()), _transformers_chain(logits, cfg, prompt))
    if decided:  # peaked enough (or top-k): the prefilter decided, no full sort ran
        assert top_p_candidates(sampler._scores(logits.clone()), cfg.top_k, cfg.top_p) is not None


def test_prefilter_falls_back_to_the_full_sort_when_it_cannot_decide_exactly():
    from firefly_core.generation.sampling import CANDIDATES, top_p_candidates

    flat = torch.zeros(1, BIG_VOCAB)  # top_p of a flat distribution needs far more than the candidates
    assert top_p_candidates(flat, 0, 0.85) is None
    assert torch.equal(TokenSampler(GenerationConfig(top_p=0.85, temperature=1.0, repetition_penalty=1.0), BIG_VOCAB, []).process(flat),
                       TopPLogitsWarper(0.85)(None, flat.clone()))
    # a threshold exactly between two tokens: 0.5 + 0.25 | 0.25 at top_p 0.75
    edge = torch.full((1, BIG_VOCAB), -1e4)
    edge[0, :3] = torch.tensor([0.5, 0.25, 0.25]).log()
    assert top_p_candidates(edge, 0, 0.75) is None
    # tokens tied at the boundary: which one top-p drops depends on the sort, so the sort decides
    tie = torch.full((1, BIG_VOCAB), -1e4)
    tie[0, :3] = torch.tensor([0.4, 0.3, 0.3]).log()
    assert top_p_candidates(tie, 0, 0.5) is None
    # top_k tied with the k-th value keeps more than k: the full filters decide
    assert top_p_candidates(tie, 2, 0.9) is None
    assert top_p_candidates(edge, CANDIDATES + 1, 0.9) is None
    # and a clear case is decided by the prefilter: the 0.5 and 0.3 tokens, not the 0.2 one
    clear = torch.full((1, BIG_VOCAB), -1e4)
    clear[0, 5], clear[0, 9], clear[0, 7] = torch.tensor([0.5, 0.3, 0.2]).log()
    vals, ids = top_p_candidates(clear, 0, 0.7)
    assert ids.tolist() == [[5, 9]]


def test_prefilter_draws_follow_the_kept_distribution():
    logits = torch.full((1, BIG_VOCAB), -1e4)
    logits[0, [3, 30, 300, 3000]] = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    cfg = GenerationConfig(temperature=1.0, top_p=0.9, repetition_penalty=1.0, seed=9)
    sampler = TokenSampler(cfg, BIG_VOCAB, [])
    counts = torch.bincount(torch.tensor([sampler.pick(logits) for _ in range(3000)]), minlength=BIG_VOCAB)
    assert counts[3000] == 0 and counts.sum() == counts[[3, 30, 300]].sum()  # 0.05 is past top_p 0.9
    torch.testing.assert_close(counts[[3, 30, 300]] / 3000.0, torch.tensor([0.5, 0.3, 0.15]) / 0.95, atol=0.03, rtol=0)
