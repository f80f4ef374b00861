"""Chat history in SQLite: conversations, their messages and per-chat settings.

One database file (`paths.chats_db()`), WAL journal, every write in its own transaction, so a
kill in the middle of a write loses nothing that was already reported as saved. The schema
carries a version (`PRAGMA user_version`) and is brought up to date by ordered migrations when
the store opens. No UI code here: the app, the CLI and scripts share this module.
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


class ChatStore:
    """The chat database. Thread-safe: one connection guarded by a lock (writes are tiny)."""

    def __init__(self, path: Path | str | None = None) -> None:
        if path is None:
            from .paths import chats_db

            path = chats_db()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a transaction reported as committed survives a power cut, not just a kill.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"cannot open the chat database {self.path}: {e}",
                "move the file away to start with an empty history",
            ) from None

    # -- plumbing -----------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is saved, or none of it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the chat database {self.path} has schema version {version}, "
                f"this firefly knows up to {SCHEMA_VERSION}",
                "upgrade firefly-tui",
            )
        for i in range(version, SCHEMA_VERSION):
            with self._tx() as db:
                MIGRATIONS[i](db)
                db.execute(f"PRAGMA user_version = {i + 1}")

    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- conversations ------------------------------------------------------------------------
    @staticmethod
    def _conv(row: sqlite3.Row) -> Conversation:
        return Conversation(
            id=row["id"],
            title=row["title"],
            created=row["created"],
            updated=row["updated"],
            settings=json.loads(row["settings"] or "{}"),
        )

    @staticmethod
    def _msg(row: sqlite3.Row) -> StoredMessage:
        return StoredMessage(
            id=row["id"],
            conversation_id=row["conversation_id"],
            role=row["role"],
            content=row["content"],
            created=row["created"],
            partial=bool(row["partial"]),
            meta=json.loads(row["meta"] or "{}"),
        )

    def create_conversation(self, title: str, settings: dict[str, Any] | None = None) -> Conversation:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO conversations(title, created, updated, settings) VALUES (?,?,?,?)",
                (title, now, now, json.dumps(settings or {}, ensure_ascii=False)),
            )
            cid = cur.lastrowid
        return Conversation(cid, title, now, now, dict(settings or {}))

    def get_conversation(self, conversation_id: int) -> Conversation | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM conversations WHERE id=?", (conversation_id,)
            ).fetchone()
        return self._conv(row) if row else None

    def list_conversations(self, search: str | None = None) -> list[Conversation]:
        """Newest first. `search` matches titles and message text (case-insensitive substring)."""
        with self._lock:
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
                (json.dumps(settings, ensure_ascii=False), conversation_id),
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
                (conversation_id, role, content, now, int(partial), json.dumps(meta, ensure_ascii=False)),
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
                    (json.dumps(meta, ensure_ascii=False), message_id),
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

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        with self._lock:
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
            "created": conv.created,
            "settings": conv.settings,
            "messages": [
                {"role": m.role, "content": m.content, "partial": m.partial, **({"meta": m.meta} if m.meta else {})}
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
