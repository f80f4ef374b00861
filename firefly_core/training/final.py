"""The final model folder: safetensors in the base model's dtype, tokenizer (with the prompt format's
Jinja chat template when it has none), and a generation config whose stop tokens are the prompt
format's, so transformers, vLLM and `firefly chat` load it as is."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import FireflyError
from ..formats import jinja_template
from ..outputs import is_disk_full, replace_folder, temp_folder


def _base_dtype(base_cfg: dict[str, Any]):
    import torch

    name = base_cfg.get("dtype") or base_cfg.get("torch_dtype") or "float32"
    return getattr(torch, str(name).replace("torch.", ""), torch.float32)


def save_final_model(model, state_dict, tokenizer, fmt, base_path: Path, out: Path, base_cfg: dict[str, Any]) -> Path:
    """Write `model` (or `state_dict` gathered from ZeRO-3) to `out`, replacing it atomically.
    Callers decide whether `out` may be replaced (`outputs.check_output`, `run_dir`)."""

    out = Path(out)
    tmp = temp_folder(out)
    try:
        _write_model_folder(model, state_dict, tokenizer, fmt, base_path, tmp, base_cfg)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise FireflyError(
                f"the disk is full: the model folder {out} could not be written",
                "free some space and run the command again (nothing was replaced); for a training run, "
                "`firefly train --out RUN_DIR --resume` writes it from the last checkpoint",
            ) from None
        raise
    replace_folder(tmp, out)
    return out


def _write_model_folder(model, state_dict, tokenizer, fmt, base_path: Path, tmp: Path, base_cfg: dict[str, Any]) -> None:
    from transformers import GenerationConfig

    dtype = _base_dtype(base_cfg)
    if state_dict is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    else:
        model = model.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    if not getattr(tokenizer, "chat_template", None):
        # Firefly's Jinja twin (formats.py): transformers' apply_chat_template and vLLM then prompt
        # the model exactly as it was trained (checked by tests/test_training.py)
        tokenizer.chat_template = jinja_template(fmt, tokenizer)
    tokenizer.save_pretrained(tmp)
    try:
        gen = GenerationConfig.from_pretrained(base_path)
    except OSError:
        gen = GenerationConfig.from_model_config(model.config)
    stops = fmt.stop_token_ids(tokenizer)
    gen.eos_token_id = stops[0] if len(stops) == 1 else stops
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(tmp)
