"""Loading a model and its tokenizer: where it comes from, which device and dtype, safely.

A model is a local folder or a Hugging Face id already in the standard HF cache (we never
download here; `firefly pull` does). Defaults are safe: safetensors preferred, `.bin` only through
torch's weights-only loader (transformers' default), `trust_remote_code` off unless asked.

Front ends do not call `load_model` themselves: they ask the model service
(`firefly_core.models.service.model_service().get(...)`), which loads once, shares, and prepares
the model for chat. `load_model` itself is safe to call from several threads (one lock around
transformers' loading, which patches process-wide torch state).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FireflyError, InvalidModelError, OutOfMemoryError, RemoteCodeError
from ..formats import PromptFormat, resolve_format
from .folder import check_model_folder
from .inventory import resolve_model_path

# transformers' loading patches process-wide torch state (init functions, default dtype, meta
# device contexts): two loads at once gave a silently random lm_head, then "Cannot copy out of meta
# tensor" for every later load. Every load in the process goes through this one lock.
_LOAD_LOCK = threading.RLock()

OOM_HINT = (
    "try a smaller model, --dtype bfloat16 or float16, --device cpu, "
    "or close other programs using the device"
)


@dataclass
class LoadedModel:
    """A model ready to generate: the torch module, its tokenizer and how to prompt it."""

    model: Any
    tokenizer: Any
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    path: Path
    name: str
    prompt_format: PromptFormat
    context_length: int
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    # Set by the model service (firefly_core.models.service) when it prepares the model for chat:
    # the decoder the loop uses (`generation.loop.decoder_for`), the engine behind it, and the lock
    # that keeps generations one at a time. `dataclasses.replace` copies them, so a copy with
    # another prompt format shares the decoder and the lock.
    decoder: Any = field(default=None, repr=False, compare=False)
    engine: str = "torch"
    generation_lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)
    notes: tuple[str, ...] = ()  # what the preparation decided and why ("PyTorch kernels: …")

    @property
    def stop_token_ids(self) -> list[int]:
        ids = set(self.prompt_format.stop_token_ids(self.tokenizer))
        eos = self.generation_defaults.get("eos_token_id")
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(eos)
        return sorted(ids)

def pick_device(requested: str | None = None):
    """`cuda:N` when available, else `mps`, else cpu; `requested` wins ("cuda", "cuda:1", "cpu")."""
    import torch

    if requested and requested != "auto":
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise FireflyError(f"device {requested!r} asked for, but CUDA is not available", "use --device cpu")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise FireflyError(f"device {requested!r} asked for, but MPS is not available", "use --device cpu")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DTYPES = {
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "fp32": "float32", "float32": "float32", "float": "float32",
}


def pick_dtype(device, requested: str | None = None):
    """bf16 where the device handles it well (CUDA with bf16 support, CPU), else fp16 on GPUs
    without bf16, fp32 on MPS; `requested` wins."""
    import torch

    if requested and requested != "auto":
        try:
            return getattr(torch, _DTYPES[requested.lower()])
        except KeyError:
            raise FireflyError(f"unknown dtype {requested!r}", "use bf16, fp16 or fp32") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16
    return torch.float32


def _context_length(config, tokenizer) -> int:
    for attr in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 1_000_000:
        return tml
    return 2048  # BLOOM (ALiBi) has no position limit; 2048 is its pre-training length


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        with _LOAD_LOCK:
            return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise RemoteCodeError(f"the tokenizer of {path} needs remote code", "pass --trust-remote-code if you trust it") from None
        raise InvalidModelError(f"cannot load the tokenizer in {path}: {e}") from None


def embedding_rows(model) -> int:
    """How many token ids the model can take (rows of its input embedding)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(emb, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(model.config.vocab_size)


def check_vocabulary(model, tokenizer, name: Any) -> None:
    """Refuse, at load, a tokenizer that can produce ids the model has no embedding row for (a
    pruned model with the wrong tokenizer, say): otherwise the first such token in a chat is an
    IndexError mid-reply. More rows than tokens is normal (padded vocabularies)."""
    rows = embedding_rows(model)
    tokens = len(tokenizer)
    if tokens > rows:
        raise InvalidModelError(
            f"{name}: its tokenizer has {tokens} tokens but the model has only {rows} embedding rows",
            "the tokenizer does not belong to these weights (after pruning, use the pruned folder's "
            "tokenizer); fix the model folder",
        )


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | None = None,
    dtype: str | None = None,
    prompt_format: str | None = None,
    catalog_format: str | None = None,
    trust_remote_code: bool = False,
    quantize: str | None = None,
    weights: bool = True,
) -> LoadedModel:
    """Load a model for generation, on the best device, in eval mode.

    `quantize="int8"` swaps the linear layers for int8 weight-only ones (CPU; see
    firefly_core.generation.quantize). `weights=False` describes the model without reading its
    weights (`model=None`): the same tokenizer, prompt format, context length and generation
    defaults, for an engine that reads the folder itself (llama.cpp) or an export.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    config = check_model_folder(path)
    if config.get("auto_map") and not trust_remote_code:
        raise RemoteCodeError(
            f"{name_or_path} needs remote code (its config has auto_map) and that is off by default",
            "read the model's code first; then pass --trust-remote-code",
        )
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    tokenizer = load_tokenizer(path, trust_remote_code)
    if not weights:
        return _described(path, str(name_or_path), tokenizer, dev, dt, prompt_format, catalog_format, trust_remote_code)
    has_safetensors = any(path.glob("*.safetensors"))
    try:
        with _LOAD_LOCK:
            model = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=dt,
                use_safetensors=has_safetensors,
                trust_remote_code=trust_remote_code,
            )
        model.to(dev)
    except torch.OutOfMemoryError:
        raise OutOfMemoryError(f"not enough memory on {dev} to load {name_or_path}", OOM_HINT) from None
    except MemoryError:
        raise OutOfMemoryError(f"not enough RAM to load {name_or_path}", OOM_HINT) from None
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            raise OutOfMemoryError(f"not enough memory on {dev} to load {name_or_path}", OOM_HINT) from None
        raise
    model.eval()
    check_vocabulary(model, tokenizer, name_or_path)
    gen_defaults = model.generation_config.to_diff_dict() if model.generation_config else {}
    lm = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=dev,
        dtype=dt,
        path=path,
        name=str(name_or_path),
        prompt_format=resolve_format(tokenizer, prompt_format, catalog_format),
        context_length=_context_length(model.config, tokenizer),
        generation_defaults=gen_defaults,
    )
    if quantize:
        from ..generation.quantize import apply_quantization

        apply_quantization(lm, quantize)
    return lm


def _described(path: Path, name: str, tokenizer: Any, dev: Any, dt: Any, prompt_format: str | None,
               catalog_format: str | None, trust_remote_code: bool) -> LoadedModel:
    """A LoadedModel without weights, its fields computed as a full load computes them."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    try:  # what `from_pretrained` gives the model: the file, else defaults from the config
        generation = GenerationConfig.from_pretrained(path)
    except (OSError, ValueError):
        generation = GenerationConfig.from_model_config(config)
    return LoadedModel(
        model=None,
        tokenizer=tokenizer,
        device=dev,
        dtype=dt,
        path=path,
        name=name,
        prompt_format=resolve_format(tokenizer, prompt_format, catalog_format),
        context_length=_context_length(config, tokenizer),
        generation_defaults=generation.to_diff_dict(),
    )
