"""Benchmark of our generation loop against transformers' `generate`, in one process, alternating.

    python bench/generate.py                 # decode speed, firefly-1b4 shape, bf16, CPU
    python bench/generate.py --mode ttft     # time to first token at turns 1, 5, 10 of a chat
    python bench/generate.py --layers 2      # a quick run on a smaller shape
    python bench/generate.py --quantize int8 # ours with int8 weights vs generate in bf16

Decode mode: a random BloomForCausalLM of the firefly-1b4 shape (hidden 2048, 24 layers, 16 heads,
vocab 46,145), greedy, batch 1, a 32-token prompt, 64 new tokens. Both sides run the same model and
must produce the same tokens. Printed: tokens/s of each (new tokens / wall time, prefill included),
the ratio (end to end, and decode only: the time after the first new token, timed inside the same
runs with a streamer for generate and a timing decoder for ours), the effective weight bandwidth (bytes of weights read per token x tokens/s) and the
machine's memory bandwidth measured in the same run (a large copy, a large read, and a bf16 GEMV of
the model's own lm_head shape): the decode ceiling at batch 1 is bandwidth / weight bytes.

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


def int8_copy(model):
    """A copy of `model` whose linear layers hold int8 weights; every other tensor is shared, so the
    reference keeps running on the untouched bf16 model in the same process."""
    import copy

    from firefly_core.generation.quantize import quantize_int8

    shared = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    clone = copy.deepcopy(model, memo=dict(shared))
    print(f"int8: {quantize_int8(clone).summary()}", flush=True)
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

    class FirstToken:  # the default decoder, noting when the prefill's logits are ready
        def __init__(self, inner):
            self.inner, self.at = inner, None
            self.vocab_size, self.device = inner.vocab_size, inner.device

        def new_cache(self):
            return self.inner.new_cache()

        def forward(self, ids, cache):
            out = self.inner.forward(ids, cache)
            if self.at is None:
                self.at = time.perf_counter()
            return out

    dec = FirstToken(lm.decoder if getattr(lm, "decoder", None) else ModelDecoder(lm.model))
    lm.decoder = dec.inner
    cfg = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=new_tokens)
    t = time.perf_counter()
    ids = generate_ids(lm, prompt[0].tolist(), cfg, decoder=dec)
    return ids, dec.at - t


def decode_mode(args):
    model = build_model(args)
    ours_model = int8_copy(model) if args.quantize == "int8" else model
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
    from firefly_core.chat import ChatSession
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
    generate_stream(lm, user_ids[:4], cfg)  # warm-up
    rows = []
    for turn in range(1, args.turns + 1):
        text = f"{turn}. {user}"
        measure = turn in (1, 5, 10) or turn == args.turns
        if measure:
            # baseline first: the whole history, prefilled from scratch
            _, ids = ChatSession(lm, config=cfg, messages=session.messages + [Message("user", text)]).prompt_ids()
            full = [e for e in generate_stream(lm, ids, cfg) if isinstance(e, ReplyDone)][0]
        done = [e for e in session.send(text) if isinstance(e, ReplyDone)][0]
        if measure:
            rows.append((turn, done.stats.prompt_tokens, done.stats.reused_tokens, done.stats.ttft_s, full.stats.ttft_s))
            print(f"turn {turn:2d}: prompt {done.stats.prompt_tokens:4d} tokens ({done.stats.reused_tokens} reused): "
                  f"ours {done.stats.ttft_s * 1000:7.0f} ms, full prefill {full.stats.ttft_s * 1000:7.0f} ms", flush=True)
        # the scripted reply replaces the 1-token one and goes into the cache as if generated
        session.messages[-1] = Message("assistant", reply)
        session.warm()
    t1 = rows[0][3]
    print()
    print("turn  prompt  reused  ours TTFT  full-prefill TTFT  ours/turn1  full/ours")
    for turn, prompt, reused, ours, full in rows:
        print(f"{turn:4d}  {prompt:6d}  {reused:6d}  {ours * 1000:7.0f} ms  {full * 1000:11.0f} ms  "
              f"{ours / t1:9.2f}x  {full / ours:8.2f}x")
    print(f"target: ours at turn {rows[-1][0]} <= 1.5x turn 1 -> {rows[-1][3] / t1:.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("decode", "ttft"), default="decode")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=46145)
    p.add_argument("--dtype", choices=("bf16", "fp32", "fp16"), default="bf16")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--user-tokens", type=int, default=32, help="ttft mode: tokens per user message")
    p.add_argument("--reply-tokens", type=int, default=64, help="ttft mode: tokens per reply")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--quantize", choices=("int8",), help="decode mode: our side uses int8 weights")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    (ttft_mode if args.mode == "ttft" else decode_mode)(args)


if __name__ == "__main__":
    main()
