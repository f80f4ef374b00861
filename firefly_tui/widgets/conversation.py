"""One open chat: its messages, the reply being written, the composer and the status line.

This widget owns one conversation the way oterm's ChatContainer does; the screen around it only
switches chats and routes keys. The history itself belongs to `firefly_core.conversation.Conversation`
(the store is the truth; the `ChatSession` is asked for each reply with the history read from it), so
a failed reply never leaves the chat stuck and nothing here writes messages to the store by hand.

The widget is given its session provider (`firefly_core.session.open_session`, or a test's fake):
it never loads a model itself. The provider runs in the reply worker the first time a reply needs
a session, so loading steps show in the status line and a failed load is recorded with the message.

Replies run in one thread worker at a time. The worker only posts messages (`ReplyDelta`,
`ReplyFinished`, `Status`); when it raises, the single `on_worker_state_changed` handler shows
the error on the reply and re-reads the chat from the store. Esc sets the worker's
`threading.Event`; the session stops between tokens and the partial reply is kept, marked "stopped".
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from firefly_core.errors import format_error

from ..i18n import STRINGS, t
from .chat_view import ChatLog, DropMarker, MessageView, SystemPromptView
from .composer import Composer

if TYPE_CHECKING:
    from firefly_core.session import SessionProvider

UI_HZ = 15  # reply redraws per second while streaming
METER_DELAY_S = 0.3  # the token meter counts once typing pauses this long (debounce)


def short_model_name(name: str) -> str:
    """A folder's last part (a hub id stays whole): the status line has one row at 80 columns."""
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        from firefly_core.models.inventory import local_name  # torch-free: the one naming rule

        return local_name(Path(name.rstrip("/\\"))) or name
    return name


@dataclass
class ReplyJob:
    """What a reply worker works on (the Reply iterator was started on the UI thread)."""

    conversation_id: int
    reply: Any  # firefly_core.conversation.Reply
    cancel: threading.Event


def attachment_names(meta: dict | None) -> list[str]:
    """The names of the files a stored message was sent with (its meta["attachments"])."""
    files = (meta or {}).get("attachments")
    return [str(f.get("name", "?")) for f in files if isinstance(f, dict)] if isinstance(files, list) else []


def stats_dict(stats: Any) -> dict[str, Any]:
    """A reply's ReplyStats as a plain dict (the status line reads it)."""
    if stats is None:
        return {}
    return dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) else dict(vars(stats))


