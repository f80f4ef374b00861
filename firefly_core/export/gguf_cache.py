"""The cache of GGUFs the llama.cpp engine runs: one file per model folder and GGUF type.

`attach_llamacpp(lm, ...)` makes the GGUF once per model and type in the user cache
(`paths.cache_dir()/gguf`, with `export_gguf`), reports progress through `status`, reuses it
afterwards, and sets `lm.decoder` to a `LlamaCppDecoder` over it. The model service calls it; the
decoder itself (generation/llamacpp.py) knows nothing about where its file came from.

The weights are read from the model's folder, not from `lm.model`, which may be None.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, FireflyError
from ..llamacpp_lib import available

Status = Callable[[str], None]

DEFAULT_TYPE = "q8_0"  # ~lossless (see README: perplexity and greedy agreement vs bf16), 2x fewer bytes
MAX_CONTEXT = 8192  # llama.cpp allocates the whole KV cache up front; long windows cost RAM for nothing
EXPORT_VERSION = "1"  # bump when the exporter's output changes, so cached GGUFs are remade
_QUANTIZE_ALIASES = {"int8": "q8_0"}  # the torch engine's name for 8-bit weights


def gguf_type_for(quantize: str | None) -> str:
    """The GGUF type for a `quantize` request (None = our default, q8_0)."""
    from .gguf import GGUF_TYPES

    t = _QUANTIZE_ALIASES.get(str(quantize).lower(), str(quantize).lower()) if quantize else DEFAULT_TYPE
    if t not in GGUF_TYPES:
        raise ConfigError(
            f"llama.cpp cannot use quantize={quantize!r}", f"choose one of: {', '.join(GGUF_TYPES)}"
        )
    return t


def _fingerprint(folder: Path) -> str:
    """Changes when the model's weights, config or tokenizer change (a re-trained `final/`)."""
    h = hashlib.sha256(f"{EXPORT_VERSION}\0{folder.resolve()}".encode())
    for p in sorted(folder.iterdir()):
        if p.is_file() and (p.suffix in (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")):
            st = p.stat()
            h.update(f"\0{p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def gguf_cache_path(model_path: str | os.PathLike, gguf_type: str) -> Path:
    """Where the GGUF of a model folder and type is cached (made by `attach_llamacpp`)."""
    from .. import paths

    folder = Path(model_path)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name)[:60] or "model"
    if folder.resolve().parent.name == "snapshots":  # a hub cache snapshot: name it after the repo
        slug = folder.resolve().parent.parent.name.removeprefix("models--")
    return paths.cache_dir() / "gguf" / f"{slug}-{_fingerprint(folder)}.{gguf_type}.gguf"


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def attach_llamacpp(
    lm: Any,
    *,
    quantize: str | None,
    threads: int | None,
    status: Status | None,
    cancel: threading.Event | None = None,
) -> None:
    """Set `lm.decoder` to a llama.cpp decoder for `lm`'s model, making and caching its GGUF first.

    `quantize`: "bf16" | "f16" | "f32" | "q8_0" | "q4_k_m" (None: q8_0; "int8" means q8_0).
    The GGUF is cached per model folder (and its weights' sizes/dates) and type, so the second
    load starts at once. `lm.context_length` is lowered to the context llama.cpp allocates
    (at most MAX_CONTEXT), so chat truncates history where llama.cpp would run out.
    """
    reason = available()
    if reason is not None:
        raise FireflyError(f"the llama.cpp engine is not available: {reason}", "use --engine torch")
    from ..generation.llamacpp import LlamaCppDecoder, default_threads
    from .gguf import ExportCancelled, export_gguf

    say = status or (lambda _msg: None)
    gguf_type = gguf_type_for(quantize)
    path = gguf_cache_path(lm.path, gguf_type)
    made = False
    if not _is_gguf(path):
        say(f"making the llama.cpp model ({gguf_type}, once for this model): {path.name}")
        export_gguf(lm, path, gguf_type=gguf_type, status=say, cancel=cancel, threads=threads)
        made = True
    if cancel is not None and cancel.is_set():
        raise ExportCancelled("loading stopped", None)
    n_ctx = max(16, min(int(getattr(lm, "context_length", 0) or MAX_CONTEXT), MAX_CONTEXT))
    say(f"loading {path.name} into llama.cpp ({gguf_type}, {threads or default_threads()} threads)")
    try:
        decoder = LlamaCppDecoder(path, n_ctx=n_ctx, threads=threads)
    except FireflyError:
        if made:
            raise
        # a cached file we made but llama.cpp refuses (e.g. written by an older llama.cpp): remake it once
        path.unlink(missing_ok=True)
        say(f"remaking the llama.cpp model ({gguf_type})")
        export_gguf(lm, path, gguf_type=gguf_type, status=say, cancel=cancel, threads=threads)
        decoder = LlamaCppDecoder(path, n_ctx=n_ctx, threads=threads)
    old = getattr(lm, "decoder", None)
    if old is not None and hasattr(old, "close"):
        old.close()
    decoder.gguf_type = gguf_type  # what the weights are now, for the status line
    lm.decoder = decoder
    lm.context_length = decoder.n_ctx
