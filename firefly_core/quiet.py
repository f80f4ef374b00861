"""Library noise firefly must not print (the one owner): `firefly train`'s console, the chat REPL
and the app show our progress and status lines, not other packages' deprecation warnings,
progress bars or log lines. `quiet_libraries()` for a training run, `quiet_libraries(ui=True)`
where a REPL or the app is drawn (also transformers' info/warning lines while loading).

Silenced, each on purpose: transformers/peft/accelerate FutureWarnings (deprecations inside those
libraries, nothing a user can act on), transformers' "Loading weights" / "Writing model shards"
bars (our own progress covers them), DeepSpeed's "Setting accelerator to CPU" (CPU is what
`--gpu cpu` asked for), and accelerate's "Removed shared tensor" on saving a model with tied
embeddings (the tie is restored on loading; the final model is checked to load).
Real warnings and errors of those libraries still show.
"""

from __future__ import annotations

import logging
import os
import warnings

# Exact messages dropped from these loggers; anything else they log still shows.
_DROPPED = {
    "DeepSpeed": ("Setting accelerator to CPU", "Setting ds_accelerator to"),
    "accelerate.utils.other": ("Removed shared tensor",),
    "accelerate.checkpointing": ("Removed shared tensor",),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        return not any(p in message for p in self.prefixes)


_installed = False


def quiet_libraries(*, ui: bool = False) -> None:
    """Install the filters (warning filters each call, since a caller may reset them; log
    filters once per process). `ui`: also no hub progress bars and only transformers' errors,
    which would draw over the app or the REPL (our status lines say what happens)."""
    global _installed
    if ui:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    for module in ("transformers", "peft", "accelerate", "deepspeed", "torch.utils.checkpoint"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module.replace(".", r"\.") + r"(\.|$)")
    if _installed:
        return
    _installed = True
    for name, prefixes in _DROPPED.items():
        logging.getLogger(name).addFilter(_DropMessages(prefixes))
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
