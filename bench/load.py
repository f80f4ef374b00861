"""The llama.cpp engine's first chat and later loads, against bare llama.cpp on the same GGUF.

    python bench/load.py                      # Qwen2.5-1.5B width, 8 layers (~0.6 GB q8_0), 3 rounds
    python bench/load.py --layers 28          # the whole Qwen2.5-1.5B shape (minutes to build)
    python bench/load.py --threads-shape mid  # and the decode-threads table (bench/threads.py) in the same run

A random Qwen2-architecture model of the Qwen2.5-1.5B width (hidden 1536, 12 heads, 2 KV heads,
vocabulary 151,936, bf16; the kit's tokenizer padded to it) is saved once under bench/out/.

1. First chat with a new model, each in a fresh firefly home (no cached GGUF):
   - "chat first": the model service makes the GGUF in the foreground, loads it, runs a 16-token
     prompt (what the first `firefly chat` cost before `use` made the file);
   - "use, then chat": `prepare_model_files` (what `firefly use` / `pull` / the app's Models screen
     now run when the model is chosen) timed apart, then the same load + prompt.
2. A later load of the cached GGUF (page cache warm), alternating in rounds: bare llama.cpp
   (`llama_cpp.Llama(model_path=..., n_ctx, n_threads)`, the same context size and threads) against
   the model service's whole load (`ModelService.get`, engine llama.cpp), and the service's parts
   timed alone: the model's description (config, tokenizer, generation defaults), the SHA-256 of
   the cached file (it runs on a thread during llama.cpp's own load), the decode-thread choice
   (a 0.1 s CPU sample) and our decoder's llama.cpp load.
Printed: medians and the ratio ours / bare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT_IDS = list(range(100, 116))


def _service_load(folder: Path, threads: int | None):
    from firefly_core.models.service import ModelService

    service = ModelService()
    said: list[str] = []
    t = time.perf_counter()
    lm = service.get(service.request_for(str(folder), engine="llamacpp", quantize="q8_0", threads=threads),
                     status=lambda s: said.append(s.message))
    return service, lm, time.perf_counter() - t, said


def first_chat(folder: Path, threads: int | None) -> dict[str, float]:
    """Seconds of the two first-chat paths, each in its own fresh firefly home."""
    import torch

    from firefly_core.models.service import prepare_model_files
    from firefly_core.models.user_settings import update_model_settings

    out: dict[str, float] = {}
    ids = torch.tensor([PROMPT_IDS])
    for way in ("chat first", "use, then chat"):
        with tempfile.TemporaryDirectory() as home:
            os.environ["FIREFLY_HOME"] = home
            if way == "use, then chat":
                update_model_settings(str(folder), engine="llamacpp", quantize="q8_0")
                t = time.perf_counter()
                prepare_model_files(str(folder))
                out["use"] = time.perf_counter() - t
            t = time.perf_counter()
            service, lm, _load, said = _service_load(folder, threads)
            lm.decoder.forward(ids, lm.decoder.new_cache())
            out[way] = time.perf_counter() - t
            made = any("making the llama.cpp model" in m for m in said)
            assert made == (way == "chat first"), said
            service.unload()
    return out


def later_loads(folder: Path, threads: int, rounds: int) -> dict[str, list[float]]:
    """Alternating rounds of bare llama.cpp and the service's load (and its parts) on one cached GGUF."""
    import llama_cpp

    from firefly_core.export.gguf import model_info
    from firefly_core.export.gguf_cache import _cheap_damage, _checksum_damage, gguf_cache_path
    from firefly_core.generation.llamacpp import LlamaCppDecoder
    from firefly_core.models.service import default_threads

    service, lm, _t, _said = _service_load(folder, threads)  # makes the GGUF in this home, once
    n_ctx = lm.context_length
    service.unload()
    path = gguf_cache_path(folder, "q8_0")
    times: dict[str, list[float]] = {k: [] for k in ("bare", "ours", "describe", "checksum", "threads", "decoder")}
    for _ in range(rounds):
        t = time.perf_counter()
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                              n_batch=512, verbose=False)
        times["bare"].append(time.perf_counter() - t)
        llm.close()
        del llm

        service, lm, elapsed, said = _service_load(folder, None)  # threads chosen as a user gets them
        assert not any("making" in m for m in said), said
        times["ours"].append(elapsed)
        service.unload()

        t = time.perf_counter()
        info = model_info(folder)
        times["describe"].append(time.perf_counter() - t)
        t = time.perf_counter()
        assert _checksum_damage(path, _cheap_damage(path)[1]) is None
        times["checksum"].append(time.perf_counter() - t)
        t = time.perf_counter()
        default_threads(info)
        times["threads"].append(time.perf_counter() - t)
        t = time.perf_counter()
        LlamaCppDecoder(path, n_ctx=n_ctx, threads=threads).close()
        times["decoder"].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="threads for bare llama.cpp (default: all CPUs)")
    ap.add_argument("--threads-shape", choices=["tiny", "mid", "firefly-1b4"], default=None,
                    help="also print bench/threads.py's quiet/loaded table for this shape")
    args = ap.parse_args()

    from generate import SHAPES, engines_folder

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = args.threads or cpus
    shape = SimpleNamespace(family="qwen2", **{**SHAPES["qwen2"], "layers": args.layers})
    folder = engines_folder(shape)
    lines = []
    if args.threads_shape:
        from threads import SHAPES as THREAD_SHAPES, measure_shape

        lines += measure_shape(args.threads_shape, THREAD_SHAPES[args.threads_shape], sorted({1, cpus}),
                               rounds=args.rounds, tokens=16, states=["quiet", "loaded"])
    first = first_chat(folder, threads)
    with tempfile.TemporaryDirectory() as home:
        os.environ["FIREFLY_HOME"] = home
        times = later_loads(folder, threads, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nQwen2.5-1.5B width, {args.layers} layers, q8_0 (bench/load.py, medians of {args.rounds} rounds)")
    for line in lines:
        print(line)
    print(f"first chat with a new model (load + 16-token prompt): chat first {first['chat first']:.1f} s  ·  "
          f"use {first['use']:.1f} s, then chat {first['use, then chat']:.1f} s  "
          f"({first['use, then chat'] / first['chat first']:.2f}x)")
    print(f"later load: ours {med['ours']:.2f} s  ·  bare llama.cpp {med['bare']:.2f} s  "
          f"({med['ours'] / med['bare']:.2f}x)")
    print(f"  ours, its parts alone: model description {med['describe']:.2f} s · SHA-256 {med['checksum']:.2f} s "
          f"(on a thread during the load) · thread choice {med['threads']:.2f} s · decoder's llama.cpp load "
          f"{med['decoder']:.2f} s")


if __name__ == "__main__":
    from machine import print_machine

    print_machine()  # every figure names its CPU
    main()
