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
    created = data["messages"][1].pop("created")  # ISO 8601 (test_chat_ux checks its value)
    assert data["messages"][1] == {"role": "assistant", "content": "2", "partial": True} and "T" in created
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


# -- damaged, newer, read-only or full: a StoreError with a hint, and the file is not touched ---------


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_corrupt_file_is_a_clear_error_and_left_alone(tmp_path):
    path = tmp_path / "chats.sqlite3"
    path.write_bytes(b"not a database at all " * 200)
    before = _snapshot(tmp_path)
    with pytest.raises(StoreError, match="damaged") as e:
        ChatStore(path)
    assert "move it away" in e.value.hint
    assert _snapshot(tmp_path) == before, "no byte changed, no -wal/-shm file created"


def test_truncated_database_is_a_clear_error(tmp_path):
    path = tmp_path / "chats.sqlite3"
    s = ChatStore(path)
    c = s.create_conversation("t")
    for i in range(200):
        s.add_message(c.id, "user", "消息" * 100 + str(i))
    s.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(StoreError, match="damaged"):
        s = ChatStore(path)
        s.list_conversations()
        s.messages(c.id)


def test_newer_schema_is_refused_without_touching_the_file(tmp_path):
    path = tmp_path / "new.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = _snapshot(tmp_path)
    with pytest.raises(StoreError, match="schema version") as e:
        ChatStore(path)
    assert "upgrade" in e.value.hint
    assert _snapshot(tmp_path) == before, "the journal mode (in the file header) was not switched to WAL"


def test_bad_json_in_one_row_does_not_hide_the_others(store):
    good = store.create_conversation("good", {"temperature": 0.5})
    bad = store.create_conversation("bad")
    m = store.add_message(bad.id, "user", "hi", meta={"x": 1})
    store._db.execute("UPDATE conversations SET settings='{not json' WHERE id=?", (bad.id,))
    store._db.execute("UPDATE messages SET meta=? WHERE id=?", ("[" * 100_000, m.id))
    assert {c.title: c.settings for c in store.list_conversations()} == {"good": {"temperature": 0.5}, "bad": {}}
    assert [(x.content, x.meta) for x in store.messages(bad.id)] == [("hi", {})]
    assert store.get_conversation(good.id).settings == {"temperature": 0.5}
    store._db.execute("UPDATE conversations SET settings='[1, 2]' WHERE id=?", (good.id,))
    assert store.get_conversation(good.id).settings == {}, "JSON that is not an object reads as empty"


def test_unwritable_home_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("FIREFLY_HOME", str(blocker / "home"))
    with pytest.raises(StoreError, match="cannot create the folder") as e:
        ChatStore()
    assert "FIREFLY_HOME" in e.value.hint


def test_full_disk_is_a_clear_error_and_loses_nothing(store):
    c = store.create_conversation("t")
    store.add_message(c.id, "user", "kept")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL, as on a full disk
    with pytest.raises(StoreError, match="full") as e:
        store.add_message(c.id, "assistant", "很长的回复" * 20_000)
    assert "free some disk space" in e.value.hint
    assert [m.content for m in store.messages(c.id)] == ["kept"]
    store._db.execute("PRAGMA max_page_count = 1073741823")
    store.add_message(c.id, "assistant", "after")  # the store is usable again
    assert [m.content for m in store.messages(c.id)] == ["kept", "after"]


def test_read_only_store_on_add_message(tmp_path):
    path = tmp_path / "chats.sqlite3"
    s = ChatStore(path)
    c = s.create_conversation("t")
    s.add_message(c.id, "user", "kept")
    s.close()
    ro = ChatStore(path)
    ro._db.execute("PRAGMA query_only = ON")  # writes refused as on a read-only file or mount
    with pytest.raises(StoreError, match="read-only") as e:
        ro.add_message(c.id, "assistant", "new")
    assert "writable" in e.value.hint
    assert [m.content for m in ro.messages(c.id)] == ["kept"]
    ro.close()


