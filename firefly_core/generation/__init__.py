"""Text generation: our own prefill/decode loop with a KV cache, sampling, and streaming detokenization.

Importing this package imports torch; import it lazily from UI code.
"""

from .cache import KVCache, PrefixCache
from .config import GenerationConfig, ReplyDone, ReplyStats, TextDelta
from .detokenize import StopStringGuard, StreamingDetokenizer
from .loop import Decoder, ModelDecoder, decoder_for, generate_ids, generate_stream, prefill_prefix
from .sampling import TokenSampler

__all__ = [
    "Decoder",
    "GenerationConfig",
    "KVCache",
    "ModelDecoder",
    "PrefixCache",
    "ReplyDone",
    "ReplyStats",
    "StopStringGuard",
    "StreamingDetokenizer",
    "TextDelta",
    "TokenSampler",
    "decoder_for",
    "generate_ids",
    "generate_stream",
    "prefill_prefix",
]
