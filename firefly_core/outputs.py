"""Output folders: the one rule for where `prune`, `merge` and `train` may write and what they may replace.

A user's files are never deleted without being asked:

- the output path is resolved first (`--out .`, `~`, `..`, symlinks), and the place it would be
  created in must be a folder we can write to: checked before any work, with a clear error;
- an output never is, contains, or lies inside a folder the command reads (the model, the run),
  and never is or contains an input file (a corpus, the data) — not even with --force, since
  replacing the output would delete its inputs;
- an existing non-empty output is replaced only with --force;
- the result is written into a temporary folder (or file, for a single-file output such as a GGUF)
  next to the output (same filesystem) and renamed into place whole. The temporary name carries
  our pid, so one left by a killed run is recognised and removed when the next run writes there.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterable

from .errors import ConfigError, OutputExistsError
from .process import pid_alive

# Temporary names are ".{name}.{pid}-{random}.tmp" and ".{name}.{pid}-{random}.old".
_OURS = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8,}\.(tmp|old)$")
# Names from earlier versions (tempfile.mkdtemp, ".old-" swaps): no pid, judged by age.
_LEGACY = re.compile(r"^\.(?P<name>.+)\.(old-[0-9a-f]{12}|[A-Za-z0-9_]{8}\.tmp)$")
LEGACY_STALE_S = 3600.0


def is_disk_full(e: BaseException) -> bool:
    """Whether a failed write ran out of space (torch and safetensors wrap the OS error)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e).lower()
    return "no space left" in text or "disk quota" in text or "file write failed" in text


def _contains(folder: Path, path: Path) -> bool:
    return folder == path or folder in path.parents


def resolve_output(out: str | os.PathLike, flag: str = "--out") -> Path:
    """The absolute, resolved output path, after checking that it can be written.

    Checked by making (and removing) an empty folder in the nearest existing parent: permissions,
    read-only filesystems and pseudo-filesystems such as /proc all answer that truthfully."""
    if str(out).strip() == "":
        raise ConfigError(f"{flag} is empty", f"give {flag} a folder path")
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{flag} {out} is a file, not a folder", f"choose another {flag}")
    parent = path.parent if path != path.parent else path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot create {path}: {parent} is a file", f"choose another {flag}")
    try:
        probe = tempfile.mkdtemp(prefix=".firefly-probe-", dir=parent)
        os.rmdir(probe)
    except OSError as e:
        raise ConfigError(
            f"cannot write the output {path}: {parent} is not writable ({e.strerror})",
            f"choose a {flag} folder you can write to",
        ) from None
    return path


def check_output(
    out: str | os.PathLike,
    *,
    force: bool = False,
    reads: Iterable[str | os.PathLike] = (),
    inputs: Iterable[str | os.PathLike] = (),
    flag: str = "--out",
) -> Path:
    """The resolved output folder, refused when writing it could lose the user's files.

    `reads`: folders the command reads (model, run): the output may not overlap them either way.
    `inputs`: files the command reads (corpus, data): the output may not be or contain them.
    `force`: replace an existing non-empty output (never allowed to break the two rules above)."""
    path = resolve_output(out, flag)
    for folder in reads:
        src = Path(folder).expanduser().resolve()
        if _contains(path, src) or _contains(src, path):
            raise ConfigError(
                f"the output folder {path} overlaps {src}, which this command reads",
                f"choose a {flag} outside it (and not containing it)",
            )
    for file in inputs:
        src = Path(file).expanduser().resolve()
        if _contains(path, src):
            raise ConfigError(
                f"the output folder {path} contains the input {src}; replacing the output would delete it",
                f"choose another {flag}, or move the input out of it",
            )
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputExistsError(
            f"the output folder {path} is not empty", f"choose another {flag}, or pass --force to replace it"
        )
    return path


def clean_stale_temp(out: Path, *, every_name: bool = False) -> list[Path]:
    """Remove temporary folders and files next to `out` left by runs that were killed: ours by
    pid (the process is gone), older unnamed ones by age. Returns what was removed.

    `every_name`: those of every output in `out`'s folder, not only `out`'s (for a folder that
    only firefly writes, such as the GGUF cache, where an output's name changes with its source)."""
    out = Path(out)
    parent = out.parent
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _OURS.match(entry.name)
        if m and (every_name or m.group("name") == out.name):
            stale = int(m.group("pid")) != os.getpid() and not pid_alive(int(m.group("pid")))
        else:
            m = _LEGACY.match(entry.name)
            if not (m and (every_name or m.group("name") == out.name)):
                continue
            try:
                stale = now - entry.stat().st_mtime > LEGACY_STALE_S
            except OSError:
                continue
        if not stale or entry.is_symlink():
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            try:
                entry.unlink()
            except OSError:
                continue
        removed.append(entry)
    return removed


def _sibling(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.{kind}"


def temp_folder(out: Path) -> Path:
    """A new empty folder next to `out` for writing its replacement (stale ones are cleaned first)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(out)
    tmp = _sibling(out, "tmp")
    tmp.mkdir()
    return tmp


def temp_file(out: Path) -> Path:
    """A free name next to `out` to write its replacement file into (stale ones are cleaned
    first); it carries our pid, so the file a killed run leaves is removed by the next one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(out)
    return _sibling(out, "tmp")


def replace_folder(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`; an existing `out` is moved aside first and then removed,
    so a reader sees the old folder or the new one, never a mix."""
    out = Path(out)
    if out.exists():
        trash = _sibling(out, "old")
        os.rename(out, trash)
        os.rename(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, out)
