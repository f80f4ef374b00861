"""Benchmark of `firefly serve`'s overhead: the same generation through the API and in-process.

    python bench/serve.py                   # firefly-1b4 shape, bf16, CPU: 3 alternating rounds
    python bench/serve.py --layers 2        # a quick run on a smaller shape

A random BloomForCausalLM of the firefly-1b4 shape (hidden 2048, 24 layers, 16 heads, vocab
46,145) is saved as a model folder with a byte-level BPE tokenizer padded to the same vocabulary
(every id decodes to text, so each new token is one streamed delta, as with a real model). The
server loads it through the model service; the in-process side uses the very same loaded model
(`model_service()` returns it) and the same resolved generation settings (greedy, 64 new tokens),
calling `generate_stream` directly with a fresh prefix cache, as the server gives a new conversation
(each round's prompt is new, so neither side reuses any prompt tokens; the server's count is printed).

Per round, in alternating order: in-process, then through the API (the `openai` client, streamed,
on loopback, in its own process as a real client is), or the reverse. Both are timed from the consumer's side: time to the first text, and
decode speed (tokens after the first / time after the first text). Both must produce the same text.
Printed: medians, the API's overhead relative to in-process, and (robust to a busy machine) the
overhead inside the same API requests: the client's time to first text minus the server loop's own
time to first token (`ReplyStats`), and the client's decode rate over the loop's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_folder(out: Path, args) -> Path:
    """A model folder of the requested shape with a tokenizer whose vocabulary matches it."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    from firefly_core.testkit import build_tokenizer

    if (out / "config.json").exists():
        return out
    tok = build_tokenizer("bloom", 2000)
    filler = [f"⟨{i}⟩" for i in range(args.vocab - len(tok))]
    tok.add_tokens(filler)  # ids past the BPE vocabulary decode to short text too
    assert len(tok) == args.vocab, len(tok)
    config = BloomConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, n_layer=args.layers, n_head=args.heads,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    t = time.perf_counter()
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = BloomForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(prev)
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        # No early stop: a random model with tied embeddings tends to repeat its last input token,
        # the prompt format's `</s>`. A zero row gives `</s>` logit 0, far below the best random logit.
        model.get_input_embeddings().weight[tok.eos_token_id] = 0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"built and saved a {args.layers}-layer model in {time.perf_counter() - t:.1f} s "
          f"({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params) at {out}", flush=True)
    return out


def prompt_text(round_no: int, n: int) -> str:
    """A user message of `n` filler tokens, different in every round (so neither side reuses it)."""
    return "".join(f"⟨{(round_no * 997 + i * 31) % 40000}⟩" for i in range(n))


def run_in_process(lm, prefix, ids, config):
    """generate_stream on the same model, timed the same way as the client times the API."""
    from firefly_core.generation import ReplyDone, TextDelta, generate_stream
    from firefly_core.models.service import model_service

    t0 = time.perf_counter()
    first = None
    with model_service().generation_lock(lm):
        for event in generate_stream(lm, ids, config, prefix_cache=prefix):
            if isinstance(event, TextDelta) and first is None:
                first = time.perf_counter()
            elif isinstance(event, ReplyDone):
                done = event
    end = time.perf_counter()
    return done.text, first - t0, (done.stats.new_tokens - 1) / (end - first), done.stats.new_tokens


def run_api(client, model_id, text, new_tokens):
    """Stream one reply with the openai client; (text, first-text s, tok/s, tokens)."""
    t0 = time.perf_counter()
    first = None
    parts = []
    usage = None
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": text}], temperature=0, max_tokens=new_tokens,
        stream=True, stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter()
            parts.append(chunk.choices[0].delta.content)
    end = time.perf_counter()
    tokens = usage.completion_tokens
    return "".join(parts), first - t0, (tokens - 1) / (end - first), tokens


