"""Decode threads: tokens/s with 1 vs N torch threads, on a tiny model and on the firefly-1b4 shape.

    python bench/threads.py                  # tiny BLOOM + firefly-1b4 shape, 1 vs all CPUs
    python bench/threads.py --only tiny      # just the tiny model (seconds)
    python bench/threads.py --tokens 48 --rounds 3

Each shape is built once (random weights, bf16), then the thread counts alternate for `--rounds`
rounds, each decoding `--tokens` greedy tokens in a worker thread (as the app and the API server
decode) with the decoder the model service would build (our CPU kernel where it pays). Printed:
median decode tok/s per thread count and the ratio. The model service's default
(`models.service.default_threads`) is what this chooses between.
"""

from __future__ import annotations

import argparse
import os
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(SHAPES))
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and all CPUs)")
    args = p.parse_args()

    from generate import build_model

    from firefly_core.generation import ModelDecoder
    from firefly_core.models.service import default_threads, prepare_cpu_route
    from firefly_core.testkit import build_tokenizer

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = args.threads or sorted({1, cpus})
    tok = build_tokenizer("bloom", 400)
    for name, shape in SHAPES.items():
        if args.only and name != args.only:
            continue
        model = build_model(SimpleNamespace(dtype="bf16", **shape))
        model.generation_config.eos_token_id = None
        lm = SimpleNamespace(model=model, tokenizer=tok, stop_token_ids=[], context_length=2048)
        prepare_cpu_route(model)  # as the model service prepares a model: our kernels where they pay
        fast = model.firefly_cpu_route.gemv
        results: dict[int, list[float]] = {n: [] for n in counts}
        decode_tps(lm, ModelDecoder(model, threads=1), 4)  # warm-up
        for _ in range(args.rounds):
            for n in counts:
                results[n].append(decode_tps(lm, ModelDecoder(model, threads=n), args.tokens))
                print(f"  {name}, {n} thread(s): {results[n][-1]:.2f} tok/s", flush=True)
        med = {n: statistics.median(v) for n, v in results.items()}
        line = " · ".join(f"{n} thread{'s' if n > 1 else ''}: {med[n]:.1f} tok/s" for n in counts)
        base = med[counts[0]]
        ratios = " · ".join(f"{n}/{counts[0]} = {med[n] / base:.2f}x" for n in counts[1:])
        print(f"{name} (firefly CPU kernel: {'yes' if fast else 'no'}): {line}  ({ratios}); "
              f"service default: {default_threads(lm)}", flush=True)
        del model, lm
        time.sleep(0)


if __name__ == "__main__":
    from machine import print_machine

    print_machine()  # every figure names its CPU
    main()
