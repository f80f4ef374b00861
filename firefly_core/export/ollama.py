"""An ollama Modelfile for an exported GGUF, so `ollama create NAME -f Modelfile` works with no editing.

ollama prompts with a Go template (TEMPLATE), not the Jinja chat template, so the prompt format the
model is served with is written as a Go template (`formats.ollama_template`, next to the format's
other renderings): Firefly v1 (`<s>{q}</s></s>{a}</s>`), Firefly
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
from ..formats import ollama_template


def _generation_settings(info: Any) -> Any:
    from ..models.generation_layers import resolve_generation_config

    return resolve_generation_config(str(info.name), model_defaults=info.generation_defaults)


def _quote(text: str) -> str:
    if '"""' in text:
        from ..errors import ConfigError

        raise ConfigError("text with triple quotes (\"\"\") cannot be written into a Modelfile",
                          "remove the triple quotes from the system prompt, or export without --ollama")
    return f'"""{text}"""'


def modelfile_text(info: Any, gguf_file: str, context_length: int | None = None) -> str:
    """The Modelfile for `info`'s model whose GGUF is `gguf_file` (a path relative to the Modelfile)."""
    config = _generation_settings(info)
    template, system = ollama_template(info.prompt_format, info.tokenizer)
    from ..models.user_settings import load_settings

    saved_system = load_settings().for_model(str(info.name)).system
    if saved_system:  # `firefly use M --system …`: what firefly chat/serve and the app use, ollama too
        system = saved_system
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
