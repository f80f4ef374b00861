"""How many CPUs are free right now: a short sample of the machine's CPU time, our own process left out.

Why a sample and not the load average: the 1-minute load average is history. A machine that was
busy a minute ago and is quiet now made `firefly chat` decode on 1 thread at 0.65x (issue 24), and
a load that started ten seconds ago barely shows in it. A decode step is memory-bound and its
OpenMP / llama.cpp workers spin waiting for each other: one worker on a CPU another process holds
makes every step wait for the scheduler (measured in bench/threads.py: several times slower), so
what matters is who holds the CPUs now.

`sample_cpu_use(seconds)` reads the machine's and this process's CPU time twice (psutil: /proc/stat
on Linux, the native counters on macOS and Windows) `seconds` apart; `free_cpus(sample, usable)` is
what the decode may take. Only whole CPUs held by others count: work of less than half a CPU over
the sample (a shell, an editor redrawing) is noise, and a burst shorter than the sample is diluted
by it, so only contention that lasts through the sample makes the decode back off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

SAMPLE_SECONDS = 0.1  # long enough for ~10 scheduler ticks per CPU, short beside a model load


@dataclass(frozen=True)
class CpuSample:
    """CPU time seen over one sample, in CPU-seconds (all CPUs together) and wall seconds."""

    wall: float  # seconds between the two readings
    busy: float  # CPU-seconds not idle on the whole machine (steal counts: a neighbour VM had it)
    own: float  # CPU-seconds this process used (its other threads: the UI, a checksum)
    cpus: int  # logical CPUs of the machine

    def others(self) -> float:
        """CPUs' worth of work by other processes during the sample."""
        if self.wall <= 0:
            return 0.0
        return max(0.0, (self.busy - self.own) / self.wall)


def _readings() -> tuple[float, float, float]:
    """(monotonic seconds, machine busy CPU-seconds, own CPU-seconds) now."""
    import psutil

    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    # guest time is already counted in user time on Linux (psutil's own cpu_percent drops it too)
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    own = psutil.Process().cpu_times()
    return time.monotonic(), total - idle, own.user + own.system


def sample_cpu_use(seconds: float = SAMPLE_SECONDS) -> CpuSample:
    """Sample the machine's CPU use over `seconds` (this call sleeps that long)."""
    import psutil

    t0, busy0, own0 = _readings()
    time.sleep(seconds)
    t1, busy1, own1 = _readings()
    return CpuSample(wall=t1 - t0, busy=busy1 - busy0, own=own1 - own0, cpus=psutil.cpu_count() or 1)


def free_cpus(sample: CpuSample, usable: int) -> int:
    """CPUs a decode may take: the `usable` ones (this process's affinity) less the whole CPUs
    other processes held during `sample` (half a CPU or more counts as one), at least 1."""
    held = int(sample.others() + 0.5)
    return max(1, min(usable, sample.cpus - held))


class SampleAhead:
    """A `sample_cpu_use` started now on a thread, taken later (`result()`): the model service
    starts it when a load begins, so the sample overlaps reading the model instead of adding
    0.1 s to the load. Our own process's work during it is left out like any other sample's."""

    def __init__(self, seconds: float = SAMPLE_SECONDS) -> None:
        import threading

        self._sample: CpuSample | None = None
        self._thread = threading.Thread(target=self._run, args=(seconds,), name="cpu-sample", daemon=True)
        self._thread.start()

    def _run(self, seconds: float) -> None:
        self._sample = sample_cpu_use(seconds)

    def result(self) -> CpuSample:
        self._thread.join()
        if self._sample is None:  # the sampling thread failed (psutil missing a counter): sample here
            return sample_cpu_use()
        return self._sample
