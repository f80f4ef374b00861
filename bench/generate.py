"""Benchmark of our generation loop against transformers' `generate`, in one process, alternating.

    python bench/generate.py                 # decode speed, firefly-1b4 shape, bf16, CPU
    python bench/generate.py --mode ttft     # time to first token at turns 1, 5, 10 of a chat
    python bench/generate.py --layers 2      # a quick run on a smaller shape
    python bench/generate.py --quantize int8 # ours with int8 weights vs generate in bf16
    python bench/generate.py --engine llamacpp --family qwen2 --quantize q8_0 q4_k_m
                                             # llama.cpp (ours on it, and bare) vs torch vs generate

Decode mode: a random BloomForCausalLM of the firefly-1b4 shape (hidden 2048, 24 layers, 16 heads,
vocab 46,145), greedy, batch 1, a 32-token prompt, 64 new tokens. Both sides run the same model and
must produce the same tokens. Printed: tokens/s of each (new tokens / wall time, prefill included),
the ratio (end to end, and decode only: the time after the first new token, timed inside the same
runs with a streamer for generate and a timing decoder for ours), the effective weight bandwidth (bytes of weights read per token x tokens/s) and the
machine's memory bandwidth measured in the same run (a large copy, a large read, and a bf16 GEMV of
the model's own lm_head shape): the decode ceiling at batch 1 is bandwidth / weight bytes.

Engines mode (`--engine llamacpp`): see `engines_mode` below; every variant runs in its own process,
the variants alternate, and one table prints them side by side.

TTFT mode: a conversation of 10 turns (user messages of 32 tokens, replies of 64 tokens). At turns
1, 5 and 10 it times the first token of our ChatSession (KV-prefix reuse: only the new message is
prefilled) and of a fresh prefill of the whole history. A random model's output is not text, so the
replies are scripted and written into the cache as if generated (teacher forcing): the cache state
is exactly the one a real reply leaves.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def build_model(args):
    from transformers import BloomConfig, BloomForCausalLM

    config = BloomConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        n_layer=args.layers,
        n_head=args.heads,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=True,
    )
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    t = time.perf_counter()
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialize directly in the target dtype (half the memory)
    try:
        model = BloomForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(prev)
    model.generation_config.eos_token_id = None  # always generate exactly --new-tokens
    model.generation_config.pad_token_id = 3
    print(f"built {args.layers}-layer model in {time.perf_counter() - t:.1f} s "
          f"({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, {args.dtype})", flush=True)
    return model


def weight_bytes(model) -> int:
    """Bytes of weights read per decoded token: every parameter and buffer once (the tied embedding
    is read whole as the lm_head; its row lookup is negligible; int8 weights are buffers)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def prepared_copy(model, quantize: str | None):
    """Our side: a copy of `model`'s modules sharing every tensor, with int8 weights if asked, and
    the CPU route written into its layers as the model service does; the reference keeps running
    on the untouched model in the same process."""
    import copy

    from firefly_core.generation.quantize import quantize_int8
    from firefly_core.models.service import prepare_cpu_route

    shared = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    clone = copy.deepcopy(model, memo=dict(shared))
    if quantize == "int8":
        print(quantize_int8(clone).summary(), flush=True)  # "int8: N linear layers, ..."
    reason = prepare_cpu_route(clone, status=lambda m: print(m, flush=True))
    route = clone.firefly_cpu_route.describe() or "PyTorch's routines"
    print(f"our CPU route: {route}" + (f" (kernels: {reason})" if reason else ""), flush=True)
    return clone


def _best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def memory_bandwidth(gib: float = 1.0) -> dict[str, float]:
    """GB/s of a large copy (read + write counted), a large read (sum), and a bf16 GEMV."""
    n = int(gib * (1 << 30)) // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    copy = _best_of(lambda: dst.copy_(src), 5)
    read = _best_of(lambda: src.sum(), 5)
    del src, dst
    w = torch.randn(46145, 2048).to(torch.bfloat16)
    x = torch.randn(1, 2048).to(torch.bfloat16)
    gemv = _best_of(lambda: torch.nn.functional.linear(x, w), 10)
    out = {
        "copy": 2 * n * 4 / copy / 1e9,
        "read": n * 4 / read / 1e9,
        "gemv_bf16": w.numel() * 2 / gemv / 1e9,
    }
    del w
    gc.collect()
    return out


