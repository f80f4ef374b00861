"""How a model runs, declared once: engine, quantization, CUDA graphs, decode threads.

`EngineSettings` is the one declaration (a `Setting` per field: help, choices, range, flag). The
saved per-model settings (`user_settings.ModelSettings`), the model service's request
(`service.ModelRequest`), the flags of `firefly chat`/`use`/`serve` and the app's run-settings
dialog all take these fields from here, and `check_engine_settings` is the one rule for them
(the per-field ranges plus the engine/quantization pairing). None means "the automatic choice".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..setting_spec import check_setting, setting, setting_fields

ENGINES = ("torch", "llamacpp")
TORCH_QUANTIZE = ("int8",)
LLAMACPP_QUANTIZE = ("bf16", "f16", "f32", "q8_0", "q4_k_m")
QUANTIZE_CHOICES = TORCH_QUANTIZE + LLAMACPP_QUANTIZE
MAX_THREADS = 256


def max_threads() -> int:
    """The most decode threads a setting may ask for: 4x this machine's CPUs, at most 256.

    More than the CPUs only slows decoding down (OpenMP workers wait for cores), and far more
    crashes natively (issue 23: 2,000 ended in a bare libgomp error, 100,000 segfaulted and 10^9
    aborted with std::bad_alloc, in every later run that read the saved value). 4x leaves room
    for a settings file shared with a bigger machine."""
    return max(1, min(MAX_THREADS, 4 * (os.cpu_count() or 1)))


@dataclass
class EngineSettings:
    """The engine fields (see the module docstring); the app's dialog shows them in this order."""

    engine: str | None = field(default=None, metadata=setting(
        "decode with PyTorch or llama.cpp (default: llama.cpp on CPU when it is installed, else PyTorch)",
        choices=ENGINES, labels={"torch": "torch (PyTorch)", "llamacpp": "llama.cpp"}))
    quantize: str | None = field(default=None, metadata=setting(
        "int8: int8 weights with PyTorch on CPU (faster replies, a small quality cost); "
        "bf16/f16/f32/q8_0/q4_k_m: the GGUF type llama.cpp runs",
        choices=QUANTIZE_CHOICES,
        labels={**{q: f"{q} (torch)" for q in TORCH_QUANTIZE}, **{q: f"{q} (llama.cpp)" for q in LLAMACPP_QUANTIZE}}))
    cuda_graph: bool | None = field(default=None, metadata=setting(
        "on a GPU, replay a captured CUDA graph for each decode step (default: on where it works)"))
    threads: int | None = field(default=None, metadata=setting(
        "decode threads (default: 1 for small models, else the CPUs that are free)",
        min=1, max=max_threads, above_hint="more threads than CPUs only slow decoding (the limit is 4x the CPUs):"))


ENGINE_KEYS: tuple[str, ...] = tuple(f.name for f, _s, _k in setting_fields(EngineSettings))


def check_engine_settings(values: Any, where: str = "") -> None:
    """The one rule for the engine fields of `values` (any object with them as attributes):
    each field's range, then that the quantization suits the engine."""
    for f, spec, kind in setting_fields(EngineSettings):
        check_setting(f.name, spec, kind, getattr(values, f.name), where)
    engine, quantize = values.engine, values.quantize
    prefix = f"{where}: " if where else ""
    if engine == "torch" and quantize in LLAMACPP_QUANTIZE:
        raise ConfigError(f"{prefix}quantization {quantize!r} is a llama.cpp format",
                          "use engine llamacpp, or quantize int8 with torch")
    if engine == "llamacpp" and quantize in TORCH_QUANTIZE:
        raise ConfigError(f"{prefix}quantization {quantize!r} is for the torch engine",
                          f"with llama.cpp use one of: {', '.join(LLAMACPP_QUANTIZE)}")


def needs_llamacpp(values: Any) -> bool:
    """Whether these settings can only run on llama.cpp (its engine, or one of its GGUF types)."""
    return values.engine == "llamacpp" or values.quantize in LLAMACPP_QUANTIZE


def check_engine_installed(values: Any) -> None:
    """Refuse settings that need llama.cpp when its extra is not installed (saving them would make
    every later chat fail): `extras`' one message, naming the extra and how to install it."""
    if needs_llamacpp(values):
        from ..extras import require_extra

        require_extra("llamacpp")
