"""The small shared rules have one owner each: the model-name -> file-name slug (paths.file_slug)
and the library-noise filters (firefly_core.quiet)."""

from __future__ import annotations

import warnings

import pytest

from firefly_core.paths import file_slug


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("Qwen/Qwen2.5-1.5B-Instruct", {}, "Qwen2.5-1.5B-Instruct"),
        ("/models/my model (v2)!", {}, "my-model-v2"),
        ("YeungNLP/Firefly-1B4", {"lower": True, "default": "firefly"}, "firefly-1b4"),
        ("流萤", {}, "model"),
        ("流萤", {"default": "firefly"}, "firefly"),
        ("a" * 80 + "-b", {}, "a" * 60),
    ],
)
def test_file_slug(name, kwargs, expected):
    assert file_slug(name, **kwargs) == expected


def test_every_file_name_made_from_a_model_name_uses_the_slug(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREFLY_HOME", str(tmp_path / "home"))
    from firefly_core.export.gguf_cache import gguf_cache_path
    from firefly_core.export.gguf import default_export_path
    from firefly_tui.commands.export import _ollama_name

    folder = tmp_path / "My Model (v2)"
    folder.mkdir()
    assert default_export_path(str(folder), "q8_0").name == "My-Model-v2-q8_0.gguf"
    assert _ollama_name(str(folder)) == "my-model-v2"
    assert gguf_cache_path(folder, "f16").name.startswith("My-Model-v2-")


def test_quiet_libraries_drops_library_deprecations_and_for_the_ui_info_lines():
    from transformers.utils import logging as hf_logging

    from firefly_core.quiet import quiet_libraries

    before = hf_logging.get_verbosity()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_libraries()
            warnings.warn_explicit("old API", FutureWarning, "x.py", 1, module="transformers.models.x")
            warnings.warn_explicit("ours", FutureWarning, "y.py", 1, module="firefly_core.y")
        assert [str(w.message) for w in caught] == ["ours"]
        quiet_libraries(ui=True)
        assert hf_logging.get_verbosity() == hf_logging.ERROR
    finally:
        hf_logging.set_verbosity(before)