def run_hf(model, prompt, new_tokens):
    """transformers' generate; returns (new token ids, seconds to the first new token)."""
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):  # generate calls put() with the prompt, then with each new token
        calls, at = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2:
                self.at = time.perf_counter()

        def end(self):
            pass

    streamer = FirstToken()
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            streamer=streamer,
        )
    return out[0, prompt.shape[1]:].tolist(), (streamer.at or time.perf_counter()) - t


def run_ours(lm, prompt, new_tokens):
    """Our loop; returns (new token ids, seconds to the first new token)."""
    from firefly_core.generation import GenerationConfig, ModelDecoder, generate_ids

    dec = _FirstToken(lm.decoder if getattr(lm, "decoder", None) else ModelDecoder(lm.model))
    lm.decoder = dec.inner
    cfg = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=new_tokens)
    t = time.perf_counter()
    ids = generate_ids(lm, prompt[0].tolist(), cfg, decoder=dec)
    return ids, dec.at - t


def decode_mode(args):
    model = build_model(args)
    ours_model = prepared_copy(model, args.quantize)
    lm = SimpleNamespace(model=ours_model, device=torch.device("cpu"), stop_token_ids=[], tokenizer=None)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(10, args.vocab, (1, args.prompt_tokens), generator=g)
    print("warm-up ...", flush=True)
    run_hf(model, prompt[:, :8], 2)
    run_ours(lm, prompt[:, :8], 2)
    hf_s, ours_s, hf_first, ours_first = [], [], [], []
    for r in range(args.rounds):
        t = time.perf_counter()
        ref, first = run_hf(model, prompt, args.new_tokens)
        hf_s.append(time.perf_counter() - t)
        hf_first.append(first)
        t = time.perf_counter()
        mine, first = run_ours(lm, prompt, args.new_tokens)
        ours_s.append(time.perf_counter() - t)
        ours_first.append(first)
        diff = next((i for i, (a, b) in enumerate(zip(mine, ref)) if a != b), None)
        same = "same tokens" if diff is None else f"tokens differ from position {diff}"
        print(f"round {r + 1}: generate {args.new_tokens / hf_s[-1]:.2f} tok/s "
              f"(first token {hf_first[-1]:.2f} s), ours {args.new_tokens / ours_s[-1]:.2f} tok/s "
              f"(first token {ours_first[-1]:.2f} s) ({same})", flush=True)
    bw = memory_bandwidth()
    med = statistics.median
    hf_tps = args.new_tokens / med(hf_s)
    ours_tps = args.new_tokens / med(ours_s)
    hf_dec = med([(args.new_tokens - 1) / (a - b) for a, b in zip(hf_s, hf_first)])
    ours_dec = med([(args.new_tokens - 1) / (a - b) for a, b in zip(ours_s, ours_first)])
    wb = weight_bytes(ours_model)
    print()
    print(f"shape: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, vocab {args.vocab}, "
          f"{args.dtype}{' (ours: int8 weights)' if args.quantize else ''}, prompt {args.prompt_tokens}, new {args.new_tokens}, threads {torch.get_num_threads()}")
    print(f"transformers generate : {hf_tps:6.2f} tok/s end to end, {hf_dec:6.2f} tok/s decode only, "
          f"first token {med(hf_first):.2f} s (medians of {args.rounds})")
    print(f"ours                  : {ours_tps:6.2f} tok/s end to end, {ours_dec:6.2f} tok/s decode only, "
          f"first token {med(ours_first):.2f} s")
    print(f"ratio ours / generate : {ours_tps / hf_tps:6.2f}x end to end, {ours_dec / hf_dec:6.2f}x decode only, "
          f"{med(hf_first) / med(ours_first):6.2f}x faster first token")
    hf_wb = weight_bytes(model)
    print(f"weights read per token: ours {wb / 1e9:.2f} GB -> effective {wb * ours_dec / 1e9:.1f} GB/s (decode); "
          f"generate {hf_wb / 1e9:.2f} GB -> {hf_wb * hf_dec / 1e9:.1f} GB/s")
    print(f"memory bandwidth      : copy {bw['copy']:.1f} GB/s (read+write), read {bw['read']:.1f} GB/s, "
          f"bf16 GEMV {bw['gemv_bf16']:.1f} GB/s")
    print(f"decode ceiling        : {bw['read'] * 1e9 / wb:.2f} tok/s (read bandwidth / weight bytes), "
          f"{bw['gemv_bf16'] * 1e9 / wb:.2f} tok/s (bf16 GEMV rate / weight bytes)")


