"""Int8 weight-only quantization of a model's linear layers, for faster decoding on CPU.

At batch 1 a decode step reads every weight once, so it is bounded by memory bandwidth: halving
the bytes per weight (bf16 -> int8) nearly halves the time per token. Each `nn.Linear` becomes an
`Int8Linear` holding symmetric per-output-channel int8 weights and one scale per output row:

    W[n, k] ~= q[n, k] * scale[n],   q in [-127, 127],   scale[n] = max_k |W[n, k]| / 127

The forward runs `torch.ops.aten._weight_int8pack_mm` (PyTorch's CPU kernel that reads the int8
weights directly, in bf16 arithmetic) where it exists and the shape suits it, else a plain
dequantizing fallback that works on any device. Activations stay in bf16 for the kernel (on
CPUs without bf16 units the fp32/fp16 variants of the kernel are several times slower); the
output is cast back to the caller's dtype.

The embedding matrix is left alone (a lookup reads one row per token). A tied `lm_head` is
quantized into its own int8 copy by default: it is ~7 % of the firefly-1b4 weights and read on
every token; see `bench/generate_fast.py` and `firefly_core.quality` for what that costs.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import ConfigError
from .gemv import gemv_int8_linear

QUANTIZE_METHODS = ("int8",)
INT8_MAX = 127


def _kernel_op():
    return getattr(torch.ops.aten, "_weight_int8pack_mm", None)


# The reduction lengths (in_features) `_weight_int8pack_mm` computes correctly, per CPU code path
# PyTorch dispatches to (`torch.backends.cpu.get_cpu_capability()`, which honours
# ATEN_CPU_CAPABILITY). Measured on PyTorch 2.13 for K in {8..64} x N in {8..64} x 1-7 rows: the
# AVX-512 path returns garbage for K % 16 != 0 and segfaults from 7 rows on (the process dies);
# the AVX2 and default paths are right for K % 8 == 0. Any other code path (NEON, SVE, ZVECTOR)
# is unmeasured, so it is not used there: the dequantizing fallback is always right.
INT8_KERNEL_K_MULTIPLE = {"DEFAULT": 8, "AVX2": 8, "AVX512": 16}


def int8_kernel_supported(device: torch.device | str, in_features: int, capability: str | None = None) -> bool:
    """Whether `_weight_int8pack_mm` is known to run this layer correctly on the running CPU:
    CPU, a code path we measured, and a reduction length that path handles
    (INT8_KERNEL_K_MULTIPLE; other lengths give wrong results or crash the process).

    Decided once per layer when it is quantized (`Int8Linear.use_kernel`), never per call."""
    if torch.device(device).type != "cpu" or _kernel_op() is None:
        return False
    capability = capability or torch.backends.cpu.get_cpu_capability()
    multiple = INT8_KERNEL_K_MULTIPLE.get(capability.upper())
    return multiple is not None and in_features % multiple == 0


def _int8pack_mm(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """PyTorch's int8 weight-only CPU matmul; only called for layers `int8_kernel_supported` admits."""
    return torch.ops.aten._weight_int8pack_mm(x, q, scales)


