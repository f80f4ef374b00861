"""Helpers for the app's pilot tests: waiting on a condition, reading the screen as text, fake streams."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

from rich.console import Console


async def wait_until(pilot, predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> None:
    """Let the app run until `predicate()` is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        await pilot.pause(interval)


def screen_text(app) -> str:
    """What the terminal shows right now, as plain text (wide characters take two cells)."""
    width, height = app.size
    console = Console(
        width=width, height=height, file=io.StringIO(), record=True, color_system=None,
        force_terminal=True, legacy_windows=False,
    )
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


# -- a scripted, slow reply stream (duck-typed like TextDelta / ReplyDone) ------------------------
@dataclass
class FakeDelta:
    text: str


@dataclass
class FakeStats:
    prompt_tokens: int = 3
    reused_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.01
    tokens_per_s: float = 100.0
    total_s: float = 0.1
    stop_reason: str = "max_new_tokens"
    context_used: int = 0
    context_length: int = 128


@dataclass
class FakeDone:
    text: str
    stats: FakeStats
    cancelled: bool


class SlowSession:
    """A ChatSession stand-in that emits one piece every `delay` seconds until cancelled.

    Used only where a test needs a reply that does not end on its own (cancel); everything else
    uses the real tiny models.
    """

    def __init__(self, pieces: list[str], delay: float = 0.05, forever: bool = True) -> None:
        self.pieces = pieces
        self.delay = delay
        self.forever = forever
        self.messages: list = []
        self.started = threading.Event()

    def _stream(self, cancel):
        text, i = "", 0
        self.started.set()
        while self.forever or i < len(self.pieces):
            if cancel is not None and cancel.is_set():
                return_done = FakeDone(text, FakeStats(new_tokens=i, context_used=3 + i, stop_reason="cancelled"), True)
                yield return_done
                return
            piece = self.pieces[i % len(self.pieces)]
            text += piece
            i += 1
            yield FakeDelta(piece)
            time.sleep(self.delay)
        yield FakeDone(text, FakeStats(new_tokens=i, context_used=3 + i), False)

    def send(self, text, cancel=None):
        return self._stream(cancel)

    regenerate = lambda self, cancel=None: self._stream(cancel)  # noqa: E731

    def edit_last_user(self, text, cancel=None):
        return self._stream(cancel)


async def wait_screen(pilot, cls, timeout: float = 10.0):
    """Wait until the active screen is a mounted `cls` (dialogs compose a moment after push)."""
    app = pilot.app
    await wait_until(
        pilot, lambda: isinstance(app.screen, cls) and app.screen.is_mounted and bool(app.screen.children),
        timeout=timeout, what=cls.__name__,
    )
    await pilot.pause()
    return app.screen
