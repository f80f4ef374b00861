"""Hostile training data: every broken line is a bad line with its number (never a traceback, never
the whole file refused), BOMs and JSON arrays are read, and `data check` validates its options and
never prints a huge sample in full."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firefly_core.data import check_files, read_samples
from firefly_core.errors import ConfigError
from firefly_core.records import BadRecord, Record, read_records

GOOD = {"kind": "qa", "input": "你好", "target": "你好！"}


def _jsonl(*lines: bytes) -> bytes:
    return b"\n".join(lines) + b"\n"


def _good() -> bytes:
    return json.dumps(GOOD, ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"[" * 100_000, "nested too deeply"),
        (b'{"input": "\\ud800", "target": "x"}', "lone surrogate (\\ud800)"),
        (b'{"input": "ok", "target": "\xff\xfe"}', "not valid UTF-8 (byte 0xff at column 28)"),
    ],
    ids=["deep-nesting", "lone-surrogate", "bad-utf8"],
)
def test_a_broken_line_is_a_bad_line_with_its_number(tmp_path, line, reason):
    path = tmp_path / "d.jsonl"
    path.write_bytes(_jsonl(_good(), _good(), line, _good()))
    samples, bad, lines = read_samples([path])
    assert [s.line for s in samples] == [1, 2, 4]
    assert [(b.line, reason in b.reason) for b in bad] == [(3, True)], bad
    assert lines == 4


def test_a_valid_surrogate_pair_is_text(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "\\ud83d\\ude00", "target": "ok"}\n', "utf-8")
    samples, bad, _ = read_samples([path])
    assert bad == [] and samples[0].messages[0].content == "😀"


def test_bom_keeps_line_one(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _jsonl(_good(), _good()))
    samples, bad, _ = read_samples([path])
    assert [s.line for s in samples] == [1, 2] and bad == []


def test_json_array_files_are_records_with_line_numbers(tmp_path):
    records = [GOOD, {"conversation": [{"human": "a", "assistant": "b"}]}, {"nope": 1}, GOOD]
    path = tmp_path / "firefly.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(records, ensure_ascii=False, indent=2).encode())
    samples, bad, lines = read_samples([path])
    assert lines == 4 and [s.format for s in samples] == ["firefly", "conversation", "firefly"]
    text = path.read_text("utf-8-sig").splitlines()
    for s in samples + bad:  # each record's line is the line of its opening brace
        assert text[s.line - 1].strip() == "{"
    assert [b.line for b in bad] == [samples[1].line + 8]
    assert "unknown format" in bad[0].reason


def test_json_array_read_in_small_chunks(tmp_path, monkeypatch):
    """Records that span chunk boundaries parse the same (the reader never loads a file whole)."""
    import firefly_core.records as records

    data = [{"input": f"问题 {i} " + "字" * (i % 37), "target": f"答案 {i}"} for i in range(200)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(data, ensure_ascii=False), "utf-8")
    monkeypatch.setattr(records, "CHUNK", 7)
    got = [r.value for r in read_records(path)]
    assert got == data


def test_broken_json_array_stops_with_a_bad_record(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[\n  {"input": "a", "target": "b"},\n  {"input": "c", "tar', "utf-8")
    out = list(read_records(path))
    assert isinstance(out[0], Record) and out[0].line == 2
    assert isinstance(out[1], BadRecord) and out[1].line == 3 and "rest of the file" in out[1].reason


def test_data_check_validates_max_length(tmp_path, capsys):
    from firefly_tui.cli import main

    path = tmp_path / "d.jsonl"
    path.write_bytes(_jsonl(_good()))
    for bad in ("0", "-1", "x"):
        with pytest.raises(SystemExit) as e:
            main(["data", "check", str(path), "--max-length", bad])
        assert e.value.code == 2
    assert "--max-length" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="max-length"):
        check_files([path], max_length=0)


def test_data_check_cuts_a_huge_sample(tmp_path, bloom_dir, capsys):
    from firefly_tui.cli import main

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"input": "问" * 200_000, "target": "答" * 200_000}, ensure_ascii=False) + "\n", "utf-8")
    # its answer lies beyond 64 tokens: nothing is trainable, and the verdict says why (exit 1)
    assert main(["data", "check", str(path), "--model", str(bloom_dir), "--max-length", "64"]) == 1
    out = capsys.readouterr().out
    assert len(out) < 6000 and "more characters not shown" in out
    assert out.splitlines()[-1].startswith("verdict: nothing to train on: every one of the 1 samples")
