"""The llama.cpp decoder behind our loop: the loop's behaviour tests, run through llama.cpp.

Oracles: transformers' greedy tokens (an f32 GGUF of the same weights), a fresh prefill (for
multi-turn prefix reuse), the text the torch decoder streams, and counts of the tokens llama.cpp
actually ran (so the reuse fast path is proven to run, not just to give the right answer).
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'firefly-tui[llamacpp]')")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'firefly-tui[llamacpp]')")
# This module names its engine: llama.cpp (tests/conftest.py turns it off for everyone else).
pytestmark = pytest.mark.usefixtures("llamacpp_module")

from firefly_core.formats import Message  # noqa: E402
from firefly_core.session import ChatSession  # noqa: E402
from firefly_core.errors import FireflyError, PromptTooLongError  # noqa: E402
from firefly_core.export.gguf import ExportCancelled, export_gguf, model_info  # noqa: E402
from firefly_core.generation import GenerationConfig, ReplyDone, TextDelta, generate_ids, generate_stream  # noqa: E402
from firefly_core.export.gguf_cache import attach_llamacpp, gguf_cache_path  # noqa: E402
from firefly_core.generation.llamacpp import LlamaCppDecoder, available  # noqa: E402
from firefly_core.generation.loop import decoder_for  # noqa: E402
from firefly_core.models.loading import load_model  # noqa: E402

PROMPTS = ["请把这句话翻译成英文：春眠不觉晓，处处闻啼鸟。", "Write a poem about the moon. 写一首关于月亮的诗。"]
TURNS = ["你好，请介绍一下你自己。", "Write a short poem about fireflies.", "把上面的诗翻译成中文：萤火虫"]


class CountingDecoder(LlamaCppDecoder):
    """The llama.cpp decoder, counting the tokens llama.cpp really runs (replays included)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens_run = 0
        self.outputs: list[torch.Tensor] = []

    def _decode(self, ids, *, want_logits, **kw):
        self.tokens_run += len(ids)
        out = super()._decode(ids, want_logits=want_logits, **kw)
        if out is not None:
            self.outputs.append(out.clone())
        return out


@pytest.fixture(autouse=True)
def llamacpp_on(monkeypatch):
    """These tests use llama.cpp even where the suite switches the automatic choice off."""
    monkeypatch.delenv("FIREFLY_LLAMACPP", raising=False)


@pytest.fixture(scope="module")
def lms(bloom_dir, qwen_dir):
    return {
        "bloom": load_model(bloom_dir, dtype="fp32", device="cpu"),
        "qwen2": load_model(qwen_dir, dtype="fp32", device="cpu"),
    }


@pytest.fixture(scope="module")
def ggufs(lms, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return {f: export_gguf(lm, out / f"{f}.gguf", gguf_type="f32") for f, lm in lms.items()}


def _dec(ggufs, family, **kw) -> CountingDecoder:
    return CountingDecoder(ggufs[family], n_ctx=kw.pop("n_ctx", 1024), threads=1, **kw)


def _llm(lms, ggufs, family, **kw):
    """A LoadedModel sharing the torch weights (the oracle) whose decoder is llama.cpp."""
    lm = dataclasses.replace(lms[family])
    lm.decoder = _dec(ggufs, family, **kw)
    return lm


def _ids(lm, text):
    return lm.tokenizer.encode(text, add_special_tokens=False)


def _run(events):
    events = list(events)
    assert isinstance(events[-1], ReplyDone)
    assert "".join(e.text for e in events[:-1]) == events[-1].text
    return events[-1]


def test_available_when_installed_and_the_reason_when_switched_off(monkeypatch):
    assert available() is None
    monkeypatch.setenv("FIREFLY_LLAMACPP", "0")
    assert "FIREFLY_LLAMACPP=0" in available()


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
@pytest.mark.parametrize("penalty, prompt", [(1.0, PROMPTS[1]), (1.2, PROMPTS[0])])
def test_greedy_equals_transformers_generate(lms, ggufs, family, penalty, prompt):
    lm = _llm(lms, ggufs, family)
    ids = _ids(lm, prompt)
    cfg = GenerationConfig(do_sample=False, repetition_penalty=penalty, max_new_tokens=48)
    ours = generate_ids(lm, ids, cfg)
    ref = lm.model.generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
        max_new_tokens=48, repetition_penalty=penalty, eos_token_id=lm.stop_token_ids,
        pad_token_id=lm.tokenizer.pad_token_id,
    )[0, len(ids):].tolist()
    assert ours == ref and len(ours) > 20


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_streaming_text_and_stats_equal_the_torch_decoder(lms, ggufs, family):
    lm = _llm(lms, ggufs, family)
    ids = _ids(lm, PROMPTS[1])
    cfg = GenerationConfig(do_sample=False, max_new_tokens=40)
    events = list(generate_stream(lm, ids, cfg))
    ref = _run(generate_stream(lms[family], ids, cfg))
    done = _run(events)
    assert done.text == ref.text and len(events) > 3  # streamed in pieces
    assert done.stats.new_tokens == ref.stats.new_tokens and done.stats.stop_reason == ref.stats.stop_reason


