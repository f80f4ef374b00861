"""What a model folder is: the one rule for "this folder holds a usable model" and its file names.

Every part that asks "is this a model folder?" (adding a local folder, listing the cache, loading,
downloading) calls the functions here, so the answer is the same everywhere.

`check_model_folder` is the cheap, thorough check run when a folder is added (`firefly use`, the
app) and before every load: it reads headers, never weights, so a broken folder is refused with
what is wrong instead of failing later in the middle of a chat. It checks config.json (an object,
UTF-8, a model_type transformers knows or code shipped with the model), the weights (each
safetensors header parsed with bounds and matched against the file size; a pytorch_model.bin
scanned, without running it, for objects torch's weights-only loader refuses), that vocab_size
agrees with the embedding rows, that the tokenizer has no ids beyond those rows, and that the chat
template compiles and renders a conversation.
"""

from __future__ import annotations

import json
import pickletools
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidModelError
from ..jsonfile import read_json

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



# ---------------------------------------------------------------- the thorough check

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # safetensors' own limit
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
# Names of the input and output embedding matrices across the families transformers ships.
INPUT_EMBEDDING_SUFFIXES = (
    "embed_tokens.weight", "word_embeddings.weight", "wte.weight", "embed_in.weight", "tok_embeddings.weight",
)
OUTPUT_EMBEDDING_SUFFIXES = ("lm_head.weight", "embed_out.weight")
CHAT_TEMPLATE_PROBE = [
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！"},
    {"role": "user", "content": "Who are you?"},
]
_BAD_BIN_HINT = "get the model as model.safetensors (most hub models have it), or re-save it with save_pretrained"


def _invalid(path: Path, what: str, hint: str | None = None) -> InvalidModelError:
    return InvalidModelError(f"{path}: {what}", hint)


def read_model_config(path: Path) -> dict[str, Any]:
    """config.json of the model folder `path`, checked to be a config transformers can use."""
    cfg_file = Path(path) / "config.json"
    hint = "config.json should be the JSON object save_pretrained writes; get a fresh copy of the model"
    config = read_json(cfg_file, what="config.json of the model", error=InvalidModelError, hint=hint)
    if not isinstance(config, dict):
        raise _invalid(cfg_file, f"holds a JSON {type(config).__name__}, not an object", hint)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise _invalid(cfg_file, "has no model_type, so transformers cannot tell which model this is", hint)
    if not config.get("auto_map"):  # code shipped with the model may define any type
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if model_type not in CONFIG_MAPPING_NAMES:
            raise _invalid(
                cfg_file,
                f"model_type {model_type!r} is not one this version of transformers knows",
                "upgrade transformers (pipx runpip firefly-tui install -U transformers), or check the spelling",
            )
    vocab = config.get("vocab_size")
    if vocab is not None and (isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1):
        raise _invalid(cfg_file, f"vocab_size is {vocab!r}, not a positive whole number", hint)
    return config


