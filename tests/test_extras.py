"""Optional extras say so: one message naming the extra and how to install it, with the module
hidden (`sys.modules[name] = None` blocks its import, as if it were not installed)."""

from __future__ import annotations

import pytest

from firefly_core.errors import FireflyError
from firefly_core.extras import EXTRAS, MissingExtraError, missing_extra, require_extra


@pytest.mark.parametrize("hidden", ["gguf", "llama_cpp"])
def test_llamacpp_missing_names_the_extra_and_both_install_commands(monkeypatch, hidden):
    monkeypatch.setitem(__import__("sys").modules, hidden, None)
    error = missing_extra("llamacpp")
    assert isinstance(error, MissingExtraError) and isinstance(error, FireflyError)
    assert error.extra == "llamacpp" and hidden in error.message and "'llamacpp' extra" in error.message
    assert "pipx inject firefly-tui llama-cpp-python gguf" in error.hint
    assert "pip install 'firefly-tui[llamacpp]'" in error.hint
    with pytest.raises(MissingExtraError) as raised:
        require_extra("llamacpp")
    assert str(raised.value) == str(error)


def test_deepspeed_missing(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "deepspeed", None)
    error = missing_extra("deepspeed")
    assert error is not None and "pip install 'firefly-tui[deepspeed]'" in error.hint
    assert "pipx inject firefly-tui deepspeed" in error.hint


def test_an_installed_extra_is_not_missing(monkeypatch):
    import types

    for module in EXTRAS["llamacpp"].modules:  # present as far as the import system can tell
        monkeypatch.setitem(__import__("sys").modules, module, types.ModuleType(module))
    assert missing_extra("llamacpp") is None
    require_extra("llamacpp")


# -- every path that needs an extra answers with its message, in a process where it is hidden ----
_HIDDEN_RUN = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # the import system answers ImportError, as if not installed
from firefly_tui.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _firefly_without(modules: str, *argv: str, stdin: str = "") -> "subprocess.CompletedProcess[str]":
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", _HIDDEN_RUN, modules, *argv], input=stdin, capture_output=True, text=True,
        encoding="utf-8", timeout=300,
    )


def _says_install(proc, extra: str, packages: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"'{extra}' extra" in proc.stderr
    assert f"pipx inject firefly-tui {packages}" in proc.stderr and f"pip install 'firefly-tui[{extra}]'" in proc.stderr


def test_export_without_gguf_prints_the_install_command(bloom_dir, tmp_path):
    out = tmp_path / "m.gguf"
    proc = _firefly_without("gguf", "export", str(bloom_dir), "--gguf", str(out))
    _says_install(proc, "llamacpp", "llama-cpp-python gguf")
    assert "missing: gguf" in proc.stderr and not out.exists()


def test_chat_and_serve_with_engine_llamacpp_without_it(bloom_dir):
    chat = _firefly_without("llama_cpp", "chat", "--model", str(bloom_dir), "--engine", "llamacpp", stdin="你好\n")
    _says_install(chat, "llamacpp", "llama-cpp-python gguf")
    serve = _firefly_without("llama_cpp,gguf", "serve", "--model", str(bloom_dir), "--engine", "llamacpp", "--port", "0")
    _says_install(serve, "llamacpp", "llama-cpp-python gguf")


def test_train_with_deepspeed_without_it(bloom_dir, tmp_path):
    from firefly_core.samples import sample_path

    out = tmp_path / "run"
    proc = _firefly_without("deepspeed", "train", "--gpu", "cpu", "--deepspeed", "2", "--model", str(bloom_dir),
                            "--data", str(sample_path()), "--out", str(out), "--max-steps", "1")
    _says_install(proc, "deepspeed", "deepspeed")
    assert not out.exists()
