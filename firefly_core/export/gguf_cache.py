"""The cache of GGUFs the llama.cpp engine runs: one file per model folder and GGUF type.

`attach_llamacpp(lm, ...)` makes the GGUF once per model and type in the user cache
(`paths.cache_dir()/gguf`, with `export_gguf`), reports progress through `status`, reuses it
afterwards, and sets `lm.decoder` to a `LlamaCppDecoder` over it. The model service calls it; the
decoder itself (generation/llamacpp.py) knows nothing about where its file came from.

A cached file is trusted only if whole: its SHA-256, written beside it (`NAME.gguf.sha256`) when it
is made, is checked on a thread while llama.cpp loads the file (a flipped weight byte loads
fine in llama.cpp and answers wrongly), and a damaged or unverifiable file is remade. The full
hash runs again only when the file was written to since it last matched: the file's identity
(size, modification and change times, inode) at that moment is kept in `NAME.gguf.verified`, and a
load that finds the same identity skips the hash, which cost as much as llama.cpp's own load. Temporary files of builds that were killed (kill -9, SIGTERM, power loss) are removed at
the next load by the owner-pid/age rule of `outputs.clean_stale_temp`.

The weights are read from the model's folder, not from `lm.model`, which may be None.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Callable

from .. import atomic
from ..errors import ConfigError, FireflyError
from ..llamacpp_lib import available
from ..outputs import clean_stale_temp

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
    slug = paths.file_slug(folder.resolve().name)
    if folder.resolve().parent.name == "snapshots":  # a hub cache snapshot: name it after the repo
        slug = folder.resolve().parent.parent.name.removeprefix("models--")
    return paths.cache_dir() / "gguf" / f"{slug}-{_fingerprint(folder)}.{gguf_type}.gguf"


def checksum_path(path: Path) -> Path:
    """The file beside a cached GGUF holding its SHA-256, written when the GGUF is made."""
    return path.with_name(path.name + ".sha256")


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_checksum(path: Path) -> None:
    digest = file_sha256(path)
    atomic.write_text(checksum_path(path), f"{digest}  {path.name}\n")
    _write_verified(path, digest)


def verified_path(path: Path) -> Path:
    """The file beside a cached GGUF recording the file's identity when its checksum last matched."""
    return path.with_name(path.name + ".verified")


def _identity(path: Path) -> dict[str, int]:
    """What changes whenever the file is written, renamed over or replaced: a write moves the
    change time (ctime), which no program can set back (unlike the modification time)."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "dev": st.st_dev}


def _write_verified(path: Path, digest: str) -> None:
    import json

    atomic.write_text(verified_path(path), json.dumps({"sha256": digest, **_identity(path)}) + "\n")


def _unchanged_since_verified(path: Path, expected: str) -> bool:
    """Whether the file is the very file whose SHA-256 last matched `expected` (nothing wrote to it
    since): then the full hash, which cost as much as llama.cpp's whole load (issue 24: 1.7-2.3 s
    against ~1 s), is not needed again. Any write, copy over or replacement changes the identity
    and brings the full check back."""
    import json

    try:
        stamp = json.loads(verified_path(path).read_text(encoding="utf-8"))
        return isinstance(stamp, dict) and stamp == {"sha256": expected, **_identity(path)}
    except (OSError, ValueError):
        return False


def cached_gguf_damage(path: Path) -> str | None:
    """None when the cached GGUF at `path` is whole (its SHA-256 is the one written when it was
    made), else what is wrong: missing, not a GGUF, no checksum, or changed bytes. A flipped weight
    byte leaves the header intact and llama.cpp loads the file, so only the checksum sees it."""
    damage, expected = _cheap_damage(path)
    return damage if damage is not None else _checksum_damage(path, expected)


def _cheap_damage(path: Path) -> tuple[str | None, str]:
    """What is wrong with the file without reading all of it, and the checksum it should have."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return "not a GGUF file", ""
    except FileNotFoundError:
        return "missing", ""
    except OSError as e:
        return f"unreadable ({e.strerror})", ""
    try:
        return None, checksum_path(path).read_text(encoding="utf-8").split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return "no checksum", ""


def _checksum_damage(path: Path, expected: str) -> str | None:
    try:
        actual = file_sha256(path)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return None if actual == expected else "its bytes changed since it was made (checksum)"


def ensure_gguf(
    lm: Any,
    *,
    quantize: str | None,
    threads: int | None = None,
    status: Status | None = None,
    cancel: threading.Event | None = None,
) -> tuple[Path, bool]:
    """Make `lm`'s cached GGUF of the `quantize` type unless a whole one is there: (its path, whether
    it was made now). Called when a model is chosen (`firefly use`, `pull`, the app's Models screen:
    `models.service.prepare_model_files`) so the first chat only loads it; `attach_llamacpp` calls
    it too for a model nobody prepared. A file that looks whole here is checked in full (SHA-256)
    by every load, so this only reads its header."""
    from .gguf import ExportCancelled

    require_llamacpp()
    say = status or (lambda _msg: None)
    gguf_type = gguf_type_for(quantize)
    path = gguf_cache_path(lm.path, gguf_type)
    clean_stale_temp(path, every_name=True)  # files of builds killed before they finished
    damage, _expected = _cheap_damage(path)
    if damage is None:
        return path, False
    if cancel is not None and cancel.is_set():
        raise ExportCancelled("stopped before making the llama.cpp model", None)
    if damage == "missing":
        say(f"making the llama.cpp model ({gguf_type}, once for this model): {path.name}")
    else:
        say(f"remaking the llama.cpp model ({gguf_type}): the cached {path.name} is damaged: {damage}")
    _make(lm, path, gguf_type, say, cancel, threads)
    return path, True


