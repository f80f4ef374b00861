"""GGUF export: llama.cpp runs our exported files like transformers runs the folders they came from.

Oracles: transformers' logits and greedy tokens on the same ids; the Hugging Face tokenizer's ids
(and llama.cpp's own expected ids shipped with its sources) for llama.cpp's tokenization from our
metadata; the files that must (not) exist after an export or a stopped one.
"""

from __future__ import annotations

import json
import os
import tarfile
import threading
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'firefly-tui[llamacpp]')")
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'firefly-tui[llamacpp]')")
# This module names its engine: llama.cpp (tests/conftest.py turns it off for everyone else).
pytestmark = pytest.mark.usefixtures("llamacpp_module")

import gguf  # noqa: E402

from firefly_core.errors import OutputExistsError, UnsupportedModelError  # noqa: E402
from firefly_core.export.gguf import ExportCancelled, export_gguf, model_info  # noqa: E402
from firefly_core.export.gguf_vocab import pre_tokenizer_name  # noqa: E402
from firefly_core.generation import GenerationConfig, generate_ids  # noqa: E402
from firefly_core.generation.llamacpp import LlamaCppDecoder  # noqa: E402
from firefly_core.models.loading import load_model  # noqa: E402

PROMPT = "Write a poem about the moon. 写一首关于月亮的诗。"


@pytest.fixture(scope="module")
def lms(bloom_dir, qwen_dir):
    return {
        "bloom": load_model(bloom_dir, dtype="fp32", device="cpu"),
        "qwen2": load_model(qwen_dir, dtype="fp32", device="cpu"),
    }


@pytest.fixture(scope="module")
def exported(lms, tmp_path_factory):
    """family, type -> GGUF path (made once per module)."""
    out = tmp_path_factory.mktemp("gguf")
    made: dict[tuple[str, str], Path] = {}

    def get(family: str, gguf_type: str) -> Path:
        if (family, gguf_type) not in made:
            made[family, gguf_type] = export_gguf(lms[family], out / f"{family}.{gguf_type}.gguf", gguf_type=gguf_type)
        return made[family, gguf_type]

    return get


def _decoder(path: Path) -> LlamaCppDecoder:
    return LlamaCppDecoder(path, n_ctx=512, threads=1)


def _ids(lm, text=PROMPT):
    return lm.tokenizer.encode(text, add_special_tokens=False)


def _hf_logits_per_step(model, ids: list[int], extra: list[int]) -> list[torch.Tensor]:
    """transformers' last-position logits after the prompt and after each extra token."""
    with torch.inference_mode():
        full = model(torch.tensor([ids + extra])).logits[0].float()
    return [full[len(ids) - 1 + i] for i in range(len(extra) + 1)]


def _llama_logits_per_step(dec: LlamaCppDecoder, ids: list[int], extra: list[int]) -> list[torch.Tensor]:
    cache = dec.new_cache()
    out = [dec.forward(torch.tensor([ids]), cache)[0]]
    for t in extra:
        out.append(dec.forward(torch.tensor([[t]]), cache)[0])
    return out


# Why these tolerances (relative to the range of the logits): llama.cpp keeps the KV cache in f16
# (its default, and ours) and sums in another order, so even an f32 export differs from
# transformers' f32 by the f16 rounding of K/V (2^-11 relative) carried through the layers:
# measured at most 1.0e-3 on these models; an f16 export also rounds every weight: 1.2e-3. The
# bounds are 5x and 8x that. A wrong layout is far outside: BLOOM's fused qkv written without
# reordering measured 0.24. (Token-level equality is the greedy test's job: these random models
# have near-ties between their top two logits, down to 3e-4 of the range.)
REL_TOL = {"f32": 5e-3, "f16": 1e-2}


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
@pytest.mark.parametrize("gguf_type", ["f32", "f16"])
def test_float_export_logits_equal_transformers(lms, exported, family, gguf_type):
    lm = lms[family]
    ids = _ids(lm)
    extra = _ids(lm, "萤火虫 fireflies")[:6]
    ref = _hf_logits_per_step(lm.model, ids, extra)
    got = _llama_logits_per_step(_decoder(exported(family, gguf_type)), ids, extra)
    for r, g in zip(ref, got):
        assert g.shape == r.shape
        scale = float(r.max() - r.min())
        err = float((g - r).abs().max())
        assert err <= REL_TOL[gguf_type] * scale, f"max |diff| {err:.3g} vs logit range {scale:.3g}"


