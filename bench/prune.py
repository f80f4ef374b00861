"""Benchmark: `prune_vocabulary` against the original pruning method, side by side, same run.

Builds (once, cached in bench/out/prune/) a random BLOOM of the bloom-560m shape (vocab 250,880,
hidden 1024, 24 layers, 16 heads) saved as fp32 safetensors, with a synthetic byte-level BPE
tokenizer of the same vocabulary size, and a Chinese corpus; then prunes it to 46,145 tokens

  - with ours (`firefly_core.pruning.prune_vocabulary`: counts the corpus, builds the tokenizer,
    slices the safetensors lazily), and
  - with ours doing only the original method's job (given the id map: new tokenizer and weights),
  - with the original method (LLMPruner, which Firefly used: `from_pretrained` the whole model,
    copy the kept rows of the embedding and lm_head one by one in a Python loop into new layers,
    `save_pretrained`; it is given our id map, as it was given a tokenizer made elsewhere),

each in its own process, and prints wall time and peak RSS (that process's own VmHWM) of both
and the ratios, plus the physical floor for our write (copying the checkpoint file with `cp`).

    python bench/prune.py            # full size (~2.2 GB fp32 checkpoint; ~5 GB of disk in all)
    python bench/prune.py --small    # a quick check on a small model

The synthetic tokenizer extends a byte-level BPE trained on the kit corpus with programmatic
merges: the bytes of ~21k CJK characters merged into characters, then characters merged into
two-character words, to 250,880 tokens; it loads in transformers (checked at build time).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FULL = {"vocab": 250_880, "hidden": 1024, "layers": 24, "heads": 16, "keep": 46_145, "chars": 20_992, "words": 70_000, "draws": 400_000}
SMALL = {"vocab": 50_000, "hidden": 256, "layers": 4, "heads": 4, "keep": 10_000, "chars": 6_000, "words": 16_000, "draws": 100_000}


# --------------------------------------------------------------------------- building the inputs


def _byte_decoder() -> dict[str, int]:
    from firefly_core.pruning.tokenizer import byte_alphabet

    return {c: b for b, c in enumerate(byte_alphabet())}


def _byte_str(text: str) -> str:
    from firefly_core.pruning.tokenizer import byte_alphabet

    alphabet = byte_alphabet()
    return "".join(alphabet[b] for b in text.encode("utf-8"))


def build_tokenizer(folder: Path, spec: dict, rng: random.Random) -> list[str]:
    """Write a `spec["vocab"]`-token byte-level BPE into `folder`; return candidate corpus words."""
    from tokenizers import Tokenizer

    from firefly_core.testkit import build_tokenizer as kit_tokenizer

    base = kit_tokenizer("bloom", 400)  # trained: bytes, BLOOM specials, some merges
    base.save_pretrained(folder)
    data = json.loads((folder / "tokenizer.json").read_text("utf-8"))
    vocab: dict[str, int] = data["model"]["vocab"]
    merges: list[list[str]] = data["model"]["merges"]
    target = spec["vocab"]

    def add(a: str, b: str) -> str | None:
        tok = a + b
        if tok in vocab or len(vocab) >= target:
            return None
        vocab[tok] = len(vocab)
        merges.append([a, b])
        return tok

    # Characters: byte 1 + byte 2, then + byte 3 (all CJK ideographs are 3 bytes in UTF-8).
    chars = []
    for cp in range(0x4E00, 0x4E00 + spec["chars"]):
        s = _byte_str(chr(cp))
        add(s[0], s[1])
        add(s[:2], s[2])
        if s in vocab:
            chars.append(s)
    # Two-character words from random character pairs until the vocabulary is full.
    words: list[str] = []
    while len(vocab) < target:
        tok = add(rng.choice(chars), rng.choice(chars))
        if tok is not None:
            words.append(tok)
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tok.get_vocab_size() == target, tok.get_vocab_size()
    # Corpus words: those the tokenizer really encodes as one word token.
    decode = _byte_decoder()
    candidates = rng.sample(words, min(len(words), spec["words"] * 2))
    texts = [bytes(decode[c] for c in w).decode("utf-8") for w in candidates]
    ok = [t for t, e in zip(texts, tok.encode_batch(texts, add_special_tokens=False)) if len(e.ids) == 1]
    return ok[: spec["words"]]


def _write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...], object]]) -> None:
    """Write fp32 tensors produced one at a time by the callables in `tensors` (low memory)."""
    import numpy as np

    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in tensors:
        n = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _, _, make in tensors:
            f.write(memoryview(make().numpy()).cast("B"))


def build_model(folder: Path, spec: dict) -> None:
    import torch
    from transformers import AutoTokenizer, BloomConfig, BloomForCausalLM, GenerationConfig

    config = BloomConfig(
        vocab_size=spec["vocab"], hidden_size=spec["hidden"], n_layer=spec["layers"], n_head=spec["heads"],
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=True,
    )
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in BloomForCausalLM(config).state_dict().items() if k != "lm_head.weight"}
    gen = torch.Generator().manual_seed(0)

    def maker(name: str, shape: tuple[int, ...]):
        if name.endswith("layernorm.weight") or name.endswith("ln_f.weight"):
            return lambda: torch.ones(shape)
        if name.endswith("bias"):
            return lambda: torch.zeros(shape)
        return lambda: torch.randn(shape, generator=gen) * 0.02

    _write_safetensors(folder / "model.safetensors", [(k, s, maker(k, s)) for k, s in sorted(shapes.items())])
    config.save_pretrained(folder)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3).save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)  # the synthetic tokenizer must load in transformers
    assert len(tok) == spec["vocab"], len(tok)


def build_inputs(work: Path, spec: dict) -> tuple[Path, Path]:
    src, corpus = work / "src", work / "corpus.txt"
    marker = work / "ready.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return src, corpus
    shutil.rmtree(work, ignore_errors=True)
    src.mkdir(parents=True)
    rng = random.Random(0)
    t = time.perf_counter()
    words = build_tokenizer(src, spec, rng)
    # Zipf-like frequencies, as in natural text: a few words very often, most rarely.
    weights = [1.0 / (r + 10) for r in range(len(words))]
    draws = rng.choices(words, weights=weights, k=spec["draws"])
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(0, len(draws), 20):
            f.write("，".join(draws[i : i + 20]) + "。\n")
    build_model(src, spec)
    marker.write_text(json.dumps(spec))
    print(f"built the inputs in {time.perf_counter() - t:.0f} s: {src}, {corpus} ({corpus.stat().st_size / 1e6:.1f} MB)")
    return src, corpus


# --------------------------------------------------------------------------- the two methods (children)


def run_ours(src: str, corpus: str, out: str, keep: int) -> dict:
    from firefly_core.pruning import prune_vocabulary

    t0 = time.perf_counter()
    stages: dict[str, float] = {}

    def progress(p) -> None:  # when each stage last reported: the end of counting, of writing
        stages[p.stage] = round(time.perf_counter() - t0, 2)

    report = prune_vocabulary(src, [corpus], out, keep_top=keep, force=True, progress=progress)
    return {"vocab_after": report.vocab_after, "coverage": report.coverage, "seconds_in_call": report.seconds,
            "stages": stages}


def run_ours_slice_only(src: str, token_map_file: str, out: str) -> dict:
    """Ours doing only what the original method does (given the id map: tokenizer + weights)."""
    from firefly_core.pruning.tokenizer import build_tokenizer_json, read_tokenizer
    from firefly_core.pruning.weights import PrunedCheckpointWriter, find_vocab_tensors, read_checkpoint

    src_dir, out_dir = Path(src), Path(out)
    out_dir.mkdir(parents=True)
    token_map = json.loads(Path(token_map_file).read_text())
    config = json.loads((src_dir / "config.json").read_text())
    ckpt = read_checkpoint(src_dir)
    writer = PrunedCheckpointWriter(ckpt, find_vocab_tensors(ckpt, config), out_dir)
    writer.start()
    tok_json = build_tokenizer_json(read_tokenizer(src_dir), token_map)
    (out_dir / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
    (out_dir / "config.json").write_text(json.dumps({**config, "vocab_size": len(token_map)}))
    writer.finish(token_map)
    return {"vocab_after": len(token_map)}


def run_reference(src: str, token_map_file: str, out: str) -> dict:
    """The original method (LLMPruner), as Firefly used it."""
    import torch
    from transformers import AutoModelForCausalLM

    token_map = json.loads(Path(token_map_file).read_text())
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    hidden = model.config.hidden_size
    old_embed = model.get_input_embeddings().weight.data
    old_head = model.get_output_embeddings().weight.data
    new_embeds = torch.nn.Embedding(len(token_map), hidden)
    new_head = torch.nn.Linear(hidden, len(token_map), bias=False)
    for new_id, old_id in enumerate(token_map):
        new_embeds.weight.data[new_id] = old_embed[old_id]
        new_head.weight.data[new_id] = old_head[old_id]
    model.get_input_embeddings().weight = new_embeds.weight
    model.get_output_embeddings().weight = new_head.weight
    model.config.vocab_size = len(token_map)
    model.save_pretrained(out)
    return {"vocab_after": len(token_map)}


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: per address space, so it starts afresh
    at exec, unlike ru_maxrss, which Linux carries over from the forking parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(argv: list[str]) -> tuple[float, int, dict]:
    """Run this script as a child; return (wall s, peak RSS bytes of that child, its result)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"child {argv[:2]} failed with status {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return wall, result["peak_rss"], result


