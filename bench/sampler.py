"""What picking one token costs on a real vocabulary: greedy vs firefly chat's default sampling.

    python bench/sampler.py [--vocab 151936] [--tokens 200] [--threads 1]

Side by side in one process, on logits shaped like a language model's (a long low tail and a few
likely tokens, a 300-token prompt for the repetition penalty), per token:

- greedy (penalty, argmax): the floor;
- the default settings (temperature 0.35, top_p 0.85, penalty 1.2) through `TokenSampler.pick`:
  top-p decided from a `torch.topk` of candidates, the draw among them (sampling.py);
- the same settings through the full filters (sort of the whole vocabulary, softmax and draw over
  it): what `pick` did before the prefilter, and what it still does when the prefilter cannot decide.

Prints the CPU and PyTorch's SIMD level. The decode step these add to is 55-57 ms for the
Qwen2.5-1.5B shape on q8_0 (issue 24), so the ratio that matters is (step + pick) / (step + greedy).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from firefly_core.generation import GenerationConfig, TokenSampler
from firefly_core.generation.sampling import top_k_filter, top_p_filter


from machine import cpu_label  # noqa: E402 - the one CPU line of bench/ (machine.py)


def lm_like_logits(vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, vocab, generator=g) * 2
    top = torch.randint(0, vocab, (12,), generator=g)
    logits[0, top] += 6 * torch.rand(12, generator=g) + 8
    return logits


def full_sort_pick(sampler: TokenSampler, logits: torch.Tensor) -> int:
    cfg = sampler.config
    scores = top_p_filter(top_k_filter(sampler._scores(logits), cfg.top_k), cfg.top_p)
    token = int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=sampler.generator)[0, 0])
    sampler.observe(token)
    return token


def per_token_ms(pick, logits_list) -> float:
    times = []
    for logits in logits_list:
        t = time.perf_counter()
        pick(logits)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_label()} · PyTorch {torch.__version__} · "
          f"{args.threads} thread(s) · vocab {args.vocab}")
    logits = [lm_like_logits(args.vocab, s) for s in range(args.tokens)]
    prompt = list(range(0, args.vocab, max(1, args.vocab // 300)))[:300]
    default = GenerationConfig(seed=0)  # temperature 0.35, top_p 0.85, top_k 0, penalty 1.2
    greedy = GenerationConfig(do_sample=False)
    for _ in range(2):  # alternate, so a busy neighbour hurts each side alike; the second round counts
        rows = {
            "greedy (penalty + argmax)": per_token_ms(TokenSampler(greedy, args.vocab, prompt).pick, logits),
            "default settings, prefilter": per_token_ms(TokenSampler(default, args.vocab, prompt).pick, logits),
            "default settings, full sort": per_token_ms(
                lambda x, s=TokenSampler(default, args.vocab, prompt): full_sort_pick(s, x), logits
            ),
        }
    base = rows["greedy (penalty + argmax)"]
    print(f"{'picking one token':32s} {'ms/token':>9s} {'vs greedy':>10s}")
    for name, ms in rows.items():
        print(f"{name:32s} {ms:9.3f} {ms / base:9.1f}x")
    step = 56.0
    pre, full = rows["default settings, prefilter"], rows["default settings, full sort"]
    print(f"with a {step:.0f} ms decode step: default/greedy decode speed = {(step + base) / (step + pre):.3f} "
          f"(prefilter), {(step + base) / (step + full):.3f} (full sort)")


if __name__ == "__main__":
    main()
