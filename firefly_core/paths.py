"""Where firefly keeps its files: config, chat database, training runs (platformdirs locations).

`FIREFLY_HOME` overrides all of them with one folder (tests and portable installs use it).
Models live in the standard Hugging Face cache (`HF_HOME`), never in our own folders, so other
tools reuse them.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import PlatformDirs

_APP = "firefly-tui"


def _dirs() -> PlatformDirs:
    return PlatformDirs(_APP, appauthor=False)


def _home_override() -> Path | None:
    home = os.environ.get("FIREFLY_HOME")
    return Path(home).expanduser() if home else None


def config_dir() -> Path:
    """User configuration (active model, per-model settings, UI language)."""
    home = _home_override()
    return home / "config" if home else Path(_dirs().user_config_dir)


def data_dir() -> Path:
    """User data: the chat database and the list of registered local model folders."""
    home = _home_override()
    return home / "data" if home else Path(_dirs().user_data_dir)


def cache_dir() -> Path:
    """Files firefly can rebuild (GGUF copies of models for llama.cpp): safe to delete."""
    home = _home_override()
    return home / "cache" if home else Path(_dirs().user_cache_dir)


def runs_dir() -> Path:
    """Default parent folder of training runs started from the app."""
    return data_dir() / "runs"


def config_file() -> Path:
    """The user settings (JSON: firefly_core.models.user_settings reads and writes it atomically)."""
    return config_dir() / "config.json"


def chats_db() -> Path:
    return data_dir() / "chats.sqlite3"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache that huggingface_hub uses (honours HF_HOME / HF_HUB_CACHE)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def ensure(path: Path) -> Path:
    """Create `path` (and its parents) if needed; StorageError with a hint if it cannot be."""
    from .errors import StorageError

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError.from_os_error(e, path, "create the folder") from None
    return path


def file_slug(name: str | os.PathLike, *, lower: bool = False, default: str = "model", limit: int = 60) -> str:
    """The one model-name -> file-name rule: the last part of a hub id or folder ("Qwen/Qwen2.5-1.5B"
    -> "Qwen2.5-1.5B"), runs of anything but letters, digits, ".", "_" and "-" as one "-", at most
    `limit` characters, `default` when nothing is left. `lower` for names that must be lower case
    (ollama model names)."""
    import re
    from pathlib import PurePath

    text = PurePath(str(name)).name
    if lower:
        text = text.lower()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:limit].strip("-")
    return slug or default
