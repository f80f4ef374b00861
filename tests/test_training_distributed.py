"""The multi-device paths on CPU: DeepSpeed ZeRO-2 (one process), two gloo processes through the
same launcher used for GPUs, and Ctrl-C on a real `firefly train` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firefly_core.training.config import TrainConfig
from firefly_core.training.events import EventTail, read_events
from firefly_core.training.launch import launch

ASSETS = Path(__file__).resolve().parents[1] / "firefly_core" / "assets"
DATA = str(ASSETS / "sample_instructions.jsonl")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _config(model_dir, out, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=[DATA], out=str(out), gpu="cpu", batch_size=4, max_length=96,
                lr=3e-3, warmup_steps=1, max_steps=3, save_every=100, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _losses(run_dir) -> list[float]:
    return [e.data["loss"] for e in read_events(run_dir) if e.type == "step"]


@pytest.mark.slow
def test_deepspeed_zero2_step_on_cpu_matches_plain_training(bloom_dir, tmp_path, monkeypatch):
    pytest.importorskip("deepspeed")
    import importlib

    ds_torch = importlib.import_module("deepspeed.comm.torch")  # `deepspeed.comm.torch` the attribute is torch

    # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel on first use (a
    # CPU-only speed-up, minutes on a busy machine); one process never needs it.
    monkeypatch.setattr(ds_torch, "build_shm_op", lambda: None)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)

    plain = launch(_config(bloom_dir, tmp_path / "plain", max_steps=2))
    zero = launch(_config(bloom_dir, tmp_path / "zero2", max_steps=2, deepspeed=2))
    assert plain.status == zero.status == "completed"
    start = read_events(tmp_path / "zero2")[0].data
    assert start["distributed"] == "DistributedType.DEEPSPEED"
    ckpt = tmp_path / "zero2" / "checkpoints" / "step-00000002"
    assert (ckpt / "pytorch_model" / "mp_rank_00_model_states.pt").is_file()  # ZeRO's own layout
    # Same data, same AdamW: the ZeRO step computes what the plain one does.
    assert _losses(tmp_path / "zero2") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-4)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "zero2" / "final")


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_accumulation(bloom_dir, tmp_path):
    """2 processes x 1 micro-batch and 1 process x 2 accumulated micro-batches see the same
    batches, so the same loss: the step's loss is normalised over all its supervised tokens."""
    status = launch(_config(bloom_dir, tmp_path / "ddp", num_processes=2))
    assert status == "completed"
    start = read_events(tmp_path / "ddp")[0].data
    assert start["world_size"] == 2 and start["distributed"] == "DistributedType.MULTI_CPU"
    single = launch(_config(bloom_dir, tmp_path / "one", grad_accum=2))
    assert single.status == "completed"
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
    assert (tmp_path / "ddp" / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_ctrl_c_on_the_cli_checkpoints_and_resume_finishes(bloom_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "firefly_tui.cli", "train", "--gpu", "cpu", "--model", str(bloom_dir),
           "--data", DATA, "--out", str(run), "--max-steps", "400", "--batch-size", "2", "--max-length", "64",
           "--save-every", "1000", "--lr", "1e-3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)
    tail, step, deadline = EventTail(run), 0, time.time() + 120
    while step < 2 and time.time() < deadline and proc.poll() is None:
        step = max([e.data["step"] for e in tail.poll() if e.type == "step"] + [step])
        time.sleep(0.1)
    assert step >= 2, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # stopped, not finished: scripts can tell
    done = read_events(run)[-1]
    assert done.type == "done" and done.data["status"] == "stopped"
    stopped_at = done.data["step"]
    # Only our own output: no library deprecations, progress bars or DeepSpeed/accelerate chatter.
    for noise in ("FutureWarning", "Removed shared tensor", "Setting accelerator", "Loading weights", "Writing model"):
        assert noise not in err, (noise, err)
    assert f"stopped by SIGINT at step {stopped_at}; resume it to continue from this checkpoint" in err
    assert f"continue with: firefly train --resume --out {run}" in err  # the command line's own words
    assert (run / "checkpoints" / f"step-{stopped_at:08d}" / "trainer_state.json").is_file()

    out = subprocess.run(cmd[:4] + ["--out", str(run), "--resume", "--max-steps", str(stopped_at + 2)],
                         capture_output=True, text=True, timeout=180, env=_ENV)
    assert out.returncode == 0, out.stderr
    assert f"resuming from step {stopped_at}" in out.stderr
    steps = [e.data["step"] for e in read_events(run) if e.type == "step"]
    assert steps[-2:] == [stopped_at + 1, stopped_at + 2]
    assert (run / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_ctrl_c_on_a_two_process_run_stops_every_worker_cleanly(bloom_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "firefly_tui.cli", "train", "--gpu", "cpu", "--num-processes", "2",
           "--model", str(bloom_dir), "--data", DATA, "--out", str(run), "--max-steps", "400",
           "--batch-size", "2", "--max-length", "64", "--save-every", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)
    tail, deadline, stepped = EventTail(run), time.time() + 120, False
    while not stepped and time.time() < deadline and proc.poll() is None:
        stepped = any(e.type == "step" for e in tail.poll())
        time.sleep(0.1)
    assert stepped, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err  # the launcher was not torn down; the workers just stopped
    done = read_events(run)[-1]
    assert done.type == "done" and done.data["status"] == "stopped"
    assert (run / "checkpoints" / f"step-{done.data['step']:08d}" / "trainer_state.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    {"method": "dpo", "data": [str(ASSETS / "sample_preferences.jsonl")], "max_length": 256, "warmup_steps": 0},
    {"packing": True, "batch_size": 2, "max_length": 128},
], ids=["dpo", "packed"])
def test_two_gloo_processes_dpo_and_packing_match_accumulation(extra, bloom_dir, tmp_path):
    """DPO (loss per pair, reward sums reduced across processes) and packed rows normalise over the
    whole optimizer step too: 2 processes equal 1 process accumulating 2 micro-batches."""
    assert launch(_config(bloom_dir, tmp_path / "ddp", num_processes=2, **extra)) == "completed"
    assert launch(_config(bloom_dir, tmp_path / "one", grad_accum=2, **extra)).status == "completed"
    assert _losses(tmp_path / "ddp") == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
    if "method" in extra:
        ddp = [e for e in read_events(tmp_path / "ddp") if e.type == "step"]
        one = [e for e in read_events(tmp_path / "one") if e.type == "step"]
        assert [e.reward_margin for e in ddp] == pytest.approx([e.reward_margin for e in one], rel=1e-4, abs=1e-6)
        assert [e.reward_accuracy for e in ddp] == [e.reward_accuracy for e in one]
