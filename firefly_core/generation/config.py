"""Generation settings and the events a reply streams: GenerationConfig, TextDelta, ReplyDone, ReplyStats.

Defaults are the seeds' (Firefly's `generate` call): top_p 0.85, temperature 0.35,
repetition_penalty 1.2, max_new_tokens 200, sampling on. `do_sample=False` (or temperature 0) is
greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import ConfigError
from ..setting_spec import setting

STOP_REASONS = ("stop_token", "stop_string", "max_new_tokens", "cancelled", "context_full")

# Fields with a `setting(...)` are the ones a user chooses (saved per model, per chat, set by
# flags, shown in the app): `GENERATION_KEYS` (below), the flags and the dialogs are derived from
# these declarations, and their ranges are the one rule (firefly_core/setting_spec.py) every layer
# is checked with. Floors: a temperature or repetition penalty below 0.01 scales logits by more
# than 100x (1e-300 overflows them to inf and the reply ends in NaN); 0.01 keeps even fp16 logits
# finite, and sampling below it is greedy in all but name (use temperature 0 for greedy).


@dataclass
class GenerationConfig:
    max_new_tokens: int = field(default=200, metadata=setting("longest reply in tokens", min=1))
    do_sample: bool = True
    temperature: float = field(default=0.35, metadata=setting(
        "sampling temperature; 0 = greedy", min=0.01, zero_ok=True, below_hint="use 0 for greedy decoding, else 0.01 or more"))
    top_p: float = field(default=0.85, metadata=setting("nucleus sampling: keep this share of probability", above=0, max=1))
    top_k: int = field(default=0, metadata=setting("keep the k most likely tokens; 0 = off", min=0))
    repetition_penalty: float = field(default=1.2, metadata=setting(
        "penalty for repeated tokens; 1 = none", min=0.01, max=100, below_hint="1 means no penalty; below 1 favours repeats"))
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()  # in addition to the model's own stop ids
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature == 0:  # the common convention (llama.cpp, ollama): temperature 0 = greedy
            self.do_sample = False
        self.stop_strings = tuple(self.stop_strings)
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for values transformers would also reject (or that make no sense)."""
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0 or (self.do_sample and not self.temperature > 0):
            raise ConfigError(
                f"temperature must be above 0 when sampling (got {self.temperature})",
                "use --greedy for deterministic output",
            )
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be 0 (off) or positive (got {self.top_k})")
        if not self.repetition_penalty > 0:
            raise ConfigError(f"repetition_penalty must be above 0 (got {self.repetition_penalty})")
        if any(not s for s in self.stop_strings):
            raise ConfigError("stop strings must not be empty")

    def with_overrides(self, **overrides: Any) -> "GenerationConfig":
        """A copy with the given fields changed; `None` values mean "keep"."""
        names = {f.name for f in fields(self)}
        unknown = set(overrides) - names
        if unknown:
            raise ConfigError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# The keys a user chooses (saved per model, per chat, set by flags), derived from the marks above.
GENERATION_KEYS: tuple[str, ...] = tuple(f.name for f in fields(GenerationConfig) if f.metadata.get("setting"))


@dataclass
class ReplyStats:
    prompt_tokens: int  # tokens in the prompt
    reused_tokens: int  # of those, served from the KV cache of the previous turn
    new_tokens: int
    ttft_s: float  # time to first token
    tokens_per_s: float  # decode speed (new tokens after the first / decode time)
    total_s: float
    stop_reason: str  # "stop_token" | "stop_string" | "max_new_tokens" | "cancelled" | "context_full"
    context_used: int  # prompt + new tokens
    context_length: int


@dataclass
class TextDelta:
    """A piece of the reply's text, never half a character; deltas concatenate to the reply."""

    text: str


@dataclass
class ReplyDone:
    """The end of a reply: its whole text (== the concatenated deltas) and its stats."""

    text: str
    stats: ReplyStats
    cancelled: bool
