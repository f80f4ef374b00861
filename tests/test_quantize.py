"""Int8 weight-only quantization: the layer's arithmetic, the model swap, generation through our loop,
the LoadedModel hook, and the quality measurement."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from firefly_core.errors import ConfigError
from firefly_core.generation import GenerationConfig, generate_ids, generate_stream
from firefly_core.generation.quantize import (
    Int8Linear,
    apply_quantization,
    int8_kernel_supported,
    quantization_of,
    quantize_int8,
    quantize_weight_int8,
)
from firefly_core.models.loading import load_model


def _linear(in_f: int, out_f: int, bias: bool = True, dtype=torch.bfloat16, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias).to(dtype)


def test_weight_quantization_is_within_half_a_step_per_row():
    torch.manual_seed(0)
    w = torch.randn(64, 48) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different magnitude
    w[5] = 0.0  # an all-zero row must not divide by zero
    q, scales = quantize_weight_int8(w)
    assert q.dtype == torch.int8 and scales.dtype == torch.bfloat16
    assert int(q.abs().max()) <= 127
    deq = q.float() * scales.float()[:, None]
    step = scales.float()[:, None]
    assert torch.all((deq - w).abs() <= step / 2 + 1e-6 * w.abs().amax(1, keepdim=True))
    assert torch.equal(deq[5], torch.zeros(48))
    # The largest weight of each row maps to (close to) +-127: the range is fully used.
    nonzero = w.abs().amax(1) > 0
    assert torch.all(q[nonzero].abs().amax(1) >= 126)


@pytest.mark.parametrize("shape", [(2048, 512), (96, 400), (24, 40)])
@pytest.mark.parametrize("bias", [True, False])
@torch.no_grad()
def test_int8_linear_matches_float_reference_within_quantization_error(shape, bias):
    in_f, out_f = shape
    lin = _linear(in_f, out_f, bias)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(3, 5, in_f, dtype=torch.bfloat16)
    y = q(x)
    assert y.shape == (3, 5, out_f) and y.dtype == torch.bfloat16
    # Exact reference for what the layer claims to compute: x @ dequantized(W).T + b, in float64.
    ref = x.double() @ q.dequantized_weight(torch.float64).t()
    if bias:
        ref = ref + lin.bias.double()
    scale = ref.abs().amax()
    assert float((y.double() - ref).abs().amax() / scale) < 1e-2  # bf16 output rounding only
    # And against the original float layer: int8 error is bounded by half a step per weight.
    full = x.double() @ lin.weight.double().t() + (lin.bias.double() if bias else 0)
    bound = (x.double().abs() @ (q.scales.double()[:, None] / 2).expand(out_f, in_f).t()).amax()
    assert float((y.double() - full).abs().amax()) <= float(bound) + 1e-2 * float(full.abs().amax())


def test_kernel_and_fallback_agree_and_odd_widths_use_the_fallback():
    lin = _linear(64, 100)
    q = Int8Linear.from_linear(lin)
    assert q.use_kernel == int8_kernel_supported("cpu", 64)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    y_kernel = q(x)
    q.use_kernel = False
    y_fallback = q(x)
    torch.testing.assert_close(y_kernel.float(), y_fallback.float(), rtol=2e-2, atol=2e-2)
    # A reduction length that is not a multiple of 8 gives wrong results in the CPU kernel: refused.
    odd = Int8Linear.from_linear(_linear(20, 16))
    assert not odd.use_kernel
    x = torch.randn(2, 20, dtype=torch.bfloat16)
    ref = x.double() @ odd.dequantized_weight(torch.float64).t() + odd.bias.double()
    assert float((odd(x).double() - ref).abs().amax()) < 2e-2 * float(ref.abs().amax())


def test_float32_inputs_come_back_float32():
    lin = _linear(32, 16, dtype=torch.float32)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(2, 32)
    y = q(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, lin(x), rtol=5e-2, atol=5e-2)


def test_quantize_int8_swaps_linears_and_honours_skip(bloom_dir):
    lm = load_model(bloom_dir, dtype="bf16")
    n_linear = sum(type(m) is nn.Linear for m in lm.model.modules())
    report = quantize_int8(lm.model, skip=("lm_head",))
    assert report.skipped == ["lm_head"]
    assert len(report.quantized) == n_linear - 1
    assert type(lm.model.lm_head) is nn.Linear
    assert sum(isinstance(m, Int8Linear) for m in lm.model.modules()) == n_linear - 1
    assert report.bytes_after < 0.6 * report.bytes_before  # int8 + a scale per row vs bf16
    assert quantization_of(lm.model) is report
    assert "int8" in report.summary()


def test_quantized_model_generates_through_our_loop(model_dir):
    lm = load_model(model_dir, dtype="bf16")
    prompt = lm.prompt_format.render(lm.tokenizer, [_user("你好，流萤")], True).ids
    cfg = GenerationConfig(max_new_tokens=12, do_sample=False, repetition_penalty=1.2)
    before = generate_ids(lm, prompt, cfg)
    report = apply_quantization(lm, "int8")
    assert report is not None and report.quantized and "lm_head" in report.quantized[-1]
    after = generate_ids(lm, prompt, cfg)
    assert len(after) >= 1
    # The greedy decode through our loop equals transformers' own generate on the quantized model.
    out = lm.model.generate(
        torch.tensor([prompt]), max_new_tokens=12, do_sample=False, repetition_penalty=1.2,
        eos_token_id=lm.stop_token_ids, pad_token_id=lm.tokenizer.pad_token_id,
    )
    assert after == out[0, len(prompt):].tolist()
    # The tiny random models are peaked, so int8 keeps the greedy path for at least a few tokens.
    assert after[:3] == before[:3]
    events = list(generate_stream(lm, prompt, GenerationConfig(max_new_tokens=8, seed=1)))
    assert events[-1].stats.new_tokens >= 1


def test_apply_quantization_errors_and_idempotence(bloom_dir):
    lm = load_model(bloom_dir, dtype="bf16")
    assert apply_quantization(lm, None) is None and apply_quantization(lm, "none") is None
    with pytest.raises(ConfigError, match="unknown quantization"):
        apply_quantization(lm, "int3")
    first = apply_quantization(lm, "int8")
    assert apply_quantization(lm, "int8") is first  # a second call does not quantize twice

    class OnGpu:
        device = torch.device("cuda", 0)
        model = lm.model

    with pytest.raises(ConfigError, match="for CPU") as e:
        apply_quantization(OnGpu(), "int8")
    assert "--device cpu" in e.value.hint


@pytest.mark.slow
def test_quality_measurement_returns_sane_numbers():
    from firefly_core.quality import measure_int8_quality

    r = measure_int8_quality(steps=40, new_tokens=8)
    for ppl in (r.ppl_heldout_bf16, r.ppl_heldout_int8, r.ppl_train_bf16, r.ppl_train_int8):
        assert math.isfinite(ppl) and 1.0 < ppl < 400  # vocabulary 400: uniform guessing is 400
    assert r.ppl_train_bf16 < 300  # 40 steps already learned something
    assert abs(r.ppl_heldout_int8 / r.ppl_heldout_bf16 - 1) < 0.05
    assert 0.0 <= r.sequence_agreement <= 1.0 and 0.8 <= r.token_agreement <= 1.0
    assert r.heldout_lines > 0 and r.heldout_tokens > r.heldout_lines
    assert r.prompts * r.new_tokens > 0 and "perplexity" in r.summary()


def _user(text: str):
    from firefly_core.formats import Message

    return Message("user", text)


def test_chat_cli_quantize_flag(bloom_dir):
    """`firefly chat --quantize int8` with piped stdin replies like a quantized ChatSession does."""
    import os
    import subprocess
    import sys

    from firefly_core.formats import Message
    from firefly_core.generation import ReplyDone
    from firefly_core.session import ChatSession

    cfg = GenerationConfig(max_new_tokens=6, do_sample=False)
    from firefly_core.models.service import prepare_cpu_route

    lm = load_model(bloom_dir, device="cpu")
    apply_quantization(lm, "int8")
    prepare_cpu_route(lm.model)  # the route the CLI's model service writes (our kernel where it builds)
    expected = [e for e in ChatSession(lm, config=cfg).reply([Message("user", "你好")]) if isinstance(e, ReplyDone)][0].text
    proc = subprocess.run(
        [sys.executable, "-m", "firefly_tui.cli", "chat", "--model", str(bloom_dir), "--device", "cpu",
         "--quantize", "int8", "--greedy", "--max-new-tokens", "6"],
        input="你好\n", capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected + "\n"
    bad = subprocess.run(
        [sys.executable, "-m", "firefly_tui.cli", "chat", "--model", str(bloom_dir), "--quantize", "int4"],
        input="", capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert bad.returncode != 0 and "invalid choice" in bad.stderr