def _reference_greedy(lm, ids, n):
    out = lm.model.generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
        max_new_tokens=n, repetition_penalty=1.0, eos_token_id=lm.stop_token_ids, pad_token_id=lm.tokenizer.pad_token_id,
    )
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_greedy_tokens_equal_transformers_at_f32(lms, exported, family):
    lm = lms[family]
    ids = _ids(lm)
    cfg = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=40)
    ours = generate_ids(lm, ids, cfg, decoder=_decoder(exported(family, "f32")))
    assert ours == _reference_greedy(lm, ids, 40)
    assert len(ours) > 20


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
@pytest.mark.parametrize("gguf_type, expected", [("q8_0", gguf.GGMLQuantizationType.Q8_0), ("q4_k_m", None)])
def test_quantized_export_loads_and_generates(lms, exported, family, gguf_type, expected):
    lm = lms[family]
    path = exported(family, gguf_type)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    big = [n for n in types if n.startswith("blk.0.") and n.endswith(".weight") and "norm" not in n]
    quantized = {types[n] for n in big}
    float_types = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}
    assert quantized and not quantized & float_types, f"{gguf_type}: block weights not quantized: {quantized}"
    if expected is not None:
        assert quantized == {expected}
    assert path.stat().st_size < exported(family, "f32").stat().st_size / 2
    ids = _ids(lm)
    dec = _decoder(path)
    out = generate_ids(lm, ids, GenerationConfig(do_sample=False, max_new_tokens=16), decoder=dec)
    assert out and all(0 <= t < dec.vocab_size for t in out)
    # quantization noise, not a different model: logits still point the same way as f32's
    ref = _llama_logits_per_step(_decoder(exported(family, "f32")), ids, [])[0]
    got = _llama_logits_per_step(dec, ids, [])[0]
    cos = float(torch.nn.functional.cosine_similarity(ref, got, dim=0))
    # Rows of 32 values hold no 256-value K-quant block, so llama.cpp falls back to 4/5-bit legacy
    # types for these tiny models (the README's quality figures use K-quant-sized rows).
    assert cos > (0.999 if gguf_type == "q8_0" else 0.95), cos


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_metadata_tokenizer_template_and_stop_tokens(lms, exported, family):
    from firefly_core.formats import FireflyV1

    lm = lms[family]
    reader = gguf.GGUFReader(exported(family, "f32"))
    f = reader.fields
    assert f["general.architecture"].contents() == family
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    # BLOOM's kit tokenizer splits with ByteLevel's own (GPT-2) regex; transformers loads the Qwen2
    # kit tokenizer as Qwen2TokenizerFast, whose pre-tokenizer is Qwen2's split: read, not guessed
    assert f["tokenizer.ggml.pre"].contents() == {"bloom": "gpt-2", "qwen2": "qwen2"}[family]
    tokens = f["tokenizer.ggml.tokens"].contents()
    assert tokens == lm.tokenizer.convert_ids_to_tokens(list(range(len(tokens))))
    assert f["tokenizer.ggml.eos_token_id"].contents() in lm.stop_token_ids
    template = f["tokenizer.chat_template"].contents()
    if family == "bloom":
        assert template == FireflyV1.jinja
    else:
        assert template == lm.tokenizer.chat_template
    merges = f["tokenizer.ggml.merges"].contents()
    tok_json = json.loads(lm.tokenizer.backend_tokenizer.to_str())
    assert merges == [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]


