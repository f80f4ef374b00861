"""A chat-ready model folder from one checkpoint of a run, so any step can be tried, not only final/.

A checkpoint (checkpoint.py) is accelerate's training state: the model's weights as trained (with
LoRA, the wrapped model's), the optimizer, RNG. To chat with it we rebuild the model the way the
run built it (the base model from RUN_DIR/train_config.json, LoRA applied with the run's settings),
load the checkpoint's weights, merge LoRA, and write a normal model folder with the same writer as
final/ (final.py), so the prompt format and stop tokens are the run's. The folder is written once
under RUN_DIR/checkpoint-models/step-N and reused; it is ours, so removing the run removes it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, InvalidModelError
from .checkpoint import STATE_FILE
from .config import CONFIG_FILE

MODELS_DIR = "checkpoint-models"
WEIGHTS_FILE = "model.safetensors"  # what accelerate's save_state writes for the (first) model


def checkpoint_model_path(run_dir: Path, checkpoint: Path) -> Path:
    return Path(run_dir) / MODELS_DIR / Path(checkpoint).name


def checkpoint_model(run_dir: Path, checkpoint: Path) -> Path:
    """The model folder of `checkpoint` (made on first use, atomically); raises FireflyError."""
    run_dir, checkpoint = Path(run_dir), Path(checkpoint)
    out = checkpoint_model_path(run_dir, checkpoint)
    if (out / "config.json").is_file():
        return out
    if not (checkpoint / STATE_FILE).is_file():
        raise InvalidModelError(f"{checkpoint} is not a complete checkpoint", "pick another checkpoint of the run")
    weights = checkpoint / WEIGHTS_FILE
    if not weights.is_file():
        raise InvalidModelError(
            f"{checkpoint.name} holds no {WEIGHTS_FILE} (a DeepSpeed checkpoint keeps sharded weights)",
            "let the run finish (final/), or merge the shards with DeepSpeed's zero_to_fp32.py",
        )
    try:
        cfg = json.loads((run_dir / CONFIG_FILE).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"cannot read the run's settings ({run_dir / CONFIG_FILE}): {e}",
                          "a checkpoint can be turned into a model only inside its run folder") from None
    if not isinstance(cfg, dict) or not cfg.get("model"):
        raise ConfigError(f"{run_dir / CONFIG_FILE} does not name the base model", "the run folder is damaged")
    return _write(cfg, weights, out)


def _write(cfg: dict, weights: Path, out: Path) -> Path:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from ..formats import resolve_format
    from ..models.catalog import prompt_format_for
    from ..models.folder import check_model_folder
    from ..models.inventory import resolve_model_path
    from ..models.loading import load_tokenizer
    from .final import save_final_model
    from .lora import apply_lora

    trust = bool(cfg.get("trust_remote_code"))
    base_path = resolve_model_path(cfg["model"])
    base_cfg = check_model_folder(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, trust_remote_code=trust)
    if cfg.get("lora"):
        model = apply_lora(model, cfg.get("lora_r", 8), cfg.get("lora_alpha", 16), cfg.get("lora_dropout", 0.0),
                           cfg.get("lora_targets"))
    state = load_file(str(weights))
    result = model.load_state_dict(state, strict=False)
    # Tied weights (lm_head = embeddings) are saved once; anything else missing means another model.
    tied = {k for k in result.missing_keys if k.endswith("lm_head.weight")}
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise InvalidModelError(
            f"{weights} does not match the run's model ({len(result.missing_keys)} weights missing, "
            f"{len(result.unexpected_keys)} unexpected)",
            "the base model changed since the run was trained; use the run's final/ or the original base",
        )
    if cfg.get("lora"):
        model = model.merge_and_unload()
    model.eval()
    tokenizer = load_tokenizer(base_path, trust)
    fmt = resolve_format(tokenizer, cfg.get("prompt_format"), prompt_format_for(cfg["model"]))  # as the run did
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_final_model(model, None, tokenizer, fmt, base_path, out, base_cfg)
