"""Optional extras (`pip install 'firefly-tui[llamacpp]'`): whether one is installed, and the one
message that says so when it is not.

Every path that needs an extra (GGUF export, the llama.cpp engine in chat/serve/the app, saving
engine llama.cpp as a setting, DeepSpeed training) asks `missing_extra(name)` before doing or
asking anything, and shows the `MissingExtraError` it returns: the same words, naming the extra and
how to install it for a pipx install and for a pip one. A leaf: imports nothing of firefly.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

from .errors import FireflyError

PACKAGE = "firefly-tui"


class MissingExtraError(FireflyError):
    """An optional extra this needs is not installed; the hint says how to install it."""

    def __init__(self, message: str, hint: str | None = None, extra: str = "") -> None:
        super().__init__(message, hint)
        self.extra = extra


@dataclass(frozen=True)
class Extra:
    """One optional extra of pyproject.toml: the modules it brings and the packages that bring them."""

    name: str
    modules: tuple[str, ...]  # importable names that must all be there
    packages: tuple[str, ...]  # what `pipx inject` installs
    needed_for: str  # what the user tried, in their words
    note: str = ""


EXTRAS: dict[str, Extra] = {
    "llamacpp": Extra(
        "llamacpp", ("gguf", "llama_cpp"), ("llama-cpp-python", "gguf"),
        "GGUF export and the llama.cpp engine", note="llama-cpp-python builds llama.cpp once, a few minutes",
    ),
    "deepspeed": Extra("deepspeed", ("deepspeed",), ("deepspeed",), "DeepSpeed (ZeRO) training"),
}


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: import blocked (tests hide modules this way)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_hint(name: str) -> str:
    """How to install extra `name`, for a pipx install and a pip one."""
    extra = EXTRAS[name]
    hint = (
        f"install it: pipx inject {PACKAGE} {' '.join(extra.packages)}   "
        f"(with pip: pip install '{PACKAGE}[{name}]')"
    )
    return f"{hint}; {extra.note}" if extra.note else hint


def missing_extra(name: str) -> MissingExtraError | None:
    """None when extra `name` ("llamacpp", "deepspeed") is installed, else the error to show (not
    raised: callers that only want to know, such as a settings dialog, show it as a message)."""
    extra = EXTRAS[name]
    missing = [m for m in extra.modules if not _installed(m)]
    if not missing:
        return None
    return MissingExtraError(
        f"{extra.needed_for} need the optional '{name}' extra, which is not installed (missing: {', '.join(missing)})",
        install_hint(name),
        extra=name,
    )


def require_extra(name: str) -> None:
    """Raise `missing_extra(name)` if there is one."""
    error = missing_extra(name)
    if error is not None:
        raise error
