"""check_model_folder: the one cheap check of a model folder, run by `firefly use`, loading and the app.

Each broken folder below was accepted by `firefly use` before and failed later (a traceback at
load, or an IndexError in the middle of a chat); now each is refused up front with what is wrong.
Oracles: the intact folders pass and load; torch's own weights-only loader refuses the same .bin.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct

import pytest

from firefly_core.errors import InvalidModelError
from firefly_core.models import inventory
from firefly_core.models.folder import check_model_folder, safetensors_header


@pytest.fixture
def bloom(bloom_dir, tmp_path):
    return shutil.copytree(bloom_dir, tmp_path / "bloom")


@pytest.fixture
def qwen(qwen_dir, tmp_path):
    return shutil.copytree(qwen_dir, tmp_path / "qwen")


def refused(folder, *fragments):
    with pytest.raises(InvalidModelError) as e:
        check_model_folder(folder)
    text = str(e.value)
    for fragment in fragments:
        assert fragment in text, text
    return e.value


def edit_json(file, change):
    data = json.loads(file.read_text("utf-8"))
    change(data)
    file.write_text(json.dumps(data), "utf-8")


def test_intact_folders_pass(bloom, qwen):
    assert check_model_folder(bloom)["model_type"] == "bloom"
    assert check_model_folder(qwen)["model_type"] == "qwen2"


# -- weights ---------------------------------------------------------------------------------


def test_empty_safetensors(bloom):
    (bloom / "model.safetensors").write_bytes(b"")
    assert refused(bloom, "model.safetensors", "empty").hint


def test_truncated_safetensors(bloom):
    f = bloom / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    refused(bloom, "truncated", f"{len(data) - 8 - struct.unpack('<Q', data[:8])[0]:,}")


def test_random_bytes_safetensors(bloom):
    (bloom / "model.safetensors").write_bytes(os.urandom(50_000))
    refused(bloom, "is not a safetensors file")


def test_safetensors_with_a_header_that_is_not_json(bloom):
    (bloom / "model.safetensors").write_bytes(struct.pack("<Q", 10) + b"\xff" * 10 + b"\0" * 100)
    refused(bloom, "header is not JSON")


def test_safetensors_with_a_tensor_that_does_not_match_its_bytes(bloom):
    f = bloom / "model.safetensors"
    data = f.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [s + 1 for s in header[name]["shape"]]
    raw = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    refused(bloom, name, "does not match its byte range")


def test_safetensors_header_reads_only_the_header(bloom):
    from safetensors import safe_open

    tensors = safetensors_header(bloom / "model.safetensors")
    with safe_open(bloom / "model.safetensors", "pt") as f:  # the library's own reading
        assert sorted(tensors) == sorted(f.keys())
        assert all(list(f.get_slice(k).get_shape()) == tensors[k]["shape"] for k in f.keys())


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this ran",))


def test_pickle_bin_that_the_weights_only_loader_refuses(bloom):
    import torch

    (bloom / "model.safetensors").unlink()
    torch.save({"transformer.word_embeddings.weight": torch.zeros(2, 2), "x": _RunsCode()}, bloom / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError):  # the oracle: torch refuses it too
        torch.load(bloom / "pytorch_model.bin", weights_only=True)
    e = refused(bloom, "pytorch_model.bin", "refuses", "system")
    assert "safetensors" in e.hint


def test_legacy_format_bin_is_scanned_too(bloom):
    import torch

    from firefly_core.models.folder import check_torch_bin

    good, bad = bloom / "good.bin", bloom / "bad.bin"
    torch.save({"w": torch.zeros(2, 2)}, good, _use_new_zipfile_serialization=False)
    torch.save({"w": torch.zeros(2, 2), "x": _RunsCode()}, bad, _use_new_zipfile_serialization=False)
    torch.load(good, weights_only=True)  # the oracle: torch reads one and refuses the other
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bad, weights_only=True)
    check_torch_bin(good)
    with pytest.raises(InvalidModelError, match="refuses"):
        check_torch_bin(bad)
    plain = bloom / "plain.bin"
    plain.write_bytes(pickle.dumps({"w": [1, 2]}))  # a pickle, but not torch's
    with pytest.raises(InvalidModelError, match="not a PyTorch weights file"):
        check_torch_bin(plain)


def test_a_plain_state_dict_bin_passes_and_loads(bloom):
    import torch
    from safetensors.torch import load_file

    from firefly_core.models.loading import load_model

    state = load_file(bloom / "model.safetensors")
    (bloom / "model.safetensors").unlink()
    torch.save(state, bloom / "pytorch_model.bin")
    assert check_model_folder(bloom)["model_type"] == "bloom"
    lm = load_model(bloom, dtype="fp32", device="cpu")
    assert torch.equal(lm.model.transformer.word_embeddings.weight, state["transformer.word_embeddings.weight"])


def test_random_bytes_bin(bloom):
    (bloom / "model.safetensors").unlink()
    (bloom / "pytorch_model.bin").write_bytes(os.urandom(4096))
    refused(bloom, "pytorch_model.bin", "not a PyTorch weights file")


def test_sharded_weights_with_a_missing_shard(bloom):
    (bloom / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    shutil.copy(bloom / "model.safetensors", bloom / "model-00001-of-00002.safetensors")
    refused(bloom, "misses weight shards", "model-00002-of-00002.safetensors")


# -- config.json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"[1, 2, 3]", "not an object"),
        ("{\"model_type\": \"bloom\", \"name\": \"流萤\"}".encode("gbk"), "not UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"model_type": "bloom",', "not valid JSON"),
        (b'{"vocab_size": 400}', "has no model_type"),
        (b'{"model_type": "no-such-model"}', "'no-such-model' is not one"),
        (b'{"model_type": "bloom", "vocab_size": "many"}', "vocab_size is 'many'"),
    ],
    ids=["list", "gbk", "deep", "cut", "no-model-type", "unknown-model-type", "bad-vocab-size"],
)
def test_bad_config(bloom, content, fragment):
    (bloom / "config.json").write_bytes(content)
    assert refused(bloom, "config.json", fragment).hint


def test_unknown_model_type_with_its_own_code_is_accepted(bloom):
    edit_json(bloom / "config.json", lambda c: c.update(model_type="internlm2", auto_map={"AutoConfig": "x.Y"}))
    assert check_model_folder(bloom)["model_type"] == "internlm2"


# -- sizes: config, weights, tokenizer ---------------------------------------------------------


def test_vocab_size_disagreeing_with_the_weights(qwen):
    edit_json(qwen / "config.json", lambda c: c.update(vocab_size=512))
    refused(qwen, "vocab_size 512", "has 400 rows")


def test_tokenizer_with_more_tokens_than_embedding_rows(qwen):
    def add(tok):
        tok["added_tokens"].append({"id": 405, "content": "<|extra|>", "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True})

    edit_json(qwen / "tokenizer.json", add)
    refused(qwen, "the tokenizer has 406 tokens", "only 400 rows")


# -- chat template -----------------------------------------------------------------------------


def test_chat_template_with_a_syntax_error(qwen):
    (qwen / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }", "utf-8")
    e = refused(qwen, "chat_template.jinja", "TemplateSyntaxError")
    assert "--format" in e.hint


def test_chat_template_that_raises(qwen):
    (qwen / "chat_template.jinja").write_text("{{ raise_exception('this template is broken') }}", "utf-8")
    refused(qwen, "chat_template.jinja", "this template is broken")


def test_chat_template_in_tokenizer_config_is_checked_too(bloom):
    edit_json(bloom / "tokenizer_config.json", lambda c: c.update(chat_template="{{ messages[0].nope.deeper }}"))
    refused(bloom, "tokenizer_config.json", "chat template that fails")


def test_a_template_that_only_refuses_system_messages_is_fine(qwen):
    (qwen / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
        "utf-8",
    )
    check_model_folder(qwen)


# -- the same rule at `firefly use` and at load ------------------------------------------------


def test_use_and_load_refuse_a_broken_folder_and_nothing_is_registered(bloom, fresh_home):
    from firefly_core.models.loading import load_model

    (bloom / "model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidModelError, match="empty"):
        inventory.register_local(bloom)
    assert inventory.registered_local() == []
    with pytest.raises(InvalidModelError, match="empty"):
        load_model(bloom)
