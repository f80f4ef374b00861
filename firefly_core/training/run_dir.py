"""What a run folder is: which folders a new run may use, what makes a folder a run worth
protecting, resuming one, and the lock that keeps two `firefly train` out of one folder.

A run writes only into a folder it created, or one that holds nothing but what a run (or the app
starting one) writes. A folder whose start failed (a typo in --data: a config and an error event,
no checkpoint) is not a run to protect: starting again there is allowed, and `--resume` says there
is nothing to resume instead of refusing the corrected options.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, OutputExistsError
from ..outputs import check_output
from .checkpoint import checkpoints_dir, list_checkpoints
from .checkpoint_model import MODELS_DIR
from .config import CONFIG_FILE, RESUME_OVERRIDABLE, TrainConfig, load_saved
from .distributed import ACCELERATE_CONFIG_FILE, DS_CONFIG_FILE
from .events import EVENTS_FILE
from .lora import ADAPTER_DIR

LOCK_FILE = ".firefly-train.lock"
FINAL_DIR = "final"
# What a front end may put into a run folder before `firefly train` starts in it (the app's
# launch record and log: training/run.py start_process), and what a start that failed leaves.
LAUNCH_FILE = "app-launch.json"  # what a front end writes next to a run it started (pid, command)
LOG_FILE = "train.log"  # stdout + stderr of a run a front end started
EVAL_FILE = "evaluation.json"  # what Evaluate found (firefly_core.evaluation.run_eval)
FRONT_END_FILES = (LAUNCH_FILE, LOG_FILE, EVAL_FILE)
RUN_FILES = (CONFIG_FILE, EVENTS_FILE, ACCELERATE_CONFIG_FILE, DS_CONFIG_FILE, LOCK_FILE, MODELS_DIR)


def is_protected_run(run_dir: Path) -> bool:
    """A run with something to lose: a checkpoint, a final model or an adapter."""
    run_dir = Path(run_dir)
    return bool(list_checkpoints(run_dir)) or (run_dir / FINAL_DIR).exists() or (run_dir / ADAPTER_DIR).exists()


def _foreign_entries(run_dir: Path) -> list[str]:
    """Entries of `run_dir` that neither a run nor a front end starting one writes."""
    allowed = set(FRONT_END_FILES) | set(RUN_FILES)
    foreign = []
    for entry in sorted(run_dir.iterdir()):
        if entry.name in allowed:
            continue
        if entry.name == checkpoints_dir(run_dir).name and entry.is_dir() and not list_checkpoints(run_dir):
            continue  # only unfinished (hidden) checkpoint folders of a killed start
        if entry.name.startswith(f".{FINAL_DIR}.") or entry.name.startswith(f".{ADAPTER_DIR}."):
            continue  # our temporary folders
        foreign.append(entry.name)
    return foreign


def _model_folder(model: str) -> list[Path]:
    """The local folder of `--model` when it is one (a hub id has none to protect here)."""
    path = Path(model).expanduser()
    return [path] if path.is_dir() else []


def check_new_run(config: TrainConfig) -> Path:
    """Check --out for a new run without touching anything: writable, not overlapping the model
    or the data, not someone else's folder, not a run with checkpoints. Returns the folder."""
    inputs = [*config.data, *([config.eval_file] if config.eval_file else [])]
    for path in inputs:  # a typo in --data is an error before the run folder exists
        if not Path(path).is_file():
            raise DataError(f"no data file at {path}", "give an existing .jsonl, .json or .txt file (the data check shows what one holds)")
    run_dir = check_output(config.out, force=True, reads=_model_folder(config.model), inputs=inputs)
    if run_dir.is_dir():
        if is_protected_run(run_dir):
            raise ConfigError(
                f"{run_dir} already holds a training run",
                "resume it, or choose another output folder",
            )
        foreign = _foreign_entries(run_dir)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputExistsError(
                f"the run folder {run_dir} already holds files that are not a training run's: {shown}",
                "choose a new or empty --out folder (a run writes only into a folder it created)",
            )
    return run_dir


def prepare_new_run(config: TrainConfig) -> TrainConfig:
    """`check_new_run`, then create the folder and save the resolved config."""
    run_dir = check_new_run(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir)
    return config


def resolve_resume(config_overrides: dict[str, Any], run_dir: Path) -> TrainConfig:
    """The saved config of `run_dir`, with the options that may change on resume applied."""
    run_dir = Path(run_dir)
    saved = load_saved(run_dir)
    if not list_checkpoints(run_dir):
        raise ConfigError(
            f"nothing to resume: {run_dir} has no checkpoint (the run stopped before its first one)",
            "start it again without --resume (same --out, corrected options)",
        )
    ignored = []
    for key, value in config_overrides.items():
        if value is None or key in ("out", "config"):
            continue
        if key in RESUME_OVERRIDABLE:
            setattr(saved, key, value)
        elif getattr(saved, key, value) != value:
            ignored.append(key)
    if ignored:
        raise ConfigError(
            f"--resume continues the saved run; these options differ from it: {', '.join(sorted(ignored))}",
            f"drop them (only {', '.join(sorted(RESUME_OVERRIDABLE))} may change), or start a new run",
        )
    saved.out = str(run_dir)
    return saved  # saved by `launch` once it holds the run's lock


class RunLock:
    """An exclusive lock on a run folder for the life of a `firefly train` (the launcher holds it
    for all its workers). The OS drops it when the process dies, so it is never stale."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"another `firefly train` (pid {holder}) is running in {self.path.parent}",
                "wait for it to finish or stop it first, or choose another --out folder",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays (removing it would race)
            self._fd = None
