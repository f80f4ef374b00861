"""Training data: readers, exact bad-line messages, loss masks per format, truncation, batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firefly_core.data import (
    IGNORE_INDEX,
    check_files,
    collate,
    load_samples,
    parse_line,
    plan_epoch,
    read_samples,
    tokenize_sample,
    tokenize_samples,
)
from firefly_core.errors import DataError
from firefly_core.formats import Message, get_format

ASSETS = Path(__file__).resolve().parents[1] / "firefly_core" / "assets"


@pytest.fixture(scope="module")
def bloom_tok(bloom_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bloom_dir)


@pytest.fixture(scope="module")
def qwen_tok(qwen_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_dir)


def _enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


# ------------------------------------------------------------------ masks, built independently


def test_firefly_v1_mask_is_exactly_the_target(bloom_tok):
    bos, eos = bloom_tok.convert_tokens_to_ids("<s>"), bloom_tok.convert_tokens_to_ids("</s>")
    fmt, kind, messages = parse_line(json.dumps({"kind": "Poetry", "input": "写一首诗", "target": "春眠不觉晓"}))
    assert (fmt, kind) == ("firefly", "Poetry")
    t = tokenize_sample(get_format("firefly-v1"), bloom_tok, messages, 512)
    prompt = [bos] + _enc(bloom_tok, "写一首诗") + [eos, eos]
    answer = _enc(bloom_tok, "春眠不觉晓") + [eos]
    assert t.input_ids == prompt + answer
    assert t.labels == [IGNORE_INDEX] * len(prompt) + answer


def test_multi_turn_v2_masks_every_user_turn_and_system(bloom_tok):
    bos, eos = bloom_tok.convert_tokens_to_ids("<s>"), bloom_tok.convert_tokens_to_ids("</s>")
    line = {"system": "你是助手", "conversation": [{"human": "你好", "assistant": "你好呀"}, {"human": "再见", "assistant": "再见！"}]}
    fmt, _, messages = parse_line(json.dumps(line, ensure_ascii=False))
    assert fmt == "conversation"
    t = tokenize_sample(get_format("firefly-v2"), bloom_tok, messages, 512)
    q1 = [bos] + _enc(bloom_tok, "你是助手\n\n你好") + [eos]
    a1 = _enc(bloom_tok, "你好呀") + [eos]
    q2 = _enc(bloom_tok, "再见") + [eos]
    a2 = _enc(bloom_tok, "再见！") + [eos]
    assert t.input_ids == q1 + a1 + q2 + a2
    ign = lambda xs: [IGNORE_INDEX] * len(xs)  # noqa: E731
    assert t.labels == ign(q1) + a1 + ign(q2) + a2


def test_chat_template_mask_covers_replies_and_im_end_only(qwen_tok):
    line = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4"}]}
    fmt, _, messages = parse_line(json.dumps(line))
    assert fmt == "messages"
    t = tokenize_sample(get_format("chat_template"), qwen_tok, messages, 512)
    # Independent expectation: the template text, tokenized, with trained runs located by text.
    text = qwen_tok.apply_chat_template([m.to_dict() for m in messages], tokenize=False)
    assert t.input_ids == _enc(qwen_tok, text)
    runs, cur = [], []
    for tid, lab in zip(t.input_ids, t.labels):
        if lab != IGNORE_INDEX:
            assert lab == tid
            cur.append(tid)
        elif cur:
            runs.append(qwen_tok.decode(cur)), cur.clear()
    assert runs == ["hello<|im_end|>", "4<|im_end|>"]


def test_padding_is_ignored_and_right_padded(bloom_tok):
    fmt = get_format("firefly-v1")
    a = tokenize_sample(fmt, bloom_tok, [Message("user", "短"), Message("assistant", "好")], 512)
    b = tokenize_sample(fmt, bloom_tok, [Message("user", "一个长一些的问题"), Message("assistant", "一个长一些的回答")], 512)
    batch = collate([a, b], pad_id=bloom_tok.pad_token_id)
    n = len(a.input_ids)
    assert batch["labels"][0, n:].eq(IGNORE_INDEX).all()
    assert batch["input_ids"][0, n:].eq(bloom_tok.pad_token_id).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
    assert batch["labels"][0, :n].tolist() == a.labels and batch["labels"][1].tolist() == b.labels


def test_truncation_counted_and_cut_away_samples_dropped(bloom_tok, tmp_path):
    f = tmp_path / "long.jsonl"
    rows = [
        {"input": "短问题", "target": "短回答"},
        {"input": "问" * 10, "target": "答" * 200},  # truncated inside the answer: kept
        {"input": "问" * 300, "target": "答"},  # answer entirely beyond max length: dropped
    ]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    samples, bad = load_samples([f])
    assert not bad
    kept, stats = tokenize_samples(samples, get_format("firefly-v1"), bloom_tok, max_length=64)
    assert (stats.kept, stats.truncated, stats.cut_away) == (2, 1, 1)
    assert stats.cut_away_where == [f"{f}:3"]
    assert all(len(t.input_ids) <= 64 and t.supervised > 0 for t in kept)


# ------------------------------------------------------------------ bad lines


BAD_FILE = "\n".join([
    '{"kind": "a", "input": "q", "target": "a"}',
    '{"input": "q", "target": ""}',
    "{not json",
    "",
    '{"input": 5, "target": "x"}',
    '{"target": "x"}',
    '[1, 2]',
    '{"conversation": [{"human": "hi"}]}',
    '{"conversation": "hi"}',
    '{"messages": [{"role": "user", "content": "q"}]}',
    '{"messages": [{"role": "bot", "content": "q"}]}',
    '{"foo": 1}',
    '{"conversation": [{"human": "q", "assistant": "a"}], "system": "s"}',
    '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
]) + "\n"


def test_bad_lines_exact_messages_and_counts(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(BAD_FILE, "utf-8")
    samples, bad, lines = read_samples([f])
    assert lines == 13 and len(samples) == 3 and len(bad) == 10
    assert [str(b) for b in bad] == [
        f"{f}:2: empty target",
        f"{f}:3: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{f}:5: field 'input' must be a string, not number",
        f"{f}:6: missing field 'input'",
        f"{f}:7: expected a JSON object, got array",
        f"{f}:8: missing field turn 1 'assistant'",
        f"{f}:9: field 'conversation' must be an array, not string",
        f"{f}:10: the last message must be from the assistant (nothing to train on)",
        f"{f}:11: message 1 has role 'bot'; expected system, user or assistant",
        f"{f}:12: unknown format: expected keys input/target, conversation, or messages (found: foo)",
    ]
    assert [s.line for s in samples] == [1, 13, 14]
    with pytest.raises(DataError) as e:
        load_samples([f], strict=True)
    assert "10 bad line(s)" in e.value.message and f"{f}:12:" in e.value.message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no data file"):
        read_samples([tmp_path / "nope.jsonl"])


def test_check_files_report_on_bundled_samples(bloom_tok):
    files = [ASSETS / "sample_instructions.jsonl", ASSETS / "sample_conversations.jsonl", ASSETS / "sample_messages.jsonl"]
    report = check_files(files, tokenizer=bloom_tok, max_length=512)
    assert report.by_format == {"firefly": 300, "conversation": 40, "messages": 10}
    assert report.by_kind["OpenQA"] == 26 and not report.bad
    assert sum(c for _, _, c in report.histogram) == 350
    assert report.tokens.truncated + report.tokens.cut_away == sum(n > 512 for n in report.tokens.lengths)
    assert any(trained for _, trained in report.example) and any(not t for _, t in report.example)


def test_data_check_command_output(tmp_path, bloom_dir, capsys):
    from firefly_tui.cli import main

    f = tmp_path / "mixed.jsonl"
    f.write_text(BAD_FILE, "utf-8")
    assert main(["data", "check", str(f), "--model", str(bloom_dir), "--show", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "lines: 13   valid: 3   bad: 10"
    assert out[2] == "formats: conversation 1, firefly 1, messages 1"
    assert out[4:8] == ["bad lines:", f"  {f}:2: empty target",
                        f"  {f}:3: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
                        f"  {f}:5: field 'input' must be a string, not number"]
    assert out[8] == "  ... and 7 more"
    assert any(line.startswith("length histogram:") for line in out)
    example = out[-2]
    assert example == "<s>q</s></s>⟦a</s>⟧"
    assert out[-1] == "verdict: ready: 3 samples to train on; 10 bad line(s) will be skipped"
    assert main(["data", "check", str(f), "--strict"]) == 1


# ------------------------------------------------------------------ batching


def test_plan_epoch_is_a_deterministic_partition_with_little_padding(bloom_tok):
    samples, _ = load_samples([ASSETS / "sample_instructions.jsonl", ASSETS / "sample_conversations.jsonl"])
    kept, _ = tokenize_samples(samples, get_format("firefly-v1"), bloom_tok, 512)
    lengths = [len(t.input_ids) for t in kept]
    plan = plan_epoch(lengths, 8, seed=1, epoch=0)
    assert plan == plan_epoch(lengths, 8, seed=1, epoch=0)
    assert plan != plan_epoch(lengths, 8, seed=1, epoch=1)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    computed = sum(max(lengths[i] for i in b) * len(b) for b in plan)
    assert 1 - sum(lengths) / computed < 0.10  # padding share
