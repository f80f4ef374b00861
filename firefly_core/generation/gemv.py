"""Matrix-vector kernels for CPU decoding (AVX2): bf16 and int8 weights, read near memory speed.

At batch 1 a decode step is one matrix-vector product per weight matrix, so its speed is the rate
at which weights are read. On AVX2-only CPUs (no AVX-512 BF16/AMX) PyTorch's bf16 GEMV reads about
17-20 GB/s where the memory delivers nearly twice that. This kernel widens bf16 to fp32 with a
16-bit shift (exact), multiplies with FMA in fp32, four rows at a time so each load of the input
serves four rows, and splits rows over OpenMP threads; it reads ~25 GB/s on the same machine
(`python bench/generate.py`). Results are rounded to bf16 like PyTorch's. The int8 variant does
the same for int8 weight-only layers (generation/quantize.py), where PyTorch's
`_weight_int8pack_mm` reads only ~14.5 GB/s here.

It is compiled with torch's cpp_extension, once per install: the build folder
(`build_directory()`, under TORCH_EXTENSIONS_DIR) is keyed by this package's version, torch's
version and the Python prefix. Only the model service builds it (`prepare_kernels()` while it
prepares a model, then `cpu_route.py` writes which layers use it), so the compile (~20-40 s, said
as a status line) never lands inside a reply: `gemv_linear` never builds, it needs the kernels built. A build cannot hang: our own
lock file records the builder's pid, a lock left by a dead process (or torch's own `lock` file
left by a killed compile) is broken, and a live builder is awaited at most FIREFLY_KERNEL_WAIT
seconds before falling back. Small models (`kernels_pay`) and fp32 never build it. Where it is
impossible (no compiler or ninja, not x86 with AVX2, FIREFLY_GEMV=0) decoding keeps PyTorch's
kernel and the reason is reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

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


# -- building and loading the kernels (once per process, bounded, never hanging) ----------------
KERNEL_NAME = "firefly_gemv"
# How long to wait for another process that is compiling the kernels before using PyTorch's.
BUILD_WAIT_S = float(os.environ.get("FIREFLY_KERNEL_WAIT", "90"))
# A build lock older than this is stale whatever its pid says (a compile takes ~20-60 s).
STALE_LOCK_S = 15 * 60
LOCK_FILE = "firefly-build.lock"  # ours: {"pid", "host", "started"}; torch's own is "lock"
# Below this many bytes of linear weights the kernel does not pay: the weights sit in the CPU's
# caches, PyTorch's GEMV is as fast, and a first-run compile would cost more than it saves.
KERNEL_MIN_BYTES = 64 * 1024 * 1024

_state_lock = threading.Lock()
_state: tuple[Any, str | None] | None = None  # (module, None) or (None, why not), once decided


def _package_version() -> str:
    from .. import __version__

    return __version__


def build_directory() -> Path:
    """Where the kernels are compiled: under TORCH_EXTENSIONS_DIR (torch's default root otherwise),
    in a folder keyed by this package's version, torch's version and the Python prefix, so two
    installs (two venvs, two torch versions) never rebuild or load each other's kernels."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(cache, "torch_extensions")
    prefix = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:12]
    key = f"{KERNEL_NAME}-{_package_version()}-torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-{prefix}"
    return Path(root) / key.replace("+", "_")


def kernels_built(directory: Path | None = None) -> bool:
    """Whether a compiled kernel library is already in the build folder (then loading takes ~1 s)."""
    directory = directory or build_directory()
    return any(directory.glob(f"{KERNEL_NAME}*.so")) or any(directory.glob(f"{KERNEL_NAME}*.pyd"))


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _lock_is_stale(path: Path) -> bool:
    """A build lock whose process is gone (same host) or that is older than STALE_LOCK_S."""
    from ..process import pid_alive

    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False  # released meanwhile: not stale, just gone
    if age > STALE_LOCK_S:
        return True
    holder = _read_lock(path)
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return age > 10  # half-written by a process that died right away
    if holder.get("host") not in (None, socket.gethostname()):
        return False  # another machine sharing this folder: only age tells
    return not pid_alive(pid)


