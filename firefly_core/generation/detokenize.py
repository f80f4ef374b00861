"""Streaming detokenization: token ids in, text deltas out, never half a character, and stop strings.

Byte-level BPE (BLOOM, Qwen, GPT-2) splits a Chinese character or an emoji into several byte tokens;
decoding a prefix that ends inside a character yields U+FFFD. `StreamingDetokenizer` decodes the
whole reply so far at each token (exact for every decoder, including SentencePiece's leading-space
rule, and cheap next to a forward pass) and holds back a trailing U+FFFD until the character is
complete, so the deltas concatenate to the full decode. A character still incomplete when the reply
ends (cut by max_new_tokens) is dropped.

`StopStringGuard` sits after it: text that could be the start of a stop string is held back until it
is known not to be one, so a stop string never reaches the user, not even in part.
"""

from __future__ import annotations

from typing import Any, Sequence

REPLACEMENT = "\ufffd"


class StreamingDetokenizer:
    """Turns generated token ids into text deltas that never split a character."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.emitted = ""  # text given out so far

    def decode(self, ids: Sequence[int]) -> str:
        # No clean-up of tokenization spaces: it rewrites earlier text (" ," -> ",") as tokens
        # arrive, which would break "deltas concatenate to the full decode".
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def push(self, token_id: int) -> str:
        """Add a token; return the newly complete text (maybe "")."""
        self.ids.append(int(token_id))
        text = self.decode(self.ids)
        stable = text.rstrip(REPLACEMENT)
        return self._advance(stable)

    def flush(self) -> str:
        """The rest of the text at the end of a reply (an unfinished trailing character dropped)."""
        return self._advance(self.decode(self.ids).rstrip(REPLACEMENT))

    def _advance(self, stable: str) -> str:
        if len(stable) <= len(self.emitted) or not stable.startswith(self.emitted):
            # Nothing new, or a decoder that rewrote earlier text: never take back what was shown.
            return ""
        delta = stable[len(self.emitted) :]
        self.emitted = stable
        return delta


class StopStringGuard:
    """Filters a stream of text deltas so that output ends right before the first stop string."""

    def __init__(self, stop_strings: Sequence[str]) -> None:
        self.stops = tuple(s for s in stop_strings if s)
        self.text = ""  # everything received
        self.emitted_len = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add text; return the part that is safe to show. Sets `stopped` when a stop string appears."""
        if self.stopped:
            return ""
        self.text += delta
        if not self.stops:
            out = self.text[self.emitted_len :]
            self.emitted_len = len(self.text)
            return out
        # A match cannot start inside emitted text: anything that could begin a stop string was held.
        hits = [i for i in (self.text.find(s, self.emitted_len) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            self.stopped = True
        else:
            end = len(self.text) - self._held_back()
        out = self.text[self.emitted_len : end]
        self.emitted_len = end
        return out

    def finish(self) -> str:
        """At the end of the reply, release the held-back text (it never became a stop string)."""
        if self.stopped:
            return ""
        out = self.text[self.emitted_len :]
        self.emitted_len = len(self.text)
        return out

    @property
    def output(self) -> str:
        return self.text[: self.emitted_len]

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        best = 0
        tail = self.text[self.emitted_len :]
        for s in self.stops:
            for n in range(min(len(s) - 1, len(tail)), best, -1):
                if tail.endswith(s[:n]):
                    best = n
                    break
        return best
