"""DPO: our loss equals TRL's on the same batch (sigmoid and IPO), the first step's loss is ln 2
(policy = reference) for each kind of reference, a synthetic pair set is learnt (reward accuracy
>= 0.9), and the data is read as pairs (formats, file:line errors for another method's data)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from firefly_core.errors import DataError
from firefly_core.training.config import TrainConfig
from firefly_core.training.events import read_events
from firefly_core.training.launch import launch

PREFERENCES = str(Path(__file__).resolve().parents[1] / "firefly_core" / "assets" / "sample_preferences.jsonl")
INSTRUCTIONS = str(Path(__file__).resolve().parents[1] / "firefly_core" / "assets" / "sample_instructions.jsonl")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(model_dir, out, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=[PREFERENCES], out=str(out), gpu="cpu", batch_size=4, max_length=256,
                lr=1e-3, warmup_steps=0, max_steps=2, save_every=100, seed=5, method="dpo")
    base.update(kw)
    return TrainConfig(**base)


def _batch(model_dir, n=4):
    from transformers import AutoTokenizer

    from firefly_core.formats import resolve_format
    from firefly_core.preferences import collate_pairs, read_pairs, tokenize_pairs

    tok = AutoTokenizer.from_pretrained(model_dir)
    pairs, bad, _, _ = read_pairs([PREFERENCES])
    assert not bad
    items, _ = tokenize_pairs(pairs[:n], resolve_format(tok), tok, 256)
    assert len(items) == n
    return tok, collate_pairs(items, tok.pad_token_id)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_loss_equals_trl_on_the_same_batch(loss_type, model_dir, tmp_path):
    """TRL's DPOTrainer computes the loss and rewards of our batch; ours match to 1e-5."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from firefly_core.training.dpo import answer_logps, answer_tokens, dpo_losses

    tok, batch = _batch(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a policy that has moved away from the reference
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=[loss_type], report_to=[], use_cpu=True,
                     bf16=False, per_device_train_batch_size=4)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}]))
    trainer.model.eval()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != -100).long()}
    with torch.no_grad():
        theirs = float(trainer._compute_loss(trainer.model, inputs, return_outputs=False))
        losses, chosen, rejected = dpo_losses(answer_logps(policy, batch), answer_logps(ref, batch), 0.1, loss_type,
                                              answer_tokens(batch))
    metrics = trainer._metrics["eval"]
    assert abs(float(losses.mean()) - theirs) < 1e-5 * max(1.0, abs(theirs))
    assert abs(float(chosen.mean()) - metrics["rewards/chosen"][-1]) < 1e-5
    assert abs(float(rejected.mean()) - metrics["rewards/rejected"][-1]) < 1e-5
    assert abs(float((chosen - rejected).mean()) - metrics["rewards/margins"][-1]) < 1e-5
    assert float((chosen > rejected).float().mean()) == metrics["rewards/accuracies"][-1]
    assert abs(theirs - math.log(2)) > 1e-3  # the policy really differs from the reference


@pytest.mark.parametrize("reference", ["lora", "copy", "precompute"])
def test_first_step_loss_is_ln2_and_events_carry_rewards(reference, bloom_dir, tmp_path):
    run = tmp_path / reference
    extra = {"lora": {"lora": True, "lora_r": 4}, "copy": {}, "precompute": {"precompute_ref": True}}[reference]
    result = launch(_config(bloom_dir, run, **extra))
    assert result.status == "completed"
    steps = [e for e in read_events(run) if e.type == "step"]
    first = steps[0]
    assert abs(first.loss - math.log(2)) < 1e-5, first.loss
    assert first.reward_accuracy == 0 and first.reward_margin == 0  # policy = reference: no pair preferred yet
    assert abs(first.chosen_reward) < 1e-6 and abs(first.rejected_reward) < 1e-6
    assert steps[1].loss != first.loss and steps[1].reward_margin is not None
    assert (run / "final" / "model.safetensors").is_file()


def _synthetic(path: Path, n: int = 24) -> str:
    rows = []
    for k in range(n):
        rows.append({"prompt": f"问题 {k}：今天怎么样？", "chosen": "很好，谢谢！" * 2, "rejected": "不好。" * 3})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return str(path)


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_synthetic_pairs_reach_reward_accuracy(family, bloom_dir, qwen_dir, tmp_path):
    model_dir = bloom_dir if family == "bloom" else qwen_dir
    data = _synthetic(tmp_path / "pairs.jsonl")
    run = tmp_path / "run"
    cfg = _config(model_dir, run, data=[data], batch_size=8, max_steps=8, lr=5e-3, eval_fraction=0.25, eval_every=8)
    assert launch(cfg).status == "completed"
    events = read_events(run)
    steps = [e for e in events if e.type == "step"]
    assert steps[-1].reward_accuracy >= 0.9 and steps[-1].reward_margin > 0
    assert steps[-1].loss < math.log(2) - 0.1
    evals = [e for e in events if e.type == "eval"]
    assert evals and evals[-1].loss < math.log(2) and evals[-1].perplexity is None