def test_llama_style_export_with_llama3_rope_equals_transformers(tmp_path):
    """Llama's q/k rows are permuted for llama.cpp's RoPE and Llama 3.1's frequency factors are
    written as rope_freqs: both wrong would show as different logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from firefly_core.testkit import build_tokenizer

    tok = build_tokenizer("qwen2")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.2, tie_word_embeddings=False,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), bos_token_id=None,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
    )
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    lm = load_model(folder, dtype="fp32", device="cpu")
    path = export_gguf(lm, tmp_path / "llama.gguf", gguf_type="f32")
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert "rope_freqs.weight" in names
    ids = _ids(lm) * 3  # past original_max_position_embeddings, where the factors matter
    extra = _ids(lm, "fireflies")[:4]
    ref = _hf_logits_per_step(lm.model, ids, extra)
    got = _llama_logits_per_step(_decoder(path), ids, extra)
    for r, g in zip(ref, got):
        assert float((g - r).abs().max()) <= REL_TOL["f32"] * float(r.max() - r.min())


def test_stopped_export_leaves_no_file(lms, tmp_path):
    cancel = threading.Event()
    cancel.set()
    out = tmp_path / "stopped.gguf"
    with pytest.raises(ExportCancelled):
        export_gguf(lms["bloom"], out, gguf_type="q8_0", cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_tokenizers_are_refused_with_a_reason():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}) == "gpt-2"
    with pytest.raises(UnsupportedModelError, match="not byte-level"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}})
    with pytest.raises(UnsupportedModelError, match="split pattern"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"\w+"}, "behavior": "Isolated", "invert": False}, byte_level]}})
    with pytest.raises(UnsupportedModelError, match="normalizer"):
        pre_tokenizer_name({"normalizer": {"type": "Lowercase"}, "pre_tokenizer": byte_level})


def test_unsupported_architecture_is_refused(lms, tmp_path):
    import dataclasses

    folder = tmp_path / "odd"
    folder.mkdir()
    for p in lms["bloom"].path.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="gpt_neox"):
        export_gguf(dataclasses.replace(lms["bloom"], path=folder), tmp_path / "odd.gguf", gguf_type="f32")
    assert not (tmp_path / "odd.gguf").exists()


# ------------------------------------------------------------------------------------- CLI + ollama
def test_cli_export_with_ollama_modelfile(bloom_dir, tmp_path, capsys):
    from firefly_tui.cli import main

    out = tmp_path / "firefly.gguf"
    assert main(["export", str(bloom_dir), "--gguf", str(out), "--type", "f16", "--ollama"]) == 0
    assert out.is_file() and out.read_bytes()[:4] == b"GGUF"
    modelfile = (tmp_path / "Modelfile").read_text("utf-8")
    lines = modelfile.splitlines()
    assert "FROM ./firefly.gguf" in lines
    # Firefly's original generation defaults, the model's own stop token, Firefly v1's prompt layout
    for expected in ("PARAMETER temperature 0.35", "PARAMETER top_p 0.85", "PARAMETER repeat_penalty 1.2",
                     "PARAMETER repeat_last_n -1", 'PARAMETER stop "</s>"'):
        assert expected in lines
    template = next(l for l in lines if l.startswith("TEMPLATE"))
    assert "<s>{{ $sys }}{{ .Content }}</s></s>" in template and "{{ .Content }}</s>" in template
    assert "wrote" in capsys.readouterr().out
    # an existing file is not replaced without --force
    before = out.stat().st_mtime_ns
    assert main(["export", str(bloom_dir), "--gguf", str(out)]) == 1
    assert out.stat().st_mtime_ns == before
    assert "already exists" in capsys.readouterr().err
    # a folder that does not exist yet is made, and the user is told where
    nested = tmp_path / "new" / "place" / "m.gguf"
    assert main(["export", str(bloom_dir), "--gguf", str(nested), "--type", "f16"]) == 0
    assert nested.is_file() and f"made the folder {nested.parent}" in capsys.readouterr().err


def test_modelfile_for_a_chatml_model_with_a_default_system_prompt(qwen_dir, tmp_path):
    from firefly_core.export.ollama import modelfile_text

    info = model_info(qwen_dir)
    qwen_like = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
                 + info.tokenizer.chat_template)
    info.tokenizer.chat_template = qwen_like
    text = modelfile_text(info, "q.gguf")
    assert 'SYSTEM """You are a helpful assistant."""' in text
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>" in text
    assert 'PARAMETER stop "<|im_end|>"' in text


def test_modelfile_carries_the_system_prompt_saved_for_the_model(bloom_dir, fresh_home):
    """`firefly use M --system …` is what every chat with M uses; the ollama Modelfile says it too
    (SYSTEM), and a prompt a Modelfile cannot hold is a clear error, not a ValueError."""
    from firefly_core.errors import ConfigError
    from firefly_core.export.ollama import modelfile_text
    from firefly_core.models.user_settings import update_model_settings

    assert "SYSTEM" not in modelfile_text(model_info(bloom_dir), "m.gguf")
    update_model_settings(str(bloom_dir), system="你是一个诗人")
    assert 'SYSTEM """你是一个诗人"""' in modelfile_text(model_info(bloom_dir), "m.gguf")
    update_model_settings(str(bloom_dir), system='say """hi"""')
    with pytest.raises(ConfigError, match="triple quotes"):
        modelfile_text(model_info(bloom_dir), "m.gguf")


# ----------------------------------------------------------------------------- real vocabularies
VOCABS = ("qwen2", "llama-bpe")
HARD_STRINGS = [
    "流萤，又名萤火虫。春眠不觉晓，处处闻啼鸟。",
    "混合 mixed 文本 with 数字 12345 and ３４５全角",
    "emoji 🦙🔥👨‍👩‍👧 and 😶‍🌫️ zwj",
    "    leading spaces\tand\ttabs\n\n\n   newlines  ",
    "Ελληνικά, русский, العربية, हिन्दी, 한국어, 日本語のテキスト",
    "I've been 'told he's there, 'RE you sure? 'M not",
    "a\u00a0non-breaking\u2003em space and \u200b zero width",
    "```python\ndef f(x):\n    return x ** 2\n```",
]


def _sdist_members() -> dict[str, bytes] | None:
    """The vocab files from llama-cpp-python's sdist (vendor/llama.cpp/models), if one is here:
    $FIREFLY_LLAMACPP_SDIST (the .tar.gz or an extracted folder) or tmp/llama-cpp-python-sdist/."""
    root = Path(__file__).resolve().parent.parent
    candidates = [os.environ.get("FIREFLY_LLAMACPP_SDIST", "")] + sorted(
        str(p) for p in (root / "tmp" / "llama-cpp-python-sdist").glob("llama_cpp_python-*.tar.gz")
    )
    wanted = [f"ggml-vocab-{v}.gguf{ext}" for v in VOCABS for ext in ("", ".inp", ".out")]
    for c in filter(None, candidates):
        p = Path(c)
        if p.is_dir():
            found = {w: next(p.rglob(w), None) for w in wanted}
            if all(found.values()):
                return {w: f.read_bytes() for w, f in found.items()}
        elif p.is_file():
            with tarfile.open(p) as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if "/models/ggml-vocab-" in m.name}
                if all(w in members for w in wanted):
                    return {w: tar.extractfile(members[w]).read() for w in wanted}
    return None


@pytest.fixture(scope="module")
def real_vocab_files(tmp_path_factory):
    members = _sdist_members()
    if members is None:
        pytest.skip("llama.cpp's vocab test files are not here: pip download --no-binary :all: --no-deps "
                    "llama-cpp-python -d tmp/llama-cpp-python-sdist (or set FIREFLY_LLAMACPP_SDIST)")
    out = tmp_path_factory.mktemp("vocabs")
    for name, data in members.items():
        (out / name).write_bytes(data)
    return out


_PRE_REGEX = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def _hf_tokenizer_from_vocab_gguf(path: Path, name: str):
    """The real tokenizer a llama.cpp vocab file was made from, rebuilt as a Hugging Face tokenizer
    (checked against llama.cpp's own expected ids below before it is trusted as the oracle)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    f = gguf.GGUFReader(path).fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"].contents()]
    vocab = {t: i for i, t in enumerate(tokens)}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=name == "llama-bpe"))
    if name == "qwen2":
        raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRE_REGEX[name]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    eos = f["tokenizer.ggml.eos_token_id"].contents()
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=tokens[eos]), len(tokens)


