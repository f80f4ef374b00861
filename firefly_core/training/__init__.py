"""Fine-tuning: config, the training loop and the methods it runs (SFT, DPO, continued pretraining),
packing, losses, launching (one device or several), distributed set-up, run folders, typed events,
checkpoints, LoRA, and the `Run` handle every front end uses."""

from .config import TrainConfig, load_config
from .events import (
    CheckpointEvent,
    DoneEvent,
    ErrorEvent,
    EvalEvent,
    EventTail,
    StartEvent,
    StepEvent,
    TrainEvent,
    read_events,
)
from .run import Run, RunSummary, TrainRequest, list_runs, open_run

__all__ = [
    "TrainConfig", "load_config", "EventTail", "RunSummary", "TrainEvent", "StartEvent", "StepEvent", "EvalEvent",
    "CheckpointEvent", "DoneEvent", "ErrorEvent", "list_runs", "read_events",
    "Run", "TrainRequest", "open_run",
]
