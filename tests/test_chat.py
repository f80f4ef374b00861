"""ChatSession: multi-turn KV-prefix reuse is exact, truncation, regenerate/edit/reset, cancel.

The session owns the KV cache, not the history: each test keeps its history itself (a list, or a
`Conversation` over a real store where regenerate/edit are the verbs under test)."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from firefly_core.conversation import Conversation
from firefly_core.session import ChatSession
from firefly_core.store import ChatStore
from firefly_core.errors import ConfigError
from firefly_core.formats import Message
from firefly_core.generation import Decoder, GenerationConfig, ModelDecoder, ReplyDone, TextDelta, generate_stream
from firefly_core.models.loading import load_model

TURNS = ["你好，请介绍一下你自己。", "Write a short poem about fireflies.", "把上面的诗翻译成中文：萤火虫"]


class RecordingDecoder(Decoder):
    """The default decoder, keeping the logits of every forward pass."""

    def __init__(self, model):
        self.inner = ModelDecoder(model)
        self.vocab_size, self.device = self.inner.vocab_size, self.inner.device
        self.logits: list[torch.Tensor] = []

    def new_cache(self):
        return self.inner.new_cache()

    def forward(self, ids, cache, every_position=False):
        out = self.inner.forward(ids, cache, every_position)
        self.logits.append(out.clone())
        return out


@pytest.fixture(scope="module")
def loaded(bloom_dir, qwen_dir):
    return {
        "bloom": load_model(bloom_dir, dtype="fp32", device="cpu"),
        "qwen2": load_model(qwen_dir, dtype="fp32", device="cpu"),
    }


def _fresh_lm(loaded, family, **changes):
    """A LoadedModel sharing the weights, without a memoized decoder (tests attach their own)."""
    lm = dataclasses.replace(loaded[family], **changes)
    lm.__dict__.pop("decoder", None)
    return lm


def _run(events):
    events = list(events)
    assert isinstance(events[-1], ReplyDone)
    assert "".join(e.text for e in events[:-1]) == events[-1].text
    return events[-1]


def _talk(session, history, text, cancel=None):
    """Ask `session` to answer `text` after `history`; the turn is added to `history`."""
    history.append(Message("user", text))
    done = _run(session.reply(history, cancel))
    history.append(Message("assistant", done.text))
    return done


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_three_turns_with_prefix_reuse_equal_fresh_prefill(loaded, family):
    lm = _fresh_lm(loaded, family)
    lm.decoder = RecordingDecoder(lm.model)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=12)
    session = ChatSession(lm, system="你是一个乐于助人的助手。", config=cfg)
    history: list[Message] = []
    previous_prompt = 0
    for i, text in enumerate(TURNS):
        start = len(lm.decoder.logits)
        done = _talk(session, history, text)
        reused_logits = lm.decoder.logits[start:]
        # the same prompt, prefilled from scratch
        _, ids = ChatSession(lm, system=session.system, config=cfg).prompt_ids(history[:-1])
        fresh_dec = RecordingDecoder(lm.model)
        fresh = _run(generate_stream(lm, ids, cfg, decoder=fresh_dec))
        assert done.text == fresh.text
        assert done.stats.new_tokens == fresh.stats.new_tokens
        assert len(reused_logits) == len(fresh_dec.logits)
        for a, b in zip(reused_logits, fresh_dec.logits):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        if i == 0:
            assert done.stats.reused_tokens == 0
        else:  # at least the whole previous prompt came from the cache
            assert done.stats.reused_tokens >= previous_prompt
        previous_prompt = done.stats.prompt_tokens


def test_reuse_covers_the_previous_reply_when_it_retokenizes_the_same(loaded):
    """Random tiny models emit byte soup that re-encodes differently; with a real reply (text that
    encodes to the ids that were generated), everything before the new message is reused."""
    lm = _fresh_lm(loaded, "qwen2")
    tok = lm.tokenizer
    session = ChatSession(lm, config=GenerationConfig(do_sample=False, max_new_tokens=12))
    history: list[Message] = []
    _talk(session, history, TURNS[0])
    # Pretend the model said a canonical reply: put its ids in the cache as if generated.
    reply = "我是萤火虫，很高兴认识你。"
    history[-1] = Message("assistant", reply)
    _, ids = ChatSession(lm).prompt_ids(history[:1])
    reply_ids = tok.encode(reply, add_special_tokens=False)
    list(generate_stream(lm, ids + reply_ids, GenerationConfig(do_sample=False, max_new_tokens=1),
                         prefix_cache=session._prefix))
    second = _talk(session, history, TURNS[1])
    _, full = ChatSession(lm).prompt_ids(history[:3])
    assert full[: len(ids) + len(reply_ids)] == ids + reply_ids
    assert second.stats.prompt_tokens == len(full)
    # everything up to the end of the reply came from the cache; only the rest was prefilled
    assert second.stats.reused_tokens == len(ids) + len(reply_ids)


def test_truncation_drops_whole_old_turns(loaded):
    lm = _fresh_lm(loaded, "bloom", context_length=90)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=10)
    session = ChatSession(lm, system="sys", config=cfg)
    history: list[Message] = []
    for text in TURNS * 2:
        done = _talk(session, history, text)
        assert done.stats.prompt_tokens <= 90 - 10
    assert len(history) == 12  # the caller keeps the whole history; only the prompt is cut
    kept, ids = session.prompt_ids(history + [Message("user", "again")])
    assert kept[0] == Message("system", "sys")
    assert kept[-1] == Message("user", "again") and len(kept) < 13
    assert [m.role for m in kept[1:]] == ["user", "assistant"] * ((len(kept) - 2) // 2) + ["user"]
    assert len(ids) <= 80


def test_regenerate_edit_and_reset(loaded, tmp_path):
    """The history verbs are the Conversation's; the session they ask reuses its cache for them."""
    lm = _fresh_lm(loaded, "qwen2")
    cfg = GenerationConfig(do_sample=False, max_new_tokens=10)
    session = ChatSession(lm, config=cfg)
    store = ChatStore(tmp_path / "chats.sqlite3")
    conv = Conversation.create(store, "t", session=session)
    first = _run(conv.send(TURNS[1]))
    again = _run(conv.regenerate())
    assert again.text == first.text and len(conv.messages()) == 2
    assert again.stats.reused_tokens == again.stats.prompt_tokens - 1
    edited = _run(conv.edit_last_user(TURNS[2]))
    assert conv.history() == [Message("user", TURNS[2]), Message("assistant", edited.text)]
    session.reset()  # a new chat with the same session: nothing cached, the same reply
    other = Conversation.create(store, "u", session=session)
    redone = _run(other.send(TURNS[1]))
    assert redone.text == first.text and redone.stats.reused_tokens == 0
    store.close()


