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
    assert code == 0 and path.is_file() and "llama.cpp model ready (f16, " in out
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


def test_a_later_load_hashes_the_file_only_when_it_was_written_to(llamacpp, own_cache, bloom_dir, monkeypatch):
    """The full SHA-256 (as long as llama.cpp's whole load) runs again only when something wrote to
    the cached file since it last matched; a write that keeps the modification time is still seen
    (the change time moves), and the damaged file is remade."""
    import os

    from firefly_core.export import gguf_cache
    from firefly_core.export.gguf import model_info
    from firefly_core.export.gguf_cache import attach_llamacpp, file_sha256, verified_path

    hashed: list[str] = []
    real = gguf_cache._checksum_damage
    monkeypatch.setattr(gguf_cache, "_checksum_damage", lambda p, e: hashed.append(p.name) or real(p, e))

    attach_llamacpp(model_info(bloom_dir), quantize="f16", threads=1, status=None)  # made: hashed once, stamped
    path = gguf_cache_path(bloom_dir, "f16")
    good = file_sha256(path)
    assert verified_path(path).is_file() and hashed == []
    attach_llamacpp(model_info(bloom_dir), quantize="f16", threads=1, status=None)
    assert hashed == []  # the same file, untouched: no second hash

    st = path.stat()
    with open(path, "r+b") as f:  # one weight byte flipped near the end, times put back
        f.seek(st.st_size - 64)
        b = f.read(1)
        f.seek(st.st_size - 64)
        f.write(bytes([b[0] ^ 0x5A]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    said: list[str] = []
    attach_llamacpp(model_info(bloom_dir), quantize="f16", threads=1, status=said.append)
    assert hashed == [path.name] and any("damaged" in s for s in said)
    assert file_sha256(path) == good


def test_threads_chosen_after_llamacpp_read_the_file(llamacpp, own_cache, bloom_dir):
    """The service's thread choice (a CPU sample) runs after llama.cpp loaded the file, so the two
    overlap; llama.cpp's own context then reports the chosen count, and the decoder still decodes."""
    import torch

    from firefly_core.export.gguf import model_info
    from firefly_core.export.gguf_cache import attach_llamacpp

    asked: list[int] = []
    info = model_info(bloom_dir)
    attach_llamacpp(info, quantize="f16", threads=lambda: asked.append(1) or 2, status=None)
    decoder = info.decoder
    assert asked == [1] and decoder.threads == 2
    assert decoder._lib.llama_n_threads(decoder._ctx) == 2 and decoder._lib.llama_n_threads_batch(decoder._ctx) == 2
    assert decoder.forward(torch.tensor([[5, 6, 7]]), decoder.new_cache()).shape == (1, decoder.vocab_size)
    decoder.close()


def test_pull_makes_the_gguf_the_automatic_engine_will_run(llamacpp, online, capsys):
    """On a CPU with llama.cpp usable, the automatic engine is llama.cpp: `pull` makes its GGUF
    (the default q8_0) right after the download."""
    from firefly_core.models import hub

    code = main(["pull", "test-org/tiny-bloom"])
    out, _err = capsys.readouterr()
    path = gguf_cache_path(hub.pull("test-org/tiny-bloom"), "q8_0")
    assert code == 0 and "ready: test-org/tiny-bloom" in out and "llama.cpp model ready (q8_0, " in out
    assert path.is_file()
