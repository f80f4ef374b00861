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


# -- settings declared once: the file, the request, the flags and the dialogs come from one place --

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass, field, fields  # noqa: E402

from firefly_core.generation.config import GENERATION_KEYS, GenerationConfig  # noqa: E402
from firefly_core.models.engine_settings import ENGINE_KEYS, EngineSettings, max_threads  # noqa: E402
from firefly_core.models.service import ModelRequest  # noqa: E402
from firefly_core.setting_spec import include_settings, setting, setting_fields  # noqa: E402
from firefly_tui.commands.setting_flags import add_setting_flags, setting_values  # noqa: E402


def _parser(command: str) -> argparse.ArgumentParser:
    """The real parser of `firefly COMMAND` (chat, use, serve)."""
    from firefly_tui.commands import chat, models, serve

    root = argparse.ArgumentParser()
    subs = root.add_subparsers(dest="command")
    {"chat": chat, "use": models, "serve": serve}[command].register(subs)
    return subs.choices[command]


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: a for a in parser._actions for opt in a.option_strings}


def test_engine_settings_are_declared_once_and_every_front_end_takes_them_from_there():
    declared = setting_fields(EngineSettings)
    assert tuple(f.name for f, _s, _k in declared) == ENGINE_KEYS == ("engine", "quantize", "cuda_graph", "threads")
    saved = {f.name: f for f in fields(ModelSettings)}
    request = {f.name: f for f in fields(ModelRequest)}
    for f, spec, kind in declared:
        # the settings file and the request hold the field, with the declaration's own metadata
        assert saved[f.name].metadata["setting"] is spec and request[f.name].metadata["setting"] is spec
        for command in ("chat", "use", "serve"):
            flags = _flags(_parser(command))
            action = flags[spec.flag_name(f.name)]
            assert action.dest == f.name and action.default is None, (command, f.name)
            if kind is bool:
                assert "--no-" + spec.flag_name(f.name)[2:] in flags
            else:
                assert action.choices == spec.choices, (command, f.name)
    for f, spec, _kind in setting_fields(GenerationConfig):  # the generation fields: chat and use
        assert saved[f.name].metadata["setting"] is spec
        for command in ("chat", "use"):
            assert _flags(_parser(command))[spec.flag_name(f.name)].dest == f.name
    assert set(GENERATION_KEYS) <= set(saved) and set(ENGINE_KEYS) <= set(saved)


def test_a_field_declared_once_shows_up_in_a_settings_class_and_as_a_checked_flag(capsys):
    """The mechanism the front ends use: declare a field with its metadata, and a class that
    includes the declaration holds it, a parser gets its flag, and its range is applied."""

    @dataclass
    class Beams:
        beams: int | None = field(default=None, metadata=setting("beams to search", min=1, max=4))

    @dataclass
    @include_settings((Beams, None))
    class Saved:
        name: str = ""

    assert Saved(beams=2).beams == 2 and fields(Saved)[-1].metadata["setting"].max == 4
    parser = argparse.ArgumentParser(prog="firefly x")
    add_setting_flags(parser, Beams)
    assert setting_values(parser.parse_args(["--beams", "3"]), Beams) == {"beams": 3}
    assert setting_values(parser.parse_args([]), Beams) == {}
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--beams", "5"])
    assert e.value.code == 2 and "argument --beams: beams = 5 is above 4" in capsys.readouterr().err


# -- hostile saved settings (issue 23 item 6): one range rule, applied on save AND on read-back ----

HOSTILE = [
    ("threads", 100_000),  # segfaulted natively in every later chat
    ("threads", 1_000_000_000),  # std::bad_alloc
    ("threads", 2000),  # a bare libgomp error
    ("threads", 0),
    ("temperature", 1e-300),  # every later chat ended in a traceback
    ("temperature", 5e-324),
    ("repetition_penalty", 1e-300),
    ("repetition_penalty", 0.0),
    ("temperature", 10**400),  # valid JSON, too big for a float: was an OverflowError
]


@pytest.mark.parametrize("name, value", HOSTILE, ids=[f"{n}={v!s:.12}" for n, v in HOSTILE])
def test_hostile_value_is_refused_on_save_and_on_read_back(fresh_home, name, value):
    assert name != "threads" or not 1 <= value <= max_threads()
    with pytest.raises(ConfigError) as e:
        update_model_settings("a/b", **{name: value})
    assert name in e.value.message
    assert not paths.config_file().exists(), "nothing was saved"
    with pytest.raises(ConfigError):
        ModelSettings(**{name: value}).validate()

    # the same value written by hand: a clear error naming the file, the model and the field
    raw = json.dumps({"active_model": "a/b", "models": {"a/b": {name: value}, "c/d": {"top_k": 5}}})
    _write_config(raw.encode())
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert str(paths.config_file()) in e.value.message and "'a/b'" in e.value.message and name in e.value.message
    assert "firefly use" in e.value.hint and "--reset" in e.value.hint
    assert paths.config_file().read_text("utf-8") == raw, "the file is left as it is"
    # and the command the hint names repairs that entry, keeping the rest
    update_model_settings("a/b", reset=True)
    assert load_settings().for_model("a/b") == ModelSettings() and load_settings().for_model("c/d").top_k == 5


