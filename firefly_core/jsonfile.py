"""Reading a JSON file that came from outside (a model folder, the user's settings): the one reader.

Such files are untrusted: they may be huge, not UTF-8, not JSON, or nested 100,000 levels deep
(which makes Python's parser raise RecursionError). Every reader of such a file calls `read_json`,
so each of those cases is one clear `FireflyError` naming the file, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import FireflyError

MAX_JSON_BYTES = 256 * 1024 * 1024  # far above any real config or tokenizer.json


def read_json(
    path: Path,
    *,
    what: str,
    error: type[FireflyError] = FireflyError,
    hint: str | None = None,
    max_bytes: int = MAX_JSON_BYTES,
    if_empty: Any = ...,
) -> Any:
    """The parsed contents of `path`; `error(message, hint)` for anything unreadable.

    `what` names the file for the user ("the settings file", "config.json of the model").
    FileNotFoundError is left to the caller: a missing file often means "use the defaults".
    A UTF-8 byte-order mark is accepted (editors on Windows write one). A file holding only
    white space gives `if_empty` when one is passed (a settings file just created by hand).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{what} {path} is too large to be what it claims ({size:,} bytes)", hint)
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except NotADirectoryError as e:  # a file where a parent folder should be: no such file
        raise FileNotFoundError(e.errno, e.strerror, str(path)) from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not a file", hint) from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}", hint) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (bad byte at offset {e.start})", hint) from None
    if if_empty is not ... and not text.strip():
        return if_empty
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(
            f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", hint
        ) from None
    except RecursionError:
        raise error(f"{what} {path} is nested too deeply to be read", hint) from None
