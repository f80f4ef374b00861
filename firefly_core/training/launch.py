"""Launching a run: one device in this process; several through `accelerate launch` (GPUs, machines)
or torchrun (`--gpu cpu --num-processes N`, gloo), with the configs `distributed` generates.

Every process runs the same `run_training`; the parent of a multi-process run only tails
events.jsonl for the console and forwards Ctrl-C to the workers, which checkpoint and stop.
The parent holds the run folder's lock for the whole run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

from ..errors import ConfigError, FireflyError
from ..outputs import resolve_output
from .config import TrainConfig
from .distributed import (  # noqa: F401  (re-exported: the names launch has always offered)
    ACCELERATE_CONFIG_FILE,
    DEEPSPEED_HINT,
    DS_CONFIG_FILE,
    accelerate_config,
    deepspeed_config,
    require_deepspeed,
    worker_command,
    write_launch_configs,
    yaml_text as _yaml,
)
from .events import DoneEvent, ErrorEvent, EventTail, TrainEvent
from .run_dir import RunLock, check_new_run, prepare_new_run, resolve_resume  # noqa: F401


def prepare_run_dir(config: TrainConfig, resume: bool) -> TrainConfig:
    """Create RUN_DIR and save the resolved config (refusing to mix a new run into an old one);
    on resume, save the config with its changed options (workers of a multi-process run read it)."""
    if resume:
        config.save(Path(config.out))
        return config
    return prepare_new_run(config)


def launch(config: TrainConfig, *, resume: bool = False, callbacks: Iterable[Callable[[TrainEvent], None]] = ()):
    """Run training on the configured devices; returns the in-process `RunResult` or, for
    several processes, the final status from events.jsonl ("completed" | "stopped")."""
    config.validate()
    if config.deepspeed:
        require_deepspeed()
    _check_gpus(config)
    resolve_output(config.out)  # an impossible --out is an error before anything is created
    if not resume:
        check_new_run(config)  # before the lock file is made: a refused folder is left as it was
    with RunLock(Path(config.out)):
        prepare_run_dir(config, resume)
        if config.world_size == 1 and config.num_machines == 1:
            from .loop import run_training

            if config.devices() != ["cpu"]:
                os.environ.setdefault("CUDA_VISIBLE_DEVICES", config.devices()[0])
            return run_training(config, resume=resume, callbacks=callbacks)
        return _launch_processes(config, resume, list(callbacks))


def _children(pid: int) -> list[int]:
    """Descendants of `pid` (Linux /proc; empty elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    kids = [int(k) for k in text.split()]
    return kids + [g for k in kids for g in _children(k)]


def _signal_workers(launcher_pid: int, signum: int) -> None:
    """Send `signum` to the launcher's workers, not to the launcher: the workers checkpoint and
    exit 0, and torchrun / accelerate then end normally instead of tearing them down (torch
    elastic starts workers in sessions of their own, so a process-group signal misses them).
    Where /proc is missing, the launcher gets it and forwards it itself."""
    pids = _children(launcher_pid)
    try:
        for pid in pids or [launcher_pid]:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _check_gpus(config: TrainConfig) -> None:
    if config.devices() == ["cpu"]:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--gpu {config.gpu} asked for, but CUDA is not available here", "use --gpu cpu")
    visible = torch.cuda.device_count()
    missing = [d for d in config.devices() if int(d) >= visible and "CUDA_VISIBLE_DEVICES" not in os.environ]
    if missing:
        raise ConfigError(f"no GPU {', '.join(missing)} on this machine ({visible} visible)", "see nvidia-smi")


def _launch_processes(config: TrainConfig, resume: bool, callbacks: list) -> str:
    run_dir = Path(config.out).resolve()
    write_launch_configs(config, run_dir)
    cmd, env = worker_command(config, resume)
    tail = EventTail(run_dir)
    tail.offset = (run_dir / "events.jsonl").stat().st_size if (run_dir / "events.jsonl").exists() else 0
    # Own session: Ctrl-C reaches only us, and we hand it to the whole worker group once.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    forwarded = []

    def forward(signum, frame):
        if forwarded and signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGKILL)
            return
        forwarded.append(signum)
        _signal_workers(proc.pid, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    status = None
    error: ErrorEvent | None = None
    try:
        while True:
            finished = proc.poll() is not None  # checked first, so the last poll sees every event
            for event in tail.poll():
                for cb in callbacks:
                    cb(event)
                if isinstance(event, DoneEvent):
                    status = event.status
                elif isinstance(event, ErrorEvent):
                    error = event
            if finished:
                break
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if status is None and error is not None:
        raise FireflyError(error.message or "training failed", error.hint)
    if status is None:
        raise FireflyError(
            f"the training processes exited with status {proc.returncode} before finishing",
            f"see the error above and {run_dir / 'events.jsonl'}",
        )
    return status
