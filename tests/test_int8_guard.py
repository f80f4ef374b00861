"""The int8 kernel guard is logic, not luck: whatever CPU runs the tests, a layer calls PyTorch's
`_weight_int8pack_mm` only for the shapes the running CPU code path is known to handle, and the
choice is made once, when the layer is quantized.

PyTorch 2.13's AVX-512 path returns garbage for in_features % 16 != 0 and segfaults the process
from 7 rows on; the AVX2/default paths are right for multiples of 8. The capability is
monkeypatched here, so the same assertions run on an AVX2, AVX-512 or ARM machine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from firefly_core.generation import quantize
from firefly_core.generation.quantize import Int8Linear, int8_kernel_supported


@pytest.mark.parametrize(
    ("capability", "in_features", "expected"),
    [
        ("AVX512", 16, True),
        ("AVX512", 400, True),
        ("AVX512", 24, False),  # the shape that crashed test_quantize on a Zen 4
        ("AVX512", 40, False),
        ("AVX2", 24, True),
        ("AVX2", 40, True),
        ("AVX2", 20, False),
        ("DEFAULT", 24, True),
        ("DEFAULT", 12, False),
        ("NEON", 64, False),  # a code path nobody measured: the fallback, never the kernel
    ],
)
def test_kernel_admits_only_shapes_the_cpu_path_handles(monkeypatch, capability, in_features, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert int8_kernel_supported("cpu", in_features) is expected
    assert int8_kernel_supported("cpu", in_features, capability) is expected
    assert int8_kernel_supported("meta", in_features) is False


def _spy(monkeypatch) -> list[tuple]:
    """Record every call of the kernel; a call outside the guard would fail the test, not the CPU."""
    calls: list[tuple] = []

    def fake(x, q, scales):
        calls.append(tuple(q.shape))
        return torch.nn.functional.linear(x, q.to(x.dtype)) * scales

    monkeypatch.setattr(quantize, "_int8pack_mm", fake)
    return calls


@torch.no_grad()
def test_the_choice_is_made_at_quantization_and_kept_for_every_call(monkeypatch):
    calls = _spy(monkeypatch)
    torch.manual_seed(0)
    lin = nn.Linear(24, 40).to(torch.bfloat16)

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    on_avx512 = Int8Linear.from_linear(lin)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    on_avx2 = Int8Linear.from_linear(lin)
    assert not on_avx512.use_kernel and on_avx2.use_kernel
    assert "dequantize" in repr(on_avx512) and "int8pack_mm" in repr(on_avx2)

    x = torch.randn(7, 24, dtype=torch.bfloat16)  # 7 rows: where the AVX-512 path segfaults
    ref = x.double() @ on_avx512.dequantized_weight(torch.float64).t() + lin.bias.double()
    # The capability changing after quantization changes nothing: the layer decided once.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    y = on_avx512(x)
    assert calls == []
    assert float((y.double() - ref).abs().amax()) < 2e-2 * float(ref.abs().amax())
    on_avx2(x)
    assert calls == [(40, 24)]


def test_quantization_report_counts_the_layers_left_to_the_fallback(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    model = nn.Sequential(nn.Linear(32, 24), nn.Linear(24, 16)).to(torch.bfloat16)
    report = quantize.quantize_int8(model)
    assert report.kernel_layers == 1 and report.fallback_layers == 1
    assert "1 layers without the int8 kernel" in report.summary()
