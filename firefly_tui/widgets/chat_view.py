"""The message log of one chat: one Markdown block per message, a reply that grows as it streams.

The log is one stop in the Tab order, not one per message (a long chat would otherwise take dozens
of Tabs to cross). Inside it, Up/Down select a message, Enter opens that message's actions (copy,
retry from here, edit and resend, delete), Delete deletes it, Ctrl+Y copies it; a click selects.
The log never takes typed characters: the screen sends them to the composer.

Streaming goes through Textual's MarkdownStream, which merges fragments when they come faster
than the screen redraws, so a fast model never backs up the event loop.
"""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Label, Markdown, Static

from ..i18n import t
from .localized import localize_bindings


class MessageView(Vertical):
    """One message: a role line (marks for stopped, failed and empty replies) and Markdown."""

    def __init__(
        self,
        role: str,
        content: str = "",
        *,
        partial: bool = False,
        message_id: int | None = None,
        error: str | None = None,
        stop_reason: str | None = None,
        streaming: bool = False,
        attachments: list[str] | None = None,
    ) -> None:
        super().__init__(classes=f"message {role}")
        self.attachments = list(attachments or [])  # names of the files sent with this message
        self.role = role
        self.content = content
        self.partial = partial
        self.message_id = message_id
        self.error = error
        self.stop_reason = stop_reason
        self.streaming = streaming
        self._stream = None

    def compose(self):
        yield Label(self._header(), classes="role")
        if self.role == "assistant":
            yield Markdown(self.content, classes="body")
        else:  # the user's own text exactly as typed: every line kept, nothing read as Markdown
            yield Static(self.content, classes="body", markup=False)

    @property
    def empty_reply(self) -> bool:
        """A finished reply with no text: said so, so the user does not wait for more."""
        return self.role == "assistant" and not self.streaming and not self.content.strip() and self.error is None

    def _header(self) -> str:
        name = {"user": t("chat.user"), "assistant": t("chat.assistant")}.get(self.role, t("chat.system"))
        if self.attachments:
            name += " · " + " ".join(f"📎 {a}" for a in self.attachments)
        if self.error:
            return f"{name} · ⚠ {t('chat.error')}: {self.error}"
        if self.partial:
            return f"{name} · ⏹ {t('chat.stopped')}"
        if self.empty_reply:
            if self.stop_reason:
                return f"{name} · {t('chat.empty_reply', reason=self.stop_reason)}"
            return f"{name} · {t('chat.empty_reply_plain')}"
        return name

    def relabel(self) -> None:
        self.set_class(self.partial, "partial")
        self.set_class(self.error is not None, "failed")
        self.set_class(self.empty_reply, "empty")
        if self.is_mounted:
            self.query_one(".role", Label).update(self._header())

    def on_mount(self) -> None:
        self.relabel()

    @property
    def body(self) -> Markdown | Static:
        return self.query_one(".body")

    async def set_content(self, text: str) -> None:
        self.content = text
        if isinstance(self.body, Markdown):
            await self.body.update(text)
        else:
            self.body.update(text)
        self.relabel()

    async def append(self, text: str) -> None:
        """Add streamed text (call from the UI thread)."""
        self.content += text
        if self._stream is None:
            self._stream = Markdown.get_stream(self.body)
        await self._stream.write(text)

    async def finish(
        self, text: str, *, partial: bool, error: str | None = None, stop_reason: str | None = None,
        message_id: int | None = None,
    ) -> None:
        """The reply is complete (or stopped, or failed): show its exact final text and mark it."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.streaming = False
        self.remove_class("streaming")
        self.content = text
        self.partial = partial
        self.error = error
        self.stop_reason = stop_reason
        if message_id is not None:
            self.message_id = message_id
        await self.set_content(text)

    def on_click(self, event: events.Click) -> None:
        log = self.parent
        if isinstance(log, ChatLog):
            log.select(self)
            log.focus()


class DropMarker(Static):
    """Where the model's view of the chat begins: the messages above it are not sent (they no
    longer fit the context window with the next message). Placed by the token meter."""

    DEFAULT_CSS = """
    DropMarker {
        height: auto;
        margin: 1 0 0 0;
        color: $warning;
        text-align: center;
    }
    """


class SystemPromptView(Static):
    """The chat's system prompt, shown above the messages (hidden when there is none)."""

    DEFAULT_CSS = """
    SystemPromptView {
        height: auto;
        margin: 1 0 0 0;
        padding: 0 1;
        color: $text-muted;
        border-left: thick $accent;
        text-style: italic;
    }
    SystemPromptView.-hidden { display: none; }
    """

    def show_prompt(self, system: str | None) -> None:
        self.set_class(not system, "-hidden")
        self.update(f"{t('chat.system')}: {system}" if system else "")


class ChatLog(VerticalScroll, can_focus=True):
    """The scrolling list of messages; pinned to the bottom while a reply streams.

    Posts `ActionRequested(action, view)` for the selected message: "menu", "delete", "copy".
    """

    DEFAULT_CSS = """
    ChatLog MessageView.selected { background: $primary 20%; }
    ChatLog MessageView.empty .role { color: $warning; }
    ChatLog MessageView.-match { background: $warning 20%; }
    """

    BINDINGS = [
        Binding("up", "select(-1)", show=False),
        Binding("down", "select(1)", show=False),
        Binding("enter", "request('menu')", "chat.message_actions"),
        Binding("delete", "request('delete')", "chat.delete_message"),
    ]

    class LeaveDown(Message):
        """Down on the last message: the user is going back to the composer."""

    class ActionRequested(Message):
        def __init__(self, action: str, view: MessageView) -> None:
            super().__init__()
            self.action, self.view = action, view

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        localize_bindings(self)
        self.selected: MessageView | None = None

    def on_mount(self) -> None:
        self.anchor()

    def messages(self) -> list[MessageView]:
        return list(self.query(MessageView))

    def select(self, view: MessageView | None) -> None:
        if self.selected is not None and self.selected is not view:
            self.selected.remove_class("selected")
        self.selected = view
        if view is not None:
            view.add_class("selected")
            self.scroll_to_widget(view, animate=False)

    def show_match(self, text: str) -> MessageView | None:
        """Scroll to the first message containing `text` (case-insensitive) and highlight it (a
        search opened this chat); the highlight stays until the next search."""
        for view in self.query(MessageView):
            view.remove_class("-match")
        needle = text.strip().lower()
        if not needle:
            return None
        view = next((v for v in self.messages() if needle in v.content.lower()), None)
        if view is not None:
            view.add_class("-match")
            self.call_after_refresh(self.scroll_to_widget, view, animate=False, top=True)
        return view

    def action_select(self, step: int) -> None:
        views = self.messages()
        if not views:
            return
        if self.selected not in views:
            self.select(views[-1])
            return
        i = views.index(self.selected) + step
        if i >= len(views):  # Down past the last message: back to the composer below
            self.post_message(self.LeaveDown())
            return
        self.select(views[max(i, 0)])

    def action_request(self, action: str) -> None:
        if self.selected is not None and self.selected in self.messages():
            self.post_message(self.ActionRequested(action, self.selected))

    def on_focus(self) -> None:
        views = self.messages()
        if self.selected not in views:
            self.selected = None
        self.select(self.selected or (views[-1] if views else None))

    def on_blur(self) -> None:
        # The selection is kept (a dialog opened from it returns here) but shown only with focus.
        if self.selected is not None:
            self.selected.remove_class("selected")
