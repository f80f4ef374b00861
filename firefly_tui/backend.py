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

from firefly_core.training.run_dir import LAUNCH_FILE, LOG_FILE  # light: no torch



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


def load_model(
    name_or_path: str,
    prompt_format: str | None = None,
    trust_remote_code: bool | None = None,
    settings=None,
    *,
    status: Callable[[str], None] | None = None,
    cancel=None,
):
    """A model ready for chat (blocking; call from a worker). Raises FireflyError subclasses.

    Goes through the process's model service: loads are one at a time, a model asked for twice
    is loaded once and shared, and it is prepared for chat once (engine, int8, CUDA graphs, CPU
    kernels, threads, from the user's saved per-model settings). `status` gets each step's text
    ("compiling CPU kernels, once, ~30 s") as it happens. `settings` is accepted for callers that
    hold the user's settings; the service reads the same file.
    """
    quiet_progress_bars()
    from firefly_core.models.service import model_service

    service = model_service()
    request = service.request_for(
        str(name_or_path), prompt_format=prompt_format or None, trust_remote_code=trust_remote_code
    )
    say = (lambda s: status(s.message)) if status is not None else None
    return service.get(request, status=say, cancel=cancel)


def describe_model(lm) -> dict[str, Any]:
    from firefly_core.models.service import weights_label

    return {
        "name": lm.name,
        "device": str(lm.device),
        "dtype": weights_label(lm),
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
    from firefly_core.models.user_settings import load_settings

    trusted = load_settings().for_model(repo_id).trust_remote_code
    return _pull(repo_id, progress=progress, cancel=cancel, allow_remote_code=trusted)


def remove(repo_id_or_path: str) -> int:
    from firefly_core.models.inventory import remove as _remove

    return _remove(repo_id_or_path)


def register_local(path: str) -> None:
    from firefly_core.models.inventory import register_local as _register

    _register(path)


ENGINE_SETTING_KEYS = ("engine", "quantize", "cuda_graph", "threads")


def engine_settings(model: str) -> dict[str, Any]:
    """The user's saved engine choices for `model` (None = automatic), for the Models screen."""
    from firefly_core.models.user_settings import load_settings as _load

    ms = _load().for_model(model)
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(ms).items() if k in ENGINE_SETTING_KEYS or k == "trust_remote_code"}


def save_engine_settings(model: str, values: dict[str, Any]):
    """Save engine / quantize / cuda_graph / threads for `model` (validated by the core); the
    model service applies them the next time the model is loaded."""
    from firefly_core.models.user_settings import update_model_settings

    return update_model_settings(model, **{k: values.get(k) for k in ENGINE_SETTING_KEYS})


def default_gguf_path(model: str, gguf_type: str) -> Path:
    """Where an export goes unless the user says otherwise: FIREFLY data folder/exports/NAME-TYPE.gguf."""
    import re

    from firefly_core.paths import data_dir

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(model)).name).strip("-") or "model"
    return data_dir() / "exports" / f"{name}-{gguf_type}.gguf"


def export_gguf(model: str, out: Path, gguf_type: str, status: Callable[[str], None] | None = None, cancel=None) -> Path:
    """`firefly export MODEL --gguf OUT --type TYPE` (blocking; call from a worker). Refuses an
    existing file (the CLI needs --force for that) and a name that is not *.gguf."""
    from firefly_core.errors import FireflyError, OutputExistsError
    from firefly_core.export.gguf import export_gguf as _export
    from firefly_core.export.gguf import model_info

    try:
        import gguf  # noqa: F401 - the writer; an optional extra
    except ImportError:
        raise FireflyError(
            "GGUF export needs the gguf package, which is not installed",
            "install the llama.cpp extra: pip install 'firefly-tui[llamacpp]'",
        ) from None
    out = Path(out).expanduser()
    if out.suffix.lower() != ".gguf":
        raise FireflyError(f"{out} does not end in .gguf", "name the output like model.gguf")
    if out.exists():
        raise OutputExistsError(f"{out} already exists", "choose another file name, or remove that file first")
    out.parent.mkdir(parents=True, exist_ok=True)
    info = model_info(model)
    return _export(info, out, gguf_type=gguf_type, status=status, cancel=cancel)


