"""The one owner of a chat's history: the SQLite store is the truth, and every reply is asked of
the chat's `ChatSession` (`session.py`, the owner of the KV cache) with the history read from it.

The session keeps no copy of the history, so the two cannot disagree (before, a failed reply left
a user message without a reply in one of them for good). What the model sees:

- The model sees only *answered turns*: a user message directly followed by an assistant reply
  (partial replies included). A user message whose reply failed, or that a crash left unanswered,
  stays in the store (it is the user's text, shown with its error) but is not part of the prompt,
  so the chat always stays usable: answer it again (`regenerate` / `retry_from`), edit it, delete it,
  or just send a new message.
- `send` saves the user's message first (nothing typed is lost), then the reply in one transaction
  when the stream ends; a failure with no text is recorded on the user message (`meta["error"]`),
  a failure after some text keeps that text as a partial reply carrying the error.
- `regenerate` / `retry_from` keep the old reply (and everything after it) until the new reply has
  text, then swap them in one transaction; a failed retry changes nothing.
- `edit` replaces a user message and drops what followed it in one transaction, then answers it.

Every operation returns a `Reply`: an iterator of exactly the events `ChatSession.reply` yields
(`TextDelta`s then a `ReplyDone`); errors are recorded first, then raised to the consumer as they
were. The store write that must happen before a reply (saving the user's message) happens when the
operation is called, so a read-only or full store is reported before any generation. Each stored
reply keeps the settings it was made with (`ChatSession.settings_used`), in the same transaction.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, is_dataclass
from typing import TYPE_CHECKING, Any, Union

from .errors import ConfigError, FireflyError
from .formats import Message
from .store import ChatStore, StoredMessage, StoreError

if TYPE_CHECKING:
    from .session import ChatSession, PromptMeasure

SessionSource = Union["ChatSession", Callable[[], "ChatSession"]]

# Reply stats kept with a stored reply (shown under the message, exported with the chat).
STATS_KEPT = ("tokens_per_s", "ttft_s", "new_tokens", "context_used", "context_length", "stop_reason")


def error_text(error: BaseException) -> str:
    """How an error is recorded with a message: a FireflyError's message (and hint), else its type."""
    if isinstance(error, FireflyError):
        return str(error)
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def answered_history(messages: list[StoredMessage]) -> list[Message]:
    """What the model sees of stored messages: answered (user, assistant) turns, in order.

    An unanswered user message (a failed reply, a crash mid-reply) and a reply whose question was
    deleted are left out, so the history always alternates and ends with a reply.
    """
    out: list[Message] = []
    for question, reply in answered_pairs(messages):
        out += [Message("user", question.content), Message("assistant", reply.content)]
    return out


def answered_pairs(messages: list[StoredMessage]) -> list[tuple[StoredMessage, StoredMessage]]:
    """The stored (question, reply) pairs `answered_history` is made of, with their ids (so a
    front end can show where the model's view begins)."""
    return [
        (prev, msg)
        for prev, msg in zip([None, *messages[:-1]], messages)
        if msg.role == "assistant" and prev is not None and prev.role == "user"
    ]


@dataclass(frozen=True)
class ContextView:
    """What the model will see of a chat with the next message: the token meter and, when older
    turns are dropped, the stored message where the model's view begins (None: the whole chat is
    sent, or nothing of it is)."""

    measure: PromptMeasure
    first_sent_id: int | None


class Reply:
    """One reply being produced: iterate it for the session's events.

    `question` is the stored user message being answered; `replaces` the stored reply kept until
    the new one has text (regenerate / retry); after the stream ends `saved` is the stored reply
    (None if nothing was stored) and `error` what went wrong (also raised while iterating).
    """

    def __init__(
        self,
        owner: Conversation,
        kind: str,
        question: StoredMessage,
        replaces: StoredMessage | None,
        cancel: threading.Event | None,
    ) -> None:
        self.kind = kind
        self.question = question
        self.replaces = replaces
        self.saved: StoredMessage | None = None
        self.error: BaseException | None = None
        self.session: ChatSession | None = None  # the session that answered (once the stream starts)
        self._owner = owner
        self._started = False
        self._events = owner._stream(self, cancel)

    def __iter__(self) -> Reply:
        return self

    def __next__(self) -> Any:
        self._started = True
        return next(self._events)

    def close(self) -> None:
        """Stop early (what was streamed so far is saved as a partial reply)."""
        self._events.close()

    def fail(self, error: BaseException) -> None:
        """Record a failure that happened before the reply could start (e.g. the caller loaded
        the model itself and that failed), exactly as if the stream had raised it. Only for a
        reply not yet iterated; afterwards the stream records its own outcome."""
        if self._started:
            raise RuntimeError("this reply has already started; its stream records its own outcome")
        self._started = True
        self._events.close()  # never run: nothing to release
        self._owner._record(self, None, "", error)


