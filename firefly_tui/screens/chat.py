"""The chat screen: the chat list (sidebar) beside the open chat (a `ChatConversation`).

The screen is thin: it switches chats, creates, renames, deletes and exports them, opens the
settings and message-action dialogs, and routes keys. Everything about one chat (its messages,
the reply being written, the composer) lives in `widgets/conversation.py`.

Focus follows the user: a printable key pressed while no text field has focus goes to the
composer (with its character), picking a chat moves focus to the composer, and the message log is
one Tab stop, not one per message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Header, Input, TextArea

from firefly_core.errors import format_error

from ..i18n import t
from ..model_loading import ModelLoaded, ModelStatus
from ..widgets.chat_sidebar import ChatSidebar
from ..widgets.chat_view import ChatLog, MessageView
from ..widgets.composer import Composer
from ..widgets.conversation import ChatConversation
from ..widgets.footer import QuickFooter as Footer
from ..widgets.localized import localize_bindings
from .chat_settings import ChatSettingsDialog
from .dialogs import ConfirmDialog, PromptDialog
from .message_actions import MessageActionsDialog


class ChatScreen(Screen):
    AUTO_FOCUS = "#composer"
    BINDINGS = [
        Binding("escape", "stop", "chat.stop"),
        Binding("ctrl+j", "noop", "chat.newline_key", key_display="^J"),
        Binding("ctrl+n", "new_chat", "chat.new"),
        Binding("ctrl+g", "regenerate", "chat.regenerate"),
        Binding("ctrl+e", "edit_last", "chat.edit_last", priority=True),
        Binding("ctrl+o", "chat_settings", "chat.settings"),
        Binding("ctrl+y", "copy", "chat.copy", priority=True),  # the composer would take it as "redo"
        Binding("ctrl+s", "export('md')", "chat.export"),
        # Listed in the keys panel and the README; the footer keeps its room for the ones above.
        Binding("ctrl+r", "rename", "chat.rename_key", show=False),
        Binding("ctrl+d", "delete", "chat.delete_key", priority=True, show=False),
        Binding("ctrl+f", "search", "chat.search_key", show=False),
        Binding("ctrl+a", "attach", "chat.attach_key", priority=True, show=False),  # over the composer's line start
    ]

    def __init__(self) -> None:
        super().__init__(id="chat")
        localize_bindings(self)
        self.conversation_id: int | None = None
        self.search_text = ""

    @property
    def store(self):
        return self.app.store

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            yield ChatSidebar(self.store, id="sidebar")
            yield ChatConversation(self.store, self.app.sessions, id="main")
        yield Footer()

    @property
    def sidebar(self) -> ChatSidebar:
        return self.query_one(ChatSidebar)

    @property
    def chat(self) -> ChatConversation:
        return self.query_one(ChatConversation)

    @property
    def generating(self) -> bool:
        return self.chat.generating

    @property
    def editing(self) -> bool:
        return self.chat.editing

    @property
    def last_stats(self) -> dict[str, Any]:
        return self.chat.last_stats

    @last_stats.setter
    def last_stats(self, stats: dict[str, Any]) -> None:
        self.chat.last_stats = stats

    @property
    def session(self):
        return self.chat.session

    @property
    def streaming_view(self) -> MessageView | None:
        return self.chat.streaming_view

    async def on_mount(self) -> None:
        self.app.track_screen(self)
        self.title = t("app.title")
        self.sub_title = t("nav.chat")
        self.sidebar.search_text = self.search_text
        await self.refresh_conversations()
        target = self.conversation_id
        if target is None:
            ids = self.sidebar.conversation_ids()
            target = ids[0] if ids else None
        await self.open_conversation(target)

    async def relabel(self) -> None:
        """Language switched: rebuild the widgets from this screen's state."""
        localize_bindings(self)
        self.search_text = self.sidebar.search_text
        await self.recompose()
        await self.on_mount()

    # -- focus follows the user ---------------------------------------------------------------
    def on_key(self, event: events.Key) -> None:
        """A printable key with no text field focused goes to the composer, character and all."""
        focused = self.focused
        if isinstance(focused, (Input, TextArea)) or not event.is_printable or not event.character:
            return
        if event.character == " " and focused is not None and not isinstance(focused, ChatLog):
            return  # space presses buttons and picks list items
        event.stop()
        event.prevent_default()
        composer = self.chat.composer
        composer.focus()
        composer.insert(event.character)

    # -- chats --------------------------------------------------------------------------------
    async def refresh_conversations(self) -> None:
        await self.sidebar.refresh_list(self.conversation_id)

    async def open_conversation(self, conversation_id: int | None, *, focus: bool = False) -> None:
        if self.chat.generating:
            self.notify(t("chat.busy"), severity="warning")
            return
        self.conversation_id = conversation_id
        await self.chat.open(conversation_id)
        conv = self.store.get_conversation(conversation_id) if conversation_id is not None else None
        self.sub_title = conv.title if conv else t("nav.chat")
        self.sidebar.current = conversation_id
        if focus:
            self.chat.composer.focus()

    @on(ChatSidebar.Picked)
    async def _picked(self, event: ChatSidebar.Picked) -> None:
        if event.conversation_id != self.conversation_id:
            await self.open_conversation(event.conversation_id)
        if self.sidebar.search_text and event.conversation_id == self.conversation_id:
            self.chat.log_view.show_match(self.sidebar.search_text)  # show what the search found
        if not self.chat.generating:
            self.chat.composer.focus()
            if "-narrow" in self.classes:
                self.remove_class("-sidebar-toggled")  # a picked chat takes the narrow screen

    @on(ChatSidebar.NewChat)
    async def _new_pressed(self) -> None:
        await self.action_new_chat()

    @on(ChatConversation.TitleChanged)
    async def _title_changed(self, event: ChatConversation.TitleChanged) -> None:
        conv = self.store.get_conversation(event.conversation_id) if event.conversation_id else None
        if conv is not None and event.conversation_id == self.conversation_id:
            self.sub_title = conv.title
        await self.refresh_conversations()

    async def action_new_chat(self) -> None:
        if self.chat.generating:
            self.notify(t("chat.busy"), severity="warning")
            return
        try:
            conv = self.store.create_conversation(t("chat.untitled"), {})
        except Exception as e:  # noqa: BLE001 - a read-only store: say so
            self.notify(format_error(e), title=t("error"), severity="error", timeout=12)
            return
        await self.sidebar.clear_search()
        await self.open_conversation(conv.id)
        await self.refresh_conversations()
        self.chat.composer.focus()

    def action_search(self) -> None:
        if "-narrow" in self.classes:
            self.add_class("-sidebar-toggled")  # the folded chat list opens to be searched
        self.sidebar.query_one("#search", Input).focus()

    def action_noop(self) -> None:
        """Ctrl+J outside the composer: nothing (the footer shows it as the new-line key)."""

    def action_rename(self) -> None:
        conv = self.conversation_id and self.store.get_conversation(self.conversation_id)
        if not conv:
            return

        async def done(title: str | None) -> None:
            if title:
                try:
                    self.store.rename_conversation(conv.id, title)
                except Exception as e:  # noqa: BLE001
                    self.notify(format_error(e), title=t("error"), severity="error")
                    return
                self.sub_title = title
                await self.refresh_conversations()

        self.app.push_screen(PromptDialog(t("chat.rename"), conv.title), done)

    def action_delete(self) -> None:
        conv = self.conversation_id and self.store.get_conversation(self.conversation_id)
        if not conv or self.chat.generating:
            return

        async def done(yes: bool | None) -> None:
            if yes:
                try:
                    self.store.delete_conversation(conv.id)
                except Exception as e:  # noqa: BLE001
                    self.notify(format_error(e), title=t("error"), severity="error")
                    return
                await self.open_conversation(None)
                await self.refresh_conversations()
                ids = self.sidebar.conversation_ids()
                if ids:
                    await self.open_conversation(ids[0])
                    await self.refresh_conversations()

        self.app.push_screen(ConfirmDialog(t("chat.delete_q", title=conv.title)), done)

    # -- the open chat ------------------------------------------------------------------------
    async def action_stop(self) -> None:
        """Esc: stop a reply; else leave edit mode; else back to the composer."""
        chat = self.chat
        if chat.stop():
            return
        if chat.editing:
            chat.leave_edit_mode()
            return
        chat.composer.focus()

    async def action_fork(self) -> None:
        """Fork from the selected message (the last one when none is selected)."""
        log = self.chat.log_view
        views = [v for v in log.messages() if v.message_id is not None]
        view = log.selected if log.selected in views else (views[-1] if views else None)
        if view is None:
            self.notify(t("chat.fork_nothing"), severity="warning")
            return
        await self.run_message_action("fork", view)

    def action_attach(self) -> None:
        """Ctrl+A: a path prompt; the file's text goes with the next message."""

        async def chosen(path: str | None) -> None:
            await self.chat.attach(path)

        self.app.push_screen(PromptDialog(t("chat.attach_q"), placeholder="~/notes.md"), chosen)

    async def action_regenerate(self) -> None:
        await self.chat.regenerate()

    def action_edit_last(self) -> None:
        self.chat.start_edit()

    def action_copy(self) -> None:
        self.chat.copy_message()

    @on(ChatLog.ActionRequested)
    async def _message_action(self, event: ChatLog.ActionRequested) -> None:
        view = event.view
        if event.action == "menu":

            async def chosen(action: str | None) -> None:
                if action:
                    await self.run_message_action(action, view)

            self.app.push_screen(MessageActionsDialog(view.role, view.content), chosen)
        else:
            await self.run_message_action(event.action, view)

    async def run_message_action(self, action: str, view: MessageView) -> None:
        chat = self.chat
        if action == "copy":
            chat.copy_message(view)
        elif view.message_id is None:
            self.notify(t("chat.busy"), severity="warning")
        elif action == "retry":
            await chat.retry_from(view.message_id)
        elif action == "edit":
            chat.start_edit(view.message_id)
        elif action == "fork":
            new_id = await chat.fork(view.message_id)
            if new_id is not None:
                await self.open_conversation(new_id, focus=True)
                await self.refresh_conversations()
        elif action == "delete":
            message_id = view.message_id

            async def done(yes: bool | None) -> None:
                if yes:
                    await chat.delete_message(message_id)

            self.app.push_screen(ConfirmDialog(t("chat.delete_message_q")), done)

    # -- settings, export ---------------------------------------------------------------------
    def chat_settings(self) -> dict[str, Any]:
        return self.chat.settings()

    async def action_chat_settings(self) -> None:
        if self.conversation_id is None:
            await self.action_new_chat()
            if self.conversation_id is None:
                return
        chat = self.chat
        settings = chat.settings()
        model = settings.get("model") or self.app.model_name
        lm = self.app.lm if model == self.app.model_name else None
        from firefly_core.session import check_chat_settings, generation_defaults

        try:
            defaults = generation_defaults(model, lm)
        except Exception:  # noqa: BLE001 - a broken saved setting: the dialog still opens
            defaults = {}
        fmt_default = getattr(getattr(lm, "prompt_format", None), "name", None)

        def check(new: dict[str, Any]) -> None:
            chosen = new.get("model") or self.app.model_name
            check_chat_settings(chosen, new, lm if chosen == model else None)

        def done(new: dict | None) -> None:
            if new is not None and self.conversation_id is not None:
                try:
                    self.store.update_settings(self.conversation_id, new)
                except Exception as e:  # noqa: BLE001
                    self.notify(format_error(e), title=t("error"), severity="error")
                    return
                chat.settings_changed()

        dialog = ChatSettingsDialog(
            settings, defaults=defaults, active_model=self.app.model_name, format_default=fmt_default, check=check
        )
        self.app.push_screen(dialog, done)

    def action_export(self, fmt: str = "md") -> None:
        if self.conversation_id is None:
            return
        conv = self.store.get_conversation(self.conversation_id)
        from firefly_core.paths import data_dir

        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in conv.title)[:40] or "chat"
        default = data_dir() / "exports" / f"{conv.id}-{safe}.{fmt}"

        def done(path: str | None) -> None:
            if path:
                try:
                    self.export_to(Path(path).expanduser(), fmt)
                except Exception as e:  # noqa: BLE001 - an unwritable folder: say so
                    self.notify(format_error(e), title=t("error"), severity="error")

        self.app.push_screen(PromptDialog(t("export.path"), str(default)), done)

    def export_to(self, path: Path, fmt: str) -> Path:
        from firefly_core.atomic import write_text

        if fmt == "json" or path.suffix == ".json":
            from firefly_core.conversation import export_chat_json

            text = export_chat_json(self.store, self.conversation_id)
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

    # -- status line --------------------------------------------------------------------------
    def on_model_status(self, message: ModelStatus) -> None:
        """A step of the app's model load, in the status line."""
        name = f"{message.name}: {message.step}" if message.step else message.name
        self.update_status(t("chat.loading_model", name=name))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        if message.error is not None:
            self.update_status(t("models.load_failed", error=message.error))

    def model_changed(self) -> None:
        """The app's active model changed: its name, and the system prompt saved for it."""
        try:
            self.chat.show_system_prompt()
        except Exception:  # noqa: BLE001 - not composed yet
            pass
        self.update_status()

    def update_status(self, extra: str | None = None) -> None:
        try:
            self.chat.update_status(extra)
        except Exception:  # noqa: BLE001 - not composed yet
            pass
