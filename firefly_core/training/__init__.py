"""Fine-tuning: config, the training loop, launching (one device or several), events, checkpoints, LoRA."""

from .config import TrainConfig, load_config
from .events import EventTail, RunSummary, TrainEvent, list_runs, read_events

__all__ = ["TrainConfig", "load_config", "EventTail", "RunSummary", "TrainEvent", "list_runs", "read_events"]