class Conversation:
    """One stored chat and the session that answers in it.

    `session` is a `ChatSession` (anything with its `reply(history, cancel)`) or a function that
    makes one; the function is called when a reply is first needed, so a model that cannot be
    loaded (a missing folder) fails inside the reply and is recorded with the message like any
    other failure. The session's system prompt and generation settings are its own; this class
    owns only the history.
    """

    def __init__(self, store: ChatStore, conversation_id: int, session: SessionSource | None = None) -> None:
        if store.get_conversation(conversation_id) is None:
            raise StoreError(f"there is no chat {conversation_id} in {store.path}", "it may have been deleted")
        self.store = store
        self.id = conversation_id
        self._session: ChatSession | None = None
        self._make_session: Callable[[], ChatSession] | None = None
        self._lock = threading.Lock()  # one reply at a time per conversation
        self.set_session(session)

    @classmethod
    def create(
        cls, store: ChatStore, title: str, settings: dict[str, Any] | None = None, session: SessionSource | None = None
    ) -> Conversation:
        return cls(store, store.create_conversation(title, settings).id, session)

    # -- reading ------------------------------------------------------------------------------
    def messages(self) -> list[StoredMessage]:
        return self.store.messages(self.id)

    def history(self) -> list[Message]:
        """The turns the model sees (see `answered_history`)."""
        return answered_history(self.messages())

    def context_view(self, draft: str = "", *, make_session: bool = True) -> ContextView | None:
        """The token meter for sending `draft` next (see `ChatSession.measure`), and where the model's
        view of the stored chat begins. None when there is no session to count with (not made yet
        and `make_session` is False: making one may load a model), or it cannot measure."""
        session = self._session
        if session is None and make_session and self._make_session is not None:
            session = self._ready_session()
        measure = getattr(session, "measure", None)
        if not callable(measure):
            return None
        msgs = self.messages()
        pairs = answered_pairs(msgs)
        result = measure(answered_history(msgs), draft)
        dropped = result.dropped_turns
        first = pairs[dropped][0].id if 0 < dropped < len(pairs) else None
        return ContextView(result, first)

    def fork(self, message_id: int, title: str | None = None) -> Conversation:
        """A new chat holding this one's messages up to and including `message_id` (with their
        meta) and its settings, named after that message; made in one transaction, so a crash
        leaves either no new chat or the whole one. The original is untouched. The new chat
        answers with this one's session (the same model and settings)."""
        msgs = self.messages()
        target = msgs[self._index(msgs, message_id)]
        if title is None:
            words = " ".join(target.content.split())
            title = words[:40] + ("…" if len(words) > 40 else "")
        new_id = self.store.fork_conversation(self.id, message_id, title or "fork")
        return Conversation(self.store, new_id, self._session or self._make_session)

    def set_session(self, session: SessionSource | None) -> None:
        """Answer with another session (a new model or settings); the history stays the store's."""
        if session is None or hasattr(session, "reply"):
            self._session, self._make_session = session, None
        elif callable(session):
            self._session, self._make_session = None, session
        else:
            raise TypeError(f"session must be a ChatSession or a function making one, not {type(session).__name__}")

    @property
    def session(self) -> ChatSession | None:
        """The session once made (None before the first reply when a factory was given)."""
        return self._session

    # -- the operations -----------------------------------------------------------------------
    def send(self, text: str, cancel: threading.Event | None = None, *, meta: dict[str, Any] | None = None) -> Reply:
        """Save the user's message now and answer it (iterate the result). `meta` is stored with
        the message (e.g. the names of the files attached to it)."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("the message is empty", "type something to send")
        self._not_answering()
        question = self.store.add_message(self.id, "user", text, meta=meta)
        return Reply(self, "send", question, None, cancel)

    def regenerate(self, cancel: threading.Event | None = None) -> Reply:
        """Answer the last user message again; its old reply stays until the new one has text.

        Also answers a last user message that has no reply (a failed reply, a crash)."""
        msgs = self.messages()
        last_user = next((i for i in range(len(msgs) - 1, -1, -1) if msgs[i].role == "user"), None)
        if last_user is None:
            raise ConfigError("there is no message to answer yet", "send a message first")
        return self.retry_from(msgs[last_user].id, cancel)

    def retry_from(self, message_id: int, cancel: threading.Event | None = None) -> Reply:
        """Answer again from a message, dropping everything after it once the new reply has text.

        From a user message: answer it again. From a reply: produce that reply again."""
        self._not_answering()
        msgs = self.messages()
        i = self._index(msgs, message_id)
        if msgs[i].role == "assistant":
            if i == 0 or msgs[i - 1].role != "user":
                raise ConfigError("this reply has no question before it to answer again", "delete it instead")
            question, replaces = msgs[i - 1], msgs[i]
        elif msgs[i].role == "user":
            question = msgs[i]
            replaces = msgs[i + 1] if i + 1 < len(msgs) and msgs[i + 1].role == "assistant" else None
        else:
            raise ConfigError(f"cannot answer a {msgs[i].role} message")
        return Reply(self, "retry", question, replaces, cancel)

    def edit(self, message_id: int, text: str, cancel: threading.Event | None = None) -> Reply:
        """Replace a user message with `text`, dropping everything after it (one transaction), and
        answer it."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("the message is empty", "type something to send")
        self._not_answering()
        msgs = self.messages()
        i = self._index(msgs, message_id)
        if msgs[i].role != "user":
            raise ConfigError("only your own messages can be edited", "use regenerate for a reply")
        question = self.store.replace_from(self.id, message_id, [("user", text, False, {})])[0]
        return Reply(self, "edit", question, None, cancel)

    def edit_last_user(self, text: str, cancel: threading.Event | None = None) -> Reply:
        msgs = self.messages()
        last_user = next((m for m in reversed(msgs) if m.role == "user"), None)
        if last_user is None:
            raise ConfigError("there is no message of yours to edit", "send a message first")
        return self.edit(last_user.id, text, cancel)

    def delete_message(self, message_id: int) -> None:
        """Delete one message (the history the model sees skips any turn this breaks)."""
        self._not_answering()
        self._index(self.messages(), message_id)
        self.store.delete_message(message_id)

    # -- internals ----------------------------------------------------------------------------
    def _not_answering(self) -> None:
        """Changing the history while a reply streams would let the reply's save drop the change."""
        if self._lock.locked():
            raise ConfigError("this chat is still answering", "wait for the reply or stop it first")

    def _index(self, msgs: list[StoredMessage], message_id: int) -> int:
        for i, m in enumerate(msgs):
            if m.id == message_id:
                return i
        raise ConfigError(f"message {message_id} is not in this chat", "it may have been deleted")

    def _ready_session(self) -> ChatSession:
        if self._session is None:
            if self._make_session is None:
                raise ConfigError("no model is chosen for this chat", "choose a model first")
            self._session = self._make_session()
        return self._session

    def _stream(self, reply: Reply, cancel: threading.Event | None) -> Iterator[Any]:
        """Ask the session for the reply to the stored history, stream it, and record the outcome.

        The reply is stored *before* its `ReplyDone` is passed on, so a consumer that stops
        reading at `ReplyDone` (as UI workers do) has nothing left pending."""
        from .generation.config import ReplyDone, TextDelta

        if not self._lock.acquire(blocking=False):
            raise ConfigError("this chat is already answering", "wait for the reply or stop it")
        parts: list[str] = []
        error: BaseException | None = None
        events = None
        finished = False

        def finish(done: Any) -> None:
            nonlocal finished
            finished = True
            try:
                if events is not None:
                    events.close()  # release the model now, not when the generator is collected
                self._record(reply, done, "".join(parts), error)
            finally:
                self._lock.release()

        try:
            session = reply.session = self._ready_session()
            msgs = self.messages()
            i = self._index(msgs, reply.question.id)
            history = answered_history(msgs[:i]) + [Message("user", reply.question.content)]
            events = session.reply(history, cancel)
            for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, ReplyDone):
                    finish(event)
                yield event
        except GeneratorExit:
            raise  # the consumer stopped reading: what was streamed is kept (finally)
        except BaseException as e:
            error = e
            raise
        finally:
            if not finished:
                finish(None)

    def _record(self, reply: Reply, done: Any, streamed: str, error: BaseException | None) -> None:
        reply.error = error
        text = done.text if done is not None else streamed
        meta: dict[str, Any] = {}
        if done is not None and done.stats is not None:
            stats = asdict(done.stats) if is_dataclass(done.stats) else dict(vars(done.stats))
            meta = {k: stats[k] for k in STATS_KEPT if k in stats}
        used = getattr(reply.session, "settings_used", None)
        if done is not None and callable(used):
            meta["settings"] = used()
        if error is not None:
            meta["error"] = error_text(error)
        partial = done.cancelled if done is not None else True
        try:
            if text or (done is not None and reply.replaces is None):
                # One transaction: the old reply and everything after the question go, the new
                # reply comes; the question loses any earlier error mark.
                reply.saved = self.store.answer(reply.question.id, text, partial=partial, meta=meta)
            elif error is not None and reply.replaces is None:
                # Nothing to show: the failure is recorded on the question (it keeps no reply).
                self.store.mark_message(reply.question.id, error=meta["error"])
        except StoreError as store_error:
            if error is None:
                raise
            # Both failed: say both (the model's error is the one the user acted on).
            raise StoreError(
                f"{error_text(error)}; and it could not be recorded: {store_error.message}", store_error.hint
            ) from error


def export_chat_json(store: ChatStore, conversation_id: int) -> str:
    """The chat as JSON: Chinese kept readable, and the settings the last reply was made with."""
    data = store.export_json(conversation_id)
    replies = [m.get("meta", {}).get("settings") for m in data["messages"] if m.get("role") == "assistant"]
    used = next((s for s in reversed(replies) if s), None)
    if used is not None:
        data["settings_used"] = used
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
