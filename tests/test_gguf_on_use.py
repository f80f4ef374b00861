"""The llama.cpp engine's GGUF is made when a model is chosen (`firefly use`, `firefly pull`,
`models.service.prepare_model_files`), not at the first chat: the first load then only loads."""

from __future__ import annotations

import threading

import pytest

from firefly_core.export.gguf import ExportCancelled
from firefly_core.export.gguf_cache import gguf_cache_path
from firefly_core.models.service import ModelService, prepare_model_files
from firefly_tui.cli import main


@pytest.fixture
def own_cache(monkeypatch, tmp_path):
    """A GGUF cache of this test's own (other tests may have made this model's GGUF)."""
    monkeypatch.setenv("FIREFLY_HOME", str(tmp_path / "home"))


def test_use_makes_the_gguf_and_the_first_chat_only_loads_it(llamacpp, own_cache, bloom_dir, capsys):
    code = main(["use", str(bloom_dir), "--engine", "llamacpp", "--quantize", "f16"])
    out, err = capsys.readouterr()
    path = gguf_cache_path(bloom_dir, "f16")
    assert code == 0 and path.is_file() and f"llama.cpp model ready: {path}" in out
    assert "writing GGUF (f16)" in err  # the progress line (one line per step without a terminal)
    made = path.stat().st_mtime_ns

    said: list[str] = []
    service = ModelService()
    request = service.request_for(str(bloom_dir))  # the saved settings: llama.cpp, f16
    lm = service.get(request, status=lambda s: said.append(s.message))
    assert lm.engine == "llamacpp" and lm.decoder.path == path
    assert not any("making the llama.cpp model" in m for m in said)
    assert path.stat().st_mtime_ns == made
    service.unload()


def test_prepare_is_a_no_op_for_the_torch_engine(llamacpp, own_cache, bloom_dir, capsys):
    assert main(["use", str(bloom_dir), "--engine", "torch"]) == 0
    out, _err = capsys.readouterr()
    assert "llama.cpp" not in out
    assert prepare_model_files(str(bloom_dir)) is None
    assert not list((gguf_cache_path(bloom_dir, "q8_0").parent).glob("*.gguf"))


def test_prepare_reuses_a_whole_file_and_stops_cleanly(llamacpp, own_cache, bloom_dir):
    from firefly_core.models.user_settings import update_model_settings

    update_model_settings(str(bloom_dir), engine="llamacpp", quantize="f32")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ExportCancelled):
        prepare_model_files(str(bloom_dir), cancel=cancel)
    path = gguf_cache_path(bloom_dir, "f32")
    assert not path.exists() and not list(path.parent.glob(f".{path.name}*"))

    said: list[str] = []
    assert prepare_model_files(str(bloom_dir), status=said.append) == str(path)
    made = path.stat().st_mtime_ns
    said.clear()
    assert prepare_model_files(str(bloom_dir), status=said.append) == str(path)
    assert said == [] and path.stat().st_mtime_ns == made  # nothing made again
