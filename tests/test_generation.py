"""The generation loop against transformers' `generate`, plus stop ids/strings, cancel, seeds, cache."""

from __future__ import annotations

import threading

import pytest
import torch

from firefly_core.generation import (
    Decoder,
    GenerationConfig,
    KVCache,
    ModelDecoder,
    ReplyDone,
    TextDelta,
    TokenCache,
    generate_ids,
    generate_stream,
)
from firefly_core.models.loading import load_model

PROMPTS = ["请把这句话翻译成英文：春眠不觉晓，处处闻啼鸟。", "Write a poem about the moon. 写一首关于月亮的诗。"]


@pytest.fixture(scope="module")
def lms(bloom_dir, qwen_dir):
    return {
        "bloom": load_model(bloom_dir, dtype="fp32", device="cpu"),
        "qwen2": load_model(qwen_dir, dtype="fp32", device="cpu"),
    }


def _ids(lm, text):
    return lm.tokenizer.encode(text, add_special_tokens=False)


def _reference(lm, ids, max_new_tokens, repetition_penalty):
    out = lm.model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty,
        eos_token_id=lm.stop_token_ids,
        pad_token_id=lm.tokenizer.pad_token_id,
    )
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
@pytest.mark.parametrize("penalty, prompt", [(1.0, PROMPTS[1]), (1.2, PROMPTS[0])])
def test_greedy_equals_transformers_generate(lms, family, penalty, prompt):
    lm = lms[family]
    ids = _ids(lm, prompt)
    cfg = GenerationConfig(do_sample=False, repetition_penalty=penalty, max_new_tokens=48)
    ours = generate_ids(lm, ids, cfg)
    assert ours == _reference(lm, ids, 48, penalty)
    assert len(ours) > 20  # long enough for the comparison to mean something


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_stream_gives_the_same_tokens_as_generate(lms, family):
    """The streamed text is the decode of the reference tokens (stop token excluded)."""
    lm = lms[family]
    ids = _ids(lm, PROMPTS[1])
    ref = _reference(lm, ids, 40, 1.2)
    events = list(generate_stream(lm, ids, GenerationConfig(do_sample=False, max_new_tokens=40)))
    done = events[-1]
    assert isinstance(done, ReplyDone) and not done.cancelled
    deltas = "".join(e.text for e in events[:-1])
    assert deltas == done.text
    body = ref[:-1] if ref[-1] in lm.stop_token_ids else ref
    expected = lm.tokenizer.decode(body, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert done.text == expected.rstrip("\ufffd")
    assert done.stats.new_tokens == len(ref)
    assert done.stats.stop_reason == ("stop_token" if ref[-1] in lm.stop_token_ids else "max_new_tokens")
    assert done.stats.prompt_tokens == len(ids) and done.stats.reused_tokens == 0
    assert done.stats.context_used == len(ids) + len(ref)


def test_kv_cache_matches_dynamic_cache_logits(lms):
    """Our preallocated cache gives the logits of transformers' DynamicCache, step by step."""
    from transformers import DynamicCache

    lm = lms["qwen2"]
    model = lm.model
    ids = _ids(lm, PROMPTS[0])
    ours, ref = KVCache(model.config), DynamicCache(config=model.config)
    with torch.inference_mode():
        for chunk in (ids[:5], ids[5:], [7], [11], [13]):
            x = torch.tensor([chunk])
            a = model(input_ids=x, cache=ours, use_cache=True).logits
            b = model(input_ids=x, cache=ref, use_cache=True).logits
            torch.testing.assert_close(a, b)
    assert ours.get_seq_length() == ref.get_seq_length() == len(ids) + 3


def test_kv_cache_crop_then_continue_equals_fresh(lms):
    lm = lms["bloom"]
    dec = ModelDecoder(lm.model)
    ids = _ids(lm, PROMPTS[1])
    with torch.inference_mode():
        cache = dec.new_cache()
        dec.forward(torch.tensor([ids + [5, 6, 7]]), cache)
        cache.crop_to(len(ids) - 3)
        a = dec.forward(torch.tensor([ids[-3:]]), cache)
        b = dec.forward(torch.tensor([ids]), dec.new_cache())
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == len(ids)


def test_kv_cache_grows_past_its_first_buffer(lms):
    lm = lms["bloom"]
    dec = ModelDecoder(lm.model)
    ids = (_ids(lm, PROMPTS[1]) * 20)[:300]  # longer than one 256-token block
    with torch.inference_mode():
        cache = dec.new_cache()
        dec.forward(torch.tensor([ids[:200]]), cache)
        for t in ids[200:]:
            a = dec.forward(torch.tensor([[t]]), cache)
        b = dec.forward(torch.tensor([ids]), dec.new_cache())
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_prefix_cache_reuses_common_prefix(lms):
    lm = lms["bloom"]
    ids = _ids(lm, PROMPTS[1])
    pc = ModelDecoder(lm.model).new_cache()
    cfg = GenerationConfig(do_sample=False, max_new_tokens=4)
    first = list(generate_stream(lm, ids, cfg, prefix_cache=pc))[-1]
    assert first.stats.reused_tokens == 0
    assert pc.ids[: len(ids)] == ids and pc.get_seq_length() == len(pc.ids)
    again = list(generate_stream(lm, ids, cfg, prefix_cache=pc))[-1]
    assert again.stats.reused_tokens == len(ids) - 1  # the last prompt token is always re-run
    assert again.text == first.text
    other = ids[:3] + [9, 9, 9]
    third = list(generate_stream(lm, other, cfg, prefix_cache=pc))[-1]
    assert third.stats.reused_tokens == 3


def test_same_seed_same_text_different_seed_differs(lms):
    lm = lms["qwen2"]
    ids = _ids(lm, PROMPTS[0])

    def text(seed):
        cfg = GenerationConfig(temperature=1.0, top_p=1.0, max_new_tokens=30, seed=seed, stop_token_ids=())
        return list(generate_stream(lm, ids, cfg))[-1].text

    a, b = text(1), text(1)
    assert a == b and a
    assert any(text(s) != a for s in (2, 3, 4))


def test_stop_token_ids_from_config(lms):
    lm = lms["bloom"]
    ids = _ids(lm, PROMPTS[1])
    ref = generate_ids(lm, ids, GenerationConfig(do_sample=False, max_new_tokens=20))
    stop_at = ref[5]
    assert stop_at not in ref[:5]
    done = list(generate_stream(lm, ids, GenerationConfig(do_sample=False, max_new_tokens=20,
                                                          stop_token_ids=(stop_at,))))[-1]
    assert done.stats.stop_reason == "stop_token" and done.stats.new_tokens == 6
    expected = lm.tokenizer.decode(ref[:5], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert done.text == expected.rstrip("\ufffd")


def test_stop_string_ends_reply_and_never_leaks(lms):
    lm = lms["qwen2"]
    ids = _ids(lm, PROMPTS[1])
    full = list(generate_stream(lm, ids, GenerationConfig(do_sample=False, max_new_tokens=40)))[-1].text
    visible = full.replace("\ufffd", "")
    assert len(visible) > 6
    stop = visible[4:6]  # a two-character stop string that the reply contains
    events = list(generate_stream(lm, ids, GenerationConfig(do_sample=False, max_new_tokens=40,
                                                            stop_strings=(stop,))))
    done = events[-1]
    assert done.stats.stop_reason == "stop_string"
    assert done.text == full[: full.index(stop)]
    # A stream cannot take text back, so this equality is the proof that no piece of the stop string
    # leaked (the old per-piece check only restated it).
    assert "".join(e.text for e in events[:-1]) == done.text
    assert stop not in done.text and full.startswith(done.text + stop)


def test_cancel_between_tokens_from_another_thread(lms):
    lm = lms["bloom"]
    ids = _ids(lm, PROMPTS[0])
    cancel = threading.Event()
    cfg = GenerationConfig(do_sample=False, max_new_tokens=200, repetition_penalty=1.0, stop_token_ids=())
    seen = []
    for event in generate_stream(lm, ids, cfg, cancel):
        seen.append(event)
        if isinstance(event, TextDelta) and len(seen) == 3:
            t = threading.Thread(target=cancel.set)
            t.start()
            t.join()
    done = seen[-1]
    assert done.cancelled and done.stats.stop_reason == "cancelled"
    assert done.stats.new_tokens < 10
    assert done.text == "".join(e.text for e in seen[:-1])


def test_cancel_before_start_gives_empty_reply(lms):
    lm = lms["bloom"]
    cancel = threading.Event()
    cancel.set()
    done = list(generate_stream(lm, _ids(lm, "hi"), GenerationConfig(), cancel))[-1]
    assert done.cancelled and done.text == "" and done.stats.new_tokens == 0


def test_interrupted_forward_leaves_cache_consistent(lms):
    """An exception inside a forward pass (e.g. Ctrl-C) must not leave half-updated layers behind."""
    lm = lms["qwen2"]
    inner = ModelDecoder(lm.model)

    class Flaky(ModelDecoder):
        calls = 0

        def forward(self, ids, cache, every_position=False):
            Flaky.calls += 1
            if Flaky.calls == 3:
                # update the first layer only, then fail, like an interrupt in the middle of a step
                def half_step(*args, **kwargs):
                    layer = cache.layers[0]
                    layer.update(layer.keys[..., -1:, :].clone(), layer.values[..., -1:, :].clone())
                    raise KeyboardInterrupt

                self.model, real = half_step, self.model
                try:
                    return super().forward(ids, cache, every_position)
                finally:
                    self.model = real
            return super().forward(ids, cache, every_position)

    ids = _ids(lm, PROMPTS[0])
    pc = inner.new_cache()
    cfg = GenerationConfig(do_sample=False, max_new_tokens=10, stop_token_ids=())
    with pytest.raises(KeyboardInterrupt):
        list(generate_stream(lm, ids, cfg, prefix_cache=pc, decoder=Flaky(lm.model)))
    assert len(pc.ids) == len(ids) + 1  # the prompt and the first token's step; not the failed one
    assert all(layer.get_seq_length() == len(pc.ids) for layer in pc.layers)
    resumed = list(generate_stream(lm, ids, cfg, prefix_cache=pc))[-1]
    fresh = list(generate_stream(lm, ids, cfg))[-1]
    assert resumed.text == fresh.text and resumed.stats.reused_tokens == len(ids) - 1


def test_context_window_is_respected(lms):
    from firefly_core.errors import PromptTooLongError

    lm = lms["qwen2"]
    with pytest.raises(PromptTooLongError):
        list(generate_stream(lm, [5] * lm.context_length, GenerationConfig()))
    ids = [5] * (lm.context_length - 4)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=50, stop_token_ids=(), repetition_penalty=1.0)
    done = list(generate_stream(lm, ids, cfg))[-1]
    # No stop tokens and 50 tokens asked for with 4 left: the window ends the reply, full to the last slot.
    assert done.stats.stop_reason == "context_full"
    assert done.stats.context_used == lm.context_length and done.stats.new_tokens == 4


# -- the decode seam: the loop touches only the Decoder protocol ------------------------------


class _CountingCache(TokenCache):
    """A cache that is just the ids, recording its crops."""

    def __init__(self):
        self.ids: list[int] = []
        self.crops: list[int] = []

    def _crop_storage(self, length):
        self.crops.append(length)


class _FakeDecoder(Decoder):
    """A deterministic 'model': the next token is (last id * 7 + position) % vocab, as one-hot logits.
    It implements only `new_cache` and `forward`: the Decoder's own prefill/decode sample them."""

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size
        self.device = torch.device("cpu")
        self.seen: list[list[int]] = []

    def new_cache(self):
        return _CountingCache()

    def forward(self, ids, cache, every_position=False):
        assert ids.dtype == torch.long and ids.shape[0] == 1 and ids.device == self.device
        self.seen.append(ids[0].tolist())
        cache.ids.extend(ids[0].tolist())
        logits = torch.full((1, self.vocab_size), -10.0)
        logits[0, (int(ids[0, -1]) * 7 + len(cache.ids)) % self.vocab_size] = 10.0
        return logits


def _expected_fake(prompt, n, vocab):
    out, last, length = [], prompt[-1], len(prompt)
    for _ in range(n):
        token = (last * 7 + length) % vocab
        out.append(token)
        last, length = token, length + 1
    return out


def test_the_loop_uses_only_the_decoder_protocol(lms):
    """A stand-in LoadedModel with no `.model` at all: the loop reaches the model only through the
    decoder, and reads only tokenizer, stop ids and context length from the LoadedModel."""
    from types import SimpleNamespace

    tokenizer = lms["bloom"].tokenizer
    vocab = 200
    fake = _FakeDecoder(vocab)
    lm = SimpleNamespace(tokenizer=tokenizer, stop_token_ids=[], context_length=64, decoder=fake)
    prompt = [5, 9, 13]
    cfg = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=6)
    assert generate_ids(lm, prompt, cfg) == _expected_fake(prompt, 6, vocab)
    assert fake.seen[0] == prompt and all(len(s) == 1 for s in fake.seen[1:])
    # Streaming: the same tokens, detokenized; a second turn reuses the shared prefix by cropping.
    pc = fake.new_cache()
    done = list(generate_stream(lm, prompt, cfg, prefix_cache=pc))[-1]
    expected = _expected_fake(prompt, 6, vocab)
    # (the streaming detokenizer never shows half a character: an unfinished byte sequence is held)
    assert done.text == tokenizer.decode(expected).rstrip("\ufffd") and done.stats.new_tokens == 6
    fake.seen.clear()
    second = prompt + expected[:3] + [17]
    done2 = list(generate_stream(lm, second, cfg, prefix_cache=pc))[-1]
    assert done2.stats.reused_tokens == len(prompt) + 3
    assert pc.crops[-1] == len(prompt) + 3 and fake.seen[0] == [17]
    # The context window ends a reply (the decoder is never asked past it).
    lm.context_length = 8
    done3 = list(generate_stream(lm, prompt, GenerationConfig(do_sample=False, max_new_tokens=50)))[-1]
    assert done3.stats.stop_reason == "context_full" and done3.stats.context_used == 8


