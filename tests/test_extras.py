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
