"""The generation loop: prefill the prompt, then decode one token at a time, streaming text.

Shape of the loop (batch 1), as gpt-fast's `generate`:

    token = decoder.prefill(prompt_ids[reused:], cache, sampler)   # [n] ids -> the first reply token
    repeat: stream the text delta; stop on stop id, stop string, max_new_tokens or cancel
            token = decoder.decode(token, cache, sampler)          # one id -> the next one

A decoder's step returns the next token: sampling happens inside the step (gpt-fast's
`decode_one_token`), so a faster step (a CUDA graph that samples on the GPU, llama.cpp) replaces
one method and the loop never sees logits. The model is reached only through a `Decoder` (below:
everything the loop relies on), set as `lm.decoder` by the model service or passed as `decoder=`.
From the LoadedModel itself the loop reads only the tokenizer (to stream text), the stop ids and the
context length. One token generator (`_tokens`) runs under `generate_stream` and `generate_ids`.
"""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any, Iterator, Sequence

import torch

from ..errors import FireflyError, PromptTooLongError
from .cache import KVCache, TokenCache, cache_argument
from .config import GenerationConfig, ReplyDone, ReplyStats, TextDelta
from .detokenize import StopStringGuard, StreamingDetokenizer
from .sampling import TokenSampler


class Decoder:
    """Everything the loop (and scoring) relies on, and nothing more.

    - `vocab_size`: rows of the logits (and the largest token id + 1 the model accepts);
    - `device`: where `forward`'s ids live and the sampler keeps its state;
    - `new_cache()`: an empty `TokenCache` (it knows its ids and crops itself);
    - `forward(ids, cache, every_position=False)`: run `ids` ([1, n] int64 on `device`) after what
      `cache` holds, appending them to it; float32 logits of the last position [1, vocab] (or of every
      position, [n, vocab], for scoring). A pass that raises leaves the cache as it was;
    - `prefill(ids, cache, sampler)` / `decode(token, cache, sampler)`: run the prompt / one token
      and return the next token id (`sampler`: the reply's `TokenSampler`). The defaults here
      sample the logits of `forward`; an engine that samples on its own device overrides them.
    """

    vocab_size: int
    device: Any

    def new_cache(self) -> TokenCache:
        raise NotImplementedError

    def forward(self, ids: torch.Tensor, cache: Any, every_position: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def prefill(self, ids: Sequence[int], cache: Any, sampler: TokenSampler) -> int:
        return sampler.pick(self.forward(ids_tensor(ids, self.device), cache))

    def decode(self, token: int, cache: Any, sampler: TokenSampler) -> int:
        return sampler.pick(self.forward(ids_tensor([token], self.device), cache))


def ids_tensor(ids: Sequence[int], device: Any) -> torch.Tensor:
    """Token ids as a decoder's `forward` takes them: [1, n] int64 on `device`."""
    return torch.tensor([list(ids)], dtype=torch.long, device=device)


def output_rows(model: Any) -> int:
    """Rows of a transformers model's logits (its lm_head), which may differ from config.vocab_size."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


class ModelDecoder(Decoder):
    """The default decoder: a transformers causal LM with our preallocated `KVCache`.

    Which CPU routine each layer multiplies with (our GEMV kernels, fp32 prompts, int8) was written
    into the layers when the model service prepared the model (cpu_route.py); a pass just runs them.
    `threads` (None = leave torch's setting) is applied in the calling thread before each pass: torch's
    thread count is process-wide, and the app decodes in a worker thread.
    """

    def __init__(self, model: Any, *, threads: int | None = None) -> None:
        self.model = model
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.vocab_size = output_rows(model)
        self.threads = threads
        # Only the last position's logits are needed to decode; skipping the others saves a
        # [n, vocab] GEMM (models without the argument compute them all and we take the last).
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        self._cache_arg = cache_argument(model)

    def new_cache(self) -> KVCache:
        return KVCache(self.model.config)

    def forward(self, ids: torch.Tensor, cache: KVCache, every_position: bool = False) -> torch.Tensor:
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        extra = {} if every_position else self._last_only
        try:
            out = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: cache}, **extra)
        except BaseException:
            cache.crop_to(len(cache.ids))  # layers a failed pass appended to go back to the ids
            raise
        cache.ids.extend(ids[0].tolist())
        return out.logits[0].float() if every_position else out.logits[:, -1, :].float()


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


def check_ids(decoder: Decoder, ids: Sequence[int]) -> None:
    """Ids the model has no row for would be an IndexError deep inside the model: say so instead."""
    bad = [i for i in ids if not 0 <= i < decoder.vocab_size]
    if bad:
        raise FireflyError(
            f"the prompt has token id {bad[0]}, but the model knows only {decoder.vocab_size} tokens",
            "the tokenizer does not match the model's weights; check the model folder",
        )


def _tokens(
    decoder: Decoder, cache: TokenCache, new_ids: Sequence[int], sampler: TokenSampler, context_length: int
) -> Iterator[int]:
    """The one token generator: prefill `new_ids` (the prompt past the reused prefix), then yield
    one token at a time, feeding each back to get the next. The consumer stops it by not asking for
    more (stop id, stop string, max tokens, cancel); it ends by itself when the next token would
    not fit in the context window. inference_mode is entered per call, never held across a
    `yield`: it is thread-local and would leak into the consumer's code between tokens."""
    with torch.inference_mode():
        token = decoder.prefill(new_ids, cache, sampler)
    while True:
        yield token
        if len(cache.ids) + 1 >= context_length:  # prompt + reply would pass the window
            return
        with torch.inference_mode():
            token = decoder.decode(token, cache, sampler)


def generate_stream(
    lm: Any,
    prompt_ids: Sequence[int],
    config: GenerationConfig | None = None,
    cancel: threading.Event | None = None,
    *,
    prefix_cache: TokenCache | None = None,
    decoder: Decoder | None = None,
) -> Iterator[TextDelta | ReplyDone]:
    """Stream the reply to `prompt_ids`: `TextDelta`s, then one `ReplyDone`.

    `prefix_cache` (a `decoder.new_cache()` kept by a chat session across turns) lets the prompt
    reuse the keys/values of the longest prefix it shares with the previous call; it is updated in
    place. `cancel.set()` from
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
    check_ids(decoder, prompt_ids)
    stop_ids = set(getattr(lm, "stop_token_ids", []) or []) | set(config.stop_token_ids)

    t_start = time.perf_counter()
    cache = decoder.new_cache() if prefix_cache is None else prefix_cache
    with torch.inference_mode():
        reused = cache.reuse_for(prompt_ids)
        sampler = TokenSampler(config, decoder.vocab_size, prompt_ids, decoder.device)
    detok = StreamingDetokenizer(lm.tokenizer)
    guard = StopStringGuard(config.stop_strings)

    new_tokens = 0
    ttft = 0.0
    t_first = t_start
    stop_reason = "context_full"  # what it is when the token generator ends by itself
    tokens = _tokens(decoder, cache, prompt_ids[reused:], sampler, context_length)
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
    prefix_cache: TokenCache,
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
    check_ids(decoder, ids)
    keep = prefix_cache.reuse_for(ids, leave=0)
    if keep < len(ids):
        with torch.inference_mode():
            decoder.forward(ids_tensor(ids[keep:], decoder.device), prefix_cache)
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
    check_ids(decoder, prompt_ids)
    stop_ids = set(getattr(lm, "stop_token_ids", []) or []) | set(config.stop_token_ids)
    context_length = int(getattr(lm, "context_length", 0) or 0) or 1 << 30
    sampler = TokenSampler(config, decoder.vocab_size, prompt_ids, decoder.device)
    out: list[int] = []
    tokens = _tokens(decoder, decoder.new_cache(), prompt_ids, sampler, context_length)
    try:
        for token in tokens:
            out.append(token)
            if token in stop_ids or len(out) >= config.max_new_tokens:
                break
    finally:
        tokens.close()
    return out
