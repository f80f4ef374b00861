"""The CPU route of a model chosen by timing the candidates on its own weights, once per model, CPU
and version (cached under the user cache folder).

Why measure instead of reading CPU flags: on an AVX-512 BF16 CPU the flags said PyTorch's native
bf16 would win, yet our AVX2 bf16 GEMV kernel read weights at 1.27x PyTorch's one-row `F.linear`
(25.3 vs 20.0 GB/s), and our int8 kernel, once the faster one, no longer beat
`_weight_int8pack_mm` there (issue 24). Which routine wins depends on the CPU, the memory, the
torch build and the layer shapes, so the service times what it could run:

- decode (one row): PyTorch's routine vs our kernel (`CpuRoute.gemv`), when the kernels are built;
- prompts (PROMPT_ROWS rows, bf16/fp16 weights): the half-precision product vs converting to
  float32 (`CpuRoute.float32_prompts`).

Each candidate runs over the linear layers of one transformer block (every shape the model
multiplies with, its real weights) for a quarter of BUDGET_S, after one warm-up pass; the fastest
pass of each is compared (the minimum: the least disturbed by whatever else the machine runs). The result and its timings are written to
`paths.cache_dir()/cpu_routes/KEY.json` (KEY: the model's folder and weights, the CPU, torch's
CPU capability and version, firefly's version), so a second load reads it instead of timing
again. Small models (under gemv.KERNEL_MIN_BYTES of weights) keep the flag rule: their steps are
too short to time meaningfully and too short to matter. FIREFLY_GEMV=0/1 still forces the kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_route import CpuRoute, choose_route
from .gemv import KERNEL_MIN_BYTES, gemv_linear
from .quantize import Int8Linear

BUDGET_S = 0.4  # all candidates together: a fraction of a second, once per model and machine
PROMPT_ROWS = 64  # a typical chat turn's prompt chunk
ROUTE_CACHE_VERSION = "1"  # bump when what is timed changes, so cached choices are made again

# candidate name -> seconds for one pass over the block's layers (the fastest round); tests inject it
Timer = Callable[[str], float]


def measured_route(
    model: nn.Module,
    *,
    kernels_ready: bool,
    status: Callable[[str], None] | None = None,
    timer: Timer | None = None,
) -> tuple[CpuRoute, dict[str, float]]:
    """The route for `model` on this CPU and the timings it was chosen from ({} when not timed:
    a small model, not on the CPU, nothing to choose). Cached per model, CPU and version."""
    guess = choose_route(model, kernels_ready=kernels_ready)
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu" or _weight_bytes(model) < KERNEL_MIN_BYTES:
        return guess, {}
    quantized = any(isinstance(m, Int8Linear) for m in model.modules())
    time_decode = kernels_ready and os.environ.get("FIREFLY_GEMV", "") not in ("0", "1")
    time_prompts = not quantized and param.dtype in (torch.bfloat16, torch.float16)
    if not (time_decode or time_prompts):
        return guess, {}
    from .. import paths

    cache = paths.cache_dir() / "cpu_routes" / f"{route_key(model, kernels_ready)}.json"
    cached = _read(cache)
    if cached is not None:
        return cached
    if status is not None:
        status("timing the CPU routes on this model's weights, once (a fraction of a second)")
    time_one = timer or _block_timer(model)
    timings: dict[str, float] = {}
    gemv = guess.gemv
    if time_decode:
        timings["decode:pytorch"], timings["decode:firefly"] = time_one("decode:pytorch"), time_one("decode:firefly")
        gemv = timings["decode:firefly"] < timings["decode:pytorch"]
    float32_prompts = guess.float32_prompts
    if time_prompts:
        timings["prompt:half"], timings["prompt:fp32"] = time_one("prompt:half"), time_one("prompt:fp32")
        float32_prompts = timings["prompt:fp32"] < timings["prompt:half"]
    route = CpuRoute(gemv=gemv, float32_prompts=float32_prompts)
    _write(cache, route, timings)
    return route, timings


def describe_timings(route: CpuRoute, timings: dict[str, float]) -> str:
    """One status line: what was chosen and by how much, e.g.
    "decode: firefly kernel (1.27x PyTorch) · prompts: bf16 (fp32 0.41x)"."""
    parts = []
    if "decode:pytorch" in timings:
        torch_s, ours_s = timings["decode:pytorch"], timings["decode:firefly"]
        parts.append(f"decode: firefly kernel ({torch_s / ours_s:.2f}x PyTorch)" if route.gemv
                     else f"decode: PyTorch ({ours_s / torch_s:.2f}x the firefly kernel)")
    if "prompt:half" in timings:
        half_s, fp32_s = timings["prompt:half"], timings["prompt:fp32"]
        parts.append(f"prompts: fp32 ({half_s / fp32_s:.2f}x half)" if route.float32_prompts
                     else f"prompts: half precision ({fp32_s / half_s:.2f}x fp32)")
    return "CPU route measured: " + " · ".join(parts) if parts else ""


def route_key(model: nn.Module, kernels_ready: bool) -> str:
    """What the choice depends on: the model's folder and weights, the CPU, the software."""
    config = getattr(model, "config", None)
    where = str(getattr(config, "_name_or_path", "") or "")
    where = os.path.realpath(where) if where and os.path.exists(where) else where
    weights = [(n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters() if p.dim() == 2][:64]
    int8 = sum(1 for m in model.modules() if isinstance(m, Int8Linear))
    from .. import __version__

    parts = [ROUTE_CACHE_VERSION, where, repr(weights), str(int8), str(kernels_ready), _cpu_name(),
             str(os.cpu_count()), torch.backends.cpu.get_cpu_capability(), torch.__version__, __version__,
             str(torch.get_num_threads())]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 2) + sum(
        b.numel() * b.element_size() for b in model.buffers() if b.dtype == torch.int8
    )


