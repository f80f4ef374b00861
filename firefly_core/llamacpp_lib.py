"""llama.cpp's library for firefly: loading it quietly, and why it cannot be used here.

A leaf that both the GGUF exporter (llama.cpp's quantizer) and the llama.cpp decoder import, so
neither has to import the other.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any



def llama_cpp_module():
    """The `llama_cpp` module, quiet (its log goes to our handler, not to the terminal)."""
    import llama_cpp

    _quiet(llama_cpp)
    return llama_cpp


def available() -> str | None:
    """None when the llama.cpp engine can be used here, else the reason it cannot."""
    if os.environ.get("FIREFLY_LLAMACPP", "").strip() == "0":
        return "FIREFLY_LLAMACPP=0 is set"
    from .errors import format_error
    from .extras import missing_extra

    missing = missing_extra("llamacpp")
    if missing is not None:  # the extra's one message, with the install commands
        return format_error(missing)
    try:
        import gguf  # noqa: F401
        llama_cpp_module()
    except ImportError as e:
        return f"the llamacpp extra is installed but does not import ({e})"
    except (OSError, RuntimeError) as e:  # the shared library failed to load
        return f"llama-cpp-python cannot load llama.cpp ({e})"
    return None


# ----------------------------------------------------------------------------------------- logging
_LOG: dict[str, Any] = {"installed": False, "callback": None, "last_error": ""}


def _quiet(llama_cpp: Any) -> None:
    """Send llama.cpp's log to a handler that keeps the last error line (shown in our errors)."""
    if _LOG["installed"]:
        return

    @llama_cpp.llama_log_callback
    def handler(level, text, _user_data):  # GGML_LOG_LEVEL_ERROR = 4
        if level == 4 and text:
            _LOG["last_error"] = text.decode("utf-8", "replace").strip()

    _LOG["callback"] = handler  # keep a reference: llama.cpp calls it from C
    llama_cpp.llama_log_set(handler, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    _LOG["installed"] = True


def last_error() -> str:
    """The last error line llama.cpp logged (consumed), as `: text`, or an empty string."""
    text, _LOG["last_error"] = _LOG["last_error"], ""
    return f": {text}" if text else ""
