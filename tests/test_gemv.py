"""The bf16 GEMV decode kernel: exact against a float64 reference, and a drop-in for decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from firefly_core.generation import GenerationConfig, ModelDecoder, generate_ids
from firefly_core.generation.gemv import gemv_linear, gemv_matmuls
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


def test_mode_only_takes_single_bf16_rows():
    w = torch.randn(16, 32).bfloat16()
    with gemv_matmuls():
        two_rows = F.linear(torch.randn(2, 32).bfloat16(), w)
        fp32 = F.linear(torch.randn(1, 32), w.float())
    assert two_rows.shape == (2, 16) and fp32.dtype == torch.float32


def test_greedy_decoding_with_the_kernel_matches_pytorch(bloom_dir):
    lm = load_model(bloom_dir, dtype="bf16")
    prompt = lm.tokenizer.encode("床前明月光，疑是地上霜。", add_special_tokens=False)
    cfg = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=24)
    with_kernel = generate_ids(lm, prompt, cfg, decoder=ModelDecoder(lm.model, fast_gemv=True))
    without = generate_ids(lm, prompt, cfg, decoder=ModelDecoder(lm.model, fast_gemv=False))
    assert with_kernel == without


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
    layer = next(m for m in lm.model.modules() if isinstance(m, Int8Linear))
    x = torch.randn(1, 1, layer.in_features).bfloat16()
    reference = F.linear(x.float(), layer.dequantized_weight(torch.float32))
    torch.testing.assert_close(layer(x).float(), reference, rtol=2 ** -7, atol=2e-2)
