"""The app's helpers over firefly_core that no core owner holds yet: GGUF export and the error line
(a training run is core's `training.run.Run`; chats and models are `firefly_core.session`,
`conversation` and `models.*`; settings `models.user_settings`: all used directly).

Every import of a heavy module (torch, transformers, huggingface_hub, and the firefly_core
modules that pull them in) happens inside a function, and these functions are called from thread
workers, so the app paints before any of it loads. When a core API changes, only this module
changes. Nothing here touches Textual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


# -- models -----------------------------------------------------------------------------------
def default_gguf_path(model: str, gguf_type: str) -> Path:
    """Where an export goes unless the user says otherwise: FIREFLY data folder/exports/NAME-TYPE.gguf."""
    from firefly_core.paths import data_dir, file_slug

    return data_dir() / "exports" / f"{file_slug(model)}-{gguf_type}.gguf"


def export_gguf(model: str, out: Path, gguf_type: str, status: Callable[[str], None] | None = None, cancel=None) -> Path:
    """`firefly export MODEL --gguf OUT --type TYPE` (blocking; call from a worker). Refuses an
    existing file (the CLI needs --force for that) and a name that is not *.gguf."""
    from firefly_core.errors import FireflyError, OutputExistsError
    from firefly_core.export.gguf import export_gguf as _export
    from firefly_core.export.gguf import model_info
    from firefly_core.extras import require_extra

    require_extra("llamacpp")
    out = Path(out).expanduser()
    if out.suffix.lower() != ".gguf":
        raise FireflyError(f"{out} does not end in .gguf", "name the output like model.gguf")
    if out.exists():
        raise OutputExistsError(f"{out} already exists", "choose another file name, or remove that file first")
    out.parent.mkdir(parents=True, exist_ok=True)
    info = model_info(model)
    return _export(info, out, gguf_type=gguf_type, status=status, cancel=cancel)


def format_error(e: BaseException) -> str:
    """A user-facing one-liner: `firefly_core.errors.format_error`, the one rendering (plain text:
    the app's notifications and status lines show it without markup)."""
    from firefly_core.errors import format_error as render

    return render(e)


