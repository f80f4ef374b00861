"""Model loading: both families load for real; every user error is one of ours, with a hint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from firefly_core.errors import InvalidModelError, ModelNotFoundError, RemoteCodeError
from firefly_core.models.loading import load_model, pick_device, pick_dtype


def test_loads_both_families(model_dir):
    lm = load_model(model_dir, dtype="fp32")
    assert lm.device.type == "cpu" and lm.dtype == torch.float32
    assert not lm.model.training
    assert lm.stop_token_ids
    expected = "firefly-v1" if "bloom" in model_dir.name else "chat_template"
    assert lm.prompt_format.name == expected


def test_device_and_dtype_defaults():
    dev = pick_device()
    assert dev.type in ("cpu", "cuda", "mps")
    assert pick_dtype(torch.device("cpu")) == torch.bfloat16
    assert pick_dtype(torch.device("cpu"), "fp32") == torch.float32


def test_missing_folder(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        load_model(tmp_path / "nope")
    assert e.value.hint


def test_hub_id_not_downloaded_offline():
    with pytest.raises(ModelNotFoundError) as e:
        load_model("YeungNLP/firefly-1b4")
    assert "firefly pull YeungNLP/firefly-1b4" in e.value.hint


def test_folder_without_config_or_tokenizer(bloom_dir, tmp_path):
    with pytest.raises(InvalidModelError, match="config.json"):
        load_model(tmp_path)
    broken = tmp_path / "no-tok"
    shutil.copytree(bloom_dir, broken)
    (broken / "tokenizer.json").unlink()
    (broken / "tokenizer_config.json").unlink()
    with pytest.raises(InvalidModelError, match="tokenizer"):
        load_model(broken)


def test_remote_code_refused(bloom_dir, tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(bloom_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RemoteCodeError):
        load_model(folder)


def test_load_with_int8_quantization(bloom_dir):
    from firefly_core.generation.quantize import Int8Linear, quantization_of

    lm = load_model(bloom_dir, quantize="int8")
    assert quantization_of(lm.model) is not None
    assert any(isinstance(m, Int8Linear) for m in lm.model.modules())
