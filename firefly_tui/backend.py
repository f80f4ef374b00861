"""The app's one door to firefly_core's heavy parts: models, chat, downloads, settings, training.

Every import of a heavy module (torch, transformers, huggingface_hub, and the firefly_core
modules that pull them in) happens inside a function, and these functions are called from thread
workers, so the app paints before any of it loads. When a core API changes, only this module
changes. Nothing here touches Textual.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

# Keys of a conversation's settings dict (stored with the chat in SQLite).
CHAT_SETTING_KEYS = (
    "model",
    "system",
    "prompt_format",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "max_new_tokens",
)
GENERATION_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")
LAUNCH_FILE = "app-launch.json"  # what the app writes next to a run it started (pid, command)
LOG_FILE = "train.log"  # stdout + stderr of a run the app started


# -- models -----------------------------------------------------------------------------------
def quiet_progress_bars() -> None:
    """No tqdm bars from huggingface_hub / transformers: they would draw over the app."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def load_model(name_or_path: str, prompt_format: str | None = None, trust_remote_code: bool | None = None, settings=None):
    """Load a model for chat (blocking; call from a worker). Raises FireflyError subclasses.

    The user's saved per-model settings (`firefly` CLI or app) give the prompt format and the
    remote-code opt-in unless the caller passes them.
    """
    quiet_progress_bars()
    from firefly_core.models.loading import load_model as _load

    saved = model_settings(settings, name_or_path)
    catalog_format = None
    try:
        entry = find_entry(name_or_path)
        if entry is not None:
            catalog_format = entry.prompt_format
    except ImportError:
        pass
    return _load(
        name_or_path,
        prompt_format=prompt_format or saved.get("prompt_format") or None,
        catalog_format=catalog_format,
        trust_remote_code=bool(saved.get("trust_remote_code")) if trust_remote_code is None else trust_remote_code,
    )


def with_prompt_format(lm, name: str | None):
    """The same loaded model with another prompt format (weights shared, nothing reloaded)."""
    import dataclasses

    from firefly_core.formats import get_format

    if not name or name == getattr(lm.prompt_format, "name", None):
        return lm
    return dataclasses.replace(lm, prompt_format=get_format(name))


def describe_model(lm) -> dict[str, Any]:
    return {
        "name": lm.name,
        "device": str(lm.device),
        "dtype": str(lm.dtype).replace("torch.", ""),
        "context_length": lm.context_length,
        "prompt_format": getattr(lm.prompt_format, "name", repr(lm.prompt_format)),
    }


def catalog() -> list:
    from firefly_core.models.catalog import catalog as _catalog

    return list(_catalog())


def find_entry(model_id: str):
    from firefly_core.models.catalog import find_entry as _find

    return _find(model_id)


def list_installed() -> list:
    from firefly_core.models.inventory import list_installed as _list

    return list(_list())


def pull(repo_id: str, progress: Callable | None = None, cancel=None) -> Path:
    """Download (or resume) `repo_id`, honouring the user's remote-code opt-in for that model."""
    from firefly_core.models.hub import pull as _pull
    from firefly_core.models.settings import load_settings

    trusted = load_settings().for_model(repo_id).trust_remote_code
    return _pull(repo_id, progress=progress, cancel=cancel, allow_remote_code=trusted)


def remove(repo_id_or_path: str) -> int:
    from firefly_core.models.inventory import remove as _remove

    return _remove(repo_id_or_path)


def register_local(path: str) -> None:
    from firefly_core.models.inventory import register_local as _register

    _register(path)


# -- settings ---------------------------------------------------------------------------------
def load_settings():
    """The user's saved settings, or None when the settings module is not there."""
    try:
        from firefly_core.models.settings import load_settings as _load
    except ImportError:
        return None
    return _load()


def save_settings(settings) -> None:
    from firefly_core.models.settings import save_settings as _save

    _save(settings)


def model_settings(settings, model: str | None) -> dict[str, Any]:
    """The user's saved per-model settings as a plain dict (None values dropped)."""
    if settings is None or not model:
        return {}
    ms = getattr(settings, "models", {}).get(model)
    if ms is None:
        return {}
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(ms).items() if v is not None}


# -- chat -------------------------------------------------------------------------------------
def generation_config(lm, overrides: dict[str, Any]):
    """The model's generation defaults, then the chat's overrides (None/'' ignored)."""
    from firefly_core.generation import GenerationConfig

    cfg = GenerationConfig()
    defaults = getattr(lm, "generation_defaults", {}) or {}
    for key in GENERATION_KEYS + ("do_sample",):
        if key in defaults and defaults[key] is not None and hasattr(cfg, key):
            setattr(cfg, key, defaults[key])
    for key in GENERATION_KEYS:
        value = overrides.get(key)
        if value is not None and value != "":
            setattr(cfg, key, value)
    return cfg


