"""The OpenAI wire format: parsing and validating request bodies, and the error shape.

Everything a client sends is untrusted: each field is checked for type and range here, and any
problem becomes an `ApiError` (status + OpenAI's `{"error": {message, type, param, code}}` body).
Pure Python (no torch, no Starlette), so it is cheap to import and test.

What is accepted, and why the rest is refused rather than ignored:

- `messages` roles `system` (also OpenAI's newer `developer`), `user`, `assistant`; content as a
  string or a list of `{"type": "text"}` parts. Leading system messages are joined (Firefly's formats
  have one system slot); the conversation must then alternate user/assistant and end with the user.
- `temperature` (0 = greedy), `top_p`, `max_tokens` / `max_completion_tokens`, `stop` (a string or up
  to 4), `seed`, `stream`, `stream_options.include_usage`, `n` = 1; the extensions `top_k` and
  `repetition_penalty` (vLLM's names), since Firefly's recipe samples with them.
- `frequency_penalty` / `presence_penalty` other than 0 are refused (400): OpenAI's penalties subtract
  from the logits in proportion to how often a token appeared in the reply; Firefly's sampler applies
  transformers' multiplicative `repetition_penalty` over prompt and reply (the recipe's 1.2). One is
  not the other, and silently substituting it would make `firefly serve` answer differently from what
  the client asked for. Clients that want it send `repetition_penalty`.
- `logprobs`, `tools`, `response_format` other than text, images, `n` > 1, `echo`, `suffix`: refused
  (400) with a message saying so, because this server does not do them.
- Other fields (`user`, `metadata`, `store`, ...) carry no meaning for generation and are ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

MAX_STOP_STRINGS = 4  # OpenAI's limit


@dataclass
class ApiError(Exception):
    """An error answered to the client in OpenAI's shape."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def shutting_down() -> ApiError:
    """What a request still open when the server stops gets (its job was cancelled)."""
    return ApiError(503, "the server is stopping; this reply was cancelled", "server_error", code="shutting_down")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass
class SamplingRequest:
    """What a completion request asks of generation (None = the model's resolved default)."""

    model: str | None = None
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def generation_overrides(self) -> dict[str, Any]:
        """The fields the client set, named as GenerationConfig names them."""
        values = {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }
        out = {k: v for k, v in values.items() if v is not None}
        if self.temperature == 0:
            out["do_sample"] = False  # temperature 0 = greedy, as GenerationConfig also says
        if self.stop:
            out["stop_strings"] = self.stop
        return out


@dataclass
class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = field(default_factory=list)


@dataclass
class CompletionRequest(SamplingRequest):
    prompt: str = ""


# -- field readers ----------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(body: Mapping, name: str, lo: float, hi: float, *, lo_open: bool = False) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_number(v):
        raise bad_request(f"'{name}' must be a number, not {type(v).__name__}", name)
    if v < lo or v > hi or (lo_open and v == lo):
        low = f"above {lo:g}" if lo_open else f"at least {lo:g}"
        raise bad_request(f"'{name}' must be {low} and at most {hi:g} (got {v:g})", name)
    _generation_rule(name, v)
    return float(v)


def _generation_rule(name: str, value: Any) -> None:
    """The range every layer checks a generation setting with (its declaration in
    `GenerationConfig`, e.g. temperature 0 or at least 0.01: 1e-300 would overflow the logits)."""
    from firefly_core.errors import ConfigError, format_error
    from firefly_core.generation.config import GenerationConfig
    from firefly_core.setting_spec import check_setting, setting_fields

    specs = {f.name: (spec, kind) for f, spec, kind in setting_fields(GenerationConfig)}
    if name not in specs:
        return
    spec, kind = specs[name]
    try:
        check_setting(name, spec, kind, value)
    except ConfigError as e:
        message = f"'{name}' {str(e.message).removeprefix(f'{name} = {value!r} ')} (got {value!r})"
        raise bad_request(format_error(ConfigError(message, e.hint)), name) from None


