"""What the app tells its screens about the one model load in progress (the app's loading worker).

The app loads models in one worker (`FireflyApp.load_model`) and handles its end in one
`Worker.StateChanged` handler; every mode screen gets these messages and shows them its own way
(the chat's status line, the Models screen's status). They live here, not in app.py, so screens
can name them without importing the app.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message


class ModelStatus(Message):
    """A step of getting `name` ready ("loading …", "compiling CPU kernels, once, ~30 s")."""

    def __init__(self, name: str, step: str | None = None) -> None:
        super().__init__()
        self.name, self.step = name, step


class ModelLoaded(Message):
    """The load of `name` ended: `lm` is the model, or `error` says why not (already shown)."""

    def __init__(self, name: str, lm: Any = None, error: str | None = None) -> None:
        super().__init__()
        self.name, self.lm, self.error = name, lm, error
