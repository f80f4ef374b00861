"""GGUF export: a model folder (downloaded, pruned or fine-tuned) as one file llama.cpp and ollama load.

`export_gguf(info, out, type=...)` writes the file with the `gguf` package (llama.cpp's own
writer): the architecture and hyperparameters (`gguf_model`), the tokenizer llama.cpp needs to
tokenize by itself, the chat template of the prompt format the model is served with, and its stop
tokens (`gguf_vocab`). Float types (f32, f16, bf16) are written tensor by tensor; quantized types
(q8_0, q4_k_m) are made from a lossless float GGUF by llama.cpp's own quantizer
(`llama_model_quantize`, from llama-cpp-python), so the bits are exactly what llama.cpp's
`llama-quantize` would make. Output files are written beside their final path and renamed when
complete: an interrupted export never leaves a half file behind, and the temporary file a killed
one (kill -9, SIGTERM) leaves is removed by the next export there (`outputs`: owner pid, age).

`model_info(name)` describes a model for export without loading its weights (tokenizer, prompt
format, stop tokens, generation defaults).
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError, FireflyError, StorageError, UnsupportedModelError
from ..outputs import resolve_output, temp_file
from .gguf_model import family_for, gguf_name, read_config, source_tensors
from .gguf_vocab import build_vocab, write_vocab

Status = Callable[[str], None]

FLOAT_TYPES = ("f32", "f16", "bf16")
QUANT_TYPES = ("q8_0", "q4_k_m")
GGUF_TYPES = ("bf16", "f16", "f32", "q8_0", "q4_k_m")

# llama.cpp's llama_ftype values (general.file_type and llama_model_quantize's target)
_FTYPE = {"f32": 0, "f16": 1, "q8_0": 7, "q4_k_m": 15, "bf16": 32}


class ExportCancelled(FireflyError):
    """The export was stopped (cancel event set); no output file was left behind."""


def check_type(gguf_type: str) -> str:
    t = str(gguf_type).lower().replace("-", "_")
    if t not in GGUF_TYPES:
        raise FireflyError(f"unknown GGUF type {gguf_type!r}", f"choose one of: {', '.join(GGUF_TYPES)}")
    return t


def model_info(name: str | os.PathLike, prompt_format: str | None = None, *, trust_remote_code: bool = False):
    """A `LoadedModel` without weights (`model=None`): what an export needs to know about a model.

    The prompt format is resolved as chat resolves it: `prompt_format`, else the user's saved
    per-model setting, else the catalog's, else the tokenizer's chat template, else Firefly v1.
    """
    from ..models.catalog import prompt_format_for
    from ..models.loading import load_model
    from ..models.user_settings import load_settings

    saved = load_settings().for_model(str(name))
    return load_model(
        name,
        device="cpu",  # where a llama.cpp decoder's logits live
        prompt_format=prompt_format or saved.prompt_format,
        catalog_format=prompt_format_for(str(name)),
        trust_remote_code=trust_remote_code,
        weights=False,
    )


def chat_template_for(info: Any) -> str | None:
    """The Jinja chat template of the prompt format the model is served with (formats.py)."""
    from ..formats import jinja_template

    return jinja_template(info.prompt_format, info.tokenizer)


def export_gguf(
    info: Any,
    out: str | os.PathLike,
    *,
    gguf_type: str = "bf16",
    status: Status | None = None,
    cancel: threading.Event | None = None,
    threads: int | None = None,
) -> Path:
    """Write `info`'s model (a LoadedModel; its weights are read from `info.path`, not from memory)
    as a GGUF of `gguf_type` to `out`. Returns `out`. Without the `llamacpp` extra (the gguf writer,
    llama.cpp's quantizer): `extras`' one message, before anything is read or written."""
    from ..extras import require_extra

    require_extra("llamacpp")
    gguf_type = check_type(gguf_type)
    out = check_gguf_output(out)
    say = status or (lambda _msg: None)
    t0 = time.perf_counter()
    try:
        if gguf_type in FLOAT_TYPES:
            with _replacing(out) as tmp:
                _write_float(info, tmp, gguf_type, say, cancel)
        else:
            float_type = _lossless_float_type(info.path)
            with _replacing(out) as tmp:
                float_tmp = temp_file(out)  # a step only: never renamed into place
                try:
                    _write_float(info, float_tmp, float_type, say, cancel)
                    say(f"quantizing to {gguf_type.upper()} with llama.cpp")
                    quantize_gguf(float_tmp, tmp, gguf_type, threads=threads)
                finally:
                    float_tmp.unlink(missing_ok=True)
    except OSError as e:
        if isinstance(e, FireflyError):
            raise
        raise StorageError.from_os_error(e, out) from None
    say(f"GGUF {gguf_type} written in {time.perf_counter() - t0:.1f} s: {out}")
    return out


def check_gguf_output(out: str | os.PathLike) -> Path:
    """The resolved path of a GGUF to write, refused at once (not after minutes of work) when
    its folder cannot be made or written: under a regular file, in /proc, read-only."""
    path = Path(out).expanduser()
    if str(out).strip() == "" or path.name in ("", ".", ".."):
        raise ConfigError(f"{str(out)!r} is not a file name", "name the output like model.gguf")
    path = path.resolve()
    if path.is_dir():
        raise ConfigError(f"{path} is a folder", "give a file name ending in .gguf")
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise ConfigError(f"cannot write {path}: {above} is a file, not a folder", "choose another place for the GGUF")
    folder = resolve_output(path.parent, "--gguf")  # can the folder be made and written (/proc, read-only)?
    return folder / path.name


def check_export_target(out: str | os.PathLike, *, replace: bool, replace_hint: str = "pass --force to replace it") -> Path:
    """The one rule for the file `firefly export` and the app's export write, checked before any
    work: a name ending in .gguf, a folder that can be made and written (`check_gguf_output`), and
    no existing file unless the user asked to replace it (`replace_hint` says how, in the words of
    the front end asking)."""
    path = Path(out).expanduser()
    if path.suffix.lower() != ".gguf":
        raise ConfigError(f"{path} does not end in .gguf", "name the output like model.gguf")
    path = check_gguf_output(path)
    if path.exists() and not replace:
        from ..errors import OutputExistsError

        raise OutputExistsError(f"{path} already exists", replace_hint)
    return path


def default_export_path(model: str, gguf_type: str) -> Path:
    """Where an export goes unless the user says otherwise: the data folder's exports/NAME-TYPE.gguf."""
    from ..paths import data_dir, file_slug

    return data_dir() / "exports" / f"{file_slug(model)}-{gguf_type}.gguf"


@contextmanager
def _replacing(out: Path) -> Iterator[Path]:
    """A temporary file beside `out` (named with our pid: a killed export's file is removed by the
    next one) that replaces `out` when the block ends without error, and is removed otherwise."""
    tmp = temp_file(out)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _lossless_float_type(folder: Path) -> str:
    """The float type that holds the folder's weights exactly (the quantizer's input)."""
    import torch

    dtypes = {t.dtype for t in source_tensors(folder) if t.dtype is not None and t.dtype.is_floating_point}
    if dtypes <= {torch.bfloat16}:
        return "bf16"
    if dtypes <= {torch.float16}:
        return "f16"
    return "f32"


def _write_float(info: Any, path: Path, gguf_type: str, say: Status, cancel: threading.Event | None) -> None:
    import gguf
    import numpy as np
    import torch

    config = read_config(info.path)
    family = family_for(config)
    n_layers = family.n_layers(config)
    tensors = list(source_tensors(info.path))
    names = {t.name: gguf_name(family, t.name, n_layers) for t in tensors}
    embd = next((t for t in tensors if names[t.name] == "token_embd.weight"), None)
    if embd is None:
        raise UnsupportedModelError(f"{info.path} has no token embedding the exporter recognises")
    n_vocab = int(embd.shape[0])
    if any(names[t.name] == "output.weight" for t in tensors) and config.get("tie_word_embeddings"):
        # a tied lm_head saved anyway: llama.cpp reuses token_embd when output.weight is absent
        names = {k: (None if v == "output.weight" else v) for k, v in names.items()}
    vocab = build_vocab(info.tokenizer, n_vocab, list(info.stop_token_ids), chat_template_for(info))

    writer = gguf.GGUFWriter(path=None, arch=family.arch)
    writer.add_name(Path(str(info.name)).name or str(info.name))
    writer.add_file_type(_FTYPE[gguf_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    family.write_hparams(writer, config)
    write_vocab(writer, vocab)

    float_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[gguf_type]
    planned: list[tuple[str, Callable[[], Any], tuple[int, ...], torch.dtype]] = []
    for t in tensors:
        target = names[t.name]
        if target is None:
            continue
        dtype = torch.float32 if len(t.shape) <= 1 else float_dtype  # norms and biases stay f32, as llama.cpp's converter
        planned.append((target, lambda t=t: family.transform(t.name, t.load(), config), t.shape, dtype))
    for target, tensor in family.extra_tensors(config).items():
        planned.append((target, lambda tensor=tensor: tensor, tuple(tensor.shape), torch.float32))
    for target, _load, shape, dtype in planned:
        n = int(np.prod(shape)) if shape else 1
        itemsize = 4 if dtype == torch.float32 else 2
        if dtype == torch.bfloat16:
            writer.add_tensor_info(target, shape, np.dtype(np.uint16), n * itemsize, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            np_dtype = np.float32 if dtype == torch.float32 else np.float16
            writer.add_tensor_info(target, shape, np.dtype(np_dtype), n * itemsize)

    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    last_pct = -1
    for i, (target, load, _shape, dtype) in enumerate(planned):
        if cancel is not None and cancel.is_set():
            writer.close()
            raise ExportCancelled("GGUF export stopped", "run it again to make the file")
        data = load().to(dtype).contiguous()
        if dtype == torch.bfloat16:
            array = data.view(torch.int16).numpy().view(np.uint16)
        else:
            array = data.numpy()
        writer.write_tensor_data(array)
        pct = (i + 1) * 100 // len(planned)
        if pct // 10 != last_pct // 10:
            say(f"writing GGUF ({gguf_type}): {pct}% of {len(planned)} tensors")
            last_pct = pct
    writer.close()


def quantize_gguf(src: str | os.PathLike, dst: str | os.PathLike, gguf_type: str, *, threads: int | None = None) -> None:
    """llama.cpp's quantizer (`llama_model_quantize`): a float GGUF in, `gguf_type` out."""
    import ctypes

    from ..llamacpp_lib import llama_cpp_module

    gguf_type = check_type(gguf_type)
    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPE[gguf_type]
    params.nthread = int(threads or 0)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise FireflyError(
            f"llama.cpp could not quantize {src} to {gguf_type} (code {rc})",
            "check the free disk space; or export a float type (--type bf16)",
        )