USER = "请根据下面的内容写一段简短的总结，并给出三个关键词。Summarize the text and list three keywords. "
REPLY = ("好的。这段文字讲的是萤火虫在夏夜里发光的原因：它们用光来交流和求偶。关键词：萤火虫、夏夜、发光。"
         "Fireflies glow on summer nights to talk to each other. Keywords: fireflies, summer, light. ")


def _fit_tokens(tok, text: str, n: int) -> str:
    """The longest prefix of `text` (repeated as needed) that encodes to at most `n` tokens."""
    text = text * (1 + n // 8)
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tok.encode(text[:mid], add_special_tokens=False)) <= n:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def ttft_mode(args):
    from firefly_core.session import ChatSession
    from firefly_core.formats import FireflyV1, Message
    from firefly_core.generation import GenerationConfig, ReplyDone, generate_stream
    from firefly_core.models.loading import LoadedModel
    from firefly_core.testkit import build_tokenizer

    model = build_model(args)
    tok = build_tokenizer("bloom")  # any real tokenizer; its ids are all inside the model's vocab
    lm = LoadedModel(model=model, tokenizer=tok, device=torch.device("cpu"), dtype=model.dtype,
                     path=Path("."), name="random-firefly-1b4-shape", prompt_format=FireflyV1(),
                     context_length=2048)
    user = _fit_tokens(tok, USER, args.user_tokens)
    reply = _fit_tokens(tok, REPLY, args.reply_tokens)
    user_ids = tok.encode(user, add_special_tokens=False)
    print(f"user message {len(user_ids)} tokens, reply {len(tok.encode(reply, add_special_tokens=False))} "
          f"tokens", flush=True)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=1)
    session = ChatSession(lm, config=cfg)
    history: list[Message] = []
    generate_stream(lm, user_ids[:4], cfg)  # warm-up
    rows = []
    for turn in range(1, args.turns + 1):
        text = f"{turn}. {user}"
        history.append(Message("user", text))
        measure = turn in (1, 5, 10) or turn == args.turns
        if measure:
            # baseline first: the whole history, prefilled from scratch
            _, ids = ChatSession(lm, config=cfg).prompt_ids(history)
            full = [e for e in generate_stream(lm, ids, cfg) if isinstance(e, ReplyDone)][0]
        done = [e for e in session.reply(history) if isinstance(e, ReplyDone)][0]
        if measure:
            rows.append((turn, done.stats.prompt_tokens, done.stats.reused_tokens, done.stats.ttft_s, full.stats.ttft_s))
            print(f"turn {turn:2d}: prompt {done.stats.prompt_tokens:4d} tokens ({done.stats.reused_tokens} reused): "
                  f"ours {done.stats.ttft_s * 1000:7.0f} ms, full prefill {full.stats.ttft_s * 1000:7.0f} ms", flush=True)
        # the scripted reply replaces the 1-token one and goes into the cache as if generated
        history.append(Message("assistant", reply))
        session.warm(history)
    t1 = rows[0][3]
    print()
    print("turn  prompt  reused  ours TTFT  full-prefill TTFT  ours/turn1  full/ours")
    for turn, prompt, reused, ours, full in rows:
        print(f"{turn:4d}  {prompt:6d}  {reused:6d}  {ours * 1000:7.0f} ms  {full * 1000:11.0f} ms  "
              f"{ours / t1:9.2f}x  {full / ours:8.2f}x")
    print(f"target: ours at turn {rows[-1][0]} <= 1.5x turn 1 -> {rows[-1][3] / t1:.2f}x")


# ------------------------------------------------------------------------------------ engines mode
SHAPES = {
    "bloom": dict(layers=24, hidden=2048, heads=16, vocab=46145),
    "qwen2": dict(layers=28, hidden=1536, heads=12, vocab=151936),  # Qwen2.5-1.5B-Instruct
}
QWEN2_KV_HEADS, QWEN2_FFN = 2, 8960
BENCH_OUT = Path(__file__).resolve().parent / "out"