def test_seeded_sessions_repeat(loaded):
    lm = _fresh_lm(loaded, "bloom")

    def talk():
        s, history = ChatSession(lm, config=GenerationConfig(seed=7, temperature=1.0, max_new_tokens=15)), []
        return [_talk(s, history, t).text for t in TURNS[:2]]

    assert talk() == talk()


def test_cancel_ends_with_the_partial_reply_and_the_session_goes_on(loaded):
    lm = _fresh_lm(loaded, "bloom")
    session = ChatSession(lm, config=GenerationConfig(do_sample=False, max_new_tokens=100))
    cancel = threading.Event()
    events = []
    history = [Message("user", TURNS[1])]
    for event in session.reply(history, cancel):
        events.append(event)
        if isinstance(event, TextDelta):
            cancel.set()
    done = events[-1]
    assert done.cancelled and done.text
    history.append(Message("assistant", done.text))
    assert _talk(session, history, TURNS[0]).stats.reused_tokens > 0


def test_consumer_stopping_early_releases_the_model(loaded):
    lm = _fresh_lm(loaded, "bloom")
    session = ChatSession(lm, config=GenerationConfig(do_sample=False, max_new_tokens=50))
    stream = session.reply([Message("user", TURNS[1])])
    next(stream)
    assert lm.generation_lock.locked()  # one generation at a time per model, held while it streams
    stream.close()
    assert not lm.generation_lock.locked()
    with pytest.raises(ConfigError, match="no message to answer"):
        list(session.reply([]))
    assert _run(session.reply([Message("user", TURNS[0])])).text


