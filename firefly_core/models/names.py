"""Which names from a hub (or from the user) may become part of a path in the cache.

Everything here is a rule about untrusted text: commit ids, revisions, ETags (blob names) and
repo file names, as a server sends them in model info, HTTP headers or a weights index. Each
rule is one function that either returns the accepted value or raises a `FireflyError` that says
what was wrong; downloads and the cache listing call these, never their own regexes.

huggingface_hub's own checks are used where it has them (`validate_repo_id`, its relative-file
name check) and extended where the cache needs more (control characters, empty parts, one level).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath

from ..errors import ConfigError, FireflyError

COMMIT_RE = re.compile(r"[0-9a-f]{40}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
GIT_SHA1_RE = re.compile(r"[0-9a-f]{40}")
MAX_NAME_PART_BYTES = 255  # one path component on ext4/APFS/NTFS
MAX_REVISION_CHARS = 255


class UnsafeNameError(FireflyError):
    """A name from the hub that must not become a path (traversal, absolute, control characters)."""


def is_commit_id(value: object) -> bool:
    return isinstance(value, str) and COMMIT_RE.fullmatch(value) is not None


def check_commit_id(value: object, *, repo_id: str, endpoint: str) -> str:
    """The commit a hub says a repo is at: exactly 40 hex characters (lowercased: it names a folder)."""
    if isinstance(value, str):
        value = value.lower()
    if not is_commit_id(value):
        raise UnsafeNameError(
            f"{endpoint} gave {quoted(value)} as the commit of {repo_id}, which is not a commit id (40 hex characters)",
            "this endpoint does not behave like a Hugging Face hub; check HF_ENDPOINT or your proxy",
        )
    return value  # type: ignore[return-value]


def check_revision(revision: str) -> str:
    """A `--revision` from the user: a commit id (lowercased), or a branch/tag name by git's
    check-ref-format rules.

    It becomes `refs/<revision>` in the cache, so anything git would not accept as a ref name
    (`..`, a leading `/` or `.`, control characters, `\\`, `~^:?*[`, `@{`, `.lock` parts) is refused.
    """
    rev = str(revision)
    if COMMIT_RE.fullmatch(rev.lower()):
        return rev.lower()  # a commit id, spelled as the hub spells it
    problem = None
    if not rev or len(rev) > MAX_REVISION_CHARS:
        problem = "it is empty or too long"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in rev) or any(c in rev for c in " ~^:?*[\\"):
        problem = "it holds a space, a control character or one of ~^:?*[\\"
    elif ".." in rev or "@{" in rev or rev == "@":
        problem = "it holds '..' or '@{'"
    elif rev.startswith("/") or rev.endswith(("/", ".")) or "//" in rev:
        problem = "it starts or ends with '/' or ends with '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in rev.split("/")):
        problem = "a part of it starts with '.' or ends with '.lock'"
    if problem:
        raise ConfigError(
            f"{quoted(rev)} is not a revision: {problem}",
            "give a branch or tag name (e.g. main, v1.0, refs/pr/1) or a 40-character commit id",
        )
    return rev


def blob_name(etag: object, *, filename: str, endpoint: str) -> str:
    """The cache blob name for a file's ETag: a sha256 (64 hex) or a git blob sha1 (40 hex), lowercased.

    The ETag names a file in `blobs/`; anything else (a quoted path, a weak validator, a CDN's
    own id) is refused for that file, because it could not be verified nor safely used as a name.
    """
    text = etag.lower() if isinstance(etag, str) else None
    if text is None or not (SHA256_RE.fullmatch(text) or GIT_SHA1_RE.fullmatch(text)):
        raise UnsafeNameError(
            f"{endpoint} gave {quoted(etag)} as the ETag of {filename}: not a sha256 or git blob id, "
            "so the file cannot be verified",
            "this endpoint does not behave like a Hugging Face hub; check HF_ENDPOINT or your proxy",
        )
    return text


def check_file_name(name: object, *, where: str) -> str:
    """A repo file name (from a listing or a weights index) that is safe to join under a snapshot folder.

    Relative, '/'-separated, no `..` or `.` part, no empty part, not absolute or a Windows
    drive/UNC path, no backslash, no NUL/newline/control character, each part at most 255 bytes.
    `where` says where the name came from, for the message. Subfolders pass this rule; whether a
    name must be top level is `is_top_level`'s question.
    """
    try:  # huggingface_hub's own check (private: if a release moves it, ours below still holds)
        from huggingface_hub._local_folder import _validate_relative_filename
    except ImportError:  # pragma: no cover
        def _validate_relative_filename(filename: str) -> None:
            return None

    problem = None
    if not isinstance(name, str) or not name:
        problem = "it is not a non-empty text"
    elif any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        problem = "it holds a control character (NUL, newline, ...)"
    elif "\\" in name:
        problem = "it holds a backslash"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "it has an empty, '.' or '..' part"
    elif any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_PART_BYTES for part in name.split("/")):
        problem = "a part of it is longer than a file name can be"
    else:
        try:
            _validate_relative_filename(name)
        except ValueError:
            problem = "it is absolute or leaves the folder"
        if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
            problem = "it is absolute or leaves the folder"
    if problem:
        raise UnsafeNameError(
            f"{where} names a file {quoted(name)}, which is not a safe file name: {problem}",
            "nothing was written for it; this hub or model is broken or hostile (check HF_ENDPOINT)",
        )
    return name  # type: ignore[return-value]


def is_top_level(name: str) -> bool:
    """Firefly fetches only top-level files (see hub.py for why subfolders are not supported)."""
    return "/" not in name


def quoted(value: object, limit: int = 80) -> str:
    """A value from outside, quoted and cut short, safe to print on a terminal."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


MAX_MODEL_NAME_CHARS = 4096  # PATH_MAX on Linux: no folder path is longer


def check_model_name(name: object, *, where: str) -> str:
    """A model as a user names it (a hub id or a folder path), from a flag or the settings file:
    text, at most 4096 characters, no control character, each part at most 255 bytes. Anything
    else could never name a model, and would fail deep inside a file-system call (an
    `active_model` of 100k characters was an OSError traceback in every later run)."""
    problem = None
    if not isinstance(name, str) or not name.strip():
        problem = "it is not a non-empty text"
    elif len(name) > MAX_MODEL_NAME_CHARS:
        problem = f"it is longer than {MAX_MODEL_NAME_CHARS} characters"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        problem = "it holds a control character (NUL, newline, ...)"
    elif any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_PART_BYTES for part in name.replace("\\", "/").split("/")):
        problem = "a part of it is longer than a file name can be"
    if problem:
        raise ConfigError(f"{where}: {quoted(name)} is not a model name or folder: {problem}",
                          "give a hub id (org/name) or a model folder")
    return name  # type: ignore[return-value]