def engines_folder(args) -> Path:
    """A random model of the family's shape as a model folder (bf16 safetensors + the kit's tokenizer,
    padded to the shape's vocabulary), made once under bench/out/."""
    from firefly_core.testkit import build_tokenizer

    folder = BENCH_OUT / f"{args.family}-h{args.hidden}-l{args.layers}-v{args.vocab}"
    if (folder / "config.json").is_file():
        return folder
    tok = build_tokenizer(args.family)
    t = time.perf_counter()
    if args.family == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        config = Qwen2Config(
            vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=QWEN2_FFN,
            num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=QWEN2_KV_HEADS,
            max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
            bos_token_id=None, eos_token_id=im_end, pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(0)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = Qwen2ForCausalLM(config).eval()
        finally:
            torch.set_default_dtype(prev)
    else:
        model = build_model(SimpleNamespace(**{**vars(args), "dtype": "bf16"}))
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    print(f"saved {folder} in {time.perf_counter() - t:.1f} s", flush=True)
    return folder


def engines_gguf(folder: Path, gguf_type: str) -> Path:
    from firefly_core.export.gguf import export_gguf, model_info

    path = folder.with_name(f"{folder.name}.{gguf_type}.gguf")
    if not path.is_file():
        t = time.perf_counter()
        export_gguf(model_info(folder), path, gguf_type=gguf_type)
        print(f"exported {path.name} in {time.perf_counter() - t:.1f} s ({path.stat().st_size / 1e9:.2f} GB)", flush=True)
    return path


class _FirstToken:
    """Wraps a decoder (the loop's seam: prefill/decode return the next token); notes when the
    prefill has returned the first token."""

    def __init__(self, inner):
        self.inner, self.at = inner, None
        self.vocab_size, self.device = inner.vocab_size, inner.device

    def new_cache(self):
        return self.inner.new_cache()

    def prefill(self, ids, cache, sampler):
        token = self.inner.prefill(ids, cache, sampler)
        if self.at is None:
            self.at = time.perf_counter()
        return token

    def decode(self, token, cache, sampler):
        return self.inner.decode(token, cache, sampler)


def _variant_runner(args, kind: str):
    """(run(prompt_ids, n) -> (ids, ttft_s, total_s), chat LoadedModel or None, bare Llama or None)."""
    from firefly_core.export.gguf import model_info
    from firefly_core.generation import GenerationConfig, generate_ids
    from firefly_core.models.loading import load_model

    threads = args.threads or 2
    if kind == "bare":
        import llama_cpp

        llm = llama_cpp.Llama(args.gguf, n_ctx=4096, n_batch=512, n_threads=threads, n_threads_batch=threads,
                              verbose=False)

        def run(prompt, n):
            llm.reset()
            out, t, first = [], time.perf_counter(), None
            for tok in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
                first = first or time.perf_counter()
                out.append(tok)
                if len(out) >= n:
                    break
            return out, first - t, time.perf_counter() - t

        return run, model_info(args.folder), llm
    if kind == "ours-llamacpp":
        from firefly_core.generation.llamacpp import LlamaCppDecoder

        lm = model_info(args.folder)
        lm.decoder = LlamaCppDecoder(args.gguf, n_ctx=4096, threads=threads)
    else:
        lm = load_model(args.folder, dtype="bf16", device="cpu", quantize="int8" if kind == "ours-int8" else None)
        if kind != "generate":  # ours: the CPU route the model service would write
            from firefly_core.models.service import prepare_cpu_route

            prepare_cpu_route(lm.model)
    bare_lm = SimpleNamespace(model=lm.model, tokenizer=lm.tokenizer, device=torch.device("cpu"),
                              stop_token_ids=[], context_length=4096)  # no stop ids: exactly n tokens

    if kind == "generate":
        def run(prompt, n):
            t = time.perf_counter()
            ids, first = run_hf(lm.model, torch.tensor([prompt]), n)
            return ids, first, time.perf_counter() - t

        return run, None, None

    from firefly_core.generation.loop import decoder_for

    inner = decoder_for(lm)

    def run(prompt, n):
        dec = _FirstToken(inner)
        cfg = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=n)
        t = time.perf_counter()
        ids = generate_ids(bare_lm, prompt, cfg, decoder=dec)
        return ids, dec.at - t, time.perf_counter() - t

    return run, lm, None


