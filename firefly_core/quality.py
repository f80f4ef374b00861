"""What int8 weights cost in quality: perplexity on held-out text and greedy agreement, int8 vs bf16.

Random test-kit models are untrained, so their perplexity says nothing. `measure_int8_quality`
first trains a small BLOOM on the kit corpus on CPU, keeping every `heldout_every`-th line out of
training, then compares the same weights in bf16 and int8. The corpus is tiny (34 lines), so the
default 80 steps stop near the best held-out perplexity; longer training memorizes the training
lines and held-out perplexity climbs again. The comparison:

- perplexity (teacher-forced, per token) on the held-out lines and on the training lines;
- greedy agreement over prompts (the opening characters of every line): `token_agreement` is the
  share of positions where the int8 model's top-1 token equals bf16's along bf16's own greedy
  continuation (teacher-forced, so one early difference does not count many times);
  `sequence_agreement` is the share of prompts whose free-running greedy continuations (through
  our own generation loop) are identical token for token.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import torch

from .generation.quantize import quantize_int8


@dataclass
class QualityReport:
    steps: int
    train_loss: float  # mean loss of the last 20 training steps (fp32)
    train_s: float
    heldout_lines: int
    heldout_tokens: int
    ppl_heldout_bf16: float
    ppl_heldout_int8: float
    ppl_train_bf16: float
    ppl_train_int8: float
    prompts: int
    new_tokens: int
    token_agreement: float
    sequence_agreement: float
    quantized_lm_head: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"trained {self.steps} steps ({self.train_s:.1f} s, final loss {self.train_loss:.3f}); "
            f"held-out perplexity bf16 {self.ppl_heldout_bf16:.3f} vs int8 {self.ppl_heldout_int8:.3f} "
            f"({100 * (self.ppl_heldout_int8 / self.ppl_heldout_bf16 - 1):+.2f} %), "
            f"training-text perplexity bf16 {self.ppl_train_bf16:.3f} vs int8 {self.ppl_train_int8:.3f}; "
            f"greedy top-1 agreement {100 * self.token_agreement:.1f} % of {self.prompts * self.new_tokens} "
            f"tokens, identical continuations {100 * self.sequence_agreement:.0f} % of {self.prompts} prompts "
            f"(lm_head {'int8' if self.quantized_lm_head else 'bf16'})"
        )


def split_corpus(lines: Sequence[str], heldout_every: int = 5) -> tuple[list[str], list[str]]:
    """Every `heldout_every`-th non-empty line is held out; the rest is for training."""
    lines = [l for l in lines if l.strip()]
    heldout = [l for i, l in enumerate(lines) if i % heldout_every == heldout_every - 1]
    train = [l for i, l in enumerate(lines) if i % heldout_every != heldout_every - 1]
    return train, heldout


def _encode_lines(tokenizer, lines: Iterable[str]) -> list[list[int]]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [[bos] + tokenizer.encode(l, add_special_tokens=False) + [eos] for l in lines]


def train_kit_model(
    train_lines: Sequence[str],
    *,
    steps: int = 80,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    vocab_size: int = 400,
    seq_len: int = 48,
    batch: int = 8,
    lr: float = 3e-3,
):
    """A small BLOOM trained on `train_lines` with the kit tokenizer: (model fp32 eval, tokenizer, last loss)."""
    from transformers import BloomConfig, BloomForCausalLM

    from .testkit import build_tokenizer

    tok = build_tokenizer("bloom", vocab_size)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    config = BloomConfig(
        vocab_size=len(tok), hidden_size=hidden, n_layer=layers, n_head=heads,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = BloomForCausalLM(config).train()
    stream = [t for ids in _encode_lines(tok, train_lines) for t in ids]  # packed, like pre-training
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps))
    losses: list[float] = []
    for _ in range(steps):
        starts = [rng.randrange(0, max(1, len(stream) - seq_len)) for _ in range(batch)]
        x = torch.tensor([stream[s : s + seq_len] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    tail = losses[-20:]
    return model, tok, sum(tail) / len(tail)


@torch.inference_mode()
def perplexity(model, tokenizer, lines: Sequence[str]) -> tuple[float, int]:
    """exp(mean next-token negative log-likelihood) over all tokens of `lines`, each line on its own."""
    total, count = 0.0, 0
    for ids in _encode_lines(tokenizer, lines):
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
        total += float(nll)
        count += len(ids) - 1
    return math.exp(total / count), count


def _loaded(model, tokenizer):
    """A minimal LoadedModel-like object so our generation loop can drive `model`."""
    from .formats import get_format
    from .models.loading import LoadedModel

    p = next(model.parameters())
    return LoadedModel(
        model=model, tokenizer=tokenizer, device=p.device, dtype=p.dtype, path=None, name="kit",
        prompt_format=get_format("firefly-v1"), context_length=2048,
        generation_defaults={"eos_token_id": tokenizer.eos_token_id},
    )


@torch.inference_mode()
def greedy_agreement(
    ref_model, test_model, tokenizer, prompts: Sequence[list[int]], new_tokens: int = 24
) -> tuple[float, float]:
    """(token_agreement, sequence_agreement) of `test_model` against `ref_model`, greedy, no penalty."""
    from .generation import GenerationConfig, generate_ids

    cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, repetition_penalty=1.0)
    # No stop ids: every prompt yields exactly `new_tokens` comparable tokens.
    ref_lm, test_lm = _loaded(ref_model, tokenizer), _loaded(test_model, tokenizer)
    ref_lm.generation_defaults = test_lm.generation_defaults = {}
    agree = total = same = 0
    for prompt in prompts:
        ref_out = generate_ids(ref_lm, prompt, cfg)
        test_out = generate_ids(test_lm, prompt, cfg)
        same += int(ref_out == test_out)
        # Teacher-forced: the test model's top-1 at every position of the reference continuation.
        x = torch.tensor([list(prompt) + ref_out[:-1]])
        top1 = test_model(input_ids=x).logits[0, len(prompt) - 1 :].argmax(-1).tolist()
        agree += sum(int(a == b) for a, b in zip(top1, ref_out))
        total += len(ref_out)
    return agree / total, same / len(prompts)


def measure_int8_quality(
    *,
    steps: int = 80,
    seed: int = 0,
    quantize_lm_head: bool = True,
    new_tokens: int = 24,
    prompt_chars: int = 4,
    lines: Sequence[str] | None = None,
) -> QualityReport:
    """Train a kit model, then compare its bf16 and int8 versions (see the module docstring)."""
    from .testkit import kit_corpus

    train_lines, heldout = split_corpus(lines if lines is not None else kit_corpus().splitlines())
    t0 = time.perf_counter()
    model, tok, last_loss = train_kit_model(train_lines, steps=steps, seed=seed)
    train_s = time.perf_counter() - t0
    bf16 = model.to(torch.bfloat16)
    int8 = copy.deepcopy(bf16)
    quantize_int8(int8, skip=() if quantize_lm_head else ("lm_head",))
    ppl_h_b, n_h = perplexity(bf16, tok, heldout)
    ppl_h_q, _ = perplexity(int8, tok, heldout)
    ppl_t_b, _ = perplexity(bf16, tok, train_lines)
    ppl_t_q, _ = perplexity(int8, tok, train_lines)
    all_lines = train_lines + heldout
    prompts = [[tok.bos_token_id] + tok.encode(l[:prompt_chars], add_special_tokens=False) for l in all_lines]
    tok_agree, seq_agree = greedy_agreement(bf16, int8, tok, prompts, new_tokens)
    return QualityReport(
        steps=steps, train_loss=last_loss, train_s=train_s, heldout_lines=len(heldout), heldout_tokens=n_h,
        ppl_heldout_bf16=ppl_h_b, ppl_heldout_int8=ppl_h_q, ppl_train_bf16=ppl_t_b, ppl_train_int8=ppl_t_q,
        prompts=len(prompts), new_tokens=new_tokens, token_agreement=tok_agree, sequence_agreement=seq_agree,
        quantized_lm_head=quantize_lm_head,
    )
