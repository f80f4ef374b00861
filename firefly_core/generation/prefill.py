"""Fast prefill on CPUs without native bf16/fp16 matrix multiply: the prompt's GEMMs run in float32.

On x86 CPUs without AVX-512 BF16/AMX (e.g. AVX2-only EPYC/Core), PyTorch multiplies bf16 matrices
with a fallback kernel that runs at GEMV speed whatever the number of rows, so prefilling n tokens
costs about n decode steps. float32 GEMM (MKL/oneDNN) is many times faster once there are more than
a few rows, even counting the bf16 -> fp32 conversion of each weight. Decode steps (one row) keep the
bf16 GEMV, which reads half the bytes.

`float32_matmuls(model, rows)` is a context manager that, for big enough inputs, computes every
`F.linear` in float32 and casts the result back; it does nothing where the hardware has fast bf16.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MIN_ROWS = 16  # below this the conversion of the weights costs more than it saves


@lru_cache(maxsize=None)
def _slow_half_gemm(dtype: torch.dtype) -> bool:
    """True when this CPU has no fast kernel for `dtype` matrix multiply (so fp32 is faster)."""
    try:
        if dtype == torch.bfloat16:
            return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
        if dtype == torch.float16:
            return not torch.ops.mkldnn._is_mkldnn_fp16_supported()
    except (AttributeError, RuntimeError):
        return False
    return False


class _Float32Linear(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.dtype in (torch.bfloat16, torch.float16) and x.numel() >= MIN_ROWS * x.shape[-1]:
                out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
                return out.to(x.dtype)
        return func(*args, **kwargs)


def wants_float32_prefill(model: Any) -> bool:
    param = next(model.parameters(), None)
    return (
        param is not None
        and param.device.type == "cpu"
        and param.dtype in (torch.bfloat16, torch.float16)
        and _slow_half_gemm(param.dtype)
    )


@contextlib.contextmanager
def float32_matmuls(enabled: bool = True) -> Iterator[None]:
    """Within the block, big bf16/fp16 `F.linear` calls are computed in float32."""
    if not enabled:
        yield
        return
    with _Float32Linear():
        yield