def _read(path) -> tuple[CpuRoute, dict[str, float]] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        route = CpuRoute(gemv=bool(data["route"]["gemv"]), float32_prompts=bool(data["route"]["float32_prompts"]))
        return route, {str(k): float(v) for k, v in data["timings"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or damaged: timed again


def _write(path, route: CpuRoute, timings: dict[str, float]) -> None:
    from .. import atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps({"route": asdict(route), "timings": timings}, indent=1) + "\n")
    except OSError:
        pass  # a read-only cache: the choice holds for this load, and is timed again next time


# ----------------------------------------------------------------------------- the real timer
def _block(model: nn.Module) -> list[nn.Module]:
    """The linear layers of one transformer block (the first one with several), else all of them."""
    linears = [m for m in model.modules() if isinstance(m, (nn.Linear, Int8Linear))]
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            inner = [m for m in module[0].modules() if isinstance(m, (nn.Linear, Int8Linear))]
            if inner:
                return inner
    return linears


def _block_timer(model: nn.Module) -> Timer:
    """Seconds for one pass of a candidate over one block's layers (its fastest round), each
    candidate given an equal share of BUDGET_S."""
    layers = _block(model)
    dtype = next(model.parameters()).dtype
    share = BUDGET_S / 4

    def one_pass(name: str) -> None:
        with torch.inference_mode():
            for layer in layers:
                if isinstance(layer, Int8Linear):
                    x = torch.randn(1, layer.in_features, dtype=layer.compute_dtype)
                    saved = layer.use_gemv
                    layer.use_gemv = name == "decode:firefly"
                    try:
                        layer(x)
                    finally:
                        layer.use_gemv = saved
                    continue
                w, b = layer.weight, layer.bias
                if name.startswith("decode"):
                    x = torch.randn(1, w.shape[1], dtype=dtype)
                    gemv_linear(x, w, b) if name == "decode:firefly" else F.linear(x, w, b)
                else:
                    x = torch.randn(PROMPT_ROWS, w.shape[1], dtype=dtype)
                    if name == "prompt:fp32":
                        F.linear(x.float(), w.float(), None if b is None else b.float()).to(dtype)
                    else:
                        F.linear(x, w, b)

    def timer(name: str) -> float:
        one_pass(name)  # warm-up (first touch of the weights, kernel dispatch)
        best, spent = float("inf"), 0.0
        while spent < share or best == float("inf"):
            t = time.perf_counter()
            one_pass(name)
            elapsed = time.perf_counter() - t
            best, spent = min(best, elapsed), spent + elapsed
            if spent > share or elapsed > share:
                break
        return best

    return timer
