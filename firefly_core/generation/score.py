"""Scoring continuations: how likely the model finds each continuation after a shared context.

This is what evaluation needs (lm-eval's `loglikelihood`: a multiple-choice question is one context
and one continuation per answer). The shape, batch 1:

    last = decoder.forward(context[reused:], cache)                   # prefill ONCE: [1, vocab]
    for each continuation c:
        rows = [last] + decoder.forward(c[:-1], cache, every_position)  # [len(c), vocab]: row i predicts c[i]
        logprob = sum(log_softmax(rows)[i, c[i]])        # float32 math
        greedy  = every c[i] is its row's argmax         # lm-eval's is_greedy
        crop the cache back to the context

When every continuation is one token (the usual multiple-choice case: " A", " B", ...), nothing runs
after the context's prefill: one forward pass scores them all. A `prefix` cache (a chat's, or the
previous question's with the same few-shot header) is reused for the longest prefix it shares with
the context, exactly as chat reuses it, and is left holding the context.

Works on every engine through the decoder's `forward(ids, cache, every_position=True)` (torch
eager, the CUDA-graph decoder's eager path, llama.cpp with logits for every position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import FireflyError, PromptTooLongError
from .cache import TokenCache


@dataclass(frozen=True)
class Continuation:
    """The score of one continuation after the context."""

    logprob: float  # sum over its tokens of log P(token | context, earlier tokens), float32 math
    greedy: bool  # every token is the argmax of its distribution (lm-eval's is_greedy)


def score_continuations(
    lm: Any,
    context_ids: Sequence[int],
    continuations: Sequence[Sequence[int]],
    prefix: TokenCache | None = None,
) -> list[Continuation]:
    """Score each continuation after `context_ids` with `lm` (a LoadedModel, any engine).

    The context is prefilled once (reusing what `prefix`, a `decoder.new_cache()`, already holds of
    it; it is left holding the context); each continuation runs from the cached context. Raises FireflyError for an empty context or continuation, token
    ids the model has no row for, and PromptTooLongError past the context window.
    """
    from .loop import check_ids, decoder_for, ids_tensor

    decoder = decoder_for(lm)
    context = [int(i) for i in context_ids]
    conts = [[int(i) for i in c] for c in continuations]
    if not context:
        raise FireflyError("scoring needs a context of at least one token", "start the context with the BOS/EOS token, as lm-eval does")
    if any(not c for c in conts):
        raise FireflyError("a continuation to score is empty", "every answer must have at least one token")
    check_ids(decoder, context + [i for c in conts for i in c])
    window = int(getattr(lm, "context_length", 0) or 0) or 1 << 30
    longest = len(context) + max((len(c) for c in conts), default=0)
    if longest > window:
        raise PromptTooLongError(
            f"context and continuation need {longest} tokens; the context window is {window}",
            "truncate the context from the left",
        )

    cache = prefix if prefix is not None else decoder.new_cache()
    with torch.inference_mode():
        reused = cache.reuse_for(context)  # keeps at least one token to run: its logits start every continuation
        last = decoder.forward(ids_tensor(context[reused:], decoder.device), cache).float()  # [1, vocab]
        out = []
        for cont in conts:
            rows = last
            if len(cont) > 1:
                try:
                    more = decoder.forward(ids_tensor(cont[:-1], decoder.device), cache, every_position=True)
                    rows = torch.cat([last, more.float()])  # [len(cont), vocab]
                finally:
                    cache.crop_to(len(context))
            out.append(_score_rows(rows, cont))
    return out


def _score_rows(rows: torch.Tensor, cont: Sequence[int]) -> Continuation:
    """rows[i] predicts cont[i]: summed log-probabilities, and whether each token is the argmax."""
    logp = torch.log_softmax(rows.float(), dim=-1)
    target = torch.tensor(cont, dtype=torch.long, device=rows.device).unsqueeze(-1)
    picked = logp.gather(-1, target).squeeze(-1)
    greedy = bool((rows.argmax(dim=-1) == target.squeeze(-1)).all())
    return Continuation(logprob=float(picked.sum()), greedy=greedy)