def test_prompt_too_long_is_refused_before_generating(loaded):
    from firefly_core.errors import PromptTooLongError

    lm = _fresh_lm(loaded, "bloom", context_length=40)
    session = ChatSession(lm, config=GenerationConfig(max_new_tokens=10))
    with pytest.raises(PromptTooLongError):
        list(session.reply([Message("user", "很长的消息" * 20)]))
    assert not lm.generation_lock.locked()


def test_warm_prefills_a_loaded_conversation(loaded):
    lm = _fresh_lm(loaded, "qwen2")
    history = [Message("user", TURNS[0]), Message("assistant", "我是萤火虫。"), Message("user", TURNS[1]),
               Message("assistant", "Fireflies glow at night.")]
    session = ChatSession(lm, system="sys", config=GenerationConfig(do_sample=False, max_new_tokens=5))
    cached = session.warm(history)
    warm_ids = list(session._prefix.ids)
    assert cached == 0 and session.warm(history) == len(warm_ids)  # the second warm is free
    done = _run(session.reply(history + [Message("user", TURNS[2])]))
    _, prompt = ChatSession(lm, system="sys").prompt_ids(history + [Message("user", TURNS[2])])
    assert prompt[: len(warm_ids)] == warm_ids  # the warmed history is a prefix of the next prompt
    assert done.stats.reused_tokens == len(warm_ids)
    fresh = _run(ChatSession(lm, system="sys", config=session.config).reply(history + [Message("user", TURNS[2])]))
    assert done.text == fresh.text


def test_open_session_resolves_format_system_prompt_and_settings_in_one_place(bloom_dir, fresh_home, tmp_path):
    """The one opener every front end uses: the model from the service, the system prompt saved for
    the model (`firefly use M --system`) unless the chat has its own ("" = none), the chat's prompt
    format on the same weights, and the generation layers with explicit overrides on top."""
    from firefly_core.models.user_settings import update_model_settings
    from firefly_core.session import open_session, system_prompt_for

    model = str(bloom_dir)
    load = {"engine": "torch", "device": "cpu", "dtype": "fp32"}
    update_model_settings(model, system="你是一个诗人", temperature=0.9)
    saved = open_session(model, {}, load=load)
    assert saved.system == "你是一个诗人" == system_prompt_for(model)
    assert saved.config.temperature == 0.9 and saved.config.do_sample
    assert saved.settings_used()["system"] == "你是一个诗人" and saved.settings_used()["model"] == model
    own = open_session(model, {"system": "", "prompt_format": "firefly-v2", "temperature": 0}, load=load)
    assert own.system is None and own.config.do_sample is False  # the chat's settings win
    assert own.lm.prompt_format.name == "firefly-v2" and own.lm.model is saved.lm.model  # no reload
    assert own.lm.generation_lock is saved.lm.generation_lock  # still one generation at a time
    flagged = open_session(model, {"max_new_tokens": 5}, overrides={"max_new_tokens": 7}, load=load)
    assert flagged.config.max_new_tokens == 7
    # the system prompt reaches the prompt: the same reply as a session given it by hand
    question = [Message("user", "你好")]
    greedy = open_session(model, {"temperature": 0, "max_new_tokens": 6}, load=load)
    by_hand = ChatSession(greedy.lm, system="你是一个诗人", config=greedy.config)
    assert greedy.prompt_ids(question)[1] == by_hand.prompt_ids(question)[1]
    assert _run(greedy.reply(question)).text == _run(by_hand.reply(question)).text
    # a bad value is refused before any load (the folder does not even exist)
    with pytest.raises(ConfigError, match="top_p"):
        open_session(str(tmp_path / "not-loaded"), {"top_p": 1.5})
