"""The model half of a GGUF: llama.cpp's architecture, hyperparameters and tensors for a model folder.

One `Family` per Hugging Face `model_type` we export (the catalog's: BLOOM, Qwen2/2.5, and
Llama-style). Tensor names go through the `gguf` package's own name map (llama.cpp's), and the
two layout differences llama.cpp's converter knows about are applied here too:

- BLOOM fuses q/k/v per head ([heads, 3, head_dim, hidden]); llama.cpp wants q, then k, then v.
- Llama's q/k rows are ordered for the "rotate half" RoPE of transformers; llama.cpp's `llama`
  architecture rotates adjacent pairs, so the rows are permuted back (Qwen2 uses llama.cpp's
  NEOX RoPE, which is rotate-half: no permutation).

Weights are read one tensor at a time from the folder's safetensors (or .bin) files, so exporting
a model never holds more than one tensor in memory besides what the OS caches.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import InvalidModelError, UnsupportedModelError
from ..models.folder import PYTORCH_INDEX, SAFETENSORS_INDEX, index_shards


def _get(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    """RoPE parameters from a transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`) config."""
    params = dict(config.get("rope_parameters") or {})
    params.update({k: v for k, v in (config.get("rope_scaling") or {}).items() if v is not None})
    if config.get("rope_theta") is not None:
        params.setdefault("rope_theta", config["rope_theta"])
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    return params


@dataclass(frozen=True)
class Family:
    """How one Hugging Face model type becomes a llama.cpp architecture."""

    model_type: str
    arch: str  # llama.cpp's architecture name (gguf.MODEL_ARCH_NAMES)
    strip_prefix: str = ""  # removed from tensor names before the name map (BLOOM's "transformer.")
    permute_qk: bool = False  # Llama: undo transformers' rotate-half row order

    def n_layers(self, config: dict[str, Any]) -> int:
        return int(_get(config, "num_hidden_layers", "n_layer"))

    def hidden(self, config: dict[str, Any]) -> int:
        return int(_get(config, "hidden_size", "n_embed"))

    def heads(self, config: dict[str, Any]) -> tuple[int, int]:
        n_head = int(_get(config, "num_attention_heads", "n_head"))
        return n_head, int(_get(config, "num_key_value_heads", default=n_head))

    def write_hparams(self, writer: Any, config: dict[str, Any]) -> None:
        """The architecture's hyperparameter keys (what llama.cpp reads to build the graph)."""
        hidden = self.hidden(config)
        n_head, n_kv = self.heads(config)
        writer.add_block_count(self.n_layers(config))
        writer.add_embedding_length(hidden)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        if self.arch == "bloom":
            # ALiBi has no position limit; 2048 is BLOOM's pre-training length (as in loading.py)
            writer.add_context_length(int(_get(config, "seq_length", default=2048)))
            writer.add_feed_forward_length(4 * hidden)
            writer.add_layer_norm_eps(float(config["layer_norm_epsilon"]))
            return
        writer.add_context_length(int(_get(config, "max_position_embeddings", default=4096)))
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
        rope = _rope(config)
        writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
        head_dim = int(_get(config, "head_dim", default=hidden // n_head))
        writer.add_rope_dimension_count(head_dim)
        if head_dim != hidden // n_head:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        rope_type = rope.get("rope_type") or "default"
        if rope_type == "linear":
            import gguf

            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))
        elif rope_type not in ("default", "llama3"):
            raise UnsupportedModelError(
                f"RoPE scaling {rope_type!r} is not exported to GGUF yet",
                "use the torch engine (--engine torch) for this model",
            )
        if self.arch == "llama":
            writer.add_vocab_size(int(config["vocab_size"]))

    def transform(self, name: str, tensor: Any, config: dict[str, Any]) -> Any:
        """The tensor as llama.cpp lays it out (see the module docstring)."""
        if self.arch == "bloom" and "query_key_value" in name:
            n_head = self.heads(config)[0]
            hidden = self.hidden(config)
            if name.endswith("weight"):
                qkv = tensor.reshape(n_head, 3, hidden // n_head, hidden)
                return qkv.transpose(0, 1).reshape(3 * hidden, hidden)
            qkv = tensor.reshape(n_head, 3, hidden // n_head)
            return qkv.transpose(0, 1).reshape(3 * hidden)
        if self.permute_qk and name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
            n_head, n_kv = self.heads(config)
            heads = n_head if "q_proj" in name else n_kv
            shape = tensor.shape
            return tensor.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
        return tensor

    def extra_tensors(self, config: dict[str, Any]) -> dict[str, Any]:
        """Tensors llama.cpp needs that the folder does not hold (Llama 3.1's RoPE frequency factors)."""
        rope = _rope(config)
        if self.arch != "llama" or rope.get("rope_type") != "llama3":
            return {}
        import math

        import torch

        # transformers' _compute_llama3_parameters, as llama.cpp's converter writes it
        base = float(rope.get("rope_theta", 10000.0))
        n_head = self.heads(config)[0]
        dim = int(_get(config, "head_dim", default=self.hidden(config) // n_head))
        factor = float(rope.get("factor", 8.0))
        low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
        old_ctx = float(rope.get("original_max_position_embeddings", 8192))
        factors = []
        for i in range(0, dim, 2):
            wavelen = 2 * math.pi / (1.0 / base ** (i / dim))
            if wavelen < old_ctx / high:
                factors.append(1.0)
            elif wavelen > old_ctx / low:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        return {"rope_freqs.weight": torch.tensor(factors, dtype=torch.float32)}


FAMILIES = {
    "bloom": Family("bloom", "bloom", strip_prefix="transformer."),
    "qwen2": Family("qwen2", "qwen2"),
    "llama": Family("llama", "llama", permute_qk=True),
}


def family_for(config: dict[str, Any]) -> Family:
    model_type = config.get("model_type")
    family = FAMILIES.get(str(model_type))
    if family is None:
        raise UnsupportedModelError(
            f"GGUF export does not support the {model_type!r} architecture",
            f"supported: {', '.join(sorted(FAMILIES))}; use the torch engine (--engine torch) for this model",
        )
    return family


# ------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class SourceTensor:
    """One tensor of the folder: its name, shape and dtype, and how to read it."""

    name: str
    shape: tuple[int, ...]
    dtype: Any  # torch.dtype
    load: Callable[[], Any]


def _weight_files(folder: Path) -> list[Path]:
    for index in (SAFETENSORS_INDEX, PYTORCH_INDEX):
        if (folder / index).is_file():
            return [folder / name for name in index_shards(folder / index)]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise InvalidModelError(f"{folder} has no weights (*.safetensors or *.bin)")
    return files


def source_tensors(folder: Path) -> Iterator[SourceTensor]:
    """Every tensor of the model folder, read lazily (safetensors) or from a memory-mapped .bin."""
    import torch

    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    for file in _weight_files(Path(folder)):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="pt") as f:
                    keys = list(f.keys())
                    metas = [(k, f.get_slice(k)) for k in keys]
                    infos = [(k, tuple(s.get_shape()), dtypes.get(s.get_dtype())) for k, s in metas]
            except Exception as e:  # safetensors raises its own error types for corrupt files
                raise InvalidModelError(f"cannot read {file}: {e}") from None
            for name, shape, dtype in infos:
                yield SourceTensor(name, shape, dtype, _safetensors_loader(file, name))
        else:
            try:
                state = torch.load(str(file), map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:
                raise InvalidModelError(f"cannot read {file}: {e}") from None
            for name, tensor in state.items():
                yield SourceTensor(name, tuple(tensor.shape), tensor.dtype, lambda t=tensor: t)


def _safetensors_loader(file: Path, name: str) -> Callable[[], Any]:
    def load():
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            return f.get_tensor(name)

    return load


_SKIP = re.compile(r"(rotary_emb\.inv_freq|\.attn\.masked_bias|\.attn\.bias)$")


def gguf_name(family: Family, name: str, n_layers: int) -> str | None:
    """llama.cpp's name for a Hugging Face tensor name; None for tensors llama.cpp does not use."""
    import gguf

    if _SKIP.search(name):
        return None
    if family.strip_prefix and name.startswith(family.strip_prefix):
        name = name[len(family.strip_prefix):]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == family.arch)
    mapped = gguf.get_tensor_name_map(arch, n_layers).get_name(name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise UnsupportedModelError(
            f"the tensor {name!r} has no place in llama.cpp's {family.arch} architecture",
            "this model differs from the standard architecture; use the torch engine (--engine torch)",
        )
    return mapped


def read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / "config.json").read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidModelError(f"cannot read {folder}/config.json: {e}") from None
