"""Helpers for the app's pilot tests: waiting on a condition, reading the screen as text, fake streams."""

from __future__ import annotations

import io
import threading
import time

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


# -- a scripted, slow reply stream (the real event types, so core's Conversation records it) ----
class SlowSession:
    """A ChatSession stand-in that emits one piece every `delay` seconds until cancelled.

    Used only where a test needs a reply that does not end on its own (cancel) or a reply a tiny
    random model cannot be made to give (an empty one); everything else uses the real tiny models.
    """

    def __init__(self, pieces: list[str], delay: float = 0.05, forever: bool = True) -> None:
        from firefly_core.generation.config import GenerationConfig

        self.pieces = pieces
        self.delay = delay
        self.forever = forever
        self.messages: list = []
        self.system = None
        self.lm = None
        self.config = GenerationConfig()
        self.started = threading.Event()

    def _stream(self, cancel):
        from firefly_core.formats import Message
        from firefly_core.generation.config import ReplyDone, ReplyStats, TextDelta

        def stats(i: int, reason: str) -> ReplyStats:
            return ReplyStats(prompt_tokens=3, reused_tokens=0, new_tokens=i, ttft_s=0.01, tokens_per_s=100.0,
                              total_s=0.1, stop_reason=reason, context_used=3 + i, context_length=128)

        text, i = "", 0
        self.started.set()
        while self.forever or i < len(self.pieces):
            if cancel is not None and cancel.is_set():
                self.messages.append(Message("assistant", text))
                yield ReplyDone(text, stats(i, "cancelled"), True)
                return
            piece = self.pieces[i % len(self.pieces)]
            text += piece
            i += 1
            yield TextDelta(piece)
            time.sleep(self.delay)
        self.messages.append(Message("assistant", text))
        yield ReplyDone(text, stats(max(i, 1), "stop_token"), False)

    def send(self, text, cancel=None):
        from firefly_core.formats import Message

        self.messages.append(Message("user", text))
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


# -- training runs as another process leaves them (APP-SHELL) -------------------------------------
def write_events(run_dir, events: list[dict]) -> None:
    """Append events to RUN_DIR/events.jsonl as the trainer writes them: one JSON object a line.
    The file is the contract between the trainer's process and the app, so tests write it directly."""
    import json
    from pathlib import Path

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as f:
        for event in events:
            f.write(json.dumps({"time": round(time.time(), 3), **event}, ensure_ascii=False) + "\n")