def test_answer_replaces_everything_after_the_question_in_one_step(store):
    c = store.create_conversation("t")
    q = store.add_message(c.id, "user", "q", meta={"error": "model missing", "keep": 1})
    store.add_message(c.id, "assistant", "old")
    store.add_message(c.id, "user", "later")
    r = store.answer(q.id, "new", meta={"new_tokens": 3})
    msgs = store.messages(c.id)
    assert [(m.role, m.content) for m in msgs] == [("user", "q"), ("assistant", "new")]
    assert msgs[0].meta == {"keep": 1} and msgs[1].id == r.id and msgs[1].meta == {"new_tokens": 3}


def test_another_programs_database_is_refused_untouched(tmp_path):
    path = tmp_path / "chats.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE conversations (something_else TEXT)")
    db.execute("INSERT INTO conversations VALUES ('theirs')")
    db.commit()
    db.close()
    before = _snapshot(tmp_path)
    with pytest.raises(StoreError, match="another program"):
        ChatStore(path)
    assert _snapshot(tmp_path) == before


def test_values_edited_by_hand_into_odd_types_still_read(store):
    c = store.create_conversation("t")
    m = store.add_message(c.id, "user", "x")
    store._db.execute("UPDATE messages SET content=?, meta=? WHERE id=?", ("流萤".encode(), b"\xff", m.id))
    store._db.execute("UPDATE conversations SET title=?, settings=? WHERE id=?", (42, 7, c.id))
    assert [(x.content, x.meta) for x in store.messages(c.id)] == [("流萤", {})]
    assert [(x.title, x.settings) for x in store.list_conversations()] == [("42", {})]


# -- several firefly processes opening one database at once (issue: a migration race) ------------

_OPENERS = 3


def _open_in_rounds(paths, barrier, results) -> None:
    """One process: in each round, wait for the others, then open the store and write to it."""
    from firefly_core.store import ChatStore

    for path in paths:
        barrier.wait()
        try:
            store = ChatStore(path)
            store.add_message(store.create_conversation("opened").id, "user", "hi")
            store.close()
            results.put((path, None))
        except Exception as e:  # noqa: BLE001 - reported to the test
            results.put((path, f"{type(e).__name__}: {e}"))


def _v1_database(path) -> None:
    from firefly_core.store import MIGRATIONS

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    MIGRATIONS[0](db)
    db.execute("INSERT INTO conversations (title, created, updated) VALUES ('kept', 0, 0)")
    db.execute("PRAGMA user_version = 1")
    db.execute("COMMIT")
    db.close()


@pytest.mark.parametrize("start", ["new", "v1"])
def test_processes_opening_one_database_at_once_never_fail(tmp_path, start):
    """Real processes, started together by a barrier, each round on a fresh file: before, one of
    three failed in a few rounds in ten ("table conversations already exists", "duplicate column
    name: partial", "belongs to another program")."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as separate `firefly` runs are
    rounds = 12
    paths = [str(tmp_path / f"round-{i}.sqlite3") for i in range(rounds)]
    if start == "v1":
        for p in paths:
            _v1_database(p)
    barrier, results = ctx.Barrier(_OPENERS), ctx.Queue()
    procs = [ctx.Process(target=_open_in_rounds, args=(paths, barrier, results)) for _ in range(_OPENERS)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in range(rounds * _OPENERS)]
    for p in procs:
        p.join(timeout=60)
    failures = [(path, err) for path, err in got if err]
    assert not failures, failures
    for path in paths:  # every process's write is there, and the old chat too
        store = ChatStore(path)
        titles = sorted(c.title for c in store.list_conversations())
        assert titles == sorted(["opened"] * _OPENERS + (["kept"] if start == "v1" else []))
        assert store.schema_version() == SCHEMA_VERSION
        store.close()
