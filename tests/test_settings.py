"""User settings: round trip through the config file, atomic writes, clear errors, nothing lost."""

from __future__ import annotations

import json

import pytest

from firefly_core import paths
from firefly_core.errors import ConfigError
from firefly_core.models.user_settings import (
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


# -- files from outside: damaged settings, registry; unwritable, read-only, full -----------------

import errno  # noqa: E402
import os  # noqa: E402

from firefly_core.errors import FireflyError, StorageError  # noqa: E402
from firefly_core.models import inventory  # noqa: E402


def _write_config(raw: bytes):
    paths.config_file().parent.mkdir(parents=True, exist_ok=True)
    paths.config_file().write_bytes(raw)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ('{"active_model": "流萤"}'.encode("gbk"), "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"models": {"a/b": ' * 50_000 + b"{}" + b"}}" * 50_000, "nested too deeply"),
        (b'["a/b"]', "does not hold a JSON object"),
    ],
    ids=["gbk", "deep-list", "deep-models", "list"],
)
def test_unusable_settings_file_is_a_clear_error_and_kept(fresh_home, raw, fragment):
    _write_config(raw)
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert fragment in e.value.message and str(paths.config_file()) in e.value.message
    with pytest.raises(ConfigError):
        set_active_model("a/b")  # a save never replaces a file it could not read
    assert paths.config_file().read_bytes() == raw


def test_settings_file_with_a_bom_or_only_blank_is_read(fresh_home):
    _write_config(b'\xef\xbb\xbf{"active_model": "a/b"}')
    assert load_settings().active_model == "a/b"
    _write_config(b"  \n")
    assert load_settings() == UserSettings()


def test_settings_path_that_is_a_folder(fresh_home):
    paths.config_file().mkdir(parents=True)
    with pytest.raises(ConfigError, match="is a folder"):
        load_settings()


def test_unwritable_home_is_a_clear_error(fresh_home, monkeypatch):
    blocker = fresh_home / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("FIREFLY_HOME", str(blocker))
    with pytest.raises(StorageError) as e:
        set_active_model("a/b")
    assert str(blocker) in e.value.message and "FIREFLY_HOME" in e.value.hint
    assert isinstance(e.value, OSError) and blocker.read_text() == "x"


def _refuse(monkeypatch, name, code):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(f"firefly_core.atomic.{name}", refuse)


@pytest.mark.parametrize(
    "where, code, hint",
    [
        ("tempfile.mkstemp", errno.EACCES, "permissions"),  # a read-only config folder
        ("tempfile.mkstemp", errno.EROFS, "read-only file system"),
        ("os.fsync", errno.ENOSPC, "disk is full"),  # a full disk, reported when the data is flushed
        ("os.replace", errno.EACCES, "permissions"),
    ],
)
def test_failed_save_keeps_the_old_file_and_says_why(fresh_home, monkeypatch, where, code, hint):
    set_active_model("old/model")
    before = paths.config_file().read_bytes()
    _refuse(monkeypatch, where, code)
    with pytest.raises(StorageError) as e:
        update_model_settings("old/model", temperature=0.1)
    assert hint in e.value.hint and str(paths.config_file()) in e.value.message
    assert paths.config_file().read_bytes() == before
    assert [p.name for p in paths.config_file().parent.iterdir()] == ["config.json"], "no temporary file left"


def test_full_disk_on_a_real_write(fresh_home, monkeypatch):
    """ENOSPC from the write itself (the file object's write), not only from fsync."""
    import builtins

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr("firefly_core.atomic.os.fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(StorageError, match="No space left") as e:
        set_active_model("a/b")
    assert "free some space" in e.value.hint
    assert not paths.config_file().exists() and builtins  # nothing half-written


@pytest.mark.parametrize(
    "content",
    ['{"folders": "abc"}', "[1, null]", '{"folders": [1, null]}', '{"folders": [""]}', "{not json", '"x"'],
)
def test_damaged_list_of_local_models(fresh_home, content):
    file = paths.data_dir() / "local_models.json"
    file.parent.mkdir(parents=True)
    file.write_text(content, "utf-8")
    with pytest.raises(ConfigError) as e:
        inventory.registered_local()
    assert str(file) in e.value.message and "delete it" in e.value.hint
    with pytest.raises(FireflyError):
        inventory.list_installed()  # not models "a", "b" and "c"
    assert file.read_text("utf-8") == content


def test_use_with_an_unwritable_home_is_a_clear_error_from_the_cli(fresh_home, bloom_dir, monkeypatch, capsys):
    from firefly_tui.cli import main

    blocker = fresh_home / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("FIREFLY_HOME", str(blocker / "home"))
    code = main(["use", str(bloom_dir)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "cannot" in err and "FIREFLY_HOME" in err
