"""Download throughput of `firefly pull` against huggingface_hub's own `snapshot_download`,
side by side in one run, from the same loopback hub (tests/hubserver.py), with the ceiling.

The ceiling is a plain streamed GET of the same blob from the same server, discarding the bytes
(no disk write, no checksum): nothing that downloads through that server can be faster. Each
method downloads into an empty cache; the best of --repeat runs is reported.

    python bench/bench_download.py --size-mb 256 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    os.environ.update(HF_HUB_OFFLINE="0", HF_HUB_DISABLE_PROGRESS_BARS="1", FIREFLY_HOME=str(work / "ff"))
    from hubserver import HubServer

    size = args.size_mb * 1_000_000
    weights = os.urandom(size)
    files = {
        "config.json": json.dumps({"model_type": "bloom"}).encode(),
        "tokenizer.json": b"{}",
        "model.safetensors": weights,
        "pytorch_model.bin": b"decoy",
    }
    server = HubServer()
    repo = server.add_repo("bench/blob", files)
    server.start()
    os.environ["HF_ENDPOINT"] = server.url

    import httpx2
    from huggingface_hub import constants, snapshot_download

    from firefly_core.models import folder, hub, inventory

    constants.HF_HUB_OFFLINE = False

    def fresh_cache() -> Path:
        cache = work / "hub"
        shutil.rmtree(cache, ignore_errors=True)
        constants.HF_HUB_CACHE = str(cache)
        return cache

    def ceiling() -> None:
        with httpx2.stream("GET", f"{server.cdn_url}/cdn/{repo.sha256['model.safetensors']}", timeout=60) as r:
            n = sum(len(c) for c in r.iter_bytes())
        assert n == size

    def ours() -> None:
        fresh_cache()
        path = hub.pull("bench/blob")
        assert (path / "model.safetensors").stat().st_size == size

    def library() -> None:
        cache = fresh_cache()
        path = snapshot_download(
            "bench/blob", cache_dir=cache, endpoint=server.url,
            allow_patterns=["config.json", "tokenizer.json", "model.safetensors"],
        )
        assert (Path(path) / "model.safetensors").stat().st_size == size

    results = {}
    for name, fn in (("ceiling (stream, discard)", ceiling), ("huggingface_hub snapshot_download", library), ("firefly pull", ours)):
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        results[name] = best
    server.stop()
    shutil.rmtree(work, ignore_errors=True)

    lib = results["huggingface_hub snapshot_download"]
    top = results["ceiling (stream, discard)"]
    print(f"blob {args.size_mb} MB over loopback, best of {args.repeat}; {os.cpu_count()} CPUs")
    for name, secs in results.items():
        print(f"  {name:36s} {secs:6.2f} s  {size / secs / 1e6:8.1f} MB/s"
              f"  {lib / secs:5.2f}x library  {top / secs:5.2f}x of ceiling")


if __name__ == "__main__":
    from machine import print_machine

    print_machine()  # every figure names its CPU
    main()
