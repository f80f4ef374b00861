"""Training throughput and memory: our loop with length-grouped batches, our loop with packing
(`--packing`: rows filled to the max length, each sample attending only to itself), and a
transformers `Trainer` reference that follows the original recipe (pad to the batch maximum, input
masked with -100); same model, same samples, same step count, side by side in one run. Each
variant runs in its own process, so its peak memory (peak RSS on CPU, peak allocated on CUDA) is
its own.

Prints supervised tokens per second for each and the ratios, the share of computed tokens that are
padding, and peak memory. The packed rows hold about as many tokens as a grouped micro-batch
(rows = batch size x mean length / max length), so memory stays comparable. Data: synthetic
Firefly-like lengths (log-normal, median ~150 tokens, most under 600, a tail beyond the 512 max
length).

Then chunked cross-entropy: one forward and backward of one row on a model with Qwen's 151,936-token
vocabulary, with the plain loss (all float32 logits at once) and the chunked one; peak memory above
the loaded model for each.

    python bench/train.py                       # CPU, small shape (a few minutes on 2 cores)
    python bench/train.py --shape firefly-1b4 --gpu 0 --steps 30 --only-ours   # on a GPU

The CPU shape: BLOOM, hidden 256, 4 layers, 8 heads, vocab 8192 (~5.3M parameters), fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "small": dict(hidden=256, layers=4, heads=8, vocab=8192),
    "firefly-1b4": dict(hidden=2048, layers=24, heads=16, vocab=46145),
}


def build_model(folder: Path, shape: dict, seed: int) -> Path:
    import torch
    from transformers import BloomConfig, BloomForCausalLM, GenerationConfig

    from firefly_core.testkit import build_tokenizer

    tok = build_tokenizer("bloom")
    torch.manual_seed(seed)
    config = BloomConfig(vocab_size=max(shape["vocab"], len(tok)), hidden_size=shape["hidden"], n_layer=shape["layers"],
                         n_head=shape["heads"], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = BloomForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(folder)
    return folder


def synthetic_data(path: Path, n: int, tokenizer, seed: int) -> list[int]:
    """Firefly-like rows {"kind","input","target"} whose token lengths follow a log-normal."""
    from firefly_core.testkit import kit_corpus

    rng = random.Random(seed)
    chars = [c for c in kit_corpus() if not c.isspace()]
    per_char = len(tokenizer.encode("".join(chars), add_special_tokens=False)) / len(chars)
    rows, lengths = [], []
    for _ in range(n):
        total = min(1200, max(16, int(rng.lognormvariate(math.log(150), 0.75))))
        share = rng.uniform(0.2, 0.7)
        text = lambda k: "".join(rng.choice(chars) for _ in range(max(1, round(k / per_char))))  # noqa: E731
        rows.append({"kind": "Synthetic", "input": text(total * share), "target": text(total * (1 - share))})
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    return lengths


from machine import cpu_label  # noqa: E402,F401 - the one CPU line of bench/ (machine.py)


def peak_memory_mb() -> float:
    """Peak memory of this process so far: CUDA allocated when a GPU was used, else peak RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def packed_rows(data: Path, tokenizer, batch_size: int, max_length: int = 512) -> int:
    """Rows per packed micro-batch holding about as many tokens as a grouped micro-batch."""
    from firefly_core.data import load_samples, tokenize_samples
    from firefly_core.formats import resolve_format

    samples, _ = load_samples([data])
    items, _ = tokenize_samples(samples, resolve_format(tokenizer), tokenizer, max_length)
    mean = sum(len(t.input_ids) for t in items) / len(items)
    return max(1, round(batch_size * mean / max_length))


