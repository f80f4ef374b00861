"""Vocabulary pruning is exact: same tokens, same logits, same greedy text; tied/untied, sharded, bf16."""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firefly_core.pruning import REPORT_FILE, TOKEN_MAP_FILE, PruneReport, prune_vocabulary
from firefly_core.testkit import build_model_folder, kit_corpus

CORPUS_LINES = 12  # the pruning corpus is the first lines of the kit corpus; the rest is unseen text


@dataclass
class Pruned:
    family: str
    rule: str
    src: Path
    out: Path
    report: PruneReport
    token_map: list[int]

    @property
    def kept(self) -> set[int]:
        return set(self.token_map)


def _raw(folder: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(kit_corpus().splitlines()[:CORPUS_LINES]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(
    scope="module",
    params=[("bloom", "top"), ("bloom", "min"), ("qwen2", "top"), ("qwen2", "min")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def pruned(request, tmp_path_factory, bloom_dir, qwen_dir, corpus_file) -> Pruned:
    family, rule = request.param
    src = bloom_dir if family == "bloom" else qwen_dir
    out = tmp_path_factory.mktemp("pruned") / f"{family}-{rule}"
    kwargs = {"keep_top": 300} if rule == "top" else {"min_count": 1}
    report = prune_vocabulary(src, [corpus_file], out, **kwargs)
    token_map = json.loads((out / TOKEN_MAP_FILE).read_text())
    return Pruned(family, rule, src, out, report, token_map)


def _kept_texts(p: Pruned) -> list[str]:
    """Substrings of the kit corpus (seen and unseen lines) whose original tokens are all kept."""
    orig = _raw(p.src)
    candidates = sorted(
        {line[i : i + n] for line in kit_corpus().splitlines() for n in (1, 2, 3, 5, 8) for i in range(len(line) - n + 1)}
    )
    return [t for t, e in zip(candidates, orig.encode_batch(candidates, add_special_tokens=False)) if set(e.ids) <= p.kept]


def test_report_and_token_map(pruned):
    report = json.loads((pruned.out / REPORT_FILE).read_text())
    assert report["vocab_before"] == 400
    assert report["vocab_after"] == len(pruned.token_map) == len(set(pruned.token_map))
    if pruned.rule == "top":
        assert report["vocab_after"] == 300
    assert report["vocab_after"] < 400  # something was pruned
    assert 0 < report["coverage"] <= 1
    if pruned.rule == "min":
        assert report["coverage"] == 1.0  # every corpus token was seen at least once, so kept
    from tokenizers import pre_tokenizers

    vocab = _raw(pruned.out).get_vocab()
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(vocab)  # every text stays encodable


def test_texts_of_kept_tokens_map_back_exactly(pruned):
    orig, new = _raw(pruned.src), _raw(pruned.out)
    texts = _kept_texts(pruned)
    if pruned.rule == "min":
        texts += kit_corpus().splitlines()[:CORPUS_LINES]
    assert len(texts) > 100
    for text, a, b in zip(texts, orig.encode_batch(texts), new.encode_batch(texts)):
        assert [pruned.token_map[i] for i in b.ids] == a.ids, text


def test_merges_are_the_surviving_ones(pruned):
    src = json.loads((pruned.src / "tokenizer.json").read_text())["model"]
    dst = json.loads((pruned.out / "tokenizer.json").read_text())["model"]
    vocab = dst["vocab"]
    expected = [m for m in src["merges"] if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    assert dst["merges"] == expected
    assert len(dst["merges"]) < len(src["merges"]) or pruned.rule == "min"


_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # CJK
        st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),  # emoji
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),  # ASCII
        st.sampled_from(" \t\n\r\u3000\u00a0"),  # whitespace, incl. ideographic and no-break space
        st.sampled_from("，。！？：流萤的是"),  # common corpus characters, so kept merges fire
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT)
def test_any_text_round_trips(pruned, text):
    orig, new = _raw(pruned.src), _raw(pruned.out)
    ids = new.encode(text, add_special_tokens=False).ids
    assert new.decode(ids, skip_special_tokens=False) == text
    # The same text through the old ids: the id map is a faithful translation.
    assert orig.decode([pruned.token_map[i] for i in ids], skip_special_tokens=False) == text
    old_ids = orig.encode(text, add_special_tokens=False).ids
    if set(old_ids) <= pruned.kept:
        assert [pruned.token_map[i] for i in ids] == old_ids


def test_loads_in_transformers_with_the_same_specials(pruned):
    from transformers import AutoTokenizer

    orig = AutoTokenizer.from_pretrained(pruned.src)
    new = AutoTokenizer.from_pretrained(pruned.out)
    assert len(new) == len(pruned.token_map)
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(new, attr) == getattr(orig, attr)
        old_id = getattr(orig, f"{attr}_id")
        if old_id is not None:
            assert pruned.token_map[getattr(new, f"{attr}_id")] == old_id
    assert new.chat_template == orig.chat_template
    if orig.chat_template:
        msgs = [{"role": "user", "content": "床前明月光"}]
        a = orig.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        b = new.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert new.decode(b) == orig.decode(a)
    text = kit_corpus().splitlines()[0]
    assert [pruned.token_map[i] for i in new(text)["input_ids"]] == _raw(pruned.src).encode(text).ids or not (
        set(_raw(pruned.src).encode(text).ids) <= pruned.kept
    )


def test_config_ids_point_at_the_same_tokens(pruned):
    orig, new = _raw(pruned.src), _raw(pruned.out)
    for name in ("config.json", "generation_config.json"):
        a = json.loads((pruned.src / name).read_text())
        b = json.loads((pruned.out / name).read_text())
        for key, value in a.items():
            if key.endswith("token_id") and value is not None:
                olds = value if isinstance(value, list) else [value]
                news = b[key] if isinstance(b[key], list) else [b[key]]
                assert [orig.id_to_token(i) for i in olds] == [new.id_to_token(i) for i in news]
    cfg = json.loads((pruned.out / "config.json").read_text())
    assert cfg["vocab_size"] == len(pruned.token_map)
    # The kit's specials are ids 0..3 and fit in the new vocabulary, so they keep their ids.
    assert pruned.token_map[:4] == [0, 1, 2, 3]


def _models(p: Pruned):
    return _load(p.src), _load(p.out)


@functools.lru_cache(maxsize=8)
def _load(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()


def _assert_logits_equal(p: Pruned, texts: list[str], atol: float = 1e-6) -> None:
    import torch

    orig_model, new_model = _models(p)
    orig, new = _raw(p.src), _raw(p.out)
    index = torch.tensor(p.token_map)
    for text in texts:
        a = orig.encode(text).ids
        b = new.encode(text).ids
        assert [p.token_map[i] for i in b] == a
        with torch.no_grad():
            la = orig_model(torch.tensor([a])).logits[..., index]
            lb = new_model(torch.tensor([b])).logits
        torch.testing.assert_close(lb, la, atol=atol, rtol=1e-6)


def test_logits_equal_at_kept_ids(pruned):
    texts = sorted(_kept_texts(pruned), key=len)[-6:]
    if pruned.rule == "min":
        texts += kit_corpus().splitlines()[:3]
    _assert_logits_equal(pruned, texts)


def test_greedy_generation_is_the_same(pruned):
    """Greedy decoding of the pruned model equals the original's restricted to kept tokens (and the
    texts are equal), so only pruned-away tokens can make the two differ."""
    import torch

    orig_model, new_model = _models(pruned)
    orig, new = _raw(pruned.src), _raw(pruned.out)
    pruned_ids = sorted(set(range(orig.get_vocab_size())) - pruned.kept)
    prompt = sorted(_kept_texts(pruned), key=len)[-1]
    a = orig.encode(prompt).ids
    b = new.encode(prompt).ids
    common = {"max_new_tokens": 24, "do_sample": False, "num_beams": 1, "eos_token_id": None}
    with torch.no_grad():
        out_a = orig_model.generate(torch.tensor([a]), suppress_tokens=pruned_ids or None, **common)[0, len(a):]
        out_b = new_model.generate(torch.tensor([b]), **common)[0, len(b):]
    assert [pruned.token_map[i] for i in out_b.tolist()] == out_a.tolist()
    assert new.decode(out_b.tolist(), skip_special_tokens=False) == orig.decode(out_a.tolist(), skip_special_tokens=False)


def test_tied_stays_tied_and_untied_stays_untied(pruned):
    import torch
    from safetensors import safe_open

    orig_model, new_model = _models(pruned)
    cfg = json.loads((pruned.out / "config.json").read_text())
    with safe_open(pruned.out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    if pruned.family == "bloom":
        assert cfg["tie_word_embeddings"] is True
        assert "lm_head.weight" not in keys
        assert new_model.lm_head.weight.data_ptr() == new_model.get_input_embeddings().weight.data_ptr()
    else:
        assert cfg["tie_word_embeddings"] is False
        assert "lm_head.weight" in keys
        assert new_model.lm_head.weight.data_ptr() != new_model.get_input_embeddings().weight.data_ptr()
        torch.testing.assert_close(new_model.lm_head.weight, orig_model.lm_head.weight[pruned.token_map], rtol=0, atol=0)
    torch.testing.assert_close(
        new_model.get_input_embeddings().weight,
        orig_model.get_input_embeddings().weight[pruned.token_map],
        rtol=0,
        atol=0,
    )
    # Parameters in the report count tied weights once, like transformers does.
    assert pruned.report.params_after == new_model.num_parameters()
    assert pruned.report.params_before == orig_model.num_parameters()


@pytest.mark.slow
def test_sharded_checkpoint(tmp_path, corpus_file):
    src = build_model_folder(tmp_path / "sharded", "bloom", max_shard_size="20KB")
    assert (src / "model.safetensors.index.json").is_file()
    out = tmp_path / "out"
    report = prune_vocabulary(src, corpus_file, out, keep_top=300)
    src_index = json.loads((src / "model.safetensors.index.json").read_text())
    out_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert out_index["weight_map"] == src_index["weight_map"]  # same shard layout
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(set(src_index["weight_map"].values()))
    p = Pruned("bloom", "top", src, out, report, json.loads((out / TOKEN_MAP_FILE).read_text()))
    _assert_logits_equal(p, sorted(_kept_texts(p), key=len)[-3:])


@pytest.mark.slow
def test_bf16_checkpoint_keeps_its_dtype(tmp_path, corpus_file):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    src = build_model_folder(tmp_path / "bf16", "qwen2", tie_word_embeddings=False, dtype="bfloat16")
    out = tmp_path / "out"
    prune_vocabulary(src, corpus_file, out, keep_top=300)
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    token_map = json.loads((out / TOKEN_MAP_FILE).read_text())
    a = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    b = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert torch.equal(b.lm_head.weight, a.lm_head.weight[token_map])
    assert torch.equal(b.get_input_embeddings().weight, a.get_input_embeddings().weight[token_map])


def _move_a_special_to_the_end(src: Path, dst: Path) -> str:
    """A copy of `src` whose last vocabulary id (a merge result) is replaced by a special token
    `<|tool|>` that the config names as eos and a TemplateProcessing puts before every text."""
    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    model = tok["model"]
    last_id = max(model["vocab"].values())
    last = next(t for t, i in model["vocab"].items() if i == last_id)
    del model["vocab"][last]
    model["merges"] = [m for m in model["merges"] if last not in (m[0], m[1], m[0] + m[1])]
    special = "<|tool|>"
    tok["added_tokens"].append(
        {"id": last_id, "content": special, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    )
    tok["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": special, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {special: {"id": special, "ids": [last_id], "tokens": [special]}},
    }
    (dst / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((dst / name).read_text())
        cfg["eos_token_id"] = [last_id, 0] if name.startswith("generation") else last_id
        (dst / name).write_text(json.dumps(cfg))
    return special


def test_specials_beyond_the_new_size_move_and_every_reference_follows(tmp_path, qwen_dir, corpus_file):
    src = tmp_path / "src"
    special = _move_a_special_to_the_end(qwen_dir, src)
    out = tmp_path / "out"
    prune_vocabulary(src, corpus_file, out, keep_top=300)
    orig, new = _raw(src), _raw(out)
    token_map = json.loads((out / TOKEN_MAP_FILE).read_text())
    new_id = new.token_to_id(special)
    assert new_id is not None and new_id < 300 and token_map[new_id] == orig.token_to_id(special) == 399
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == new_id
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [new_id, 0]
    text = "床前明月光"
    a, b = orig.encode(text), new.encode(text)
    assert a.ids[0] == 399 and b.ids[0] == new_id  # the post-processor inserts the moved id
    assert new.decode(b.ids, skip_special_tokens=False) == orig.decode(a.ids, skip_special_tokens=False)
    moved = Pruned("qwen2", "top", src, out, None, token_map)  # type: ignore[arg-type]
    _assert_logits_equal(moved, sorted(_kept_texts(moved), key=len)[-2:])


def test_jsonl_corpus_counts_string_fields(tmp_path, bloom_dir):
    lines = kit_corpus().splitlines()[:6]
    records = [{"conversation": [{"human": lines[i], "assistant": lines[i + 1]}], "id": i, "ok": True} for i in (0, 2, 4)]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n", encoding="utf-8")
    report = prune_vocabulary(bloom_dir, [jsonl], tmp_path / "out")
    expected = sum(len(e.ids) for e in _raw(bloom_dir).encode_batch(lines, add_special_tokens=False))
    assert report.corpus_tokens == expected  # strings only: not the keys, not the numbers


def test_keep_file_tokens_are_kept(tmp_path, bloom_dir, corpus_file):
    orig = _raw(bloom_dir)
    unseen_text = kit_corpus().splitlines()[-1]
    token = max(orig.get_vocab().items(), key=lambda kv: kv[1])[0]  # the last merge: rare, long
    keep = tmp_path / "keep.txt"
    keep.write_text(f"{token}\n{unseen_text}\n\n", encoding="utf-8")
    out = tmp_path / "out"
    prune_vocabulary(bloom_dir, corpus_file, out, keep_top=330, keep_file=keep)
    kept = set(json.loads((out / TOKEN_MAP_FILE).read_text()))
    assert orig.token_to_id(token) in kept
    assert set(orig.encode(unseen_text).ids) <= kept
    new = _raw(out)
    assert [json.loads((out / TOKEN_MAP_FILE).read_text())[i] for i in new.encode(unseen_text).ids] == orig.encode(unseen_text).ids


def test_closure_follows_every_merge_that_makes_a_token():
    from firefly_core.pruning.select import closure, new_order
    from firefly_core.pruning.tokenizer import MergeParents

    # 10 = 4+5, 11 = 10+6 and also 4+12, 12 = 5+6: keeping 11 keeps both of its merge paths.
    parents = MergeParents({10: (4, 5), 11: (10, 6), 12: (5, 6)}, {11: [(4, 12)]})
    assert closure([11], parents) == {11, 10, 12, 4, 5, 6}
    assert closure([4], parents) == {4}
    # Specials (pinned) keep their ids when they fit; the rest fill free slots in old-id order.
    assert new_order({0, 1, 5, 7, 9}, pinned=[1, 9]) == [0, 1, 5, 7, 9]
    assert new_order({2, 5, 7, 9}, pinned=[2, 9]) == [5, 7, 2, 9]


def test_cached_hub_id(tmp_path, bloom_dir, corpus_file):
    """MODEL may be a hub id already in the local cache (the test's private HF_HOME)."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--kit--tiny-bloom"
    commit = "0" * 40
    shutil.copytree(bloom_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    report = prune_vocabulary("kit/tiny-bloom", corpus_file, tmp_path / "out", keep_top=300)
    assert report.vocab_after == 300 and (tmp_path / "out" / "model.safetensors").is_file()


def test_counting_tokenizer_encodes_like_the_file(model_dir):
    from firefly_core.pruning.tokenizer import counting_tokenizer, read_tokenizer

    fast, slow = counting_tokenizer(read_tokenizer(model_dir)), _raw(model_dir)
    texts = kit_corpus().splitlines() + ["<s>hi</s> <|im_start|>user\n你好<|im_end|>", "  \t\n", "🙂 ok"]
    assert [e.ids for e in fast.encode_batch(texts)] == [e.ids for e in slow.encode_batch(texts)]