def _inp_out(folder: Path, name: str) -> list[tuple[str, list[int]]]:
    inp = (folder / f"ggml-vocab-{name}.gguf.inp").read_text("utf-8").split("\n__ggml_vocab_test__\n")
    out = (folder / f"ggml-vocab-{name}.gguf.out").read_text("utf-8").split("\n")
    return [(text, [int(x) for x in ids.split()]) for text, ids in zip(inp, out)]


@pytest.mark.parametrize("name", VOCABS)
def test_llamacpp_tokenizes_our_exported_metadata_like_hugging_face(real_vocab_files, name, tmp_path, one_torch_thread):
    import llama_cpp
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok, n_vocab = _hf_tokenizer_from_vocab_gguf(real_vocab_files / f"ggml-vocab-{name}.gguf", name)
    cases = _inp_out(real_vocab_files, name)
    assert len(cases) > 30
    for text, expected in cases:  # the rebuilt tokenizer is the real one: llama.cpp's shipped oracle agrees
        assert tok.encode(text, add_special_tokens=False) == expected, text

    # a tiny model with this vocabulary, exported by us: only the tokenizer metadata matters here
    folder = tmp_path / name
    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if name == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_class(vocab_size=n_vocab, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                          eos_token_id=tok.eos_token_id, bos_token_id=None)
    model_class(config).save_pretrained(folder)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(folder)
    info = model_info(folder, "chat_template")
    path = export_gguf(info, tmp_path / f"{name}.gguf", gguf_type="f16")
    assert gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == name

    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text in [t for t, _ in cases] + HARD_STRINGS:
        ours = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert ours == tok.encode(text, add_special_tokens=False), repr(text)
        assert llm.detokenize(ours).decode("utf-8") == text


