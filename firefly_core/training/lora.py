"""LoRA with peft: wrapping a model for training, and merging an adapter into a plain model folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, InvalidModelError

ADAPTER_DIR = "adapter"


def apply_lora(model, r: int, alpha: int, dropout: float, targets: list[str] | None):
    """Wrap `model` with LoRA adapters; default targets: every linear layer except the output head."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets or "all-linear",  # peft's "all-linear" leaves lm_head out
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise ConfigError(f"cannot apply LoRA: {e}", "check --lora-targets against the model's module names") from None


def find_adapter(path: Path) -> Path:
    """The adapter folder of a LoRA run folder, or the adapter folder itself."""
    path = Path(path)
    for candidate in (path, path / ADAPTER_DIR):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise InvalidModelError(
        f"{path} is neither a LoRA run folder nor an adapter folder (no adapter_config.json)",
        "give the --out folder of a `firefly train --lora` run, or its adapter/ folder",
    )


def merge_adapter(adapter_or_run: Path, out: Path, base: str | None = None, trust_remote_code: bool = False) -> Path:
    """Merge a LoRA adapter into its base model and save a plain model folder at `out`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ..models.folder import check_model_folder
    from ..models.inventory import resolve_model_path
    from ..models.loading import load_tokenizer
    from .final import save_final_model

    adapter = find_adapter(adapter_or_run)
    import json

    cfg = json.loads((adapter / "adapter_config.json").read_text("utf-8"))
    base_path = resolve_model_path(base or cfg.get("base_model_name_or_path") or "")
    base_cfg = check_model_folder(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tok_dir = adapter if (adapter / "tokenizer_config.json").is_file() else base_path
    tokenizer = load_tokenizer(tok_dir, trust_remote_code)
    fmt_name = None
    run_cfg = adapter.parent / "train_config.json"
    if run_cfg.is_file():
        fmt_name = json.loads(run_cfg.read_text("utf-8")).get("prompt_format")
    from ..formats import resolve_format

    return save_final_model(
        merged, None, tokenizer, resolve_format(tokenizer, fmt_name), base_path, Path(out), base_cfg
    )