def _chat_ttfts(args, lm, llm) -> dict[int, float]:
    """TTFT at each turn of a scripted 10-turn chat (user 32 tokens, replies 64 tokens in the cache)."""
    from firefly_core.formats import Message
    from firefly_core.generation import GenerationConfig, ReplyDone
    from firefly_core.session import ChatSession

    user = _fit_tokens(lm.tokenizer, USER, args.user_tokens)
    reply = _fit_tokens(lm.tokenizer, REPLY, args.reply_tokens)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=1)
    session = ChatSession(lm, config=cfg)
    history: list[Message] = []
    out = {}
    for turn in range(1, args.turns + 1):
        text = f"{turn}. {user}"
        history.append(Message("user", text))
        if llm is None:
            done = [e for e in session.reply(history) if isinstance(e, ReplyDone)][0]
            out[turn] = done.stats.ttft_s
            history.append(Message("assistant", reply))
            session.warm(history)
        else:  # bare llama-cpp-python: it reuses the longest cached prefix itself
            _, ids = ChatSession(lm).prompt_ids(history)
            t = time.perf_counter()
            next(llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True))
            out[turn] = time.perf_counter() - t
            history.append(Message("assistant", reply))
            _, warm = ChatSession(lm).prompt_ids(history)
            next(llm.generate(warm, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True))
    return out


def engine_variant(args):
    """Child process: one variant, one round; prints RESULT {json}."""
    import json

    kind = args.variant
    torch.set_num_threads(args.threads or 2)
    g = torch.Generator().manual_seed(1)
    short = torch.randint(10, args.vocab, (args.prompt_tokens,), generator=g).tolist()
    long = torch.randint(10, args.vocab, (max(args.long_tokens, 1),), generator=g).tolist()
    run, lm, llm = _variant_runner(args, kind)
    run(short[:8], 2)  # warm-up (and any first-use kernel compile)
    ids, ttft, total = run(short, args.new_tokens)
    res = {"tokens": ids[:16], "ttft": ttft, "decode": (len(ids) - 1) / (total - ttft)}
    skip = set(args.skip)
    if args.long_tokens and f"{kind}:long" not in skip:
        res["ttft_long"] = run(long, 1)[1]
    if lm is not None and f"{kind}:turns" not in skip:
        res["turns"] = _chat_ttfts(args, lm, llm)
    print("RESULT " + json.dumps(res), flush=True)


