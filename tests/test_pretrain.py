"""Continued pretraining: documents from .txt (blank-line blocks) and JSONL `text`, every token
trained, packed rows, perplexity on --eval-file before and after (events and the run's note),
--train-embeddings-only, and file:line errors for another method's data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from firefly_core.errors import ConfigError, DataError
from firefly_core.training.config import TrainConfig
from firefly_core.training.events import read_events
from firefly_core.training.launch import launch

CORPUS = Path(__file__).resolve().parents[1] / "firefly_core" / "assets" / "kit_corpus.txt"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _files(tmp_path: Path) -> tuple[str, str, str]:
    lines = [x for x in CORPUS.read_text("utf-8").splitlines() if x.strip()]
    train_txt = tmp_path / "train.txt"
    train_txt.write_text("\n\n".join(lines[:24]) + "\n", "utf-8")  # 24 documents
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("".join(json.dumps({"text": x}, ensure_ascii=False) + "\n" for x in lines[24:30]), "utf-8")
    held = tmp_path / "held.txt"
    held.write_text("\n\n".join(lines[:6]) + "\n", "utf-8")
    return str(train_txt), str(jsonl), str(held)


def _config(model_dir, out, data, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=data, out=str(out), gpu="cpu", batch_size=2, max_length=128, lr=1e-2,
                warmup_steps=0, max_steps=10, save_every=100, seed=11, method="pretrain")
    base.update(kw)
    return TrainConfig(**base)


def test_documents_and_tokens(tmp_path, bloom_dir):
    from transformers import AutoTokenizer

    from firefly_core.documents import read_documents, tokenize_documents

    one = tmp_path / "one.txt"
    one.write_text("line one\nline two\n", "utf-8")  # no blank line: one document
    blocks = tmp_path / "blocks.txt"
    blocks.write_text("a b\nc\n\n\nd e\n\nf\n", "utf-8")
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"text": "x y"}\n{"text": ""}\n{"other": 1}\n', "utf-8")
    docs, bad = read_documents([one, blocks, jl])
    assert [d.text for d in docs] == ["line one\nline two", "a b\nc", "d e", "f", "x y"]
    assert [d.line for d in docs] == [1, 1, 5, 7, 1]
    assert [(b.line, b.wrong_kind) for b in bad] == [(2, False), (3, False)]

    tok = AutoTokenizer.from_pretrained(bloom_dir)
    items, stats = tokenize_documents(docs[:1], tok, 5)
    ids = [tok.bos_token_id, *tok.encode("line one\nline two", add_special_tokens=False), tok.eos_token_id]
    assert [t for s in items for t in s.input_ids] == ids  # cut into pieces, nothing lost
    assert all(s.labels == s.input_ids and len(s.input_ids) <= 5 for s in items)  # every token trained
    assert stats.tokens == sum(len(s.input_ids) - 1 for s in items)


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_pretrain_run_perplexity_before_and_after(family, bloom_dir, qwen_dir, tmp_path):
    model_dir = bloom_dir if family == "bloom" else qwen_dir
    train_txt, jsonl, held = _files(tmp_path)
    run = tmp_path / "run"
    seen = []
    result = launch(_config(model_dir, run, [train_txt, jsonl], eval_file=held, eval_every=10), callbacks=[seen.append])
    assert result.status == "completed"
    events = read_events(run)
    start = events[0]
    assert start.train_samples == 30 and any("packed into" in n for n in start.notes)
    evals = [e for e in events if e.type == "eval"]
    assert [e.step for e in evals] == [0, 10]
    assert evals[1].perplexity < evals[0].perplexity / 2  # the held-out poems were seen in training
    assert abs(evals[0].perplexity - math.exp(evals[0].loss)) / evals[0].perplexity < 1e-3
    done = events[-1]
    assert done.type == "done" and "before" in done.message and f"{evals[1].perplexity:.2f}" in done.message
    steps = [e for e in events if e.type == "step"]
    assert steps[-1].loss < steps[0].loss


def test_train_embeddings_only_changes_only_embeddings_and_head(qwen_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    train_txt, jsonl, _ = _files(tmp_path)
    run = tmp_path / "emb"
    launch(_config(qwen_dir, run, [train_txt], max_steps=3, train_embeddings_only=True))
    start = read_events(run)[0]
    base = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)
    after = AutoModelForCausalLM.from_pretrained(run / "final", dtype=torch.float32)
    emb = {"model.embed_tokens.weight", "lm_head.weight"}
    assert start.trainable_params == sum(p.numel() for n, p in base.named_parameters() if n in emb)
    a, b = dict(base.named_parameters()), dict(after.named_parameters())
    for name in a:
        changed = not torch.equal(a[name], b[name])
        assert changed == (name in emb), name


def test_instruction_rows_in_text_data_name_file_and_line(bloom_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"input": "q", "target": "a"}\n', "utf-8")
    with pytest.raises(DataError) as e:
        launch(_config(bloom_dir, tmp_path / "r", [str(bad)]))
    assert f"{bad}:2" in e.value.message and "--method sft" in e.value.message


def test_method_options_are_checked():
    with pytest.raises(ConfigError, match="unknown method"):
        TrainConfig(model="m", data=["d"], out="o", method="rlhf").validate()
    with pytest.raises(ConfigError, match="--packing is for"):
        TrainConfig(model="m", data=["d"], out="o", method="dpo", packing=True).validate()
    with pytest.raises(ConfigError, match="--loss is for"):
        TrainConfig(model="m", data=["d"], out="o", loss="ipo").validate()
    with pytest.raises(ConfigError, match="exclude each other"):
        TrainConfig(model="m", data=["d"], out="o", lora=True, train_embeddings_only=True).validate()
    with pytest.raises(ConfigError, match="--beta"):
        TrainConfig(model="m", data=["d"], out="o", method="dpo", beta=0).validate()


def test_resumed_pretraining_keeps_the_perplexity_before(bloom_dir, tmp_path):
    import os
    import signal

    train_txt, jsonl, held = _files(tmp_path)
    run = tmp_path / "run"
    cfg = dict(eval_file=held, eval_every=6, max_steps=6)

    def stop_at_3(event):
        if event.type == "step" and event.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    assert launch(_config(bloom_dir, run, [train_txt], **cfg), callbacks=[stop_at_3]).status == "stopped"
    assert launch(_config(bloom_dir, run, [train_txt], **cfg), resume=True).status == "completed"
    events = read_events(run)
    before = next(e for e in events if e.type == "eval" and e.step == 0)
    assert sum(1 for e in events if e.type == "eval" and e.step == 0) == 1  # measured once, at the start
    assert f"{before.perplexity:.2f} before" in events[-1].message