def test_stop_string_ends_reply_and_never_leaks(lms, ggufs):
    lm = _llm(lms, ggufs, "qwen2")
    ids = _ids(lm, PROMPTS[1])
    full = _run(generate_stream(lm, ids, GenerationConfig(do_sample=False, max_new_tokens=40))).text
    visible = full.replace("\ufffd", "")
    assert len(visible) > 6
    stop = visible[4:6]
    events = list(generate_stream(lm, ids, GenerationConfig(do_sample=False, max_new_tokens=40, stop_strings=(stop,))))
    done = _run(events)
    assert done.stats.stop_reason == "stop_string"
    assert done.text == full[: full.index(stop)]
    assert all(stop not in e.text for e in events[:-1])


def test_cancel_between_tokens_from_another_thread(lms, ggufs):
    lm = _llm(lms, ggufs, "bloom")
    cancel = threading.Event()
    cfg = GenerationConfig(do_sample=False, max_new_tokens=200, repetition_penalty=1.0, stop_token_ids=())
    seen = []
    for event in generate_stream(lm, _ids(lm, PROMPTS[0]), cfg, cancel):
        seen.append(event)
        if isinstance(event, TextDelta) and len(seen) == 3:
            t = threading.Thread(target=cancel.set)
            t.start()
            t.join()
    done = seen[-1]
    assert done.cancelled and done.stats.stop_reason == "cancelled" and done.stats.new_tokens < 10
    assert done.text == "".join(e.text for e in seen[:-1])


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_three_turns_with_prefix_reuse_equal_fresh_prefill(lms, ggufs, family):
    lm = _llm(lms, ggufs, family)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=12)
    session = ChatSession(lm, system="你是一个乐于助人的助手。", config=cfg)
    history: list[Message] = []
    previous_prompt = 0
    for i, text in enumerate(TURNS):
        ran_before, logits_before = lm.decoder.tokens_run, len(lm.decoder.outputs)
        history.append(Message("user", text))
        done = _run(session.reply(history))
        reused_logits = lm.decoder.outputs[logits_before:]
        _, ids = ChatSession(lm, system=session.system, config=cfg).prompt_ids(history)
        history.append(Message("assistant", done.text))
        fresh_dec = _dec(ggufs, family)
        fresh = _run(generate_stream(lm, ids, cfg, decoder=fresh_dec))
        assert done.text == fresh.text and done.stats.new_tokens == fresh.stats.new_tokens
        assert len(reused_logits) == len(fresh_dec.outputs)
        for a, b in zip(reused_logits, fresh_dec.outputs):
            # same weights, same ids; only the prefill's batching differs (f16 KV, other sum order)
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.max() - b.min()))
        # the fast path ran: llama.cpp saw only the part of the prompt that was not reused
        ran = lm.decoder.tokens_run - ran_before
        assert ran == done.stats.prompt_tokens - done.stats.reused_tokens + done.stats.new_tokens - 1
        if i:
            assert done.stats.reused_tokens >= previous_prompt
        previous_prompt = done.stats.prompt_tokens


def test_two_conversations_on_one_model_stay_exact(lms, ggufs):
    """Each conversation has its own cache; the one llama.cpp context follows whichever runs."""
    lm = _llm(lms, ggufs, "qwen2")
    cfg = GenerationConfig(do_sample=False, max_new_tokens=8)
    a, b = ChatSession(lm, config=cfg), ChatSession(lm, config=cfg)
    histories: tuple[list[Message], list[Message]] = ([], [])
    replies = []
    for text in TURNS[:2]:
        pair = []
        for session, history, said in ((a, histories[0], text), (b, histories[1], text[::-1])):
            history.append(Message("user", said))
            pair.append(_run(session.reply(history)).text)
            history.append(Message("assistant", pair[-1]))
        replies.append(tuple(pair))
    for history, pick in ((histories[0], 0), (histories[1], 1)):
        _, ids = ChatSession(lm, config=cfg).prompt_ids(history[:-1])
        fresh = _run(generate_stream(lm, ids, cfg, decoder=_dec(ggufs, "qwen2")))
        assert fresh.text == replies[-1][pick]


