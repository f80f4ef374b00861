"""What answers in a chat: a loaded model with its prompt format, system prompt, generation settings
and the KV cache it keeps between replies; and `open_session`, the one place those are resolved.

A chat has two owners. The history belongs to `conversation.Conversation` (the SQLite store is the
truth); the `ChatSession` here owns only what makes a reply: it is given the history each time and
keeps no copy of it, so the two can never disagree. What it keeps between replies is its
decoder's cache (which knows its token ids): the keys/values of the longest prefix the new prompt shares with the last one are
reused, so only the new message (and the tail of the last reply) is prefilled.

Each reply renders the history with the model's prompt format (`formats.fit_history` drops the
oldest whole turns so the prompt plus `max_new_tokens` fits the context window). If truncation drops
a turn, the shared prefix shrinks to the system prompt and the turn is re-prefilled; the result is
still exact.

`open_session(model, chat_settings)` is how every front end (the app, `firefly chat`, `firefly
serve`) gets a session: the model comes from the model service (loaded once, shared), the prompt
format is the chat's choice or the model's own, the system prompt the chat's or the one saved for the
model (`firefly use M --system …`), and the generation settings come from the one resolution in
`models.generation_layers`. Importing this module is light (no torch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Protocol

from .errors import ConfigError
from .formats import Message, fit_history

Event = Any  # generation.TextDelta | generation.ReplyDone (kept loose so importing stays light)

# The chat settings that are not generation settings (the rest go to the generation resolution).
SESSION_KEYS = ("model", "prompt_format", "system")


@dataclasses.dataclass(frozen=True)
class PromptMeasure:
    """The token meter: the next prompt's size against the context window, and what is dropped."""

    tokens: int  # the prompt as the model will get it (system prompt, kept turns, the new message)
    context_length: int  # the model's context window
    max_new_tokens: int  # kept free for the reply
    dropped_turns: int  # oldest (user, reply) turns left out so the prompt fits
    fits: bool  # False: even the newest message alone is too long (the reply would be refused)