def engines_mode(args):
    """ours on llama.cpp vs bare llama-cpp-python (same GGUF) vs ours on torch bf16/int8 vs generate.

    Each variant runs in its own process (so one engine's threads never spin while another runs),
    variants alternate in every round, medians over rounds are printed side by side.
    """
    import json
    import subprocess

    types = args.quantize or ["q8_0"]
    folder = engines_folder(args)
    ggufs = {t: engines_gguf(folder, t) for t in types}
    variants = []
    for t in types:
        variants += [(f"llama.cpp {t}, ours", "ours-llamacpp", ggufs[t]), (f"llama.cpp {t}, bare", "bare", ggufs[t])]
    variants += [("torch bf16, ours", "ours-torch", None), ("torch int8, ours", "ours-int8", None),
                 ("transformers generate bf16", "generate", None)]
    variants = [v for v in variants if v[1] not in args.skip and v[0] not in args.skip]
    results: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    common = ["--engine", "llamacpp", "--family", args.family, "--folder", str(folder),
              "--threads", str(args.threads or 2), "--prompt-tokens", str(args.prompt_tokens),
              "--new-tokens", str(args.new_tokens), "--long-tokens", str(args.long_tokens), "--turns", str(args.turns),
              "--user-tokens", str(args.user_tokens), "--reply-tokens", str(args.reply_tokens),
              "--layers", str(args.layers), "--hidden", str(args.hidden), "--heads", str(args.heads),
              "--vocab", str(args.vocab), "--skip", *args.skip]
    for r in range(args.rounds):
        for name, kind, gguf in variants:
            cmd = [sys.executable, __file__, "--variant", kind, *common] + (["--gguf", str(gguf)] if gguf else [])
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"round {r + 1}: {name} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}", flush=True)
                continue
            res = json.loads(line[7:])
            results[name].append(res)
            turns = res.get("turns") or {}
            print(f"round {r + 1}: {name:28s} decode {res['decode']:6.2f} tok/s, TTFT {res['ttft']:.2f} s"
                  + (f", {args.long_tokens}-token TTFT {res['ttft_long']:.2f} s" if "ttft_long" in res else "")
                  + (f", turn 1 {turns['1']:.2f} s / turn {args.turns} {turns[str(args.turns)]:.2f} s" if turns else "")
                  + f" ({time.perf_counter() - t:.0f} s)", flush=True)
    med = statistics.median

    def m(name, key, turn=None):
        rows = results[name]
        vals = [r["turns"][str(turn)] if turn else r[key] for r in rows
                if (turn and r.get("turns")) or (not turn and key in r)]
        return med(vals) if vals else float("nan")

    print()
    print(f"shape: {args.family}, hidden {args.hidden}, {args.layers} layers, {args.heads} heads, vocab {args.vocab}; "
          f"{args.threads or 2} threads; prompt {args.prompt_tokens}, new {args.new_tokens}; medians of {args.rounds} rounds")
    print(f"{'':28s} {'decode tok/s':>12s} {'TTFT ' + str(args.prompt_tokens):>9s} {'TTFT ' + str(args.long_tokens):>9s} "
          f"{'turn 1':>7s} {'turn ' + str(args.turns):>8s} {'t' + str(args.turns) + '/t1':>6s}")
    for name, _, _ in variants:
        t1, tn = m(name, None, 1), m(name, None, args.turns)
        print(f"{name:28s} {m(name, 'decode'):12.2f} {m(name, 'ttft'):8.2f}s {m(name, 'ttft_long'):8.2f}s "
              f"{t1:6.2f}s {tn:7.2f}s {tn / t1:6.2f}")
    gen = "transformers generate bf16"
    for t in types:
        ours, bare = f"llama.cpp {t}, ours", f"llama.cpp {t}, bare"
        if ours in results and bare in results and results[ours] and results[bare]:
            same = all(a["tokens"] == b["tokens"] for a, b in zip(results[ours], results[bare]))
            print(f"{t}: ours/bare decode {m(ours, 'decode') / m(bare, 'decode'):.3f}x, "
                  f"TTFT bare/ours {m(bare, 'ttft') / m(ours, 'ttft'):.3f}x, "
                  f"long TTFT bare/ours {m(bare, 'ttft_long') / m(ours, 'ttft_long'):.3f}x; greedy tokens "
                  f"{'identical' if same else 'DIFFER'}"
                  + (f"; ours vs generate decode {m(ours, 'decode') / m(gen, 'decode'):.2f}x" if results.get(gen) else ""))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("decode", "ttft"), default="decode")
    p.add_argument("--layers", type=int, help="default: the family's (bloom 24, qwen2 28)")
    p.add_argument("--hidden", type=int, help="default: the family's (bloom 2048, qwen2 1536)")
    p.add_argument("--heads", type=int, help="default: the family's (bloom 16, qwen2 12)")
    p.add_argument("--vocab", type=int, help="default: the family's (bloom 46,145, qwen2 151,936)")
    p.add_argument("--dtype", choices=("bf16", "fp32", "fp16"), default="bf16")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--user-tokens", type=int, default=32, help="ttft mode: tokens per user message")
    p.add_argument("--reply-tokens", type=int, default=64, help="ttft mode: tokens per reply")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--quantize", nargs="+", choices=("int8", "q8_0", "q4_k_m", "bf16"),
                   help="decode mode: int8 = our side uses int8 weights; --engine llamacpp: the GGUF types to run")
    p.add_argument("--engine", choices=("torch", "llamacpp"), default="torch",
                   help="llamacpp: ours on llama.cpp and bare llama-cpp-python vs ours on torch and generate")
    p.add_argument("--family", choices=("bloom", "qwen2"), default="bloom",
                   help="qwen2: the Qwen2.5-1.5B shape (hidden 1536, 28 layers, 12/2 heads, ffn 8960, vocab 151,936)")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # engines mode: the child process runs one variant
    p.add_argument("--gguf", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--long-tokens", type=int, default=512, help="engines mode: the long prompt's tokens (0 = skip)")
    p.add_argument("--skip", nargs="*", default=[], help="engines mode: variants to leave out (e.g. generate)")
    args = p.parse_args()
    for key, value in SHAPES[args.family].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        return engine_variant(args)
    if args.engine == "llamacpp":
        return engines_mode(args)
    if args.quantize and args.quantize != ["int8"]:
        p.error("--quantize q8_0/q4_k_m/bf16 needs --engine llamacpp")
    args.quantize = args.quantize[0] if args.quantize else None
    (ttft_mode if args.mode == "ttft" else decode_mode)(args)


if __name__ == "__main__":
    from machine import print_machine

    if "--variant" not in sys.argv:  # a child run's stdout is read by its parent
        print_machine()  # every figure names its CPU
    main()
