"""The SQLite chat store: CRUD, search, migrations, export, and durability under a hard kill."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from firefly_core.store import SCHEMA_VERSION, ChatStore, StoreError


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


def test_create_list_rename_delete(store):
    a = store.create_conversation("第一次对话", {"temperature": 0.5})
    b = store.create_conversation("second")
    assert [c.id for c in store.list_conversations()] == [b.id, a.id]
    store.add_message(a.id, "user", "你好")
    # a conversation with a new message moves to the top
    assert store.list_conversations()[0].id == a.id
    store.rename_conversation(b.id, "重命名")
    assert store.get_conversation(b.id).title == "重命名"
    assert store.get_conversation(a.id).settings == {"temperature": 0.5}
    store.delete_conversation(a.id)
    assert [c.id for c in store.list_conversations()] == [b.id]
    assert store.messages(a.id) == []  # messages went with it (cascade)


def test_messages_partial_meta_and_truncation(store):
    c = store.create_conversation("t")
    u = store.add_message(c.id, "user", "写一首诗")
    r = store.add_message(c.id, "assistant", "")
    store.update_message(r.id, "床前明月光", partial=True, meta={"tokens_per_s": 12.5})
    msgs = store.messages(c.id)
    assert [(m.role, m.content, m.partial) for m in msgs] == [
        ("user", "写一首诗", False),
        ("assistant", "床前明月光", True),
    ]
    assert msgs[1].meta == {"tokens_per_s": 12.5}
    store.delete_messages_from(c.id, r.id)
    assert [m.id for m in store.messages(c.id)] == [u.id]


def test_search_titles_and_content_with_wildcards(store):
    a = store.create_conversation("关于猫")
    b = store.create_conversation("dogs")
    store.add_message(b.id, "user", "50% off_sale")
    assert [c.id for c in store.list_conversations("猫")] == [a.id]
    assert [c.id for c in store.list_conversations("DOGS")] == [b.id]
    assert [c.id for c in store.list_conversations("50%")] == [b.id]
    assert store.list_conversations("5_%") == []  # _ and % are literal, not wildcards


def test_export_markdown_and_json(store):
    c = store.create_conversation("导出", {"system": "你是助手"})
    store.add_message(c.id, "user", "1+1=?")
    store.add_message(c.id, "assistant", "2", partial=True)
    md = store.export_markdown(c.id)
    assert md.startswith("# 导出\n")
    assert "**System:** 你是助手" in md
    assert "## Assistant _(stopped)_" in md
    data = store.export_json(c.id)
    assert data["messages"][1] == {"role": "assistant", "content": "2", "partial": True}
    json.dumps(data)


def test_schema_version_and_migration_from_v1(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    # a version-1 database as the first release wrote it
    db.executescript(
        """CREATE TABLE conversations (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL,
           created REAL NOT NULL, updated REAL NOT NULL, settings TEXT NOT NULL DEFAULT '{}');
           CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
           conversation_id INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
           created REAL NOT NULL);
           INSERT INTO conversations VALUES (1, 'old', 0, 0, '{}');
           INSERT INTO messages VALUES (1, 1, 'user', 'kept', 0);
           PRAGMA user_version = 1;"""
    )
    db.close()
    s = ChatStore(path)
    assert s.schema_version() == SCHEMA_VERSION
    [m] = s.messages(1)
    assert (m.content, m.partial, m.meta) == ("kept", False, {})
    s.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.close()
    with pytest.raises(StoreError, match="schema version"):
        ChatStore(path)


def test_failed_transaction_leaves_nothing(store):
    c = store.create_conversation("t")
    with pytest.raises(StoreError, match="no longer exists"):
        store.add_message(c.id + 100, "user", "orphan")  # foreign key violation: a clear error
    assert store.messages(c.id + 100) == []


def test_wal_mode(store):
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_hard_kill_loses_nothing_reported_saved(tmp_path):
    """A writer killed with SIGKILL mid-stream: every message it reported as saved is there."""
    path = tmp_path / "kill.sqlite3"
    code = textwrap.dedent(
        f"""
        import sys
        from firefly_core.store import ChatStore
        s = ChatStore({str(path)!r})
        c = s.create_conversation("kill")
        i = 0
        while True:
            m = s.add_message(c.id, "user", "消息" * 50 + str(i))
            print(m.id, flush=True)
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    saved = []
    deadline = time.monotonic() + 30
    while len(saved) < 50 and time.monotonic() < deadline:
        saved.append(int(proc.stdout.readline()))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    s = ChatStore(path)
    ids = {m.id for m in s.messages(1)}
    assert set(saved) <= ids
    s.close()
