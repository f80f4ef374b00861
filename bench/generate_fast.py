"""Benchmark of the fast decode paths against transformers' `generate`, in one process, alternating.

    python bench/generate_fast.py                  # CPU: int8 weights vs bf16, firefly-1b4 shape
    python bench/generate_fast.py --mode quality   # int8 vs bf16, and GGUF Q8_0/Q4_K_M vs bf16 (llama.cpp):
                                                   # perplexity / greedy agreement
    python bench/generate_fast.py --mode cuda      # GPU: CUDA-graph decode vs eager vs generate
    python bench/generate_fast.py --layers 2       # a quick run on a smaller shape

int8 mode: a random BloomForCausalLM of the firefly-1b4 shape (hidden 2048, 24 layers, 16 heads,
vocab 46,145) in bf16 on CPU. Alternating rounds of: transformers `generate` in bf16 (the reference),
our loop in bf16, our loop with int8 weights (lm_head int8), and with int8 weights but a bf16 lm_head.
Greedy, batch 1, a 32-token prompt, 64 new tokens; tokens/s = new tokens / wall time (prefill
included). Printed: tokens/s, ratios against `generate`, bytes of weights read per token, the
effective bandwidth, and the machine's read bandwidth measured in the same run (the batch-1 ceiling
is read bandwidth / weight bytes). The int8 copies share the bf16 model's non-linear weights.

cuda mode: the same shape in bf16 on the GPU: `generate` with its defaults, our eager loop, and our
loop with the static cache + CUDA-graph decode step. Printed: tokens/s, ratios, and weight bytes x
tokens/s against the device's copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402


def build_model(args, device="cpu"):
    from transformers import BloomConfig, BloomForCausalLM

    config = BloomConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, n_layer=args.layers, n_head=args.heads,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=True,
    )
    t = time.perf_counter()
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialize directly in bf16 (half the memory)
    try:
        model = BloomForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(prev)
    model.generation_config.eos_token_id = None  # always generate exactly --new-tokens
    model.generation_config.pad_token_id = 3
    model.to(device)
    print(f"built {args.layers}-layer model in {time.perf_counter() - t:.1f} s "
          f"({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, bf16, {device})", flush=True)
    return model


def weight_bytes(model) -> int:
    """Bytes read per decoded token: every parameter and buffer once (the tied embedding counts once,
    as the bf16 lm_head; a quantized lm_head is its own int8 copy, and the embedding's row lookup is
    negligible, so then the embedding is not counted)."""
    seen, total = set(), 0
    emb = model.get_input_embeddings().weight
    lm_head_is_float = isinstance(model.get_output_embeddings(), nn.Linear)
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen or (t is emb and not lm_head_is_float):
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def quantized_copy(model, skip=()):
    """A copy of `model` with int8 linears and the CPU route the model service would write (our
    GEMV kernel for decode rows where it can be built); the copy shares every other tensor."""
    from firefly_core.generation.quantize import quantize_int8
    from firefly_core.models.service import prepare_cpu_route

    shared = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    clone = copy.deepcopy(model, memo=dict(shared))
    report = quantize_int8(clone, skip=skip)
    prepare_cpu_route(clone)
    return clone, report


def read_bandwidth(device="cpu", gib: float = 1.0) -> float:
    n = int(gib * (1 << 30)) // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        src.sum()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    del src
    gc.collect()
    return n * 4 / best / 1e9


def copy_bandwidth(device, gib: float = 1.0) -> float:
    n = int(gib * (1 << 30)) // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return 2 * n * 4 / best / 1e9


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_hf(model, prompt, new_tokens, **kwargs):
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, **kwargs)
    _sync(prompt.device)
    return out[0, prompt.shape[1]:].tolist()


def run_ours(lm, prompt, new_tokens, decoder=None):
    from firefly_core.generation import GenerationConfig, generate_ids

    cfg = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=new_tokens)
    out = generate_ids(lm, prompt[0].tolist(), cfg, decoder=decoder)
    _sync(lm.device)
    return out


def _agreement(a, b) -> str:
    if a == b:
        return "same tokens"
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"same first {first}"


def alternate(runs, prompt, rounds, new_tokens, *, ref, warm_tokens, digits=2):
    """Warm every run up, then time them in alternating rounds (so load changes hit all alike);
    prints each round with its token agreement against `ref` and returns seconds per run."""
    print("warm-up ...", flush=True)
    for fn in runs.values():
        fn(prompt[:, :8], warm_tokens)
    times = {k: [] for k in runs}
    for r in range(rounds):
        outs = {}
        for name, fn in runs.items():
            t = time.perf_counter()
            outs[name] = fn(prompt, new_tokens)
            times[name].append(time.perf_counter() - t)
        print(f"round {r + 1}: " + ", ".join(
            f"{k} {new_tokens / times[k][-1]:.{digits}f} tok/s ({_agreement(outs[k], outs[ref])})" for k in runs),
            flush=True)
    return times


def int8_mode(args):
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model = build_model(args)
    q_model, q_report = quantized_copy(model)
    qk_model, qk_report = quantized_copy(model, skip=("lm_head",))
    print(f"int8: {q_report.summary()}", flush=True)
    runs = {
        "generate bf16": lambda p, n: run_hf(model, p, n, do_sample=False),
        "ours bf16": lambda p, n: run_ours(_lm(model), p, n),
        "ours int8": lambda p, n: run_ours(_lm(q_model), p, n),
        "ours int8, bf16 lm_head": lambda p, n: run_ours(_lm(qk_model), p, n),
    }
    bytes_per_token = {
        "generate bf16": weight_bytes(model), "ours bf16": weight_bytes(model),
        "ours int8": weight_bytes(q_model), "ours int8, bf16 lm_head": weight_bytes(qk_model),
    }
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(10, args.vocab, (1, args.prompt_tokens), generator=g)
    times = alternate(runs, prompt, args.rounds, args.new_tokens, ref="generate bf16", warm_tokens=2)
    bw = read_bandwidth()
    tps = {k: args.new_tokens / statistics.median(v) for k, v in times.items()}
    best = {k: args.new_tokens / min(v) for k, v in times.items()}
    base, base_best = tps["generate bf16"], best["generate bf16"]
    print()
    print(f"shape: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, vocab {args.vocab}, "
          f"prompt {args.prompt_tokens}, new {args.new_tokens}, threads {torch.get_num_threads()}, "
          f"{args.rounds} alternating rounds (median and best)")
    print(f"{'':26s} {'tok/s':>7s} {'vs generate':>11s} {'best tok/s':>10s} {'vs generate':>11s} "
          f"{'GB/token':>9s} {'GB/s':>6s} {'ceiling tok/s':>13s}")
    for k in runs:
        gb = bytes_per_token[k] / 1e9
        print(f"{k:26s} {tps[k]:7.2f} {tps[k] / base:10.2f}x {best[k]:10.2f} {best[k] / base_best:10.2f}x "
              f"{gb:9.2f} {gb * best[k]:6.1f} {bw / gb:13.2f}")
    print(f"read bandwidth (1 GiB sum, best of 5): {bw:.1f} GB/s; ceiling = read bandwidth / bytes per token")
    # On a shared machine each round's ratio compares runs made seconds apart: the fairest summary.
    per_round = statistics.median(g / o for g, o in zip(times["generate bf16"], times["ours int8"]))
    print(f"target: ours int8 >= 2x generate bf16 -> median {tps['ours int8'] / base:.2f}x, "
          f"best {best['ours int8'] / base_best:.2f}x, median of per-round ratios {per_round:.2f}x")


def _lm(model):
    p = next(model.parameters())
    return SimpleNamespace(model=model, device=p.device, stop_token_ids=[], tokenizer=None, context_length=2048)


def quality_mode(args):
    from firefly_core.quality import measure_int8_quality

    if not args.gguf_only:
        for lm_head in (True, False):
            r = measure_int8_quality(steps=args.steps, quantize_lm_head=lm_head)
            print(r.summary(), flush=True)
    gguf_quality(args)


def gguf_quality(args):
    """GGUF types through llama.cpp: held-out perplexity and greedy agreement of Q8_0 / Q4_K_M vs bf16.

    The kit model is trained as for int8 (firefly_core.quality) but with hidden 256, so every weight
    row is whole K-quant blocks (256 values) and Q4_K_M quantizes as it does on a real model.
    """
    import math
    import tempfile

    from firefly_core.export.gguf import export_gguf, model_info
    from firefly_core.generation import GenerationConfig, generate_ids
    from firefly_core.generation.llamacpp import LlamaCppDecoder, available
    from firefly_core.quality import _encode_lines, perplexity, split_corpus, train_kit_model
    from firefly_core.testkit import kit_corpus

    if available() is not None:
        print(f"GGUF quality skipped: {available()}")
        return
    train_lines, heldout = split_corpus(kit_corpus().splitlines())
    model, tok, loss = train_kit_model(train_lines, steps=args.steps, hidden=256, heads=4, layers=2)
    model = model.to(torch.bfloat16)
    ppl_torch, n_tokens = perplexity(model, tok, heldout)
    tmp = Path(tempfile.mkdtemp(prefix="gguf-quality-"))
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    info = model_info(tmp / "model")
    decs = {}
    for t in ("bf16", "q8_0", "q4_k_m"):
        path = export_gguf(info, tmp / f"{t}.gguf", gguf_type=t)
        decs[t] = LlamaCppDecoder(path, n_ctx=512, threads=args.threads or 2)

    def nll_and_top1(dec, ids):
        cache, nll, top1 = dec.new_cache(), 0.0, []
        logits = dec.forward(torch.tensor([ids[:1]]), cache)[0]
        for t in ids[1:]:
            nll -= float(torch.log_softmax(logits, -1)[t])
            top1.append(int(logits.argmax()))
            logits = dec.forward(torch.tensor([[t]]), cache)[0]
        return nll, top1

    lines = _encode_lines(tok, heldout)
    all_lines = train_lines + heldout
    prompts = [[tok.bos_token_id] + tok.encode(l[:4], add_special_tokens=False) for l in all_lines]
    bare = SimpleNamespace(model=None, tokenizer=tok, device=torch.device("cpu"), stop_token_ids=[], context_length=512)
    cfg = GenerationConfig(max_new_tokens=24, do_sample=False, repetition_penalty=1.0)
    refs = [generate_ids(bare, p, cfg, decoder=decs["bf16"]) for p in prompts]
    print(f"kit BLOOM hidden 256 trained {args.steps} steps (loss {loss:.3f}); held-out {len(heldout)} lines, "
          f"{n_tokens} tokens; torch bf16 perplexity {ppl_torch:.3f}")
    base = None
    for t, dec in decs.items():
        ppl = math.exp(sum(nll_and_top1(dec, ids)[0] for ids in lines) / n_tokens)
        base = base or ppl
        agree = total = same = 0
        for p, ref in zip(prompts, refs):
            same += int(generate_ids(bare, p, cfg, decoder=dec) == ref)
            top1 = nll_and_top1(dec, p + ref)[1][len(p) - 1:]
            agree += sum(int(a == b) for a, b in zip(top1, ref))
            total += len(ref)
        size = dec.path.stat().st_size
        print(f"llama.cpp {t:7s}: held-out perplexity {ppl:8.3f} ({100 * (ppl / base - 1):+.2f} % vs bf16), "
              f"greedy top-1 agreement with bf16 {100 * agree / total:5.1f} % of {total} tokens, identical "
              f"continuations {100 * same / len(prompts):3.0f} % of {len(prompts)} prompts; file {size / 1e6:.2f} MB")


def cuda_mode(args):
    from firefly_core.generation.cuda_graph import CudaGraphDecoder

    if not torch.cuda.is_available():
        sys.exit("cuda mode needs a CUDA GPU (torch.cuda.is_available() is False)")
    dev = torch.device("cuda")
    model = build_model(args, dev)
    lm = _lm(model)
    # The static cache is sized to the context window, as in chat (its unused tail is masked).
    graph = CudaGraphDecoder(model, max_cache_len=args.context,
                             status=lambda s: print(f"  [cuda graph] {s}", flush=True))
    runs = {
        "generate (defaults)": lambda p, n: run_hf(model, p, n, do_sample=False),
        "ours eager": lambda p, n: run_ours(lm, p, n),
        "ours cuda graph": lambda p, n: run_ours(lm, p, n, decoder=graph),
    }
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(10, args.vocab, (1, args.prompt_tokens), generator=g).to(dev)
    times = alternate(runs, prompt, args.rounds, args.new_tokens, ref="ours eager", warm_tokens=4, digits=1)
    bw = copy_bandwidth(dev)
    wb = weight_bytes(model)
    tps = {k: args.new_tokens / statistics.median(v) for k, v in times.items()}
    base = tps["generate (defaults)"]
    print()
    print(f"device: {torch.cuda.get_device_name(dev)}; shape hidden {args.hidden}, {args.layers} layers, "
          f"vocab {args.vocab}; prompt {args.prompt_tokens}, new {args.new_tokens}, static cache {args.context}")
    for k in runs:
        eff = wb * tps[k] / 1e9
        print(f"{k:22s} {tps[k]:8.1f} tok/s {tps[k] / base:6.2f}x generate  {eff:7.0f} GB/s "
              f"({100 * eff / bw:.0f} % of copy bandwidth)")
    print(f"copy bandwidth (read+write, 1 GiB): {bw:.0f} GB/s; weights {wb / 1e9:.2f} GB per token")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("int8", "quality", "cuda"), default="int8")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=46145)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--context", type=int, default=2048, help="cuda mode: static KV cache length")
    p.add_argument("--steps", type=int, default=80, help="quality mode: training steps of the kit model")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--gguf-only", action="store_true", help="quality mode: only the GGUF types (llama.cpp)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"int8": int8_mode, "quality": quality_mode, "cuda": cuda_mode}[args.mode](args)


if __name__ == "__main__":
    from machine import print_machine

    print_machine()  # every figure names its CPU
    main()