def run_ours(model_dir: Path, data: Path, out: Path, args, packing: bool = False) -> dict:
    from firefly_core.training.config import TrainConfig
    from firefly_core.training.launch import launch
    from firefly_core.training.events import StepEvent, read_events

    cfg = TrainConfig(model=str(model_dir), data=[str(data)], out=str(out), gpu=args.gpu, batch_size=args.batch_size,
                      max_length=512, lr=3e-5, warmup_steps=1, max_steps=args.steps, save_every=10**6,
                      seed=args.seed, precision=args.precision, packing=packing)
    launch(cfg)
    steps = [e for e in read_events(out) if isinstance(e, StepEvent)]
    timed = steps[1:]  # the first step warms up allocators and kernels (both sides skip it)
    seconds = timed[-1].time - steps[0].time
    sup = sum(e.supervised_tokens for e in timed)
    computed = sum(e.computed_tokens for e in timed)
    padding = sum(e.padding_tokens for e in timed)
    mem = steps[-1].memory
    return dict(seconds=seconds, supervised=sup, computed=computed, padding=padding, memory=mem,
                loss=[e.loss for e in steps])


def run_reference(model_dir: Path, data: Path, out: Path, args) -> dict:
    """transformers Trainer, recipe-style: random batches padded to their longest row."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from firefly_core.data import IGNORE_INDEX, load_samples, tokenize_samples
    from firefly_core.formats import resolve_format

    tok = AutoTokenizer.from_pretrained(model_dir)
    samples, _ = load_samples([data])
    items, _ = tokenize_samples(samples, resolve_format(tok), tok, 512)
    dataset = [{"input_ids": t.input_ids, "labels": t.labels} for t in items]
    counts: list[tuple[int, int, int]] = []  # per batch: supervised, computed, padding

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id)
        labels = torch.full((len(rows), width), IGNORE_INDEX)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        counts.append((int((labels[:, 1:] != IGNORE_INDEX).sum()), ids.numel(), int((mask == 0).sum())))
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **kw):
            ends.append(time.time())

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=3e-5,
        warmup_steps=1, lr_scheduler_type="cosine", save_strategy="no", report_to=[], logging_strategy="no",
        dataloader_num_workers=0, seed=args.seed, use_cpu=args.gpu == "cpu", remove_unused_columns=False,
        bf16=args.precision == "bf16", fp16=args.precision == "fp16", disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collate, callbacks=[Clock()])
    trainer.train()
    timed = counts[1 : len(ends)]
    return dict(seconds=ends[-1] - ends[0], supervised=sum(c[0] for c in timed), computed=sum(c[1] for c in timed),
                padding=sum(c[2] for c in timed))


def run_cross_entropy(work: Path, chunked: bool, tokens: int, device: str) -> dict:
    """Peak memory of one forward + backward of one `tokens`-long row, vocabulary 151,936."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from firefly_core.training.losses import CHUNK_BYTES, chunked_token_loss_sum, token_loss_sum

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151936, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).to(device)
    ids = torch.randint(0, config.vocab_size, (1, tokens), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = peak_memory_mb()
    t0 = time.time()
    chunk = max(1, CHUNK_BYTES // (config.vocab_size * 4))
    loss = chunked_token_loss_sum(model, batch, chunk) if chunked else token_loss_sum(model, batch)
    loss.backward()
    seconds = time.time() - t0
    return dict(peak_above_model_mb=peak_memory_mb() - before, seconds=seconds, loss=float(loss.detach()),
                chunk=chunk if chunked else None)


def run_variant(args) -> int:
    """One variant in this process (the parent reads the JSON line it prints)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    if args.variant in ("ce-plain", "ce-chunked"):
        result = run_cross_entropy(work, args.variant == "ce-chunked", args.ce_tokens,
                                   "cpu" if args.gpu == "cpu" else f"cuda:{args.gpu}")
    elif args.variant == "trainer":
        result = run_reference(work / "model", work / "data.jsonl", work / "ref", args)
    else:
        result = run_ours(work / "model", work / "data.jsonl", work / args.variant, args,
                          packing=args.variant == "packed")
    result["peak_mb"] = peak_memory_mb()
    print("RESULT " + json.dumps(result))
    return 0


def spawn(variant: str, args, work: Path, **overrides) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--work", str(work)]
    for key in ("gpu", "precision", "steps", "batch_size", "seed", "threads", "ce_tokens"):
        value = overrides.get(key, getattr(args, key))
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"variant {variant} failed")
    return json.loads(line[len("RESULT "):])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--gpu", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--samples", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--only-ours", action="store_true", help="skip the Trainer reference (GPU memory runs)")
    p.add_argument("--ce-tokens", type=int, default=2048, help="row length of the cross-entropy memory test")
    p.add_argument("--skip-ce", action="store_true", help="skip the chunked cross-entropy memory test")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        return run_variant(args)

    import torch
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = SHAPES[args.shape]
    work = Path(tempfile.mkdtemp(prefix="firefly-bench-train-"))
    model_dir = build_model(work / "model", shape, args.seed)
    data = work / "data.jsonl"
    tok = AutoTokenizer.from_pretrained(model_dir)
    synthetic_data(data, args.samples, tok, args.seed)
    params = sum(v.numel() for v in __import__("safetensors.torch").torch.load_file(model_dir / "model.safetensors").values())
    print(f"CPU: {cpu_label()}")
    print(f"shape {args.shape}: {shape}, {params / 1e6:.1f}M parameters; batch {args.batch_size}, "
          f"{args.steps} steps (first one untimed), max length 512, device {args.gpu}, {args.precision}, "
          f"torch threads {torch.get_num_threads()}")

    from firefly_core.data import load_samples, tokenize_samples
    from firefly_core.formats import resolve_format

    samples, _ = load_samples([data])
    _, stats = tokenize_samples(samples, resolve_format(tok), tok, 512)
    ls = sorted(stats.lengths)
    print(f"data: {len(ls)} samples, token length median {ls[len(ls) // 2]}, p90 {ls[int(len(ls) * .9)]}, "
          f"max {ls[-1]}, over 512: {sum(n > 512 for n in ls)} ({sum(n > 512 for n in ls) / len(ls):.1%}), "
          f"under 600: {sum(n < 600 for n in ls) / len(ls):.1%}")

    ours = spawn("grouped", args, work)
    rows_per_batch = packed_rows(data, tok, args.batch_size)
    packed = spawn("packed", args, work, batch_size=rows_per_batch)
    rows = [("ours, length-grouped", ours), (f"ours, packed ({rows_per_batch} rows)", packed)]
    if not args.only_ours:
        ref = spawn("trainer", args, work)
        rows.append(("Trainer (pad to batch max)", ref))
    print(f"\n{'':28} {'sup. tok/s':>11} {'padding':>8} {'computed/sup':>13} {'seconds':>8} {'peak MB':>8}")
    for name, r in rows:
        print(f"{name:28} {r['supervised'] / r['seconds']:>11.1f} {r['padding'] / r['computed']:>8.1%} "
              f"{r['computed'] / r['supervised']:>13.2f} {r['seconds']:>8.1f} {r['peak_mb']:>8.0f}")
    speed = {name: r["supervised"] / r["seconds"] for name, r in rows}
    print(f"\npacked / length-grouped: {speed[rows[1][0]] / speed[rows[0][0]]:.2f}x supervised tokens/s")
    if not args.only_ours:
        ratio = (ours["supervised"] / ours["seconds"]) / (ref["supervised"] / ref["seconds"])
        ceiling = (ref["computed"] / ref["supervised"]) / (ours["computed"] / ours["supervised"])
        print(f"\nratio ours / Trainer: {ratio:.2f}x (target >= 1.5x); "
              f"{ceiling:.2f}x expected from computed tokens alone (attention cost grows faster than "
              f"linearly with the padded length, so the measured ratio can exceed it)")
        print(f"padding share, ours: {ours['padding'] / ours['computed']:.1%} (target <= 10%); "
              f"Trainer: {ref['padding'] / ref['computed']:.1%}")
    if not args.only_ours:
        print(f"packed / Trainer: {speed[rows[1][0]] / speed[rows[2][0]]:.2f}x")
    if not args.skip_ce:
        plain = spawn("ce-plain", args, work)
        chunked = spawn("ce-chunked", args, work)
        print(f"\ncross-entropy, vocabulary 151,936, one row of {args.ce_tokens} tokens, forward + backward "
              f"(peak memory above the loaded model):")
        print(f"  plain (all float32 logits): {plain['peak_above_model_mb']:>8.0f} MB  {plain['seconds']:.2f} s")
        print(f"  chunked ({chunked['chunk']} positions):   {chunked['peak_above_model_mb']:>8.0f} MB  "
              f"{chunked['seconds']:.2f} s  (loss {chunked['loss']:.4f} vs {plain['loss']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
