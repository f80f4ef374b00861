"""The generation loop: prefill the prompt, then decode one token at a time, streaming text.

Shape of the loop (batch 1):

    logits = decoder.forward(prompt_ids[reused:], cache)   # prefill: [1, n] -> [1, vocab]
    repeat: token = sampler.pick(logits)                    # penalty / temperature / top-k / top-p
            stream the text delta; stop on stop id, stop string, max_new_tokens or cancel
            logits = decoder.forward([[token]], cache)      # decode step: [1, 1] -> [1, vocab]

The model is reached only through a `Decoder` (the protocol below says everything the loop uses),
so a faster decode step (int8 weights, our CPU kernels, CUDA graphs, llama.cpp) is plugged in by
setting `lm.decoder` (the model service does) or passing `decoder=`, without touching the loop.
From the LoadedModel itself the loop reads only the tokenizer (to stream text), the stop ids and
the context length. One token generator (`_tokens`) runs under `generate_stream` and
`generate_ids`; `prefill_prefix` shares its forward step.
"""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import torch

from ..errors import FireflyError, PromptTooLongError
from .cache import KVCache, PrefixCache, cache_argument, common_prefix_length, crop_cache
from .config import GenerationConfig, ReplyDone, ReplyStats, TextDelta
from .detokenize import StopStringGuard, StreamingDetokenizer
from .gemv import gemv_matmuls, wants_gemv
from .prefill import MIN_ROWS, float32_matmuls, wants_float32_prefill
from .sampling import TokenSampler


@runtime_checkable
class Decoder(Protocol):
    """Everything the loop relies on, and nothing more.

    - `vocab_size`: rows of the logits (and the largest token id + 1 the model accepts);
    - `device`: where `forward`'s ids must live (`torch.device`);
    - `new_cache()`: an empty KV cache. The loop only hands it back to `forward` and crops it with
      `cache.crop_to(length)` (or, for a transformers Cache, layer by layer: `crop_cache`) to the
      prefix it shares with the next prompt; a crop must leave exactly the first `length` positions;
    - `forward(ids, cache)`: run `ids` ([1, n] int64 on `device`) through the model, appending
      their keys/values to `cache`; return float32 logits of the last position, [1, vocab_size].
      If it raises, the loop crops the cache back to what it held before the call.

    Optional: `make_sampler(config, vocab_size, prompt_ids, device)` returning an object with
    `pick(logits) -> int` (a decoder that samples inside its own step, as gpt-fast's
    `decode_one_token` and our CUDA graph do); without it the loop uses `TokenSampler`.
    """

    vocab_size: int
    device: Any

    def new_cache(self) -> Any: ...

    def forward(self, ids: torch.Tensor, cache: Any) -> torch.Tensor: ...


