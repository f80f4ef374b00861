"""`firefly data check` on preference pairs: counts, prompts that differ, answers cut by
--max-length (counted, as training skips them), one pair as trained with the differing tokens
marked, and rows of another method's data named by file:line."""

from __future__ import annotations

import json
from pathlib import Path

from firefly_tui.cli import main

PREFERENCES = Path(__file__).resolve().parents[1] / "firefly_core" / "assets" / "sample_preferences.jsonl"


def test_pair_report_with_a_model(bloom_dir, capsys):
    assert main(["data", "check", str(PREFERENCES), "--model", str(bloom_dir)]) == 0
    out = capsys.readouterr().out
    assert "preference pairs: lines 12   valid: 12   bad: 0   prompts differ between chosen and rejected: 0" in out
    assert "formats: conversation 1, implicit 1, prompt 10" in out
    assert "skipped (an answer cut away entirely) 0" in out
    chosen = next(line for line in out.splitlines() if line.startswith("chosen: "))
    rejected = next(line for line in out.splitlines() if line.startswith("rejected: "))
    # The shared prompt is plain, each answer is trained, and the answers' words are marked as differing.
    assert chosen.startswith("chosen: <s>用一句话介绍萤火虫。</s></s>⟦«萤火虫是一类")
    assert rejected == "rejected: <s>用一句话介绍萤火虫。</s></s>⟦«不知道»。</s>⟧"


def test_cut_pairs_are_counted_like_training_skips_them(bloom_dir, capsys):
    from transformers import AutoTokenizer

    from firefly_core.formats import resolve_format
    from firefly_core.preferences import read_pairs, tokenize_pairs

    assert main(["data", "check", str(PREFERENCES), "--model", str(bloom_dir), "--max-length", "40"]) == 0
    out = capsys.readouterr().out
    tok = AutoTokenizer.from_pretrained(bloom_dir)
    pairs, _, _, _ = read_pairs([PREFERENCES])
    _, stats = tokenize_pairs(pairs, resolve_format(tok), tok, 40)
    assert stats.cut_away > 0
    assert f"skipped (an answer cut away entirely) {stats.cut_away}" in out
    assert f"warning: {stats.cut_away} pair(s)" in out and f"{PREFERENCES}:{pairs[5].line}" in out


def test_prompts_that_differ_and_sft_rows(tmp_path, capsys):
    f = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
        {"input": "q", "target": "a"},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    assert main(["data", "check", str(f), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "valid: 1   bad: 2   prompts differ between chosen and rejected: 1" in out
    assert f"{f}:2: chosen and rejected have different prompts" in out
    assert f"{f}:3: this line is an instruction example" in out and "--method sft" in out


def test_pair_rows_in_instruction_data_are_named(tmp_path, capsys):
    f = tmp_path / "sft.jsonl"
    f.write_text('{"input": "q", "target": "a"}\n{"prompt": "q", "chosen": "a", "rejected": "b"}\n', "utf-8")
    assert main(["data", "check", str(f)]) == 0
    out = capsys.readouterr().out
    assert f"{f}:2: this line is a preference pair" in out and "--method dpo" in out


def test_raw_text_report(bloom_dir, tmp_path, capsys):
    """Raw text for --method pretrain: documents (blank-line blocks), tokens, pieces; instruction
    rows in a text JSONL are named by file:line."""
    f = tmp_path / "corpus.txt"
    f.write_text("第一篇。\n还是第一篇。\n\n第二篇。\n", "utf-8")
    assert main(["data", "check", str(f), "--model", str(bloom_dir), "--max-length", "8"]) == 0
    out = capsys.readouterr().out
    assert "raw text (--method pretrain): documents 2   bad lines: 0" in out
    assert "2 document(s) longer than 8 cut into pieces" in out
    j = tmp_path / "t.jsonl"
    j.write_text('{"text": "abc"}\n{"input": "a", "target": "b"}\n', "utf-8")
    assert main(["data", "check", str(j), "--strict"]) == 1
    out = capsys.readouterr().out
    assert "documents 1   bad lines: 1" in out and f"{j}:2: this line is an instruction example" in out
