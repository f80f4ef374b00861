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
    saved = _run_config(path)
    if saved is not None:
        if not saved.get("lora"):
            raise InvalidModelError(
                f"{path} is a full fine-tuning run, not a LoRA run: there is no adapter to merge",
                f"its model is {path / 'final'} once the run has finished; use it as it is",
            )
        raise InvalidModelError(
            f"the LoRA run {path} has no adapter yet: the adapter is saved when the run finishes "
            "(it was stopped, failed, or is still running)",
            f"finish it with: firefly train --out {path} --resume",
        )
    raise InvalidModelError(
        f"{path} is neither a LoRA run folder nor an adapter folder (no adapter_config.json)",
        "give the --out folder of a `firefly train --lora` run, or its adapter/ folder",
    )


def _run_config(path: Path) -> dict | None:
    """The saved train_config.json of a run folder, or None when `path` is not one."""
    import json

    try:
        data = json.loads((path / "train_config.json").read_text("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def merge_adapter(
    adapter_or_run: Path, out: Path, base: str | None = None, trust_remote_code: bool = False, force: bool = False
) -> Path:
    """Merge a LoRA adapter into its base model and save a plain model folder at `out`.

    `out` must be new or empty (or `force`), and never the run, the adapter or the base model,
    nor a folder holding one of them: checked before anything is loaded."""
    import json

    from ..models.folder import check_model_folder
    from ..models.inventory import resolve_model_path
    from ..outputs import check_output

    adapter = find_adapter(adapter_or_run)
    try:
        cfg = json.loads((adapter / "adapter_config.json").read_text("utf-8"))
    except (ValueError, RecursionError) as e:
        raise InvalidModelError(f"{adapter / 'adapter_config.json'} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise InvalidModelError(f"{adapter / 'adapter_config.json'} is not a JSON object")
    base_path = resolve_model_path(base or cfg.get("base_model_name_or_path") or "")
    run_dir = adapter.parent if _run_config(adapter.parent) is not None else adapter
    out = check_output(out, force=force, reads=[Path(adapter_or_run), adapter, run_dir, base_path])
    base_cfg = check_model_folder(base_path)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ..models.loading import load_tokenizer
    from .final import save_final_model
    from ..quiet import quiet_libraries

    quiet_libraries()
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tok_dir = adapter if (adapter / "tokenizer_config.json").is_file() else base_path
    tokenizer = load_tokenizer(tok_dir, trust_remote_code)
    fmt_name = (_run_config(run_dir) or {}).get("prompt_format") if run_dir != adapter else None
    from ..formats import resolve_format

    return save_final_model(
        merged, None, tokenizer, resolve_format(tokenizer, fmt_name), base_path, Path(out), base_cfg
    )