def output_rows(model: Any) -> int:
    """Rows of a transformers model's logits (its lm_head), which may differ from config.vocab_size."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


class ModelDecoder:
    """The default decoder: a transformers causal LM with our preallocated `KVCache`.

    `threads` (None = leave torch's setting) is applied in the calling thread before each forward
    pass: torch's thread count is process-wide, and the app decodes in a worker thread.
    """

    def __init__(
        self,
        model: Any,
        *,
        float32_prefill: bool | None = None,
        fast_gemv: bool | None = None,
        threads: int | None = None,
    ) -> None:
        self.model = model
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.vocab_size = output_rows(model)
        self.threads = threads
        params = inspect.signature(model.forward).parameters
        # Only the last position's logits are needed; skipping the others saves a [n, vocab] GEMM.
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._cache_arg = cache_argument(model)
        # On CPUs without fast bf16 GEMM, prompts are multiplied in fp32 (see prefill.py).
        self.float32_prefill = wants_float32_prefill(model) if float32_prefill is None else float32_prefill
        # ... and decode steps (one row) use our bf16 GEMV kernel, which reads weights faster (gemv.py).
        self.fast_gemv = wants_gemv(model) if fast_gemv is None else fast_gemv

    def new_cache(self) -> Any:
        return KVCache(self.model.config)

    def forward(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        rows = ids.shape[-1]
        with float32_matmuls(self.float32_prefill and rows >= MIN_ROWS), gemv_matmuls(self.fast_gemv and rows == 1):
            out = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: cache}, **self._extra)
        return out.logits[:, -1, :].float()

    def logits(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """Like `forward`, but float32 logits of every position, [n, vocab] (for scoring)."""
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with float32_matmuls(self.float32_prefill and ids.shape[-1] >= MIN_ROWS):
            out = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: cache})
        return out.logits[0].float()


def decoder_for(lm: Any) -> Decoder:
    """The decoder attached to a LoadedModel (`lm.decoder`, set by the model service), or a
    `ModelDecoder` made once on first use for a model loaded without the service."""
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


def _check_ids(decoder: Decoder, ids: Sequence[int]) -> None:
    """Ids the model has no row for would be an IndexError deep inside the model: say so instead."""
    bad = [i for i in ids if not 0 <= i < decoder.vocab_size]
    if bad:
        raise FireflyError(
            f"the prompt has token id {bad[0]}, but the model knows only {decoder.vocab_size} tokens",
            "the tokenizer does not match the model's weights; check the model folder",
        )


def _forward_into(decoder: Decoder, prefix_cache: PrefixCache, ids: Sequence[int]) -> torch.Tensor:
    """One forward pass appending `ids` to `prefix_cache`; on any interruption the cache is cropped
    back to what `prefix_cache.ids` says it holds."""
    try:
        with torch.inference_mode():
            logits = decoder.forward(torch.tensor([list(ids)], dtype=torch.long, device=decoder.device), prefix_cache.cache)
    except BaseException:
        crop_cache(prefix_cache.cache, len(prefix_cache.ids))
        raise
    prefix_cache.ids.extend(ids)
    return logits


def _tokens(
    decoder: Decoder, prefix_cache: PrefixCache, new_ids: Sequence[int], sampler: Any, context_length: int
) -> Iterator[int]:
    """The one token generator: prefill `new_ids` (the prompt past the reused prefix), then yield
    one sampled token at a time, feeding each back before the next. The consumer stops it by not
    asking for more (stop id, stop string, max tokens, cancel); it ends by itself when the next
    token would not fit in the context window. inference_mode is entered per call, never held
    across a `yield`: it is thread-local and would leak into the consumer's code between tokens."""
    logits = _forward_into(decoder, prefix_cache, new_ids)
    while True:
        with torch.inference_mode():
            token = sampler.pick(logits)
        yield token
        if len(prefix_cache.ids) + 1 >= context_length:  # prompt + reply would pass the window
            return
        logits = _forward_into(decoder, prefix_cache, [token])


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
    _check_ids(decoder, prompt_ids)
    stop_ids = set(getattr(lm, "stop_token_ids", []) or []) | set(config.stop_token_ids)

    t_start = time.perf_counter()
    if prefix_cache is None:
        prefix_cache = PrefixCache(decoder.new_cache())
    with torch.inference_mode():
        reused = prefix_cache.reuse_for(prompt_ids)
        sampler = make_sampler(decoder, config, decoder.vocab_size, prompt_ids, decoder.device)
    detok = StreamingDetokenizer(lm.tokenizer)
    guard = StopStringGuard(config.stop_strings)

    new_tokens = 0
    ttft = 0.0
    t_first = t_start
    stop_reason = "context_full"  # what it is when the token generator ends by itself
    tokens = _tokens(decoder, prefix_cache, prompt_ids[reused:], sampler, context_length)
    try:
        for token in tokens:
            if cancel is not None and cancel.is_set():
                stop_reason = "cancelled"
                break
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
                stop_reason = "max_new_tokens"
                break
    finally:
        tokens.close()
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
    ids = [int(i) for i in ids]
    _check_ids(decoder, ids)
    keep = common_prefix_length(prefix_cache.ids, ids)
    crop_cache(prefix_cache.cache, keep)
    del prefix_cache.ids[keep:]
    if keep < len(ids):
        _forward_into(decoder, prefix_cache, ids[keep:])
    return keep


def generate_ids(
    lm: Any,
    prompt_ids: Sequence[int],
    config: GenerationConfig,
    *,
    decoder: Decoder | None = None,
) -> list[int]:
    """Token ids only (no detokenization, no stop strings): the same token generator as
    `generate_stream`, as tests and benchmarks see it.

    Stops at the model's stop ids (the stop token is included, like `model.generate`) or after
    `max_new_tokens`.
    """
    decoder = decoder or decoder_for(lm)
    prompt_ids = [int(i) for i in prompt_ids]
    _check_ids(decoder, prompt_ids)
    stop_ids = set(getattr(lm, "stop_token_ids", []) or []) | set(config.stop_token_ids)
    context_length = int(getattr(lm, "context_length", 0) or 0) or 1 << 30
    sampler = make_sampler(decoder, config, decoder.vocab_size, prompt_ids, decoder.device)
    out: list[int] = []
    tokens = _tokens(decoder, PrefixCache(decoder.new_cache()), prompt_ids, sampler, context_length)
    try:
        for token in tokens:
            out.append(token)
            if token in stop_ids or len(out) >= config.max_new_tokens:
                break
    finally:
        tokens.close()
    return out
