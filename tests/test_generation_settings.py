"""resolve_generation_config: one layering of generation settings for every front end."""

from __future__ import annotations

import argparse
import json

import pytest

from firefly_core.errors import ConfigError
from firefly_core.generation import GenerationConfig
from firefly_core.models.generation_layers import GENERATION_KEYS, resolve_generation_config

MODEL = "some-org/some-model"


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREFLY_HOME", str(tmp_path / "home"))


def _save(**values):
    from firefly_core.models.user_settings import update_model_settings

    update_model_settings(MODEL, **values)


def test_keys_come_from_generation_config():
    assert set(GENERATION_KEYS) == {"temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"}
    from firefly_core.models.user_settings import ModelSettings

    # The saved per-model settings can hold every key (the list lives in one place).
    assert set(GENERATION_KEYS) <= {f for f in ModelSettings.__dataclass_fields__}


def test_defaults_are_the_seeds():
    assert resolve_generation_config(MODEL) == GenerationConfig()


def test_each_layer_overrides_the_one_below():
    model = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "max_new_tokens": 512,
             "eos_token_id": 7, "bos_token_id": 1}  # keys we do not own are ignored
    _save(top_p=0.6, top_k=5, repetition_penalty=1.1)
    chat = {"top_k": 9, "repetition_penalty": 1.3, "system": "ignored", "model": "ignored", "max_new_tokens": ""}
    cfg = resolve_generation_config(MODEL, model_defaults=model, chat=chat, overrides={"repetition_penalty": 1.4})
    assert cfg.temperature == 0.7  # model file
    assert cfg.top_p == 0.6  # saved setting beats the model file
    assert cfg.top_k == 9  # the chat's setting beats the saved one
    assert cfg.repetition_penalty == 1.4  # the override beats everything
    assert cfg.max_new_tokens == 512  # "" = not set, so the model's value stays
    assert cfg.do_sample


def test_catalog_layer_between_model_file_and_saved(monkeypatch):
    from firefly_core.models import catalog

    class Entry:
        generation_defaults = {"temperature": 0.5, "top_p": 0.9}

    monkeypatch.setattr(catalog, "find_entry", lambda model_id: Entry() if model_id == MODEL else None)
    _save(top_p=0.95)
    cfg = resolve_generation_config(MODEL, model_defaults={"temperature": 0.8, "top_p": 0.7})
    assert (cfg.temperature, cfg.top_p) == (0.5, 0.95)


def test_temperature_zero_is_greedy_at_any_layer():
    for layer in ("model_defaults", "chat", "overrides"):
        cfg = resolve_generation_config(MODEL, **{layer: {"temperature": 0}})
        assert cfg.do_sample is False, layer
    _save(temperature=0.0)
    assert resolve_generation_config(MODEL).do_sample is False
    # A model that says greedy, and a user who then picks a temperature, samples at it.
    cfg = resolve_generation_config(MODEL, model_defaults={"do_sample": False}, chat={"temperature": 0.5})
    assert cfg.do_sample and cfg.temperature == 0.5
    # do_sample chosen above wins over a lower layer's temperature.
    cfg = resolve_generation_config(MODEL, chat={"temperature": 0.5}, overrides={"do_sample": False})
    assert cfg.do_sample is False


def test_temperature_zero_generates_exactly_what_greedy_does(bloom_dir, one_torch_thread):
    import torch

    from firefly_core.generation import generate_ids
    from firefly_core.models.loading import load_model

    lm = load_model(bloom_dir, device="cpu", dtype="fp32")
    prompt = lm.tokenizer.encode("你好，萤火虫", add_special_tokens=False)
    cfg = resolve_generation_config(str(bloom_dir), overrides={"temperature": 0, "max_new_tokens": 12,
                                                                  "repetition_penalty": 1.0})
    ids = generate_ids(lm, prompt, cfg)
    with torch.inference_mode():
        ref = lm.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12, min_new_tokens=12,
                                eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert ids[: len(ref)] == ref[: len(ids)] and len(ids) >= 1


@pytest.mark.parametrize(
    "layer,values,where",
    [
        ("model_defaults", {"top_p": "high"}, "generation_config.json"),
        ("chat", {"top_k": 2.5}, "chat"),
        ("chat", {"temperature": float("nan")}, "chat"),
        ("overrides", {"max_new_tokens": True}, "overrides"),
        ("overrides", {"top_p": 1.5}, "top_p"),
        ("overrides", {"temprature": 0.3}, "temprature"),
    ],
)
def test_bad_values_are_a_clear_error(layer, values, where):
    with pytest.raises(ConfigError) as e:
        resolve_generation_config(MODEL, **{layer: values})
    assert where in str(e.value)


def test_cli_and_app_build_the_same_config_from_the_same_inputs(tmp_path):
    """`firefly chat` flags and the app's chat settings dialog, given the same values on top of the
    same model file and saved settings, give the same GenerationConfig (both call the resolver)."""
    from firefly_tui.commands.chat import generation_flags, register

    model_file = {"temperature": 0.7, "top_k": 20, "do_sample": True}
    _save(repetition_penalty=1.1, max_new_tokens=300)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    cases = [
        (["chat", "--temperature", "0.2", "--top-p", "0.9"], {"temperature": "0.2", "top_p": "0.9"}),
        (["chat", "--temperature", "0"], {"temperature": "0"}),
        (["chat", "--top-k", "5", "--max-new-tokens", "64"], {"top_k": "5", "max_new_tokens": "64"}),
        (["chat"], {}),
    ]
    for argv, dialog in cases:
        args = parser.parse_args(argv)
        cli = resolve_generation_config(MODEL, model_defaults=model_file, overrides=generation_flags(args))
        # The app keeps its dialog's values in the chat's settings dict (typed by the dialog).
        chat = {k: (float(v) if k in ("temperature", "top_p") else int(v)) for k, v in dialog.items()}
        chat.update(model=MODEL, system="")
        app = resolve_generation_config(MODEL, model_defaults=model_file, chat=chat)
        assert cli == app, argv
    greedy = resolve_generation_config(MODEL, model_defaults=model_file,
                                       overrides=generation_flags(parser.parse_args(["chat", "--greedy"])))
    assert greedy.do_sample is False


def test_saved_settings_file_is_the_users_layer(tmp_path):
    from firefly_core import paths

    path = paths.config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "models": {MODEL: {"temperature": 0.9}}}), "utf-8")
    assert resolve_generation_config(MODEL).temperature == 0.9
    assert resolve_generation_config("other/model").temperature == GenerationConfig().temperature
