"""What one client may cost `firefly serve`: body size, read timeouts, connections, prompt length.

A local server that one request can take down is a denial of service waiting for a web page or a
script to find it, so every resource a client controls has a bound here, in one place:

- the request body: at most `max_body_bytes`, counted while it is read, whatever the transfer
  encoding (a chunked body has no Content-Length to check first), and read within `body_timeout_s`;
- the request head: complete within `header_timeout_s` of the connection opening (or of the
  previous reply on a kept-alive connection), else the connection is closed (slowloris);
- idle kept-alive connections: closed after `keep_alive_s` (uvicorn's `timeout_keep_alive`);
- open connections: at most `max_connections` (beyond that a new one is closed at once, so file
  descriptors never run out), and at most that many requests in flight (uvicorn's
  `limit_concurrency` answers 503 beyond it);
- the prompt: refused before rendering and tokenizing when its text is longer than the context
  window could hold at the tokenizer's longest token (`prompt_char_limit`), or it has more messages
  than the window has tokens (`check_prompt_size`), so rendering and tokenizing are bounded work.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerLimits:
    """The bounds above; tests shorten the timeouts."""

    max_body_bytes: int = 16 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_s: float = 5.0
    max_connections: int = 256
    max_header_bytes: int = 64 * 1024  # h11's limit on an incomplete request head


DEFAULT_LIMITS = ServerLimits()

_LONGEST_TOKEN: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of `tokenizer` can stand for (an upper bound, computed once).

    A vocabulary entry's spelling is at least as long as the text it decodes to: byte-level BPE
    spells each byte as one character, SentencePiece spells text as text (and a byte-fallback token
    `<0xE4>` as six characters for one byte), added tokens are their own text."""
    try:
        return _LONGEST_TOKEN[tokenizer]
    except (KeyError, TypeError):
        pass
    vocab = tokenizer.get_vocab()
    longest = max((len(t) for t in vocab), default=1)
    try:
        _LONGEST_TOKEN[tokenizer] = max(1, longest)
    except TypeError:  # not weak-referenceable: computed again next time
        pass
    return max(1, longest)


def prompt_char_limit(lm: Any) -> int | None:
    """The longest prompt text (in characters) that could still fit `lm`'s context window: any
    longer text needs more tokens than the window holds, whatever it says. None = no window known."""
    context = int(getattr(lm, "context_length", 0) or 0)
    if context <= 0:
        return None
    return context * longest_token_chars(lm.tokenizer)


def prompt_chars(request: Any) -> int:
    """The characters of text a request brings (the prompt, or every message's content)."""
    prompt = getattr(request, "prompt", None)
    if isinstance(prompt, str) and prompt:
        return len(prompt)
    return sum(len(m.content) for m in getattr(request, "messages", ()))


def check_prompt_size(lm: Any, request: Any) -> None:
    """Refuse (400 context_length_exceeded) a prompt that cannot fit `lm`'s context window, before
    any rendering or tokenizing: a 15 MB prompt used to cost tens of seconds of CPU and gigabytes
    first. Two cheap bounds: its text is longer than `prompt_char_limit`, or it has more messages
    than the window has tokens (each message renders to at least one token: its role marker)."""
    from .protocol import ApiError

    context = int(getattr(lm, "context_length", 0) or 0)
    limit = prompt_char_limit(lm)
    chars = prompt_chars(request)
    messages = len(getattr(request, "messages", ()))
    param = "messages" if messages else "prompt"
    if limit is not None and chars > limit:
        raise ApiError(
            400,
            f"the prompt is {chars} characters; this model's context window is {context} "
            f"tokens, which hold at most {limit} characters of text",
            param=param,
            code="context_length_exceeded",
        )
    if context and messages > context:
        raise ApiError(
            400,
            f"the conversation has {messages} messages; this model's context window is {context} tokens, "
            "and each message takes at least one",
            param=param,
            code="context_length_exceeded",
        )