class ChatConversation(Vertical):
    """The open chat. The screen calls its `open`, `send`, `retry_from`, `edit`, … methods.

    The token meter (right of the status line) says what the next prompt, with what is typed and
    attached, uses of the model's context window; it is counted in a worker once typing pauses
    (`firefly_core.conversation.Conversation.context_view`, the rendering replies use), and when
    older turns no longer fit a `DropMarker` shows where the model's view begins.
    """

    DEFAULT_CSS = """
    ChatConversation #status-row { height: 1; background: $boost; }
    ChatConversation #status-row #status { width: 1fr; }
    ChatConversation #meter { width: auto; color: $text-muted; background: $boost; padding: 0 1 0 0; }
    ChatConversation #meter.-warn { color: $warning; }
    ChatConversation #attachments { height: auto; padding: 0 1; color: $accent; }
    ChatConversation #attachments.-hidden { display: none; }
    """

    # -- messages from the reply worker (posted from its thread) ------------------------------
    class ReplyDelta(Message):
        def __init__(self, conversation_id: int, text: str) -> None:
            super().__init__()
            self.conversation_id, self.text = conversation_id, text

    class ReplyFinished(Message):
        def __init__(self, conversation_id: int, text: str, stats: dict, cancelled: bool) -> None:
            super().__init__()
            self.conversation_id, self.text, self.stats, self.cancelled = conversation_id, text, stats, cancelled

    class Metered(Message):
        """The token meter's count for the draft (`view`: a ContextView, or None: nothing to count with)."""

        def __init__(self, conversation_id: int, view: Any) -> None:
            super().__init__()
            self.conversation_id, self.view = conversation_id, view

    class Attached(Message):
        def __init__(self, conversation_id: int, attachment: Any, tokens: int) -> None:
            super().__init__()
            self.conversation_id, self.attachment, self.tokens = conversation_id, attachment, tokens

    class AttachRefused(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class Status(Message):
        """A step of getting the model ready ("loading …", "compiling CPU kernels, once, ~30 s")."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, store, sessions: SessionProvider, *, id: str | None = None) -> None:
        """`sessions`: the session provider, called as `open_session(model, chat_settings, lm=…,
        status=…, cancel=…)` in the reply worker (`firefly_core.session.open_session` in the app)."""
        super().__init__(id=id)
        self.store = store
        self.sessions = sessions
        self.conversation_id: int | None = None
        self.conversation = None  # firefly_core.conversation.Conversation of the open chat
        self.session_key: tuple | None = None  # (model, settings) the conversation's session was made for
        self.generating = False
        self.cancel_event: threading.Event | None = None
        self.streaming_view: MessageView | None = None
        self.editing_id: int | None = None  # the user message being edited
        self.draft = ""  # what the composer held before editing started (given back on Esc)
        self.last_stats: dict[str, Any] = {}
        self.last_reply_empty = False
        self.model_status: str | None = None
        self.context_view = None  # the meter's last count (firefly_core.conversation.ContextView)
        self.attachments: list[tuple[Any, int]] = []  # (Attachment, tokens) for the next message
        self._meter_timer = None

    def compose(self) -> ComposeResult:
        with ChatLog(id="log"):
            yield SystemPromptView("", id="system-prompt", classes="-hidden")
        with Horizontal(id="status-row"):
            yield Static("", id="status")
            yield Static("", id="meter")
        yield Static("", id="attachments", classes="-hidden")
        yield Composer(id="composer")

    # -- parts --------------------------------------------------------------------------------
    @property
    def log_view(self) -> ChatLog:
        return self.query_one("#log", ChatLog)

    @property
    def composer(self) -> Composer:
        return self.query_one("#composer", Composer)

    @property
    def editing(self) -> bool:
        return self.editing_id is not None

    def settings(self) -> dict[str, Any]:
        """This chat's own settings (model, system prompt, format, sampling) as stored."""
        if self.conversation_id is None:
            return {}
        conv = self.store.get_conversation(self.conversation_id)
        return dict(conv.settings) if conv else {}

    def model_name(self) -> str | None:
        """The model this chat answers with: its own choice, else the app's active model (also
        while the app is still loading it: the model service shares that one load)."""
        return (
            self.settings().get("model")
            or self.app.model_name
            or getattr(self.app.settings, "active_model", None)
        )

    # -- opening a chat -----------------------------------------------------------------------
    async def open(self, conversation_id: int | None) -> None:
        """Show a chat (None: none). Refused while a reply is being written."""
        from firefly_core.conversation import Conversation

        self.leave_edit_mode()
        self.conversation_id = conversation_id
        self.conversation = Conversation(self.store, conversation_id) if conversation_id is not None else None
        self.session_key = None
        self.last_stats = {}
        self.attachments = []
        self._show_attachments()
        self.context_view = None
        log = self.log_view
        await log.query(MessageView).remove()
        log.selected = None
        if conversation_id is not None:
            await log.mount_all([self._view_of(m) for m in self.store.messages(conversation_id)])
            log.scroll_end(animate=False)
        self.show_system_prompt()
        self.update_status()

    @staticmethod
    def _view_of(m) -> MessageView:
        return MessageView(
            m.role, m.content, partial=m.partial, message_id=m.id,
            error=(m.meta or {}).get("error"), stop_reason=(m.meta or {}).get("stop_reason"),
            attachments=attachment_names(m.meta),
        )

    def system_prompt(self) -> str | None:
        """The system prompt replies use: the chat's own, else the one saved for its model
        (`firefly use M --system …`); the same rule `open_session` applies."""
        from firefly_core.session import system_prompt_for

        try:
            return system_prompt_for(self.model_name(), self.settings())
        except Exception:  # noqa: BLE001 - a broken settings file: the reply will say why
            return self.settings().get("system")

    def show_system_prompt(self) -> None:
        self.query_one("#system-prompt", SystemPromptView).show_prompt(self.system_prompt())

    async def sync(self) -> None:
        """Make the views match the stored messages (after a reply, a retry, an edit, a delete).

        Views whose message is unchanged stay (no Markdown re-render); from the first difference
        on, views are replaced by the store's messages."""
        if self.conversation_id is None:
            return
        stored = self.store.messages(self.conversation_id)
        views = self.log_view.messages()
        keep = 0
        for view, m in zip(views, stored):
            same = (view.message_id == m.id and view.content == m.content and view.partial == m.partial
                    and view.error == (m.meta or {}).get("error"))
            if not same:
                break
            keep += 1
        for view in views[keep:]:
            await view.remove()
        if stored[keep:]:
            await self.log_view.mount_all([self._view_of(m) for m in stored[keep:]])
        self.log_view.scroll_end(animate=False)

    # -- model and session --------------------------------------------------------------------
    def model_available(self) -> bool:
        return bool(self.model_name()) or self.app.lm is not None

    def _status(self, text: str) -> None:
        """A step of getting the model ready (called from the worker thread)."""
        self.post_message(self.Status(text))

    def _session_factory(self):
        """The function the Conversation calls (in the worker) when it first needs a session: the
        provider, given the app's active model when this chat answers with that one (a chat with
        its own model gets it from the model service, which loads each model once)."""
        from firefly_core.errors import ConfigError

        settings = self.settings()
        name = self.model_name()
        app = self.app

        def make():
            if not name:
                raise ConfigError("no model is chosen for this chat", "pick one with Ctrl+O or on the Models screen (F3)")
            lm = app.lm if app.lm is not None and name == app.model_name else None
            return self.sessions(
                name, settings, lm=lm, status=lambda step: self._status(step.message), cancel=self.cancel_event
            )

        return make

    def _prepare_session(self) -> None:
        """Give the Conversation a session for the current model and settings (kept across turns,
        so the KV cache of the conversation so far is reused)."""
        settings = self.settings()
        key = (self.model_name(), id(self.app.lm), repr(sorted(settings.items())))
        if key != self.session_key or self.conversation.session is None:
            self.conversation.set_session(self._session_factory())
            self.session_key = key

    def settings_changed(self) -> None:
        """The chat's settings were saved: the next reply uses a new session with them."""
        self.session_key = None
        self.show_system_prompt()
        self.update_status()

    @property
    def session(self):
        return self.conversation.session if self.conversation is not None else None

    # -- the user's actions -------------------------------------------------------------------
    def _can_start(self) -> bool:
        if self.generating:
            self.app.notify(t("chat.busy"), severity="warning")
            return False
        if not self.model_available():
            self.app.notify(t("chat.no_model"), severity="warning", timeout=6)
            return False
        return True

    @on(Composer.Submitted)
    async def _submitted(self, event: Composer.Submitted) -> None:
        event.stop()
        if self.editing:
            await self.edit(self.editing_id, event.text)
        else:
            await self.send(event.text)

    @on(Composer.LeaveUp)
    def _leave_up(self, event: Composer.LeaveUp) -> None:
        event.stop()
        if self.log_view.messages():
            self.log_view.focus()

    @on(ChatLog.LeaveDown)
    def _leave_down(self, event: ChatLog.LeaveDown) -> None:
        event.stop()
        self.composer.focus()

    @on(Composer.Cleared)
    def _cleared(self, event: Composer.Cleared) -> None:
        event.stop()
        if self.editing and not self.generating:
            self.leave_edit_mode(restore_draft=False)

    async def send(self, text: str) -> None:
        """Save the user's message and stream the reply. If the message cannot be saved (a
        read-only store), it stays in the composer and the reason is shown."""
        if not self._can_start():
            return
        if self.conversation is None:
            await self.screen.action_new_chat()
            if self.conversation is None:  # the store refused a new chat (shown): keep the text
                return
        cid = self.conversation_id
        conv = self.store.get_conversation(cid)
        first = not self.store.messages(cid)
        self._prepare_session()
        cancel = threading.Event()
        typed, meta = text, None
        if self.attachments:
            from firefly_core.attachment import attachments_meta

            text = self._with_attachments(typed)
            meta = attachments_meta([a for a, _ in self.attachments], [n for _, n in self.attachments])
        try:
            reply = self.conversation.send(text, cancel, meta=meta)
        except Exception as e:  # noqa: BLE001 - a store that refuses the write: nothing is lost
            self._show_error(e)
            return
        self.composer.value = ""
        self.attachments = []
        self._show_attachments()
        text = typed  # the title is made from what was typed
        if first and conv is not None and conv.title in STRINGS["chat.untitled"]:
            title = " ".join(text.split())[:24]
            self._try(self.store.rename_conversation, cid, title)
            self.post_message(self.TitleChanged(cid))
        await self.log_view.mount(MessageView("user", reply.question.content, message_id=reply.question.id,
                                              attachments=attachment_names(reply.question.meta)))
        await self._start(reply, cancel)

    async def retry_from(self, message_id: int) -> None:
        """Answer again from a message: everything after it is replaced once the new reply has text."""
        if not self._can_start():
            return
        await self._run_on_history(lambda cancel: self.conversation.retry_from(message_id, cancel), message_id)

    async def regenerate(self) -> None:
        msgs = self.store.messages(self.conversation_id) if self.conversation_id is not None else []
        target = next((m for m in reversed(msgs) if m.role == "user"), None)
        if target is None:
            self.app.notify(t("chat.nothing_to_regen"), severity="warning")
            return
        await self.retry_from(target.id)

    async def edit(self, message_id: int, text: str) -> None:
        """Replace a message of the user's with `text` (dropping what followed) and answer it."""
        if not self._can_start():
            return
        self.leave_edit_mode(restore_draft=False)
        self.composer.value = ""
        await self._run_on_history(lambda cancel: self.conversation.edit(message_id, text, cancel), message_id)

    async def _run_on_history(self, start, message_id: int) -> None:
        self._prepare_session()
        cancel = threading.Event()
        try:
            reply = start(cancel)
        except Exception as e:  # noqa: BLE001 - a gone message, a read-only store
            self._show_error(e)
            return
        # Show the answer in place of what it replaces: views after the question go (the store
        # keeps them until the new reply has text; `sync` puts them back if it fails).
        views = self.log_view.messages()
        ids = [v.message_id for v in views]
        if reply.question.id in ids:
            cut = ids.index(reply.question.id)
            await views[cut].set_content(reply.question.content)
            for view in views[cut + 1:]:
                await view.remove()
        else:
            await self.sync()
        await self._start(reply, cancel)

    def start_edit(self, message_id: int | None = None) -> None:
        """Put a message of the user's (default: the last one) in the composer to edit and resend."""
        if self.generating:
            self.app.notify(t("chat.busy"), severity="warning")
            return
        msgs = self.store.messages(self.conversation_id) if self.conversation_id is not None else []
        users = [m for m in msgs if m.role == "user" and (message_id is None or m.id == message_id)]
        if not users:
            self.app.notify(t("chat.nothing_to_edit"), severity="warning")
            return
        target = users[-1]
        if not self.editing:
            self.draft = self.composer.text
        self.editing_id = target.id
        self.composer.value = target.content  # the cursor goes to the end
        self.composer.editing = True
        self.composer.focus()

    def leave_edit_mode(self, restore_draft: bool = True) -> None:
        if not self.editing:
            return
        self.editing_id = None
        composer = self.composer
        composer.editing = False
        composer.value = self.draft if restore_draft else ""
        self.draft = ""

    async def delete_message(self, message_id: int) -> None:
        if self.generating:
            self.app.notify(t("chat.busy"), severity="warning")
            return
        try:
            self.conversation.delete_message(message_id)
        except Exception as e:  # noqa: BLE001
            self._show_error(e)
            return
        if self.editing_id == message_id:
            self.leave_edit_mode()
        await self.sync()
        self.app.notify(t("chat.message_deleted"), timeout=2)

    def copy_message(self, view: MessageView | None = None) -> None:
        """Copy a message (default: the selected one, else the last reply)."""
        log = self.log_view
        views = log.messages()
        if view is None:
            view = log.selected if log.selected in views else next(
                (v for v in reversed(views) if v.role == "assistant"), None
            )
        if view is None:
            return
        self.app.copy_to_clipboard(view.content)
        # A terminal may drop the OSC 52 write without a word: never claim it worked, and keep the
        # text in a file too (the same file each time, replaced atomically).
        from firefly_core import paths
        from firefly_core.atomic import write_text

        try:
            target = paths.ensure(paths.data_dir()) / "copied.txt"
            write_text(target, view.content)
        except Exception as e:  # noqa: BLE001 - a read-only data folder: say so, the OSC 52 write went out
            self._show_error(e)
            return
        self.app.notify(t("chat.copied", path=target), timeout=6)

    async def fork(self, message_id: int) -> int | None:
        """A new chat with this one's history up to `message_id` (the original untouched); its id."""
        if self.generating:
            self.app.notify(t("chat.busy"), severity="warning")
            return None
        try:
            new = self.conversation.fork(message_id)
        except Exception as e:  # noqa: BLE001 - a gone message, a read-only store
            self._show_error(e)
            return None
        conv = self.store.get_conversation(new.id)
        self.app.notify(t("chat.forked", title=conv.title if conv else ""), timeout=3)
        return new.id

    # -- attached files -----------------------------------------------------------------------
    def _with_attachments(self, text: str) -> str:
        if not self.attachments:
            return text
        from firefly_core.attachment import message_with_attachments

        return message_with_attachments(text, [a for a, _ in self.attachments])

    def _show_attachments(self) -> None:
        try:
            chips = self.query_one("#attachments", Static)
        except Exception:  # noqa: BLE001 - not composed yet
            return
        chips.update("  ".join(t("chat.attached", name=a.name, tokens=n) for a, n in self.attachments))
        chips.set_class(not self.attachments, "-hidden")

    async def attach(self, path: str | None) -> None:
        """Ctrl+A: read a text file for the next message (in a worker: counting needs the model's
        tokenizer); refused with the reason (not text, too big, would not fit). An empty path
        removes the files attached so far."""
        if not path:
            if self.attachments:
                self.attachments = []
                self._show_attachments()
                self.app.notify(t("chat.attachments_cleared"), timeout=2)
                self.schedule_meter()
            return
        if self.conversation is None:
            await self.screen.action_new_chat()
            if self.conversation is None:
                return
        make = self._can_make_session()
        if make:
            self._prepare_session()
        self._attach_worker(self.conversation, path, self.composer.text, list(self.attachments), make)

    @work(thread=True, exclusive=True, group="attach", exit_on_error=False)
    def _attach_worker(self, conversation, path: str, draft: str, attached: list, make: bool) -> None:
        from firefly_core.attachment import AttachmentError, message_with_attachments, read_attachment
        from firefly_core.errors import FireflyError

        try:
            att = read_attachment(path)
            files = [a for a, _ in attached] + [att]
            view = conversation.context_view(message_with_attachments(draft, files), make_session=make)
            if view is None or not hasattr(conversation.session, "count_tokens"):
                raise AttachmentError(t("chat.attach_no_model"))
            m = view.measure
            if not m.fits:
                raise AttachmentError(t("chat.attach_too_long", name=att.name, tokens=m.tokens,
                                        total=m.context_length, reply=m.max_new_tokens))
            self.post_message(self.Attached(conversation.id, att, conversation.session.count_tokens(att.text)))
        except FireflyError as e:
            self.post_message(self.AttachRefused(format_error(e)))

    def on_chat_conversation_attached(self, message: Attached) -> None:
        if message.conversation_id != self.conversation_id:
            return
        self.attachments.append((message.attachment, message.tokens))
        self._show_attachments()
        self.schedule_meter()

    def on_chat_conversation_attach_refused(self, message: AttachRefused) -> None:
        self.app.notify(message.text, title=t("error"), severity="error", timeout=10)

    # -- the token meter ----------------------------------------------------------------------
    def _can_make_session(self) -> bool:
        """Counting needs a session; make one only when that is cheap (the app's loaded model is
        this chat's): the meter never loads a model."""
        if self.conversation is not None and self.conversation.session is not None:
            return True
        return self.app.lm is not None and self.model_name() == self.app.model_name

    def on_text_area_changed(self, event) -> None:
        if event.text_area.id == "composer":
            self.schedule_meter()

    def schedule_meter(self) -> None:
        """Count again once typing pauses (each keystroke restarts the wait)."""
        if self._meter_timer is not None:
            self._meter_timer.stop()
        self._meter_timer = self.set_timer(METER_DELAY_S, self._measure_now)

    def _measure_now(self) -> None:
        self._meter_timer = None
        if self.conversation is None:
            self.call_later(self._show_meter, None)
            return
        if self.generating:
            return  # counted again when the reply ends (the tokenizer is the reply's meanwhile)
        make = self._can_make_session()
        if make:
            self._prepare_session()
        self._meter_worker(self.conversation, self._with_attachments(self.composer.text), make)

    @work(thread=True, exclusive=True, group="meter", exit_on_error=False)
    def _meter_worker(self, conversation, draft: str, make: bool) -> None:
        self.post_message(self.Metered(conversation.id, conversation.context_view(draft, make_session=make)))

    async def on_chat_conversation_metered(self, message: Metered) -> None:
        if message.conversation_id == self.conversation_id and not self.generating:
            await self._show_meter(message.view)

    async def _show_meter(self, view) -> None:
        self.context_view = view
        meter = self.query_one("#meter", Static)
        log = self.log_view
        await log.query(DropMarker).remove()
        if view is None:
            meter.update("")
            return
        m = view.measure
        parts = [t("chat.meter", used=m.tokens, total=m.context_length)]
        if not m.fits:
            parts.append(t("chat.meter_over"))
        elif m.dropped_turns:
            parts.append(t("chat.meter_dropped", n=m.dropped_turns))
        meter.update(" · ".join(parts))
        meter.set_class(not m.fits or m.dropped_turns > 0, "-warn")
        if m.dropped_turns and m.fits:
            before = next((v for v in log.messages() if v.message_id == view.first_sent_id), None)
            marker = DropMarker(t("chat.dropped_marker"), markup=False)
            if before is not None:
                await log.mount(marker, before=before)
            else:  # every earlier turn is dropped: the view begins with the next message
                await log.mount(marker)

    def stop(self) -> bool:
        """Esc: stop the reply being written. False when there was none."""
        if self.generating and self.cancel_event is not None:
            self.cancel_event.set()
            return True
        return False

    # -- the worker ---------------------------------------------------------------------------
    async def _start(self, reply, cancel: threading.Event) -> None:
        self.streaming_view = MessageView("assistant", "", streaming=True)
        self.streaming_view.add_class("streaming")
        await self.log_view.mount(self.streaming_view)
        self.log_view.scroll_end(animate=False)
        self.generating = True
        self.cancel_event = cancel
        self.update_status(t("status.generating"))
        self._reply_worker(ReplyJob(self.conversation_id, reply, cancel))

    @work(thread=True, exclusive=True, group="reply", exit_on_error=False)
    def _reply_worker(self, job: ReplyJob) -> None:
        """Stream a reply; posts messages only. An exception ends the worker in ERROR state."""
        from firefly_core.generation.config import ReplyDone

        # Deltas are batched to at most ~UI_HZ updates a second: re-rendering Markdown per token
        # would take the GIL from the decode loop and slow generation down. The session is made
        # on the first step (the model service loads the model once; its steps show in the status
        # line) and holds the model's generation lock while it streams; the Conversation stores
        # the reply, with the settings it was made with, when the stream ends.
        pending: list[str] = []
        last = 0.0
        for ev in job.reply:
            if isinstance(ev, ReplyDone):
                if pending:
                    self.post_message(self.ReplyDelta(job.conversation_id, "".join(pending)))
                    pending = []
                stats = stats_dict(ev.stats)
                self.post_message(self.ReplyFinished(job.conversation_id, ev.text, stats, ev.cancelled))
                continue
            pending.append(ev.text)
            now = time.monotonic()
            if now - last >= 1 / UI_HZ:
                self.post_message(self.ReplyDelta(job.conversation_id, "".join(pending)))
                pending, last = [], now

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place a reply worker's end is handled: success, cancel or failure."""
        if event.worker.group != "reply":
            return
        if event.state == WorkerState.SUCCESS:
            self.call_later(self._end_reply, None)
        elif event.state in (WorkerState.ERROR, WorkerState.CANCELLED):
            error = event.worker.error
            self.call_later(self._end_reply, format_error(error) if error else t("chat.stopped"))

    # -- worker messages (UI thread) ----------------------------------------------------------
    async def on_chat_conversation_reply_delta(self, message: ReplyDelta) -> None:
        if message.conversation_id == self.conversation_id and self.streaming_view is not None:
            await self.streaming_view.append(message.text)

    async def on_chat_conversation_reply_finished(self, message: ReplyFinished) -> None:
        self.last_stats = message.stats
        self.last_reply_empty = not message.text.strip()
        view = self.streaming_view
        if view is not None and message.conversation_id == self.conversation_id:
            await view.finish(message.text, partial=message.cancelled, stop_reason=message.stats.get("stop_reason"))

    def on_chat_conversation_status(self, message: Status) -> None:
        self.model_status = message.text
        self.update_status(message.text)

    class TitleChanged(Message):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    async def _end_reply(self, error: str | None) -> None:
        view = self.streaming_view
        try:
            if error is not None:
                self.app.notify(error, title=t("error"), severity="error", timeout=10)
                if view is not None:
                    await view.finish(view.content, partial=True, error=error)
            if view is not None and self.conversation_id is not None:
                await self.sync()  # the stored messages (with their ids) replace the streamed view
                if error is not None:
                    self._mark_failure(error)
        finally:
            # Last: a new message may be sent from here on, whatever happened above.
            self.streaming_view = None
            self.cancel_event = None
            self.model_status = None
            self.generating = False
            self.update_status()
        self.post_message(self.TitleChanged(self.conversation_id))

    def _mark_failure(self, error: str) -> None:
        """After a failed reply the error shows on the last message if the store did not record it."""
        views = self.log_view.messages()
        if views and not any(v.error for v in views[-1:]):
            views[-1].error = error
            views[-1].relabel()

    # -- errors and status --------------------------------------------------------------------
    def _show_error(self, e: BaseException) -> None:
        self.app.notify(format_error(e), title=t("error"), severity="error", timeout=12)

    def _try(self, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except Exception as e:  # noqa: BLE001
            self._show_error(e)
            return False

    def engine_label(self) -> str | None:
        """What answers: the engine and its weight type ("llama.cpp q8_0", "torch bfloat16"), once
        the model is loaded (the session's, else the app's when this chat uses it)."""
        session = self.session
        lm = getattr(session, "lm", None)
        if lm is None and self.app.lm is not None and self.model_name() == self.app.model_name:
            lm = self.app.lm
        if lm is None or not hasattr(lm, "engine"):
            return None
        from firefly_core.models.service import weights_label  # loaded already: torch-free import

        try:
            return f"{lm.engine} {weights_label(lm)}"
        except Exception:  # noqa: BLE001 - a test's stand-in model: no label
            return None

    def update_status(self, extra: str | None = None) -> None:
        name = self.model_name()
        if name is None and self.app.lm is None and any(
            w.group == "app-load" and w.is_running for w in self.app.workers
        ):
            parts = [t("chat.loading_model", name=getattr(self.app.settings, "active_model", None) or "")]
        else:
            parts = [t("status.model", name=short_model_name(name)) if name else t("status.no_model")]
            engine = self.engine_label()
            if engine:
                parts[0] += f" · {engine}"
        s = self.last_stats
        if s and not extra:
            if self.last_reply_empty:
                # "1 tokens · 0.0 tok/s" says nothing: say that the model answered with nothing.
                parts.append(t("status.empty", reason=s.get("stop_reason", "?")))
            else:
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
        except Exception:  # noqa: BLE001 - not composed yet
            return
        if extra is None and not self.generating:
            self.schedule_meter()  # the chat, its settings or the model changed: count again
