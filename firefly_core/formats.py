"""Prompt formats: the one place that turns a conversation into token ids (chat and training).

Three formats:

- ``firefly-v1`` (the seeds' firefly-1b4 recipe): each turn is ``<s>{user}</s></s>{assistant}</s>``.
  A single-turn prompt is ``<s>{input}</s></s>``; training renders ``<s>input</s></s>target</s>``.
- ``firefly-v2`` (multi-turn, firefly-2b6-v2): ``<s>{q1}</s>{a1}</s>{q2}</s>{a2}</s>...``.
- ``chat_template``: the tokenizer's own Jinja template (Qwen, Llama, ...).

`render` returns token ids plus a per-token "trainable" mask that is True exactly on assistant
tokens including the token that ends them (``</s>`` / ``<|im_end|>``), which is what Firefly
computes the loss on. Chat uses the same ids with `add_generation_prompt=True`, so a model is
trained and served with one format (a prompt to reply to trains nothing: its mask is all False,
and a chat template renders it in one pass). Firefly's formats have no system slot: a system prompt is put
before the first user message, separated by a blank line.

Ids are built segment by segment (special ids inserted directly, text encoded without special
tokens). Hugging Face tokenizers split on special tokens before the BPE runs, so this gives the
same ids as encoding the whole string, and it makes the masks exact by construction.

Every other rendering of a format lives here too, next to the code it must agree with, so a
change to a format is one edit: `jinja_template` (the Jinja twin written into a trained model's
tokenizer and into a GGUF's metadata, so transformers, vLLM and llama.cpp prompt as we do) and
`ollama_template` (the Go template and default system prompt of an ollama Modelfile). Tests check
each rendering against `render` (tests/test_training.py, tests/test_export_gguf.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

from .errors import ConfigError, PromptTooLongError

Role = Literal["system", "user", "assistant"]
FORMAT_NAMES = ("firefly-v1", "firefly-v2", "chat_template")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class Rendered:
    """Token ids of a rendered conversation and which of them are trained (assistant tokens)."""

    ids: list[int] = field(default_factory=list)
    trainable: list[bool] = field(default_factory=list)

    def add(self, ids: Sequence[int], trainable: bool) -> None:
        self.ids.extend(ids)
        self.trainable.extend([trainable] * len(ids))

    def __len__(self) -> int:
        return len(self.ids)


class Tokenizer(Protocol):  # the part of a transformers tokenizer we use
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def convert_tokens_to_ids(self, token: str) -> int: ...


def _split_system(messages: Sequence[Message]) -> tuple[str | None, list[Message]]:
    system = None
    rest = list(messages)
    if rest and rest[0].role == "system":
        system = rest.pop(0).content
    for i, m in enumerate(rest):
        if m.role == "system":
            raise ConfigError("a system message is only allowed first in a conversation")
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise ConfigError(f"message {i + 1} should be from the {expected}, not the {m.role}")
    return system, rest


class PromptFormat:
    """Base class: `render` a conversation; `stop_token_ids` end a reply. `jinja` and `go` are the
    format's own Jinja and ollama (Go) templates, where it has them (see `jinja_template`)."""

    name: str = ""
    jinja: str | None = None
    go: str | None = None

    def render(self, tokenizer, messages: Sequence[Message], add_generation_prompt: bool) -> Rendered:
        raise NotImplementedError

    def stop_token_ids(self, tokenizer) -> list[int]:
        ids = tokenizer.eos_token_id
        return [ids] if isinstance(ids, int) else list(ids or [])

    def __repr__(self) -> str:
        return f"<PromptFormat {self.name}>"


class _FireflyFormat(PromptFormat):
    """Shared mechanics of Firefly's `<s>`/`</s>` formats."""

    def _specials(self, tokenizer) -> tuple[int, int]:
        bos = tokenizer.convert_tokens_to_ids("<s>")
        eos = tokenizer.convert_tokens_to_ids("</s>")
        unk = getattr(tokenizer, "unk_token_id", None)
        if bos is None or eos is None or (unk is not None and unk in (bos, eos) and bos != eos):
            raise ConfigError(
                f"the {self.name} prompt format needs the tokens <s> and </s>, which this tokenizer lacks",
                "use --format chat_template (or another format) for this model",
            )
        return bos, eos

    def stop_token_ids(self, tokenizer) -> list[int]:
        return [self._specials(tokenizer)[1]]

    @staticmethod
    def _text(tokenizer, text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False) if text else []


