"""The CUDA-graph decode path: static cache, on-device sampling, prefix reuse, and the fallback.

Without a GPU the decoder runs its graph body eagerly (`use_graph=False`): same static cache, same
in-step sampling, so results are checked on CPU; the capture itself is tested only where CUDA is.
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch

from firefly_core.formats import Message
from firefly_core.session import ChatSession
from firefly_core.errors import PromptTooLongError
from firefly_core.formats import Message
from firefly_core.generation import Decoder, GenerationConfig, ModelDecoder, ReplyDone, TokenSampler, generate_ids
from firefly_core.generation.cuda_graph import (
    CudaGraphDecoder,
    DeviceSampling,
    cuda_graph_unavailable_reason,
    enable_fast_decode,
)
from firefly_core.models.loading import load_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _prompt(lm, text="写一首关于萤火虫的诗。Write a poem about fireflies."):
    return lm.prompt_format.render(lm.tokenizer, [Message("user", text)], True).ids


def _loop_with(lm, decoder, prompt, config, *, step=None):
    """The loop's shape over the seam: prefill, then decode, each returning the next token.
    `step=Decoder` runs the generic step instead (the decoder's logits sampled by `TokenSampler`)."""
    step = step or type(decoder)
    sampler = TokenSampler(config, decoder.vocab_size, prompt, lm.device)
    cache = decoder.new_cache()
    with torch.inference_mode():
        token = step.prefill(decoder, prompt, cache, sampler)
        out = [token]
        while token not in lm.stop_token_ids and len(out) < config.max_new_tokens:
            token = step.decode(decoder, token, cache, sampler)
            out.append(token)
    return out


# ------------------------------------------------------------------------------------ fallback
def test_fallback_on_cpu_says_why_and_keeps_the_eager_loop(bloom_dir):
    lm = load_model(bloom_dir, device="cpu")
    said = []
    plan = enable_fast_decode(lm, status=said.append)
    assert not plan.graphed
    if not torch.cuda.is_available():
        assert "CUDA is not available" in plan.reason
    assert "cpu" in plan.reason and said and plan.reason in said[-1]
    assert isinstance(plan.decoder, ModelDecoder) and getattr(lm, "decoder", None) is plan.decoder
    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphDecoder(lm.model, 64, use_graph=True)


def test_reason_names_int8_and_unsupported_models(bloom_dir, monkeypatch):
    from firefly_core.generation.quantize import apply_quantization

    lm = load_model(bloom_dir, device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    lm_gpu = copy.copy(lm)
    lm_gpu.device = torch.device("cuda", 0)
    assert cuda_graph_unavailable_reason(lm) .startswith("the model is on cpu")
    monkeypatch.setattr(type(lm.model), "_can_compile_fullgraph", False)
    assert "static KV cache" in cuda_graph_unavailable_reason(lm_gpu)
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    apply_quantization(lm, "int8")
    assert "int8" in cuda_graph_unavailable_reason(lm_gpu)


# ------------------------------------------------------------------------- static cache (eager)
@pytest.mark.parametrize("penalty", [1.0, 1.2])
def test_static_cache_greedy_equals_the_eager_loop(model_dir, penalty):
    lm = load_model(model_dir, device="cpu", dtype="fp32")
    prompt = _prompt(lm)
    cfg = GenerationConfig(max_new_tokens=20, do_sample=False, repetition_penalty=penalty)
    reference = generate_ids(lm, prompt, cfg)
    dec = CudaGraphDecoder(lm.model, lm.context_length, use_graph=False)
    # Through the generation loop, the token drawn inside the decode step (the graph body) ...
    assert generate_ids(lm, prompt, cfg, decoder=dec) == reference
    # ... and its logits, sampled by the generic step (TokenSampler), give the same tokens.
    assert _loop_with(lm, dec, prompt, cfg, step=Decoder) == reference


def test_two_replies_interleaved_on_one_decoder_keep_their_own_settings(bloom_dir):
    """Sampling state lives in the decoder: a step of a reply other than the last one prefilled
    reloads that reply's settings (the penalty's ids come from its own cache)."""
    lm = load_model(bloom_dir, device="cpu", dtype="fp32")
    prompt = _prompt(lm)
    a_cfg = GenerationConfig(max_new_tokens=12, do_sample=False, repetition_penalty=1.5, stop_token_ids=())
    b_cfg = GenerationConfig(max_new_tokens=12, do_sample=False, repetition_penalty=1.0, stop_token_ids=())
    dec = CudaGraphDecoder(lm.model, lm.context_length, use_graph=False)
    want_a, want_b = generate_ids(lm, prompt, a_cfg), generate_ids(lm, prompt[:-3], b_cfg)
    assert want_a != want_b[: len(want_a)]
    caches = dec.new_cache(), dec.new_cache()
    samplers = [TokenSampler(c, dec.vocab_size, p) for c, p in ((a_cfg, prompt), (b_cfg, prompt[:-3]))]
    with torch.inference_mode():
        got = [[dec.prefill(prompt, caches[0], samplers[0])], [dec.prefill(prompt[:-3], caches[1], samplers[1])]]
        for _ in range(11):
            for i in (0, 1):
                got[i].append(dec.decode(got[i][-1], caches[i], samplers[i]))
    assert got == [want_a, want_b]


def test_three_turns_with_prefix_reuse_equal_fresh_prefill(model_dir):
    lm = load_model(model_dir, device="cpu", dtype="fp32")
    fresh = copy.copy(lm)
    fresh.decoder = ModelDecoder(lm.model)
    lm.decoder = CudaGraphDecoder(lm.model, lm.context_length, use_graph=False)
    cfg = GenerationConfig(max_new_tokens=8, do_sample=False)
    fast = ChatSession(lm, system="你是流萤。", config=cfg)
    history: list[Message] = []
    for turn, text in enumerate(["你好", "Tell me about fireflies.", "再写两句诗"]):
        history.append(Message("user", text))
        done = [e for e in fast.reply(history) if isinstance(e, ReplyDone)][0]
        if turn:
            assert done.stats.reused_tokens > 0  # only the new message was prefilled
        # A brand-new session with the eager decoder, same history: the same reply.
        ref_session = ChatSession(fresh, system="你是流萤。", config=cfg)
        ref = [e for e in ref_session.reply(history) if isinstance(e, ReplyDone)][0]
        assert ref.text == done.text
        assert ref.stats.reused_tokens == 0
        history.append(Message("assistant", done.text))


def test_caches_return_to_the_pool(bloom_dir):
    lm = load_model(bloom_dir, device="cpu")
    dec = CudaGraphDecoder(lm.model, 128, use_graph=False)
    h = dec.new_cache()
    slot = h.slot
    with torch.inference_mode():
        dec.forward(torch.tensor([[1, 5, 9]]), h)
    assert h.get_seq_length() == 3
    h.crop_to(1)
    assert h.get_seq_length() == 1
    del h
    gc.collect()
    again = dec.new_cache()
    assert again.slot is slot and again.get_seq_length() == 0  # reused, emptied
    other = dec.new_cache()
    assert other.slot is not slot  # a slot in use is never handed out twice
    with torch.inference_mode(), pytest.raises(PromptTooLongError, match="static KV cache holds 128"):
        dec.forward(torch.ones(1, 129, dtype=torch.long), other)
    assert other.get_seq_length() == 0  # nothing was written


# ----------------------------------------------------------------------------- device sampling
@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.35, top_p=0.85, top_k=0, repetition_penalty=1.2),
        dict(temperature=1.0, top_p=1.0, top_k=5, repetition_penalty=1.0),
        dict(temperature=0.7, top_p=0.5, top_k=20, repetition_penalty=1.5),
        dict(temperature=2.0, top_p=0.99, top_k=1, repetition_penalty=0.8),
    ],
)
def test_device_sampling_filters_match_token_sampler(settings):
    torch.manual_seed(0)
    vocab = 300
    logits = torch.randn(1, vocab) * 3
    logits[0, 7] = logits[0, 8]  # a tie
    prompt = [1, 7, 8, 42, 299]
    cfg = GenerationConfig(do_sample=True, **settings)
    ours = DeviceSampling(vocab, torch.device("cpu"))
    ours.configure(cfg, prompt)
    theirs = TokenSampler(cfg, vocab, prompt)
    expected = torch.softmax(theirs.process(logits.clone()), dim=-1)
    torch.testing.assert_close(ours.probabilities(logits), expected, rtol=1e-5, atol=1e-6)
    # Greedy: the argmax after the penalty only.
    greedy = GenerationConfig(do_sample=False, repetition_penalty=settings["repetition_penalty"])
    ours.configure(greedy, prompt)
    assert int(ours.sample(logits)) == TokenSampler(greedy, vocab, prompt).pick(logits.clone())


