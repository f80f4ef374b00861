"""A conversation with a loaded model: history, truncation at turn boundaries, KV-prefix reuse.

Each turn renders the whole history with the model's prompt format (`formats.fit_history` drops the
oldest whole turns so the prompt plus `max_new_tokens` fits the context window), then generates with
a `PrefixCache` kept across turns: the keys/values of the longest prefix the new prompt shares with
what the cache holds are reused, so only the new message (and the tail of the last reply) is
prefilled. If truncation drops a turn, the shared prefix shrinks to the system prompt and the turn is
re-prefilled; the result is still exact.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

from .errors import ConfigError
from .formats import Message, fit_history

Event = Any  # TextDelta | ReplyDone (kept loose so importing this module stays light)


class ChatSession:
    """A multi-turn chat; `send` streams `TextDelta`s then a `ReplyDone`."""

    def __init__(
        self,
        lm: Any,
        *,
        system: str | None = None,
        config: Any | None = None,
        messages: list[Message] | None = None,
    ) -> None:
        from .generation import GenerationConfig

        self.lm = lm
        self.system = system
        self.config = config or GenerationConfig()
        self.messages: list[Message] = list(messages or [])  # without the system prompt
        self._prefix = None  # generation.PrefixCache, made on first use
        self.last_stats = None  # ReplyStats of the latest reply

    # -- public API -------------------------------------------------------------------------

    def send(self, text: str, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Add the user's message and stream the reply (kept in `messages`, even if cancelled)."""

        def change() -> None:
            if self.messages and self.messages[-1].role == "user":
                raise ConfigError("the last message has no reply yet", "use regenerate() to answer it")
            self.messages.append(Message("user", text))

        return self._reply(change, cancel)

    def regenerate(self, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Drop the last reply and answer the last user message again."""

        def change() -> None:
            if self.messages and self.messages[-1].role == "assistant":
                self.messages.pop()
            if not self.messages:
                raise ConfigError("there is no message to reply to")

        return self._reply(change, cancel)

    def edit_last_user(self, text: str, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Replace the last user message (dropping its reply) and answer it."""

        def change() -> None:
            if self.messages and self.messages[-1].role == "assistant":
                self.messages.pop()
            if not self.messages:
                raise ConfigError("there is no user message to edit")
            self.messages[-1] = Message("user", text)

        return self._reply(change, cancel)

    def reset(self) -> None:
        """Forget the conversation (the system prompt and settings stay)."""
        self.messages.clear()
        if self._prefix is not None:
            self._prefix.clear()

    def warm(self) -> int:
        """Prefill the KV cache with the current history (e.g. a conversation loaded from disk), so
        the next `send` prefills only the new message. Returns how many tokens were already cached."""
        from .generation import prefill_prefix

        if not self.messages:
            return 0
        budget = self.lm.context_length - self.config.max_new_tokens
        full = ([Message("system", self.system)] if self.system else []) + self.messages
        if full[-1].role == "assistant":
            probe = full + [Message("user", "")]  # fit as if a new message followed
            kept = fit_history(self.lm.prompt_format, self.lm.tokenizer, probe, budget)[0][:-1]
        else:
            kept = fit_history(self.lm.prompt_format, self.lm.tokenizer, full, budget)[0]
        ids = self.lm.prompt_format.render(self.lm.tokenizer, kept, add_generation_prompt=False).ids
        return prefill_prefix(self.lm, self._prefix_cache(), ids)

    def prompt_ids(self) -> tuple[list[Message], list[int]]:
        """The messages kept after truncation and the prompt ids for the next reply."""
        budget = self.lm.context_length - self.config.max_new_tokens
        if budget < 1:
            raise ConfigError(
                f"max_new_tokens ({self.config.max_new_tokens}) leaves no room in the "
                f"{self.lm.context_length}-token context window",
                "lower --max-new-tokens",
            )
        full = ([Message("system", self.system)] if self.system else []) + self.messages
        kept, rendered = fit_history(self.lm.prompt_format, self.lm.tokenizer, full, budget)
        return kept, rendered.ids

    # -- internals --------------------------------------------------------------------------

    def _prefix_cache(self):
        from .generation import decoder_for

        if self._prefix is None:
            self._prefix = decoder_for(self.lm).new_cache()
        return self._prefix

    def _reply(self, change: Callable[[], None], cancel: threading.Event | None) -> Iterator[Event]:
        """Apply `change` to the history when iteration starts, then stream the reply.

        If no text was produced (an error, or the consumer stopped first), the history is restored;
        otherwise the (possibly partial) reply is kept.
        """
        from .generation import ReplyDone, TextDelta, generate_stream

        before = list(self.messages)
        parts: list[str] = []
        finished = False
        try:
            change()
            _, ids = self.prompt_ids()
            for event in generate_stream(
                self.lm, ids, self.config, cancel, prefix_cache=self._prefix_cache()
            ):
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, ReplyDone):
                    self.messages.append(Message("assistant", event.text))
                    self.last_stats = event.stats
                    finished = True
                yield event
        finally:
            if not finished:
                if parts:  # stopped by the consumer or an error mid-reply: keep what was shown
                    self.messages.append(Message("assistant", "".join(parts)))
                else:
                    self.messages[:] = before
