"""What a model folder is, read from its small files only (no weights loaded, no torch): the
architecture, the parameter count, the context window, the prompt format a chat would use, and the
size on disk. `firefly show` prints it; it must stay instant even for a multi-GB model.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the config keys a context window is read from, in the order model loading reads them
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length")


@dataclass(frozen=True)
class ModelDetails:
    architecture: str | None  # e.g. BloomForCausalLM
    parameters: int | None  # from the safetensors headers (None: no safetensors files)
    context_length: int | None  # None: the config sets none (BLOOM, ALiBi: 2048 is used)
    prompt_format: str  # what a chat uses unless told otherwise
    prompt_format_from: str  # "saved setting", "catalog", "chat template", "default"
    dtype: str | None  # torch_dtype / dtype in config.json


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def count_parameters(folder: Path) -> int | None:
    """Elements of every tensor in the folder's safetensors files, from their JSON headers."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        try:
            with f.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(min(size, 100_000_000)))
        except (OSError, ValueError, struct.error):
            return None
        for name, info in header.items():
            if name != "__metadata__" and isinstance(info, dict):
                n = 1
                for d in info.get("shape", []):
                    n *= int(d)
                total += n
    return total


def model_details(folder: Path, *, saved_format: str | None = None, catalog_format: str | None = None) -> ModelDetails:
    """The details of a model folder (the prompt format as `formats.resolve_format` would pick it)."""
    folder = Path(folder)
    config = _json(folder / "config.json")
    archs = config.get("architectures")
    context = next((config[k] for k in CONTEXT_KEYS if isinstance(config.get(k), int) and config[k] > 0), None)
    has_template = bool(_json(folder / "tokenizer_config.json").get("chat_template")) or any(
        (folder / n).exists() for n in ("chat_template.jinja", "chat_template.json")
    )
    if saved_format:
        fmt, source = saved_format, "saved setting"
    elif catalog_format:
        fmt, source = catalog_format, "catalog"
    elif has_template:
        fmt, source = "chat_template", "tokenizer's chat template"
    else:
        fmt, source = "firefly-v1", "default"
    return ModelDetails(
        architecture=archs[0] if isinstance(archs, list) and archs else config.get("model_type"),
        parameters=count_parameters(folder),
        context_length=context,
        prompt_format=fmt,
        prompt_format_from=source,
        dtype=config.get("torch_dtype") or config.get("dtype"),
    )


def human_count(n: int) -> str:
    """1.4B, 560M, 12.3K: how parameter counts are said."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0" + unit, unit)
    return str(n)
