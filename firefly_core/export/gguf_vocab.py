"""The tokenizer half of a GGUF: what llama.cpp needs to tokenize by itself, exactly like Hugging Face.

llama.cpp does not run a tokenizer.json; it re-implements byte-level BPE and picks the pre-tokenizer
(the regex that splits text before the merges) by a name, `tokenizer.ggml.pre`. llama.cpp's own
converter guesses that name by hashing the ids of a test string; we read it from the tokenizer's
pre-tokenizer itself (the regex it runs), so a pruned or fine-tuned model whose vocabulary changed
is still recognised, and a tokenizer llama.cpp cannot reproduce is refused instead of silently
tokenizing differently. Supported: byte-level BPE with the GPT-2, BLOOM, Qwen2 or Llama 3 split
(the catalog's families and our test kit).

Tokens keep their byte-level spelling (`Ġthe`); added tokens are CONTROL when special, else
USER_DEFINED; rows of the embedding with no token (vocabularies padded to a multiple) become UNUSED
`[PADn]` tokens, as llama.cpp's converter does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedModelError

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# The split regexes of tokenizer.json pre-tokenizers, and llama.cpp's name for each.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_SPLIT_REGEXES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r" ?[^(\s|[.,!?…。，、।۔،])]+": "bloom",
    _GPT2_REGEX: "gpt-2",
}
_NORMALIZERS_OK = (None, "NFC")  # llama.cpp normalizes nothing; NFC text (nearly all text) is unchanged


@dataclass
class GGUFVocab:
    """Everything `write_vocab` puts into the GGUF, computed from a Hugging Face fast tokenizer."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    stop_ids: list[int] = field(default_factory=list)


def _unsupported(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"llama.cpp cannot reproduce this tokenizer: {what}",
        "GGUF export supports byte-level BPE tokenizers (BLOOM, Qwen2/2.5, Llama 3 style); "
        "use the torch engine (--engine torch) for this model",
    )


def pre_tokenizer_name(tok_json: dict[str, Any]) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json, from the regex its pre-tokenizer runs."""
    pre = tok_json.get("pre_tokenizer") or {}
    norm = tok_json.get("normalizer")
    norm_type = norm.get("type") if isinstance(norm, dict) else None
    if norm_type not in _NORMALIZERS_OK:
        raise _unsupported(f"its normalizer {norm_type!r} is not applied by llama.cpp")
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    steps = [s for s in steps or [] if isinstance(s, dict)]
    if not steps or steps[-1].get("type") != "ByteLevel":
        raise _unsupported("it is not byte-level BPE (no ByteLevel pre-tokenizer)")
    byte_level = steps[-1]
    if byte_level.get("add_prefix_space"):
        raise _unsupported("its ByteLevel pre-tokenizer adds a prefix space")
    splits = steps[:-1]
    if not splits and byte_level.get("use_regex", True):
        return "gpt-2"
    if len(splits) == 1 and splits[0].get("type") == "Split" and not byte_level.get("use_regex", True):
        pattern = (splits[0].get("pattern") or {}).get("Regex")
        if pattern in _SPLIT_REGEXES and splits[0].get("behavior") == "Isolated" and not splits[0].get("invert"):
            return _SPLIT_REGEXES[pattern]
        raise _unsupported(f"its split pattern {pattern!r} is not one llama.cpp implements")
    raise _unsupported("its pre-tokenizer sequence is not one llama.cpp implements")


def build_vocab(tokenizer: Any, n_vocab: int, stop_ids: list[int], chat_template: str | None) -> GGUFVocab:
    """The GGUF vocabulary of a Hugging Face fast tokenizer for a model with `n_vocab` embedding rows.

    `stop_ids` are the ids that end a reply (the prompt format's and generation_config's); the
    tokenizer's eos becomes `eos_token_id` when it is one of them, and another stop id `eot_token_id`,
    so llama.cpp (and ollama) stop where we stop.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise _unsupported("it is not a fast (tokenizer.json) tokenizer")
    tok_json = json.loads(backend.to_str())
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE":
        raise _unsupported(f"its model is {model.get('type')!r}, not BPE")
    pre = pre_tokenizer_name(tok_json)

    id_to_token: dict[int, str] = {int(i): t for t, i in model.get("vocab", {}).items()}
    kinds: dict[int, int] = {}
    for added in tok_json.get("added_tokens") or []:
        tid = int(added["id"])
        id_to_token[tid] = added["content"]
        kinds[tid] = CONTROL if added.get("special") else USER_DEFINED
    if not id_to_token:
        raise _unsupported("its vocabulary is empty")
    if max(id_to_token) >= n_vocab:
        raise _unsupported(
            f"token id {max(id_to_token)} is outside the model's {n_vocab} embedding rows"
        )
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i in id_to_token:
            tokens.append(id_to_token[i])
            types.append(kinds.get(i, NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    def special(name: str) -> int | None:
        tid = getattr(tokenizer, f"{name}_token_id", None)
        return int(tid) if isinstance(tid, int) and 0 <= tid < n_vocab else None

    bos = special("bos")
    eos = special("eos")
    stops = [int(s) for s in stop_ids if 0 <= int(s) < n_vocab]
    if stops and eos not in stops:
        eos = stops[0]
    eot = next((s for s in stops if s != eos), None)
    probe = tokenizer.encode("a", add_special_tokens=True)
    return GGUFVocab(
        pre=pre,
        tokens=tokens,
        token_types=types,
        merges=merges,
        bos_id=bos,
        eos_id=eos,
        eot_id=eot,
        unk_id=special("unk"),
        pad_id=special("pad"),
        add_bos=bool(probe) and bos is not None and probe[0] == bos,
        add_eos=bool(probe) and eos is not None and probe[-1] == eos,
        chat_template=chat_template,
        stop_ids=stops,
    )


def write_vocab(writer: Any, vocab: GGUFVocab) -> None:
    """Add the vocabulary's key/values to a `gguf.GGUFWriter`."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    if vocab.bos_id is not None:
        writer.add_bos_token_id(vocab.bos_id)
    if vocab.eos_id is not None:
        writer.add_eos_token_id(vocab.eos_id)
    if vocab.eot_id is not None:
        writer.add_eot_token_id(vocab.eot_id)
    if vocab.unk_id is not None:
        writer.add_unk_token_id(vocab.unk_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