class FireflyV1(_FireflyFormat):
    name = "firefly-v1"
    # Jinja twin (system text before the first user message, blank line between): transformers'
    # apply_chat_template gives the same text as `render`.
    jinja = (
        "{%- set ns = namespace(system='') -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] + '\n\n' -%}"
        "{%- elif m['role'] == 'user' -%}{{ '<s>' + ns.system + m['content'] + '</s></s>' }}{%- set ns.system = '' -%}"
        "{%- else -%}{{ m['content'] + '</s>' }}{%- endif -%}"
        "{%- endfor -%}"
    )
    # ollama's Go template of the same layout (.System or a system message: before the first user turn)
    go = (
        '{{- $sys := "" }}{{- if .System }}{{ $sys = printf "%s\\n\\n" .System }}{{ end }}'
        "{{- range .Messages }}"
        '{{- if eq .Role "system" }}{{ $sys = printf "%s\\n\\n" .Content }}'
        '{{- else if eq .Role "user" }}<s>{{ $sys }}{{ .Content }}</s></s>{{ $sys = "" }}'
        '{{- else if eq .Role "assistant" }}{{ .Content }}</s>'
        "{{- end }}{{- end }}"
    )

    def render(self, tokenizer, messages, add_generation_prompt):
        bos, eos = self._specials(tokenizer)
        system, turns = _split_system(messages)
        out = Rendered()
        for i in range(0, len(turns), 2):
            user = turns[i].content
            if i == 0 and system:
                user = f"{system}\n\n{user}"
            out.add([bos], False)
            out.add(self._text(tokenizer, user), False)
            out.add([eos, eos], False)
            if i + 1 < len(turns):
                out.add(self._text(tokenizer, turns[i + 1].content) + [eos], True)
        return out


class FireflyV2(_FireflyFormat):
    name = "firefly-v2"
    jinja = (
        "{{ '<s>' }}{%- set ns = namespace(system='') -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] + '\n\n' -%}"
        "{%- else -%}{{ ns.system + m['content'] + '</s>' }}{%- set ns.system = '' -%}{%- endif -%}"
        "{%- endfor -%}"
    )
    go = (
        '<s>{{- $sys := "" }}{{- if .System }}{{ $sys = printf "%s\\n\\n" .System }}{{ end }}'
        "{{- range .Messages }}"
        '{{- if eq .Role "system" }}{{ $sys = printf "%s\\n\\n" .Content }}'
        '{{- else }}{{ $sys }}{{ .Content }}</s>{{ $sys = "" }}'
        "{{- end }}{{- end }}"
    )

    def render(self, tokenizer, messages, add_generation_prompt):
        bos, eos = self._specials(tokenizer)
        system, turns = _split_system(messages)
        out = Rendered()
        out.add([bos], False)
        for i, m in enumerate(turns):
            text = m.content
            if i == 0 and system:
                text = f"{system}\n\n{text}"
            if m.role == "user":
                out.add(self._text(tokenizer, text) + [eos], False)
            else:
                out.add(self._text(tokenizer, text) + [eos], True)
        return out


class ChatTemplate(PromptFormat):
    """The tokenizer's own chat template; assistant spans found by rendering growing prefixes."""

    name = "chat_template"

    def render(self, tokenizer, messages, add_generation_prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "this tokenizer has no chat_template", "use --format firefly-v1 or firefly-v2"
            )
        _split_system(messages)  # validates roles
        dicts = [m.to_dict() for m in messages]
        full = self._text(tokenizer, dicts, add_generation_prompt)
        if add_generation_prompt:
            # A prompt to reply to: nothing in it is trained, so the assistant spans (one render of
            # the template per assistant message: quadratic in the conversation) are not needed,
            # nor must the template render earlier turns as growing prefixes.
            out = Rendered()
            out.add(tokenizer(full, add_special_tokens=False)["input_ids"], False)
            return out
        spans: list[tuple[int, int]] = []
        for i, m in enumerate(messages):
            if m.role != "assistant":
                continue
            before = self._text(tokenizer, dicts[:i], True)
            after = self._text(tokenizer, dicts[: i + 1], False)
            if not (after.startswith(before) and full.startswith(after)):
                raise ConfigError(
                    "this chat_template does not render conversations as growing prefixes, "
                    "so assistant tokens cannot be located for loss masking"
                )
            spans.append((len(before), len(after)))
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        stops = set(self.stop_token_ids(tokenizer))
        ids = list(enc["input_ids"])
        span_of = [
            next((k for k, (s, e) in enumerate(spans) if s <= start < e), None)
            for start, _ in enc["offset_mapping"]
        ]
        # Train up to and including the token that ends the reply; whatever the template adds
        # after it (e.g. the "\n" after <|im_end|>) is layout, never generated, so not trained.
        last_stop: dict[int, int] = {}
        for pos, (tid, k) in enumerate(zip(ids, span_of)):
            if k is not None and tid in stops:
                last_stop[k] = pos
        out = Rendered()
        for pos, (tid, k) in enumerate(zip(ids, span_of)):
            out.add([tid], k is not None and pos <= last_stop.get(k, len(ids)))
        return out

    @staticmethod
    def _text(tokenizer, dicts, add_generation_prompt: bool) -> str:
        if not dicts:
            # Templates cannot render an empty conversation; a generation prompt alone is the
            # difference between rendering [] and [first message], which we never need.
            return ""
        return tokenizer.apply_chat_template(
            dicts, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def stop_token_ids(self, tokenizer) -> list[int]:
        ids = set(super().stop_token_ids(tokenizer))
        for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            tid = tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None) and tid >= 0:
                ids.add(tid)
        return sorted(ids)


