"""First paint of `firefly`: time from process start to the first screen mounted and painted.

Each run is a fresh interpreter (as a user starting `firefly`) that runs the real app headless
(`App.run(headless=True)`, the same startup path, without a terminal) and exits right after the
first chat screen has mounted and the first refresh has gone out. The time is measured from the
interpreter's own start (the process creation time), so it includes Python start-up and every
import. For reference the same is measured for a minimal Textual app (one Static) in the same
run: that is the floor Textual itself sets on this machine.

    python bench/first_paint.py [--runs 5]

Prints the median and best of each, the ratio, and whether torch/transformers were imported
(they must not be before first paint).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

APP_CHILD = r"""
import os, sys, time, json
def since_start():
    # Process start time from /proc (Linux): includes interpreter start-up.
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
from firefly_tui.app import FireflyApp
from firefly_tui.screens.chat import ChatScreen
class Bench(FireflyApp):
    def on_mount(self):
        super().on_mount()
        def painted():
            self.result = {"t": since_start(), "screen": type(self.screen).__name__,
                           "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules)}
            self.exit()
        # after the first refresh of the chat screen
        self.call_after_refresh(lambda: self.call_after_refresh(painted))
app = Bench(welcome=False)
app.run(headless=True, size=(120, 40))
print(json.dumps(app.result))
"""

TEXTUAL_CHILD = r"""
import os, sys, time, json
def since_start():
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
from textual.app import App
from textual.widgets import Static
class Minimal(App):
    def compose(self):
        yield Static("hello")
    def on_mount(self):
        def painted():
            self.result = {"t": since_start(), "screen": "Screen", "heavy": []}
            self.exit()
        self.call_after_refresh(lambda: self.call_after_refresh(painted))
app = Minimal()
app.run(headless=True, size=(120, 40))
print(json.dumps(app.result))
"""


def measure(code: str, runs: int, env: dict[str, str]) -> list[dict]:
    out = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="firefly-bench-")
    env = {**os.environ, "FIREFLY_HOME": home, "HF_HUB_OFFLINE": "1"}
    # one warm-up each so the OS file cache is in the same state for both
    measure(APP_CHILD, 1, env)
    measure(TEXTUAL_CHILD, 1, env)
    app = measure(APP_CHILD, args.runs, env)
    ref = measure(TEXTUAL_CHILD, args.runs, env)
    a = [r["t"] for r in app]
    b = [r["t"] for r in ref]
    print(f"firefly first paint ({app[0]['screen']}): median {statistics.median(a) * 1000:.0f} ms, "
          f"best {min(a) * 1000:.0f} ms over {args.runs} runs")
    print(f"minimal Textual app:  median {statistics.median(b) * 1000:.0f} ms, best {min(b) * 1000:.0f} ms")
    print(f"ratio firefly / minimal Textual (median): {statistics.median(a) / statistics.median(b):.2f}x")
    print(f"target: < 1000 ms -> {'met' if statistics.median(a) < 1.0 else 'NOT met'}")
    heavy = sorted({m for r in app for m in r["heavy"]})
    print(f"heavy modules imported before first paint: {heavy or 'none'}")


if __name__ == "__main__":
    from machine import print_machine

    print_machine()  # every figure names its CPU
    main()
