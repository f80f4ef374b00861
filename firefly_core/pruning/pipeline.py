"""`prune_vocabulary`: a model folder in, a smaller model folder out, exactly and in little memory.

Steps: check everything that can fail cheaply (model, tokenizer, weights, options, output folder);
count the corpus with the original tokenizer; choose the kept ids; then write the new tokenizer,
configs, weights, id map and report into a temporary folder next to the output, and rename it into
place only when all of it is written, so a failure never leaves half a model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..errors import ConfigError, DataError, InvalidModelError
from ..models.inventory import resolve_model_path
from ..outputs import check_output, replace_folder, temp_folder
from ..records import iter_lines
from . import corpus as corpus_mod
from .report import REPORT_FILE, SOURCE_TOKEN_MAP_FILE, TOKEN_MAP_FILE, PruneProgress, PruneReport
from .select import choose, count_tokens, new_order
from .tokenizer import (
    SourceTokenizer,
    build_tokenizer_json,
    counting_tokenizer,
    merge_parents,
    read_tokenizer,
    slow_tokenizer_files,
)
from .weights import PrunedCheckpointWriter, count_params, find_vocab_tensors, read_checkpoint

# Files carried over unchanged: they hold no ids (tokens are named by their text there).
VERBATIM_FILES = ("special_tokens_map.json", "chat_template.jinja", "chat_template.json")
VERBATIM_GLOBS = ("LICENSE*", "NOTICE*", "USE_POLICY*")

Progress = Callable[[PruneProgress], None]
_SPECIAL_SHAPE = re.compile(r"^<[|/]?[^\s<>]{1,40}[|]?>$")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidModelError(f"{path} is not valid JSON: {e}") from None


def write_json(path: Path, obj: Any) -> None:
    # Plain writes: the whole folder is renamed into place at the end, which is what makes it atomic.
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _token_id_fields(cfg: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    """(key, value) of every `*_token_id` entry (int or list of ints) of a config dict."""
    for key, value in cfg.items():
        if key.endswith("token_id") and value is not None:
            yield key, value


def _config_ids(cfg: dict[str, Any]) -> list[int]:
    ids: list[int] = []
    for _, value in _token_id_fields(cfg):
        ids.extend(value if isinstance(value, list) else [value])
    return [int(i) for i in ids]


def _remap_config_ids(cfg: dict[str, Any], old_to_new: dict[int, int]) -> dict[str, Any]:
    cfg = dict(cfg)
    for key, value in list(_token_id_fields(cfg)):
        cfg[key] = [old_to_new[int(v)] for v in value] if isinstance(value, list) else old_to_new[int(value)]
    return cfg


def _looks_like_token(line: str) -> bool:
    """A keep-file line written as a token rather than as text: byte-level markers (Ġ for a
    space, Ċ for a newline, ĉ for a tab) or the shape of a special token (<s>, <|im_start|>)."""
    return any(c in line for c in "ĠĊĉ") or bool(_SPECIAL_SHAPE.match(line))


def _keep_file_ids(
    path: Path, src: SourceTokenizer, encode: Callable[[list[str]], list[list[int]]], warnings: list[str]
) -> set[int]:
    """Ids named by a keep file: a line that is a token (e.g. `Ġthe`, `<s>`) keeps that token;
    any other line is text, and all of its tokens are kept. A line that looks like a token but
    is not one is kept as text, and `warnings` says so."""
    if not Path(path).is_file():
        raise DataError(f"keep file {path} does not exist")
    ids: set[int] = set()
    texts: list[str] = []
    not_tokens: list[str] = []
    for number, line, reason in iter_lines(Path(path)):
        if reason is not None:
            raise DataError(f"keep file {path}:{number}: {reason}", "save the keep file as UTF-8 text")
        assert line is not None
        if not line:
            continue
        tid = src.token_id(line)
        if tid is not None:
            ids.add(tid)
            continue
        if _looks_like_token(line):
            not_tokens.append(f"{number}: {line!r}")
        texts.append(line)
    if not_tokens:
        shown = ", ".join(not_tokens[:10]) + (f" and {len(not_tokens) - 10} more" if len(not_tokens) > 10 else "")
        warnings.append(
            f"keep file {path}: {len(not_tokens)} line(s) look like tokens but are not in the vocabulary "
            f"(kept as text instead: their tokens are kept): {shown}"
        )
    for row in encode(texts) if texts else []:
        ids.update(row)
    return ids


def prune_vocabulary(
    model: str | os.PathLike,
    corpus: Sequence[str | os.PathLike] | str | os.PathLike,
    out: str | os.PathLike,
    keep_top: int | None = None,
    min_count: int | None = None,
    keep_file: str | os.PathLike | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> PruneReport:
    """Prune `model`'s vocabulary to the tokens `corpus` uses; write the new model folder to `out`.

    `keep_top`: at most this many tokens in the new vocabulary; `min_count`: keep tokens seen at
    least this often (default 1 when neither is given). Special tokens, the 256 byte tokens, and the
    merge paths of kept tokens are always kept, so every text still encodes, and texts whose tokens
    are all kept encode to the same tokens (new ids map back to old ids through token_map.json).
    """
    t0 = time.perf_counter()
    report_progress = progress or (lambda p: None)
    if keep_top is not None and min_count is not None:
        raise ConfigError("give --keep-top or --min-count, not both")
    if keep_top is not None and keep_top < 1:
        raise ConfigError(f"--keep-top must be positive, not {keep_top}")
    if min_count is not None and min_count < 1:
        raise ConfigError(f"--min-count must be at least 1, not {min_count}")
    if keep_top is None and min_count is None:
        min_count = 1
    corpus_paths = [Path(corpus)] if isinstance(corpus, (str, os.PathLike)) else [Path(p) for p in corpus]
    if not corpus_paths:
        raise DataError("no corpus given", "pass one or more files with --corpus")
    for p in corpus_paths:
        if not p.is_file():
            raise DataError(f"corpus file {p} does not exist")
    source = resolve_model_path(model)
    inputs = [*corpus_paths, *([Path(keep_file)] if keep_file is not None else [])]
    # Before any work: an impossible, unwritable or overlapping --out is an error now, not later.
    out = check_output(out, force=force, reads=[source], inputs=inputs)

    if not (source / "config.json").is_file():
        raise InvalidModelError(f"{source} has no config.json, so it is not a model folder")
    config = _read_json(source / "config.json")
    gen_config = _read_json(source / "generation_config.json") if (source / "generation_config.json").is_file() else None
    src_tok = read_tokenizer(source)
    ckpt = read_checkpoint(source)
    vocab_tensors = find_vocab_tensors(ckpt, config)
    if src_tok.size > vocab_tensors.rows:
        raise InvalidModelError(
            f"the tokenizer has {src_tok.size} ids but the embedding only {vocab_tensors.rows} rows"
        )
    warnings: list[str] = []
    original_ids, chain = _earlier_pruning(source, src_tok.size, warnings)
    chain = [*chain, str(model)]
    # Copy the tensors pruning does not change while the corpus is counted (the copy is kernel IO,
    # the counting is the tokenizer's threads): the two overlap instead of adding up.
    tmp = temp_folder(out)
    writer = PrunedCheckpointWriter(ckpt, vocab_tensors, tmp)
    try:
        writer.start()
        counter = counting_tokenizer(src_tok)

        def encode(batch: list[str]) -> list[list[int]]:
            return [e.ids for e in counter.encode_batch_fast(batch, add_special_tokens=False)]

        floor_ids = set(src_tok.byte_ids()) | set(src_tok.added_ids()) | set(src_tok.processor_ids())
        for cfg in (config, gen_config or {}):
            for tid in _config_ids(cfg):
                if not 0 <= tid < src_tok.size or src_tok.id_to_token[tid] is None:
                    raise InvalidModelError(f"the config names token id {tid}, which the tokenizer does not have")
                floor_ids.add(tid)
        if keep_file is not None:
            floor_ids |= _keep_file_ids(Path(keep_file), src_tok, encode, warnings)
        parents = merge_parents(src_tok)
        if keep_top is not None:  # fail on a too-small size before reading the corpus
            choose(_zeros(src_tok.size), floor_ids, parents, keep_top=keep_top)

        total_bytes = corpus_mod.corpus_bytes(corpus_paths)
        seen = 0

        def on_batch(chars: int) -> None:
            nonlocal seen
            seen = min(total_bytes, seen + chars)  # chars ~ bytes; exact for ASCII, fine for a bar
            report_progress(PruneProgress("count", seen, total_bytes))

        has_text = False

        def texts() -> Iterable[str]:
            nonlocal has_text
            for text in corpus_mod.iter_corpus_texts(corpus_paths):
                has_text = has_text or not text.isspace()
                yield text

        counts = count_tokens(encode, texts(), src_tok.size, on_batch=on_batch)
        corpus_tokens = int(counts.sum())
        if corpus_tokens == 0 or not has_text:
            raise DataError(
                "the corpus has no text", "give text files or JSONL files whose records have string fields"
            )
        selection = choose(counts, floor_ids, parents, keep_top=keep_top, min_count=min_count)
        token_map = new_order(selection.kept, src_tok.added_ids())
        old_to_new = {old: new for new, old in enumerate(token_map)}

        tok_json = build_tokenizer_json(src_tok, token_map)
        # Compact: with indent, json falls back to its pure-Python encoder (seconds for a 250k vocabulary).
        (tmp / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
        if (source / "vocab.json").is_file() or (source / "merges.txt").is_file():
            for name, text in slow_tokenizer_files(tok_json).items():
                (tmp / name).write_text(text, encoding="utf-8")
        if (source / "tokenizer_config.json").is_file():
            tok_cfg = _read_json(source / "tokenizer_config.json")
            if isinstance(tok_cfg.get("added_tokens_decoder"), dict):
                tok_cfg["added_tokens_decoder"] = {
                    str(old_to_new[int(k)]): v for k, v in tok_cfg["added_tokens_decoder"].items()
                }
            write_json(tmp / "tokenizer_config.json", tok_cfg)
        for name in VERBATIM_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
        for pattern in VERBATIM_GLOBS:
            for f in source.glob(pattern):
                if f.is_file():
                    shutil.copyfile(f, tmp / f.name)
        new_config = _remap_config_ids(config, old_to_new)
        new_config["vocab_size"] = len(token_map)
        write_json(tmp / "config.json", new_config)
        if gen_config is not None:
            write_json(tmp / "generation_config.json", _remap_config_ids(gen_config, old_to_new))
        writer.wait(lambda: report_progress(PruneProgress("weights", writer.copied, writer.total)))
        done = writer.copied

        def on_tensor(name: str) -> None:
            nonlocal done
            done += 1
            report_progress(PruneProgress("weights", done, writer.total, name))

        writer.finish(token_map, on_tensor)
        # Position = new id, value = the id in the first original model: a pruned model pruned
        # again composes the maps; the map to this run's source is kept beside it.
        to_original = [original_ids[i] for i in token_map] if original_ids is not None else token_map
        (tmp / TOKEN_MAP_FILE).write_text(json.dumps(to_original) + "\n", encoding="utf-8")
        if original_ids is not None:
            (tmp / SOURCE_TOKEN_MAP_FILE).write_text(json.dumps(token_map) + "\n", encoding="utf-8")
        tied = vocab_tensors.lm_head is None or bool(config.get("tie_word_embeddings", True))
        report = PruneReport(
            model=str(model),
            out=str(out),
            vocab_before=src_tok.size,
            vocab_after=len(token_map),
            params_before=count_params(ckpt, vocab_tensors, tied),
            params_after=count_params(ckpt, vocab_tensors, tied, new_rows=len(token_map)),
            corpus_files=[str(p) for p in corpus_paths],
            corpus_tokens=corpus_tokens,
            corpus_tokens_covered=int(counts[sorted(selection.kept)].sum()),
            distinct_tokens_seen=int((counts > 0).sum()),
            kept_floor=selection.floor,
            kept_by_count=selection.by_count,
            kept_by_closure=selection.by_closure,
            tied=tied,
            dtype=ckpt.tensors[vocab_tensors.embedding].dtype,
            rule={"keep_top": keep_top, "min_count": min_count, "keep_file": str(keep_file) if keep_file else None},
            pruned_from=chain,
            warnings=warnings,
        )
        report.seconds = round(time.perf_counter() - t0, 3)
        write_json(tmp / REPORT_FILE, report.to_json())
        replace_folder(tmp, out)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report_progress(PruneProgress("done", 1, 1))
    return report


def _earlier_pruning(source: Path, size: int, warnings: list[str]) -> tuple[list[int] | None, list[str]]:
    """For a model that was itself pruned here: its token map to the first original model and
    the chain of models it came from (from its token_map.json and prune_report.json). A map that
    does not fit this model is not used (the new map then starts at this model), and `warnings`
    says so."""
    path = source / TOKEN_MAP_FILE
    if not path.is_file():
        return None, []
    try:
        ids = json.loads(path.read_text("utf-8"))
    except (ValueError, RecursionError):
        ids = None
    if not isinstance(ids, list) or len(ids) != size or not all(type(i) is int and i >= 0 for i in ids):
        warnings.append(
            f"{path} is not a token map of this model ({size} ids expected), so {TOKEN_MAP_FILE} "
            "maps to this model, not to an earlier original"
        )
        return None, []
    chain: list[str] = []
    report = source / REPORT_FILE
    if report.is_file():
        try:
            data = json.loads(report.read_text("utf-8"))
            chain = [str(m) for m in data.get("pruned_from", [])] or [str(data.get("model", ""))]
        except (ValueError, RecursionError, AttributeError, TypeError):
            chain = []
    return ids, chain


def _zeros(n: int):
    import numpy as np

    return np.zeros(n, dtype=np.int64)
