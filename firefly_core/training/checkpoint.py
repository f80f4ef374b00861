"""Checkpoints of a run: RUN_DIR/checkpoints/step-NNNNNNNN, written whole or not at all.

accelerate's `save_state` writes model, optimizer, the registered scheduler and every process's
RNG states (DeepSpeed engines save their own shards); we add trainer_state.json (step, epoch,
data position). Everything is written into a hidden temporary folder that is renamed into place
once complete, so a crash mid-save never leaves a checkpoint that looks valid.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import FireflyError
from ..outputs import is_disk_full

STATE_FILE = "trainer_state.json"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text("utf-8"))


def _write_failed(e: BaseException, run_dir: Path, step: int) -> FireflyError:
    previous = latest_checkpoint(run_dir)
    kept = (f"the previous checkpoint {previous.name} is intact: continue with --resume"
            if previous else "no checkpoint was saved yet")
    if is_disk_full(e):
        return FireflyError(f"the disk is full: checkpoint step {step} could not be written to {run_dir}",
                            f"free some space, then {kept}")
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]
    return FireflyError(f"checkpoint step {step} could not be written to {run_dir}: {reason}", kept)


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save on every process (DeepSpeed needs all of them); the main one publishes the folder.
    A failed write (a full disk) removes the partial folder and raises a FireflyError that says
    which checkpoint is still intact."""
    final = checkpoint_path(run_dir, step)
    tmp = final.parent / f".{final.name}.tmp"
    if accelerator.is_main_process:
        # One run writes here (the run folder is locked): any other unfinished one is a leftover.
        for stale in final.parent.glob(".step-*.tmp") if final.parent.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        if accelerator.is_main_process:
            write_json(tmp / STATE_FILE, {"step": step, **state})
    except Exception as e:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, RuntimeError)) or is_disk_full(e):
            raise _write_failed(e, run_dir, step) from None
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, checkpoint: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG from `checkpoint`; return its trainer state."""
    accelerator.load_state(str(checkpoint))
    return read_state(checkpoint)
