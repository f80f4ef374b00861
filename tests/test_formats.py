"""Prompt formats: exact token layouts, masks, and turn-boundary truncation."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from firefly_core.errors import ConfigError, PromptTooLongError
from firefly_core.formats import (
    ChatTemplate,
    FireflyV1,
    FireflyV2,
    Message,
    fit_history,
    resolve_format,
)

U, A, S = "user", "assistant", "system"


@pytest.fixture(scope="module")
def bloom_tok(bloom_dir):
    return AutoTokenizer.from_pretrained(bloom_dir)


@pytest.fixture(scope="module")
def qwen_tok(qwen_dir):
    return AutoTokenizer.from_pretrained(qwen_dir)


def test_v1_single_turn_matches_seed_string(bloom_tok):
    msgs = [Message(U, "将下面句子翻译成现代文：学而时习之")]
    r = FireflyV1().render(bloom_tok, msgs, add_generation_prompt=True)
    # The seeds build the prompt as a string: '<s>{}</s></s>'.format(text).
    assert r.ids == bloom_tok.encode("<s>将下面句子翻译成现代文：学而时习之</s></s>", add_special_tokens=False)
    assert not any(r.trainable)


def test_v1_training_sample_masks_only_target_and_its_eos(bloom_tok):
    msgs = [Message(U, "对联：春风"), Message(A, "秋水长天")]
    r = FireflyV1().render(bloom_tok, msgs, add_generation_prompt=False)
    assert r.ids == bloom_tok.encode("<s>对联：春风</s></s>秋水长天</s>", add_special_tokens=False)
    target = bloom_tok.encode("秋水长天", add_special_tokens=False) + [bloom_tok.eos_token_id]
    n = len(target)
    assert r.trainable == [False] * (len(r) - n) + [True] * n
    assert r.ids[-n:] == target


def test_v2_multi_turn_layout_and_mask(bloom_tok):
    msgs = [Message(U, "q1"), Message(A, "a1"), Message(U, "q2"), Message(A, "a2")]
    r = FireflyV2().render(bloom_tok, msgs, add_generation_prompt=False)
    assert r.ids == bloom_tok.encode("<s>q1</s>a1</s>q2</s>a2</s>", add_special_tokens=False)
    trained = [i for i, t in zip(r.ids, r.trainable) if t]
    eos = bloom_tok.eos_token_id
    enc = lambda s: bloom_tok.encode(s, add_special_tokens=False)  # noqa: E731
    assert trained == enc("a1") + [eos] + enc("a2") + [eos]
    prompt = FireflyV2().render(bloom_tok, msgs[:3], add_generation_prompt=True)
    assert prompt.ids == bloom_tok.encode("<s>q1</s>a1</s>q2</s>", add_special_tokens=False)


def test_system_prompt_goes_before_first_user_message(bloom_tok):
    msgs = [Message(S, "你是流萤"), Message(U, "你好")]
    r = FireflyV2().render(bloom_tok, msgs, add_generation_prompt=True)
    assert r.ids == bloom_tok.encode("<s>你是流萤\n\n你好</s>", add_special_tokens=False)


def test_chat_template_mask_covers_assistant_content_and_end_token(qwen_tok):
    msgs = [Message(S, "sys"), Message(U, "你好"), Message(A, "流萤在此"), Message(U, "hi"), Message(A, "ok")]
    r = ChatTemplate().render(qwen_tok, msgs, add_generation_prompt=False)
    text = qwen_tok.apply_chat_template([m.to_dict() for m in msgs], tokenize=False)
    assert r.ids == qwen_tok.encode(text, add_special_tokens=False)
    im_end = qwen_tok.convert_tokens_to_ids("<|im_end|>")
    trained = [i for i, t in zip(r.ids, r.trainable) if t]
    enc = lambda s: qwen_tok.encode(s, add_special_tokens=False)  # noqa: E731
    assert trained == enc("流萤在此") + [im_end] + enc("ok") + [im_end]


def test_chat_template_generation_prompt(qwen_tok):
    msgs = [Message(U, "你好")]
    r = ChatTemplate().render(qwen_tok, msgs, add_generation_prompt=True)
    text = qwen_tok.apply_chat_template([m.to_dict() for m in msgs], tokenize=False, add_generation_prompt=True)
    assert r.ids == qwen_tok.encode(text, add_special_tokens=False)
    assert text.endswith("<|im_start|>assistant\n")


def test_resolve_format(bloom_tok, qwen_tok):
    assert resolve_format(bloom_tok).name == "firefly-v1"
    assert resolve_format(qwen_tok).name == "chat_template"
    assert resolve_format(qwen_tok, catalog_format="firefly-v2").name == "firefly-v2"
    assert resolve_format(bloom_tok, requested="firefly-v2").name == "firefly-v2"
    with pytest.raises(ConfigError):
        resolve_format(bloom_tok, requested="nope")
    with pytest.raises(ConfigError):
        ChatTemplate().render(bloom_tok, [Message(U, "x")], True)


def test_roles_must_alternate(bloom_tok):
    with pytest.raises(ConfigError):
        FireflyV2().render(bloom_tok, [Message(U, "a"), Message(U, "b")], True)


def test_fit_history_drops_whole_old_turns_keeps_system(bloom_tok):
    fmt = FireflyV2()
    msgs = [Message(S, "系统")]
    for i in range(6):
        msgs += [Message(U, f"问题{i} " * 5), Message(A, f"回答{i} " * 5)]
    msgs.append(Message(U, "最后的问题"))
    full = fmt.render(bloom_tok, msgs, True)
    kept, rendered = fit_history(fmt, bloom_tok, msgs, max_tokens=len(full) // 2)
    assert kept[0] == msgs[0] and kept[-1] == msgs[-1]
    assert len(rendered) <= len(full) // 2
    # What is kept is a suffix of whole turns: it starts with a user message right after system.
    assert kept[1].role == U and kept[1:] == msgs[len(msgs) - len(kept) + 1:]
    assert rendered.ids == fmt.render(bloom_tok, kept, True).ids
    # Nothing more could have been kept.
    one_more = [msgs[0]] + msgs[len(msgs) - len(kept) - 1:]
    assert len(fmt.render(bloom_tok, one_more, True)) > len(full) // 2


def test_fit_history_too_long_message(bloom_tok):
    with pytest.raises(PromptTooLongError):
        fit_history(FireflyV2(), bloom_tok, [Message(U, "很长的消息" * 50)], max_tokens=10)


# -- the other renderings of a format (formats.jinja_template / ollama_template) ---------------------


@pytest.mark.parametrize("fmt", [FireflyV1(), FireflyV2()])
def test_the_jinja_twin_renders_the_same_ids_as_render(bloom_tok, fmt):
    """What a trained model's tokenizer and a GGUF carry must prompt exactly as chat and training."""
    from firefly_core.formats import jinja_template

    conversation = [Message(S, "你是流萤。"), Message(U, "你好"), Message(A, "你好！"), Message(U, "写一首诗")]
    template = jinja_template(fmt, bloom_tok)
    assert template == fmt.jinja
    for messages in (conversation, conversation[1:], conversation[:2]):
        text = bloom_tok.apply_chat_template([m.to_dict() for m in messages], chat_template=template, tokenize=False)
        assert bloom_tok.encode(text, add_special_tokens=False) == fmt.render(bloom_tok, messages, True).ids


