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
    The app is given it as its session provider (`FireflyApp(sessions=slow.provider)`).
    """

    def __init__(self, pieces: list[str], delay: float = 0.05, forever: bool = True) -> None:
        from firefly_core.generation.config import GenerationConfig

        self.pieces = pieces
        self.delay = delay
        self.forever = forever
        self.histories: list = []  # the history each reply was asked for
        self.system = None
        self.lm = None
        self.config = GenerationConfig()
        self.started = threading.Event()

    def _stream(self, cancel):
        from firefly_core.generation.config import ReplyDone, ReplyStats, TextDelta

        def stats(i: int, reason: str) -> ReplyStats:
            return ReplyStats(prompt_tokens=3, reused_tokens=0, new_tokens=i, ttft_s=0.01, tokens_per_s=100.0,
                              total_s=0.1, stop_reason=reason, context_used=3 + i, context_length=128)

        text, i = "", 0
        self.started.set()
        while self.forever or i < len(self.pieces):
            if cancel is not None and cancel.is_set():
                yield ReplyDone(text, stats(i, "cancelled"), True)
                return
            piece = self.pieces[i % len(self.pieces)]
            text += piece
            i += 1
            yield TextDelta(piece)
            time.sleep(self.delay)
        yield ReplyDone(text, stats(max(i, 1), "stop_token"), False)

    def reply(self, history, cancel=None):
        self.histories.append(list(history))
        return self._stream(cancel)

    def settings_used(self) -> dict:
        return {"model": "scripted", "prompt_format": None, "system": None, "generation": {}}

    def provider(self, model, chat, **_options):
        """`open_session`'s signature: every chat answers with this scripted session."""
        return self


async def wait_screen(pilot, cls, timeout: float = 10.0):
    """Wait until the active screen is a mounted `cls` (dialogs compose a moment after push)."""
    app = pilot.app
    await wait_until(
        pilot, lambda: isinstance(app.screen, cls) and app.screen.is_mounted and bool(app.screen.children),
        timeout=timeout, what=cls.__name__,
    )
    await pilot.pause()
    return app.screen


# -- a decoder that waits for the test to release each token (stop/cancel without racing) --------
class GatedDecoder:
    """Wraps a real decoder: the prompt and every token still run through the model (so the cache,
    prefix reuse and the store see a real reply), but each `decode` step waits until the test
    releases it and returns the next token of `script` instead of the sampled one (a random tiny
    model could end with EOS before the test presses stop). Set on `lm.decoder` after loading.

    `waiting` is set while a step waits for the test; `release(n)` lets n steps through, `open()`
    lets every step through (after a stop, so the loop reaches its cancel check).
    """

    def __init__(self, inner, script: list[int]) -> None:
        self.inner = inner
        self.script = list(script)
        self.vocab_size = inner.vocab_size
        self.device = inner.device
        self.released = 0  # steps the test let through so far
        self.steps = 0  # steps taken
        self._cond = threading.Condition()
        self._open = False
        self.waiting = False

    def __getattr__(self, name):  # anything else the loop or the app asks of a decoder
        return getattr(self.inner, name)

    def new_cache(self):
        return self.inner.new_cache()

    def forward(self, ids, cache, every_position: bool = False):
        return self.inner.forward(ids, cache, every_position)

    def prefill(self, ids, cache, sampler) -> int:
        self.inner.prefill(ids, cache, sampler)
        return self.script[0]

    def decode(self, token, cache, sampler) -> int:
        with self._cond:
            self.waiting = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._open or self.released > self.steps)
            self.waiting = False
            self.steps += 1
        self.inner.decode(token, cache, sampler)  # the real step: the cache holds what was said
        return self.script[self.steps % len(self.script)]

    def release(self, n: int = 1) -> None:
        with self._cond:
            self.released += n
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    async def release_until(self, pilot, predicate, limit: int = 200, what: str = "") -> None:
        """Release one step at a time, each time waiting until the decoder is back for the next one
        (or `predicate()` holds), until `predicate()` holds."""
        for _ in range(limit):
            if predicate():
                return
            before = self.steps
            self.release(1)
            await wait_until(pilot, lambda: predicate() or (self.steps > before and self.waiting),
                             what=what or "the gated decoder's next step")
        raise AssertionError(f"not reached after {limit} released tokens: {what or predicate}")


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
