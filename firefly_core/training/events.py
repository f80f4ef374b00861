"""The metrics stream of a run: RUN_DIR/events.jsonl, its writer, an incremental reader, run summaries.

One JSON object per line, each with "type" (start|step|eval|checkpoint|done|error) and "time"
(Unix seconds). A "done" event carries "status": "completed" or "stopped" (interrupted, with a
checkpoint to resume from). Readers never trust the last line to be complete: a writer may be in
the middle of it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..process import pid_alive

EVENTS_FILE = "events.jsonl"
EVENT_TYPES = ("start", "step", "eval", "checkpoint", "done", "error")


@dataclass
class TrainEvent:
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def time(self) -> float:
        return float(self.data.get("time", 0.0))

    @property
    def step(self) -> int | None:
        return self.data.get("step")

    @property
    def loss(self) -> float | None:
        return self.data.get("loss")

    def to_json(self) -> str:
        return json.dumps({"type": self.type, **self.data}, ensure_ascii=False)

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> "TrainEvent":
        obj = dict(obj)
        return cls(type=str(obj.pop("type", "")), data=obj)


class EventWriter:
    """Appends events, one flushed line each (so a tailing reader sees them at once)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def emit(self, type: str, **data: Any) -> TrainEvent:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        event = TrainEvent(type, {"time": round(time.time(), 3), **data})
        self._f.write(event.to_json() + "\n")
        self._f.flush()
        return event

    def close(self) -> None:
        self._f.close()


class EventTail:
    """Incremental reader: remembers the byte offset; a half-written last line waits for next time."""

    def __init__(self, path: Path) -> None:
        """`path`: the run folder (it may not exist yet) or the events file itself."""
        path = Path(path)
        self.path = path if path.suffix == ".jsonl" else path / EVENTS_FILE
        self.offset = 0

    def poll(self) -> list[TrainEvent]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        events = []
        for line in chunk[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write; the rest of the file is still good
            if isinstance(obj, dict):
                events.append(TrainEvent.from_obj(obj))
        return events


def read_events(run_dir: Path) -> list[TrainEvent]:
    """All complete events of a run so far."""
    return EventTail(Path(run_dir) / EVENTS_FILE).poll()


@dataclass
class RunSummary:
    path: Path
    status: str  # running | done | error | stopped
    step: int
    total: int
    last_loss: float | None
    started: float | None  # Unix time of the first start event
    message: str | None = None  # the error, when status is "error"


def summarize(run_dir: Path, events: list[TrainEvent] | None = None) -> RunSummary | None:
    events = read_events(run_dir) if events is None else events
    starts = [e for e in events if e.type == "start"]
    if not starts:
        return None
    last_start = max(i for i, e in enumerate(events) if e.type == "start")
    after = events[last_start:]
    steps = [e for e in events if e.type == "step"]
    status, message = "running", None
    for e in after:
        if e.type == "done":
            status = "stopped" if e.data.get("status") == "stopped" else "done"
        elif e.type == "error":
            status, message = "error", e.data.get("message")
    if status == "running" and not pid_alive(events[last_start].data.get("pid")):
        status, message = "error", "the training process ended without a final event (killed?)"
    return RunSummary(
        path=Path(run_dir),
        status=status,
        step=steps[-1].data.get("step", 0) if steps else events[last_start].data.get("start_step", 0),
        total=int(events[last_start].data.get("total_steps", 0)),
        last_loss=steps[-1].data.get("loss") if steps else None,
        started=starts[0].time,
    )


def list_runs(parent: Path) -> list[RunSummary]:
    """Runs (folders with events.jsonl) directly under `parent`, newest first."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    runs = [s for d in parent.iterdir() if (d / EVENTS_FILE).is_file() and (s := summarize(d))]
    return sorted(runs, key=lambda r: r.started or 0, reverse=True)