def new_session(lm, messages: list[tuple[str, str]], settings: dict[str, Any]):
    """A ChatSession over `lm` with the stored history [(role, content)] and the chat's settings."""
    from firefly_core.chat import ChatSession
    from firefly_core.formats import Message

    history = [Message(role, content) for role, content in messages if role != "system"]
    return ChatSession(
        lm,
        system=settings.get("system") or None,
        config=generation_config(lm, settings),
        messages=history,
    )


def is_done(event) -> bool:
    """A ReplyDone (it carries stats); any other event is a TextDelta."""
    return hasattr(event, "stats")


def stats_dict(stats) -> dict[str, Any]:
    import dataclasses

    if stats is None:
        return {}
    return dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) else dict(vars(stats))


# -- training ---------------------------------------------------------------------------------
@dataclass
class TrainRequest:
    """What the training form collects; turned into a `firefly train` command line."""

    model: str
    data: list[str]
    out: Path
    gpu: str = "cpu"
    method: str = "lora"  # "lora" | "full"
    epochs: float = 1
    max_steps: int = 0
    lr: float = 2e-4
    batch_size: int = 4
    max_length: int = 512
    zero: int = 0
    extra: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        args = [
            "train",
            "--gpu", self.gpu,
            "--model", self.model,
            "--out", str(self.out),
            "--epochs", str(self.epochs),
            "--lr", str(self.lr),
            "--batch-size", str(self.batch_size),
            "--max-length", str(self.max_length),
            "--data", *self.data,
        ]
        if self.max_steps:
            args += ["--max-steps", str(self.max_steps)]
        if self.method == "lora":
            args += ["--lora"]
        if self.zero:
            args += ["--deepspeed", str(self.zero)]
        return args + list(self.extra)


def firefly_command() -> list[str]:
    """How to run the CLI from here: the same interpreter, so the same install."""
    return [sys.executable, "-m", "firefly_tui.cli"]


def check_data(paths: list[str], model: str | None, max_length: int = 512):
    """The data check report for the training form (loads only the tokenizer)."""
    from firefly_core.data import check_files

    tokenizer = fmt = None
    if model:
        from firefly_core.formats import resolve_format
        from firefly_core.models.loading import load_tokenizer
        from firefly_core.models.inventory import resolve_model_path

        tokenizer = load_tokenizer(resolve_model_path(model))
        entry = None
        try:
            entry = find_entry(model)
        except ImportError:
            pass
        # The same format training will use: the model's own, as chat resolves it.
        fmt = resolve_format(tokenizer, catalog_format=entry.prompt_format if entry else None)
    return check_files([Path(p) for p in paths], tokenizer=tokenizer, prompt_format=fmt, max_length=max_length)


def launch_training(req: TrainRequest) -> subprocess.Popen:
    """Start `firefly train` as its own process (own session: it outlives the app)."""
    req.out.mkdir(parents=True, exist_ok=True)
    argv = firefly_command() + req.argv()
    log = open(req.out / LOG_FILE, "ab")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        log.close()
    from firefly_core.atomic import write_json

    write_json(req.out / LAUNCH_FILE, {"pid": proc.pid, "argv": argv, "started": time.time()})
    return proc


def launched_pid(run_dir: Path) -> int | None:
    try:
        return int(json.loads((Path(run_dir) / LAUNCH_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int | None) -> bool:
    from firefly_core.training.events import pid_alive as _alive

    return _alive(pid)


def stop_training(run_dir: Path) -> bool:
    """Graceful stop: SIGINT to the run's process (it saves a checkpoint). False if not running."""
    pid = launched_pid(run_dir)
    if not pid_alive(pid):
        return False
    os.kill(pid, signal.SIGINT)
    return True


def event_tail(run_dir: Path):
    from firefly_core.training.events import EventTail

    return EventTail(Path(run_dir) / "events.jsonl")


def read_events(run_dir: Path) -> list:
    from firefly_core.training.events import read_events as _read

    return list(_read(Path(run_dir)))


def list_runs(parent: Path | None = None) -> list:
    from firefly_core.paths import runs_dir
    from firefly_core.training.events import list_runs as _list

    parent = Path(parent) if parent else runs_dir()
    if not parent.is_dir():
        return []
    return list(_list(parent))


def tail_lines(path: Path, n: int = 200) -> list[str]:
    """The last n lines of a text file (the run's log), read from the end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-n:]


def format_error(e: BaseException) -> str:
    """A user-facing one-liner: our errors' message and hint; otherwise the type and text."""
    from firefly_core.errors import FireflyError

    if isinstance(e, FireflyError):
        return e.message + (f" — {e.hint}" if e.hint else "")
    return f"{type(e).__name__}: {e}"


