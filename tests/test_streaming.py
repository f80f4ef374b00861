"""Streaming detokenization (no half characters, deltas add up to the decode) and stop strings."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firefly_core.generation import StopStringGuard, StreamingDetokenizer
from firefly_core.testkit import build_tokenizer, kit_corpus

REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module", params=["bloom", "qwen2"])
def tok(request):
    return build_tokenizer(request.param)


_KIT_CJK = sorted({c for c in kit_corpus() if "\u4e00" <= c <= "\u9fff"})
MIXED = st.text(
    alphabet=st.one_of(
        st.sampled_from(_KIT_CJK),  # characters the tokenizer has merges for
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # most are split into bytes
        st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),  # emoji: 4-byte UTF-8
        st.sampled_from(list("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,!?\n，。！？《》「」")),
    ),
    max_size=40,
)


def _stream(tok, ids):
    detok = StreamingDetokenizer(tok)
    deltas = [detok.push(i) for i in ids]
    deltas.append(detok.flush())
    return deltas


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_kit_tokenizer_really_splits_characters(tok):
    """Otherwise the property below would prove nothing."""
    for text in ("🦊", "龘"):
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) > 1
        assert REPLACEMENT in _decode(tok, ids[:1])


def test_naive_per_token_decoding_would_break_characters(tok):
    ids = tok.encode("萤火虫🦊飞", add_special_tokens=False)
    naive = "".join(_decode(tok, [i]) for i in ids)
    assert REPLACEMENT in naive
    assert "".join(_stream(tok, ids)) == "萤火虫🦊飞"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=MIXED)
def test_deltas_concatenate_to_full_decode_without_half_characters(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    deltas = _stream(tok, ids)
    assert all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == _decode(tok, ids) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_token_sequences_add_up(tok, data):
    """Any ids (invalid byte sequences included): deltas add up to the decode minus an unfinished tail."""
    specials = set(tok.all_special_ids)
    ids = data.draw(st.lists(st.integers(0, len(tok) - 1).filter(lambda i: i not in specials), max_size=30))
    deltas = _stream(tok, ids)
    assert "".join(deltas) == _decode(tok, ids).rstrip(REPLACEMENT)
    assert all(not d.endswith(REPLACEMENT) for d in deltas)  # an unfinished character is never shown


def test_special_tokens_are_not_shown(tok):
    ids = tok.encode("你好", add_special_tokens=False) + [tok.all_special_ids[-1]] + tok.encode("ok", add_special_tokens=False)
    assert "".join(_stream(tok, ids)) == "你好ok"


# -- stop strings ------------------------------------------------------------------------------

def _expected(chunks, stops):
    """The reply a user must see: text arrives chunk by chunk, and the reply ends before the first
    stop string present once the chunk that completes it has arrived (later text is never made)."""
    text = ""
    for chunk in chunks:
        text += chunk
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return text[: min(hits)], True
    return text, False


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab</s>你好\n", max_size=30),
    stops=st.lists(st.text(alphabet="ab</s>你好\n", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=10),
)
def test_stop_string_guard_never_shows_any_part_of_a_stop_string(text, stops, cuts):
    guard = StopStringGuard(stops)
    bounds = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    expected, stops_early = _expected(chunks, stops)
    shown = ""
    for chunk in chunks:
        shown += guard.feed(chunk)
        assert expected.startswith(shown)  # nothing past the stop string ever reaches the user
        if guard.stopped:
            break
    if not guard.stopped:
        shown += guard.finish()
    assert shown == expected == guard.output
    assert guard.stopped == stops_early


def test_stop_string_split_over_deltas_is_held_then_released():
    guard = StopStringGuard(["</end>"])
    assert guard.feed("hello </") == "hello "
    assert guard.feed("en") == ""
    assert guard.feed("d> tail") == "" and guard.stopped
    assert guard.output == "hello "
    guard = StopStringGuard(["</end>"])
    assert guard.feed("a </e") == "a "
    assert guard.feed("x") == "</ex"  # it was not the stop string after all
    assert guard.finish() == ""
