"""The generation loop: prefill the prompt, then decode one token at a time, streaming text.

Shape of the loop (batch 1):

    logits = forward(prompt_ids[reused:], cache)        # prefill: [1, n] -> [1, vocab]
    repeat: token = sampler.pick(logits)                 # penalty / temperature / top-k / top-p
            stream the text delta; stop on stop id, stop string, max_new_tokens or cancel
            logits = forward([[token]], cache)           # decode step: [1, 1] -> [1, vocab]

The model is reached only through a `Decoder` (`new_cache()` and `forward(ids, cache)`, optionally
`make_sampler(config, vocab_size, prompt_ids, device)`), so a faster decode step (int8 weights,
CUDA graphs) can be plugged in by setting `lm.decoder` or passing `decoder=` without touching the
loop.
"""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any, Iterator, Protocol, Sequence

import torch

from ..errors import PromptTooLongError
from .cache import KVCache, PrefixCache, common_prefix_length, crop_cache
from .config import GenerationConfig, ReplyDone, ReplyStats, TextDelta
from .detokenize import StopStringGuard, StreamingDetokenizer
from .gemv import gemv_matmuls, wants_gemv
from .prefill import MIN_ROWS, float32_matmuls, wants_float32_prefill
from .sampling import TokenSampler


class Decoder(Protocol):
    """What the loop needs from a model."""

    def new_cache(self) -> Any: ...

    def forward(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """Run `ids` ([1, n] int64 on the model's device) through the model, appending to `cache`;
        return float32 logits of the last position, [1, vocab]."""
        ...


class ModelDecoder:
    """The default decoder: a transformers causal LM with our preallocated `KVCache`."""

    def __init__(
        self, model: Any, *, float32_prefill: bool | None = None, fast_gemv: bool | None = None
    ) -> None:
        self.model = model
        params = inspect.signature(model.forward).parameters
        # Only the last position's logits are needed; skipping the others saves a [n, vocab] GEMM.
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        # On CPUs without fast bf16 GEMM, prompts are multiplied in fp32 (see prefill.py).
        self.float32_prefill = wants_float32_prefill(model) if float32_prefill is None else float32_prefill
        # ... and decode steps (one row) use our bf16 GEMV kernel, which reads weights faster (gemv.py).
        self.fast_gemv = wants_gemv(model) if fast_gemv is None else fast_gemv

    def new_cache(self) -> Any:
        return KVCache(self.model.config)

    def forward(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        rows = ids.shape[-1]
        with float32_matmuls(self.float32_prefill and rows >= MIN_ROWS), gemv_matmuls(self.fast_gemv and rows == 1):
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, **self._extra)
        return out.logits[:, -1, :].float()


def decoder_for(lm: Any) -> Decoder:
    """The decoder attached to a LoadedModel (`lm.decoder`), made once on first use."""
    dec = getattr(lm, "decoder", None)
    if dec is None:
        dec = ModelDecoder(lm.model)
        try:
            lm.decoder = dec
        except AttributeError:  # a frozen/slotted stand-in: just don't memoize
            pass
    return dec


def make_sampler(decoder: Any, config: GenerationConfig, vocab_size: int, prompt_ids: Sequence[int], device: Any):
    """The decoder's own sampler when it has one (a CUDA-graph decoder samples inside its graph),
    else a `TokenSampler`; both have `pick(logits) -> int`."""
    own = getattr(decoder, "make_sampler", None)
    if own is not None:
        return own(config, vocab_size, prompt_ids, device)
    return TokenSampler(config, vocab_size, prompt_ids, device)


def _vocab_size(lm: Any) -> int:
    emb = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(lm.model.config.vocab_size)


def generate_stream(
    lm: Any,
    prompt_ids: Sequence[int],
    config: GenerationConfig | None = None,
    cancel: threading.Event | None = None,
    *,
    prefix_cache: PrefixCache | None = None,
    decoder: Decoder | None = None,
) -> Iterator[TextDelta | ReplyDone]:
    """Stream the reply to `prompt_ids`: `TextDelta`s, then one `ReplyDone`.

    `prefix_cache` (kept by a ChatSession across turns) lets the prompt reuse the keys/values of the
    longest prefix it shares with the previous call; it is updated in place. `cancel.set()` from
    another thread stops the reply between tokens (ReplyDone.cancelled is True).
    """
    config = config or GenerationConfig()
    config.validate()
    prompt_ids = [int(i) for i in prompt_ids]
    if not prompt_ids:
        raise PromptTooLongError("the prompt is empty", "send a message with some text")
    context_length = int(getattr(lm, "context_length", 0) or 0) or 1 << 30
    if len(prompt_ids) >= context_length:
        raise PromptTooLongError(
            f"the prompt is {len(prompt_ids)} tokens; the context window is {context_length}",
            "shorten the conversation (/reset) or the message",
        )
    decoder = decoder or decoder_for(lm)
    device = getattr(lm, "device", None) or next(lm.model.parameters()).device
    stop_ids = set(getattr(lm, "stop_token_ids", []) or []) | set(config.stop_token_ids)

    t_start = time.perf_counter()
    if prefix_cache is None:
        prefix_cache = PrefixCache(decoder.new_cache())
    with torch.inference_mode():
        reused = prefix_cache.reuse_for(prompt_ids)
        sampler = make_sampler(decoder, config, _vocab_size(lm), prompt_ids, device)
    detok = StreamingDetokenizer(lm.tokenizer)
    guard = StopStringGuard(config.stop_strings)

    def run(ids: list[int]) -> torch.Tensor:
        """One forward pass; on any interruption the cache is cropped back to what `ids` says."""
        try:
            with torch.inference_mode():
                logits = decoder.forward(torch.tensor([ids], dtype=torch.long, device=device), prefix_cache.cache)
        except BaseException:
            crop_cache(prefix_cache.cache, len(prefix_cache.ids))
            raise
        prefix_cache.ids.extend(ids)
        return logits

    new_tokens = 0
    ttft = 0.0
    t_first = t_start
    stop_reason = "max_new_tokens"
    # inference_mode is entered per call, never held across a `yield`: it is thread-local state and
    # would otherwise leak into the consumer's code between tokens.
    logits = run(prompt_ids[reused:])
    while True:
        if cancel is not None and cancel.is_set():
            stop_reason = "cancelled"
            break
        with torch.inference_mode():
            token = sampler.pick(logits)
        new_tokens += 1
        if new_tokens == 1:
            t_first = time.perf_counter()
            ttft = t_first - t_start
        if token in stop_ids:
            stop_reason = "stop_token"
            break
        shown = guard.feed(detok.push(token))
        if shown:
            yield TextDelta(shown)
        if guard.stopped:
            stop_reason = "stop_string"
            break
        if new_tokens >= config.max_new_tokens:
            break
        if len(prefix_cache.ids) + 1 >= context_length:  # prompt + reply would pass the window
            stop_reason = "context_full"
            break
        if cancel is not None and cancel.is_set():
            stop_reason = "cancelled"
            break
        logits = run([token])
    tail = guard.feed(detok.flush())
    tail += guard.finish()
    if guard.stopped and stop_reason != "cancelled":  # a stop string completed by the last characters
        stop_reason = "stop_string"
    if tail:
        yield TextDelta(tail)
    t_end = time.perf_counter()
    decode_s = t_end - t_first
    stats = ReplyStats(
        prompt_tokens=len(prompt_ids),
        reused_tokens=reused,
        new_tokens=new_tokens,
        ttft_s=ttft,
        tokens_per_s=(new_tokens - 1) / decode_s if new_tokens > 1 and decode_s > 0 else 0.0,
        total_s=t_end - t_start,
        stop_reason=stop_reason,
        context_used=len(prompt_ids) + new_tokens,
        context_length=context_length if context_length < 1 << 30 else 0,
    )
    yield ReplyDone(text=guard.output, stats=stats, cancelled=stop_reason == "cancelled")


def prefill_prefix(
    lm: Any,
    prefix_cache: PrefixCache,
    ids: Sequence[int],
    *,
    decoder: Decoder | None = None,
) -> int:
    """Make `prefix_cache` hold exactly `ids`, reusing the longest common prefix; return its length.

    Used to warm the cache for a conversation loaded from disk, so its next turn prefills only the
    new message.
    """
    decoder = decoder or decoder_for(lm)
    device = getattr(lm, "device", None) or next(lm.model.parameters()).device
    ids = [int(i) for i in ids]
    with torch.inference_mode():
        keep = common_prefix_length(prefix_cache.ids, ids)
        crop_cache(prefix_cache.cache, keep)
        del prefix_cache.ids[keep:]
        if keep < len(ids):
            try:
                decoder.forward(torch.tensor([ids[keep:]], dtype=torch.long, device=device), prefix_cache.cache)
            except BaseException:
                crop_cache(prefix_cache.cache, keep)
                raise
            prefix_cache.ids.extend(ids[keep:])
    return keep


def generate_ids(
    lm: Any,
    prompt_ids: Sequence[int],
    config: GenerationConfig,
    *,
    decoder: Decoder | None = None,
) -> list[int]:
    """Token ids only (no detokenization, no stop strings): the loop as tests and benchmarks see it.

    Stops at the model's stop ids (the stop token is included, like `model.generate`) or after
    `max_new_tokens`.
    """
    decoder = decoder or decoder_for(lm)
    device = getattr(lm, "device", None) or next(lm.model.parameters()).device
    stop_ids = set(getattr(lm, "stop_token_ids", []) or []) | set(config.stop_token_ids)
    sampler = make_sampler(decoder, config, _vocab_size(lm), prompt_ids, device)
    cache = decoder.new_cache()
    out: list[int] = []
    with torch.inference_mode():
        logits = decoder.forward(torch.tensor([list(prompt_ids)], dtype=torch.long, device=device), cache)
        while True:
            token = sampler.pick(logits)
            out.append(token)
            if token in stop_ids or len(out) >= config.max_new_tokens:
                return out
            logits = decoder.forward(torch.tensor([[token]], dtype=torch.long, device=device), cache)
