"""The conversation pane: one Markdown block per message, a reply that grows as it streams.

A `MessageView` is focusable (Tab or click) and `c` copies its text. Streaming goes through
Textual's MarkdownStream, which merges fragments when they come faster than the screen redraws,
so a fast model never backs up the event loop.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, Markdown

from ..i18n import t
from .localized import localize_bindings


class MessageView(Vertical, can_focus=True):
    """One message: a role line (with a 'stopped' mark for partial replies) and Markdown."""

    BINDINGS = [Binding("c", "copy", "chat.copy")]

    def __init__(
        self,
        role: str,
        content: str = "",
        *,
        partial: bool = False,
        message_id: int | None = None,
        error: str | None = None,
    ) -> None:
        super().__init__(classes=f"message {role}")
        localize_bindings(self)
        self.role = role
        self.content = content
        self.partial = partial
        self.message_id = message_id
        self.error = error
        self._stream = None

    def compose(self):
        yield Label(self._header(), classes="role")
        yield Markdown(self.content, classes="body")

    def _header(self) -> str:
        name = {"user": t("chat.user"), "assistant": t("chat.assistant")}.get(self.role, t("chat.system"))
        if self.error:
            return f"{name} · ⚠ {t('chat.error')}: {self.error}"
        if self.partial:
            return f"{name} · ⏹ {t('chat.stopped')}"
        return name

    @property
    def body(self) -> Markdown:
        return self.query_one(Markdown)

    async def append(self, text: str) -> None:
        """Add streamed text (call from the UI thread)."""
        self.content += text
        if self._stream is None:
            self._stream = Markdown.get_stream(self.body)
        await self._stream.write(text)

    async def finish(self, text: str, *, partial: bool, error: str | None = None) -> None:
        """The reply is complete (or stopped): show its exact final text and mark it."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.content = text
        self.partial = partial
        self.error = error
        self.set_class(partial, "partial")
        self.set_class(error is not None, "failed")
        await self.body.update(text)
        self.query_one(".role", Label).update(self._header())

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.content)
        self.app.notify(t("chat.copied"), timeout=2)


class ChatLog(VerticalScroll):
    """The scrolling list of messages; it stays pinned to the bottom while a reply streams."""

    def on_mount(self) -> None:
        self.anchor()

    def messages(self) -> list[MessageView]:
        return list(self.query(MessageView))
