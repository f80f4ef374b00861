"""Chat history in SQLite: conversations, their messages and per-chat settings.

One database file (`paths.chats_db()`), WAL journal, every write in its own transaction, so a
kill in the middle of a write loses nothing that was already reported as saved. The schema
carries a version (`PRAGMA user_version`) and is brought up to date by ordered migrations when
the store opens, in one exclusive transaction that re-reads the version, so several processes
opening one file at once (the app and `firefly chat` started together) never run a step twice. No UI code here: the app, the CLI and scripts share this module; the rules that
keep a chat's history consistent with the model's session live in `conversation.py`.

Every SQLite failure a user can cause (a damaged or newer file, a read-only file or folder, a full
disk, another program holding the lock) becomes a `StoreError` with a hint; a file this program
cannot use is never written to (the version is read before anything is changed). A damaged JSON
value in one row reads as empty, so one bad row never hides the other chats.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FireflyError


class StoreError(FireflyError):
    """The chat database cannot be opened or is newer than this program."""


def _m1(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            settings TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute(
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX messages_by_conversation ON messages(conversation_id, id)")


def _m2(db: sqlite3.Connection) -> None:
    # v2: a reply can be partial (stopped by the user) and carries its generation stats.
    db.execute("ALTER TABLE messages ADD COLUMN partial INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE messages ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'")


# Migration i (1-based) brings the schema from version i-1 to i. Append only; never edit one.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m1, _m2]
SCHEMA_VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_S = 10.0  # how long a write waits for another process's write to finish


@dataclass
class StoredMessage:
    id: int
    conversation_id: int
    role: str  # "system" | "user" | "assistant"
    content: str
    created: float
    partial: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Conversation:
    id: int
    title: str
    created: float
    updated: float
    settings: dict[str, Any] = field(default_factory=dict)


def _json_obj(text: Any) -> dict[str, Any]:
    """A JSON object column; damaged or non-object JSON (written by hand, by a bug) reads as {}."""
    try:
        value = json.loads(text or "{}")
    except (ValueError, TypeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    """A TEXT column as text: a value edited by hand into a BLOB or a number still reads."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def iso_time(epoch: float) -> str:
    """A stored time as ISO 8601 with its UTC offset (what an export says; readable, sortable)."""
    from datetime import datetime, timezone

    try:
        return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # a damaged row: say what is there
        return str(epoch)


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False)