def _same_embedding(ours: Path, ref: Path) -> bool:
    from safetensors import safe_open

    def embedding(folder: Path):
        with safe_open(folder / "model.safetensors", "pt") as f:
            return f.get_tensor("transformer.word_embeddings.weight")

    return bool((embedding(ours) == embedding(ref)).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a small model (vocab 50,000, hidden 256, 4 layers)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (methods interleaved); medians are reported")
    parser.add_argument("--work", default=str(ROOT / "bench" / "out" / "prune"), help="where inputs and outputs go")
    parser.add_argument("--child", choices=["ours", "slice", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "ours":
        src, corpus, out, keep = args.args
        print(json.dumps({**run_ours(src, corpus, out, int(keep)), "peak_rss": peak_rss()}))
        return
    if args.child == "slice":
        print(json.dumps({**run_ours_slice_only(*args.args), "peak_rss": peak_rss()}))
        return
    if args.child == "reference":
        print(json.dumps({**run_reference(*args.args), "peak_rss": peak_rss()}))
        return

    spec = SMALL if args.small else FULL
    work = Path(args.work) / ("small" if args.small else "full")
    src, corpus = build_inputs(work, spec)
    ours_out, ref_out, slice_out = work / "ours", work / "reference", work / "slice-only"
    for d in (ours_out, ref_out, slice_out):
        shutil.rmtree(d, ignore_errors=True)
    print(f"model: BLOOM vocab {spec['vocab']:,}, hidden {spec['hidden']}, {spec['layers']} layers, "
          f"{spec['heads']} heads, fp32, {(src / 'model.safetensors').stat().st_size / 1e9:.2f} GB; "
          f"corpus {corpus.stat().st_size / 1e6:.1f} MB; keep {spec['keep']:,}")

    # The floor for writing our output: a plain file copy of the checkpoint (kernel copy).
    t = time.perf_counter()
    shutil.copyfile(src / "model.safetensors", work / "copy.safetensors")
    copy_s = time.perf_counter() - t
    (work / "copy.safetensors").unlink()

    # Rounds interleave the methods, so a busy moment on a shared machine hits all of them alike.
    runs: dict[str, list[tuple[float, int]]] = {"ours": [], "slice": [], "reference": []}
    for _ in range(max(1, args.repeat)):
        for d in (ours_out, ref_out, slice_out):
            shutil.rmtree(d, ignore_errors=True)
        s, rss, ours_res = _child(["--child", "ours", "--args", str(src), str(corpus), str(ours_out), str(spec["keep"])])
        runs["ours"].append((s, rss))
        s, rss, _ = _child(["--child", "reference", "--args", str(src), str(ours_out / "token_map.json"), str(ref_out)])
        runs["reference"].append((s, rss))
        s, rss, _ = _child(["--child", "slice", "--args", str(src), str(ours_out / "token_map.json"), str(slice_out)])
        runs["slice"].append((s, rss))
    same = _same_embedding(ours_out, ref_out) and _same_embedding(slice_out, ref_out)
    (ours_s, ours_rss), (ref_s, ref_rss), (slice_s, slice_rss) = (
        (statistics.median(t for t, _ in runs[k]), max(r for _, r in runs[k])) for k in ("ours", "reference", "slice")
    )
    print(f"wall s: median of {len(runs['ours'])} rounds; each round: "
          + "; ".join(f"{k} " + ", ".join(f"{t:.2f}" for t, _ in v) for k, v in runs.items()))
    print(f"{'':<34}{'wall s':>9}{'peak RSS MB':>14}")
    print(f"{'original (from_pretrained + loop)':<34}{ref_s:>9.2f}{ref_rss / 2**20:>14.0f}")
    print(f"{'ours (prune_vocabulary)':<34}{ours_s:>9.2f}{ours_rss / 2**20:>14.0f}")
    print(f"{'ours, slicing only (given the map)':<34}{slice_s:>9.2f}{slice_rss / 2**20:>14.0f}")
    print(f"speed-up {ref_s / ours_s:.2f}x (target >= 5x); peak RSS ratio {ours_rss / ref_rss:.3f} (target <= 0.5)")
    print(f"slicing only, the same job as the original: speed-up {ref_s / slice_s:.2f}x, peak RSS ratio {slice_rss / ref_rss:.3f}")
    print(f"floor: copying the source checkpoint file takes {copy_s:.2f} s; "
          f"kept {ours_res['vocab_after']:,} tokens, corpus coverage {ours_res['coverage']:.2%}; "
          f"embeddings identical to the original method's: {same}")
    print(f"ours by stage (s since the call began): counting done {ours_res['stages'].get('count')}, "
          f"weights done {ours_res['stages'].get('weights')}, all done {ours_res['stages'].get('done')}")
    print("note: ours (full) also counts the corpus and chooses the tokens; the original method does neither")


if __name__ == "__main__":
    from machine import print_machine

    if "--child" not in sys.argv:  # a child run's stdout is read by its parent
        print_machine()  # every figure names its CPU
    main()