def test_jinja_template_of_a_chat_template_model_is_its_own(qwen_tok, bloom_tok):
    from firefly_core.formats import jinja_template

    assert jinja_template(ChatTemplate(), qwen_tok) == qwen_tok.chat_template
    assert jinja_template(ChatTemplate(), bloom_tok) is None  # no template: nothing to write


def test_ollama_templates_come_from_the_format(bloom_tok, qwen_tok):
    from firefly_core.formats import ollama_template

    assert ollama_template(FireflyV1(), bloom_tok) == (FireflyV1.go, None)
    assert ollama_template(FireflyV2(), bloom_tok) == (FireflyV2.go, None)
    template, _system = ollama_template(ChatTemplate(), qwen_tok)
    assert template is not None and "<|im_start|>" in template  # ChatML family
    assert ollama_template(ChatTemplate(), bloom_tok) == (None, None)


def test_a_generation_prompt_renders_the_template_once(qwen_tok, monkeypatch):
    """A prompt to reply to trains nothing: one template render, not one per assistant message
    (which made a long conversation quadratic), and the same ids as rendering the whole text."""
    msgs = [Message(U if i % 2 == 0 else A, f"第{i}句") for i in range(201)]
    calls = []
    original = qwen_tok.apply_chat_template
    monkeypatch.setattr(qwen_tok, "apply_chat_template", lambda *a, **k: calls.append(1) or original(*a, **k))
    r = ChatTemplate().render(qwen_tok, msgs, add_generation_prompt=True)
    assert len(calls) == 1 and not any(r.trainable)
    text = original([m.to_dict() for m in msgs], tokenize=False, add_generation_prompt=True)
    assert r.ids == qwen_tok.encode(text, add_special_tokens=False)
    calls.clear()
    ChatTemplate().render(qwen_tok, msgs[:5], add_generation_prompt=False)  # training still finds the spans
    assert len(calls) > 1