class ApiClient:
    """The openai client in its own process, as a real client is: its parsing must not take the
    server's CPU time in this process. Jobs and results go as JSON lines over pipes."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--client", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            encoding="utf-8",
        )

    def ask(self, model_id: str, text: str, new_tokens: int):
        self.proc.stdin.write(json.dumps([model_id, text, new_tokens]) + "\n")
        self.proc.stdin.flush()
        return tuple(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def client_process(url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=3600)
    for line in sys.stdin:
        model_id, text, new_tokens = json.loads(line)
        print(json.dumps(run_api(client, model_id, text, new_tokens)), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=46145)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", type=Path, help="keep the model folder here (reused by the next run)")
    p.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # the client process
    args = p.parse_args()
    if args.client:
        return client_process(args.client)

    from firefly_core.formats import Message
    from firefly_core.generation import decoder_for
    from firefly_core.models.generation_layers import generation_config_for
    from firefly_tui.server import ApiServer, served_models

    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="firefly-bench-serve-")
        args.dir = Path(tmp.name) / "model"
    folder = build_folder(args.dir, args)
    models = served_models([str(folder)], overrides={"device": "cpu"}, log=lambda line: None)
    served = models[0]
    t = time.perf_counter()
    lm = served.load(status=lambda m: print(f"  {m}", flush=True))
    print(f"loaded through the model service in {time.perf_counter() - t:.1f} s", flush=True)
    overrides = {"temperature": 0, "max_new_tokens": args.new_tokens}
    config = generation_config_for(lm, served.name, overrides=overrides)

    rows = {"api": [], "in-process": []}
    same = []  # per API request: (client first text - server first token) s, client tok/s / server tok/s
    with ApiServer(models, port=0) as server:
        client = ApiClient(server.url)
        for r in range(args.rounds + 1):  # round 0 warms both paths up and is not counted
            text = prompt_text(r, args.prompt_tokens)
            ids = lm.prompt_format.render(lm.tokenizer, [Message("user", text)], add_generation_prompt=True).ids
            order = ("in-process", "api") if r % 2 == 0 else ("api", "in-process")
            results = {}
            for side in order:
                if side == "api":
                    results[side] = client.ask(served.id, text, args.new_tokens)
                    inside = served.finished[-1]  # the same request as the server's loop timed it
                    reused = inside.reused_tokens
                else:
                    # A fresh cache, as the server gives a new conversation (reused: 0 tokens).
                    prefix = decoder_for(lm).new_cache()
                    results[side] = run_in_process(lm, prefix, ids, config)
            a, b = results["api"], results["in-process"]
            assert a[0] == b[0] and a[3] == b[3], "the API and in-process replies differ"
            label = "warm-up" if r == 0 else f"round {r}"
            print(f"{label}: prompt {len(ids)} tokens ({reused} reused by the server), {a[3]} new · in-process first text {b[1]:.3f} s, "
                  f"{b[2]:.2f} tok/s · API first text {a[1]:.3f} s, {a[2]:.2f} tok/s "
                  f"(inside the server: {inside.ttft_s:.3f} s, {inside.tokens_per_s:.2f} tok/s)", flush=True)
            if r:
                for side in rows:
                    rows[side].append(results[side])
                same.append((a[1] - inside.ttft_s, a[2] / inside.tokens_per_s))
        client.close()

    med = {side: (statistics.median(x[1] for x in v), statistics.median(x[2] for x in v)) for side, v in rows.items()}
    print(f"\nfirefly-serve overhead, {args.layers} layers x hidden {args.hidden}, vocab {args.vocab}, bf16, "
          f"{args.new_tokens} new tokens, medians of {args.rounds} rounds:")
    print(f"  {'':12} {'first text':>11} {'tok/s':>8}")
    for side in ("in-process", "api"):
        print(f"  {side:12} {med[side][0]:>10.3f}s {med[side][1]:>8.2f}")
    ttft = med["api"][0] / med["in-process"][0] - 1
    speed = med["api"][1] / med["in-process"][1] - 1
    print(f"  API vs in-process: first text {ttft:+.1%}, tok/s {speed:+.1%}")
    # The side-by-side ratios above move with the machine's load; the overhead measured inside the
    # same requests does not: what the client waits for beyond the server's own generation timing.
    added = statistics.median(x[0] for x in same)
    rate = statistics.median(x[1] for x in same)
    print(f"  within the same API requests: first text {added * 1000:+.0f} ms over the server's own first "
          f"token ({added / med['api'][0]:+.2%}), client-side tok/s {rate - 1:+.2%} vs the server loop's")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    from machine import print_machine

    print_machine()  # every figure names its CPU
    main()
