"""Which machine a benchmark ran on, printed first by every script in bench/: a figure without
its CPU means little (AVX2, AVX-512 with BF16/VNNI and Apple chips run different kernels).

`cpu_label()`: the CPU model, cores, the SIMD levels that matter here (avx2, avx512f, avx512_bf16,
avx512_vnni / avx_vnni, amx) and PyTorch's own choice (`torch.backends.cpu.get_cpu_capability()`,
which ATEN_CPU_CAPABILITY can lower). `print_machine()` prints it as the first line.
"""

from __future__ import annotations

import os
import platform

# flag in /proc/cpuinfo -> the name printed (in this order)
SIMD_FLAGS = (
    ("avx2", "avx2"),
    ("avx512f", "avx512"),
    ("avx512_bf16", "avx512_bf16"),
    ("avx512_vnni", "avx512_vnni"),
    ("avx_vnni", "avx_vnni"),
    ("amx_bf16", "amx_bf16"),
)


def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    name = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: the platform's own name
        pass
    return name, flags


def simd_levels() -> list[str]:
    """The SIMD extensions of this CPU that firefly's kernels (or PyTorch's) can use."""
    _name, flags = _cpuinfo()
    return [label for flag, label in SIMD_FLAGS if flag in flags]


def torch_capability() -> str:
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - torch missing or too old: say so, do not fail the benchmark
        return "unknown"


def cpu_label() -> str:
    """e.g. "AMD EPYC 9R14 (2 CPUs; avx2 avx512 avx512_bf16 avx512_vnni; PyTorch kernels: AVX512)"."""
    name, _flags = _cpuinfo()
    levels = " ".join(simd_levels()) or "no AVX2"
    return f"{name} ({os.cpu_count()} CPUs; {levels}; PyTorch kernels: {torch_capability()})"


def print_machine() -> str:
    """Print the machine line every benchmark starts with; returns it (for a JSON report)."""
    label = cpu_label()
    print(f"CPU: {label}", flush=True)
    return label


if __name__ == "__main__":
    print_machine()
