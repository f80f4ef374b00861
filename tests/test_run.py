"""The `Run` handle (firefly_core/training/run.py): a run's state folded from its events by one
rule, its process (alive, stop), resume, clone and checkpoints, on real event files and on a real
`firefly train` process."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from app_helpers import write_events

from firefly_core.samples import sample_path
from firefly_core.training.config import TrainConfig
from firefly_core.training.run import (
    ENDED_WITHOUT_EVENT,
    EXITED_BEFORE_START,
    Run,
    TrainRequest,
    list_runs,
    open_run,
    running_runs,
    start_run,
    summarize,
)
from firefly_core.training.run_dir import LAUNCH_FILE

SAMPLE = sample_path("instructions")


def steps(first: int, last: int, loss=lambda s: 3.0 / s, total: int = 10, **extra) -> list[dict]:
    return [{"type": "step", "step": s, "total": total, "loss": loss(s), **extra} for s in range(first, last + 1)]


def wait_for(predicate, timeout: float = 120.0, what: str = "") -> None:
    """Poll until `predicate()` holds (a state, not a duration); fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.1)


@pytest.fixture
def sleeper():
    """A live process to stand for a run's trainer."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_state_is_folded_from_the_events_and_a_resume_starts_the_curve_again(tmp_path, sleeper):
    run_dir = tmp_path / "run"
    write_events(run_dir, [{"type": "start", "pid": sleeper.pid, "total_steps": 10, "start_step": 0, "time": 100.0}])
    write_events(run_dir, steps(1, 4))
    run = open_run(run_dir)
    assert (run.status, run.step, run.total, run.alive) == ("running", 4, 10, True)
    assert run.pid == sleeper.pid and [s for s, _ in run.state.train] == [1, 2, 3, 4]

    write_events(run_dir, [{"type": "eval", "step": 4, "loss": 0.9, "perplexity": math.exp(0.9)},
                           {"type": "checkpoint", "step": 3, "path": "c"},
                           {"type": "done", "status": "stopped", "step": 4, "total": 10, "message": "stopped at 4"}])
    assert run.refresh() and run.status == "stopped" and run.state.message == "stopped at 4"
    assert run.pid is None and not run.alive  # a finished run has no process, whatever runs under its old pid
    assert run.state.last_eval.perplexity == pytest.approx(math.exp(0.9))

    # resumed from the checkpoint at step 3: step 4 is done again, its old point goes
    write_events(run_dir, [{"type": "start", "pid": sleeper.pid, "total_steps": 10, "start_step": 3,
                            "resumed_from": "c"}])
    run.refresh()
    assert (run.status, run.step) == ("running", 3) and [s for s, _ in run.state.train] == [1, 2, 3]
    assert run.state.eval == [] and run.state.message == ""
    write_events(run_dir, steps(4, 10))
    write_events(run_dir, [{"type": "done", "status": "completed", "step": 10, "total": 10, "final_path": "f"}])
    run.refresh()
    assert (run.status, run.step, run.state.last_loss) == ("done", 10, pytest.approx(0.3))
    assert [s for s, _ in run.state.train] == list(range(1, 11))
    # one rule: a fresh reader of the whole file and the incremental one agree
    again = open_run(run_dir)
    assert again.summary() == run.summary() and again.state.train == run.state.train
    assert run.summary().started == 100.0


def test_a_process_gone_without_a_final_event_is_an_error(tmp_path):
    run_dir = tmp_path / "crashed"
    write_events(run_dir, [{"type": "start", "pid": dead_pid(), "total_steps": 10}, *steps(1, 2)])
    run = open_run(run_dir)
    assert run.status == "error" and run.state.message == ENDED_WITHOUT_EVENT and not run.resumable
    assert summarize(run_dir).message == ENDED_WITHOUT_EVENT


def test_an_error_event_keeps_its_message_and_hint(tmp_path):
    run_dir = tmp_path / "failed"
    write_events(run_dir, [{"type": "start", "pid": dead_pid(), "total_steps": 10},
                           {"type": "error", "message": "the loss became nan at step 2", "hint": "lower --lr"}])
    run = open_run(run_dir)
    assert run.status == "error" and run.state.detail == "the loss became nan at step 2 — lower --lr"


def test_a_launch_after_the_last_event_waits_for_its_start_and_fails_if_the_process_exits(tmp_path, sleeper):
    parent = tmp_path / "runs"
    stopped = parent / "stopped"
    write_events(stopped, [{"type": "start", "pid": dead_pid(), "total_steps": 10, "time": 10.0},
                           *[{**e, "time": 11.0} for e in steps(1, 2)],
                           {"type": "done", "status": "stopped", "step": 2, "total": 10, "time": 12.0}])
    (stopped / LAUNCH_FILE).write_text(json.dumps({"pid": sleeper.pid, "started": 20.0}))  # a resume, just launched
    run = open_run(stopped)
    assert run.status == "waiting" and run.alive and run.pid == sleeper.pid
    assert [r.path for r in running_runs(parent)] == [stopped]

    never = parent / "never-started"  # launched, then the process exited before any event (a bad option)
    never.mkdir()
    (never / LAUNCH_FILE).write_text(json.dumps({"pid": dead_pid(), "started": 30.0}))
    listed = {r.path.name: r for r in list_runs(parent)}
    assert set(listed) == {"stopped", "never-started"}
    assert listed["never-started"].status == "error" and listed["never-started"].state.message == EXITED_BEFORE_START
    assert not (parent / "empty").exists() and summarize(parent / "empty") is None


def test_a_loss_that_is_not_finite_or_explodes_is_said(tmp_path):
    noisy = tmp_path / "noisy"  # falling with noise: no alarm
    write_events(noisy, [{"type": "start", "total_steps": 40},
                         *steps(1, 40, loss=lambda s: 3.0 * 0.95**s + (0.4 if s % 3 == 0 else 0.0), total=40)])
    assert open_run(noisy).state.loss_alarm == ""

    exploding = tmp_path / "exploding"
    write_events(exploding, [{"type": "start", "total_steps": 20}, *steps(1, 10, loss=lambda s: 2.0 / s ** 0.5)])
    run = open_run(exploding)
    assert run.state.loss_alarm == ""
    write_events(exploding, steps(11, 13, loss=lambda s: 5.0 * (s - 9)))
    run.refresh()
    assert "exploding" in run.state.loss_alarm and "step 13" in run.state.loss_alarm

    nan = tmp_path / "nan"  # written by Python's json as NaN, read back as a float
    write_events(nan, [{"type": "start", "total_steps": 5}, *steps(1, 2), {"type": "step", "step": 3, "loss": float("nan")}])
    assert "not finite (nan) at step 3" in open_run(nan).state.loss_alarm


def test_clone_gives_the_request_that_trains_like_the_run(tmp_path):
    import dataclasses

    run_dir = tmp_path / "dpo-run"
    run_dir.mkdir()
    cfg = TrainConfig(model="org/m", data=["a.jsonl", "b.jsonl"], out=str(run_dir), gpu="0,1", method="dpo",
                      lora=True, lr=5e-6, max_steps=30, epochs=2.0, batch_size=2, max_length=256, deepspeed=2,
                      beta=0.2, save_every=10, gradient_checkpointing=True)
    (run_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    req = Run(run_dir).clone()
    assert (req.model, req.data, req.gpu, req.method, req.lora, req.packing) == ("org/m", ["a.jsonl", "b.jsonl"], "0,1", "dpo", True, False)
    assert (req.lr, req.max_steps, req.epochs, req.batch_size, req.max_length, req.zero) == (5e-6, 30, 2, 2, 256, 2)
    assert req.extra == ["--beta", "0.2", "--save-every", "10", "--gradient-checkpointing"]  # in the config's order
    argv = req.argv()
    assert argv[argv.index("--method") + 1] == "dpo" and "--lora" in argv and "--packing" not in argv

    (run_dir / "train_config.json").write_text("{broken")
    from firefly_core.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot read the settings"):
        Run(run_dir).clone()


@pytest.mark.slow
def test_stop_resume_clone_and_checkpoints_on_a_real_run(bloom_dir, tmp_path, monkeypatch):
    """A real `firefly train` process started as the app starts it: stopped with SIGINT (it saves a
    checkpoint), resumed from it, stopped again. The run is long on purpose: it is stopped, never
    raced to its end."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "runs" / "real"
    req = TrainRequest(model=str(bloom_dir), data=[str(SAMPLE)], out=out, gpu="cpu", lora=False, max_steps=100000,
                       batch_size=2, max_length=64, lr=1e-4, extra=["--save-every", "100000", "--warmup-steps", "0"])
    cfg = TrainConfig(model=str(bloom_dir), data=[str(SAMPLE)], out=str(out), gpu="cpu", max_steps=100000,
                      batch_size=2, max_length=64, lr=1e-4, save_every=100000, warmup_steps=0)
    run = start_run(req, cfg)
    try:
        wait_for(lambda: run.refresh() is not None and run.step >= 3, what="three steps")
        assert run.status == "running" and run.alive
        assert run.stop()
        wait_for(lambda: run.refresh() is not None and run.status in ("stopped", "error"), what="the stop")
        assert run.status == "stopped", run.state.detail
        wait_for(lambda: not run.alive and not running_runs(out.parent), what="the process to exit")
        stopped_at = run.step
        assert run.resumable and run.models() == [(f"step {stopped_at}", out / "checkpoints" / f"step-{stopped_at:08d}")]
        clone = run.clone()
        assert (clone.model, clone.data, clone.max_steps, clone.lora) == (str(bloom_dir), [str(SAMPLE)], 100000, False)
        assert "--save-every" in clone.extra and "--warmup-steps" in clone.extra
        # the summary line is whole in the log (the panel wraps it once, to its width), in words
        assert any(line.startswith("prompt format") and line.endswith("precision fp32") for line in run.log_tail())

        run.resume()
        wait_for(lambda: run.refresh() is not None and run.status == "running" and run.step > stopped_at,
                 what="the resumed run to step on")
        assert run.state.start.start_step == stopped_at and run.state.start.resumed_from.endswith(f"step-{stopped_at:08d}")
        assert [s for s, _ in run.state.train][: stopped_at] == list(range(1, stopped_at + 1))
        assert run.stop()
        wait_for(lambda: run.refresh() is not None and run.status != "running", what="the second stop")
        assert run.status == "stopped" and run.step > stopped_at
    finally:
        pid = run.pid
        if pid is not None:
            import os
            import signal

            os.kill(pid, signal.SIGKILL)


