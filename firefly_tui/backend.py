"""The app's one door to firefly_core's heavy parts: models, chat, downloads, settings (a training run
is core's `training.run.Run`, used directly).

Every import of a heavy module (torch, transformers, huggingface_hub, and the firefly_core
modules that pull them in) happens inside a function, and these functions are called from thread
workers, so the app paints before any of it loads. When a core API changes, only this module
changes. Nothing here touches Textual.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable




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


def chat_for_model(store, model_path: str):
    """The chat made earlier for this model folder (newest), so "chat with this run" reuses it."""
    wanted = str(model_path)
    for conv in store.list_conversations():
        if str((conv.settings or {}).get("model") or "") == wanted:
            return conv
    return None


def format_error(e: BaseException) -> str:
    """A user-facing one-liner: our errors' message and hint; otherwise the type and text."""
    from firefly_core.errors import FireflyError

    if isinstance(e, FireflyError):
        return e.message + (f" — {e.hint}" if e.hint else "")
    return f"{type(e).__name__}: {e}"


