"""Pruning with real-world inputs: user files are never deleted, hostile corpora and keep files get
clear errors, tokenizers shaped like Qwen/Llama 3 (added tokens at the end) and DeepSeek-LLM (byte
tokens among added tokens) are counted and accepted exactly, and a pruned model pruned again
still maps to the first original."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from firefly_core.errors import ConfigError, DataError, OutputExistsError
from firefly_core.pruning import REPORT_FILE, TOKEN_MAP_FILE, prune_vocabulary
from firefly_core.pruning.tokenizer import byte_alphabet, counting_tokenizer, read_tokenizer
from firefly_core.testkit import kit_corpus

LINES = kit_corpus().splitlines()[:8]


@pytest.fixture()
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def _tokens(folder: Path) -> dict[int, str]:
    data = json.loads((folder / "tokenizer.json").read_text("utf-8"))
    out = {i: t for t, i in data["model"]["vocab"].items()}
    out.update({e["id"]: e["content"] for e in data["added_tokens"]})
    return out


# ---------------------------------------------------------------- user files are never deleted


def test_force_never_deletes_a_corpus_inside_the_output(tmp_path, bloom_dir):
    out = tmp_path / "out"
    out.mkdir()
    inside = out / "corpus.txt"
    inside.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="contains the input"):
        prune_vocabulary(bloom_dir, [inside], out, force=True)
    keep = tmp_path / "keep" / "k.txt"
    keep.parent.mkdir()
    keep.write_text("hello\n", encoding="utf-8")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="contains the input"):
        prune_vocabulary(bloom_dir, [corpus], keep.parent, force=True, keep_file=keep)
    assert inside.is_file() and keep.is_file()


def test_out_dot_is_resolved_first(tmp_path, bloom_dir, corpus, monkeypatch, capsys):
    from firefly_tui.cli import main

    work = tmp_path / "here"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["prune", str(bloom_dir), "--corpus", str(corpus), "--out", ".", "--keep-top", "300"]) == 0
    assert (work / "model.safetensors").is_file() and (work / TOKEN_MAP_FILE).is_file()
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("where", ["/proc/firefly-test/out", "under-a-file"])
def test_unwritable_output_is_refused_before_any_work(tmp_path, bloom_dir, corpus, where, monkeypatch):
    if where == "under-a-file":
        (tmp_path / "f").write_text("x")
        where = str(tmp_path / "f" / "out")
    calls = []
    import firefly_core.pruning.pipeline as pipeline

    monkeypatch.setattr(pipeline, "read_checkpoint", lambda *a: calls.append(a))
    with pytest.raises(ConfigError, match="cannot"):
        prune_vocabulary(bloom_dir, [corpus], where)
    assert calls == []  # refused before reading the model


def test_stale_temporary_folders_of_killed_runs_are_removed(tmp_path, bloom_dir, corpus):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".out.{dead_pid}-0123456789ab.tmp"
    live = tmp_path / f".out.{os.getppid()}-0123456789ab.tmp"  # a run that is still going
    legacy_old = tmp_path / ".out.ab12cd34.tmp"  # earlier versions: mkdtemp names, judged by age
    legacy_new = tmp_path / ".out.zz99yy88.tmp"
    other = tmp_path / f".other.{dead_pid}-0123456789ab.tmp"  # not ours to judge
    for d in (stale, live, legacy_old, legacy_new, other):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 100)
    old = time.time() - 2 * 3600
    os.utime(legacy_old, (old, old))
    prune_vocabulary(bloom_dir, [corpus], tmp_path / "out", keep_top=300)
    assert not stale.exists() and not legacy_old.exists()
    assert live.exists() and legacy_new.exists() and other.exists()


# ---------------------------------------------------------------- corpora and keep files


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_json_array_corpus_is_read_as_records(tmp_path, bloom_dir):
    records = [{"kind": "poem", "input": LINES[i], "target": LINES[i + 1]} for i in range(0, 8, 2)]
    as_array = _write(tmp_path / "data.json", json.dumps(records, ensure_ascii=False, indent=2).encode())
    as_jsonl = _write(tmp_path / "data.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode())
    a = prune_vocabulary(bloom_dir, [as_array], tmp_path / "a", keep_top=300)
    b = prune_vocabulary(bloom_dir, [as_jsonl], tmp_path / "b", keep_top=300)
    assert a.corpus_tokens == b.corpus_tokens and a.distinct_tokens_seen == b.distinct_tokens_seen
    assert json.loads((tmp_path / "a" / TOKEN_MAP_FILE).read_text()) == json.loads((tmp_path / "b" / TOKEN_MAP_FILE).read_text())


def test_bom_is_accepted_in_corpus_and_keep_file(tmp_path, bloom_dir):
    plain = _write(tmp_path / "plain.txt", ("\n".join(LINES) + "\n").encode())
    bom = _write(tmp_path / "bom.txt", b"\xef\xbb\xbf" + ("\n".join(LINES) + "\n").encode())
    bom_jsonl = _write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + "\n".join(json.dumps({"t": x}) for x in LINES).encode())
    a = prune_vocabulary(bloom_dir, [plain], tmp_path / "a", keep_top=300)
    b = prune_vocabulary(bloom_dir, [bom], tmp_path / "b", keep_top=300)
    prune_vocabulary(bloom_dir, [bom_jsonl], tmp_path / "c", keep_top=300)
    assert a.corpus_tokens == b.corpus_tokens
    # A keep file whose first line is a token the corpus never uses: with a BOM it is still that token.
    names = _tokens(bloom_dir)
    used = set(json.loads((tmp_path / "a" / TOKEN_MAP_FILE).read_text()))
    rare = next(t for i, t in sorted(names.items(), reverse=True) if i not in used and len(t) > 1)
    keep = _write(tmp_path / "keep.txt", b"\xef\xbb\xbf" + rare.encode() + b"\n")
    r = prune_vocabulary(bloom_dir, [plain], tmp_path / "d", keep_top=300, keep_file=keep)
    kept = {names[i] for i in json.loads((tmp_path / "d" / TOKEN_MAP_FILE).read_text())}
    assert rare in kept and r.warnings == []


@pytest.mark.parametrize(
    "line, match",
    [
        (b'{"text": "\\ud800 lone"}', r"data\.jsonl:2: .*lone surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, r"data\.jsonl:2: .*nested too deeply"),
        (b'{"text": "\xff\xfe bad bytes"}', r"data\.jsonl:2: not valid UTF-8"),
    ],
    ids=["lone-surrogate", "deep-nesting", "bad-utf8"],
)
def test_hostile_corpus_lines_name_the_line(tmp_path, bloom_dir, line, match):
    path = _write(tmp_path / "data.jsonl", b'{"text": "ok"}\n' + line + b'\n{"text": "fine"}\n')
    with pytest.raises(DataError, match=match):
        prune_vocabulary(bloom_dir, [path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_keep_file_not_utf8_and_tokens_not_in_vocabulary(tmp_path, bloom_dir, corpus):
    bad = _write(tmp_path / "bad.txt", "你好\n".encode("gbk"))
    with pytest.raises(DataError, match=r"bad\.txt:1: not valid UTF-8"):
        prune_vocabulary(bloom_dir, [corpus], tmp_path / "out", keep_file=bad)
    odd = _write(tmp_path / "odd.txt", "ĠnotAtokenXYZ\n<|no_such_special|>\nplain words\n".encode())
    report = prune_vocabulary(bloom_dir, [corpus], tmp_path / "out", keep_file=odd)
    assert len(report.warnings) == 1
    assert "2 line(s) look like tokens" in report.warnings[0]
    assert "ĠnotAtokenXYZ" in report.warnings[0] and "<|no_such_special|>" in report.warnings[0]
    assert "plain words" not in report.warnings[0]
    assert "warning" in report.summary()


# ---------------------------------------------------------------- real tokenizer shapes


def _added_at_the_end(src: Path, dst: Path) -> Path:
    """A copy of `src` whose two last ids are added special tokens (as in Qwen2 and Llama 3),
    not ordinary tokens: the embedding keeps its size."""
    shutil.copytree(src, dst)
    path = dst / "tokenizer.json"
    data = json.loads(path.read_text("utf-8"))
    vocab = data["model"]["vocab"]
    inv = {i: t for t, i in vocab.items()}
    last = [inv[len(vocab) - 2], inv[len(vocab) - 1]]
    for t in last:
        del vocab[t]
    data["model"]["merges"] = [m for m in data["model"]["merges"] if "".join(m) not in last and not set(m) & set(last)]
    for i, content in zip((len(vocab), len(vocab) + 1), ("<|im_start|>", "<|eot_id|>")):
        data["added_tokens"].append(
            {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
        )
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return dst


def test_added_tokens_at_the_end_are_counted_under_their_real_ids(tmp_path, bloom_dir):
    from tokenizers import Tokenizer

    model = _added_at_the_end(bloom_dir, tmp_path / "model")
    text = "<|im_start|>" + LINES[0] + "<|eot_id|>\n" + LINES[1] + "<|im_start|>"
    oracle = Tokenizer.from_file(str(model / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    counter = counting_tokenizer(read_tokenizer(model))
    assert counter.encode(text, add_special_tokens=False).ids == oracle
    assert oracle.count(398) == 2 and oracle.count(399) == 1
    corpus = _write(tmp_path / "c.txt", (text + "\n").encode())
    report = prune_vocabulary(model, [corpus], tmp_path / "out")
    assert report.corpus_tokens == len(oracle) + 1  # + the newline
    assert report.distinct_tokens_seen == len(set(oracle) | set(counter.encode("\n").ids))


def test_deepseek_style_byte_tokens_are_accepted(tmp_path, bloom_dir, corpus):
    """DeepSeek-LLM's vocabulary lacks the bytes that never occur in UTF-8, and carries some
    byte tokens as added tokens: both are fine, and pruning stays exact."""
    from tokenizers import Tokenizer

    model = tmp_path / "model"
    shutil.copytree(bloom_dir, model)
    path = model / "tokenizer.json"
    data = json.loads(path.read_text("utf-8"))
    vocab = data["model"]["vocab"]
    alphabet = byte_alphabet()
    for b in range(0xF5, 0x100):  # never in UTF-8: simply missing
        del vocab[alphabet[b]]
    for b in (0xC0, 0xC1):  # carried as added tokens
        tid = vocab.pop(alphabet[b])
        data["added_tokens"].append({"id": tid, "content": alphabet[b], "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": False})
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    report = prune_vocabulary(model, [corpus], tmp_path / "out")  # every corpus token kept
    assert report.vocab_after < 400
    src = Tokenizer.from_file(str(path))
    new = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    token_map = json.loads((tmp_path / "out" / TOKEN_MAP_FILE).read_text())
    for line in LINES:
        assert [token_map[i] for i in new.encode(line).ids] == src.encode(line).ids


def test_pruned_twice_maps_to_the_first_original(tmp_path, bloom_dir, corpus):
    first = tmp_path / "p1"
    prune_vocabulary(bloom_dir, [corpus], first, keep_top=330)
    small = _write(tmp_path / "small.txt", (LINES[0] + "\n").encode())
    report = prune_vocabulary(first, [small], tmp_path / "p2", keep_top=300)
    original, second = _tokens(bloom_dir), _tokens(tmp_path / "p2")
    token_map = json.loads((tmp_path / "p2" / TOKEN_MAP_FILE).read_text())
    n = report.vocab_after
    assert len(token_map) == n and n < 330
    assert [original[old] for old in token_map] == [second[new] for new in range(n)]
    direct = json.loads((tmp_path / "p2" / "token_map_source.json").read_text())
    middle = _tokens(first)
    assert [middle[old] for old in direct] == [second[new] for new in range(n)]
    assert token_map != direct  # the first pruning did renumber
    assert report.pruned_from == [str(bloom_dir), str(first)]
    assert json.loads((tmp_path / "p2" / REPORT_FILE).read_text())["pruned_from"] == report.pruned_from


def test_non_empty_output_still_needs_force(tmp_path, bloom_dir, corpus):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    with pytest.raises(OutputExistsError):
        prune_vocabulary(bloom_dir, [corpus], out)
    assert (out / "mine.txt").read_text() == "x"


def test_a_token_map_that_does_not_fit_is_not_used(tmp_path, bloom_dir, corpus):
    model = tmp_path / "model"
    shutil.copytree(bloom_dir, model)
    (model / TOKEN_MAP_FILE).write_text("[1, 2, 3]\n")
    report = prune_vocabulary(model, [corpus], tmp_path / "out", keep_top=300)
    token_map = json.loads((tmp_path / "out" / TOKEN_MAP_FILE).read_text())
    original, new = _tokens(model), _tokens(tmp_path / "out")
    assert [original[old] for old in token_map] == [new[i] for i in range(300)]
    assert len(report.warnings) == 1 and "not a token map of this model" in report.warnings[0]
    assert report.pruned_from == [str(model)]
