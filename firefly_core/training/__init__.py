"""Fine-tuning: config, the training loop, launching (one device or several), distributed set-up,
run folders, typed events, checkpoints, LoRA."""

from .config import TrainConfig, load_config
from .events import (
    CheckpointEvent,
    DoneEvent,
    ErrorEvent,
    EvalEvent,
    EventTail,
    RunSummary,
    StartEvent,
    StepEvent,
    TrainEvent,
    list_runs,
    read_events,
)

__all__ = [
    "TrainConfig", "load_config", "EventTail", "RunSummary", "TrainEvent", "StartEvent", "StepEvent", "EvalEvent",
    "CheckpointEvent", "DoneEvent", "ErrorEvent", "list_runs", "read_events",
]
