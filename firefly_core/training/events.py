"""The metrics stream of a run: typed events, RUN_DIR/events.jsonl, its writer and an incremental
reader (what a run's events add up to is `run.py`'s `RunState`).

Each event is a dataclass (`StartEvent`, `StepEvent`, `EvalEvent`, `CheckpointEvent`, `DoneEvent`,
`ErrorEvent`) written as one JSON object per line with its "type" and "time" (Unix seconds). A
`DoneEvent` has `status` "completed" or "stopped" (interrupted, with a checkpoint to resume from).
The file comes from another process and may be torn or edited, so readers never trust it: a
half-written last line waits for the next poll, a broken line is skipped, and a field whose value
has the wrong type is dropped (its default stays), so a reader can format every field it gets.

No torch here: the app imports this module at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

EVENTS_FILE = "events.jsonl"
EVENT_TYPES = ("start", "step", "eval", "checkpoint", "done", "error")


@dataclass
class TrainEvent:
    """Base of the typed events. `data` (every field but the type, as JSON) is kept for readers
    written against the untyped events; new code uses the fields."""

    type: ClassVar[str] = ""
    time: float = 0.0

    @property
    def data(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps({"type": self.type, **self.data}, ensure_ascii=False)

    @staticmethod
    def from_obj(obj: dict[str, Any]) -> "TrainEvent | None":
        """The typed event of one parsed line; None for an unknown type."""
        cls = EVENT_CLASSES.get(str(obj.get("type", "")))
        if cls is None:
            return None
        hints = _hints(cls)
        values = {k: v for k, v in obj.items() if k in hints and _accepts(hints[k], v)}
        if "time" in values:
            values["time"] = float(values["time"])
        return cls(**values)


@dataclass
class StartEvent(TrainEvent):
    """A run (or a resumed run) has loaded its data and model and starts stepping."""

    type: ClassVar[str] = "start"
    pid: int | None = None
    run_dir: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    prompt_format: str = ""
    start_step: int = 0
    resumed_from: str | None = None
    total_steps: int = 0
    steps_per_epoch: int = 0
    warmup_steps: int = 0
    world_size: int = 1
    train_samples: int = 0
    eval_samples: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)
    truncated: int = 0
    cut_away: int = 0
    cut_away_where: list[str] = field(default_factory=list)
    supervised_tokens: int = 0
    trainable_params: int = 0
    device: str = ""
    mixed_precision: str = ""
    distributed: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. a damaged checkpoint skipped on resume


@dataclass
class StepEvent(TrainEvent):
    """One optimizer step (every `log_every` steps). Losses are rounded to 6 decimals."""

    type: ClassVar[str] = "step"
    step: int = 0
    total: int = 0
    epoch: float = 0.0
    loss: float | None = None
    lr: float = 0.0
    grad_norm: float | None = None
    supervised_tokens: int = 0
    computed_tokens: int = 0
    padding_tokens: int = 0
    tokens_per_s: float = 0.0
    elapsed: float = 0.0
    eta: float = 0.0
    memory: dict[str, float] = field(default_factory=dict)
    # DPO only (None otherwise): share of pairs whose chosen answer out-scores the rejected one,
    # the mean margin between them, and the mean implicit rewards beta * log(policy / reference).
    reward_accuracy: float | None = None
    reward_margin: float | None = None
    chosen_reward: float | None = None
    rejected_reward: float | None = None


@dataclass
class EvalEvent(TrainEvent):
    type: ClassVar[str] = "eval"
    step: int = 0
    loss: float | None = None
    perplexity: float | None = None
    samples: int = 0


@dataclass
class CheckpointEvent(TrainEvent):
    type: ClassVar[str] = "checkpoint"
    step: int = 0
    path: str = ""


@dataclass
class DoneEvent(TrainEvent):
    """The run ended: "completed" (final_path holds the model) or "stopped" (resume from checkpoint)."""

    type: ClassVar[str] = "done"
    status: str = "completed"
    step: int = 0
    total: int = 0
    final_path: str | None = None
    checkpoint: str | None = None
    signal: str | None = None
    message: str | None = None
    elapsed: float | None = None
    last_loss: float | None = None

    @property
    def stopped(self) -> bool:
        return self.status == "stopped"


@dataclass
class ErrorEvent(TrainEvent):
    """The run failed: `message` and `hint` as the CLI prints them, the traceback's last lines."""

    type: ClassVar[str] = "error"
    message: str = ""
    hint: str | None = None
    step: int | None = None
    traceback: list[str] = field(default_factory=list)


EVENT_CLASSES: dict[str, type[TrainEvent]] = {
    c.type: c for c in (StartEvent, StepEvent, EvalEvent, CheckpointEvent, DoneEvent, ErrorEvent)
}
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        names = {f.name for f in dataclasses.fields(cls)}
        _HINTS[cls] = {k: v for k, v in typing.get_type_hints(cls).items() if k in names}
    return _HINTS[cls]


def _accepts(hint: Any, value: Any) -> bool:
    """Whether a value read from the file fits the field's type (bools are not numbers here)."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if args and origin not in (list, dict):  # a union such as `float | None`
        return any(_accepts(a, value) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list or hint is list:
        return isinstance(value, list) and (not args or all(_accepts(args[0], v) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    return isinstance(value, hint)


class EventWriter:
    """Appends events, one flushed line each (so a tailing reader sees them at once)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def emit(self, event: TrainEvent | str, **fields: Any) -> TrainEvent:
        """Write a typed event; `emit("step", step=1, ...)` (type name and fields) also works."""
        if isinstance(event, str):
            if event not in EVENT_CLASSES:
                raise ValueError(f"unknown event type {event!r}")
            typed = TrainEvent.from_obj({"type": event, **fields})
            assert typed is not None
            event = typed
        if not event.time:
            event.time = round(time.time(), 3)
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
        except (FileNotFoundError, IsADirectoryError, PermissionError):
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
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                continue  # a line torn by a crash mid-write; the rest of the file is still good
            if isinstance(obj, dict) and (event := TrainEvent.from_obj(obj)) is not None:
                events.append(event)
        return events


def read_events(run_dir: Path) -> list[TrainEvent]:
    """All complete events of a run so far."""
    return EventTail(Path(run_dir) / EVENTS_FILE).poll()
