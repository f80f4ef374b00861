"""Conversation: the store and the session stay consistent through every operation and failure.

Oracle: each stored reply equals what a fresh ChatSession (greedy) produces for the history the
store says the model saw. Failures are real: a model whose decoder raises mid-reply, a model folder
that is gone, a process killed between the question and its reply, SQLite refusing writes.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from firefly_core.session import ChatSession
from firefly_core.conversation import Conversation, answered_history
from firefly_core.errors import ConfigError, ModelNotFoundError
from firefly_core.formats import Message
from firefly_core.generation import Decoder, GenerationConfig, ModelDecoder, ReplyDone, TextDelta
from firefly_core.models.loading import load_model
from firefly_core.store import ChatStore, StoreError

GREEDY = GenerationConfig(do_sample=False, max_new_tokens=8)


class FailingDecoder(Decoder):
    """The real decoder of the model, raising on forward pass number `fail_at` (1 = the prefill)."""

    def __init__(self, model, fail_at: int):
        self.inner = ModelDecoder(model)
        self.fail_at = fail_at
        self.calls = 0

    def __getattr__(self, name):  # everything else the loop asks of a decoder (vocab_size, device...)
        return getattr(self.inner, name)

    def new_cache(self):
        return self.inner.new_cache()

    def forward(self, ids, cache, every_position=False):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("the device fell off the bus")
        return self.inner.forward(ids, cache, every_position)


@pytest.fixture(scope="module")
def base_lm(bloom_dir):
    return load_model(bloom_dir, dtype="fp32", device="cpu")


@pytest.fixture
def lm(base_lm, one_torch_thread):
    fresh = dataclasses.replace(base_lm)
    fresh.__dict__.pop("decoder", None)
    return fresh


def failing_lm(lm, fail_at):
    bad = dataclasses.replace(lm)
    bad.decoder = FailingDecoder(lm.model, fail_at)
    return bad


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


def oracle(lm, history: list[Message], question: str, config=GREEDY) -> str:
    """The reply a fresh session gives to `question` after `history`."""
    events = list(ChatSession(lm, config=config).reply([*history, Message("user", question)]))
    return events[-1].text


def run(reply) -> list:
    return list(reply)


def rows(store, cid):
    return [(m.role, m.content) for m in store.messages(cid)]


def test_send_streams_the_session_events_and_stores_each_turn(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(lm, config=GREEDY))
    first = conv.send("你好")
    assert first.question.content == "你好" and rows(store, conv.id) == [("user", "你好")], "saved before the reply"
    events = run(first)
    assert all(isinstance(e, TextDelta) for e in events[:-1]) and isinstance(events[-1], ReplyDone)
    assert "".join(e.text for e in events[:-1]) == events[-1].text == oracle(lm, [], "你好")
    run(conv.send("再说一遍"))
    a1 = events[-1].text
    expected = oracle(lm, [Message("user", "你好"), Message("assistant", a1)], "再说一遍")
    assert rows(store, conv.id) == [("user", "你好"), ("assistant", a1), ("user", "再说一遍"), ("assistant", expected)]
    saved = store.messages(conv.id)[-1]
    assert saved.meta["new_tokens"] >= 1 and saved.meta["stop_reason"] and "error" not in saved.meta


def test_model_raising_before_any_text_is_recorded_and_the_chat_goes_on(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(failing_lm(lm, 1), config=GREEDY))
    reply = conv.send("第一个问题")
    with pytest.raises(RuntimeError, match="fell off"):
        run(reply)
    [question] = store.messages(conv.id)
    assert question.role == "user" and "fell off" in question.meta["error"] and reply.saved is None
    assert conv.history() == []
    # a new message is answered as if the failed one were not there
    conv.set_session(ChatSession(lm, config=GREEDY))
    run(conv.send("第二个问题"))
    assert rows(store, conv.id)[1:] == [("user", "第二个问题"), ("assistant", oracle(lm, [], "第二个问题"))]
    # ... and the failed one can still be answered: retry drops what followed it, clears the mark
    run(conv.retry_from(question.id))
    msgs = store.messages(conv.id)
    assert [(m.role, m.content) for m in msgs] == [("user", "第一个问题"), ("assistant", oracle(lm, [], "第一个问题"))]
    assert "error" not in msgs[0].meta


def test_model_raising_mid_reply_keeps_the_text_as_a_partial_reply(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(failing_lm(lm, 6), config=GREEDY))
    reply = conv.send("写一首诗")
    shown = []
    with pytest.raises(RuntimeError):
        for event in reply:
            shown.append(event.text)
    assert shown, "the decoder failed only after a few tokens"
    question, answer = store.messages(conv.id)
    assert answer.content == "".join(shown) and answer.partial and "fell off" in answer.meta["error"]
    assert reply.saved.id == answer.id
    assert conv.history() == [Message("user", "写一首诗"), Message("assistant", "".join(shown))]
    # regenerate replaces the broken reply
    conv.set_session(ChatSession(lm, config=GREEDY))
    run(conv.regenerate())
    assert rows(store, conv.id) == [("user", "写一首诗"), ("assistant", oracle(lm, [], "写一首诗"))]
    assert not store.messages(conv.id)[1].partial


def test_missing_model_folder_is_recorded_then_answered_when_a_model_is_back(store, lm, tmp_path):
    gone = tmp_path / "moved-away"
    conv = Conversation.create(store, "t", session=lambda: ChatSession(load_model(gone), config=GREEDY))
    with pytest.raises(ModelNotFoundError):
        run(conv.send("你好"))
    [question] = store.messages(conv.id)
    assert "no model folder" in question.meta["error"] and str(gone) in question.meta["error"]
    conv.set_session(lambda: ChatSession(lm, config=GREEDY))
    run(conv.regenerate())  # answers the unanswered message
    assert rows(store, conv.id) == [("user", "你好"), ("assistant", oracle(lm, [], "你好"))]
    assert "error" not in store.messages(conv.id)[0].meta


def test_regenerate_keeps_the_old_reply_until_the_new_one_has_text(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(lm, config=GREEDY))
    run(conv.send("你好"))
    old = store.messages(conv.id)[1]
    # a failed regenerate changes nothing
    conv.set_session(ChatSession(failing_lm(lm, 1), config=GREEDY))
    with pytest.raises(RuntimeError):
        run(conv.regenerate())
    assert store.messages(conv.id) == [store.messages(conv.id)[0], old]
    # while the new reply streams, the old one is still what the store holds
    longer = GenerationConfig(do_sample=False, max_new_tokens=12)
    conv.set_session(ChatSession(lm, config=longer))
    reply = conv.regenerate()
    assert reply.replaces.id == old.id
    first = next(reply)
    assert isinstance(first, TextDelta) and store.messages(conv.id)[1] == old
    run(reply)
    assert rows(store, conv.id) == [("user", "你好"), ("assistant", oracle(lm, [], "你好", longer))]
    assert store.messages(conv.id)[1].id != old.id


def test_edit_replaces_the_message_and_what_followed_then_answers(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(lm, config=GREEDY))
    run(conv.send("one"))
    run(conv.send("two"))
    first_user = store.messages(conv.id)[0]
    reply = conv.edit(first_user.id, "一")
    assert rows(store, conv.id) == [("user", "一")], "the edit and the drop are one step"
    run(reply)
    assert rows(store, conv.id) == [("user", "一"), ("assistant", oracle(lm, [], "一"))]
    with pytest.raises(ConfigError, match="only your own"):
        conv.edit(store.messages(conv.id)[1].id, "x")


def test_edit_is_atomic_when_the_write_fails_halfway(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(lm, config=GREEDY))
    run(conv.send("one"))
    before = store.messages(conv.id)
    # SQLite itself refuses the insert that follows the delete (as a full disk would)
    store._db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.content = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(StoreError):
        conv.edit(before[0].id, "boom")
    assert store.messages(conv.id) == before


def test_retry_from_a_middle_message_drops_what_followed_once_there_is_text(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(lm, config=GREEDY))
    for text in ("a", "b", "c"):
        run(conv.send(text))
    msgs = store.messages(conv.id)
    # from a user message: answer it again
    reply = conv.retry_from(msgs[2].id)
    assert next(reply) and len(store.messages(conv.id)) == 6, "nothing dropped before the new reply"
    run(reply)
    h1 = [Message("user", "a"), Message("assistant", msgs[1].content)]
    assert rows(store, conv.id) == [*((m.role, m.content) for m in h1), ("user", "b"), ("assistant", oracle(lm, h1, "b"))]
    # from a reply: produce that reply again
    conv.set_session(ChatSession(lm, config=GenerationConfig(do_sample=False, max_new_tokens=3)))
    run(conv.retry_from(store.messages(conv.id)[1].id))
    short = GenerationConfig(do_sample=False, max_new_tokens=3)
    assert rows(store, conv.id) == [("user", "a"), ("assistant", oracle(lm, [], "a", short))]


def test_delete_one_message_and_the_history_skips_the_broken_turn(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(lm, config=GREEDY))
    run(conv.send("a"))
    run(conv.send("b"))
    msgs = store.messages(conv.id)
    conv.delete_message(msgs[0].id)  # the reply to "a" now has no question
    assert conv.history() == [Message("user", "b"), Message("assistant", msgs[3].content)]
    run(conv.send("c"))
    assert store.messages(conv.id)[-1].content == oracle(lm, conv.history()[:2], "c")
    with pytest.raises(ConfigError, match="not in this chat"):
        conv.delete_message(msgs[0].id)


def test_stopped_reply_is_kept_partial(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(lm, config=GREEDY))
    cancel = threading.Event()
    reply = conv.send("你好", cancel)
    shown = []
    for event in reply:
        if isinstance(event, TextDelta):
            shown.append(event.text)
            cancel.set()
    assert event.cancelled and store.messages(conv.id)[1].partial
    assert store.messages(conv.id)[1].content == event.text == "".join(shown)


def test_consumer_stopping_early_saves_what_it_showed(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(lm, config=GREEDY))
    reply = conv.send("你好")
    first = next(reply)
    reply.close()
    [_, answer] = store.messages(conv.id)
    assert answer.content == first.text and answer.partial
    run(conv.send("again"))  # not stuck: the lock was released


def test_read_only_store_refuses_before_generating_and_loses_nothing(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(lm, config=GREEDY))
    run(conv.send("a"))
    before = store.messages(conv.id)
    store._db.execute("PRAGMA query_only=ON")  # what a read-only file or mount does to writes
    with pytest.raises(StoreError, match="read-only") as e:
        conv.send("b")
    assert e.value.hint
    assert store.messages(conv.id) == before


def test_reply_that_cannot_be_saved_says_so(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(lm, config=GREEDY))
    reply = conv.send("a")
    store._db.execute("PRAGMA query_only=ON")
    with pytest.raises(StoreError, match="read-only"):
        run(reply)
    store._db.execute("PRAGMA query_only=OFF")
    assert rows(store, conv.id) == [("user", "a")]
    run(conv.regenerate())  # and once the store is writable again, the chat goes on
    assert rows(store, conv.id) == [("user", "a"), ("assistant", oracle(lm, [], "a"))]


def test_killed_between_the_question_and_its_reply_then_reopened(tmp_path, bloom_dir, base_lm, one_torch_thread):
    db = tmp_path / "chats.sqlite3"
    code = textwrap.dedent(
        f"""
        import os, signal, dataclasses
        from firefly_core.session import ChatSession
        from firefly_core.conversation import Conversation
        from firefly_core.generation import Decoder, GenerationConfig, ModelDecoder
        from firefly_core.models.loading import load_model
        from firefly_core.store import ChatStore

        lm = load_model({str(bloom_dir)!r}, dtype="fp32", device="cpu")
        inner = ModelDecoder(lm.model)
        class KillingDecoder(Decoder):
            calls = 0
            def __getattr__(self, name):
                return getattr(inner, name)
            def new_cache(self):
                return inner.new_cache()
            def forward(self, ids, cache, every_position=False):
                KillingDecoder.calls += 1
                if KillingDecoder.calls == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                return inner.forward(ids, cache, every_position)
        lm.decoder = KillingDecoder()
        conv = Conversation.create(ChatStore({str(db)!r}), "t", session=ChatSession(lm, config=GenerationConfig(do_sample=False, max_new_tokens=8)))
        for event in conv.send("你好"):
            pass
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    store = ChatStore(db)
    [conv_row] = store.list_conversations()
    conv = Conversation(store, conv_row.id, ChatSession(base_lm, config=GREEDY))
    assert rows(store, conv.id) == [("user", "你好")] and conv.history() == []
    run(conv.send("还在吗"))  # the chat is usable at once
    assert rows(store, conv.id)[-1] == ("assistant", oracle(base_lm, [], "还在吗"))
    run(conv.retry_from(store.messages(conv.id)[0].id))  # and the interrupted question can be answered
    assert rows(store, conv.id) == [("user", "你好"), ("assistant", oracle(base_lm, [], "你好"))]
    store.close()


