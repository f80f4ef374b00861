"""What firefly chat's default sampling costs end to end, and against llama.cpp's own sampler chain.

    python bench/sampling.py            # 3 greedy/default pairs of 32 new tokens per engine, 2 threads
    python bench/sampling.py --quick    # 2 pairs of 16 new tokens, fewer sampler tokens (~1 minute)

The model is bench/load.py's: a random Qwen2-architecture model of the Qwen2.5-1.5B width (hidden
1536, 12 heads, 2 KV heads, 8 layers) with the real 151,936-token vocabulary, loaded through the
model service with a named engine (made under bench/out/ on first use; its q8_0 GGUF is cached in a
firefly home under bench/out/ so it is made once).

1. End to end, through our loop (`generate_ids` with a `GenerationConfig`): greedy (temperature 0,
   repetition penalty 1.2, what `firefly chat --greedy` runs) against the default settings
   (temperature 0.35, top_p 0.85, top_k 0, repetition penalty 1.2), on llama.cpp q8_0 and on torch
   bf16. Each engine runs in its own process; the two settings alternate inside it; the model's stop
   ids are left out so every run makes exactly the same number of tokens. Printed: decode tok/s (the
   tokens after the first / the time after the first token, as bench/generate.py) and default / greedy.
2. Picking one token, per token, on the SAME logits (llama.cpp's, after each decode of a real
   context, 151,936 wide): our `TokenSampler.pick` against llama.cpp's sampler chain through
   llama-cpp-python's API (`llama_sampler_chain_init`, `llama_sampler_init_penalties/top_k/top_p/
   temp/dist`, `llama_sampler_sample` on the context) for: greedy; firefly's defaults; and
   ollama-like defaults (repetition penalty 1.2 over the last 64 -> top-k 40 -> top-p 0.85 ->
   temperature 0.35). Our penalty covers the whole prompt and reply (transformers' semantics),
   llama.cpp's the last 64 tokens. Also printed: how often our top-p prefilter could not decide and
   fell back to the full sort (a random model's logits are flatter than a trained one's).

A random model's logits are flat (std ~0.8 over 151,936 tokens): top-p 0.85 then needs tens of
thousands of tokens, which no trained model's next-token distribution looks like, and our prefilter
falls back to the full sort on every token. `--sharpen 4` (the default) scales the model's final
norm weight by 4 (a copy of the folder, made once), so the logits are 4x wider, about as peaked as
a trained model's; `--sharpen 1` measures the flat worst case.

Prints the CPU first. Medians; on a busy machine run it twice and compare ratios, not tok/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BENCH_HOME = Path(__file__).resolve().parent / "out" / "sampling-home"  # the GGUF cache, made once
PROMPT_LEN = 32


def _folder(layers: int, sharpen: float) -> Path:
    """bench/load.py's model folder; with `sharpen` != 1 a copy whose final norm weight is scaled by
    it, so its logits are `sharpen` times wider (see the module docstring), made once."""
    from generate import SHAPES, engines_folder

    base = engines_folder(SimpleNamespace(family="qwen2", **{**SHAPES["qwen2"], "layers": layers}))
    if sharpen == 1:
        return base
    folder = base.with_name(f"{base.name}-sharp{sharpen:g}")
    if not (folder / "config.json").is_file():
        import shutil

        from safetensors.torch import load_file, save_file

        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from an interrupted run
        tmp.mkdir()
        for f in base.iterdir():
            if f.name != "model.safetensors":
                shutil.copy2(f, tmp / f.name)
        weights = load_file(base / "model.safetensors")
        weights["model.norm.weight"] = weights["model.norm.weight"] * sharpen
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        tmp.rename(folder)
    return folder


def _configs(n: int):
    from firefly_core.generation import GenerationConfig

    return {
        "greedy": GenerationConfig(temperature=0, max_new_tokens=n),  # penalty 1.2 stays, as --greedy
        "default": GenerationConfig(max_new_tokens=n, seed=0),  # 0.35 / 0.85 / top_k 0 / 1.2
    }


def _prompt(vocab: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(10, vocab, (PROMPT_LEN,), generator=g).tolist()


def _load(folder: Path, engine: str, threads: int):
    from firefly_core.models.service import ModelService

    service = ModelService()
    opts = dict(engine="llamacpp", quantize="q8_0") if engine == "llamacpp" else dict(engine="torch", dtype="bf16")
    lm = service.get(service.request_for(str(folder), threads=threads, **opts))
    return service, lm


def child_end_to_end(args) -> None:
    """One engine, in its own process: greedy and default alternating; prints RESULT {json}."""
    import torch

    from firefly_core.generation import generate_ids
    from firefly_core.generation.loop import decoder_for
    from generate import _FirstToken  # notes when the prefill returned the first token

    torch.set_num_threads(args.threads)
    service, lm = _load(_folder(args.layers, args.sharpen), args.child, args.threads)
    decoder = decoder_for(lm)
    # the model's own stop ids left out: a random model may say <|im_end|>; both runs make n tokens
    bare = SimpleNamespace(model=getattr(lm, "model", None), tokenizer=lm.tokenizer, device=decoder.device,
                           stop_token_ids=[], context_length=lm.context_length)
    prompt = _prompt(decoder.vocab_size)
    configs = _configs(args.new_tokens)
    generate_ids(bare, prompt[:8], configs["greedy"].with_overrides(max_new_tokens=2), decoder=decoder)  # warm-up
    speeds: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.repeats):
        for name, cfg in configs.items():
            timed = _FirstToken(decoder)
            ids = generate_ids(bare, prompt, cfg, decoder=timed)
            assert len(ids) == args.new_tokens, (name, len(ids))
            speeds[name].append((len(ids) - 1) / (time.perf_counter() - timed.at))
    service.unload()
    print("RESULT " + json.dumps(speeds), flush=True)  # per repeat: greedy and default ran back to back


def _llama_chain(vocab: int, kind: str, prompt: list[int]):
    import llama_cpp as lib

    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    add = lambda s: lib.llama_sampler_chain_add(chain, s)  # noqa: E731 - the chain owns each sampler
    add(lib.llama_sampler_init_penalties(vocab, 64, 1.2, 0.0, 0.0))
    if kind == "greedy":
        add(lib.llama_sampler_init_greedy())
    else:
        if kind == "ollama-like":
            add(lib.llama_sampler_init_top_k(40))
        add(lib.llama_sampler_init_top_p(0.85, 1))
        add(lib.llama_sampler_init_temp(0.35))
        add(lib.llama_sampler_init_dist(0))
    for token in prompt:
        lib.llama_sampler_accept(chain, token)
    return chain


def child_sampler(args) -> None:
    """Both samplers on the same llama.cpp logits after each decode; prints RESULT {json}."""
    import llama_cpp as lib
    import numpy as np
    import torch

    from firefly_core.export.gguf_cache import gguf_cache_path
    from firefly_core.generation import GenerationConfig, TokenSampler
    from firefly_core.generation.sampling import top_p_candidates

    torch.set_num_threads(1)  # the pick runs on the loop's thread; llama.cpp's chain is single-threaded too
    folder = _folder(args.layers, args.sharpen)
    path = gguf_cache_path(folder, "q8_0")
    llm = lib.Llama(model_path=str(path), n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads,
                    verbose=False)
    vocab = llm.n_vocab()
    prompt = _prompt(vocab)
    ours = {
        "greedy": GenerationConfig(temperature=0),
        "firefly defaults": GenerationConfig(seed=0),
        "ollama-like": GenerationConfig(top_k=40, seed=0),
    }
    samplers = {k: TokenSampler(cfg, vocab, prompt) for k, cfg in ours.items()}
    chains = {k: _llama_chain(vocab, k, prompt) for k in ours}  # the GGUF was made by the llamacpp child
    times: dict[str, list[float]] = {f"{side}:{k}": [] for k in ours for side in ("ours", "llama")}
    fallbacks = {k: 0 for k in ours}
    llm.eval(prompt)
    ctx = llm._ctx.ctx
    for _ in range(args.sampler_tokens):
        row = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, -1), shape=(vocab,))
        logits = torch.from_numpy(row.copy()).unsqueeze(0)  # what our llama.cpp decoder hands the loop
        token = None
        for k in ours:  # alternate sides and settings on every token
            cfg = ours[k]
            if cfg.do_sample and top_p_candidates(samplers[k]._scores(logits), cfg.top_k, cfg.top_p) is None:
                fallbacks[k] += 1
            t = time.perf_counter()
            samplers[k].pick(logits)
            times[f"ours:{k}"].append(time.perf_counter() - t)
            t = time.perf_counter()
            picked = lib.llama_sampler_sample(chains[k], ctx, -1)  # also accepts the token into the chain
            times[f"llama:{k}"].append(time.perf_counter() - t)
            if k == "firefly defaults":
                token = picked
        llm.eval([token])  # next logits: continue with the token llama.cpp's default-like chain picked
    for chain in chains.values():
        lib.llama_sampler_free(chain)
    llm.close()
    res = {k: statistics.median(v) * 1000 for k, v in times.items()}
    res["fallbacks"] = fallbacks
    res["tokens"] = args.sampler_tokens
    print("RESULT " + json.dumps(res), flush=True)


def _run_child(args, what: str) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--layers", str(args.layers), "--threads", str(args.threads),
           "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
           "--sampler-tokens", str(args.sampler_tokens), "--sharpen", str(args.sharpen)]
    env = {**os.environ, "FIREFLY_HOME": str(BENCH_HOME), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{what} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 pairs of 16 new tokens, 40 sampler tokens")
    ap.add_argument("--rounds", type=int, default=1, help="fresh processes per engine, alternating")
    ap.add_argument("--repeats", type=int, default=3, help="greedy/default pairs per engine process")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--sampler-tokens", type=int, default=100)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sharpen", type=float, default=4.0,
                    help="scale the random model's logits (1 = as initialised: flat, unlike a trained model's)")
    ap.add_argument("--child", choices=["llamacpp", "torch", "sampler"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "sampler":
        return child_sampler(args)
    if args.child:
        return child_end_to_end(args)
    if args.quick:
        args.rounds, args.repeats, args.new_tokens, args.sampler_tokens = 1, 2, 16, 40

    from machine import print_machine

    print_machine()
    BENCH_HOME.mkdir(parents=True, exist_ok=True)
    _folder(args.layers, args.sharpen)
    print(f"Qwen2.5-1.5B width, {args.layers} layers, vocab 151,936; {args.threads} threads; "
          f"{args.repeats} greedy/default pairs of {args.new_tokens} new tokens after a {PROMPT_LEN}-token prompt "
          f"per engine process; {args.rounds} round(s)", flush=True)
    e2e: dict[str, list[dict]] = {"llamacpp": [], "torch": []}
    picks: list[dict] = []
    for _ in range(args.rounds):  # the engines alternate, each in a fresh process
        for engine in e2e:
            e2e[engine].append(_run_child(args, engine))
        picks.append(_run_child(args, "sampler"))

    print("\n1. decode through our loop (tok/s after the first token, medians of all runs)")
    print(f"{'engine':18s} {'greedy':>8s} {'default':>8s} {'default/greedy':>15s}   each pair (back to back)")
    labels = {"llamacpp": "llama.cpp q8_0", "torch": "torch bf16"}
    for engine, rows in e2e.items():
        g = statistics.median(x for r in rows for x in r["greedy"])
        d = statistics.median(x for r in rows for x in r["default"])
        pairs = [dd / gg for r in rows for gg, dd in zip(r["greedy"], r["default"])]
        print(f"{labels[engine]:18s} {g:8.2f} {d:8.2f} {statistics.median(pairs):14.3f}x   "
              + " ".join(f"{x:.2f}x" for x in pairs))
    print("default/greedy: the median of the pairs' ratios")

    print(f"\n2. picking one token from llama.cpp's logits (ms/token, medians of {picks[0]['tokens']} tokens, "
          f"median over rounds)")
    print(f"{'settings':18s} {'ours':>8s} {'llama.cpp':>10s} {'ours/llama':>11s}   our full-sort fallbacks")
    for k in ("greedy", "firefly defaults", "ollama-like"):
        o = statistics.median(p[f"ours:{k}"] for p in picks)
        ll = statistics.median(p[f"llama:{k}"] for p in picks)
        fb = sum(p["fallbacks"][k] for p in picks)
        n = sum(p["tokens"] for p in picks)
        print(f"{k:18s} {o:8.3f} {ll:10.3f} {o / ll:10.2f}x   {fb if k != 'greedy' else '-'}"
              f"{'' if k == 'greedy' else f' of {n}'}")
    print("firefly defaults: temperature 0.35, top_p 0.85, top_k 0, penalty 1.2 (whole context); "
          "ollama-like: penalty 1.2 (last 64) -> top_k 40 -> top_p 0.85 -> temperature 0.35")


if __name__ == "__main__":
    main()
