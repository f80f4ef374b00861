"""An ollama Modelfile for an exported GGUF, so `ollama create NAME -f Modelfile` works with no editing.

ollama prompts with a Go template (TEMPLATE), not the Jinja chat template, so the prompt format the
model is served with is written as a Go template here: Firefly v1 (`<s>{q}</s></s>{a}</s>`), Firefly
v2 (`<s>{q1}</s>{a1}</s>...`), and the two chat templates the catalog's families use (ChatML for
Qwen, Llama 3's headers). A system prompt goes where `formats.py` puts it (Firefly: before the first
user message, then a blank line). A chat template's built-in default system prompt (Qwen2.5's)
becomes SYSTEM. Other chat templates get no TEMPLATE line; ollama then reads the chat template from
the GGUF itself.

PARAMETERs are the model's generation defaults as every front end resolves them (generation_config
→ catalog → the user's saved settings), e.g. Firefly's temperature 0.35, top_p 0.85,
repetition_penalty 1.2. Hugging Face applies the repetition penalty to every token so far; ollama
to the last `repeat_last_n`, so that is set to -1 (the whole context) to match.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import atomic

_FIREFLY_V1 = (
    '{{- $sys := "" }}{{- if .System }}{{ $sys = printf "%s\\n\\n" .System }}{{ end }}'
    "{{- range .Messages }}"
    '{{- if eq .Role "system" }}{{ $sys = printf "%s\\n\\n" .Content }}'
    '{{- else if eq .Role "user" }}<s>{{ $sys }}{{ .Content }}</s></s>{{ $sys = "" }}'
    '{{- else if eq .Role "assistant" }}{{ .Content }}</s>'
    "{{- end }}{{- end }}"
)
_FIREFLY_V2 = (
    '<s>{{- $sys := "" }}{{- if .System }}{{ $sys = printf "%s\\n\\n" .System }}{{ end }}'
    "{{- range .Messages }}"
    '{{- if eq .Role "system" }}{{ $sys = printf "%s\\n\\n" .Content }}'
    '{{- else }}{{ $sys }}{{ .Content }}</s>{{ $sys = "" }}'
    "{{- end }}{{- end }}"
)
_CHATML = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}"
    '{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
    "{{- end }}<|im_start|>assistant\n"
)
_LLAMA3 = (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{- range .Messages }}"
    '{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}'
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def ollama_template(info: Any) -> tuple[str | None, str | None]:
    """(TEMPLATE, default SYSTEM) for the model's prompt format; TEMPLATE None = let ollama read
    the GGUF's chat template."""
    name = info.prompt_format.name
    if name == "firefly-v1":
        return _FIREFLY_V1, None
    if name == "firefly-v2":
        return _FIREFLY_V2, None
    template = getattr(info.tokenizer, "chat_template", None) or ""
    if "<|im_start|>" in template:
        return _CHATML, _default_system(info.tokenizer, "<|im_start|>system\n", "<|im_end|>")
    if "<|start_header_id|>" in template:
        return _LLAMA3, _default_system(info.tokenizer, "<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>")
    return None, None


def _default_system(tokenizer: Any, start: str, end: str) -> str | None:
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


def _generation_settings(info: Any) -> Any:
    from ..models.generation_layers import resolve_generation_config

    return resolve_generation_config(str(info.name), model_defaults=info.generation_defaults)


def _quote(text: str) -> str:
    if '"""' in text:
        raise ValueError("text with triple quotes cannot be written into a Modelfile")
    return f'"""{text}"""'


def modelfile_text(info: Any, gguf_file: str, context_length: int | None = None) -> str:
    """The Modelfile for `info`'s model whose GGUF is `gguf_file` (a path relative to the Modelfile)."""
    config = _generation_settings(info)
    template, system = ollama_template(info)
    lines = [
        f"# Firefly (流萤) model {info.name}, exported by firefly-tui ({info.prompt_format.name} prompt format).",
        "# Use it with: ollama create <name> -f Modelfile",
        f"FROM ./{gguf_file}",
    ]
    if template is not None:
        lines.append(f"TEMPLATE {_quote(template)}")
    else:
        lines.append("# TEMPLATE: ollama reads the chat template stored in the GGUF")
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    greedy = not config.do_sample or config.temperature == 0
    lines.append(f"PARAMETER temperature {0 if greedy else config.temperature:g}")
    if not greedy:
        lines.append(f"PARAMETER top_p {config.top_p:g}")
        lines.append(f"PARAMETER top_k {config.top_k if config.top_k > 0 else 0}")
    lines.append(f"PARAMETER repeat_penalty {config.repetition_penalty:g}")
    if config.repetition_penalty != 1:
        lines.append("PARAMETER repeat_last_n -1")
    lines.append(f"PARAMETER num_predict {config.max_new_tokens}")
    if context_length:
        lines.append(f"PARAMETER num_ctx {int(context_length)}")
    seen = set()
    for tid in info.stop_token_ids:
        text = info.tokenizer.convert_ids_to_tokens(int(tid))
        if text and text not in seen:
            seen.add(text)
            lines.append(f'PARAMETER stop "{text}"')
    return "\n".join(lines) + "\n"


def write_modelfile(info: Any, gguf_path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the Modelfile (default: `Modelfile` beside the GGUF), atomically; return its path."""
    gguf_path = Path(gguf_path)
    out = Path(out) if out else gguf_path.parent / "Modelfile"
    ctx = min(int(getattr(info, "context_length", 0) or 4096), 8192)
    rel = os.path.relpath(gguf_path.resolve(), out.resolve().parent)
    atomic.write_text(out, modelfile_text(info, rel, ctx))
    return out