def test_crop_then_continue_equals_fresh(lms, ggufs):
    dec = _dec(ggufs, "bloom")
    ids = _ids(lms["bloom"], PROMPTS[1])
    cache = dec.new_cache()
    dec.forward(torch.tensor([ids]), cache)
    cache.crop_to(5)
    assert cache.get_seq_length() == 5
    ran = dec.tokens_run
    cropped = dec.forward(torch.tensor([ids[5:]]), cache)
    assert dec.tokens_run - ran == len(ids) - 5  # truncated, not re-run from the start
    other = _dec(ggufs, "bloom")
    fresh = other.forward(torch.tensor([ids]), other.new_cache())
    torch.testing.assert_close(cropped, fresh, rtol=1e-3, atol=1e-3 * float(fresh.max() - fresh.min()))


def test_context_window_of_llamacpp_is_enforced(lms, ggufs):
    dec = _dec(ggufs, "qwen2", n_ctx=64)  # llama.cpp rounds the context up (to 256)
    assert dec.n_ctx >= 64 and dec.forward(torch.tensor([[5] * 65]), dec.new_cache()).shape == (1, dec.vocab_size)
    with pytest.raises(PromptTooLongError):
        dec.forward(torch.tensor([[5] * (dec.n_ctx + 1)]), dec.new_cache())
    cache = dec.new_cache()  # the decoder is still usable afterwards
    assert dec.forward(torch.tensor([[5] * 10]), cache).shape == (1, dec.vocab_size)


# ------------------------------------------------------------------------------- attach_llamacpp
def test_attach_makes_the_gguf_once_then_reuses_it(qwen_dir, monkeypatch, tmp_path):
    # a cache of our own: other tests (the service, the chat CLI) may have made this model's GGUF
    monkeypatch.setenv("FIREFLY_HOME", str(tmp_path / "home"))
    info = model_info(qwen_dir)  # no torch weights at all: model=None
    assert info.model is None
    said: list[str] = []
    attach_llamacpp(info, quantize="q8_0", threads=1, status=said.append)
    path = gguf_cache_path(qwen_dir, "q8_0")
    assert path.is_file() and any("making the llama.cpp model" in s for s in said)
    assert isinstance(decoder_for(info), LlamaCppDecoder) and info.context_length <= 8192
    mtime = path.stat().st_mtime_ns
    done = _run(generate_stream(info, _ids(info, PROMPTS[1]), GenerationConfig(do_sample=False, max_new_tokens=8)))
    assert done.stats.new_tokens > 0

    again = model_info(qwen_dir)
    said.clear()
    attach_llamacpp(again, quantize="int8", threads=1, status=said.append)  # "int8" is q8_0 here
    assert not any("making" in s for s in said) and path.stat().st_mtime_ns == mtime
    assert again.decoder.path == path
    redo = _run(generate_stream(again, _ids(again, PROMPTS[1]), GenerationConfig(do_sample=False, max_new_tokens=8)))
    assert redo.text == done.text


def test_attach_stopped_while_making_leaves_no_cache_file(bloom_dir):
    info = model_info(bloom_dir)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ExportCancelled):
        attach_llamacpp(info, quantize="f16", threads=1, status=None, cancel=cancel)
    path = gguf_cache_path(bloom_dir, "f16")
    assert not path.exists() and not list(path.parent.glob(f".{path.name}*"))
    assert getattr(info, "decoder", None) is None


def test_attach_refuses_unknown_types_and_a_disabled_engine(bloom_dir, monkeypatch):
    info = model_info(bloom_dir)
    with pytest.raises(FireflyError, match="q3"):
        attach_llamacpp(info, quantize="q3", threads=1, status=None)
    monkeypatch.setenv("FIREFLY_LLAMACPP", "0")
    with pytest.raises(FireflyError, match="not available"):
        attach_llamacpp(info, quantize=None, threads=1, status=None)


def test_the_service_runs_llamacpp_without_a_pytorch_copy_of_the_weights(bloom_dir):
    """llama.cpp reads the folder itself: the service never loads the weights into torch for it
    (that doubled the memory and the wait), and the reply is still transformers' greedy reply."""
    from firefly_core.models.service import ModelService

    service = ModelService()
    lm = service.get(service.request_for(str(bloom_dir), engine="llamacpp", quantize="f32"))
    assert lm.engine == "llamacpp" and lm.model is None
    ids = _ids(lm, PROMPTS[0])
    config = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=24)
    ref = load_model(bloom_dir, dtype="fp32")
    expected = ref.model.generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
        max_new_tokens=24, eos_token_id=ref.stop_token_ids, pad_token_id=ref.tokenizer.pad_token_id,
    )[0, len(ids):].tolist()
    assert generate_ids(lm, ids, config) == expected
    service.unload()