# ------------------------------------------------------- hostile: damaged cache, killed exports, odd places
def _flip_weight_bytes(path: Path) -> None:
    """Overwrite bytes inside one weight tensor's data: the header stays valid, llama.cpp loads it."""
    reader = gguf.GGUFReader(path)
    tensor = next(t for t in reader.tensors if t.name.startswith("blk.0.") and t.name.endswith(".weight") and len(t.shape) == 2)
    offset = int(tensor.data_offset)
    del reader
    with open(path, "r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(512))
        f.seek(offset)
        f.write(bytes(b ^ 0x5A for b in data))


def test_a_cached_gguf_with_flipped_weight_bytes_is_remade(qwen_dir, monkeypatch, tmp_path):
    from firefly_core.export.gguf_cache import attach_llamacpp, checksum_path, file_sha256, gguf_cache_path

    monkeypatch.setenv("FIREFLY_HOME", str(tmp_path / "home"))
    info = model_info(qwen_dir)
    attach_llamacpp(info, quantize="f16", threads=1, status=None)
    path = gguf_cache_path(qwen_dir, "f16")
    good = file_sha256(path)
    assert checksum_path(path).read_text().split()[0] == good  # written when made
    ids = _ids(info)
    reply = generate_ids(info, ids, GenerationConfig(do_sample=False, max_new_tokens=12))
    original_logits = info.decoder.forward(torch.tensor([ids]), info.decoder.new_cache())
    info.decoder.close()

    _flip_weight_bytes(path)
    damaged = _decoder(path)  # the damage is real: llama.cpp loads the file and answers differently
    assert not torch.equal(damaged.forward(torch.tensor([ids]), damaged.new_cache()), original_logits)
    damaged.close()

    said: list[str] = []
    again = model_info(qwen_dir)
    attach_llamacpp(again, quantize="f16", threads=1, status=said.append)
    assert any("damaged" in s and "checksum" in s for s in said), said
    assert file_sha256(path) == good
    assert generate_ids(again, ids, GenerationConfig(do_sample=False, max_new_tokens=12)) == reply
    again.decoder.close()


def test_a_cached_gguf_without_its_checksum_is_remade(bloom_dir, monkeypatch, tmp_path):
    from firefly_core.export.gguf_cache import attach_llamacpp, checksum_path, gguf_cache_path

    monkeypatch.setenv("FIREFLY_HOME", str(tmp_path / "home"))
    attach_llamacpp(model_info(bloom_dir), quantize="f16", threads=1, status=None)
    path = gguf_cache_path(bloom_dir, "f16")
    checksum_path(path).unlink()
    said: list[str] = []
    attach_llamacpp(model_info(bloom_dir), quantize="f16", threads=1, status=said.append)
    assert any("no checksum" in s for s in said) and checksum_path(path).is_file()
    said.clear()
    attach_llamacpp(model_info(bloom_dir), quantize="f16", threads=1, status=said.append)
    assert not any("making" in s for s in said)


_KILLED_EXPORT = """
import sys, time
from firefly_core.export.gguf import export_gguf, model_info
from firefly_core.export.gguf_cache import attach_llamacpp

def status(message):
    if message.startswith("writing GGUF"):
        print("writing", flush=True)  # the parent kills us now, mid-write
        time.sleep(600)

info = model_info(sys.argv[1])
if sys.argv[2] == "cache":
    attach_llamacpp(info, quantize="q8_0", threads=1, status=status)
else:
    export_gguf(info, sys.argv[2], gguf_type="q8_0", status=status)
"""


def _kill_mid_write(model: Path, target: str, sig: int, env: dict) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _KILLED_EXPORT, str(model), target],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(sig)
        proc.wait(timeout=60)