_FORMATS: dict[str, Callable[[], PromptFormat]] = {
    "firefly-v1": FireflyV1,
    "firefly-v2": FireflyV2,
    "chat_template": ChatTemplate,
}


def get_format(name: str) -> PromptFormat:
    try:
        return _FORMATS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown prompt format {name!r}", f"choose one of: {', '.join(FORMAT_NAMES)}"
        ) from None


def resolve_format(tokenizer, requested: str | None = None, catalog_format: str | None = None) -> PromptFormat:
    """Pick a model's format: the user's choice, else its catalog entry, else its chat_template,
    else Firefly v1 (the seeds' recipe, which our own training uses for template-less models)."""
    if requested:
        return get_format(requested)
    if catalog_format:
        return get_format(catalog_format)
    if getattr(tokenizer, "chat_template", None):
        return ChatTemplate()
    return FireflyV1()


def fit_history(
    fmt: PromptFormat,
    tokenizer,
    messages: Sequence[Message],
    max_tokens: int,
) -> tuple[list[Message], Rendered]:
    """Drop the oldest whole turns until the prompt fits in `max_tokens`.

    Keeps the system prompt and the newest user message; a turn (user + assistant) is removed
    whole, never cut in the middle. Raises `PromptTooLongError` when the system prompt plus the
    newest message alone do not fit. Returns the kept messages and their rendering (with the
    generation prompt).
    """
    system = [m for m in messages[:1] if m.role == "system"]
    turns = list(messages[len(system):])
    rendered = fmt.render(tokenizer, system + turns, add_generation_prompt=True)
    # Turns start at even indices; removing pairs keeps user/assistant alternation.
    while len(rendered) > max_tokens and len(turns) > 1:
        turns = turns[2:]
        rendered = fmt.render(tokenizer, system + turns, add_generation_prompt=True)
    if len(rendered) > max_tokens:
        raise PromptTooLongError(
            f"the message is {len(rendered)} tokens with the system prompt; the limit is {max_tokens}",
            "shorten the message or the system prompt, or lower the max new tokens setting",
        )
    return system + turns, rendered


# -- the other renderings of a format (see the module docstring) ---------------------------------------


def jinja_template(fmt: PromptFormat, tokenizer) -> str | None:
    """The Jinja chat template that prompts as `fmt` does: Firefly's twin, else the tokenizer's own
    (chat_template); None when there is none. What a GGUF's `tokenizer.chat_template` holds."""
    return fmt.jinja or getattr(tokenizer, "chat_template", None) or None


# Chat-template families ollama needs as Go templates: (marker in the Jinja template, Go template,
# where the template's own system block starts and ends — to find its built-in default system prompt).
_CHATML_GO = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}"
    '{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
    "{{- end }}<|im_start|>assistant\n"
)
_LLAMA3_GO = (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{- range .Messages }}"
    '{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}'
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
_CHAT_TEMPLATE_FAMILIES = (
    ("<|im_start|>", _CHATML_GO, "<|im_start|>system\n", "<|im_end|>"),  # ChatML (Qwen)
    ("<|start_header_id|>", _LLAMA3_GO, "<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),  # Llama 3
)


def ollama_template(fmt: PromptFormat, tokenizer) -> tuple[str | None, str | None]:
    """(TEMPLATE, default SYSTEM) of an ollama Modelfile for `fmt`. Firefly's formats have their Go
    twins; a chat template of a known family (ChatML, Llama 3) gets its Go template and its built-in
    default system prompt (Qwen2.5's); other templates get None (ollama then reads the GGUF's)."""
    if fmt.go is not None:
        return fmt.go, None
    template = getattr(tokenizer, "chat_template", None) or ""
    for marker, go, start, end in _CHAT_TEMPLATE_FAMILIES:
        if marker in template:
            return go, _default_system(tokenizer, start, end)
    return None, None


def _default_system(tokenizer, start: str, end: str) -> str | None:
    """The system prompt a chat template inserts when the conversation has none (Qwen2.5's)."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=False
        )
    except Exception:  # templates may refuse odd inputs; then there is no default to copy
        return None
    bos = getattr(tokenizer, "bos_token", None) or ""
    text = text[len(bos):] if bos and text.startswith(bos) else text
    if not text.startswith(start) or end not in text[len(start):]:
        return None
    return text[len(start): text.index(end, len(start))] or None
