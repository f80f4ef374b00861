"""What a model folder is: the one rule for "this folder holds a usable model" and its file names.

Every part that asks "is this a model folder?" (adding a local folder, listing the cache, loading,
downloading) calls the functions here, so the answer is the same everywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidModelError

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt", "vocab.txt",
)
SMALL_FILES = ("config.json", "generation_config.json", "chat_template.json", "chat_template.jinja") + TOKENIZER_FILES
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
LICENSE_PATTERN = re.compile(r"^(LICEN[CS]E|NOTICE)(\.\w+)?$", re.IGNORECASE)


def index_shards(index_file: Path) -> list[str]:
    try:
        weight_map = json.loads(index_file.read_text("utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InvalidModelError(f"the weights index {index_file.name} cannot be read: {e}") from None


def needs_remote_code(folder: Path) -> bool:
    """True when the model's config or tokenizer config maps classes to code shipped with it."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            if json.loads((Path(folder) / name).read_text("utf-8")).get("auto_map"):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


# ---------------------------------------------------------------- local state


@dataclass
class FolderStatus:
    complete: bool
    missing: list[str]


def folder_status(folder: Path) -> FolderStatus:
    """Whether a model folder (or snapshot) has a config, a tokenizer and all its weights."""
    folder = Path(folder)
    missing: list[str] = []
    if not (folder / "config.json").exists():
        missing.append("config.json")
    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        missing.append("tokenizer")
    for index in (SAFETENSORS_INDEX, PYTORCH_INDEX):
        if (folder / index).exists():
            try:
                shards = index_shards(folder / index)
            except InvalidModelError:
                missing.append(f"{index} (unreadable)")
                break
            missing += [s for s in shards if not (folder / s).exists()]
            break
    else:
        # exists() follows the snapshot symlink: a link to a blob never finished is missing
        weights = [p for p in folder.glob("*.safetensors")] + [p for p in folder.glob("*.bin")]
        if not any(p.exists() for p in weights):
            missing.append("weights")
    return FolderStatus(not missing, missing)


def check_model_folder(path: Path) -> dict[str, Any]:
    """Validate a model folder and return its config.json as a dict (clear errors otherwise)."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InvalidModelError(f"{path} has no config.json, so it is not a model folder")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise InvalidModelError(
            f"{path} has no tokenizer (tokenizer.json or tokenizer_config.json)",
            "copy the tokenizer files of the base model into the folder",
        )
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise InvalidModelError(
            f"{path} has no weights (*.safetensors or *.bin)",
            "an interrupted download? run: firefly pull <id> to resume it",
        )
    try:
        return json.loads(cfg_file.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise InvalidModelError(f"{cfg_file} is not valid JSON: {e}") from None
