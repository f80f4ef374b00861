"""Errors a user can cause, each with a message that says what happened and how to fix it.

The CLI, the app and the server show `FireflyError`s as plain messages (no traceback), all in the
words of `format_error` (the one rendering); anything else is a bug.
"""

from __future__ import annotations


class FireflyError(Exception):
    """Base for user-facing errors: `message` says what went wrong, `hint` how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


def format_error(e: BaseException, *, lines: bool = False) -> str:
    """The one rendering of an error for people: our errors' message and hint, on one line
    ("message — hint": the app's status lines and notifications, the API's error message) or, with
    `lines`, as a terminal shows it ("error: message" and "hint: hint" lines: the CLI). Anything else
    is a bug: its type and text, so a report names it.

    Plain text: a front end that reads markup (Textual) must show it as text ("[llamacpp]" is no
    markup)."""
    if isinstance(e, FireflyError):
        message, hint = e.message, e.hint
    else:
        message, hint = f"{type(e).__name__}: {e}", None
    if lines:
        return f"error: {message}" + (f"\nhint: {hint}" if hint else "")
    return message + (f" — {hint}" if hint else "")


class ModelNotFoundError(FireflyError):
    """A model folder or hub id that is not on this machine."""


class InvalidModelError(FireflyError):
    """A folder that exists but is not a usable model (no config, no tokenizer, no weights)."""


class OfflineError(FireflyError):
    """The network (or the hub) is needed but not reachable, or offline mode is on."""


class OutOfMemoryError(FireflyError):
    """The device ran out of memory; the hint lists what to try."""


class RemoteCodeError(FireflyError):
    """The model needs `trust_remote_code` and the user has not opted in."""


class PromptTooLongError(FireflyError):
    """Even the newest message alone does not fit in the context window."""


class DataError(FireflyError):
    """Bad training or corpus data (the message names file:line where there is one)."""


class ConfigError(FireflyError):
    """A bad option or configuration value."""


class UnsupportedModelError(FireflyError):
    """A model this operation cannot handle (the message says what is missing)."""


class OutputExistsError(FireflyError):
    """An output folder that already holds files and would be overwritten without --force."""


class DownloadCancelled(FireflyError):
    """A download stopped on request; the partial file stays in the cache and `pull` resumes it."""


class HubAccessError(FireflyError):
    """The hub refused access (gated or private model, bad token): the hint says how to get it."""


class StorageError(FireflyError, OSError):
    """A file or folder firefly must write cannot be written: no permission, a read-only file
    system, a full disk, a file where a folder should be. Also an OSError, so code that already
    handles OS failures keeps working; the hint says what to do."""

    @classmethod
    def from_os_error(cls, error: OSError, path: object, doing: str = "write") -> "StorageError":
        import errno as _errno

        code = error.errno
        reason = error.strerror or str(error)
        if code in (_errno.ENOSPC, getattr(_errno, "EDQUOT", -1)):
            hint = "the disk is full: free some space and try again (nothing was changed)"
        elif code == _errno.EROFS:
            hint = "it is on a read-only file system: set FIREFLY_HOME to a folder you can write to"
        elif code in (_errno.EACCES, _errno.EPERM):
            hint = "you may not write there: fix its permissions, or set FIREFLY_HOME to a folder you can write to"
        elif code in (_errno.ENOTDIR, _errno.EEXIST):
            hint = "a file is where a folder should be: move it away, or set FIREFLY_HOME elsewhere"
        else:
            hint = "check the disk and the folder's permissions, then try again"
        err = cls(f"cannot {doing} {path}: {reason}", hint)
        err.errno = code  # OSError's fields, for code that looks at them
        err.strerror = error.strerror
        err.filename = str(path)
        return err
