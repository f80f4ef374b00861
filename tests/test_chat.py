"""ChatSession: multi-turn KV-prefix reuse is exact, truncation, regenerate/edit/reset, cancel."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from firefly_core.chat import ChatSession
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


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_three_turns_with_prefix_reuse_equal_fresh_prefill(loaded, family):
    lm = _fresh_lm(loaded, family)
    lm.decoder = RecordingDecoder(lm.model)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=12)
    session = ChatSession(lm, system="你是一个乐于助人的助手。", config=cfg)
    previous_prompt = 0
    for i, text in enumerate(TURNS):
        start = len(lm.decoder.logits)
        done = _run(session.send(text))
        reused_logits = lm.decoder.logits[start:]
        # the same prompt, prefilled from scratch
        _, ids = ChatSession(lm, system=session.system, config=cfg, messages=session.messages[:-1]).prompt_ids()
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
    assert [m.role for m in session.messages] == ["user", "assistant"] * 3


def test_reuse_covers_the_previous_reply_when_it_retokenizes_the_same(loaded):
    """Random tiny models emit byte soup that re-encodes differently; with a real reply (text that
    encodes to the ids that were generated), everything before the new message is reused."""
    lm = _fresh_lm(loaded, "qwen2")
    tok = lm.tokenizer
    session = ChatSession(lm, config=GenerationConfig(do_sample=False, max_new_tokens=12))
    _run(session.send(TURNS[0]))
    # Pretend the model said a canonical reply: put its ids in the cache as if generated.
    reply = "我是萤火虫，很高兴认识你。"
    session.messages[-1] = Message("assistant", reply)
    _, ids = ChatSession(lm, messages=session.messages[:1]).prompt_ids()
    reply_ids = tok.encode(reply, add_special_tokens=False)
    list(generate_stream(lm, ids + reply_ids, GenerationConfig(do_sample=False, max_new_tokens=1),
                         prefix_cache=session._prefix))
    second = _run(session.send(TURNS[1]))
    _, full = ChatSession(lm, messages=session.messages[:2] + [Message("user", TURNS[1])]).prompt_ids()
    assert full[: len(ids) + len(reply_ids)] == ids + reply_ids
    assert second.stats.prompt_tokens == len(full)
    # everything up to the end of the reply came from the cache; only the rest was prefilled
    assert second.stats.reused_tokens == len(ids) + len(reply_ids)


def test_truncation_drops_whole_old_turns(loaded):
    lm = _fresh_lm(loaded, "bloom", context_length=90)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=10)
    session = ChatSession(lm, system="sys", config=cfg)
    for text in TURNS * 2:
        done = _run(session.send(text))
        assert done.stats.prompt_tokens <= 90 - 10
    assert len(session.messages) == 12  # the session keeps the whole history; only the prompt is cut
    session.messages.append(Message("user", "again"))
    kept, ids = session.prompt_ids()
    assert kept[0] == Message("system", "sys")
    assert kept[-1] == Message("user", "again") and len(kept) < 13
    assert [m.role for m in kept[1:]] == ["user", "assistant"] * ((len(kept) - 2) // 2) + ["user"]
    assert len(ids) <= 80


def test_regenerate_edit_and_reset(loaded):
    lm = _fresh_lm(loaded, "qwen2")
    cfg = GenerationConfig(do_sample=False, max_new_tokens=10)
    session = ChatSession(lm, config=cfg)
    first = _run(session.send(TURNS[1]))
    again = _run(session.regenerate())
    assert again.text == first.text and len(session.messages) == 2
    assert again.stats.reused_tokens == again.stats.prompt_tokens - 1
    edited = _run(session.edit_last_user(TURNS[2]))
    assert session.messages[0] == Message("user", TURNS[2])
    assert session.messages[1] == Message("assistant", edited.text) and len(session.messages) == 2
    session.reset()
    assert session.messages == []
    assert _run(session.send(TURNS[1])).text == first.text


def test_seeded_sessions_repeat(loaded):
    lm = _fresh_lm(loaded, "bloom")

    def talk():
        s = ChatSession(lm, config=GenerationConfig(seed=7, temperature=1.0, max_new_tokens=15))
        return [_run(s.send(t)).text for t in TURNS[:2]]

    assert talk() == talk()


def test_cancel_keeps_partial_reply(loaded):
    lm = _fresh_lm(loaded, "bloom")
    session = ChatSession(lm, config=GenerationConfig(do_sample=False, max_new_tokens=100))
    cancel = threading.Event()
    events = []
    for event in session.send(TURNS[1], cancel):
        events.append(event)
        if isinstance(event, TextDelta):
            cancel.set()
    done = events[-1]
    assert done.cancelled and done.text
    assert session.messages == [Message("user", TURNS[1]), Message("assistant", done.text)]
    # the session goes on
    assert _run(session.send(TURNS[0])).stats.reused_tokens > 0


def test_consumer_stopping_early_keeps_shown_text_or_restores_history(loaded):
    lm = _fresh_lm(loaded, "bloom")
    session = ChatSession(lm, config=GenerationConfig(do_sample=False, max_new_tokens=50))
    stream = session.send(TURNS[1])
    shown = next(stream).text
    stream.close()
    assert session.messages == [Message("user", TURNS[1]), Message("assistant", shown)]
    never_started = session.send("ignored")
    never_started.close()
    assert len(session.messages) == 2


def test_prompt_too_long_restores_history(loaded):
    from firefly_core.errors import PromptTooLongError

    lm = _fresh_lm(loaded, "bloom", context_length=40)
    session = ChatSession(lm, config=GenerationConfig(max_new_tokens=10))
    with pytest.raises(PromptTooLongError):
        list(session.send("很长的消息" * 20))
    assert session.messages == []


def test_warm_prefills_a_loaded_conversation(loaded):
    lm = _fresh_lm(loaded, "qwen2")
    history = [Message("user", TURNS[0]), Message("assistant", "我是萤火虫。"), Message("user", TURNS[1]),
               Message("assistant", "Fireflies glow at night.")]
    session = ChatSession(lm, system="sys", config=GenerationConfig(do_sample=False, max_new_tokens=5), messages=history)
    cached = session.warm()
    warm_ids = list(session._prefix.ids)
    assert cached == 0 and session.warm() == len(warm_ids)  # the second warm is free
    done = _run(session.send(TURNS[2]))
    _, prompt = ChatSession(lm, system="sys", messages=history + [Message("user", TURNS[2])]).prompt_ids()
    assert prompt[: len(warm_ids)] == warm_ids  # the warmed history is a prefix of the next prompt
    assert done.stats.reused_tokens == len(warm_ids)
    fresh = _run(ChatSession(lm, system="sys", config=session.config, messages=history).send(TURNS[2]))
    assert done.text == fresh.text