# -- settings ---------------------------------------------------------------------------------
def load_settings():
    """The user's saved settings, or None when the settings module is not there."""
    try:
        from firefly_core.models.user_settings import load_settings as _load
    except ImportError:
        return None
    return _load()


def save_settings(settings) -> None:
    from firefly_core.models.user_settings import save_settings as _save

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


# -- chat (APP-CHAT) -------------------------------------------------------------------------
def chat_model(app, name: str | None, *, status: Callable[[str], None] | None = None, cancel=None):
    """The loaded model a chat answers with (blocking; call from a worker).

    `name` is the chat's own model or, when None, the app's active one; both come from the model
    service, so a chat with its own model never reloads the active one or disturbs other chats.
    """
    name = name or app.model_name
    if app.lm is not None and name == app.model_name:
        return app.lm
    if not name:
        from firefly_core.errors import ConfigError

        raise ConfigError("no model is chosen for this chat", "pick one with Ctrl+O or on the Models screen (F3)")
    return load_model(name, status=status, cancel=cancel)


def generation_lock(lm):
    """The model's generation lock (one generation at a time per model), held while a reply
    streams; a stand-in model without one (tests' scripted sessions) needs none."""
    import contextlib

    lock = getattr(lm, "generation_lock", None)
    return lock if lock is not None else contextlib.nullcontext()


def chat_generation_config(lm, model_id: str | None, chat: dict[str, Any] | None):
    """The chat's GenerationConfig: core's one resolution (model file, catalog, saved, chat)."""
    from firefly_core.models.generation_layers import resolve_generation_config

    return resolve_generation_config(
        model_id or getattr(lm, "name", ""),
        model_defaults=getattr(lm, "generation_defaults", None),
        chat=chat,
    )


def generation_defaults(lm, model_id: str | None) -> dict[str, Any]:
    """What each generation key is when the chat sets nothing (shown as "default" in the dialog)."""
    from firefly_core.models.generation_layers import GENERATION_KEYS

    cfg = chat_generation_config(lm, model_id, None)
    return {k: getattr(cfg, k) for k in GENERATION_KEYS}


def check_chat_settings(lm, model_id: str | None, chat: dict[str, Any]) -> None:
    """Raise the ConfigError core raises for these chat settings (the dialog shows its reason)."""
    from firefly_core.formats import get_format

    if chat.get("prompt_format"):
        get_format(chat["prompt_format"])
    chat_generation_config(lm, model_id, chat)


def prompt_format_names() -> tuple[str, ...]:
    from firefly_core.formats import FORMAT_NAMES

    return tuple(FORMAT_NAMES)


def model_choices(active: str | None, current: str | None = None) -> list[str]:
    """The chat's model list: complete installed models and local folders, then the active model
    and the chat's own choice when they are not among them (a folder used once, a removed model)."""
    out = [str(m.id) for m in list_installed() if m.complete]
    for extra in (active, current):
        if extra and extra not in out:
            out.append(extra)
    return out


def with_prompt_format(lm, name: str | None):
    """The same loaded model with another prompt format (weights and decoder shared, nothing reloaded)."""
    import dataclasses

    from firefly_core.formats import get_format

    if not name or name == getattr(lm.prompt_format, "name", None):
        return lm
    return dataclasses.replace(lm, prompt_format=get_format(name))


def new_session(lm, messages: list[tuple[str, str]], settings: dict[str, Any], model_id: str | None = None):
    """A ChatSession over `lm` with the chat's settings (format, system prompt, sampling).

    `messages` seeds the history [(role, content)]; under a Conversation it is re-synchronised
    from the store before every reply anyway."""
    from firefly_core.chat import ChatSession
    from firefly_core.formats import Message

    history = [Message(role, content) for role, content in messages if role != "system"]
    lm = with_prompt_format(lm, settings.get("prompt_format"))
    return ChatSession(
        lm,
        system=settings.get("system") or None,
        config=chat_generation_config(lm, model_id, settings),
        messages=history,
    )


