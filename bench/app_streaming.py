"""Streaming in the app: decode speed inside the app vs. `firefly chat`, and key latency.

The app streams a reply in a thread worker and redraws the Markdown at most ~15 times a second.
This measures, side by side in one process on the same model (loaded once through the model
service, as both front ends get it, so both decode with the same prepared decoder):

- tokens/s of what `firefly chat` runs: a `ChatSession` with `generation_config_for` (the same
  resolution of settings), consumed by a plain loop (the reference: no UI at all),
- tokens/s of the same reply streamed through the app (headless Textual, real rendering),
- while that reply streams, how long a key press takes to show up in the composer.

    python bench/app_streaming.py [--tokens 200] [--runs 3] [--model PATH] [--engine torch|llamacpp]

Without --model it builds the test kit's tiny BLOOM (the hardest case for the UI: tokens come
fastest, so the redraw cost weighs most).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("FIREFLY_HOME", tempfile.mkdtemp(prefix="firefly-bench-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def bare_tokens_per_s(lm, tokens: int) -> float:
    """In a thread, as the app runs it (torch's threading differs between main and other threads)."""
    out: dict = {}
    worker = threading.Thread(target=lambda: out.setdefault("tps", _bare(lm, tokens)))
    worker.start()
    worker.join()
    return out["tps"]


def _bare(lm, tokens: int) -> float:
    """What `firefly chat` does for one reply (commands/chat.py): same config resolution, same lock."""
    from firefly_core.formats import Message
    from firefly_core.generation import ReplyDone
    from firefly_core.session import ChatSession
    from firefly_core.models.generation_layers import generation_config_for

    config = generation_config_for(lm, overrides={"max_new_tokens": tokens})
    for _attempt in range(5):  # a random tiny model may hit its stop token early: retry
        session = ChatSession(lm, config=config)  # its reply holds the model's generation lock
        for ev in session.reply([Message("user", "你好，请介绍一下你自己")], threading.Event()):
            if isinstance(ev, ReplyDone) and ev.stats.new_tokens >= tokens // 2:
                return ev.stats.tokens_per_s
    raise RuntimeError(f"no reply of at least {tokens // 2} tokens in 5 tries")


async def app_run(lm, tokens: int) -> tuple[float, list[float]]:
    from app_helpers import wait_until
    from textual import events

    from firefly_core.store import ChatStore
    from firefly_tui.app import FireflyApp

    store = ChatStore(Path(tempfile.mkdtemp()) / "chats.sqlite3")
    store.create_conversation("bench", {"max_new_tokens": tokens})
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    app.lm, app.model_name = lm, "bench"
    latencies: list[float] = []
    tps = None
    async with app.run_test(size=(120, 40)) as pilot:
        chat = app.screen
        await wait_until(pilot, lambda: chat.conversation_id is not None)
        composer = chat.query_one("#composer")
        for _attempt in range(5):  # a random tiny model may hit its stop token early: retry
            composer.value = "你好，请介绍一下你自己"
            await pilot.press("enter")
            await wait_until(pilot, lambda: chat.generating or chat.last_stats)
            while chat.generating:
                # A key event straight into the app's queue, as the terminal driver sends it;
                # then wait on the event loop itself (pilot.pause would wait for idle).
                before = composer.value
                t0 = time.perf_counter()
                app.post_message(events.Key("a", "a"))
                while composer.value == before and time.perf_counter() - t0 < 10:
                    await asyncio.sleep(0.001)
                latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(0.15)  # a fast typist: ~6 keys a second
            await wait_until(pilot, lambda: not chat.generating)
            composer.value = ""
            if chat.last_stats.get("new_tokens", 0) >= tokens // 2:
                tps = chat.last_stats["tokens_per_s"]
                break
            chat.last_stats = {}
    store.close()
    return tps, latencies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--engine", choices=("torch", "llamacpp"), default=None, help="default: the service's choice")
    ap.add_argument("--quantize", default=None)
    args = ap.parse_args()
    from firefly_core.models.service import describe, model_service

    model = args.model
    if model is None:
        from firefly_core.testkit import build_model_folder

        model = str(build_model_folder(Path(tempfile.mkdtemp()) / "tiny-bloom", "bloom"))
    service = model_service()
    lm = service.get(service.request_for(model, engine=args.engine, quantize=args.quantize), status=lambda st: print(st.message, flush=True))
    bare_tokens_per_s(lm, 16)  # warm-up
    bare, inapp, lat = [], [], []
    for _ in range(args.runs):
        bare.append(bare_tokens_per_s(lm, args.tokens))
        tps, latencies = asyncio.run(app_run(lm, args.tokens))
        inapp.append(tps)
        lat += latencies
    b, a = statistics.median(bare), statistics.median(inapp)
    print(f"model {describe(lm)}, {args.tokens} new tokens, {args.runs} runs each")
    print(f"firefly chat (no UI): {b:.1f} tok/s (median)")
    print(f"through the app:      {a:.1f} tok/s (median) -> ratio app / firefly chat {a / b:.2f}")
    lat_ms = sorted(x * 1000 for x in lat)
    if not lat_ms:
        print("the replies finished before a key could be pressed: use more --tokens")
        return
    print(f"key press -> composer updated while streaming: median {statistics.median(lat_ms):.0f} ms, "
          f"p90 {lat_ms[int(len(lat_ms) * 0.9)]:.0f} ms, max {lat_ms[-1]:.0f} ms over {len(lat_ms)} presses")


if __name__ == "__main__":
    from machine import print_machine

    print_machine()  # every figure names its CPU
    main()
