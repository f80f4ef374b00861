"""Decode threads from the CPUs free now (firefly_core/cpu_use.py, models.service.default_threads):
injected CPU samples, so the outcome never depends on this machine's load."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from firefly_core import cpu_use
from firefly_core.cpu_use import CpuSample, free_cpus
from firefly_core.models import service

SMALL = SimpleNamespace(model=torch.nn.Linear(64, 64))
BIG = SimpleNamespace(model=torch.nn.Linear(4096, 8192, bias=False, dtype=torch.bfloat16))  # 64 MiB


def _sample(others: float, own: float = 0.0, cpus: int = 4, wall: float = 0.1) -> CpuSample:
    return CpuSample(wall=wall, busy=(others + own) * wall, own=own * wall, cpus=cpus)


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(service, "_usable_cpus", lambda: 4)


def test_quiet_machine_gets_every_core_and_busy_cores_are_left_out(four_cores):
    assert service.default_threads(BIG, sample=lambda: _sample(0.0)) == 4
    assert service.default_threads(BIG, sample=lambda: _sample(2.0)) == 2
    assert service.default_threads(BIG, sample=lambda: _sample(9.0)) == 1  # overloaded: still one


def test_small_models_decode_on_one_thread_without_sampling(four_cores):
    def never():
        raise AssertionError("a small model needs no CPU sample")

    assert service.default_threads(SMALL, sample=never) == 1


def test_our_own_process_is_not_contention(four_cores):
    # the app's other threads (UI, a checksum) ran 1.5 CPUs during the sample: not someone else
    assert service.default_threads(BIG, sample=lambda: _sample(0.2, own=1.5)) == 4


def test_history_does_not_count(four_cores, monkeypatch):
    """The 1-minute load average is not consulted: a machine busy a minute ago but quiet now
    gets every core (the rule this replaced gave 1 thread here)."""
    monkeypatch.setattr(os, "getloadavg", lambda: (12.0, 12.0, 12.0), raising=False)
    assert service.default_threads(BIG, sample=lambda: _sample(0.0)) == 4


@pytest.mark.parametrize(
    ("others", "free"),
    [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (1.4, 1), (3.0, 1)],
)
def test_only_whole_cpus_held_by_others_count(others, free):
    # less than half a CPU over the sample (a shell, a redraw) is noise
    assert free_cpus(_sample(others, cpus=2), usable=2) == free


def test_affinity_smaller_than_the_machine():
    # 16-CPU machine, this process pinned to 4, 10 CPUs busy elsewhere: the 6 free ones are more than ours
    assert free_cpus(_sample(10.0, cpus=16), usable=4) == 4
    assert free_cpus(_sample(14.0, cpus=16), usable=4) == 2


def test_empty_sample_counts_nothing():
    assert CpuSample(wall=0.0, busy=1.0, own=0.0, cpus=2).others() == 0.0


def test_usable_cpus_counts_physical_cores(monkeypatch):
    import psutil

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 8 if logical else 4)
    assert service._usable_cpus() == 4  # hyper-threads: one thread per physical core


def test_a_real_sample_counts_a_burner_process():
    """The sampler against a real process that spins on a CPU (the oracle: its own CPU time, read
    by psutil around the sample): the others' CPU time covers the burner's. Machine-independent:
    on a busy machine the burner gets less CPU, and the bound follows it."""
    import psutil

    burner = subprocess.Popen([sys.executable, "-c", "print(flush=True)\nwhile True: pass"], stdout=subprocess.PIPE)
    try:
        burner.stdout.readline()  # it is running its loop
        proc = psutil.Process(burner.pid)
        before = sum(proc.cpu_times()[:2])
        sample = cpu_use.sample_cpu_use(0.3)
        burned = sum(proc.cpu_times()[:2]) - before
        assert sample.wall >= 0.3
        assert burned > 0.05  # it did run
        assert sample.busy - sample.own >= burned - 0.03  # 0.03: clock-tick granularity at both ends
        assert sample.others() > 0
    finally:
        burner.kill()
        burner.wait()


def test_a_sample_started_ahead_is_the_one_used(four_cores, monkeypatch):
    """The service starts the CPU sample when a load begins and takes it after the model is read."""
    taken: list[float] = []
    monkeypatch.setattr(cpu_use, "sample_cpu_use", lambda seconds=0.1: taken.append(seconds) or _sample(2.0))
    ahead = cpu_use.SampleAhead(0.05)
    assert service.default_threads(BIG, sample=ahead.result) == 2
    assert taken == [0.05]