def test_device_sampling_draws_from_the_filtered_distribution_and_is_seeded():
    vocab = 6
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05, 0.0 + 1e-9]]))
    cfg = GenerationConfig(do_sample=True, temperature=1.0, top_p=0.9, top_k=0, repetition_penalty=1.0, seed=3)
    s = DeviceSampling(vocab, torch.device("cpu"))
    s.configure(cfg, [])
    draws = torch.stack([s.sample(logits) for _ in range(4000)]).view(-1)
    freq = torch.bincount(draws, minlength=vocab).float() / len(draws)
    expected = s.probabilities(logits)[0]
    assert expected[4] == 0 and expected[5] == 0  # top_p 0.9 drops the 0.05 tail
    assert float((freq - expected).abs().max()) < 0.03
    s.configure(cfg, [])
    again = torch.stack([s.sample(logits) for _ in range(50)]).view(-1)
    assert torch.equal(again, draws[:50])  # same seed, same draws


def test_seeded_sampling_through_the_decoder_is_reproducible(bloom_dir):
    lm = load_model(bloom_dir, device="cpu")
    dec = CudaGraphDecoder(lm.model, lm.context_length, use_graph=False)
    cfg = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=1.0, top_p=0.95, seed=11)
    prompt = _prompt(lm)
    assert _loop_with(lm, dec, prompt, cfg) == _loop_with(lm, dec, prompt, cfg)