def test_a_decoder_that_samples_inside_its_step_returns_the_token(lms):
    """The seam is prefill/decode -> next token: a step that samples on its own (as the CUDA graph
    does) is used as is, the loop never asks for logits."""
    from types import SimpleNamespace

    class OwnSampling(_FakeDecoder):
        def forward(self, ids, cache, every_position=False):
            raise AssertionError("the loop asked for logits")

        def prefill(self, ids, cache, sampler):
            cache.ids.extend(ids)
            self.seen.append(list(ids))
            return 41

        def decode(self, token, cache, sampler):
            cache.ids.append(token)
            self.seen.append([token])
            return token + 1

    fake = OwnSampling(100)
    lm = SimpleNamespace(tokenizer=lms["bloom"].tokenizer, stop_token_ids=[43], context_length=64, decoder=fake)
    assert generate_ids(lm, [1, 2], GenerationConfig(max_new_tokens=5)) == [41, 42, 43]  # 43 is the stop id
    assert fake.seen == [[1, 2], [41], [42]]


def test_token_ids_outside_the_vocabulary_are_a_clear_error(lms):
    from types import SimpleNamespace

    from firefly_core.errors import FireflyError

    lm = SimpleNamespace(tokenizer=lms["bloom"].tokenizer, stop_token_ids=[], context_length=64, decoder=_FakeDecoder(10))
    with pytest.raises(FireflyError, match="knows only 10 tokens"):
        list(generate_stream(lm, [3, 11], GenerationConfig()))