def test_answered_history_rule():
    from firefly_core.store import StoredMessage

    def m(i, role, text):
        return StoredMessage(i, 1, role, text, 0.0)

    msgs = [m(1, "user", "lost"), m(2, "user", "q"), m(3, "assistant", "r"), m(4, "assistant", "orphan"), m(5, "user", "open")]
    assert answered_history(msgs) == [Message("user", "q"), Message("assistant", "r")]


def test_unknown_chat_and_empty_message_are_clear_errors(store, lm):
    with pytest.raises(StoreError, match="no chat"):
        Conversation(store, 999)
    conv = Conversation.create(store, "t")
    with pytest.raises(ConfigError, match="empty"):
        conv.send("   ")
    with pytest.raises(ConfigError, match="no model"):
        run(conv.send("hi"))


def test_a_failure_before_the_stream_is_recorded_with_fail(store, lm, tmp_path):
    """A front end that loads the model itself (through the model service) before iterating records
    a load failure on the question the same way."""
    from firefly_core.models.loading import load_model as load

    conv = Conversation.create(store, "t", session=ChatSession(lm, config=GREEDY))
    reply = conv.send("你好")
    try:
        load(tmp_path / "gone")
    except ModelNotFoundError as e:
        reply.fail(e)
    [question] = store.messages(conv.id)
    assert "no model folder" in question.meta["error"] and reply.error is not None
    with pytest.raises(RuntimeError):
        reply.fail(reply.error)
    run(conv.regenerate())  # and the chat goes on
    assert rows(store, conv.id) == [("user", "你好"), ("assistant", oracle(lm, [], "你好"))]


def test_no_change_to_the_history_while_a_reply_streams(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(lm, config=GREEDY))
    run(conv.send("a"))
    reply = conv.regenerate()
    next(reply)
    before = store.messages(conv.id)
    for change in (lambda: conv.send("b"), conv.regenerate, lambda: conv.edit(before[0].id, "x"),
                   lambda: conv.delete_message(before[1].id)):
        with pytest.raises(ConfigError, match="still answering"):
            change()
    assert store.messages(conv.id) == before
    run(reply)
    run(conv.send("b"))  # free again once the reply is done
    assert [m.role for m in store.messages(conv.id)] == ["user", "assistant", "user", "assistant"]
