"""What checking a cached GGUF's SHA-256 costs next to loading it into llama.cpp.

    python bench/gguf_checksum.py                 # hidden 2048, 4 layers, vocab 46,145 (~0.3 GB q8_0)
    python bench/gguf_checksum.py --layers 24     # the full firefly-1b4 shape (slow to build)

A random BloomForCausalLM of the firefly-1b4 width (hidden 2048, 16 heads, vocab 46,145) is saved
as a model folder and made into the llama.cpp engine's cached GGUF (q8_0, the default) by
`attach_llamacpp`, which writes its checksum. Then, in alternating rounds, the two costs of a later
load are timed on the same file (page cache warm, as on a second start): the checksum alone
(`cached_gguf_damage`, SHA-256 of the whole file), and the cache's load (`attach_llamacpp`) plus
the first forward of 16 tokens (when mmap'd weights are actually read), once with the checksum
skipped and once as shipped (the checksum runs on a thread while llama.cpp loads). Printed:
medians, and the checked load relative to the unchecked one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from machine import cpu_label  # noqa: E402 - the one CPU line of bench/ (machine.py)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    from firefly_core.export.gguf import model_info
    from firefly_core.export.gguf_cache import attach_llamacpp, cached_gguf_damage, gguf_cache_path
    from firefly_core.testkit import build_tokenizer

    print(f"CPU: {cpu_label()}  ·  torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FIREFLY_HOME"] = str(Path(tmp) / "home")
        folder = Path(tmp) / "firefly-shape"
        tok = build_tokenizer("bloom", 2000)
        tok.add_tokens([f"⟨{i}⟩" for i in range(46145 - len(tok))])
        config = BloomConfig(vocab_size=46145, hidden_size=2048, n_layer=args.layers, n_head=16,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        BloomForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
        tok.save_pretrained(folder)
        info = model_info(folder, "firefly-v1")
        attach_llamacpp(info, quantize="q8_0", threads=None, status=None)
        info.decoder.close()
        path = gguf_cache_path(folder, "q8_0")
        size_mb = path.stat().st_size / 1e6
        ids = torch.tensor([list(range(100, 116))])
        import firefly_core.export.gguf_cache as cache

        checked = cache._checksum_damage

        def attach_and_forward(check: bool) -> float:
            cache._checksum_damage = checked if check else (lambda _path, _expected: None)
            info = model_info(folder, "firefly-v1")
            said: list[str] = []
            t = time.perf_counter()
            attach_llamacpp(info, quantize="q8_0", threads=None, status=said.append)
            info.decoder.forward(ids, info.decoder.new_cache())
            elapsed = time.perf_counter() - t
            assert not any("making" in m for m in said), said
            info.decoder.close()
            return elapsed

        hash_s, plain_s, checked_s = [], [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            assert cached_gguf_damage(path) is None
            hash_s.append(time.perf_counter() - t)
            plain_s.append(attach_and_forward(False))
            checked_s.append(attach_and_forward(True))
        cache._checksum_damage = checked
        h, p, c = (statistics.median(x) for x in (hash_s, plain_s, checked_s))
        print(f"GGUF q8_0, {args.layers} layers: {size_mb:.0f} MB; medians of {args.rounds} alternating rounds")
        print(f"checksum alone (SHA-256): {h * 1000:.0f} ms ({size_mb / h:.0f} MB/s)")
        print(f"cached load + first forward of 16 tokens, checksum skipped: {p * 1000:.0f} ms")
        print(f"cached load + first forward, checksum on a thread during the load: {c * 1000:.0f} ms")
        print(f"checked / unchecked: {c / p:.2f}")

if __name__ == "__main__":
    main()
