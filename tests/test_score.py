"""Scoring continuations (evaluation's log-likelihood) against full-sequence oracles.

Oracles: transformers' own forward pass over `context + continuation` (log-softmax of its logits,
fp32 tiny models) for the torch engines; llama.cpp's own full-sequence logits for llama.cpp. The
prefill-once promise is checked by counting the tokens the decoder actually runs.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from firefly_core.errors import FireflyError, PromptTooLongError
from firefly_core.generation.cuda_graph import CudaGraphDecoder
from firefly_core.generation.loop import ModelDecoder
from firefly_core.generation.score import Continuation, score_continuations
from firefly_core.models.loading import load_model

CONTEXT = "问题：萤火虫为什么会发光？答案："
ANSWERS = [" 因为化学反应。", " because of luciferin", "！", " A"]


@pytest.fixture(scope="module")
def lms(bloom_dir, qwen_dir):
    return {
        "bloom": load_model(bloom_dir, dtype="fp32", device="cpu"),
        "qwen2": load_model(qwen_dir, dtype="fp32", device="cpu"),
    }


def _ids(lm, text):
    return lm.tokenizer.encode(text, add_special_tokens=False)


def _oracle(lm, context, cont) -> tuple[float, bool]:
    """transformers on the whole sequence: log-softmax of logits[len(context)-1 : -1]."""
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([context + cont])).logits[0].float()
    rows = logits[len(context) - 1 : len(context) + len(cont) - 1]
    logp = torch.log_softmax(rows, dim=-1)
    target = torch.tensor(cont)
    return float(logp.gather(-1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


class Counting:
    """Wraps a decoder and counts the tokens it runs (so prefill-once is proven, not assumed)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.vocab_size, self.device = inner.vocab_size, inner.device

    def new_cache(self):
        return self.inner.new_cache()

    def forward(self, ids, cache, every_position=False):
        self.calls.append(ids.shape[-1])
        return self.inner.forward(ids, cache, every_position)


def _with_decoder(lm, decoder):
    lm = dataclasses.replace(lm)
    lm.decoder = decoder
    return lm


def _check(lm, context, conts, got):
    assert len(got) == len(conts)
    for cont, score in zip(conts, got):
        want, greedy = _oracle(lm, context, cont)
        assert isinstance(score, Continuation)
        assert score.logprob == pytest.approx(want, abs=1e-4)
        assert score.greedy == greedy


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_multi_token_continuations_equal_transformers_full_sequence(lms, family, one_torch_thread):
    lm = lms[family]
    context = _ids(lm, CONTEXT)
    conts = [_ids(lm, a) for a in ANSWERS]
    assert any(len(c) > 3 for c in conts)
    dec = Counting(ModelDecoder(lm.model))
    got = score_continuations(_with_decoder(lm, dec), context, conts)
    _check(lm, context, conts, got)
    # the context ran once; each continuation ran only its own tokens but the last
    assert dec.calls == [len(context)] + [len(c) - 1 for c in conts if len(c) > 1]


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_single_token_continuations_take_one_forward_pass(lms, family, one_torch_thread):
    lm = lms[family]
    context = _ids(lm, CONTEXT)
    conts = [[t] for t in range(0, 40, 3)]
    dec = Counting(ModelDecoder(lm.model))
    got = score_continuations(_with_decoder(lm, dec), context, conts)
    _check(lm, context, conts, got)
    assert dec.calls == [len(context)]
    # the argmax token is the one greedy continuation, and its logprob is the highest
    full = lm.model(input_ids=torch.tensor([context])).logits[0, -1]
    best = int(full.argmax())
    [top] = score_continuations(_with_decoder(lm, dec), context, [[best]])
    assert top.greedy and all(top.logprob >= s.logprob for s in got)


