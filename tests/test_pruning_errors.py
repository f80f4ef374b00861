"""Bad input to pruning gets a clear FireflyError and leaves nothing half-written; the CLI shows it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from firefly_core.errors import (
    ConfigError,
    DataError,
    FireflyError,
    InvalidModelError,
    OutputExistsError,
    UnsupportedModelError,
)
from firefly_core.pruning import prune_vocabulary
from firefly_core.testkit import kit_corpus


@pytest.fixture()
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(kit_corpus().splitlines()[:8]) + "\n", encoding="utf-8")
    return path


def _only_out(parent: Path, name: str = "out") -> list[str]:
    """Entries in `parent` that pruning may have created (the output and any temporary folder)."""
    return sorted(p.name for p in parent.iterdir() if name in p.name)


def _assert_fails_cleanly(tmp_path: Path, error: type[FireflyError], match: str, model: Path, corpus, **kwargs) -> None:
    out = tmp_path / "work" / "out"
    out.parent.mkdir(exist_ok=True)
    with pytest.raises(error, match=match) as info:
        prune_vocabulary(model, corpus, out, **kwargs)
    assert info.value.message
    assert _only_out(out.parent) == []  # no output, no temporary folder


@pytest.mark.parametrize(
    "content, suffix",
    [("", ".txt"), ("\n\n  \n\t\n", ".txt"), ('{"id": 1, "score": 0.5}\n{"tags": [1, 2]}\n', ".jsonl")],
    ids=["empty", "whitespace", "jsonl-without-strings"],
)
def test_corpus_without_text(tmp_path, bloom_dir, content, suffix):
    path = tmp_path / f"corpus{suffix}"
    path.write_text(content, encoding="utf-8")
    _assert_fails_cleanly(tmp_path, DataError, "no text", bloom_dir, [path])


def test_malformed_jsonl_names_file_and_line(tmp_path, bloom_dir):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "床前明月光"}\n{"text": "broken\n', encoding="utf-8")
    _assert_fails_cleanly(tmp_path, DataError, r"data\.jsonl:2", bloom_dir, [path])


def test_invalid_utf8_corpus(tmp_path, bloom_dir):
    path = tmp_path / "latin1.txt"
    path.write_bytes("ok line\ncaf\xe9\n".encode("latin-1"))
    _assert_fails_cleanly(tmp_path, DataError, r"latin1\.txt:2: not valid UTF-8", bloom_dir, [path])


def test_missing_corpus_file(tmp_path, bloom_dir):
    _assert_fails_cleanly(tmp_path, DataError, "does not exist", bloom_dir, [tmp_path / "nope.txt"])


def test_keep_size_below_the_floor(tmp_path, bloom_dir, corpus):
    # 4 specials + 256 bytes = 260 is the floor of the kit tokenizer.
    _assert_fails_cleanly(tmp_path, ConfigError, "below the floor of 260", bloom_dir, corpus, keep_top=259)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"keep_top": 300, "min_count": 2}, "not both"), ({"keep_top": 0}, "positive"), ({"min_count": 0}, "at least 1")],
)
def test_bad_keep_options(tmp_path, bloom_dir, corpus, kwargs, match):
    _assert_fails_cleanly(tmp_path, ConfigError, match, bloom_dir, corpus, **kwargs)


def test_non_empty_output_needs_force(tmp_path, bloom_dir, corpus):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not empty") as info:
        prune_vocabulary(bloom_dir, corpus, out, keep_top=300)
    assert "--force" in info.value.hint
    assert (out / "precious.txt").read_text() == "keep me"
    assert _only_out(tmp_path) == ["out"]
    prune_vocabulary(bloom_dir, corpus, out, keep_top=300, force=True)
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").is_file()
    assert _only_out(tmp_path) == ["out"]


def test_empty_output_folder_is_fine(tmp_path, bloom_dir, corpus):
    out = tmp_path / "out"
    out.mkdir()
    prune_vocabulary(bloom_dir, corpus, out, keep_top=300)
    assert (out / "tokenizer.json").is_file()


def test_output_inside_the_model_is_refused(tmp_path, bloom_dir, corpus):
    src = tmp_path / "model"
    shutil.copytree(bloom_dir, src)
    with pytest.raises(ConfigError, match="overlaps"):
        prune_vocabulary(src, corpus, src / "pruned", force=True)
    with pytest.raises(ConfigError, match="overlaps"):
        prune_vocabulary(src, corpus, src, force=True)
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in bloom_dir.iterdir())


def test_model_without_tokenizer_json(tmp_path, bloom_dir, corpus):
    src = tmp_path / "model"
    shutil.copytree(bloom_dir, src)
    (src / "tokenizer.json").unlink()
    _assert_fails_cleanly(tmp_path, InvalidModelError, "no tokenizer.json", src, corpus)


def test_missing_model(tmp_path, corpus):
    from firefly_core.errors import ModelNotFoundError

    _assert_fails_cleanly(tmp_path, ModelNotFoundError, "no model folder", tmp_path / "nowhere", corpus)


def _replace_tokenizer(src: Path, dst: Path, tokenizer) -> Path:
    shutil.copytree(src, dst)
    tokenizer.save(str(dst / "tokenizer.json"))
    return dst


def test_non_byte_level_bpe_is_unsupported(tmp_path, bloom_dir, corpus):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    # SentencePiece-style BPE (Metaspace, byte fallback) as in Llama 2: not byte-level.
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(kit_corpus().splitlines(), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False))
    src = _replace_tokenizer(bloom_dir, tmp_path / "spm", tok)
    _assert_fails_cleanly(tmp_path, UnsupportedModelError, "not byte-level", src, corpus)


def test_wordpiece_is_unsupported(tmp_path, bloom_dir, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(kit_corpus().splitlines(), trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]"], show_progress=False))
    src = _replace_tokenizer(bloom_dir, tmp_path / "wp", tok)
    _assert_fails_cleanly(tmp_path, UnsupportedModelError, "'WordPiece', not BPE", src, corpus)


def test_bin_only_weights_are_unsupported(tmp_path, bloom_dir, corpus):
    src = tmp_path / "bin"
    shutil.copytree(bloom_dir, src)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    _assert_fails_cleanly(tmp_path, UnsupportedModelError, r"only PyTorch \.bin", src, corpus)


def test_unknown_embedding_layout_is_unsupported(tmp_path, bloom_dir, corpus):
    """A checkpoint whose tensors have unknown names and no [vocab_size, hidden] matrix."""
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "odd"
    shutil.copytree(bloom_dir, src)
    tensors = load_file(src / "model.safetensors")
    tensors["mystery.table"] = tensors.pop("transformer.word_embeddings.weight").T.copy()
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    _assert_fails_cleanly(tmp_path, UnsupportedModelError, "no input embedding", src, corpus)


def test_failure_while_writing_leaves_the_old_output(tmp_path, bloom_dir, corpus, monkeypatch):
    from firefly_core.pruning.weights import PrunedCheckpointWriter

    out = tmp_path / "out"
    prune_vocabulary(bloom_dir, corpus, out, keep_top=300)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(self, token_map, on_tensor=None):
        self.wait()
        (self.out_dir / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PrunedCheckpointWriter, "finish", broken)
    with pytest.raises(OSError, match="No space"):
        prune_vocabulary(bloom_dir, corpus, out, keep_top=320, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _only_out(tmp_path) == ["out"]


def test_output_folder_and_files_are_readable_by_others(tmp_path, bloom_dir, corpus):
    import os
    import stat

    out = tmp_path / "out"
    prune_vocabulary(bloom_dir, corpus, out, keep_top=300)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o644 & 0o044 & ~umask, f.name


def test_cli_prints_the_report(tmp_path, bloom_dir, corpus, capsys):
    from firefly_tui.cli import main

    out = tmp_path / "out"
    assert main(["prune", str(bloom_dir), "--corpus", str(corpus), "--out", str(out), "--keep-top", "300"]) == 0
    printed = capsys.readouterr().out
    assert "vocabulary" in printed and "-> 300" in printed and "prune_report.json" in printed
    report = json.loads((out / "prune_report.json").read_text())
    assert report["vocab_after"] == 300 and report["rule"]["keep_top"] == 300


def test_cli_shows_errors_without_traceback(tmp_path, bloom_dir, corpus, capsys):
    from firefly_tui.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    assert main(["prune", str(bloom_dir), "--corpus", str(corpus), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error: the output folder" in err and "hint:" in err and "Traceback" not in err
    with pytest.raises(SystemExit):  # argparse: the two keep rules exclude each other
        main(["prune", str(bloom_dir), "--corpus", str(corpus), "--out", str(out), "--keep-top", "300", "--min-count", "2"])


@pytest.mark.parametrize("missing", [("copy_file_range",), ("copy_file_range", "pread", "preadv", "pwrite")])
def test_without_kernel_copy_or_positional_io_the_output_is_the_same(tmp_path, bloom_dir, corpus, monkeypatch, missing):
    """Other filesystems / systems (no copy_file_range, no pread: Windows) take the plain-IO paths."""
    import os

    prune_vocabulary(bloom_dir, corpus, tmp_path / "fast", keep_top=300)
    for name in missing:
        monkeypatch.delattr(os, name)
    prune_vocabulary(bloom_dir, corpus, tmp_path / "plain", keep_top=300)
    assert (tmp_path / "plain" / "model.safetensors").read_bytes() == (tmp_path / "fast" / "model.safetensors").read_bytes()
