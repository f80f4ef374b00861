"""One training run as every front end sees it: the `Run` handle (a run folder, its state folded
from events.jsonl by one rule, its process, stop, resume, clone, checkpoints as models, its log),
listing runs, and starting `firefly train` as a process of its own (`TrainRequest`, `start_run`).

The app and the CLI both go through here, so "is this run alive", "can it be resumed" and "what
step is it at" have one answer everywhere. A run is its own process that outlives whoever started
it; everything here reads the folder (events.jsonl, the launch record, the lock), so a run started
yesterday, from the CLI or from the app looks the same.

No torch at import: the app imports this module at start-up.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..process import pid_alive
from .checkpoint import list_checkpoints
from .config import CONFIG_FILE, TrainConfig
from .events import (
    EVENTS_FILE,
    DoneEvent,
    ErrorEvent,
    EvalEvent,
    EventTail,
    StartEvent,
    StepEvent,
    TrainEvent,
)
from .run_dir import FINAL_DIR, LAUNCH_FILE, LOCK_FILE, LOG_FILE, check_new_run

STATUSES = ("waiting", "running", "done", "stopped", "error")
# A loss whose recent median is this many times its first value has diverged (issue 26): a falling
# curve never gets there, and a DPO loss (ln 2 at the start) is past 1.39 only when it diverges.
LOSS_EXPLODES = 2.0
_RECENT = 3  # steps in the "recent" median: one noisy batch is not an explosion
ENDED_WITHOUT_EVENT = "the training process ended without a final event (killed?)"
EXITED_BEFORE_START = "the training process exited before starting (see the log)"


# -- the state of a run, folded from its events ---------------------------------------------------
@dataclass
class RunState:
    """What a run's events say, folded in order by `apply` (the one run-status rule; `Run.refresh`
    adds what the events cannot say: whether the process still runs)."""

    status: str = "waiting"  # one of STATUSES
    start: StartEvent | None = None  # the latest start (a resume starts again)
    started: float | None = None  # Unix time of the first start
    last_step: StepEvent | None = None
    last_eval: EvalEvent | None = None
    train: list[tuple[float, float]] = field(default_factory=list)  # (step, loss) of this run's curve
    eval: list[tuple[float, float]] = field(default_factory=list)
    message: str = ""  # why it stopped or failed
    hint: str | None = None
    final_path: str | None = None
    last_event_time: float = 0.0
    first_loss: float | None = None
    loss_alarm: str = ""  # the loss is not finite, or explodes: said in the panel

    def apply(self, events: list[TrainEvent]) -> None:
        for e in events:
            self.last_event_time = max(self.last_event_time, e.time or 0.0)
            if isinstance(e, StartEvent):
                self.start, self.status = e, "running"
                self.message, self.hint = "", None
                if self.started is None:
                    self.started = e.time
                # a resumed run starts again from its checkpoint: steps after it are redone
                self.train = [p for p in self.train if p[0] <= e.start_step]
                self.eval = [p for p in self.eval if p[0] <= e.start_step]
                if self.last_step is not None and self.last_step.step > e.start_step:
                    self.last_step = None
            elif isinstance(e, StepEvent):
                self.last_step = e
                if e.loss is not None:
                    self.train.append((e.step, e.loss))
                    self._check_loss(e)
            elif isinstance(e, EvalEvent):
                self.last_eval = e
                if e.loss is not None:
                    self.eval.append((e.step, e.loss))
            elif isinstance(e, DoneEvent):
                self.status = "stopped" if e.stopped else "done"
                self.message, self.hint = e.message or "", None
                self.final_path = e.final_path
            elif isinstance(e, ErrorEvent):
                self.status, self.message, self.hint = "error", e.message, e.hint

    def _check_loss(self, e: StepEvent) -> None:
        assert e.loss is not None
        if not math.isfinite(e.loss):
            self.loss_alarm = f"the loss is not finite ({e.loss}) at step {e.step}: lower the learning rate or check the data"
            return
        if self.loss_alarm.startswith("the loss is not finite"):
            return  # said once, kept: the curve after a NaN is not to be trusted
        if self.first_loss is None:
            self.first_loss = e.loss
        recent = [v for _, v in self.train[-_RECENT:] if math.isfinite(v)]
        median = statistics.median(recent)
        if len(recent) == _RECENT and self.first_loss > 0 and median > LOSS_EXPLODES * self.first_loss:
            self.loss_alarm = (f"the loss is exploding: {median:.4g} at step {e.step}, from {self.first_loss:.4g} "
                               "at the start; lower the learning rate")
        else:
            self.loss_alarm = ""

    @property
    def step(self) -> int:
        if self.last_step is not None:
            return self.last_step.step
        return self.start.start_step if self.start is not None else 0

    @property
    def total(self) -> int:
        return (self.last_step.total if self.last_step is not None else 0) or (
            self.start.total_steps if self.start is not None else 0)

    @property
    def last_loss(self) -> float | None:
        return self.last_step.loss if self.last_step is not None else None

    @property
    def detail(self) -> str:
        """The message with its hint, as one line."""
        return self.message + (f" — {self.hint}" if self.hint else "")


@dataclass(frozen=True)
class RunSummary:
    """One row of a runs list (a snapshot of `Run.state`)."""

    path: Path
    status: str
    step: int
    total: int
    last_loss: float | None
    started: float | None  # Unix time of the first start event
    message: str | None = None  # the error, when status is "error"


# -- the handle -----------------------------------------------------------------------------------
class Run:
    """A training run folder, read incrementally: `refresh()` reads new events and settles the
    status; the rest act on the run (stop, resume) or read it (clone, models, log)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.state = RunState()
        self._tail = EventTail(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.state.status!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return self.state.status

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def total(self) -> int:
        return self.state.total

    def refresh(self) -> list[TrainEvent]:
        """Fold the events written since the last call; then what the events cannot say: a run
        whose process is gone without a final event failed, and a launch after the last event
        means the run is (re)starting. Returns the new events."""
        events = self._tail.poll()
        self.state.apply(events)
        launch = self.launch_record()
        # launched after the last event: a new run, or a resume, that has not started yet
        relaunched = launch is not None and launch[1] > self.state.last_event_time
        if relaunched:
            if pid_alive(launch[0]):
                self.state.status = "waiting"
            elif not self._settle_poll():
                self.state.status, self.state.message, self.state.hint = "error", EXITED_BEFORE_START, None
        elif self.state.status == "running" and not any(pid_alive(p) for p in self._pids()):
            if not self._settle_poll():
                self.state.status, self.state.message, self.state.hint = "error", ENDED_WITHOUT_EVENT, None
        return events

    def _settle_poll(self) -> bool:
        """Read once more before calling a dead process's run failed: it may have just flushed
        its last line. True when that brought new events."""
        more = self._tail.poll()
        self.state.apply(more)
        return bool(more)

    def summary(self) -> RunSummary:
        s = self.state
        return RunSummary(self.path, s.status, s.step, s.total, s.last_loss, s.started,
                          s.detail if s.status == "error" else None)

    # -- the process ------------------------------------------------------------------------------
    def launch_record(self) -> tuple[int, float] | None:
        """(pid, started) of the `firefly train` a front end started here (`start_process`)."""
        try:
            data = json.loads((self.path / LAUNCH_FILE).read_text(encoding="utf-8"))
            return int(data["pid"]), float(data.get("started") or 0.0)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _lock_holder(self) -> int | None:
        """The pid written by the `firefly train` that took the run's lock (its launcher, which
        forwards a signal to every worker of a multi-process run)."""
        try:
            return int((self.path / LOCK_FILE).read_text(encoding="ascii").strip() or 0) or None
        except (OSError, ValueError):
            return None

    def _pids(self) -> list[int]:
        """Who may be this run's process, best first: the lock's holder, the launched process,
        the pid of the latest start event."""
        launch = self.launch_record()
        pids = [self._lock_holder(), launch[0] if launch else None, self.state.start.pid if self.state.start else None]
        return list(dict.fromkeys(p for p in pids if p))

    @property
    def pid(self) -> int | None:
        """The run's live process, or None (only while the events say it runs or is starting: a
        pid in an old record may belong to another program by now)."""
        if self.state.status not in ("running", "waiting"):
            return None
        return next((p for p in self._pids() if pid_alive(p)), None)

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def stop(self) -> bool:
        """Ask the run to stop: SIGINT, on which the trainer saves a checkpoint and writes a
        "stopped" event (continue with `resume`). False when no process runs it."""
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return False
        return True

    # -- resume, clone ----------------------------------------------------------------------------
    @property
    def resumable(self) -> bool:
        """Stopped (or crashed) with a checkpoint to continue from, and no process on it now."""
        return self.status in ("stopped", "error") and not self.alive and bool(list_checkpoints(self.path))

    def resume_argv(self) -> list[str]:
        """`firefly train --resume`: continue from the newest checkpoint with the saved settings."""
        return ["train", "--resume", "--out", str(self.path)]

    def resume(self) -> subprocess.Popen:
        """Start `firefly train --resume` for this run (its own process, logged to train.log)."""
        if not self.resumable:
            raise ConfigError(f"{self.name} cannot be resumed: it is {self.status}, with "
                              f"{len(list_checkpoints(self.path))} checkpoint(s)",
                              "only a stopped run with a checkpoint continues; start a new run instead")
        return start_process(self.resume_argv(), self.path)

    def clone(self) -> "TrainRequest":
        """The settings of this run as a new request (a new --out is the caller's): the saved
        train_config.json, with what the request has no field for as extra options."""
        return TrainRequest.from_saved(self.path)

    # -- what it made -----------------------------------------------------------------------------
    def models(self) -> list[tuple[str, Path]]:
        """What can be chatted with, newest first: ("final", final/) then ("step N", checkpoint)."""
        out: list[tuple[str, Path]] = []
        final = self.path / FINAL_DIR
        if not final.is_dir() and self.state.final_path and Path(self.state.final_path).is_dir():
            final = Path(self.state.final_path)
        if final.is_dir():
            out.append(("final", final))
        for ckpt in reversed(list_checkpoints(self.path)):
            out.append((f"step {int(ckpt.name.split('-')[1])}", ckpt))
        return out

    def checkpoint_model(self, checkpoint: Path) -> Path:
        """A model folder to chat with from one checkpoint (made once under the run, then reused;
        loads torch: call from a worker)."""
        from .checkpoint_model import checkpoint_model

        return checkpoint_model(self.path, Path(checkpoint))

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    def log_tail(self, n: int = 200) -> list[str]:
        """The last n lines of the run's log (stdout and stderr of a run a front end started)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                data = f.read()
        except OSError:
            return []
        return data.decode("utf-8", "replace").splitlines()[-n:]


def open_run(path: Path | str) -> Run:
    """A `Run` with everything written so far read."""
    run = Run(path)
    run.refresh()
    return run


def summarize(run_dir: Path) -> RunSummary | None:
    """The run's summary; None for a folder no run has started in (no start event, no launch)."""
    run = open_run(run_dir)
    if run.state.start is None and run.launch_record() is None:
        return None
    return run.summary()


def list_runs(parent: Path | None = None) -> list[Run]:
    """Runs directly under `parent` (default: the runs folder), newest first: folders with a start
    event, or where a front end launched `firefly train`."""
    if parent is None:
        from ..paths import runs_dir

        parent = runs_dir()
    parent = Path(parent)
    if not parent.is_dir():
        return []
    runs = []
    for d in parent.iterdir():
        if d.is_dir() and ((d / EVENTS_FILE).is_file() or (d / LAUNCH_FILE).is_file()):
            run = open_run(d)
            if run.state.start is not None or run.launch_record() is not None:
                runs.append(run)
    return sorted(runs, key=lambda r: r.state.started or (r.launch_record() or (0, 0.0))[1], reverse=True)


def running_runs(parent: Path | None = None) -> list[Run]:
    """Runs whose training process is alive (started here, from the CLI, or earlier)."""
    return [r for r in list_runs(parent) if r.alive]


# -- starting a run -------------------------------------------------------------------------------
def firefly_command() -> list[str]:
    """How to run the `firefly` CLI of this install: the same interpreter, so the same packages
    (named by module, not imported: core does not depend on the CLI)."""
    return [sys.executable, "-m", "firefly_tui.cli"]


def command_line(argv: list[str]) -> str:
    """The `firefly …` line a user can paste into a shell or a script on a GPU server."""
    return shlex.join(["firefly", *argv])


def start_process(cli_argv: list[str], out: Path) -> subprocess.Popen:
    """Start `firefly <cli_argv>` for the run folder `out` in its own session (it outlives the
    front end), output appended to out/train.log, and record its pid in out/app-launch.json."""
    from ..atomic import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    argv = firefly_command() + list(cli_argv)
    log = open(out / LOG_FILE, "ab")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        log.close()
    write_json(out / LAUNCH_FILE, {"pid": proc.pid, "argv": argv, "started": time.time()})
    return proc


def start_run(request: "TrainRequest", config: TrainConfig) -> Run:
    """Check the run folder by `firefly train`'s own rule (`config` is what the command line of
    `request` resolves to), then start it. A refused folder is an error here, before the log is
    written into it."""
    config.validate()
    check_new_run(config)
    start_process(request.argv(), Path(request.out))
    return open_run(request.out)


# The request's fields and where each comes from in a saved run config.
_REQUEST_CONFIG_KEYS = {
    "model", "data", "out", "epochs", "max_steps", "lr", "batch_size", "max_length", "gpu", "lora", "deepspeed",
    "method", "packing",
}
# Config keys with a CLI spelling other than --key-name, and keys that say where a run ran (not
# part of a clone).
_CLI_NAMES = {"prompt_format": "--format"}
_NOT_CLONED = {"out", "config", "num_machines", "machine_rank", "main_process_ip", "main_process_port"}


@dataclass
class TrainRequest:
    """A new run as a front end's form collects it; `argv()` is its `firefly train` command line."""

    model: str
    data: list[str]
    out: Path
    gpu: str = "cpu"
    method: str = "sft"  # one of config.METHODS: sft, dpo, pretrain (`--method`)
    lora: bool = True
    packing: bool = False
    epochs: float = 1
    max_steps: int = 0
    lr: float = 2e-4
    batch_size: int = 4
    max_length: int = 512
    zero: int = 0  # DeepSpeed ZeRO stage; 0: none
    extra: list[str] = field(default_factory=list)  # any other `firefly train` options

    def argv(self) -> list[str]:
        args = [
            "train",
            "--gpu", self.gpu,
            "--model", self.model,
            "--out", str(self.out),
            "--epochs", _num(self.epochs),
            "--lr", str(self.lr),
            "--batch-size", str(self.batch_size),
            "--max-length", str(self.max_length),
            "--data", *self.data,
        ]
        if self.method != "sft":
            args += ["--method", self.method]
        if self.packing:
            args += ["--packing"]
        if self.max_steps:
            args += ["--max-steps", str(self.max_steps)]
        if self.lora:
            args += ["--lora"]
        if self.zero:
            args += ["--deepspeed", str(self.zero)]
        return args + list(self.extra)

    @classmethod
    def from_saved(cls, run_dir: Path) -> "TrainRequest":
        """The request that trains like the run in `run_dir` did (RUN_DIR/train_config.json)."""
        path = Path(run_dir) / CONFIG_FILE
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"cannot read the settings of {Path(run_dir).name}: {e}", f"expected {path}") from None
        if not isinstance(saved, dict):
            raise ConfigError(f"{path} is not a JSON object", "the run's settings cannot be cloned")
        defaults = TrainConfig().to_dict()
        data = saved.get("data") or []
        try:
            request = cls(
                model=str(saved.get("model") or ""),
                data=[str(d) for d in (data if isinstance(data, list) else [data])],
                out=Path(run_dir),
                gpu=str(saved.get("gpu") or "cpu"),
                method=str(saved.get("method") or "sft"),
                lora=bool(saved.get("lora")),
                packing=bool(saved.get("packing")),
                epochs=float(saved.get("epochs") or 1),
                max_steps=int(saved.get("max_steps") or 0),
                lr=float(saved.get("lr", defaults["lr"])),
                batch_size=int(saved.get("batch_size", defaults["batch_size"])),
                max_length=int(saved.get("max_length", defaults["max_length"])),
                zero=int(saved.get("deepspeed") or 0),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"the settings of {Path(run_dir).name} are damaged: {e}", f"see {path}") from None
        for key, value in saved.items():
            if key in _REQUEST_CONFIG_KEYS or key in _NOT_CLONED or key not in defaults:
                continue
            if value is None or value is False or value == defaults[key]:
                continue
            flag = _CLI_NAMES.get(key, "--" + key.replace("_", "-"))
            if value is True:
                request.extra.append(flag)
            elif isinstance(value, list):
                request.extra += [flag, *map(str, value)]
            else:
                request.extra += [flag, _num(value) if isinstance(value, float) else str(value)]
        return request

    def check_data(self) -> Any:
        """The data check report as this run would read its data, by its method: SFT rows
        (`data.DataReport`), preference pairs for DPO (`preferences.PairReport`), documents for
        pretraining (`DocumentCheck`); tokenized with the model's tokenizer and prompt format (as
        chat resolves it) at this max length. Loads only the tokenizer."""
        tokenizer = fmt = None
        if self.model:
            from ..formats import resolve_format
            from ..models.catalog import prompt_format_for
            from ..models.inventory import resolve_model_path
            from ..models.loading import load_tokenizer

            tokenizer = load_tokenizer(resolve_model_path(self.model))
            fmt = resolve_format(tokenizer, catalog_format=prompt_format_for(self.model))
        paths = [Path(p) for p in self.data]
        if self.method == "dpo":
            from ..preferences import check_pairs

            return check_pairs(paths, tokenizer=tokenizer, prompt_format=fmt, max_length=self.max_length)
        if self.method == "pretrain":
            from ..documents import read_documents, tokenize_documents

            docs, bad = read_documents(paths)
            stats = tokenize_documents(docs, tokenizer, self.max_length)[1] if tokenizer is not None else None
            return DocumentCheck([str(p) for p in paths], len(docs), bad, stats, self.max_length)
        from ..data import check_files

        return check_files(paths, tokenizer=tokenizer, prompt_format=fmt, max_length=self.max_length)


@dataclass
class DocumentCheck:
    """What a pretraining run would read: documents, bad lines, tokens (`documents.DocumentStats`)."""

    files: list[str]
    documents: int
    bad: list[Any]
    tokens: Any | None
    max_length: int

    @property
    def valid(self) -> int:
        return self.documents


def _num(v: Any) -> str:
    """A number as a user types it: 1 not 1.0."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