def test_ipo_and_beta_are_used(bloom_dir, tmp_path):
    run = tmp_path / "ipo"
    launch(_config(bloom_dir, run, loss="ipo", beta=0.5, max_steps=1))
    first = [e for e in read_events(run) if e.type == "step"][0]
    assert abs(first.loss - (1 / (2 * 0.5)) ** 2) < 1e-5  # IPO at policy = reference: (0 - 1/(2β))²


def test_sft_rows_in_pair_data_and_the_reverse_name_file_and_line(bloom_dir, tmp_path):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(Path(PREFERENCES).read_text("utf-8") + '{"input": "你好", "target": "你好！"}\n', "utf-8")
    with pytest.raises(DataError) as e:
        launch(_config(bloom_dir, tmp_path / "a", data=[str(mixed)]))
    assert f"{mixed}:13" in e.value.message and "--method sft" in e.value.message
    with pytest.raises(DataError) as e:
        launch(_config(bloom_dir, tmp_path / "b", method="sft"))
    assert f"{PREFERENCES}:1" in e.value.message and "--method dpo" in e.value.message


def test_pair_formats_and_bad_pairs(tmp_path):
    from firefly_core.preferences import read_pairs

    f = tmp_path / "p.jsonl"
    lines = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}], "system": "s"},
        {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"conversation": [{"human": "q1", "assistant": "a1"}, {"human": "q2", "chosen": "x", "rejected": "y"}]},
        {"prompt": "q", "chosen": "a"},
        {"chosen": "a", "rejected": "b"},
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n", "utf-8")
    pairs, bad, records, differ = read_pairs([f])
    assert records == 7 and [p.line for p in pairs] == [1, 2, 5] and differ == 1
    assert [p.format for p in pairs] == ["prompt", "prompt", "conversation"]
    assert pairs[1].prompt[0].role == "system"
    assert [m.content for m in pairs[2].prompt] == ["q1", "a1", "q2"]
    reasons = {b.line: b.reason for b in bad}
    assert "different prompts" in reasons[3] and "the same" in reasons[4]
    assert "missing field 'rejected'" in reasons[6] and "whole conversations" in reasons[7]


def test_only_the_last_answer_is_trained(qwen_dir):
    from transformers import AutoTokenizer

    from firefly_core.formats import Message, resolve_format
    from firefly_core.preferences import tokenize_answer

    tok = AutoTokenizer.from_pretrained(qwen_dir)
    msgs = [Message("user", "q1"), Message("assistant", "first answer"), Message("user", "q2"),
            Message("assistant", "second answer")]
    sample, _ = tokenize_answer(resolve_format(tok), tok, msgs, 512)
    trained = tok.decode([t for t in sample.labels if t != -100])
    assert trained.startswith("second answer") and "first" not in trained


@pytest.mark.parametrize("reference", ["copy", "precompute"])
def test_resume_keeps_the_starting_model_as_reference(reference, bloom_dir, tmp_path):
    """A stopped DPO run resumed from its checkpoint gives the same losses as a straight run: the
    reference is the starting model again, not the checkpoint's weights."""
    import os
    import signal

    extra = {"max_steps": 4, "lr": 5e-3, "precompute_ref": reference == "precompute"}
    launch(_config(bloom_dir, tmp_path / "a", **extra))

    def stop_at_2(event):
        if event.type == "step" and event.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    b = tmp_path / "b"
    assert launch(_config(bloom_dir, b, **extra), callbacks=[stop_at_2]).status == "stopped"
    assert launch(_config(bloom_dir, b, **extra), resume=True).status == "completed"
    losses = {}
    for run in ("a", "b"):
        losses[run] = {e.step: e.loss for e in read_events(tmp_path / run) if e.type == "step"}
    assert sorted(losses["b"]) == [1, 2, 3, 4]
    for step in range(1, 5):
        assert losses["b"][step] == pytest.approx(losses["a"][step], rel=1e-5, abs=1e-6), step
    assert losses["a"][4] < losses["a"][1] - 1e-3


def test_chunked_answer_logps_equal_the_plain_ones(qwen_dir, monkeypatch):
    """Big vocabularies: DPO's scores a few positions at a time give the same values and gradients."""
    import torch
    from transformers import AutoModelForCausalLM

    from firefly_core.training import losses

    _, batch = _batch(qwen_dir)
    model = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)

    def run(single_process):
        model.zero_grad()
        values = losses.answer_logps(model, batch, single_process)
        values.sum().backward()
        return values.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    plain, plain_grads = run(False)
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(losses, "CHUNK_BYTES", 9 * vocab * 4)  # 9 positions per chunk
    assert losses.chunk_for(model, batch, True) == 9
    chunked, chunked_grads = run(True)
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(chunked_grads, plain_grads, rtol=1e-4, atol=1e-6)
