"""The byte-level BPE `tokenizer.json`: reading and checking it, and rebuilding it for a kept vocabulary.

Only the JSON is touched (no transformers): the new file keeps the source's normalizer,
pre-tokenizer, post-processor and decoder, re-indexes the vocabulary by the id map, keeps the merges
whose parts and result survive (in their original order, so merge ranks keep their relative order),
and fixes the ids a post-processor refers to.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import InvalidModelError, UnsupportedModelError

UNSUPPORTED_HINT = (
    "pruning needs a byte-level BPE tokenizer.json (GPT-2 style: BLOOM, Qwen2, Llama 3); "
    "SentencePiece / WordPiece / Unigram tokenizers are not supported"
)


# Bytes that never occur in UTF-8 text (overlong leads 0xC0/0xC1, 0xF5..0xFF beyond U+10FFFF):
# a tokenizer may leave them out (DeepSeek-LLM does) and still encode every text.
BYTES_NOT_IN_UTF8 = frozenset([0xC0, 0xC1, *range(0xF5, 0x100)])


def byte_alphabet() -> list[str]:
    """The 256 characters a byte-level BPE uses for the 256 bytes (GPT-2's bytes_to_unicode)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


@dataclass
class SourceTokenizer:
    """A parsed byte-level BPE tokenizer.json and the lookups pruning needs."""

    path: Path
    data: dict[str, Any]  # the whole tokenizer.json
    vocab: dict[str, int]  # the BPE model's vocabulary
    merges: list[tuple[str, str]]
    merges_as_strings: bool  # old "a b" format vs [a, b] pairs; written back the same way
    added: list[dict[str, Any]]  # added_tokens entries (specials and user-added tokens)
    id_to_token: list[str | None]

    @property
    def size(self) -> int:
        """Number of ids the tokenizer can produce (max id + 1)."""
        return len(self.id_to_token)

    def token_id(self, token: str) -> int | None:
        tid = self.vocab.get(token)
        if tid is None:
            for entry in self.added:
                if entry["content"] == token:
                    return int(entry["id"])
        return tid

    def byte_ids(self) -> list[int]:
        """Ids of the byte-level base tokens the tokenizer has (from its vocabulary or, as
        DeepSeek-LLM carries some, its added tokens)."""
        ids = (self.token_id(c) for c in byte_alphabet())
        return [i for i in ids if i is not None]

    def added_ids(self) -> list[int]:
        return [int(e["id"]) for e in self.added]

    def special_ids(self) -> list[int]:
        return [int(e["id"]) for e in self.added if e.get("special", False)]

    def processor_ids(self) -> list[int]:
        """Ids the post-processor inserts (e.g. a BOS in a TemplateProcessing)."""
        ids = []
        for token in _processor_tokens(self.data.get("post_processor")):
            tid = self.token_id(token)
            if tid is None:
                raise InvalidModelError(f"{self.path}: the post-processor uses {token!r}, which is not in the vocabulary")
            ids.append(tid)
        return ids


def _components(node: Any, key: str) -> Iterator[dict[str, Any]]:
    """A component and, for a Sequence, the components inside it."""
    if not isinstance(node, dict):
        return
    yield node
    for child in node.get(key, []) or []:
        yield from _components(child, key)


def _has_byte_level(node: Any, key: str) -> bool:
    return any(c.get("type") == "ByteLevel" for c in _components(node, key))


def read_tokenizer(folder: Path) -> SourceTokenizer:
    """Read `folder/tokenizer.json` and check it is a byte-level BPE (clear errors otherwise)."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise InvalidModelError(
            f"{folder} has no tokenizer.json",
            "pruning rebuilds tokenizer.json; save the model's fast tokenizer first "
            "(AutoTokenizer.from_pretrained(...).save_pretrained(folder)) or use another model",
        )
    try:
        data = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidModelError(f"{path} is not valid JSON: {e}") from None
    model = data.get("model") or {}
    mtype = model.get("type")
    if mtype != "BPE":
        raise UnsupportedModelError(f"{path}: the tokenizer model is {mtype!r}, not BPE", UNSUPPORTED_HINT)
    if not _has_byte_level(data.get("pre_tokenizer"), "pretokenizers") or not _has_byte_level(data.get("decoder"), "decoders"):
        raise UnsupportedModelError(
            f"{path}: a BPE tokenizer, but not byte-level (no ByteLevel pre-tokenizer and decoder)", UNSUPPORTED_HINT
        )
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise UnsupportedModelError(f"{path}: BPE with subword prefixes/suffixes is not supported", UNSUPPORTED_HINT)
    vocab: dict[str, int] = {str(k): int(v) for k, v in model.get("vocab", {}).items()}
    added = list(data.get("added_tokens") or [])
    added_contents = {e.get("content") for e in added}
    missing = [
        c for b, c in enumerate(byte_alphabet())
        if c not in vocab and c not in added_contents and b not in BYTES_NOT_IN_UTF8
    ]
    if missing:
        raise UnsupportedModelError(
            f"{path}: {len(missing)} of the 256 byte-level base tokens are missing, so not every text is encodable",
            UNSUPPORTED_HINT,
        )
    raw_merges = model.get("merges", [])
    as_strings = bool(raw_merges) and isinstance(raw_merges[0], str)
    merges: list[tuple[str, str]] = []
    for m in raw_merges:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        merges.append((a, b))
    size = max([*vocab.values(), *(int(e["id"]) for e in added)]) + 1
    id_to_token: list[str | None] = [None] * size
    for tok, tid in vocab.items():
        id_to_token[tid] = tok
    for e in added:
        id_to_token[int(e["id"])] = e["content"]
    return SourceTokenizer(path, data, vocab, merges, as_strings, added, id_to_token)


def _processor_tokens(proc: Any) -> list[str]:
    tokens: list[str] = []
    for c in _components(proc, "processors"):
        if c.get("type") == "TemplateProcessing":
            for entry in (c.get("special_tokens") or {}).values():
                tokens.extend(entry.get("tokens", []))
        elif c.get("type") in ("RobertaProcessing", "BertProcessing"):
            tokens.extend(str(c[k][0]) for k in ("sep", "cls") if c.get(k))
    return tokens


def _remap_processor(proc: Any, new_id: dict[str, int]) -> Any:
    proc = copy.deepcopy(proc)
    for c in _components(proc, "processors"):
        if c.get("type") == "TemplateProcessing":
            for entry in (c.get("special_tokens") or {}).values():
                entry["ids"] = [new_id[t] for t in entry.get("tokens", [])]
        elif c.get("type") in ("RobertaProcessing", "BertProcessing"):
            for k in ("sep", "cls"):
                if c.get(k):
                    c[k] = [c[k][0], new_id[c[k][0]]]
    return proc


class MergeParents:
    """For each token made by merges: the (left, right) id pairs whose merge makes it.

    Nearly every token has exactly one; the rare others are kept apart so that the common case is
    one dict built in C (this runs over every merge of a 250k vocabulary).
    """

    def __init__(self, first: dict[int, tuple[int, int]], extra: dict[int, list[tuple[int, int]]]) -> None:
        self.first, self.extra = first, extra

    def get(self, tid: int, default: tuple = ()) -> tuple[tuple[int, int], ...]:
        pair = self.first.get(tid)
        if pair is None:
            return default
        return (pair, *self.extra[tid]) if tid in self.extra else (pair,)


def merge_parents(src: SourceTokenizer) -> MergeParents:
    vocab = src.vocab
    lefts = list(map(vocab.get, (a for a, _ in src.merges)))
    rights = list(map(vocab.get, (b for _, b in src.merges)))
    results = list(map(vocab.get, (a + b for a, b in src.merges)))
    if None in lefts or None in rights or None in results:
        bad = next(i for i in range(len(src.merges)) if None in (lefts[i], rights[i], results[i]))
        a, b = src.merges[bad]
        raise InvalidModelError(f"{src.path}: merge {a!r} + {b!r} refers to tokens not in the vocabulary")
    first = dict(zip(results, zip(lefts, rights)))
    extra: dict[int, list[tuple[int, int]]] = {}
    if len(first) < len(results):  # some token is made by more than one merge
        for r, pair in zip(results, zip(lefts, rights)):
            if first[r] != pair:
                extra.setdefault(r, []).append(pair)
    return MergeParents(first, extra)


def build_tokenizer_json(src: SourceTokenizer, token_map: list[int]) -> dict[str, Any]:
    """The tokenizer.json for the kept vocabulary; `token_map[new_id] = old_id`."""
    old_to_new = {old: new for new, old in enumerate(token_map)}
    data = copy.deepcopy({k: v for k, v in src.data.items() if k != "model"})
    model = {k: v for k, v in src.data["model"].items() if k not in ("vocab", "merges")}
    vocab = {tok: old_to_new[tid] for tok, tid in src.vocab.items() if tid in old_to_new}
    # Keep the source's (id-sorted) layout so the file reads like the original.
    vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    merges = [(a, b) for a, b in src.merges if a in vocab and b in vocab and a + b in vocab]
    model["vocab"] = vocab
    model["merges"] = [f"{a} {b}" for a, b in merges] if src.merges_as_strings else [[a, b] for a, b in merges]
    unk = model.get("unk_token")
    if unk is not None and unk not in vocab:
        model["unk_token"] = None  # byte-level BPE never needs it: every byte has a token
    added = []
    for entry in src.added:
        entry = dict(entry)
        entry["id"] = old_to_new[int(entry["id"])]
        added.append(entry)
    data["added_tokens"] = sorted(added, key=lambda e: e["id"])
    if data.get("post_processor") is not None:
        token_new_id = {tok: old_to_new[tid] for tok, tid in src.vocab.items() if tid in old_to_new}
        token_new_id.update({e["content"]: e["id"] for e in added})
        data["post_processor"] = _remap_processor(data["post_processor"], token_new_id)
    # Padding in tokenizer.json carries a pad id; keep it pointing at the same token.
    pad = data.get("padding")
    if isinstance(pad, dict) and "pad_id" in pad and pad.get("pad_token") is not None:
        pad["pad_id"] = vocab.get(pad["pad_token"], next((e["id"] for e in added if e["content"] == pad["pad_token"]), 0))
    ordered: dict[str, Any] = {}
    for key in src.data:  # same key order as the source
        ordered[key] = model if key == "model" else data.get(key)
    return ordered


def counting_tokenizer(src: SourceTokenizer):
    """The source tokenizer as a `tokenizers.Tokenizer`, built from the already parsed vocabulary
    and merges (about twice as fast as parsing tokenizer.json again in Rust for a 250k vocabulary).

    Added tokens are added after the model is set, so they get their real ids (added to a shell
    with an empty vocabulary they would be renumbered 0..k-1 and counted under ordinary tokens'
    ids); the ids are then checked against tokenizer.json, and any difference, or a BPE option
    this tokenizers version does not take, falls back to loading the file."""
    from tokenizers import AddedToken, Tokenizer, models

    model = src.data["model"]
    options = {
        k: model.get(k)
        for k in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", "byte_fallback", "ignore_merges")
        if model.get(k) is not None
    }
    shell = dict(src.data, model={**model, "vocab": {}, "merges": []}, added_tokens=[])
    try:
        tok = Tokenizer.from_str(json.dumps(shell))
        tok.model = models.BPE(src.vocab, src.merges, **options)
        for entry in sorted(src.added, key=lambda e: int(e["id"])):
            added = AddedToken(
                entry["content"],
                single_word=bool(entry.get("single_word", False)),
                lstrip=bool(entry.get("lstrip", False)),
                rstrip=bool(entry.get("rstrip", False)),
                normalized=bool(entry.get("normalized", not entry.get("special", False))),
                special=bool(entry.get("special", False)),
            )
            (tok.add_special_tokens if entry.get("special", False) else tok.add_tokens)([added])
        if any(tok.token_to_id(e["content"]) != int(e["id"]) for e in src.added):
            raise ValueError("added token ids differ")
    except Exception:  # the slow way, exact by construction
        tok = Tokenizer.from_file(str(src.path))
    tok.no_truncation()
    tok.no_padding()
    return tok


def slow_tokenizer_files(tok_json: dict[str, Any]) -> dict[str, str]:
    """vocab.json and merges.txt (GPT-2 slow-tokenizer files) written from a rebuilt tokenizer.json."""
    model = tok_json["model"]
    merges = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in model["merges"]]
    return {
        "vocab.json": json.dumps(model["vocab"], ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
    }
