"""The bf16 GEMV decode kernel: exact against a float64 reference, and a drop-in for decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from firefly_core.generation import GenerationConfig, generate_ids
from firefly_core.generation.cpu_route import CpuRoute, apply_route
from firefly_core.generation.gemv import gemv_linear
from firefly_core.models.loading import load_model

# Built once per run under the run's own folder (conftest), not while pytest collects.
pytestmark = pytest.mark.usefixtures("gemv_kernels")


@pytest.mark.parametrize("n,k", [(8, 16), (37, 67), (46145 // 64, 2048), (5, 3)])
def test_matches_float64_reference(n, k):
    g = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randn(n, k, generator=g).bfloat16()
    x = torch.randn(1, 1, k, generator=g).bfloat16()
    bias = torch.randn(n, generator=g).bfloat16()
    exact = (x.double().reshape(-1) @ w.double().T + bias.double()).reshape(1, 1, n)
    ours = gemv_linear(x, w, bias)
    assert ours.shape == (1, 1, n) and ours.dtype == torch.bfloat16
    # Only the final rounding to bf16 differs from the exact result (fp32 accumulation).
    torch.testing.assert_close(ours.double(), exact, rtol=2 ** -7, atol=1e-3)
    torch.testing.assert_close(ours, F.linear(x, w, bias), rtol=2 ** -7, atol=1e-2)


def test_the_route_sends_only_single_bf16_rows_to_the_kernel(monkeypatch):
    from firefly_core.generation import cpu_route

    rows = []
    monkeypatch.setattr(cpu_route, "gemv_linear", lambda x, w, b: rows.append(x.shape) or gemv_linear(x, w, b))
    layer = torch.nn.Linear(32, 16).bfloat16()
    apply_route(layer, CpuRoute(gemv=True))
    with torch.no_grad():
        two_rows = layer(torch.randn(2, 32).bfloat16())
        one_row = layer(torch.randn(1, 1, 32).bfloat16())
    assert two_rows.shape == (2, 16) and one_row.shape == (1, 1, 16)
    assert rows == [(1, 1, 32)]
    fp32 = torch.nn.Linear(32, 16)
    apply_route(fp32, CpuRoute(gemv=True))
    with torch.no_grad():
        assert fp32(torch.randn(1, 32)).dtype == torch.float32 and len(rows) == 1


def test_greedy_decoding_with_the_kernel_matches_pytorch(bloom_dir):
    plain = load_model(bloom_dir, dtype="bf16")
    routed = load_model(bloom_dir, dtype="bf16")
    apply_route(routed.model, CpuRoute(gemv=True))
    prompt = plain.tokenizer.encode("床前明月光，疑是地上霜。", add_special_tokens=False)
    cfg = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=24)
    assert generate_ids(routed, prompt, cfg) == generate_ids(plain, prompt, cfg)


@pytest.mark.parametrize("n,k", [(8, 16), (37, 67), (512, 2048)])
def test_int8_kernel_matches_float64_reference(n, k):
    from firefly_core.generation.gemv import gemv_int8_linear

    g = torch.Generator().manual_seed(n + k)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scales = torch.rand(n, generator=g) / 100
    x = torch.randn(1, k, generator=g)
    exact = (x.double() @ q.double().T) * scales.double()
    torch.testing.assert_close(gemv_int8_linear(x, q, scales).double(), exact, rtol=1e-5, atol=1e-5)


def test_int8_decoding_with_the_kernel_matches_the_dequantized_layer(bloom_dir):
    from firefly_core.generation.quantize import Int8Linear, quantize_int8

    lm = load_model(bloom_dir, dtype="bf16")
    quantize_int8(lm.model)
    apply_route(lm.model, CpuRoute(gemv=True))
    layer = next(m for m in lm.model.modules() if isinstance(m, Int8Linear))
    assert layer.use_gemv and "gemv" in repr(layer)
    x = torch.randn(1, 1, layer.in_features).bfloat16()
    reference = F.linear(x.float(), layer.dequantized_weight(torch.float32))
    torch.testing.assert_close(layer(x).float(), reference, rtol=2 ** -7, atol=2e-2)
