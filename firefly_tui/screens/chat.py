"""The chat screen: conversations in a sidebar, the message log, the composer and a status line.

Replies come from `ChatSession` (through `backend`) in a thread worker that posts each text delta
to this screen as a Textual message; the event loop only appends text, so typing and scrolling
stay responsive. Esc sets the worker's `threading.Event`; the session stops between tokens and
the partial reply is kept (and saved, marked as stopped).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Header, Input, Label, ListItem, ListView, Static

from .. import backend
from ..i18n import STRINGS, t
from ..widgets.chat_view import ChatLog, MessageView
from ..widgets.footer import QuickFooter as Footer
from ..widgets.localized import localize_bindings
from .dialogs import ChatSettingsDialog, ConfirmDialog, PromptDialog


UI_HZ = 15  # reply redraws per second while streaming


class ConversationItem(ListItem):
    def __init__(self, conversation_id: int, title: str) -> None:
        super().__init__(Label(title))
        self.conversation_id = conversation_id
        self.title_text = title


class ChatScreen(Screen):
    AUTO_FOCUS = "#composer"
    BINDINGS = [
        Binding("escape", "stop", "chat.stop"),
        Binding("ctrl+n", "new_chat", "chat.new"),
        Binding("ctrl+g", "regenerate", "chat.regenerate"),
        Binding("ctrl+e", "edit_last", "chat.edit_last", priority=True),
        Binding("ctrl+y", "copy_last", "chat.copy"),
        Binding("ctrl+s", "export('md')", "chat.export"),
        Binding("ctrl+o", "chat_settings", "chat.settings"),
        Binding("ctrl+r", "rename", "chat.rename_key"),
        Binding("ctrl+d", "delete", "chat.delete_key", priority=True),
        Binding("ctrl+f", "search", "chat.search_key"),
    ]

    # -- messages from the reply worker (posted from its thread) ------------------------------
    class ReplyDelta(Message):
        def __init__(self, conversation_id: int, text: str) -> None:
            super().__init__()
            self.conversation_id, self.text = conversation_id, text

    class ReplyFinished(Message):
        def __init__(self, conversation_id: int, text: str, stats: dict, cancelled: bool) -> None:
            super().__init__()
            self.conversation_id, self.text, self.stats, self.cancelled = conversation_id, text, stats, cancelled

    class ReplyFailed(Message):
        def __init__(self, conversation_id: int, error: str) -> None:
            super().__init__()
            self.conversation_id, self.error = conversation_id, error

    class Status(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self) -> None:
        super().__init__(id="chat")
        localize_bindings(self)
        self.conversation_id: int | None = None
        self.session = None  # ChatSession for the open conversation (keeps its KV cache)
        self.session_key: tuple | None = None
        self.generating = False
        self.cancel_event: threading.Event | None = None
        self.streaming_view: MessageView | None = None
        self.editing = False
        self.last_stats: dict[str, Any] = {}
        self.search_text = ""

    @property
    def store(self):
        return self.app.store

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with Vertical(id="sidebar"):
                yield Input(self.search_text, placeholder=t("chat.search"), id="search")
                yield Button(t("chat.new"), id="new-chat", variant="primary")
                yield ListView(id="conversations")
            with Vertical(id="main"):
                yield ChatLog(id="log")
                yield Static("", id="status")
                yield Input(
                    placeholder=t("chat.editing") if self.editing else t("chat.placeholder"),
                    id="composer",
                )
        yield Footer()

    async def on_mount(self) -> None:
        self.app.track_screen(self)
        self.title = t("app.title")
        self.sub_title = t("nav.chat")
        await self.refresh_conversations()
        if self.conversation_id is None:
            items = self.query_one("#conversations", ListView).children
            if items:
                await self.open_conversation(items[0].conversation_id)
        else:
            await self.open_conversation(self.conversation_id)
        self.update_status()

    async def relabel(self) -> None:
        """Language switched: rebuild the widgets from this screen's state."""
        localize_bindings(self)
        await self.recompose()
        await self.on_mount()

    # -- sidebar ------------------------------------------------------------------------------
    async def refresh_conversations(self) -> None:
        lv = self.query_one("#conversations", ListView)
        await lv.clear()
        convs = self.store.list_conversations(self.search_text or None)
        await lv.extend(ConversationItem(c.id, c.title) for c in convs)
        for i, item in enumerate(lv.children):
            if item.conversation_id == self.conversation_id:
                lv.index = i

    @on(Input.Changed, "#search")
    async def _search(self, event: Input.Changed) -> None:
        self.search_text = event.value
        await self.refresh_conversations()

    @on(ListView.Selected, "#conversations")
    async def _picked(self, event: ListView.Selected) -> None:
        if isinstance(event.item, ConversationItem) and event.item.conversation_id != self.conversation_id:
            await self.open_conversation(event.item.conversation_id)

    @on(Button.Pressed, "#new-chat")
    async def _new_pressed(self) -> None:
        await self.action_new_chat()

    async def open_conversation(self, conversation_id: int | None) -> None:
        if self.generating:
            self.notify(t("chat.busy"), severity="warning")
            return
        self.conversation_id = conversation_id
        self.session = None
        self.session_key = None
        if self.editing:
            self.editing = False
            composer = self.query_one("#composer", Input)
            composer.placeholder = t("chat.placeholder")
            composer.remove_class("editing")
        log = self.query_one("#log", ChatLog)
        await log.remove_children()
        if conversation_id is not None:
            views = [
                MessageView(m.role, m.content, partial=m.partial, message_id=m.id)
                for m in self.store.messages(conversation_id)
            ]
            await log.mount_all(views)
            log.scroll_end(animate=False)
            conv = self.store.get_conversation(conversation_id)
            self.sub_title = conv.title if conv else t("nav.chat")
        self.update_status()

    async def action_new_chat(self) -> None:
        if self.generating:
            self.notify(t("chat.busy"), severity="warning")
            return
        conv = self.store.create_conversation(t("chat.untitled"), self._default_settings())
        self.search_text = ""
        self.query_one("#search", Input).value = ""
        await self.open_conversation(conv.id)
        await self.refresh_conversations()
        self.query_one("#composer", Input).focus()

    def _default_settings(self) -> dict[str, Any]:
        return {}

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_rename(self) -> None:
        conv = self.conversation_id and self.store.get_conversation(self.conversation_id)
        if not conv:
            return

        async def done(title: str | None) -> None:
            if title:
                self.store.rename_conversation(conv.id, title)
                self.sub_title = title
                await self.refresh_conversations()

        self.app.push_screen(PromptDialog(t("chat.rename"), conv.title), done)

    def action_delete(self) -> None:
        conv = self.conversation_id and self.store.get_conversation(self.conversation_id)
        if not conv or self.generating:
            return

        async def done(yes: bool | None) -> None:
            if yes:
                self.store.delete_conversation(conv.id)
                await self.open_conversation(None)
                await self.refresh_conversations()
                items = self.query_one("#conversations", ListView).children
                if items:
                    await self.open_conversation(items[0].conversation_id)

        self.app.push_screen(ConfirmDialog(t("chat.delete_q", title=conv.title)), done)

    # -- settings, export, copy ---------------------------------------------------------------
    def chat_settings(self) -> dict[str, Any]:
        if self.conversation_id is None:
            return {}
        conv = self.store.get_conversation(self.conversation_id)
        return dict(conv.settings) if conv else {}

    async def action_chat_settings(self) -> None:
        if self.conversation_id is None:
            await self.action_new_chat()

        def done(settings: dict | None) -> None:
            if settings is not None and self.conversation_id is not None:
                self.store.update_settings(self.conversation_id, settings)
                self.session = None  # rebuilt with the new settings on the next message

        self.app.push_screen(ChatSettingsDialog(self.chat_settings()), done)

    def action_export(self, fmt: str = "md") -> None:
        if self.conversation_id is None:
            return
        conv = self.store.get_conversation(self.conversation_id)
        from firefly_core.paths import data_dir

        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in conv.title)[:40] or "chat"
        default = data_dir() / "exports" / f"{conv.id}-{safe}.{fmt}"

        def done(path: str | None) -> None:
            if path:
                self.export_to(Path(path).expanduser(), fmt)

        self.app.push_screen(PromptDialog(t("export.path"), str(default)), done)

    def export_to(self, path: Path, fmt: str) -> Path:
        from firefly_core.atomic import write_text

        if fmt == "json" or path.suffix == ".json":
            text = json.dumps(self.store.export_json(self.conversation_id), ensure_ascii=False, indent=2) + "\n"
        else:
            labels = {
                "user": t("chat.user"),
                "assistant": t("chat.assistant"),
                "system": t("chat.system"),
                "partial": t("chat.stopped"),
            }
            text = self.store.export_markdown(self.conversation_id, labels=labels)
        write_text(path, text)
        self.notify(t("chat.exported", path=str(path)))
        return path

    def action_copy_last(self) -> None:
        views = self.query_one("#log", ChatLog).messages()
        focused = self.app.focused
        target = focused if isinstance(focused, MessageView) else next(
            (v for v in reversed(views) if v.role == "assistant"), None
        )
        if target is not None:
            target.action_copy()

    # -- sending ------------------------------------------------------------------------------
    @on(Input.Submitted, "#composer")
    async def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.generating:
            self.notify(t("chat.busy"), severity="warning")
            return
        if not self._model_available():
            self.notify(t("chat.no_model"), severity="warning", timeout=6)
            return
        event.input.value = ""
        if self.editing:
            await self._edit_and_resend(text)
        else:
            await self.send(text)

    def _model_available(self) -> bool:
        return self.app.lm is not None or bool(self.chat_settings().get("model"))

    async def send(self, text: str) -> None:
        """Save the user message, show it, and stream the reply."""
        if self.conversation_id is None:
            await self.action_new_chat()
        cid = self.conversation_id
        history = [(m.role, m.content) for m in self.store.messages(cid)]
        conv = self.store.get_conversation(cid)
        if not history and conv.title in STRINGS["chat.untitled"]:
            title = text.replace("\n", " ")[:24]
            self.store.rename_conversation(cid, title)
            self.sub_title = title
        saved = self.store.add_message(cid, "user", text)
        log = self.query_one("#log", ChatLog)
        await log.mount(MessageView("user", text, message_id=saved.id))
        await self.refresh_conversations()
        await self._start_reply("send", text, history)

    async def _start_reply(self, kind: str, text: str, history: list[tuple[str, str]]) -> None:
        log = self.query_one("#log", ChatLog)
        self.streaming_view = MessageView("assistant", "")
        self.streaming_view.add_class("streaming")
        await log.mount(self.streaming_view)
        log.scroll_end(animate=False)
        self.generating = True
        self.cancel_event = threading.Event()
        self.update_status(t("status.generating"))
        self._reply_worker(kind, text, self.conversation_id, history, self.chat_settings(), self.cancel_event)

    def action_stop(self) -> None:
        if self.generating and self.cancel_event is not None:
            self.cancel_event.set()

    async def action_regenerate(self) -> None:
        if self.generating:
            self.notify(t("chat.busy"), severity="warning")
            return
        msgs = self.store.messages(self.conversation_id) if self.conversation_id else []
        if not msgs or msgs[-1].role != "assistant" or not self._model_available():
            self.notify(t("chat.nothing_to_regen"), severity="warning")
            return
        history = [(m.role, m.content) for m in msgs]
        self.store.delete_message(msgs[-1].id)
        views = self.query_one("#log", ChatLog).messages()
        if views and views[-1].role == "assistant":
            await views[-1].remove()
        await self._start_reply("regenerate", "", history)

    def action_edit_last(self) -> None:
        if self.generating:
            self.notify(t("chat.busy"), severity="warning")
            return
        msgs = self.store.messages(self.conversation_id) if self.conversation_id else []
        last_user = next((m for m in reversed(msgs) if m.role == "user"), None)
        if last_user is None:
            self.notify(t("chat.nothing_to_edit"), severity="warning")
            return
        composer = self.query_one("#composer", Input)
        composer.value = last_user.content
        composer.placeholder = t("chat.editing")
        composer.add_class("editing")
        composer.focus()
        self.editing = True

    async def _edit_and_resend(self, text: str) -> None:
        self.editing = False
        composer = self.query_one("#composer", Input)
        composer.placeholder = t("chat.placeholder")
        composer.remove_class("editing")
        cid = self.conversation_id
        msgs = self.store.messages(cid)
        idx = max(i for i, m in enumerate(msgs) if m.role == "user")
        history = [(m.role, m.content) for m in msgs]
        self.store.delete_messages_from(cid, msgs[idx].id)
        saved = self.store.add_message(cid, "user", text)
        log = self.query_one("#log", ChatLog)
        for view in log.messages()[idx:]:
            await view.remove()
        await log.mount(MessageView("user", text, message_id=saved.id))
        await self._start_reply("edit", text, history)

    # -- the worker ---------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="reply")
    def _reply_worker(
        self,
        kind: str,
        text: str,
        conversation_id: int,
        history: list[tuple[str, str]],
        settings: dict[str, Any],
        cancel: threading.Event,
    ) -> None:
        try:
            session = self._session_for(conversation_id, history, settings)
            if kind == "send":
                events = session.send(text, cancel)
            elif kind == "regenerate":
                events = session.regenerate(cancel)
            else:
                events = session.edit_last_user(text, cancel)
            # Deltas are batched to at most ~UI_HZ updates a second: re-rendering Markdown per
            # token would take the GIL from the decode loop and slow generation down.
            pending, last = [], 0.0
            for ev in events:
                if backend.is_done(ev):
                    if pending:
                        self.post_message(self.ReplyDelta(conversation_id, "".join(pending)))
                    self.post_message(
                        self.ReplyFinished(conversation_id, ev.text, backend.stats_dict(ev.stats), ev.cancelled)
                    )
                    return
                pending.append(ev.text)
                now = time.monotonic()
                if now - last >= 1 / UI_HZ:
                    self.post_message(self.ReplyDelta(conversation_id, "".join(pending)))
                    pending, last = [], now
            # The stream ended without ReplyDone: treat what we have as stopped.
            self.post_message(self.ReplyFailed(conversation_id, "the reply stream ended early"))
        except BaseException as e:  # shown to the user, never a crash of the UI
            self.session = None
            self.post_message(self.ReplyFailed(conversation_id, backend.format_error(e)))

    def _session_for(self, conversation_id: int, history: list[tuple[str, str]], settings: dict[str, Any]):
        """The ChatSession to use (runs in the worker thread: it may load a model)."""
        app = self.app
        wanted = settings.get("model")
        if wanted and wanted != app.model_name:
            self.post_message(self.Status(t("chat.loading_model", name=wanted)))
            app.set_model(backend.load_model(wanted, settings=app.settings), wanted, persist=False)
        # The model's saved defaults (CLI / settings file) first, then this chat's own choices.
        settings = {**backend.model_settings(app.settings, app.model_name), **settings}
        lm = backend.with_prompt_format(app.lm, settings.get("prompt_format"))
        key = (conversation_id, id(app.lm), json.dumps(settings, sort_keys=True))
        if (
            self.session is not None
            and self.session_key == key
            and [(m.role, m.content) for m in self.session.messages] == [h for h in history if h[0] != "system"]
        ):
            return self.session  # same history: the session reuses its KV cache
        self.session = backend.new_session(lm, history, settings)
        self.session_key = key
        return self.session

    # -- worker messages (UI thread) ----------------------------------------------------------
    async def on_chat_screen_reply_delta(self, message: ReplyDelta) -> None:
        if message.conversation_id == self.conversation_id and self.streaming_view is not None:
            await self.streaming_view.append(message.text)

    async def on_chat_screen_reply_finished(self, message: ReplyFinished) -> None:
        meta = {k: message.stats[k] for k in ("tokens_per_s", "ttft_s", "new_tokens", "context_used", "context_length", "stop_reason") if k in message.stats}
        self.store.add_message(
            message.conversation_id, "assistant", message.text, partial=message.cancelled, meta=meta
        )
        self.last_stats = message.stats
        await self._end_reply(message.conversation_id, message.text, message.cancelled, None)

    async def on_chat_screen_reply_failed(self, message: ReplyFailed) -> None:
        view = self.streaming_view
        text = view.content if view is not None else ""
        if text:  # keep what was shown, marked as partial
            self.store.add_message(message.conversation_id, "assistant", text, partial=True)
        await self._end_reply(message.conversation_id, text, True, message.error)
        self.notify(message.error, title=t("error"), severity="error", timeout=10)

    async def _end_reply(self, conversation_id: int, text: str, partial: bool, error: str | None) -> None:
        view = self.streaming_view
        self.update_status()
        if view is not None and conversation_id == self.conversation_id:
            view.remove_class("streaming")
            await view.finish(text, partial=partial, error=error)
        # Last: a new message may be sent from here on.
        self.streaming_view = None
        self.cancel_event = None
        self.generating = False

    def on_chat_screen_status(self, message: Status) -> None:
        self.update_status(message.text)

    # -- status line --------------------------------------------------------------------------
    def update_status(self, extra: str | None = None) -> None:
        app = self.app
        parts = [t("status.model", name=app.model_name) if app.lm is not None else t("status.no_model")]
        s = self.last_stats
        if s:
            parts.append(
                t(
                    "status.stats",
                    tps=s.get("tokens_per_s", 0.0),
                    ttft=1000 * s.get("ttft_s", 0.0),
                    used=s.get("context_used", 0),
                    total=s.get("context_length", 0),
                )
            )
        if extra:
            parts.append(extra)
        try:
            self.query_one("#status", Static).update(" · ".join(parts))
        except Exception:
            pass  # not composed yet