def require_llamacpp() -> None:
    """The llamacpp extra installed and llama.cpp usable here, else the one clear error."""
    from ..extras import require_extra

    require_extra("llamacpp")  # not installed: the extra's one message, with the install commands
    reason = available()
    if reason is not None:
        raise FireflyError(f"the llama.cpp engine is not available: {reason}", "use --engine torch")


class _Checksum(threading.Thread):
    """The checksum of a cached GGUF, computed while llama.cpp loads the same file: both mostly
    wait on memory and disk and release the GIL, so the check adds little to the load's time."""

    def __init__(self, path: Path, expected: str) -> None:
        super().__init__(name="gguf-checksum", daemon=True)
        self.path, self.expected = path, expected
        self.damage: str | None = "not checked"

    def run(self) -> None:
        self.damage = _checksum_damage(self.path, self.expected)

    def result(self) -> str | None:
        self.join()
        return self.damage


def attach_llamacpp(
    lm: Any,
    *,
    quantize: str | None,
    threads: int | Callable[[], int] | None,
    status: Status | None,
    cancel: threading.Event | None = None,
) -> None:
    """Set `lm.decoder` to a llama.cpp decoder for `lm`'s model, making and caching its GGUF first.

    `threads`: a count, None (llama.cpp's physical-core default), or a function giving the count,
    called after llama.cpp has loaded the file (the service's CPU sample overlaps the load).

    `quantize`: "bf16" | "f16" | "f32" | "q8_0" | "q4_k_m" (None: q8_0; "int8" means q8_0).
    The GGUF is cached per model folder (and its weights' sizes/dates) and type, so the second
    load starts at once. `lm.context_length` is lowered to the context llama.cpp allocates
    (at most MAX_CONTEXT), so chat truncates history where llama.cpp would run out.
    """
    from ..generation.llamacpp import LlamaCppDecoder, default_threads
    from .gguf import ExportCancelled

    say = status or (lambda _msg: None)
    gguf_type = gguf_type_for(quantize)
    choose_threads = threads if callable(threads) else None
    threads = None if callable(threads) else threads
    path, made = ensure_gguf(lm, quantize=quantize, threads=threads, status=say, cancel=cancel)
    checking: _Checksum | None = None
    damage, expected = _cheap_damage(path)
    if not made and (damage is not None or not _unchanged_since_verified(path, expected)):
        # a file made earlier and written to since its last check: checked in full while llama.cpp loads it
        checking = _Checksum(path, expected)
        checking.start()
    if cancel is not None and cancel.is_set():
        if checking is not None:
            checking.join()
        raise ExportCancelled("loading stopped", None)
    n_ctx = max(16, min(int(getattr(lm, "context_length", 0) or MAX_CONTEXT), MAX_CONTEXT))
    shown = f", {threads or default_threads()} threads" if choose_threads is None else ""
    say(f"loading {path.name} into llama.cpp ({gguf_type}{shown})")
    decoder = None
    try:
        decoder = LlamaCppDecoder(path, n_ctx=n_ctx, threads=threads)
    except FireflyError:
        if made:
            raise
    damage = checking.result() if checking is not None else None
    if checking is not None and damage is None:
        _write_verified(path, expected)  # the next load skips the hash while nothing writes to the file
    if damage is not None or decoder is None:
        # changed bytes, or a file we made that llama.cpp refuses (an older llama.cpp's): remake it once
        if decoder is not None:
            decoder.close()
        why = f"the cached {path.name} is damaged: {damage}" if damage else "llama.cpp refused the cached file"
        say(f"remaking the llama.cpp model ({gguf_type}): {why}")
        _make(lm, path, gguf_type, say, cancel, threads)
        decoder = LlamaCppDecoder(path, n_ctx=n_ctx, threads=threads)
    old = getattr(lm, "decoder", None)
    if old is not None and hasattr(old, "close"):
        old.close()
    if choose_threads is not None:
        decoder.set_threads(choose_threads())
    decoder.gguf_type = gguf_type  # what the weights are now, for the status line
    lm.decoder = decoder
    lm.context_length = decoder.n_ctx


def _make(lm: Any, path: Path, gguf_type: str, say: Status, cancel: threading.Event | None, threads: int | None) -> None:
    """Export the GGUF into the cache and write its checksum (a file without one is remade)."""
    from .gguf import export_gguf

    checksum_path(path).unlink(missing_ok=True)
    verified_path(path).unlink(missing_ok=True)
    export_gguf(lm, path, gguf_type=gguf_type, status=say, cancel=cancel, threads=threads)
    _write_checksum(path)