@pytest.mark.parametrize("sig_name", ["SIGKILL", "SIGTERM"])
def test_temp_files_of_a_killed_export_are_removed_by_the_next_one(bloom_dir, tmp_path, sig_name):
    import signal

    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    _kill_mid_write(bloom_dir, str(out), getattr(signal, sig_name), dict(os.environ))
    left = sorted(p.name for p in out.parent.iterdir())
    assert left and all(n.startswith(".model.gguf.") and n.endswith(".tmp") for n in left), left
    export_gguf(model_info(bloom_dir), out, gguf_type="f16")
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.gguf"]


def test_temp_files_of_a_killed_cache_build_are_removed_at_the_next_load(bloom_dir, tmp_path, monkeypatch):
    import signal

    from firefly_core.export.gguf_cache import attach_llamacpp, gguf_cache_path

    monkeypatch.setenv("FIREFLY_HOME", str(tmp_path / "home"))
    path = gguf_cache_path(bloom_dir, "q8_0")
    _kill_mid_write(bloom_dir, "cache", signal.SIGKILL, dict(os.environ))
    left = [p.name for p in path.parent.iterdir()]
    assert left and all(n.startswith(f".{path.name}.") for n in left), left
    # a live build's file (another process still writing) is left alone
    live = path.parent / f".other.gguf.{os.getppid()}-0123456789ab.tmp"
    live.write_bytes(b"being written")
    attach_llamacpp(model_info(bloom_dir), quantize="q8_0", threads=1, status=None)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, path.name + ".sha256", path.name + ".verified", live.name])


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_export_to_an_impossible_place_is_a_clear_error(bloom_dir, tmp_path, capsys, where):
    from firefly_tui.cli import main

    if where == "under_a_file":
        (tmp_path / "notes.txt").write_text("mine")
        out = tmp_path / "notes.txt" / "sub" / "model.gguf"
    else:
        out = Path("/proc/firefly-test/model.gguf")
    assert main(["export", str(bloom_dir), "--gguf", str(out), "--type", "f16"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(out.parent.parent if where == "under_a_file" else "/proc") in err, err
    if where == "under_a_file":
        assert (tmp_path / "notes.txt").read_text() == "mine"


def test_one_rule_for_where_an_export_goes(tmp_path):
    """`firefly export` and the app's export check their target with the same function before any
    work: a *.gguf name, not a folder, not an existing file unless replacing (the hint is the front
    end's own words)."""
    from firefly_core.errors import ConfigError, OutputExistsError
    from firefly_core.export.gguf import check_export_target

    with pytest.raises(ConfigError, match="does not end in .gguf"):
        check_export_target(tmp_path / "model.bin", replace=True)
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        check_export_target(tmp_path / "dir.gguf", replace=True)
    existing = tmp_path / "m.gguf"
    existing.write_bytes(b"mine")
    with pytest.raises(OutputExistsError) as refused:
        check_export_target(existing, replace=False, replace_hint="choose another file name")
    assert refused.value.hint == "choose another file name" and existing.read_bytes() == b"mine"
    assert check_export_target(existing, replace=True) == existing.resolve()
    assert check_export_target(tmp_path / "new" / "m.gguf", replace=False) == (tmp_path / "new" / "m.gguf").resolve()
