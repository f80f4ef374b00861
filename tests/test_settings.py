"""User settings: round trip through the config file, atomic writes, clear errors, nothing lost."""

from __future__ import annotations

import json

import pytest

from firefly_core import paths
from firefly_core.errors import ConfigError
from firefly_core.models.settings import (
    ModelSettings,
    UserSettings,
    load_settings,
    save_settings,
    set_active_model,
    update_model_settings,
)


def test_defaults_when_there_is_no_file(fresh_home):
    assert not paths.config_file().exists()
    s = load_settings()
    assert s == UserSettings() and s.for_model("x/y") == ModelSettings()


def test_round_trip(fresh_home):
    s = UserSettings(
        active_model="YeungNLP/firefly-1b4",
        language="zh",
        models={
            "YeungNLP/firefly-1b4": ModelSettings(prompt_format="firefly-v1", temperature=0.35, top_p=0.85,
                                                  top_k=0, repetition_penalty=1.2, max_new_tokens=200,
                                                  system="你是流萤。"),
            "internlm/internlm2_5-1_8b-chat": ModelSettings(trust_remote_code=True),
        },
    )
    save_settings(s)
    assert load_settings() == s
    text = paths.config_file().read_text("utf-8")
    assert "你是流萤" in text, "stored readable (not escaped) so it can be edited by hand"
    assert [p.name for p in paths.config_file().parent.iterdir()] == ["config.json"], "no temporary file left"


def test_helpers_update_and_keep_the_rest(fresh_home):
    update_model_settings("a/b", temperature=0.7)
    update_model_settings("a/b", top_p=0.9)
    set_active_model("a/b")
    s = load_settings()
    assert s.active_model == "a/b"
    assert s.for_model("a/b") == ModelSettings(temperature=0.7, top_p=0.9)
    with pytest.raises(ConfigError):
        update_model_settings("a/b", temprature=1.0)


def test_unknown_keys_survive_a_save(fresh_home):
    paths.config_file().parent.mkdir(parents=True)
    paths.config_file().write_text(json.dumps({"version": 2, "theme": "dark", "models": {}}), "utf-8")
    s = load_settings()
    s.active_model = "a/b"
    save_settings(s)
    data = json.loads(paths.config_file().read_text("utf-8"))
    assert data["theme"] == "dark" and data["active_model"] == "a/b"


def test_damaged_file_is_reported_with_its_path_and_kept(fresh_home):
    paths.config_file().parent.mkdir(parents=True)
    paths.config_file().write_text('{"active_model": "a/b",', "utf-8")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert str(paths.config_file()) in e.value.message and "line 1" in e.value.message
    assert paths.config_file().read_text("utf-8") == '{"active_model": "a/b",'


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt_format": "alpaca"},
        {"temperature": -1},
        {"temperature": "hot"},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": 2.5},
        {"max_new_tokens": 0},
        {"repetition_penalty": 0},
        {"trust_remote_code": "yes"},
    ],
)
def test_bad_values_are_refused(fresh_home, bad):
    paths.config_file().parent.mkdir(parents=True)
    paths.config_file().write_text(json.dumps({"models": {"a/b": bad}}), "utf-8")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "a/b" in e.value.message
    with pytest.raises(ConfigError):
        update_model_settings("c/d", **bad)
    assert json.loads(paths.config_file().read_text("utf-8")) == {"models": {"a/b": bad}}


def test_generation_overrides_only_what_was_set():
    ms = ModelSettings(temperature=0.0, max_new_tokens=64, system="x")
    assert ms.generation_overrides() == {"temperature": 0.0, "max_new_tokens": 64}