def acquire_build_lock(
    directory: Path,
    wait_s: float,
    *,
    on_wait: Callable[[], None] | None = None,
    cancel: threading.Event | None = None,
) -> bool:
    """Take the build lock of `directory` (True), breaking a stale one; False when another live
    process still holds it after `wait_s` seconds (or `cancel` was set)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _lock_is_stale(path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
                return False
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(0.2)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
        return True


def release_build_lock(directory: Path) -> None:
    path = directory / LOCK_FILE
    if _read_lock(path).get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _compile(directory: Path) -> Any:
    # The `ninja` the build needs is a dependency installed next to this Python (a pipx venv's
    # bin folder is not on PATH).
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    from torch.utils.cpp_extension import load_inline

    # We hold our own build lock, so torch's lock file here can only be left by a process that was
    # killed while compiling: torch would wait for it forever.
    with contextlib.suppress(FileNotFoundError):
        (directory / "lock").unlink()
    return load_inline(
        KERNEL_NAME,
        cpp_sources=_SOURCE,
        functions=["gemv_bf16", "gemv_int8"],
        extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        verbose=False,
    )


def _decide(status: Callable[[str], None] | None, wait_s: float, cancel: threading.Event | None) -> tuple[Any, str | None]:
    if os.environ.get("FIREFLY_GEMV", "") == "0":
        return None, "disabled by FIREFLY_GEMV=0"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return None, f"this CPU has no AVX2 (PyTorch reports {capability})"
    say = status or (lambda _m: None)
    directory = build_directory()
    built = kernels_built(directory)
    if not acquire_build_lock(
        directory,
        wait_s,
        on_wait=lambda: say(f"another firefly process is compiling the CPU kernels; waiting up to {wait_s:.0f} s"),
        cancel=cancel,
    ):
        if cancel is not None and cancel.is_set():
            return None, "cancelled while waiting for another process's kernel build"
        return None, (
            f"another firefly process was still compiling the CPU kernels after {wait_s:.0f} s "
            f"(lock: {directory / LOCK_FILE})"
        )
    try:
        if not built:
            say("compiling CPU kernels, once, ~30 s")
        module = _compile(directory)
    except Exception as e:  # no compiler, no ninja, a build error: keep PyTorch's kernel
        first = str(e).splitlines()[0] if str(e) else ""
        return None, f"the kernel could not be compiled ({type(e).__name__}: {first})"
    finally:
        release_build_lock(directory)
    return module, None


def prepare_kernels(
    *,
    status: Callable[[str], None] | None = None,
    wait_s: float | None = None,
    cancel: threading.Event | None = None,
) -> str | None:
    """Build (first run) or load the kernels, once per process; None when ready, else why decoding
    uses PyTorch's kernels. Bounded: a build lock left by a dead process is broken, and another
    live process's build is awaited at most `wait_s` seconds (FIREFLY_KERNEL_WAIT, default 90)."""
    global _state
    with _state_lock:
        if _state is None:
            result = _decide(status, BUILD_WAIT_S if wait_s is None else wait_s, cancel)
            if result[1] is not None and result[1].startswith("cancelled"):
                return result[1]  # not a decision: the next load tries again
            _state = result
        return _state[1]


def _module() -> Any:
    """The built kernels; never builds them (only the model service does, through `prepare_kernels`)."""
    state = _state
    if state is None or state[0] is None:
        raise RuntimeError("firefly's CPU kernels are not built here: prepare_kernels() first (the model service does)")
    return state[0]


def kernels_ready() -> bool:
    """Whether this process already built or loaded the kernels (`prepare_kernels`); never builds,
    so a forward pass or a test's collection cannot start a compile."""
    state = _state
    return state is not None and state[1] is None


def unavailable_reason() -> str | None:
    """None when the kernel is ready, else why decoding uses PyTorch's bf16 GEMV (builds it first
    if needed)."""
    return prepare_kernels()


@lru_cache(maxsize=None)
def slow_half_gemm(dtype: torch.dtype) -> bool:
    """True when this CPU has no fast kernel for `dtype` matrix multiply (no AVX-512 BF16/AMX for
    bf16): PyTorch's fallback then runs at GEMV speed, so fp32 prompts and our GEMV kernel pay."""
    try:
        if dtype == torch.bfloat16:
            return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
        if dtype == torch.float16:
            return not torch.ops.mkldnn._is_mkldnn_fp16_supported()
    except (AttributeError, RuntimeError):
        return False
    return False


def kernels_pay(model: Any) -> bool:
    """Whether the kernel is worth using (and building) for `model`: bf16 on a CPU without fast
    bf16 GEMM, and big enough (KERNEL_MIN_BYTES) that decode reads weights from memory.
    FIREFLY_GEMV=1 forces it on for any bf16 CPU model, even where PyTorch has fast bf16 (tests
    and benchmarks, so they run the same path on every machine); =0 off."""
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu" or param.dtype != torch.bfloat16:
        return False
    flag = os.environ.get("FIREFLY_GEMV", "")
    if flag in ("0", "1"):
        return flag == "1"
    if not slow_half_gemm(torch.bfloat16):
        return False
    linear_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 2)
    return linear_bytes >= KERNEL_MIN_BYTES


def gemv_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` for one bf16 row on the CPU through the kernel; same shapes, bf16 result."""
    module = _module()
    y = module.gemv_bf16(x.reshape(-1).float().contiguous(), weight)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def gemv_int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """One row through int8 weights `q` ([out, in]) with per-row `scales`; fp32 result, [1, out]."""
    module = _module()
    return module.gemv_int8(x.reshape(-1).float().contiguous(), q, scales.float().contiguous())[None]
