"""The models firefly knows work out of the box: hub id, size, languages, prompt format, a note.

Sizes are approximate published figures (parameter count from the model card; download size the
16-bit weights plus tokenizer, rounded). `firefly pull` shows the exact size from the hub before it
downloads. Any other hub id or a local folder works too; the catalog only adds a known prompt
format and a description.

Why these models:
- The Firefly BLOOM models from the original Firefly project (YeungNLP): the chat models firefly-1b4,
  firefly-2b6 and firefly-2b6-v2, and the vocabulary-pruned bases bloom-1b4-zh and bloom-2b6-zh
  they were fine-tuned from (what `firefly train` starts from to reproduce Firefly).
- Qwen2.5 Instruct 0.5B / 1.5B / 3B: current small chat models trained on a lot of Chinese and
  English, with a chat template in the tokenizer, safetensors weights, no remote code, and sizes
  that run on a laptop CPU (0.5B, 1.5B) or one consumer GPU (3B).
- InternLM2.5 1.8B chat: a good small Chinese model that needs remote code, listed so the opt-in
  (`--trust-remote-code`) is visible in the catalog rather than discovered by accident.
"""

from __future__ import annotations

from dataclasses import dataclass


# What the Firefly project (github.com/yangjianxin1/Firefly) says about its models' use, plus the
# licence of the BLOOM weights they are made from. User-facing: `firefly show`, the app's catalog.
FIREFLY_LICENSE = "research use only, no commercial use (Firefly project terms); BLOOM weights: BigScience RAIL"


@dataclass(frozen=True)
class CatalogEntry:
    """One model that is known to work; `prompt_format` is a name from firefly_core.formats."""

    id: str
    params: str
    download_size_gb: float
    languages: tuple[str, ...]
    prompt_format: str
    note: str
    needs_remote_code: bool = False
    kind: str = "chat"  # "chat" (instruction-tuned) or "base" (a starting point for training)
    license: str = ""


_CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "YeungNLP/firefly-1b4", "1.4B", 2.8, ("zh", "en"), "firefly-v1",
        "Chat model of the Firefly project (YeungNLP): BLOOM with a pruned 46k vocabulary, 1.1M Chinese instructions.",
        license=FIREFLY_LICENSE,
    ),
    CatalogEntry(
        "YeungNLP/firefly-2b6", "2.6B", 5.2, ("zh", "en"), "firefly-v1",
        "Larger Firefly BLOOM chat model, 2.1M instructions; better at code, poetry and classical Chinese.",
        license=FIREFLY_LICENSE,
    ),
    CatalogEntry(
        "YeungNLP/firefly-2b6-v2", "2.6B", 5.2, ("zh", "en"), "firefly-v2",
        "Firefly 2.6B v2: trained multi-turn, prompt <s>q1</s>a1</s>q2</s>...",
        license=FIREFLY_LICENSE,
    ),
    CatalogEntry(
        "YeungNLP/bloom-1b4-zh", "1.4B", 2.8, ("zh", "en"), "firefly-v1",
        "BLOOM-1b7 with the vocabulary pruned to 46,145 zh/en tokens: the base firefly-1b4 was tuned from.",
        kind="base", license="BigScience RAIL",
    ),
    CatalogEntry(
        "YeungNLP/bloom-2b6-zh", "2.6B", 5.2, ("zh", "en"), "firefly-v1",
        "BLOOM-3b with the vocabulary pruned to 46,145 zh/en tokens: the base of firefly-2b6.",
        kind="base", license="BigScience RAIL",
    ),
    CatalogEntry(
        "Qwen/Qwen2.5-0.5B-Instruct", "0.5B", 1.0, ("zh", "en", "multilingual"), "chat_template",
        "Smallest current Chinese/English chat model here; fast on any laptop CPU.",
        license="Apache-2.0",
    ),
    CatalogEntry(
        "Qwen/Qwen2.5-1.5B-Instruct", "1.5B", 3.1, ("zh", "en", "multilingual"), "chat_template",
        "Good quality for its size; comfortable on a laptop, quick on any GPU. A good first model.",
        license="Apache-2.0",
    ),
    CatalogEntry(
        "Qwen/Qwen2.5-3B-Instruct", "3B", 6.2, ("zh", "en", "multilingual"), "chat_template",
        "Best of the small ones here; wants a GPU with 8 GB or a patient CPU.",
        license="Qwen Research (non-commercial)",
    ),
    CatalogEntry(
        "internlm/internlm2_5-1_8b-chat", "1.8B", 3.8, ("zh", "en"), "chat_template",
        "Strong small Chinese chat model; ships its own modelling code, so it needs --trust-remote-code.",
        needs_remote_code=True, license="Apache-2.0 (code), free commercial use on request (weights)",
    ),
)


def catalog() -> list[CatalogEntry]:
    """All known models, Firefly's first, then the others from small to large."""
    return list(_CATALOG)


def find_entry(id: str) -> CatalogEntry | None:
    """The catalog entry for a hub id (case-insensitive, as the hub is), or None."""
    wanted = str(id).strip().lower()
    return next((e for e in _CATALOG if e.id.lower() == wanted), None)


def prompt_format_for(model: str) -> str | None:
    """The prompt format the catalog knows for `model` (a hub id), or None for anything else."""
    entry = find_entry(model)
    return entry.prompt_format if entry else None
