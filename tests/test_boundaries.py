"""Architecture rules, checked in fresh interpreters: the core has no UI, the UI starts light."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import firefly_core
import firefly_tui


def _modules(pkg) -> list[str]:
    return [pkg.__name__] + [
        m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + ".")
    ]


def _loaded_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_never_imports_textual():
    for module in _modules(firefly_core):
        loaded = _loaded_after_import(module)
        assert "textual" not in loaded, module


def test_tui_does_not_import_torch_or_transformers_at_import_time():
    for module in _modules(firefly_tui):
        loaded = _loaded_after_import(module)
        assert "torch" not in loaded and "transformers" not in loaded, module


def test_cli_help_is_light():
    code = (
        "import sys; from firefly_tui.cli import build_parser; build_parser().format_help(); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