class ChatStore:
    """The chat database. Thread-safe: one connection guarded by a lock (writes are tiny)."""

    def __init__(self, path: Path | str | None = None) -> None:
        if path is None:
            from .paths import chats_db

            path = chats_db()
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the folder {self.path.parent} for the chat history: {e.strerror or e}",
                "make it writable, or set FIREFLY_HOME to a folder you can write to",
            ) from None
        self._db: sqlite3.Connection | None = None
        with self._errors("open"):
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S
            )
            self._db.row_factory = sqlite3.Row
            # Read first, change nothing: a damaged file fails here (SQLITE_NOTADB) and a newer
            # schema is refused before the journal mode (stored in the file) is touched.
            with self._lock:
                self._db.execute("BEGIN")  # one snapshot: another firefly may be migrating right now
                try:
                    self._check_version()
                finally:
                    self._db.execute("COMMIT")
            self._use_wal()
            # FULL: a transaction reported as committed survives a power cut, not just a kill.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()

    # -- plumbing -----------------------------------------------------------------------------
    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn SQLite's failures into a StoreError that says what to do (nothing was changed)."""
        try:
            yield
        except StoreError:
            if doing == "open":
                self._close_quietly()
            raise
        except sqlite3.Error as e:
            if doing == "open":
                self._close_quietly()
            raise self._store_error(e, doing) from None

    def _store_error(self, e: sqlite3.Error, doing: str) -> StoreError:
        name = getattr(e, "sqlite_errorname", "") or ""
        where = f"the chat database {self.path}"
        if name.startswith("SQLITE_READONLY") or "readonly" in str(e):
            return StoreError(
                f"{where} is read-only, so this could not be saved ({doing})",
                "make the file and its folder writable (nothing was changed)",
            )
        if name.startswith("SQLITE_FULL") or "disk is full" in str(e):
            return StoreError(
                f"the disk holding {where} is full, so this could not be saved ({doing})",
                "free some disk space and try again (nothing was changed)",
            )
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return StoreError(
                f"{where} is busy: another program is writing to it ({doing})",
                "close the other firefly window or command and try again",
            )
        if name.startswith("SQLITE_CANTOPEN"):
            return StoreError(
                f"cannot open {where}: {e}", "check that the file and its folder can be read and written"
            )
        if name.startswith("SQLITE_CONSTRAINT"):
            return StoreError(f"this chat or message no longer exists ({doing})", "open the chat list again")
        if name.startswith("SQLITE_IOERR"):
            return StoreError(
                f"{where} could not be read or written ({e}) while {doing}",
                "check the disk (full, removed, failing?) and try again",
            )
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or "no such" in str(e):
            return StoreError(
                f"{where} is damaged or not a chat database ({e})",
                f"move it away (e.g. rename it to {self.path.name}.bad) to start with an empty history; "
                "firefly has not changed it",
            )
        return StoreError(f"the chat database failed while {doing}: {e}", "try again; if it keeps failing, "
                          f"move {self.path} away to start with an empty history")

    def _close_quietly(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    @contextmanager
    def _tx(self, doing: str = "saving", begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is saved, or none of it."""
        with self._lock, self._errors(doing):
            self._db.execute(begin)
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (disk full) may leave it open
                    self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self, doing: str = "reading") -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(doing):
            yield self._db

    def _check_version(self) -> None:
        version = self.schema_version()
        if version == 0:
            tables = self._db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
            if tables:  # someone else's database: never add our tables to it
                raise StoreError(
                    f"{self.path} is an SQLite database of another program, not a chat history",
                    "point firefly at another file (or set FIREFLY_HOME); that file was not changed",
                )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the chat database {self.path} has schema version {version}, "
                f"this firefly knows up to {SCHEMA_VERSION}",
                "upgrade firefly-tui (pipx upgrade firefly-tui); the file was not changed",
            )

    def _use_wal(self) -> None:
        """Switch the file to WAL (a no-op once it is). The switch needs the file to itself and
        SQLite answers "locked" at once instead of waiting, so wait here, as long as for a write."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                busy = getattr(e, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
                if not (busy or "locked" in str(e)) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)  # another firefly is opening or upgrading the file right now
            delay = min(delay * 2, 0.1)

    def _migrate(self) -> None:
        """Bring the schema up to date, all steps in one exclusive transaction that reads the
        version itself: when several firefly processes open the file at once, the first does the
        work and the others find it done (idempotent), instead of running a step twice."""
        if self.schema_version() == SCHEMA_VERSION:
            return  # the usual case: no write lock taken
        with self._tx("upgrading the chat database", begin="BEGIN EXCLUSIVE") as db:
            self._check_version()  # again, under the lock
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            for i in range(version, SCHEMA_VERSION):
                MIGRATIONS[i](db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        with self._read():
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._close_quietly()

    # -- conversations ------------------------------------------------------------------------
    @staticmethod
    def _conv(row: sqlite3.Row) -> Conversation:
        return Conversation(
            id=row["id"],
            title=_text(row["title"]),
            created=_number(row["created"]),
            updated=_number(row["updated"]),
            settings=_json_obj(row["settings"]),
        )

    @staticmethod
    def _msg(row: sqlite3.Row) -> StoredMessage:
        return StoredMessage(
            id=row["id"],
            conversation_id=row["conversation_id"],
            role=_text(row["role"]),
            content=_text(row["content"]),
            created=_number(row["created"]),
            partial=bool(row["partial"]),
            meta=_json_obj(row["meta"]),
        )

    def create_conversation(self, title: str, settings: dict[str, Any] | None = None) -> Conversation:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO conversations(title, created, updated, settings) VALUES (?,?,?,?)",
                (title, now, now, _dump(settings or {})),
            )
            cid = cur.lastrowid
        return Conversation(cid, title, now, now, dict(settings or {}))

    def get_conversation(self, conversation_id: int) -> Conversation | None:
        with self._read():
            row = self._db.execute(
                "SELECT * FROM conversations WHERE id=?", (conversation_id,)
            ).fetchone()
        return self._conv(row) if row else None

    def list_conversations(self, search: str | None = None) -> list[Conversation]:
        """Newest first. `search` matches titles and message text (case-insensitive substring)."""
        with self._read():
            if search:
                like = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                rows = self._db.execute(
                    """SELECT * FROM conversations c WHERE c.title LIKE ? ESCAPE '\\'
                       OR EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id
                                  AND m.content LIKE ? ESCAPE '\\')
                       ORDER BY c.updated DESC, c.id DESC""",
                    (like, like),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM conversations ORDER BY updated DESC, id DESC"
                ).fetchall()
        return [self._conv(r) for r in rows]

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE conversations SET title=?, updated=? WHERE id=?",
                (title, time.time(), conversation_id),
            )

    def update_settings(self, conversation_id: int, settings: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE conversations SET settings=? WHERE id=?",
                (_dump(settings), conversation_id),
            )

    def delete_conversation(self, conversation_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM conversations WHERE id=?", (conversation_id,))

    # -- messages -----------------------------------------------------------------------------
    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        partial: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> StoredMessage:
        now = time.time()
        meta = meta or {}
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO messages(conversation_id, role, content, created, partial, meta) "
                "VALUES (?,?,?,?,?,?)",
                (conversation_id, role, content, now, int(partial), _dump(meta)),
            )
            db.execute("UPDATE conversations SET updated=? WHERE id=?", (now, conversation_id))
            mid = cur.lastrowid
        return StoredMessage(mid, conversation_id, role, content, now, partial, dict(meta))

    def update_message(
        self,
        message_id: int,
        content: str,
        *,
        partial: bool | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute("UPDATE messages SET content=? WHERE id=?", (content, message_id))
            if partial is not None:
                db.execute("UPDATE messages SET partial=? WHERE id=?", (int(partial), message_id))
            if meta is not None:
                db.execute(
                    "UPDATE messages SET meta=? WHERE id=?",
                    (_dump(meta), message_id),
                )

    def delete_message(self, message_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM messages WHERE id=?", (message_id,))

    def delete_messages_from(self, conversation_id: int, message_id: int) -> None:
        """Delete a message and every later one in its conversation (for regenerate / edit)."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM messages WHERE conversation_id=? AND id>=?",
                (conversation_id, message_id),
            )

    def answer(
        self, question_id: int, text: str, *, partial: bool = False, meta: dict[str, Any] | None = None
    ) -> StoredMessage:
        """Store the reply to a user message in one transaction: every message after the question
        goes (an old reply being replaced, and what followed it), the new reply comes, and the
        question loses any earlier error mark."""
        now = time.time()
        meta = dict(meta or {})
        with self._tx("saving the reply") as db:
            row = db.execute("SELECT conversation_id, meta FROM messages WHERE id=?", (question_id,)).fetchone()
            if row is None:
                raise StoreError("the message being answered was deleted", "send it again")
            cid = row["conversation_id"]
            qmeta = _json_obj(row["meta"])
            if "error" in qmeta:
                qmeta.pop("error")
                db.execute("UPDATE messages SET meta=? WHERE id=?", (_dump(qmeta), question_id))
            db.execute("DELETE FROM messages WHERE conversation_id=? AND id>?", (cid, question_id))
            cur = db.execute(
                "INSERT INTO messages(conversation_id, role, content, created, partial, meta) "
                "VALUES (?,?,?,?,?,?)",
                (cid, "assistant", text, now, int(partial), _dump(meta)),
            )
            db.execute("UPDATE conversations SET updated=? WHERE id=?", (now, cid))
            mid = cur.lastrowid
        return StoredMessage(mid, cid, "assistant", text, now, partial, meta)

    def mark_message(self, message_id: int, **changes: Any) -> None:
        """Merge `changes` into a message's meta (e.g. error="..."; a value of None removes a key)."""
        with self._tx() as db:
            row = db.execute("SELECT meta FROM messages WHERE id=?", (message_id,)).fetchone()
            if row is None:
                return
            meta = _json_obj(row["meta"])
            for key, value in changes.items():
                if value is None:
                    meta.pop(key, None)
                else:
                    meta[key] = value
            db.execute("UPDATE messages SET meta=? WHERE id=?", (_dump(meta), message_id))

    def replace_from(
        self, conversation_id: int, message_id: int, new: list[tuple[str, str, bool, dict[str, Any]]]
    ) -> list[StoredMessage]:
        """In one transaction, delete a message and every later one and append `new` messages
        (role, content, partial, meta): an edit is saved whole or not at all."""
        now = time.time()
        out: list[StoredMessage] = []
        with self._tx("saving the edit") as db:
            db.execute("DELETE FROM messages WHERE conversation_id=? AND id>=?", (conversation_id, message_id))
            for role, content, partial, meta in new:
                cur = db.execute(
                    "INSERT INTO messages(conversation_id, role, content, created, partial, meta) "
                    "VALUES (?,?,?,?,?,?)",
                    (conversation_id, role, content, now, int(partial), _dump(meta)),
                )
                out.append(StoredMessage(cur.lastrowid, conversation_id, role, content, now, partial, dict(meta)))
            db.execute("UPDATE conversations SET updated=? WHERE id=?", (now, conversation_id))
        return out

    def fork_conversation(self, conversation_id: int, message_id: int, title: str) -> int:
        """In one transaction, a new chat with `conversation_id`'s settings and its messages up to
        and including `message_id` (content, partial mark, meta, times kept). Returns its id."""
        now = time.time()
        with self._tx("forking the chat") as db:
            row = db.execute("SELECT settings FROM conversations WHERE id=?", (conversation_id,)).fetchone()
            if row is None:
                raise StoreError(f"there is no chat {conversation_id}", "it may have been deleted")
            cur = db.execute(
                "INSERT INTO conversations(title, created, updated, settings) VALUES (?,?,?,?)",
                (title, now, now, row["settings"]),
            )
            new_id = cur.lastrowid
            db.execute(
                "INSERT INTO messages(conversation_id, role, content, created, partial, meta) "
                "SELECT ?, role, content, created, partial, meta FROM messages "
                "WHERE conversation_id=? AND id<=? ORDER BY id",
                (new_id, conversation_id, message_id),
            )
        return new_id

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        with self._read():
            rows = self._db.execute(
                "SELECT * FROM messages WHERE conversation_id=? ORDER BY id", (conversation_id,)
            ).fetchall()
        return [self._msg(r) for r in rows]

    # -- export -------------------------------------------------------------------------------
    def export_json(self, conversation_id: int) -> dict[str, Any]:
        conv = self.get_conversation(conversation_id)
        if conv is None:
            raise StoreError(f"no conversation {conversation_id}")
        return {
            "title": conv.title,
            "created": iso_time(conv.created),
            "settings": conv.settings,
            "messages": [
                {"role": m.role, "content": m.content, "partial": m.partial, "created": iso_time(m.created),
                 **({"meta": m.meta} if m.meta else {})}
                for m in self.messages(conversation_id)
            ],
        }

    def export_markdown(self, conversation_id: int, *, labels: dict[str, str] | None = None) -> str:
        data = self.export_json(conversation_id)
        labels = labels or {"user": "User", "assistant": "Assistant", "system": "System", "partial": "stopped"}
        out = [f"# {data['title']}", ""]
        system = data["settings"].get("system")
        if system:
            out += [f"**{labels['system']}:** {system}", ""]
        for m in data["messages"]:
            mark = f" _({labels.get('partial', 'stopped')})_" if m["partial"] else ""
            out += [f"## {labels.get(m['role'], m['role'])}{mark}", "", m["content"], ""]
        return "\n".join(out).rstrip() + "\n"