def test_prefix_cache_is_reused_and_left_holding_the_context(lms, one_torch_thread):
    lm = lms["qwen2"]
    header = _ids(lm, "以下是选择题。Answer with one letter.\n")
    q1, q2 = header + _ids(lm, "问题一：1+1=？答案："), header + _ids(lm, "问题二：天空是什么颜色？答案：")
    conts = [_ids(lm, " A"), _ids(lm, " 蓝色的天空")]
    dec = Counting(ModelDecoder(lm.model))
    slm = _with_decoder(lm, dec)
    prefix = dec.new_cache()
    _check(lm, q1, conts, score_continuations(slm, q1, conts, prefix))
    assert prefix.ids == q1
    dec.calls.clear()
    _check(lm, q2, conts, score_continuations(slm, q2, conts, prefix))
    assert prefix.ids == q2
    common = next(i for i, (a, b) in enumerate(zip(q1, q2)) if a != b)
    assert common >= len(header) - 1
    assert dec.calls[0] == len(q2) - common  # only what the two questions do not share ran
    # scoring the same context again runs only its last token
    dec.calls.clear()
    score_continuations(slm, q2, conts, prefix)
    assert dec.calls[0] == 1


def test_cuda_graph_decoder_scores_through_its_static_cache(lms, one_torch_thread):
    lm = lms["qwen2"]
    context = _ids(lm, CONTEXT)
    conts = [_ids(lm, a) for a in ANSWERS]
    dec = CudaGraphDecoder(lm.model, 256, use_graph=torch.cuda.is_available() and lm.device.type == "cuda")
    _check(lm, context, conts, score_continuations(_with_decoder(lm, dec), context, conts))


def test_bad_inputs_are_clear_errors(lms):
    lm = _with_decoder(lms["bloom"], ModelDecoder(lms["bloom"].model))
    with pytest.raises(FireflyError, match="context"):
        score_continuations(lm, [], [[1]])
    with pytest.raises(FireflyError, match="empty"):
        score_continuations(lm, [1, 2], [[3], []])
    with pytest.raises(FireflyError, match="token id"):
        score_continuations(lm, [1, 2], [[10**7]])
    small = dataclasses.replace(lm)
    small.context_length = 8
    with pytest.raises(PromptTooLongError):
        score_continuations(small, list(range(1, 7)), [[1, 2, 3]])


# ------------------------------------------------------------------------------------- llama.cpp
@pytest.fixture(scope="module")
def ggufs(lms, tmp_path_factory, llamacpp_module):
    from firefly_core.export.gguf import export_gguf

    out = tmp_path_factory.mktemp("gguf")
    return {f: export_gguf(lm, out / f"{f}.gguf", gguf_type="f32") for f, lm in lms.items()}


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_llamacpp_scores_equal_its_own_full_sequence_scoring(lms, ggufs, family, llamacpp):
    from firefly_core.generation.llamacpp import LlamaCppDecoder

    lm = lms[family]
    context = _ids(lm, CONTEXT)
    conts = [_ids(lm, a) for a in ANSWERS] + [[t] for t in range(0, 40, 7)]
    # n_batch 4: the context and the longer answers run in several chunks (logits read per chunk)
    dec = Counting(LlamaCppDecoder(ggufs[family], n_ctx=256, threads=1, n_batch=4))
    got = score_continuations(_with_decoder(lm, dec), context, conts)
    assert dec.calls == [len(context)] + [len(c) - 1 for c in conts if len(c) > 1]
    oracle = LlamaCppDecoder(ggufs[family], n_ctx=256, threads=1)  # one pass over each whole sequence
    for cont, score in zip(conts, got):
        every = oracle.forward(torch.tensor([context + cont]), oracle.new_cache(), every_position=True)
        rows = every[len(context) - 1 : -1]
        logp = torch.log_softmax(rows, dim=-1).gather(-1, torch.tensor(cont)[:, None]).sum()
        assert score.logprob == pytest.approx(float(logp), abs=1e-4)
        assert score.greedy == bool((rows.argmax(-1) == torch.tensor(cont)).all())
        # and an f32 GGUF agrees with transformers' own scoring
        assert score.logprob == pytest.approx(_oracle(lm, context, cont)[0], abs=1e-2)