# ------------------------------------------------------------------------------------- on CUDA
@needs_cuda
@pytest.mark.parametrize("penalty", [1.0, 1.2])
def test_cuda_graph_greedy_equals_eager(model_dir, penalty):
    lm = load_model(model_dir, device="cuda", dtype="fp32")  # fp32: no bf16 near-ties between paths
    prompt = _prompt(lm)
    cfg = GenerationConfig(max_new_tokens=24, do_sample=False, repetition_penalty=penalty)
    reference = generate_ids(lm, prompt, cfg)
    said = []
    plan = enable_fast_decode(lm, status=said.append)
    assert plan.graphed, plan.reason
    assert any("CUDA graph ready" in s for s in said)
    assert generate_ids(lm, prompt, cfg, decoder=plan.decoder) == reference
    assert _loop_with(lm, plan.decoder, prompt, cfg) == reference


@needs_cuda
def test_cuda_graph_prefix_reuse_and_seeded_sampling(bloom_dir):
    lm = load_model(bloom_dir, device="cuda", dtype="fp32")
    fresh = copy.copy(lm)
    fresh.decoder = ModelDecoder(lm.model)
    assert enable_fast_decode(lm).graphed
    cfg = GenerationConfig(max_new_tokens=8, do_sample=False)
    fast = ChatSession(lm, config=cfg)
    history: list[Message] = []
    for text in ["你好", "Tell me about fireflies.", "再写两句诗"]:
        history.append(Message("user", text))
        done = [e for e in fast.reply(history) if isinstance(e, ReplyDone)][0]
        ref = [e for e in ChatSession(fresh, config=cfg).reply(history) if isinstance(e, ReplyDone)][0]
        assert ref.text == done.text
        history.append(Message("assistant", done.text))
    sampled = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=1.0, seed=5)
    prompt = _prompt(lm)
    assert _loop_with(lm, lm.decoder, prompt, sampled) == _loop_with(lm, lm.decoder, prompt, sampled)