def settings_used(lm, model_id: str | None, session) -> dict[str, Any]:
    """What a reply was actually made with: model, prompt format, system prompt, every generation key."""
    from firefly_core.models.generation_layers import GENERATION_KEYS

    cfg = session.config
    return {
        "model": model_id or getattr(lm, "name", None),
        "prompt_format": getattr(getattr(session.lm, "prompt_format", None), "name", None),
        "system": session.system,
        "generation": {k: getattr(cfg, k) for k in (*GENERATION_KEYS, "do_sample", "seed")},
    }


def record_settings_used(store, saved, used: dict[str, Any]) -> None:
    """Keep the settings a stored reply was made with in its meta (exported with the chat)."""
    store.update_message(saved.id, saved.content, meta={**(saved.meta or {}), "settings": used})


def export_chat_json(store, conversation_id: int) -> str:
    """The chat as JSON: Chinese kept readable, and the settings each reply was made with."""
    data = store.export_json(conversation_id)
    replies = [m.get("meta", {}).get("settings") for m in data["messages"] if m.get("role") == "assistant"]
    used = next((s for s in reversed(replies) if s), None)
    if used is not None:
        data["settings_used"] = used
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def is_done(event) -> bool:
    """The end of a reply (ReplyDone); any other event is a TextDelta."""
    from firefly_core.generation.config import ReplyDone

    return isinstance(event, ReplyDone)


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


def command_line(argv: list[str]) -> str:
    """The `firefly …` line a user can paste into a shell or a script on a GPU server."""
    import shlex

    return shlex.join(["firefly", *argv])


def resume_argv(run_dir: Path) -> list[str]:
    """`firefly train --resume`: continue a stopped run from its newest checkpoint."""
    return ["train", "--resume", "--out", str(run_dir)]


def launch_training(req: TrainRequest) -> subprocess.Popen:
    """Start `firefly train` as its own process (own session: it outlives the app).

    The run folder is checked first, by the same rule `firefly train` applies (parsed from the very
    command line the process will get), so a refused folder is an error here, before the app
    writes its log into it, not a line in train.log.
    """
    check_new_run(req.argv())
    return launch_argv(req.argv(), Path(req.out))


def check_new_run(cli_argv: list[str]) -> None:
    """Raise the FireflyError `firefly <cli_argv>` (a new `train`) would raise about its --out."""
    from firefly_core.training.config import load_config
    from firefly_core.training.run_dir import check_new_run as _check

    import argparse

    from .commands import train

    parser = argparse.ArgumentParser(prog="firefly")
    train.register(parser.add_subparsers(dest="command"))  # the very parser `firefly train` uses
    args = parser.parse_args(cli_argv)
    _check(load_config(args.config, train._overrides(args)))