@pytest.mark.parametrize("name, value", [h for h in HOSTILE if h[0] in GENERATION_KEYS],
                         ids=[f"{n}={v!s:.12}" for n, v in HOSTILE if n in GENERATION_KEYS])
def test_hostile_generation_value_is_refused_from_every_layer(name, value):
    """The chat's settings, a flag or an API request go through the same rule."""
    from firefly_core.models.generation_layers import resolve_generation_config

    for layer in ("chat", "overrides", "saved"):
        with pytest.raises(ConfigError) as e:
            resolve_generation_config("x/y", **{layer: {name: value}})
        assert name in e.value.message


@pytest.mark.parametrize("value", [100_000, 2000, 0])
def test_hostile_threads_refused_by_the_model_request(value):
    with pytest.raises(ConfigError, match="threads"):
        ModelRequest("x/y", threads=value).validate()
    ModelRequest("x/y", threads=max_threads()).validate()


def test_zero_temperature_and_penalty_floor_are_allowed(fresh_home):
    ms = update_model_settings("a/b", temperature=0, repetition_penalty=0.01, threads=1)
    assert load_settings().for_model("a/b") == ms and ms.temperature == 0


def test_an_active_model_of_100k_characters_is_a_clear_error_not_an_oserror(fresh_home):
    huge = "a" * 100_000
    with pytest.raises(ConfigError, match="longer than 4096"):
        set_active_model(huge)
    assert not paths.config_file().exists()
    _write_config(json.dumps({"active_model": huge}).encode())
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "active_model" in e.value.message and str(paths.config_file()) in e.value.message
    assert len(e.value.message) < 500, "the message quotes the value cut short"
    set_active_model("x/y")  # choosing another model repairs the file
    assert load_settings().active_model == "x/y"


def _firefly(args: list[str], home) -> subprocess.CompletedProcess:
    env = {**os.environ, "FIREFLY_HOME": str(home / "firefly"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "firefly_tui.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_firefly_use_threads_100000_exits_2_and_saves_nothing(fresh_home, bloom_dir):
    proc = _firefly(["use", str(bloom_dir), "--threads", "100000"], fresh_home)
    assert proc.returncode == 2 and "argument --threads: threads = 100000 is above" in proc.stderr
    assert "Traceback" not in proc.stderr and not paths.config_file().exists()
    proc = _firefly(["use", str(bloom_dir), "--temperature", "1e-300"], fresh_home)
    assert proc.returncode == 2 and "temperature = 1e-300 is below 0.01" in proc.stderr
    proc = _firefly(["serve", "--model", str(bloom_dir), "--threads", "100000"], fresh_home)
    assert proc.returncode == 2 and "threads" in proc.stderr and "Traceback" not in proc.stderr
    proc = _firefly(["use", "b" * 100_000], fresh_home)
    assert proc.returncode == 1 and "longer than 4096" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr) < 1000


@pytest.mark.parametrize("saved", [{"models": {"M": {"threads": 100_000}}, "active_model": "M"},
                                   {"active_model": "a" * 100_000}], ids=["threads", "long-active-model"])
def test_firefly_chat_with_a_hand_edited_bad_file_says_which_line(fresh_home, bloom_dir, saved):
    text = json.dumps(saved).replace('"M"', json.dumps(str(bloom_dir)))
    _write_config(text.encode())
    proc = _firefly(["chat"], fresh_home)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert str(paths.config_file()) in proc.stderr and ("threads" in proc.stderr or "active_model" in proc.stderr)
    assert paths.config_file().read_text("utf-8") == text


def test_saving_llamacpp_without_its_extra_is_refused_with_the_install_command(fresh_home, monkeypatch):
    from firefly_core.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # the extra is not installed
    for values in ({"engine": "llamacpp"}, {"quantize": "q4_k_m"}):
        with pytest.raises(FireflyError) as e:
            update_model_settings("a/b", **values)
        assert isinstance(e.value, MissingExtraError) and "'llamacpp' extra" in e.value.message
        assert "pip install 'firefly-tui[llamacpp]'" in e.value.hint  # extras' one message
        assert not paths.config_file().exists()
    update_model_settings("a/b", engine="torch", quantize="int8")  # what runs without it is saved
    assert load_settings().for_model("a/b").engine == "torch"
