"""llama.cpp as the engine behind our generation loop (CPU and Apple silicon).

llama.cpp runs the forward passes; everything that makes our chat ours stays in the loop: our
tokenizer and prompt formats, sampling semantics, stop strings, the streaming detokenizer, cancel,
stats and multi-turn prefix reuse. `LlamaCppDecoder` is a `Decoder` (generation/loop.py):

    forward(ids, cache, every_position=False) -> float32 logits of the last (or every) position

over *our* token ids (llama.cpp never tokenizes here). The KV cache lives inside one llama.cpp
context; a `LlamaCppCache` is the list of token ids a conversation believes is cached. Before each
forward the context is made to hold exactly that list: it is truncated to the prefix both share
(`llama_memory_seq_rm`, llama.cpp's KV truncation) and whatever is missing is replayed. So cropping
a cache to a shared prefix costs nothing, one conversation pays no replay, and two conversations on
one model stay correct (each switch re-prefills, as a fresh prompt would).

The GGUF it runs is made and cached by `firefly_core.export.gguf_cache` (the model service calls
it); this module only runs a given file. `available()` says whether llama-cpp-python can be used
here (None) or why not.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import FireflyError, PromptTooLongError
from ..llamacpp_lib import available, last_error as _last_error, llama_cpp_module  # noqa: F401 (available: the engine's contract)
from .cache import TokenCache, common_prefix_length
from .loop import Decoder


class LlamaCppCache(TokenCache):
    """The token ids one conversation has run through the model (what its KV cache holds)."""

    def __init__(self) -> None:
        self.ids = []

    def get_seq_length(self) -> int:
        return len(self.ids)

    def _crop_storage(self, length: int) -> None:
        pass  # only the ids: the context itself is truncated at the next forward (see _sync)


def default_threads() -> int:
    """The CPUs this process may use, halved above 4 (hyper-threads do not help a memory-bound
    decode step; llama.cpp's own advice is one thread per physical core)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return n if n <= 4 else n // 2


class LlamaCppDecoder(Decoder):
    """Forward passes through llama.cpp over our token ids (the loop's `Decoder`)."""

    def __init__(self, gguf_path: str | os.PathLike, *, n_ctx: int, threads: int | None = None, n_batch: int = 512) -> None:
        lib = llama_cpp_module()
        self._lib = lib
        self.path = Path(gguf_path)
        self.threads = int(threads or default_threads())
        mparams = lib.llama_model_default_params()
        # Metal (Apple) / GPU builds: all layers on the GPU; CPU builds ignore it.
        mparams.n_gpu_layers = -1 if lib.llama_supports_gpu_offload() else 0
        self._model = lib.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise FireflyError(
                f"llama.cpp cannot load {self.path}{_last_error()}",
                "delete the file so it is made again, or use --engine torch",
            )
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = int(n_ctx)
        cparams.n_batch = cparams.n_ubatch = int(n_batch)
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = self.threads
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lib.llama_model_free(self._model)
            self._model = None
            raise FireflyError(
                f"llama.cpp cannot create a context of {n_ctx} tokens for {self.path}{_last_error()}",
                "close other programs (memory), or use --engine torch",
            )
        self._mem = lib.llama_get_memory(self._ctx)
        self.n_ctx = int(lib.llama_n_ctx(self._ctx))
        self.vocab_size = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model)))
        self.device = torch.device("cpu")  # logits come back in host memory
        # llama.cpp may lower the batch (it is clamped to the requested context): chunk by what it took
        self.n_batch = max(1, min(int(n_batch), int(lib.llama_n_batch(self._ctx)), int(lib.llama_n_ubatch(self._ctx))))
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._held: list[int] = []  # token ids whose keys/values the context holds, in order
        self._lock = threading.Lock()

    # -- the Decoder seam
    def new_cache(self) -> LlamaCppCache:
        return LlamaCppCache()

    def forward(self, ids: torch.Tensor, cache: LlamaCppCache, every_position: bool = False) -> torch.Tensor:
        """Run `ids` ([1, n]) after what `cache` holds; the last position's logits [1, vocab], or
        every position's [n, vocab]."""
        new = [int(i) for i in ids.reshape(-1).tolist()]
        if not new:
            raise ValueError("forward needs at least one token")
        with self._lock:
            self._sync(cache.ids)
            logits = self._decode(new, want_logits=True, all_rows=every_position)
            cache.ids.extend(new)
        return logits

    # -- internals
    def _sync(self, ids: Sequence[int]) -> None:
        """Make the context hold exactly `ids`: truncate to the shared prefix, replay the rest."""
        keep = common_prefix_length(self._held, ids)
        if keep < len(self._held):
            if not self._lib.llama_memory_seq_rm(self._mem, 0, keep, -1):
                self._lib.llama_memory_clear(self._mem, True)
                keep = 0
            del self._held[keep:]
        if keep < len(ids):
            self._decode(list(ids[keep:]), want_logits=False)

    def _decode(self, ids: list[int], *, want_logits: bool, all_rows: bool = False) -> torch.Tensor | None:
        """Run `ids` after what the context holds; the last position's logits [1, vocab] when
        `want_logits`, every position's [n, vocab] with `all_rows`, else None."""
        if len(self._held) + len(ids) > self.n_ctx:
            raise PromptTooLongError(
                f"the conversation needs {len(self._held) + len(ids)} tokens; llama.cpp's context holds {self.n_ctx}",
                "shorten the conversation (/reset) or the message",
            )
        lib, batch = self._lib, self._batch
        rows: list[torch.Tensor] = []
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start : start + self.n_batch]
            last_chunk = start + self.n_batch >= len(ids)
            pos0 = len(self._held)
            batch.n_tokens = len(chunk)
            for i, tid in enumerate(chunk):
                batch.token[i] = tid
                batch.pos[i] = pos0 + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = int(all_rows)
            if last_chunk and want_logits:
                batch.logits[len(chunk) - 1] = 1
            rc = lib.llama_decode(self._ctx, batch)
            if rc != 0:
                # the context may hold part of the chunk: forget it, so the next _sync replays
                lib.llama_memory_seq_rm(self._mem, 0, pos0, -1)
                raise FireflyError(f"llama.cpp failed to run the model (code {rc}){_last_error()}", "try --engine torch")
            self._held.extend(chunk)
            if all_rows:  # read now: the next chunk's decode overwrites llama.cpp's logits buffer
                rows.append(torch.from_numpy(_as_array(lib.llama_get_logits(self._ctx), len(chunk) * self.vocab_size).copy()))
        if all_rows:
            return torch.cat(rows).view(len(ids), self.vocab_size)
        if not want_logits:
            return None
        ptr = lib.llama_get_logits_ith(self._ctx, -1)
        logits = torch.from_numpy(_as_array(ptr, self.vocab_size).copy())
        return logits.unsqueeze(0)

    @property
    def label(self) -> str:
        """What the status line shows: the engine and the GGUF it runs."""
        return f"llama.cpp, {self.threads} threads ({self.path.name})"

    def set_threads(self, threads: int) -> None:
        """Decode with `threads` from the next forward on (the model service loads the file while it
        samples the CPUs, then sets the count it chose)."""
        with self._lock:
            self._lib.llama_set_n_threads(self._ctx, int(threads), int(threads))
            self.threads = int(threads)

    def close(self) -> None:
        """Free llama.cpp's context and model now (otherwise when the decoder is collected)."""
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _as_array(ptr: Any, n: int):
    import numpy as np

    return np.ctypeslib.as_array(ptr, shape=(n,))
