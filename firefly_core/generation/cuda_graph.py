"""Fast decode on CUDA: a static KV cache sized to the context, and the decode step as a CUDA graph.

At batch 1 a decode step is a few hundred small kernels; on a fast GPU launching them from Python
costs more than running them. Capturing the step once as a CUDA graph and replaying it makes the
launch cost one call. A graph replays fixed memory addresses, so everything it touches is static:

- the KV cache is a transformers `Cache` of `StaticLayer`s allocated once for the whole context
  window (their lengths are device tensors the captured step itself advances);
- the step reads its input token from a fixed buffer and writes the token it draws to another;
- sampling runs inside the same graph, on the GPU (`DeviceSampling`: repetition penalty,
  temperature, top-k, top-p with transformers' semantics, then an exponential race that draws
  from the filtered distribution without a host round trip), so the only host synchronisation per
  token is reading the new token id.

`CudaGraphDecoder` is a `Decoder` whose `decode(token, cache, sampler)` replays the graph and
returns the token drawn inside it (gpt-fast's `decode_one_token`); `prefill` runs the prompt
eagerly through the same static cache and draws on the device too, loading the reply's settings
(`sampler.config`) into the device tensors. Multi-turn prefix reuse works because the cache crops
itself (its length is just a counter; entries past it are masked and later overwritten).

Each cache gets its own graph (captured on its first decode step, or up front by `warm_up`); caches
no longer referenced go back to a pool with their graph, so one-shot generations do not recapture.
The sampling state is the decoder's: one reply at a time (the model service's generation lock);
a decode step for another reply than the last one prefilled reloads that reply's settings.

`enable_fast_decode(lm)` turns this on for a LoadedModel when it can, and otherwise keeps the eager
loop and says why (`FastDecodePlan.reason`). On CPU the same decoder runs without a graph
(`use_graph=False`), which is how the tests check its results without a GPU.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from transformers.cache_utils import Cache, StaticLayer

from ..errors import PromptTooLongError
from .cache import TokenCache, cache_argument
from .loop import Decoder, ids_tensor, output_rows
from .sampling import apply_repetition_penalty, top_p_remove_sorted

Status = Callable[[str], None]


# --------------------------------------------------------------------------------------------- cache
class CroppableStaticLayer(StaticLayer):
    """A transformers `StaticLayer` that can be cropped (for prefix reuse): only its length changes.

    The length the model reads is the device tensor `cumulative_length` (the captured step advances
    it); `host_len` mirrors it on the host so overflow is caught before a kernel indexes past the end.
    """

    def __init__(self, max_cache_len: int, **kwargs: Any) -> None:
        super().__init__(max_cache_len, **kwargs)
        self.host_len = 0

    def crop(self, tokens_to_remove: Any) -> None:
        # Same contract as DynamicLayer.crop: a negative count of tokens to drop from the end.
        if not self.is_initialized:
            return
        self.cumulative_length.add_(tokens_to_remove)
        self.host_len = max(0, self.host_len + int(tokens_to_remove))

    def set_length(self, length: int) -> None:
        if self.is_initialized:
            self.cumulative_length.fill_(length)
        self.host_len = length


class _Slot:
    """One static cache and the graph captured against its tensors."""

    def __init__(self, num_layers: int, max_cache_len: int) -> None:
        self.cache = Cache(layers=[CroppableStaticLayer(max_cache_len) for _ in range(num_layers)])
        self.graph: Any = None  # torch.cuda.CUDAGraph once captured
        self.max_cache_len = max_cache_len

    @property
    def initialized(self) -> bool:
        return all(l.is_initialized for l in self.cache.layers)

    def set_length(self, length: int) -> None:
        for layer in self.cache.layers:
            layer.set_length(length)


class StaticCacheHandle(TokenCache):
    """What `CudaGraphDecoder.new_cache()` returns: a `TokenCache` over one pooled static slot.

    When the handle is garbage-collected its slot (cache tensors + graph) returns to the decoder's pool.
    """

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot
        self.ids = []

    @property
    def layers(self) -> list:
        return self.slot.cache.layers

    def get_seq_length(self) -> int:
        return self.slot.cache.layers[0].host_len

    def _crop_storage(self, length: int) -> None:
        self.slot.set_length(length)


# ------------------------------------------------------------------------------------------ sampling
class DeviceSampling:
    """Sampling as tensor ops with parameters in device tensors, so it can live inside a graph.

    Same semantics and order as transformers' processors (and `sampling.TokenSampler`): repetition
    penalty on every token seen (prompt + reply), then, when sampling, temperature, top-k (ties with
    the k-th kept), top-p (smallest set reaching top_p, the most likely token always kept). Greedy
    takes the argmax after the penalty.
    """

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        f32 = dict(dtype=torch.float32, device=self.device)
        self.penalty = torch.ones((), **f32)
        self.temperature = torch.ones((), **f32)
        self.top_p = torch.ones((), **f32)
        self.top_k = torch.full((), vocab_size, dtype=torch.long, device=self.device)
        self.do_sample = torch.zeros((), dtype=torch.bool, device=self.device)
        self.seen = torch.zeros(1, vocab_size, dtype=torch.bool, device=self.device)
        # Without a graph (CPU) a private generator keeps seeded runs reproducible without touching
        # torch's global RNG; inside a CUDA graph only the default CUDA generator is graph-safe.
        self.generator: torch.Generator | None = None
        if self.device.type != "cuda":
            self.generator = torch.Generator(device=self.device)

    def configure(self, config: Any, prompt_ids: Iterable[int]) -> None:
        """Load a reply's settings and its prompt (for the penalty) into the device tensors."""
        self.penalty.fill_(float(config.repetition_penalty))
        self.temperature.fill_(float(config.temperature) if config.do_sample else 1.0)
        self.top_p.fill_(float(config.top_p))
        k = int(config.top_k)
        self.top_k.fill_(min(k, self.vocab_size) if k > 0 else self.vocab_size)
        self.do_sample.fill_(bool(config.do_sample))
        self.seen.zero_()
        ids = sorted({int(i) for i in prompt_ids if 0 <= int(i) < self.vocab_size})
        if ids:
            self.seen[0, torch.tensor(ids, device=self.device)] = True
        if config.do_sample:
            if self.generator is not None:
                if config.seed is None:
                    self.generator.seed()
                else:
                    self.generator.manual_seed(int(config.seed))
            elif config.seed is not None:
                torch.cuda.manual_seed(int(config.seed))

    def penalized(self, logits: torch.Tensor) -> torch.Tensor:
        return apply_repetition_penalty(logits, self.seen, self.penalty)

    def filtered(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ascending sorted filtered scores, their token ids): what sampling draws from."""
        scores = self.penalized(logits) / self.temperature
        sorted_asc, idx = torch.sort(scores, dim=-1)  # [1, vocab] ascending, like TopPLogitsWarper
        # top-k: the k-th largest sits at index vocab - k; keep everything >= it (ties included).
        kth = sorted_asc.gather(-1, (self.vocab_size - self.top_k).view(1, 1))
        sorted_asc = sorted_asc.masked_fill(sorted_asc < kth, -float("inf"))
        # top-p on what top-k left (the order is unchanged: top-k only masks a prefix).
        remove = top_p_remove_sorted(sorted_asc, self.top_p)
        return sorted_asc.masked_fill(remove, -float("inf")), idx

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution a sampled token is drawn from, in vocabulary order (for tests)."""
        sorted_scores, idx = self.filtered(logits)
        return torch.zeros_like(logits).scatter(-1, idx, sorted_scores.softmax(dim=-1))

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token id, [1] int64, on the device; no host synchronisation."""
        greedy = self.penalized(logits).argmax(dim=-1)
        sorted_scores, idx = self.filtered(logits)
        probs = sorted_scores.softmax(dim=-1)
        # argmax(p / E) with E ~ Exp(1) i.i.d. draws index i with probability p_i (an exponential
        # race); unlike torch.multinomial it needs no host sync. The clamp keeps 0/0 (NaN) out.
        race = torch.empty_like(probs).exponential_(1.0, generator=self.generator).clamp_min_(1e-20)
        drawn = idx.gather(-1, (probs / race).argmax(dim=-1, keepdim=True)).view(1)
        return torch.where(self.do_sample, drawn, greedy)

    def observe(self, token: torch.Tensor) -> None:
        """Add `token` ([1] int64 on the device) to the penalty set."""
        self.seen.scatter_(1, token.view(1, 1), True)


# ----------------------------------------------------------------------------------------- decoder
def _num_layers(config: Any) -> int:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError("cannot tell how many layers this model has")


class CudaGraphDecoder(Decoder):
    """A `Decoder` with a static KV cache whose single-token step is replayed as a CUDA graph."""

    def __init__(
        self,
        model: Any,
        max_cache_len: int,
        *,
        status: Status | None = None,
        use_graph: bool | None = None,
    ) -> None:
        self.model = model
        p = next(model.parameters())
        self.device = p.device
        self.max_cache_len = int(max_cache_len)
        self.use_graph = (self.device.type == "cuda") if use_graph is None else use_graph
        if self.use_graph and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.status = status or (lambda _msg: None)
        self.num_layers = _num_layers(model.config)
        self._cache_arg = cache_argument(model)
        self.vocab_size = output_rows(model)
        self.sampling = DeviceSampling(self.vocab_size, self.device)
        self._sampler: Any = None  # the reply whose settings `sampling` holds
        # the graph's fixed input and output: the token fed, the token drawn
        self.ids_buf = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.token_buf = torch.zeros(1, dtype=torch.long, device=self.device)
        self._free: list[_Slot] = []
        self._pool = torch.cuda.graph_pool_handle() if self.use_graph else None
        self.capture_s: list[float] = []  # seconds spent in each capture (warm-up included)
        self.fallback_reason: str | None = None  # set if a later capture failed and we went eager

    # -- the Decoder seam -------------------------------------------------------------------------
    def new_cache(self) -> StaticCacheHandle:
        slot = self._free.pop() if self._free else _Slot(self.num_layers, self.max_cache_len)
        slot.set_length(0)
        handle = StaticCacheHandle(slot)
        weakref.finalize(handle, self._free.append, slot)
        return handle

    def forward(self, ids: torch.Tensor, cache: StaticCacheHandle, every_position: bool = False) -> torch.Tensor:
        """An eager pass through the static cache (prompts, scoring): float32 logits of the last
        position [1, vocab], or of every position [n, vocab]."""
        before = self._advance(cache, ids.shape[-1])
        keep = {} if every_position else {"logits_to_keep": 1}
        try:
            out = self.model(input_ids=ids, use_cache=True, **keep, **{self._cache_arg: cache.slot.cache})
        except BaseException:
            cache.slot.set_length(before)  # as if the pass never ran
            raise
        cache.ids.extend(ids[0].tolist())
        return out.logits[0].float() if every_position else out.logits[:, -1, :].float()

    def prefill(self, ids: Sequence[int], cache: StaticCacheHandle, sampler: Any) -> int:
        """Start a reply: load its settings (and the penalty's prompt, `cache.ids` + `ids`) into the
        device tensors, run the prompt eagerly, draw the first token on the device."""
        self._sampler = sampler
        self.sampling.configure(sampler.config, cache.ids + list(ids))
        return self._sample(self.forward(ids_tensor(ids, self.device), cache))

    def decode(self, token: int, cache: StaticCacheHandle, sampler: Any) -> int:
        """One step, replayed as a CUDA graph that also draws the next token (the one host sync)."""
        if sampler is not self._sampler:  # another reply ran on this decoder since: reload this one's
            self._sampler = sampler
            self.sampling.configure(sampler.config, cache.ids + [token])
        slot = cache.slot
        if not slot.initialized:  # nothing ran through this cache yet: no static tensors to replay
            return self._sample(self.forward(ids_tensor([token], self.device), cache))
        before = self._advance(cache, 1)
        try:
            self.ids_buf.fill_(int(token))
            if self.use_graph and slot.graph is None:
                self._capture_or_fall_back(slot)
            if self.use_graph:
                slot.graph.replay()
            else:
                self._step(slot)
        except BaseException:
            slot.set_length(before)
            raise
        cache.ids.append(int(token))
        return int(self.token_buf.item())

    def _advance(self, cache: StaticCacheHandle, n: int) -> int:
        """Move the host-side length on by `n` (the device lengths move inside the model); return
        the length before. Overflow is an error here, before a kernel indexes past the end."""
        layers = cache.slot.cache.layers
        before = layers[0].host_len
        if before + n > self.max_cache_len:
            raise PromptTooLongError(
                f"the static KV cache holds {self.max_cache_len} tokens; this step would need {before + n}",
                "start a new conversation (/reset)",
            )
        for layer in layers:
            layer.host_len += n
        return before

    def _sample(self, logits: torch.Tensor) -> int:
        token = self.sampling.sample(logits)
        self.sampling.observe(token)
        return int(token.item())

    # -- graph ------------------------------------------------------------------------------------
    def _step(self, slot: _Slot) -> None:
        """The decode step: forward one token, sample the next, all on the device (the graph body)."""
        out = self.model(input_ids=self.ids_buf, use_cache=True, logits_to_keep=1, **{self._cache_arg: slot.cache})
        token = self.sampling.sample(out.logits[:, -1, :].float())
        self.token_buf.copy_(token)
        self.sampling.observe(token)

    def _capture_or_fall_back(self, slot: _Slot) -> None:
        """Capture lazily for a new cache; if that fails mid-conversation, go on eagerly (same
        results, slower) rather than break the reply."""
        try:
            self._capture(slot)
        except Exception as e:
            self.use_graph = False
            self.fallback_reason = f"CUDA graph capture failed ({type(e).__name__}: {e}); decoding eagerly"
            self.status(self.fallback_reason)

    def _capture(self, slot: _Slot) -> None:
        t0 = time.perf_counter()
        self.status("capturing the decode step as a CUDA graph …")
        lengths = [l.cumulative_length.clone() for l in slot.cache.layers]
        seen = self.sampling.seen.clone()
        try:
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.inference_mode(), torch.cuda.stream(side):
                for _ in range(2):  # warm-up outside the graph: lazy inits, cuBLAS workspaces, allocator
                    self._step(slot)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._restore(slot, lengths, seen)
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA work of other threads (the app's UI thread) does not void the capture.
            with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                self._step(slot)
        finally:
            # The warm-up steps wrote past the cache's length and into the penalty set: undo that
            # (capture itself records kernels without running them).
            self._restore(slot, lengths, seen)
        torch.cuda.synchronize(self.device)
        slot.graph = graph
        self.capture_s.append(time.perf_counter() - t0)
        self.status(f"CUDA graph ready ({self.capture_s[-1] * 1000:.0f} ms)")

    def _restore(self, slot: _Slot, lengths: Sequence[torch.Tensor], seen: torch.Tensor) -> None:
        for layer, length in zip(slot.cache.layers, lengths):
            layer.cumulative_length.copy_(length)
        self.sampling.seen.copy_(seen)

    def warm_up(self) -> None:
        """Capture a graph now (on a pooled cache), so failures surface before the first reply."""
        handle = self.new_cache()
        with torch.inference_mode():
            self.forward(torch.zeros(1, 1, dtype=torch.long, device=self.device), handle)  # eager: allocates
            if self.use_graph and handle.slot.graph is None:
                self._capture(handle.slot)
        handle.crop_to(0)
        del handle  # back to the pool, graph included


# ------------------------------------------------------------------------------------------- policy
@dataclass
class FastDecodePlan:
    """What `enable_fast_decode` did: the decoder now attached, and why not graphed if it is not."""

    decoder: Any
    graphed: bool
    reason: str | None = None  # set when falling back to the eager loop


def cuda_graph_unavailable_reason(lm: Any) -> str | None:
    """Why the CUDA-graph path cannot serve `lm` (None when it can)."""
    device = torch.device(getattr(lm, "device", None) or next(lm.model.parameters()).device)
    if not torch.cuda.is_available():
        return f"CUDA is not available (the model is on {device}); using the eager loop"
    if device.type != "cuda":
        return f"the model is on {device}, not a CUDA GPU; using the eager loop"
    from .quantize import quantization_of

    if quantization_of(lm.model) is not None:
        return "int8 weights are a CPU feature; the graph path runs bf16/fp16 models"
    if not getattr(lm.model, "_can_compile_fullgraph", False):
        return f"{type(lm.model).__name__} does not support a static KV cache in transformers"
    layer_types = getattr(lm.model.config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return "the model has sliding-window or linear-attention layers; the static cache here is full-attention only"
    return None


def enable_fast_decode(lm: Any, *, status: Status | None = None, max_cache_len: int | None = None) -> FastDecodePlan:
    """Attach a `CudaGraphDecoder` to `lm` (as `lm.decoder`) when possible, capturing its graph now.

    Otherwise the eager decoder stays and the plan says why; `status` receives progress lines
    ("capturing …", "ready", or the reason for falling back) for the app or CLI to show.
    """
    from .loop import decoder_for

    say = status or (lambda _msg: None)
    reason = cuda_graph_unavailable_reason(lm)
    if reason is None:
        try:
            dec = CudaGraphDecoder(lm.model, max_cache_len or lm.context_length, status=say)
            dec.warm_up()
        except Exception as e:  # capture is best effort: any failure means the eager loop
            reason = f"CUDA graph capture failed ({type(e).__name__}: {e}); using the eager loop"
            try:
                torch.cuda.synchronize()
            except Exception:  # a broken capture can poison the stream; the reason says enough
                pass
        else:
            lm.decoder = dec
            return FastDecodePlan(dec, True)
    say(f"fast decode off: {reason}")
    return FastDecodePlan(decoder_for(lm), False, reason)
