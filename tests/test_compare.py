"""`firefly compare`: replies as transformers' greedy `generate` gives them, the checks (stops,
empty, repetition), next-token agreement and perplexity against transformers' own forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from firefly_core.errors import DataError, FireflyError
from firefly_core.evaluation.compare import (
    generate_replies, load_prompts, next_token_agreement, perplexity, repetition_score, reply_config,
)
from firefly_core.formats import Message

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lm(path: Path):
    from firefly_core.models.service import model_service

    service = model_service()
    return service.get(service.request_for(str(path), engine="torch", dtype="fp32", device="cpu"))


@pytest.fixture(scope="module")
def other_qwen(tmp_path_factory) -> Path:
    """Another random Qwen2 with the same tokenizer: a different "build" that must disagree."""
    from firefly_core.testkit import build_model_folder

    return build_model_folder(tmp_path_factory.mktemp("models") / "tiny-qwen2-seed1", "qwen2", tie_word_embeddings=False, seed=1)


def test_repetition_score_counts_ngrams_seen_before():
    assert repetition_score([1, 2, 3, 4, 5, 6]) == 0.0
    assert repetition_score([1, 2, 3]) == 0.0  # shorter than one 4-gram
    # 1 2 3 4 1 2 3 4: 4-grams 1234 2341 3412 4123 1234 -> the last one repeats
    assert repetition_score([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(1 / 5)
    loop = [7, 8] * 20
    assert repetition_score(loop) == pytest.approx((len(loop) - 3 - 2) / (len(loop) - 3))


def test_replies_are_transformers_greedy_generate(qwen_dir):
    lm = _lm(qwen_dir)
    prompts = load_prompts()[:3]
    config = reply_config(max_new_tokens=12)
    replies = generate_replies(lm, prompts, config)
    stop = lm.stop_token_ids
    for prompt, reply in zip(prompts, replies):
        ids = lm.prompt_format.render(lm.tokenizer, [Message("user", prompt)], add_generation_prompt=True).ids
        with torch.no_grad():
            out = lm.model.generate(
                torch.tensor([ids]), do_sample=False, max_new_tokens=12, eos_token_id=stop,
                pad_token_id=stop[0], repetition_penalty=1.0,
            )[0, len(ids):].tolist()
        assert reply.new_tokens == len(out)
        assert reply.stopped == (out[-1] in stop and len(out) <= 12)
        assert reply.stop_reason == ("stop_token" if out[-1] in stop else "max_new_tokens")
        body = out[:-1] if out[-1] in stop else out
        # the text as streamed: the same, less bytes of a character the limit cut in half
        full = lm.tokenizer.decode(body, skip_special_tokens=True)
        assert full.startswith(reply.text) and set(full[len(reply.text):]) <= {"\ufffd"}
        assert reply.repetition == repetition_score(lm.tokenizer.encode(reply.text, add_special_tokens=False))
        assert reply.empty == (not reply.text.strip())


def test_next_token_agreement_against_transformers(qwen_dir, other_qwen):
    a, b = _lm(qwen_dir), _lm(other_qwen)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    texts = ["今天天气很好，我们去公园散步吧。", "The early bird catches the worm."]
    same, total = next_token_agreement(a, a, texts)
    assert same == total > 20
    same, total = next_token_agreement(a, b, texts)
    expect = 0
    for text in texts:
        ids = torch.tensor([a.tokenizer.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            expect += int((a.model(ids).logits.argmax(-1) == b.model(ids).logits.argmax(-1)).sum())
    assert same == expect and same < total


def test_next_token_agreement_needs_one_vocabulary(qwen_dir, bloom_dir):
    with pytest.raises(FireflyError, match="different vocabularies"):
        next_token_agreement(_lm(qwen_dir), _lm(bloom_dir), ["你好"])


def test_perplexity_is_transformers_loss(qwen_dir):
    lm = _lm(qwen_dir)
    text = "春天来了，花都开了。小鸟在树上唱歌，孩子们在草地上奔跑。"
    ids = torch.tensor([lm.tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        loss = lm.model(ids, labels=ids).loss
    assert perplexity(lm, text) == pytest.approx(float(torch.exp(loss)), rel=1e-4)
    with pytest.raises(DataError, match="too short"):
        perplexity(lm, "")


def test_shipped_prompts_and_bad_prompt_files(tmp_path):
    prompts = load_prompts()
    assert len(prompts) == 30 and len(set(prompts)) == 30
    assert sum(any("\u4e00" <= ch <= "\u9fff" for ch in p) for p in prompts) >= 28
    (tmp_path / "p.txt").write_text("第一个\n\n second \n", encoding="utf-8")
    assert load_prompts(tmp_path / "p.txt") == ["第一个", "second"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        load_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(tmp_path / "missing.jsonl")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")


def test_cli_side_by_side_with_checks_and_json(qwen_dir, other_qwen, tmp_path, capsys, monkeypatch):
    from firefly_tui.cli import main

    monkeypatch.setenv("COLUMNS", "140")
    text = tmp_path / "held.txt"
    text.write_text("今天天气很好，我们去公园散步吧。", encoding="utf-8")
    out = tmp_path / "c.json"
    rc = main(["compare", str(qwen_dir), str(other_qwen), "--limit", "2", "--max-new-tokens", "6",
               "--text", str(text), "--dtype", "fp32", "--device", "cpu", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "replies that stop by themselves" in printed and "next-token agreement" in printed
    assert "perplexity on --text" in printed
    doc = json.loads(out.read_text())
    assert [len(m["replies"]) for m in doc["models"]] == [2, 2]
    assert doc["models"][0]["next_token_agreement_with_first"] is None
    assert 0 <= doc["models"][1]["next_token_agreement_with_first"] < 1
    assert set(doc["models"][0]["checks"]) >= {"stopped", "empty", "repetition", "perplexity"}


def test_evaluate_run_saves_base_vs_final_in_the_run_folder(qwen_dir, other_qwen, tmp_path):
    """The app's Evaluate: compare (and an exam) of a run's base vs its final/, saved for reopening."""
    import shutil

    from firefly_core.evaluation.run_eval import evaluate_run, load_evaluation, summary_lines
    from firefly_core.training.config import CONFIG_FILE
    from firefly_core.training.run_dir import EVAL_FILE
    from test_eval import write_ceval

    run = tmp_path / "run"
    run.mkdir()
    (run / CONFIG_FILE).write_text(json.dumps({"model": str(qwen_dir)}), encoding="utf-8")
    shutil.copytree(other_qwen, run / "final")
    exam = write_ceval(tmp_path / "exam")
    seen = []
    doc = evaluate_run(run, exam=exam, shots=1, limit=2, prompts=2, max_new_tokens=6, progress=seen.append)
    assert (run / EVAL_FILE).is_file() and load_evaluation(run) == json.loads((run / EVAL_FILE).read_text())
    assert doc["base"] == str(qwen_dir) and doc["made_label"] == "final"
    assert doc["checks"]["base"]["replies"] == 2 and doc["checks"]["made"]["replies"] == 2
    assert 0 <= doc["next_token_agreement"] < 1
    assert [r["model"] for r in doc["eval"]["json"]["results"]] == [str(qwen_dir), str(run / "final")]
    assert len(doc["eval"]["json"]["results"][1]["questions"]) == 4
    assert seen[-1].step == "done" and seen[-1].done == seen[-1].total == 2 * 2 + 2 * 4
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    lines = summary_lines(load_evaluation(run))
    assert any(line.startswith("ceval: base") for line in lines) and "next-token agreement" in "\n".join(lines)
    (run / EVAL_FILE).write_text("not json", encoding="utf-8")
    assert load_evaluation(run) is None


async def test_app_evaluate_compares_base_and_final_and_shows_it_again(fresh_home, qwen_dir, other_qwen, tmp_path):
    """Train screen: Evaluate on a finished run runs the comparison in a worker with a progress bar,
    saves it in the run folder, and the panel shows it when the run is opened again."""
    import shutil

    from app_helpers import wait_screen, wait_until
    from test_app_train import make_app, open_train, shown, write_run

    from firefly_core.paths import runs_dir
    from firefly_core.store import ChatStore
    from firefly_core.training.config import CONFIG_FILE
    from firefly_core.training.run_dir import EVAL_FILE
    from firefly_tui.screens.dialogs import ChoiceDialog

    run = runs_dir() / "run-eval"
    write_run(run, 3, total=3, done=True).close()
    (run / CONFIG_FILE).write_text(json.dumps({"model": str(qwen_dir)}), encoding="utf-8")
    shutil.copytree(other_qwen, run / "final")
    store = ChatStore(tmp_path / "chats.sqlite3")
    try:
        app = make_app(store)
        async with app.run_test(size=(150, 48)) as pilot:
            screen = await open_train(pilot)
            await wait_until(pilot, lambda: shown(screen, run) and screen.run.status == "done")
            assert not screen.query_one("#evaluate").disabled
            await pilot.click("#evaluate")
            await wait_screen(pilot, ChoiceDialog)
            await pilot.press("enter")  # the first choice: compare base and final/
            await wait_until(pilot, lambda: (run / EVAL_FILE).is_file(), timeout=120, what="evaluation.json")
            await wait_until(pilot, lambda: "next-token agreement" in str(screen.query_one("#eval-summary").render()))
            bar = screen.query_one("#eval-progress")
            assert bar.total == 16 and bar.progress == 16  # 8 prompts x 2 models, reported as they went
            assert not bar.display  # hidden once done
        doc = json.loads((run / EVAL_FILE).read_text())
        assert doc["base"] == str(qwen_dir) and doc["eval"] is None and doc["checks"]["made"]["replies"] == 8
        app = make_app(store)
        async with app.run_test(size=(80, 24)) as pilot:  # reopened, narrow
            screen = await open_train(pilot)
            await wait_until(pilot, lambda: shown(screen, run))
            await wait_until(pilot, lambda: "replies stop" in str(screen.query_one("#eval-summary").render()))
            assert screen.query_one("#run-evaluation").display
    finally:
        store.close()