def safetensors_header(file: Path) -> dict[str, dict[str, Any]]:
    """The tensors a .safetensors file declares ({name: {dtype, shape, data_offsets}}), checked
    against the file's size the way the safetensors library checks them, reading only the header."""
    hint = "the file is damaged or incomplete: download the model again (firefly pull <id>)"
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _invalid(file, f"is {'empty' if size == 0 else 'truncated'} ({size} bytes)", hint)
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_SAFETENSORS_HEADER:
                raise _invalid(file, f"is not a safetensors file (it starts with a header length of {n:,} bytes)", hint)
            if n > size - 8:
                raise _invalid(file, f"is truncated (its header alone needs {n + 8:,} bytes, the file has {size:,})", hint)
            raw = f.read(n)
    except OSError as e:
        raise _invalid(file, f"cannot be read: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _invalid(file, "is not a safetensors file (its header is not JSON)", hint) from None
    if not isinstance(header, dict):
        raise _invalid(file, "is not a safetensors file (its header is not a table of tensors)", hint)
    data_bytes = size - 8 - n
    end_max = 0
    tensors: dict[str, dict[str, Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (
                isinstance(dtype, str) and isinstance(shape, list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                and all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end)) and 0 <= begin <= end
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise _invalid(file, f"is damaged: tensor {name!r} has a malformed entry in the header", hint)
        count = 1
        for d in shape:
            count *= d
        width = SAFETENSORS_DTYPE_BYTES.get(dtype)
        if width is not None and count * width != end - begin:
            raise _invalid(file, f"is damaged: tensor {name!r} ({dtype} {shape}) does not match its byte range", hint)
        end_max = max(end_max, end)
        tensors[name] = info
    if not tensors:
        raise _invalid(file, "holds no tensors", hint)
    if end_max > data_bytes:
        raise _invalid(
            file, f"is truncated: its header describes {end_max:,} bytes of tensors, the file holds {data_bytes:,}", hint
        )
    if end_max < data_bytes:
        raise _invalid(file, f"is damaged: {data_bytes - end_max:,} bytes after the last tensor", hint)
    return tensors


def _allowed_pickle_globals() -> set[str]:
    """What torch's weights-only loader (transformers' only way to read .bin files) accepts."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except Exception:  # a torch without this private helper: its long-standing core
        return {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                "torch.Size", "_codecs.encode", "builtins.set", "builtins.bytearray", "builtins.complex"}


def _pickle_globals(data: Any) -> list[str]:
    """The `module.name` globals one pickle (bytes, or a file at its start) would import, found
    without running it."""
    found: list[str] = []
    strings: list[str] = []  # recent string pushes, for STACK_GLOBAL
    memo: dict[int, Any] = {}
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.append(str(arg).replace(" ", ".", 1))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str) and ("UNICODE" in op.name or op.name.endswith("STRING")):
            strings.append(str(arg))
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
            memo[int(arg)] = strings[-1]
        elif op.name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif op.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(memo.get(int(arg)), str):
            strings.append(memo[int(arg)])
    return found


TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of torch.save's pre-zip format


def _legacy_torch_globals(file: Path) -> list[str]:
    """Globals of a pre-zip torch.save file: pickles in a row (magic number, protocol, system
    info, the object, storage keys), then raw storage bytes that are not scanned."""
    with open(file, "rb") as f:
        first = list(pickletools.genops(f))
        if not any(op.name == "LONG1" and arg == TORCH_LEGACY_MAGIC for op, arg, _ in first):
            raise ValueError("no torch magic number")
        names: list[str] = []
        for _ in range(4):
            names += _pickle_globals(f)
    return names


def check_torch_bin(file: Path) -> None:
    """Refuse a pytorch_model.bin that torch's weights-only loader would refuse, with the reason.

    The pickle is scanned (pickletools), never run: the globals it would import must all be on
    torch's weights-only allowlist, the only way transformers reads .bin files."""
    try:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as z:
                pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                if not pkl:
                    raise _invalid(file, "is a zip file without PyTorch weights in it", _BAD_BIN_HINT)
                data = z.read(pkl[0])
            names = _pickle_globals(data)
        else:
            names = _legacy_torch_globals(file)
    except InvalidModelError:
        raise
    except (OSError, zipfile.BadZipFile) as e:
        raise _invalid(file, f"cannot be read as PyTorch weights: {e}", _BAD_BIN_HINT) from None
    except Exception:  # pickletools on bytes that are not a pickle, or not torch's
        raise _invalid(file, "is not a PyTorch weights file (damaged, or something else)", _BAD_BIN_HINT) from None
    allowed = _allowed_pickle_globals()
    refused = sorted({n for n in names if n not in allowed})
    if refused:
        raise _invalid(
            file,
            f"holds Python objects that the safe weights loader refuses to run ({', '.join(refused[:5])}); "
            "a weights file needs none, so it may be malicious",
            _BAD_BIN_HINT,
        )


@dataclass
class WeightsInfo:
    files: list[Path]
    tensors: dict[str, dict[str, Any]]  # from safetensors headers; empty for .bin weights

    def rows(self, suffixes: tuple[str, ...]) -> tuple[str, int] | None:
        for name, info in self.tensors.items():
            if name.endswith(suffixes) and len(info["shape"]) == 2:
                return name, int(info["shape"][0])
        return None


def check_weights(path: Path) -> WeightsInfo:
    """The weights transformers would load from `path`, with their headers checked."""
    def shards(index: str) -> list[Path]:
        names = index_shards(path / index)
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise _invalid(path, f"misses weight shards listed in {index}: {', '.join(missing[:3])}",
                           "an interrupted download? run: firefly pull <id> to resume it")
        return [path / n for n in names]

    if (path / SAFETENSORS_INDEX).is_file():
        files = shards(SAFETENSORS_INDEX)
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif (path / PYTORCH_INDEX).is_file():
        files = shards(PYTORCH_INDEX)
    elif (path / "pytorch_model.bin").is_file():
        files = [path / "pytorch_model.bin"]
    else:  # other names (found by the glob that decides "has weights")
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    tensors: dict[str, dict[str, Any]] = {}
    for f in files:
        if f.suffix == ".safetensors":
            tensors.update(safetensors_header(f))
        else:
            check_torch_bin(f)
    return WeightsInfo(files, tensors)


def tokenizer_size(path: Path) -> int | None:
    """How many ids the tokenizer can produce (1 + the largest), from tokenizer.json or vocab.json
    plus added_tokens.json; None when the tokenizer is in another form (sentencepiece)."""
    hint = "the tokenizer files are damaged: copy them again from the model they belong to"
    largest = -1
    tok_file = path / "tokenizer.json"
    if tok_file.is_file():
        data = read_json(tok_file, what="tokenizer.json of the model", error=InvalidModelError, hint=hint)
        try:
            vocab = data["model"].get("vocab") if isinstance(data.get("model"), dict) else None
            if isinstance(vocab, dict):
                largest = max((v for v in vocab.values() if isinstance(v, int)), default=-1)
            elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], ids are positions
                largest = len(vocab) - 1
            for tok in data.get("added_tokens") or []:
                if isinstance(tok, dict) and isinstance(tok.get("id"), int):
                    largest = max(largest, tok["id"])
        except AttributeError:
            raise _invalid(tok_file, "is not a tokenizer (unexpected structure)", hint) from None
    elif (path / "vocab.json").is_file():
        vocab = read_json(path / "vocab.json", what="vocab.json of the model", error=InvalidModelError, hint=hint)
        if isinstance(vocab, dict):
            largest = max((v for v in vocab.values() if isinstance(v, int)), default=-1)
        if (path / "added_tokens.json").is_file():
            added = read_json(path / "added_tokens.json", what="added_tokens.json", error=InvalidModelError, hint=hint)
            if isinstance(added, dict):
                largest = max([largest, *(v for v in added.values() if isinstance(v, int))])
    return largest + 1 if largest >= 0 else None


def chat_template_of(path: Path) -> tuple[str, str] | None:
    """(where, template) of the folder's default chat template, if it has one."""
    hint = "the tokenizer files are damaged: copy them again from the model they belong to"
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.name, jinja.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise _invalid(jinja, f"cannot be read as UTF-8 text: {e}", hint) from None
    for name in ("chat_template.json", "tokenizer_config.json"):
        if not (path / name).is_file():
            continue
        data = read_json(path / name, what=f"{name} of the model", error=InvalidModelError, hint=hint)
        if not isinstance(data, dict):
            raise _invalid(path / name, "does not hold a JSON object", hint)
        template = data.get("chat_template")
        if isinstance(template, list):  # named templates: the "default" one is used for chat
            template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
        if template is not None:
            if not isinstance(template, str):
                raise _invalid(path / name, "has a chat_template that is not text", hint)
            return name, template
    return None


def check_chat_template(path: Path) -> None:
    """Compile the chat template and render a short conversation with it, as chat will."""
    found = chat_template_of(path)
    if found is None:
        return
    where, template = found
    from transformers.utils.chat_template_utils import render_jinja_template

    special: dict[str, Any] = {}
    tok_cfg = path / "tokenizer_config.json"
    if tok_cfg.is_file():
        cfg = read_json(tok_cfg, what="tokenizer_config.json of the model", error=InvalidModelError)
        for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
            value = cfg.get(key) if isinstance(cfg, dict) else None
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                special[key] = value
    try:
        rendered, _ = render_jinja_template(
            conversations=[CHAT_TEMPLATE_PROBE], chat_template=template, add_generation_prompt=True, **special
        )
    except Exception as e:  # a syntax error, raise_exception(), or a bug in the template
        line = getattr(e, "lineno", None)
        raise _invalid(
            path / where,
            f"has a chat template that fails{f' (line {line})' if line else ''}: {type(e).__name__}: {e}",
            "fix the template, or chat with another prompt format: firefly chat --format firefly-v1",
        ) from None
    if not rendered or not isinstance(rendered[0], str) or not rendered[0].strip():
        raise _invalid(path / where, "has a chat template that renders a conversation as nothing",
                       "fix the template, or chat with another prompt format: firefly chat --format firefly-v1")


def check_model_folder(path: Path) -> dict[str, Any]:
    """Validate a model folder cheaply (headers, config, tokenizer, template; never the weights
    themselves) and return its config.json as a dict. Raises InvalidModelError saying what is wrong."""
    path = Path(path)
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
    config = read_model_config(path)
    info = check_weights(path)
    vocab = config.get("vocab_size")
    rows = None
    for suffixes in (INPUT_EMBEDDING_SUFFIXES, OUTPUT_EMBEDDING_SUFFIXES):
        found = info.rows(suffixes)
        if found is None:
            continue
        name, n = found
        if isinstance(vocab, int) and n != vocab:
            raise _invalid(
                cfg_file,
                f"says vocab_size {vocab}, but the weights' {name} has {n} rows",
                "the config and the weights come from different models: use the config.json saved with these weights",
            )
        rows = n if rows is None else min(rows, n)
    rows = rows if rows is not None else vocab if isinstance(vocab, int) else None
    n_tok = tokenizer_size(path)
    if rows is not None and n_tok is not None and n_tok > rows:
        raise _invalid(
            path,
            f"the tokenizer has {n_tok} tokens but the model's embedding has only {rows} rows, "
            "so some text would crash the model mid-chat",
            "use the tokenizer that came with these weights (a pruned model needs its pruned tokenizer)",
        )
    check_chat_template(path)
    return config