def text_field(value: str, where: str, param: str) -> str:
    """`value` if it is text a tokenizer can take: JSON allows lone surrogates ("\\ud800"), which
    are not Unicode characters and make every tokenizer fail."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_request(
            f"{where} holds a lone surrogate (\\u{ord(value[e.start]):04x}), which is not a Unicode character; "
            "send valid UTF-16 pairs or plain UTF-8",
            param,
        ) from None
    return value


def _integer(body: Mapping, name: str, lo: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(f"'{name}' must be a whole number, not {type(v).__name__}", name)
    if v < lo:
        raise bad_request(f"'{name}' must be at least {lo} (got {v})", name)
    return v


def _boolean(body: Mapping, name: str) -> bool | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise bad_request(f"'{name}' must be true or false, not {type(v).__name__}", name)
    return v


def _refuse_unsupported(body: Mapping) -> None:
    for name in ("frequency_penalty", "presence_penalty"):
        v = body.get(name)
        if v is None:
            continue
        if not _is_number(v):
            raise bad_request(f"'{name}' must be a number", name)
        if v != 0:
            raise bad_request(
                f"'{name}' is not supported: Firefly penalises repeats with transformers' "
                "multiplicative repetition_penalty (over prompt and reply), not OpenAI's additive "
                "per-count penalty; send 'repetition_penalty' (e.g. 1.2) instead",
                name,
                "unsupported_parameter",
            )
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request("only n = 1 is supported (one reply per request)", "n", "unsupported_parameter")
    for name in ("logprobs", "echo"):
        if body.get(name):
            raise bad_request(f"'{name}' is not supported by this server", name, "unsupported_parameter")
    if body.get("top_logprobs"):
        raise bad_request("'top_logprobs' is not supported by this server", "top_logprobs", "unsupported_parameter")
    if body.get("suffix"):
        raise bad_request("'suffix' (insertion) is not supported by this server", "suffix", "unsupported_parameter")
    if body.get("tools") or body.get("functions"):
        raise bad_request("tool and function calling are not supported by this server", "tools", "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") in (None, "text")):
        raise bad_request("only the text response_format is supported", "response_format", "unsupported_parameter")


def _stop(body: Mapping) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad_request("'stop' must be a string or a list of strings", "stop")
    if len(items) > MAX_STOP_STRINGS:
        raise bad_request(f"'stop' takes at most {MAX_STOP_STRINGS} strings (got {len(items)})", "stop")
    if any(not s for s in items):
        raise bad_request("'stop' strings must not be empty", "stop")
    return tuple(text_field(s, "'stop'", "stop") for s in items)


def _sampling(body: Any, out: SamplingRequest) -> None:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    _refuse_unsupported(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model")
    out.model = text_field(model, "'model'", "model") if model else None
    out.stream = bool(_boolean(body, "stream"))
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise bad_request("'stream_options' must be an object", "stream_options")
        out.include_usage = bool(_boolean(opts, "include_usage"))
    max_tokens = _integer(body, "max_completion_tokens", 1)
    out.max_tokens = max_tokens if max_tokens is not None else _integer(body, "max_tokens", 1)
    out.temperature = _number(body, "temperature", 0, 2)
    out.top_p = _number(body, "top_p", 0, 1, lo_open=True)
    out.top_k = _integer(body, "top_k", 0)
    if out.max_tokens is not None:
        _generation_rule("max_new_tokens", out.max_tokens)
    out.repetition_penalty = _number(body, "repetition_penalty", 0, 10, lo_open=True)
    out.stop = _stop(body)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request("'seed' must be a whole number", "seed")
    if seed is not None and not -(2**63) <= seed < 2**64:  # what a torch generator accepts
        raise bad_request("'seed' must fit in 64 bits", "seed")
    out.seed = seed


def _content(value: Any, where: str) -> str:
    return text_field(_content_parts(value, where), where, "messages")


def _content_parts(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad_request(f"{where}: each content part must be an object with a 'type'", "messages")
            if part["type"] != "text":
                raise bad_request(
                    f"{where}: content of type {part['type']!r} is not supported (this model reads text only)",
                    "messages",
                )
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{where}: a text part needs a 'text' string", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(f"{where}: 'content' must be a string or a list of text parts", "messages")


ROLE_ALIASES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def parse_messages(raw: Any) -> list[ChatMessage]:
    """Validate `messages` into system? (user assistant)* user."""
    if raw is None:
        raise bad_request("'messages' is required", "messages")
    if not isinstance(raw, list):
        raise bad_request("'messages' must be a list of messages", "messages")
    if not raw:
        raise bad_request("'messages' must not be empty", "messages")
    out: list[ChatMessage] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"{where} must be an object with 'role' and 'content'", "messages")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLE_ALIASES:
            raise bad_request(
                f"{where}: unknown role {role!r}; use system, user or assistant", "messages", "invalid_role"
            )
        out.append(ChatMessage(ROLE_ALIASES[role], _content(m.get("content"), where)))
    # Firefly's formats have one system slot: join the leading system messages.
    systems = []
    while out and out[0].role == "system":
        systems.append(out.pop(0).content)
    for i, m in enumerate(out):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            where = f"messages[{i + len(systems)}]"
            if m.role == "system":
                raise bad_request(f"{where}: a system message is only allowed at the start", "messages")
            raise bad_request(
                f"{where} should be from the {expected}, not the {m.role} "
                "(after any system messages, user and assistant alternate, starting with the user)",
                "messages",
            )
    if not out:
        raise bad_request("'messages' needs a user message to reply to", "messages")
    if out[-1].role != "user":
        raise bad_request("the last message must be from the user (the reply is the assistant's)", "messages")
    if systems:
        out.insert(0, ChatMessage("system", "\n\n".join(systems)))
    return out


def parse_chat_request(body: Any) -> ChatRequest:
    req = ChatRequest()
    _sampling(body, req)
    req.messages = parse_messages(body.get("messages"))
    return req


def parse_completion_request(body: Any) -> CompletionRequest:
    req = CompletionRequest()
    _sampling(body, req)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of one
    if prompt is None:
        raise bad_request("'prompt' is required", "prompt")
    if not isinstance(prompt, str):
        raise bad_request("'prompt' must be a string (batches and token ids are not supported)", "prompt")
    if not prompt:
        raise bad_request("'prompt' must not be empty", "prompt")
    req.prompt = text_field(prompt, "'prompt'", "prompt")
    return req


FINISH_REASONS = {
    "stop_token": "stop",
    "stop_string": "stop",
    "max_new_tokens": "length",
    "context_full": "length",
}


def finish_reason(stop_reason: str) -> str:
    """OpenAI's finish_reason for our ReplyStats.stop_reason."""
    return FINISH_REASONS.get(stop_reason, "stop")
