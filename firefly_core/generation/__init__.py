"""Text generation: our own prefill/decode loop with a KV cache, sampling, and streaming detokenization.

Names are imported lazily (PEP 562): `firefly_core.generation.config` and `.settings` are
torch-free, so the UI can import the domain types and GENERATION_KEYS at module level; touching a
name like `generate_stream` imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "KVCache": "cache",
    "TokenCache": "cache",
    "GenerationConfig": "config",
    "ReplyDone": "config",
    "ReplyStats": "config",
    "TextDelta": "config",
    "StopStringGuard": "detokenize",
    "StreamingDetokenizer": "detokenize",
    "Decoder": "loop",
    "ModelDecoder": "loop",
    "decoder_for": "loop",
    "generate_ids": "loop",
    "generate_stream": "loop",
    "prefill_prefix": "loop",
    "TokenSampler": "sampling",
    "Continuation": "score",
    "score_continuations": "score",
    "GENERATION_KEYS": "settings",
    "resolve_generation_config": "settings",
    "generation_config_for": "settings",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
