"""Decode threads: tokens/s with 1 vs N torch threads on a quiet and on a loaded machine, and the
thread count the model service chooses in each (`models.service.default_threads`).

    python bench/threads.py                  # tiny BLOOM + firefly-1b4 shape, quiet and loaded
    python bench/threads.py --only tiny      # just the tiny model (seconds)
    python bench/threads.py --only mid       # ~0.2 GB: the service's CPU sample decides (a minute)
    python bench/threads.py --tokens 48 --rounds 3 --load quiet

Each shape is built once (random weights, bf16). For each machine state -- "quiet" (whatever else
runs here) and "loaded" (this script starts burner processes that spin on all CPUs but one, and
stops them after) -- the service's choice is taken first (its 0.1 s CPU sample sees the burners),
then the thread counts alternate for `--rounds` rounds, each decoding `--tokens` greedy tokens in a
worker thread (as the app and the API server decode) with the decoder the model service would
build (our CPU kernel where it pays). Printed: median tok/s per thread count, the ratio, the
service's choice and what its choice decoded at against the best count.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

SHAPES = {
    "tiny": dict(vocab=400, hidden=64, layers=2, heads=4),
    # ~0.2 GB of bf16 weights: above SMALL_MODEL_BYTES, so the service samples the CPUs for it
    "mid": dict(vocab=46145, hidden=1024, layers=4, heads=16),
    "firefly-1b4": dict(vocab=46145, hidden=2048, layers=24, heads=16),
}


def decode_tps(lm, decoder, tokens: int) -> float:
    from firefly_core.generation import GenerationConfig, ReplyDone, generate_stream

    out: dict = {}

    def work():
        cfg = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=tokens)
        for ev in generate_stream(lm, list(range(10, 42)), cfg, decoder=decoder):
            if isinstance(ev, ReplyDone):
                out["tps"] = ev.stats.tokens_per_s

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return out["tps"]


@contextlib.contextmanager
def machine_state(state: str, cpus: int):
    """Nothing for "quiet"; for "loaded", burner processes on all CPUs but one, running until the end."""
    burners = []
    if state == "loaded":
        for _ in range(max(1, cpus - 1)):
            burners.append(subprocess.Popen([sys.executable, "-c", "print(flush=True)\nwhile True: pass"],
                                            stdout=subprocess.PIPE))
        for b in burners:
            b.stdout.readline()  # spinning
    try:
        yield
    finally:
        for b in burners:
            b.kill()
            b.wait()


def measure_shape(name: str, shape: dict, counts: list[int], *, rounds: int, tokens: int,
                  states: list[str], cpus: int | None = None) -> list[str]:
    """One summary line per machine state for a random bf16 model of `shape` (see the docstring)."""
    from generate import build_model

    from firefly_core.generation import ModelDecoder
    from firefly_core.models.service import default_threads, prepare_cpu_route
    from firefly_core.testkit import build_tokenizer

    cpus = cpus or max(counts)
    tok = build_tokenizer("bloom", 400)
    model = build_model(SimpleNamespace(dtype="bf16", **shape))
    model.generation_config.eos_token_id = None
    lm = SimpleNamespace(model=model, tokenizer=tok, stop_token_ids=[], context_length=2048)
    prepare_cpu_route(model)  # as the model service prepares a model: our kernels where they pay
    fast = model.firefly_cpu_route.gemv
    decode_tps(lm, ModelDecoder(model, threads=1), 4)  # warm-up
    lines = []
    for state in states:
        with machine_state(state, cpus):
            chosen = default_threads(lm)
            results: dict[int, list[float]] = {n: [] for n in counts}
            for _ in range(rounds):
                for n in counts:
                    results[n].append(decode_tps(lm, ModelDecoder(model, threads=n), tokens))
                    print(f"  {name}, {state}, {n} thread(s): {results[n][-1]:.2f} tok/s", flush=True)
        med = {n: statistics.median(v) for n, v in results.items()}
        line = " · ".join(f"{n} thread{'s' if n > 1 else ''}: {med[n]:.1f} tok/s" for n in counts)
        base = med[counts[0]]
        ratios = " · ".join(f"{n}/{counts[0]} = {med[n] / base:.2f}x" for n in counts[1:])
        best = max(med.values())
        verdict = f"{med[chosen] / best:.2f}x the best count" if chosen in med else "not measured"
        lines.append(f"{name} {state} (firefly CPU kernel: {'yes' if fast else 'no'}): {line}  ({ratios}); "
                     f"service chose {chosen} -> {verdict}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(SHAPES))
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and all CPUs)")
    p.add_argument("--load", choices=["quiet", "loaded", "both"], default="both", help="machine states to measure")
    args = p.parse_args()

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = args.threads or sorted({1, cpus})
    for name, shape in SHAPES.items():
        if args.only and name != args.only:
            continue
        states = ["quiet", "loaded"] if args.load == "both" else [args.load]
        for line in measure_shape(name, shape, counts, rounds=args.rounds, tokens=args.tokens, states=states):
            print(line, flush=True)


if __name__ == "__main__":
    from machine import print_machine

    print_machine()  # every figure names its CPU
    main()
