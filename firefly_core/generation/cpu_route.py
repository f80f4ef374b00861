"""The CPU matrix route of a prepared model: which routine each linear layer multiplies with.

Chosen once, when the model service prepares the model for chat, and written into the layers; a
forward pass only follows it (no per-call interceptor, nothing is compiled during a reply):

- `gemv`: one-row products (decode steps) through our AVX2 kernels (gemv.py), bf16 and int8 weights;
  they read weights faster than PyTorch's on CPUs without fast bf16 GEMV;
- `float32_prompts`: products of MIN_ROWS or more rows (prompts) in float32, on CPUs without a fast
  bf16/fp16 GEMM, where PyTorch's fallback runs at GEMV speed whatever the number of rows, so
  prefilling n tokens would cost about n decode steps; fp32 GEMM is many times faster even counting
  the conversion of each weight.

`choose_route(model, kernels_ready)` decides from the weights and the CPU; `apply_route(model,
route)` makes each `nn.Linear` a `RoutedLinear` (same parameters, same state dict) and tells each
`Int8Linear` whether to use the kernel. Where the hardware has fast bf16 (AVX-512 BF16, AMX) both
stay off and the layers keep PyTorch's own routines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .gemv import gemv_linear, kernels_pay, slow_half_gemm
from .quantize import Int8Linear

MIN_ROWS = 16  # below this many rows converting the weights to fp32 costs more than it saves


@dataclass(frozen=True)
class CpuRoute:
    """What a prepared model's linear layers multiply with on the CPU."""

    gemv: bool = False  # one-row products through our AVX2 kernels
    float32_prompts: bool = False  # products of MIN_ROWS+ rows in float32

    def describe(self) -> str:
        parts = (["firefly CPU kernels"] if self.gemv else []) + (["fp32 prompts"] if self.float32_prompts else [])
        return ", ".join(parts)


def choose_route(model: Any, *, kernels_ready: bool) -> CpuRoute:
    """The route for `model` on this CPU: our kernels when they pay and are built
    (`kernels_ready`, the service built them), fp32 prompts for bf16/fp16 weights where half GEMM is slow."""
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu":
        return CpuRoute()
    quantized = any(isinstance(m, Int8Linear) for m in model.modules())
    return CpuRoute(
        gemv=kernels_ready and (quantized or kernels_pay(model)),
        float32_prompts=param.dtype in (torch.bfloat16, torch.float16) and slow_half_gemm(param.dtype),
    )


class RoutedLinear(nn.Linear):
    """An `nn.Linear` that multiplies as its `route` says (set by `apply_route`)."""

    route: CpuRoute = CpuRoute()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route, w = self.route, self.weight
        rows = x.numel() // x.shape[-1]
        if route.gemv and rows == 1 and x.dtype == w.dtype == torch.bfloat16 and w.is_contiguous():
            return gemv_linear(x, w, self.bias)
        if route.float32_prompts and rows >= MIN_ROWS and x.dtype in (torch.bfloat16, torch.float16):
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), w.float(), bias).to(x.dtype)
        return F.linear(x, w, self.bias)


def apply_route(model: nn.Module, route: CpuRoute) -> None:
    """Write `route` into `model`'s layers, in place (parameters and state dict unchanged)."""
    for module in model.modules():
        if type(module) is nn.Linear or isinstance(module, RoutedLinear):
            module.__class__ = RoutedLinear  # same object, same parameters: only forward changes
            module.route = route
        elif isinstance(module, Int8Linear):
            module.use_gemv = route.gemv
    model.firefly_cpu_route = route


def route_of(model: Any) -> CpuRoute | None:
    """The route `apply_route` wrote into `model`, if any."""
    return getattr(model, "firefly_cpu_route", None)