def launch_argv(cli_argv: list[str], out: Path) -> subprocess.Popen:
    """Start `firefly <cli_argv>` for the run folder `out`, its output appended to out/train.log."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    argv = firefly_command() + list(cli_argv)
    log = open(out / LOG_FILE, "ab")
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

    write_json(out / LAUNCH_FILE, {"pid": proc.pid, "argv": argv, "started": time.time()})
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


def running_runs(parent: Path | None = None) -> list[Path]:
    """Run folders whose training process is alive (started here, from the CLI, or earlier)."""
    from firefly_core.paths import runs_dir

    parent = Path(parent) if parent else runs_dir()
    if not parent.is_dir():
        return []
    found = [r.path for r in list_runs(parent) if r.status == "running"]
    for folder in parent.iterdir():  # launched by the app, no "start" event yet
        if folder not in found and pid_alive(launched_pid(folder)):
            found.append(folder)
    return found


# The training form's fields (screens/train.py) and where each comes from in a saved run config.
FORM_FIELDS = ("model", "data", "out", "epochs", "max_steps", "lr", "batch", "max_length", "gpu", "mode", "zero", "extra")
_FORM_CONFIG_KEYS = {
    "model", "data", "out", "epochs", "max_steps", "lr", "batch_size", "max_length", "gpu", "lora", "deepspeed",
}
# Config keys with a CLI spelling other than --key-name, or none at all.
_CLI_NAMES = {"prompt_format": "--format"}


def run_form_values(run_dir: Path) -> dict[str, str]:
    """A past run's settings as training-form values ("clone"): RUN_DIR/train_config.json, with
    what the form has no field for written as extra options, so the clone trains the same way."""
    from firefly_core.errors import ConfigError
    from firefly_core.training.config import CONFIG_FILE, TrainConfig

    path = Path(run_dir) / CONFIG_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"cannot read the settings of {Path(run_dir).name}: {e}", f"expected {path}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} is not a JSON object", "the run's settings cannot be cloned")
    defaults = TrainConfig().to_dict()

    def num(v) -> str:
        return "" if v is None else (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))

    data = saved.get("data") or []
    out = {
        "model": str(saved.get("model") or ""),
        "data": ", ".join(str(d) for d in (data if isinstance(data, list) else [data])),
        "epochs": num(saved.get("epochs", 1)),
        "max_steps": num(saved.get("max_steps") or 0),
        "lr": str(saved.get("lr", defaults["lr"])),
        "batch": num(saved.get("batch_size", defaults["batch_size"])),
        "max_length": num(saved.get("max_length", defaults["max_length"])),
        "gpu": str(saved.get("gpu") or "cpu"),
        "mode": "lora" if saved.get("lora") else "full",
        "zero": str(saved.get("deepspeed") or 0),
    }
    extra: list[str] = []
    for key, value in saved.items():
        if key in _FORM_CONFIG_KEYS or key not in defaults or value == defaults[key] or value is None:
            continue
        if key in ("out", "config", "num_machines", "machine_rank", "main_process_ip", "main_process_port"):
            continue  # where and on which machines it ran: not part of a clone
        flag = _CLI_NAMES.get(key, "--" + key.replace("_", "-"))
        if value is True:
            extra.append(flag)
        elif value is False:
            continue
        elif isinstance(value, list):
            extra += [flag, *map(str, value)]
        else:
            extra += [flag, num(value) if isinstance(value, float) else str(value)]
    import shlex

    out["extra"] = shlex.join(extra)
    return out


def form_memory_path() -> Path:
    from firefly_core.paths import config_dir

    return config_dir() / "app-train-form.json"


def load_form_memory() -> dict[str, str]:
    """The training form's last values (the app remembers them between starts); {} if none or unreadable."""
    try:
        data = json.loads(form_memory_path().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in FORM_FIELDS and isinstance(v, str)}


def save_form_memory(values: dict[str, str]) -> None:
    from firefly_core.atomic import write_json

    write_json(form_memory_path(), {k: v for k, v in values.items() if k in FORM_FIELDS and isinstance(v, str)})


def run_models(run_dir: Path) -> list[tuple[str, Path]]:
    """What a run can be chatted with, newest first: ("final", final/) then ("step N", checkpoint model)."""
    run_dir = Path(run_dir)
    out: list[tuple[str, Path]] = []
    final = run_dir / "final"
    if final.is_dir():
        out.append(("final", final))
    try:
        from firefly_core.training.checkpoint import list_checkpoints
    except ImportError:
        return out
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            step = int(ckpt.name.split("-")[-1])
        except ValueError:
            continue
        out.append((f"step {step}", ckpt))
    return out


def checkpoint_model(run_dir: Path, checkpoint: Path) -> Path:
    """A model folder to chat with from one checkpoint of a run (made once, then reused)."""
    quiet_progress_bars()
    from firefly_core.training.checkpoint_model import checkpoint_model as _make

    return _make(Path(run_dir), Path(checkpoint))


def chat_for_model(store, model_path: str):
    """The chat made earlier for this model folder (newest), so "chat with this run" reuses it."""
    wanted = str(model_path)
    for conv in store.list_conversations():
        if str((conv.settings or {}).get("model") or "") == wanted:
            return conv
    return None


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