class ChatSession:
    """A model ready to answer with fixed settings, and the KV cache kept between its replies.

    `reply(history)` streams `TextDelta`s then a `ReplyDone` for a history ending with the user's
    message; the history is the caller's (a `Conversation`), never stored here.
    """

    def __init__(
        self,
        lm: Any,
        *,
        system: str | None = None,
        config: Any | None = None,
        model_id: str | None = None,
    ) -> None:
        from .generation.config import GenerationConfig

        self.lm = lm
        self.system = system or None
        self.config = config or GenerationConfig()
        self.model_id = model_id or getattr(lm, "name", None)  # as the user named it (settings are keyed by it)
        self._prefix = None  # the decoder's cache (it knows its ids), made on first use

    # -- replies ----------------------------------------------------------------------------
    def reply(self, history: Sequence[Message], cancel: threading.Event | None = None) -> Iterator[Event]:
        """Stream the reply to `history` (user/assistant turns ending with the user's message),
        one generation at a time per model (the model's generation lock is held while it streams)."""
        from .generation import generate_stream

        if not history or history[-1].role != "user":
            raise ConfigError("there is no message to answer", "send a message first")
        _, ids = self.prompt_ids(history)
        lock = getattr(self.lm, "generation_lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            yield from generate_stream(self.lm, ids, self.config, cancel, prefix_cache=self._prefix_cache())

    def prompt_ids(self, history: Sequence[Message]) -> tuple[list[Message], list[int]]:
        """The messages kept after truncation (system prompt first) and the prompt ids for a reply."""
        kept, rendered = fit_history(self.lm.prompt_format, self.lm.tokenizer, self._with_system(history), self._budget())
        return kept, rendered.ids

    def measure(self, history: Sequence[Message], draft: str = "") -> PromptMeasure:
        """What the next prompt will cost: `history` (answered turns) plus `draft` as the next user
        message, rendered exactly as `reply` renders it (`prompt_ids`, the one rendering), counted
        with the model's tokenizer against its context window; and how many of the oldest turns
        `fit_history` drops to make it fit. Never raises for a prompt that is too long: it says so
        (`fits=False`, `tokens` = the whole prompt's length)."""
        from .errors import PromptTooLongError

        full = [*history, Message("user", draft)]
        try:
            kept, ids = self.prompt_ids(full)
        except PromptTooLongError:
            ids = self.lm.prompt_format.render(self.lm.tokenizer, self._with_system(full), add_generation_prompt=True).ids
            return PromptMeasure(len(ids), self.lm.context_length, self.config.max_new_tokens, len(history) // 2, False)
        sent = len(kept) - (1 if self.system else 0)
        return PromptMeasure(len(ids), self.lm.context_length, self.config.max_new_tokens, (len(full) - sent) // 2, True)

    def count_tokens(self, text: str) -> int:
        """Tokens `text` adds as plain text (an attachment's chip shows it)."""
        return len(self.lm.tokenizer.encode(text, add_special_tokens=False))

    def _budget(self) -> int:
        budget = self.lm.context_length - self.config.max_new_tokens
        if budget < 1:
            raise ConfigError(
                f"max_new_tokens ({self.config.max_new_tokens}) leaves no room in the "
                f"{self.lm.context_length}-token context window",
                "lower the maximum of new tokens in the chat's settings",
            )
        return budget

    def warm(self, history: Sequence[Message]) -> int:
        """Prefill the KV cache with `history` (e.g. a conversation loaded from disk), so the next
        reply prefills only the new message. Returns how many tokens were already cached."""
        from .generation import prefill_prefix

        if not history:
            return 0
        budget = self.lm.context_length - self.config.max_new_tokens
        full = self._with_system(history)
        if full[-1].role == "assistant":
            probe = full + [Message("user", "")]  # fit as if a new message followed
            kept = fit_history(self.lm.prompt_format, self.lm.tokenizer, probe, budget)[0][:-1]
        else:
            kept = fit_history(self.lm.prompt_format, self.lm.tokenizer, full, budget)[0]
        ids = self.lm.prompt_format.render(self.lm.tokenizer, kept, add_generation_prompt=False).ids
        return prefill_prefix(self.lm, self._prefix_cache(), ids)

    def reset(self) -> None:
        """Forget the cached prompt (a new conversation starts from nothing)."""
        if self._prefix is not None:
            self._prefix.clear()

    def settings_used(self) -> dict[str, Any]:
        """What a reply is made with: model, prompt format, system prompt, every generation key
        (kept with each stored reply and exported with the chat)."""
        from .generation.config import GENERATION_KEYS

        return {
            "model": self.model_id,
            "prompt_format": getattr(getattr(self.lm, "prompt_format", None), "name", None),
            "system": self.system,
            "generation": {k: getattr(self.config, k) for k in (*GENERATION_KEYS, "do_sample", "seed")},
        }

    # -- internals --------------------------------------------------------------------------
    def _with_system(self, history: Sequence[Message]) -> list[Message]:
        return ([Message("system", self.system)] if self.system else []) + list(history)

    def _prefix_cache(self):
        from .generation import decoder_for

        if self._prefix is None:
            self._prefix = decoder_for(self.lm).new_cache()
        return self._prefix


# -- opening a session ----------------------------------------------------------------------------
class SessionProvider(Protocol):
    """What a front end is given to open chats with: `open_session`, or a test's scripted one.
    The session it returns needs `reply(history, cancel)`, `settings_used()`, `system`, `config`."""

    def __call__(
        self, model: str, chat: Mapping[str, Any] | None = None, *, lm: Any = None,
        status: Callable[[Any], None] | None = None, cancel: threading.Event | None = None,
    ) -> ChatSession: ...


def system_prompt_for(model: str | None, chat: Mapping[str, Any] | None = None, saved: Any = None) -> str | None:
    """The system prompt a chat with `model` uses: the chat's own when it has one (an empty one
    means "none"), else the one saved for the model (`firefly use M --system …`; `saved`: the
    model's saved settings when the caller already read them)."""
    chat = chat or {}
    if isinstance(chat.get("system"), str):
        return chat["system"] or None
    if not model:
        return None
    if saved is None:
        from .models.user_settings import load_settings

        saved = load_settings().for_model(model)
    return saved.system or None


def with_prompt_format(lm: Any, name: str | None) -> Any:
    """The same loaded model with another prompt format (weights, decoder and generation lock
    shared: `dataclasses.replace` copies them; nothing is reloaded)."""
    from .formats import get_format

    if not name or name == getattr(lm.prompt_format, "name", None):
        return lm
    return dataclasses.replace(lm, prompt_format=get_format(name))


def generation_config(model: str, chat: Mapping[str, Any] | None = None, *, lm: Any = None,
                      overrides: Mapping[str, Any] | None = None, saved: Any = None):
    """The GenerationConfig of a chat with `model`: core's one resolution (the model's own file when
    `lm` is loaded, the catalog, the saved per-model settings, the chat's, then `overrides`).
    `saved`: the model's saved settings when the caller already read them. Raises the ConfigError
    that names a bad value."""
    from .models.generation_layers import resolve_generation_config

    return resolve_generation_config(
        model,
        model_defaults=getattr(lm, "generation_defaults", None),
        chat={k: v for k, v in (chat or {}).items() if k not in SESSION_KEYS},
        overrides=overrides,
        saved=saved.generation_overrides() if saved is not None else None,
    )


def generation_defaults(model: str | None, lm: Any = None) -> dict[str, Any]:
    """What each generation key is when a chat sets nothing (a dialog shows it as "default")."""
    from .generation.config import GENERATION_KEYS

    cfg = generation_config(model or getattr(lm, "name", "") or "", None, lm=lm)
    return {k: getattr(cfg, k) for k in GENERATION_KEYS}


def check_chat_settings(model: str | None, chat: Mapping[str, Any], lm: Any = None) -> None:
    """Raise the ConfigError a session with these chat settings would raise (a dialog shows it)."""
    from .formats import get_format

    if chat.get("prompt_format"):
        get_format(chat["prompt_format"])
    config = generation_config(model or getattr(lm, "name", "") or "", chat, lm=lm)
    if lm is not None:
        check_against_model(config, lm)


def check_against_model(config: Any, lm: Any) -> None:
    """Values in range for any model that this one cannot honour: a reply length that leaves no
    room in its context window, a top-k beyond its vocabulary. Said when the settings are saved,
    not when the next message fails; the hint names no command-line flag (the app shows it)."""
    window = getattr(lm, "context_length", None)
    if window and config.max_new_tokens >= window:
        raise ConfigError(
            f"max new tokens ({config.max_new_tokens}) must be below the model's context window ({window} tokens): "
            "the prompt needs room too",
            f"use at most {max(1, window // 2)} or so",
        )
    vocab = len(lm.tokenizer) if hasattr(lm.tokenizer, "__len__") else None
    if vocab and config.top_k and config.top_k > vocab:
        raise ConfigError(
            f"top k ({config.top_k}) is more than the model's vocabulary ({vocab} tokens)",
            f"use 0 (off) or at most {vocab}",
        )


def open_session(
    model: str,
    chat: Mapping[str, Any] | None = None,
    *,
    lm: Any = None,
    overrides: Mapping[str, Any] | None = None,
    load: Mapping[str, Any] | None = None,
    status: Callable[[Any], None] | None = None,
    cancel: threading.Event | None = None,
) -> ChatSession:
    """A ChatSession for `model` (an id or folder, as the user named it) with a chat's settings.

    `chat`: the chat's own settings (prompt_format, system, generation keys; "model" is ignored:
    `model` says what answers). `overrides`: generation settings that win over every saved layer
    (command-line flags, an API request). `load`: model-service options (device, dtype, engine, …)
    over the saved per-model ones. `lm`: an already loaded model to use instead (the app's active
    one). `status` gets each loading step (`models.service.LoadStatus`: `.step`, `.message`).
    Blocking: call from a worker.
    """
    if not model:
        raise ConfigError("no model is chosen for this chat", "choose a model first")
    from .models.user_settings import load_settings

    chat = dict(chat or {})
    saved = load_settings().for_model(str(model))  # read once: every layer below sees the same file
    if lm is None:
        from .models.service import model_service

        generation_config(model, chat, overrides=overrides, saved=saved)  # a bad value fails before a long load
        service = model_service()
        request = service.request_for(str(model), **dict(load or {}))
        lm = service.get(request, status=status, cancel=cancel)
    lm = with_prompt_format(lm, chat.get("prompt_format"))
    config = generation_config(model, chat, lm=lm, overrides=overrides, saved=saved)
    system = system_prompt_for(model, chat, saved)
    return ChatSession(lm, system=system, config=config, model_id=str(model))