# A trainer as far as the run folder can tell: real events, and SIGINT answered with a checkpoint
# and a "stopped" event, as the loop does (the loop's own reaction is test_training's job).
STOPPABLE = """
import json, os, signal, sys, time
f = open(os.path.join(sys.argv[1], "events.jsonl"), "a")
def emit(type, **data):
    f.write(json.dumps(dict(type=type, time=time.time(), **data)) + chr(10)); f.flush()
emit("start", pid=os.getpid(), total_steps=1000, start_step=0)
stop = []
signal.signal(signal.SIGINT, lambda *a: stop.append(1))
step = 0
while not stop:
    step += 1
    emit("step", step=step, total=1000, loss=1.0 / step)
    time.sleep(0.05)
emit("checkpoint", step=step, path="ckpt")
emit("done", status="stopped", step=step, total=1000, message=f"stopped by SIGINT at step {step}")
"""


def test_firefly_runs_lists_and_stops_through_the_same_run_state(tmp_path, capsys):
    from firefly_tui.cli import main

    parent = tmp_path / "runs"
    write_events(parent / "old", [{"type": "start", "pid": dead_pid(), "total_steps": 8}, *steps(1, 8, total=8),
                                  {"type": "done", "status": "completed", "step": 8, "total": 8}])
    write_events(parent / "crashed", [{"type": "start", "pid": dead_pid(), "total_steps": 8}, *steps(1, 2, total=8)])
    live = parent / "live"
    live.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", STOPPABLE, str(live)], start_new_session=True)
    try:
        wait_for(lambda: open_run(live).step >= 2, timeout=30, what="the fake trainer to step")
        assert main(["runs", "--dir", str(parent)]) == 0
        table = capsys.readouterr().out.splitlines()
        rows = {line.split()[0]: line.split() for line in table[1:] if not line.startswith(("crashed:",))}
        assert table[0].split() == ["RUN", "STATUS", "STEP", "LOSS", "STARTED"]
        assert rows["old"][1:4] == ["done", "8/8", "0.3750"] and rows["live"][1] == "running"
        assert rows["crashed"][1] == "error" and f"crashed: {ENDED_WITHOUT_EVENT}" in table

        assert main(["runs", "--dir", str(parent), "stop", "live"]) == 0
        out = capsys.readouterr().out
        assert proc.wait(10) == 0
        run = open_run(live)
        assert run.status == "stopped" and out.strip() == f"live: stopped at step {run.step} ({run.state.detail})"
        assert main(["runs", "stop", str(live)]) == 1  # nothing runs it any more
        assert "is not running (it is stopped)" in capsys.readouterr().err
        assert main(["runs", "stop", str(tmp_path / "nothing")]) == 1
        assert "no training run at" in capsys.readouterr().err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