def quantize_weight_int8(weight: torch.Tensor, scale_dtype: torch.dtype = torch.bfloat16):
    """Per-output-channel symmetric int8: returns (q int8 [out, in], scales `scale_dtype` [out]).

    The scale is rounded to `scale_dtype` *before* q is computed, so q is optimal for the scale the
    kernel actually multiplies by (rounding afterwards would add a per-row bias of up to 0.4 %).
    """
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1)
    scales = (absmax / INT8_MAX).to(scale_dtype)
    # An all-zero row would divide by zero; any scale reproduces it exactly with q = 0.
    scales = torch.where(absmax > 0, scales, torch.ones_like(scales))
    q = torch.round(w / scales.float()[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.contiguous(), scales.contiguous()


class Int8Linear(nn.Module):
    """A drop-in `nn.Linear` replacement with int8 weights and one scale per output feature."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        compute_dtype: torch.dtype = torch.bfloat16,
        bias_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = compute_dtype
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=compute_dtype, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None
        self.use_kernel = int8_kernel_supported(self.weight_int8.device, in_features)
        # One-row (decode) products through our GEMV kernel: set by the CPU route the model service
        # chooses when it prepares the model (cpu_route.py), never decided per call.
        self.use_gemv = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16) -> "Int8Linear":
        w = linear.weight
        q, scales = quantize_weight_int8(w, compute_dtype)
        has_bias = linear.bias is not None
        new = cls(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            device=w.device,
            compute_dtype=compute_dtype,
            bias_dtype=linear.bias.dtype if has_bias else compute_dtype,
        )
        new.weight_int8.copy_(q)
        new.scales.copy_(scales)
        if has_bias:
            new.bias.copy_(linear.bias.detach())
        return new

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight this layer computes with (for tests and quality checks)."""
        return self.weight_int8.to(dtype) * self.scales.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = x.dtype
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype).contiguous()  # [tokens, in]
        scales = self.scales
        if scales.dtype != self.compute_dtype:  # e.g. after model.half(), which casts float buffers
            scales = scales.to(self.compute_dtype)
        if self.use_gemv and x2.shape[0] == 1 and x2.device.type == "cpu":
            # Decode steps (one row): our AVX2 kernel reads int8 weights faster (gemv.py).
            y = gemv_int8_linear(x2, self.weight_int8, scales)
        elif self.use_kernel and x2.device.type == "cpu":
            y = _int8pack_mm(x2, self.weight_int8, scales)  # [tokens, out]
        else:
            # Integers up to 127 are exact in bf16/fp16, so x @ q.T then * scale equals the kernel's
            # arithmetic without materializing a scaled float copy of the weight.
            y = nn.functional.linear(x2, self.weight_int8.to(self.compute_dtype)) * scales
        y = y.to(out_dtype)
        if self.bias is not None:
            y = y + self.bias.to(out_dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        kernel = "int8pack_mm" if self.use_kernel else "dequantize"
        if self.use_gemv:
            kernel += ", gemv"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, compute={str(self.compute_dtype).removeprefix('torch.')}, {kernel}"
        )


@dataclass
class QuantizationReport:
    """What `quantize_int8` did: which layers, how many bytes of linear weights before and after."""

    method: str
    quantized: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kernel_layers: int = 0  # layers that run the int8 kernel (the rest dequantize)
    bytes_before: int = 0  # linear weights (+ bias) as they were
    bytes_after: int = 0  # int8 weights + scales + bias

    @property
    def fallback_layers(self) -> int:
        return len(self.quantized) - self.kernel_layers

    def summary(self) -> str:
        mb = 1024 * 1024
        text = (
            f"{self.method}: {len(self.quantized)} linear layers, "
            f"{self.bytes_before / mb:.0f} MiB -> {self.bytes_after / mb:.0f} MiB"
        )
        if self.skipped:
            text += f", kept {', '.join(self.skipped)}"
        if self.fallback_layers:
            text += f", {self.fallback_layers} layers without the int8 kernel"
        return text


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


@torch.no_grad()
def quantize_int8(
    model: nn.Module,
    skip: Iterable[str] = (),
    compute_dtype: torch.dtype = torch.bfloat16,
) -> QuantizationReport:
    """Replace every `nn.Linear` in `model` (in place) by an `Int8Linear`, except those whose
    qualified name is or ends with a name in `skip` (glob patterns allowed, e.g. "lm_head")."""
    skip = tuple(skip)
    report = QuantizationReport(method="int8")
    targets = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    for name, linear in targets:
        if _matches(name, skip):
            report.skipped.append(name)
            continue
        qlinear = Int8Linear.from_linear(linear, compute_dtype)
        report.bytes_before += _nbytes(linear.weight) + _nbytes(linear.bias)
        report.bytes_after += _nbytes(qlinear.weight_int8) + _nbytes(qlinear.scales) + _nbytes(qlinear.bias)
        report.kernel_layers += int(qlinear.use_kernel)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, qlinear)  # drops the module's reference to the float weight
        report.quantized.append(name)
    model.firefly_quantization = report
    return report


def quantization_of(model: nn.Module) -> QuantizationReport | None:
    """The report of the quantization applied to `model`, if any."""
    return getattr(model, "firefly_quantization", None)


def apply_quantization(lm: Any, method: str | None, skip: Iterable[str] = ()) -> QuantizationReport | None:
    """Quantize a `LoadedModel` in place (`method` "int8", or None/"none" for nothing).

    Which routine the int8 layers multiply with (our GEMV kernel for decode rows, or PyTorch's)
    is the CPU route the model service chooses afterwards (`cpu_route.py`); nothing is built here.
    Int8 is a CPU feature: on a GPU the bf16 path (with CUDA graphs) is the fast one, so asking
    for it there is an error with a hint rather than a silent slowdown.
    """
    if method in (None, "", "none", "off"):
        return None
    if method not in QUANTIZE_METHODS:
        raise ConfigError(f"unknown quantization {method!r}", f"use one of: {', '.join(QUANTIZE_METHODS)}")
    device = torch.device(lm.device)
    if device.type != "cpu":
        raise ConfigError(
            f"--quantize {method} is for CPU decoding, and this model is on {device}",
            "drop --quantize on a GPU (bf16 is faster there), or add --device cpu",
        )
    existing = quantization_of(lm.model)
    if existing is not None:
        return existing
    return quantize_int8(lm.model, skip=skip)
