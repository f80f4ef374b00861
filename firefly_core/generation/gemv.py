"""Matrix-vector kernels for CPU decoding (AVX2): bf16 and int8 weights, read near memory speed.

At batch 1 a decode step is one matrix-vector product per weight matrix, so its speed is the rate
at which weights are read. On AVX2-only CPUs (no AVX-512 BF16/AMX) PyTorch's bf16 GEMV reads about
17-20 GB/s where the memory delivers nearly twice that. This kernel widens bf16 to fp32 with a
16-bit shift (exact), multiplies with FMA in fp32, four rows at a time so each load of the input
serves four rows, and splits rows over OpenMP threads; it reads ~25 GB/s on the same machine
(`python bench/generate.py`). Results are rounded to bf16 like PyTorch's. The int8 variant does
the same for int8 weight-only layers (generation/quantize.py), where PyTorch's
`_weight_int8pack_mm` reads only ~14.5 GB/s here.

It is compiled on first use with torch's cpp_extension (cached under TORCH_EXTENSIONS_DIR, so only
the first run pays ~20-40 s). Where that is impossible (no compiler or ninja, not x86 with AVX2, or
FIREFLY_GEMV=0) decoding keeps PyTorch's kernel and `unavailable_reason()` says why.
"""

from __future__ import annotations

import contextlib
import os
import sys
from functools import lru_cache
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_SOURCE = r"""
#include <torch/extension.h>
#include <immintrin.h>

// Eight weights widened to fp32: bf16 by a 16-bit shift (exact), int8 by sign extension.
static inline __m256 widen8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
static inline float widen1(uint16_t b) {
  uint32_t u = ((uint32_t)b) << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline float widen1(int8_t q) { return (float)q; }
static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// y[n] = scale[n] * sum_k w[n, k] * x[k] (scale may be null); w [N, K] row-major, x and y fp32.
// Four rows at a time so each load of x serves four rows; rows split over OpenMP threads.
template <typename W>
static void gemv(const float* xp, const W* wp, const float* sp, float* yp, int64_t N, int64_t K) {
  const int64_t K8 = K - K % 8;
  const int64_t blocks = (N + 3) / 4;
  #pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * 4;
    const int rows = (int)std::min<int64_t>(4, N - n0);
    float s[4] = {0, 0, 0, 0};
    if (rows == 4) {
      const W* r0 = wp + n0 * K; const W* r1 = r0 + K; const W* r2 = r1 + K; const W* r3 = r2 + K;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      for (int64_t k = 0; k < K8; k += 8) {
        __m256 xv = _mm256_loadu_ps(xp + k);
        a0 = _mm256_fmadd_ps(widen8(r0 + k), xv, a0);
        a1 = _mm256_fmadd_ps(widen8(r1 + k), xv, a1);
        a2 = _mm256_fmadd_ps(widen8(r2 + k), xv, a2);
        a3 = _mm256_fmadd_ps(widen8(r3 + k), xv, a3);
      }
      s[0] = hsum(a0); s[1] = hsum(a1); s[2] = hsum(a2); s[3] = hsum(a3);
    } else {
      for (int r = 0; r < rows; ++r) {
        const W* row = wp + (n0 + r) * K;
        __m256 a = _mm256_setzero_ps();
        for (int64_t k = 0; k < K8; k += 8) a = _mm256_fmadd_ps(widen8(row + k), _mm256_loadu_ps(xp + k), a);
        s[r] = hsum(a);
      }
    }
    for (int r = 0; r < rows; ++r) {
      const W* row = wp + (n0 + r) * K;
      for (int64_t k = K8; k < K; ++k) s[r] += widen1(row[k]) * xp[k];
      yp[n0 + r] = sp ? s[r] * sp[n0 + r] : s[r];
    }
  }
}

static void check_x(const torch::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.is_contiguous() && x.dim() == 1, "x: contiguous fp32 [K]");
  TORCH_CHECK(x.size(0) == K, "shape mismatch");
}

torch::Tensor gemv_bf16(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(w.dtype() == torch::kBFloat16 && w.is_contiguous() && w.dim() == 2, "w: contiguous bf16 [N, K]");
  check_x(x, w.size(1));
  auto y = torch::empty({w.size(0)}, x.options());
  gemv(x.data_ptr<float>(), reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), (const float*)nullptr,
       y.data_ptr<float>(), w.size(0), w.size(1));
  return y;
}

torch::Tensor gemv_int8(torch::Tensor x, torch::Tensor q, torch::Tensor scale) {
  TORCH_CHECK(q.dtype() == torch::kInt8 && q.is_contiguous() && q.dim() == 2, "q: contiguous int8 [N, K]");
  TORCH_CHECK(scale.dtype() == torch::kFloat32 && scale.is_contiguous() && scale.numel() == q.size(0), "scale: fp32 [N]");
  check_x(x, q.size(1));
  auto y = torch::empty({q.size(0)}, x.options());
  gemv(x.data_ptr<float>(), q.data_ptr<int8_t>(), scale.data_ptr<float>(), y.data_ptr<float>(), q.size(0), q.size(1));
  return y;
}
"""


@lru_cache(maxsize=None)
def _load() -> tuple[Any, str | None]:
    """(compiled module, None) or (None, why not)."""
    if os.environ.get("FIREFLY_GEMV", "1") == "0":
        return None, "disabled by FIREFLY_GEMV=0"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return None, f"this CPU has no AVX2 (PyTorch reports {capability})"
    # The `ninja` the build needs is a dependency installed next to this Python (a pipx venv's
    # bin folder is not on PATH).
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    try:
        from torch.utils.cpp_extension import load_inline

        module = load_inline(
            "firefly_gemv_bf16",
            cpp_sources=_SOURCE,
            functions=["gemv_bf16", "gemv_int8"],
            extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # no compiler, no ninja, a build error: keep PyTorch's kernel
        return None, f"the kernel could not be compiled ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return module, None


def unavailable_reason() -> str | None:
    """None when the kernel is ready, else why decoding uses PyTorch's bf16 GEMV."""
    return _load()[1]


def gemv_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` for one bf16 row on the CPU through the kernel; same shapes, bf16 result."""
    module = _load()[0]
    y = module.gemv_bf16(x.reshape(-1).float().contiguous(), weight)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def gemv_int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """One row through int8 weights `q` ([out, in]) with per-row `scales`; fp32 result, [1, out]."""
    module = _load()[0]
    return module.gemv_int8(x.reshape(-1).float().contiguous(), q, scales.float().contiguous())[None]


class _GemvLinear(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if (
                x.dtype == torch.bfloat16
                and weight.dtype == torch.bfloat16
                and x.device.type == "cpu"
                and weight.dim() == 2
                and weight.is_contiguous()
                and x.numel() == x.shape[-1]  # one row: a matrix-vector product
            ):
                return gemv_linear(x, weight, bias)
        return func(*args, **kwargs)


def wants_gemv(model: Any) -> bool:
    """True for bf16 models on CPUs without fast bf16 GEMM, once the kernel is compiled."""
    from .prefill import _slow_half_gemm

    param = next(model.parameters(), None)
    return (
        param is not None
        and param.device.type == "cpu"
        and param.dtype == torch.bfloat16
        and _slow_half_gemm(torch.bfloat16)
        and _load()[0] is not None
    )


@contextlib.contextmanager
def gemv_matmuls(enabled: bool = True) -> Iterator[None]:
    """Within the block, one-row bf16 `F.linear` calls on the CPU use the kernel."""
    if not enabled:
        yield
        return
    with _GemvLinear():
        yield
