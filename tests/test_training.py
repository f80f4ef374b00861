"""Training: a real run whose loss falls, complete events, exact resume after SIGINT, gradient
accumulation / multi-process loss normalisation, LoRA + merge, out-of-memory reporting, config."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest

from firefly_core.errors import ConfigError, OutOfMemoryError
from firefly_core.training.config import TrainConfig, load_config
from firefly_core.training.events import EVENT_TYPES, EventTail, read_events
from firefly_core.training.run import list_runs
from firefly_core.training.launch import launch

ASSETS = Path(__file__).resolve().parents[1] / "firefly_core" / "assets"
INSTRUCTIONS = str(ASSETS / "sample_instructions.jsonl")
CONVERSATIONS = str(ASSETS / "sample_conversations.jsonl")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(model_dir, out, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=[INSTRUCTIONS], out=str(out), gpu="cpu", batch_size=8,
                max_length=128, lr=3e-3, warmup_steps=2, max_steps=10, save_every=100, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def _step_losses(run_dir) -> dict[int, float]:
    return {e.data["step"]: e.data["loss"] for e in read_events(run_dir) if e.type == "step"}


def test_real_run_loss_falls_and_events_are_complete(model_dir, tmp_path):
    run = tmp_path / "run"
    cfg = _config(model_dir, run, data=[INSTRUCTIONS, CONVERSATIONS], max_steps=14, eval_fraction=0.1,
                  eval_every=7, save_every=7, lr=1e-2)
    seen = []
    result = launch(cfg, callbacks=[seen.append])
    assert result.status == "completed" and result.step == 14

    events = read_events(run)
    assert [e.type for e in events] == [e.type for e in seen]  # callbacks see the file's events
    assert all(e.type in EVENT_TYPES and e.time > 0 for e in events)
    types = [e.type for e in events]
    assert types[0] == "start" and types[-1] == "done" and "error" not in types
    start = events[0].data
    assert start["total_steps"] == 14 and 0 < start["eval_samples"] <= 34
    assert start["train_samples"] + start["cut_away"] == 340 - 34 and start["truncated"] > 0
    assert start["config"]["lr"] == 1e-2 and start["supervised_tokens"] > 0
    steps = [e.data for e in events if e.type == "step"]
    assert [s["step"] for s in steps] == list(range(1, 15))
    for s in steps:
        assert {"step", "total", "loss", "lr", "grad_norm", "tokens_per_s", "supervised_tokens", "elapsed",
                "eta", "memory"} <= set(s)
        assert s["total"] == 14 and math.isfinite(s["loss"]) and s["supervised_tokens"] > 0
        assert s["computed_tokens"] >= s["supervised_tokens"]
    assert steps[-1]["eta"] == 0
    assert [e.data["step"] for e in events if e.type == "checkpoint"] == [7, 14]
    evals = [e.data["loss"] for e in events if e.type == "eval"]
    assert len(evals) == 2 and evals[1] < evals[0]
    # From ~ln(vocab)+ at random init to clearly lower, on training batches and held-out data.
    first, last = steps[0]["loss"], sum(s["loss"] for s in steps[-4:]) / 4
    assert last < first - 0.8 and evals[1] < first - 1.0, (first, last, evals)

    # The final folder is a plain transformers model whose stop tokens are the format's.
    from transformers import AutoModelForCausalLM, GenerationConfig

    final = run / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    AutoModelForCausalLM.from_pretrained(final)
    gen = GenerationConfig.from_pretrained(final)
    from firefly_core.models.loading import load_model

    lm = load_model(final, device="cpu", dtype="fp32")
    stops = lm.prompt_format.stop_token_ids(lm.tokenizer)
    assert (gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]) == stops
    [summary] = list_runs(tmp_path)
    assert (summary.status, summary.step, summary.total) == ("done", 14, 14)


def _stop_at(step: int):
    def cb(event):
        if event.type == "step" and event.data["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, through the loop's handler

    return cb


@pytest.mark.parametrize("extra", [{}, {"lora": True, "lora_dropout": 0.2, "grad_accum": 2, "batch_size": 2, "max_length": 64},
                                   {"packing": True, "batch_size": 2, "max_length": 128}],
                         ids=["full", "lora-dropout-accum", "packed"])
def test_sigint_then_resume_gives_the_same_loss_curve(bloom_dir, tmp_path, extra):
    extra = {"max_steps": 6, "max_length": 96, **extra}
    straight = launch(_config(bloom_dir, tmp_path / "a", **extra))
    assert straight.status == "completed"

    b = tmp_path / "b"
    stopped = launch(_config(bloom_dir, b, **extra), callbacks=[_stop_at(3)])
    assert stopped.status == "stopped" and stopped.step == 3
    done = read_events(b)[-1]
    assert done.type == "done" and done.data["status"] == "stopped" and done.data["signal"] == "SIGINT"
    assert list_runs(tmp_path)[0].status in ("stopped", "done")
    assert not (b / "final").exists()

    resumed = launch(_config(bloom_dir, b, **extra), resume=True)
    assert resumed.status == "completed"
    starts = [e for e in read_events(b) if e.type == "start"]
    assert starts[-1].data["start_step"] == 3 and starts[-1].data["resumed_from"].endswith("step-00000003")
    a_losses, b_losses = _step_losses(tmp_path / "a"), _step_losses(b)
    assert sorted(b_losses) == list(range(1, 7))
    for step in range(1, 7):
        assert b_losses[step] == pytest.approx(a_losses[step], rel=1e-5, abs=1e-6), step


def test_loss_is_normalised_over_the_whole_optimizer_step(bloom_dir):
    """Accumulating micro-batches gives the gradient of one big batch (sum / supervised tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from firefly_core.data import collate, load_samples, tokenize_samples
    from firefly_core.formats import get_format
    from firefly_core.training.methods import token_loss_sum as _token_loss_sum

    tok = AutoTokenizer.from_pretrained(bloom_dir)
    samples, _ = load_samples([INSTRUCTIONS])
    items, _ = tokenize_samples(samples[:6], get_format("firefly-v1"), tok, 128)
    model = AutoModelForCausalLM.from_pretrained(bloom_dir, dtype=torch.float32)

    def grads(micro_batches):
        model.zero_grad()
        n = sum(t.supervised for mb in micro_batches for t in mb)
        for mb in micro_batches:
            (_token_loss_sum(model, collate(mb, tok.pad_token_id)) / n).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    whole, split = grads([items]), grads([items[:1], items[1:4], items[4:]])
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-6)
    # A mean of per-micro-batch means (the common mistake) would differ clearly.
    model.zero_grad()
    for mb in ([items[:1], items[1:4], items[4:]]):
        batch = collate(mb, tok.pad_token_id)
        (_token_loss_sum(model, batch) / sum(t.supervised for t in mb) / 3).backward()
    wrong = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert not torch.allclose(wrong, whole, rtol=1e-2)


def test_lora_run_and_merge(bloom_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from firefly_tui.cli import main

    run = tmp_path / "lora"
    result = launch(_config(bloom_dir, run, max_steps=4, lora=True, lora_r=4))
    assert result.status == "completed"
    start = read_events(run)[0].data
    full = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(bloom_dir).parameters())
    assert 0 < start["trainable_params"] < full / 5
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    ids = torch.tensor([[1, 50, 60, 70, 2]])
    a = AutoModelForCausalLM.from_pretrained(run / "final").eval()(ids).logits
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()(ids).logits
    base = AutoModelForCausalLM.from_pretrained(bloom_dir).eval()(ids).logits
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, base)  # the adapter changed something


def test_out_of_memory_is_reported_with_step_and_suggestions(bloom_dir, tmp_path, monkeypatch):
    import torch

    from firefly_core.training import methods

    real, calls = methods.token_loss_sum, []

    def flaky(model, batch):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, batch)

    monkeypatch.setattr(methods, "token_loss_sum", flaky)
    with pytest.raises(OutOfMemoryError) as e:
        launch(_config(bloom_dir, tmp_path / "oom", max_steps=5))
    assert "at step 3" in e.value.message
    for word in ("--batch-size", "--grad-accum", "--gradient-checkpointing", "--lora", "--offload"):
        assert word in e.value.hint
    last = read_events(tmp_path / "oom")[-1]
    assert last.type == "error" and last.data["step"] == 3 and last.data["traceback"]
    assert list_runs(tmp_path)[0].status == "error"


def test_config_toml_and_overrides(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text('model = "m"\ndata = "d.jsonl"\nbatch-size = 4\nlr = 1e-4\ngpu = 0\n', "utf-8")
    cfg = load_config(toml, {"lr": 2e-4, "out": "o", "epochs": None})
    assert (cfg.model, cfg.data, cfg.batch_size, cfg.lr, cfg.gpu, cfg.out) == ("m", ["d.jsonl"], 4, 2e-4, "0", "o")
    assert cfg.warmup_steps is None and cfg.schedule == "cosine" and cfg.max_length == 512
    assert TrainConfig().batch_size == 16 and TrainConfig().lr == 3e-5
    with pytest.raises(ConfigError, match="unknown option 'batch'"):
        load_config(None, {"batch": 3})
    with pytest.raises(ConfigError, match="--gpu"):
        TrainConfig(model="m", data=["d"], out="o", gpu="zero").validate()
    with pytest.raises(ConfigError, match="ZeRO stage"):
        TrainConfig(model="m", data=["d"], out="o", deepspeed=1).validate()


def test_deepspeed_missing_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from firefly_core.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # an import of it now fails, as when not installed
    with pytest.raises(MissingExtraError) as e:
        launch(TrainConfig(model="m", data=[INSTRUCTIONS], out=str(tmp_path / "r"), gpu="cpu", deepspeed=2))
    assert "firefly-tui[deepspeed]" in e.value.hint and "deepspeed" in e.value.message


def test_refuses_to_overwrite_a_run_and_resume_checks_options(bloom_dir, tmp_path):
    from firefly_core.training.launch import resolve_resume

    run = tmp_path / "r"
    launch(_config(bloom_dir, run, max_steps=2))
    with pytest.raises(ConfigError, match="already holds a training run"):
        launch(_config(bloom_dir, run, max_steps=2))
    with pytest.raises(ConfigError, match="lr"):
        resolve_resume({"lr": 1.0}, run)
    assert resolve_resume({"max_steps": 5}, run).max_steps == 5


def test_event_tail_is_incremental_and_skips_a_half_written_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "start", "time": 1}\n{"type": "step", "st', "utf-8")
    tail = EventTail(tmp_path)
    assert [e.type for e in tail.poll()] == ["start"]
    assert tail.poll() == []
    with path.open("a") as f:
        f.write('ep": 1, "loss": 2.5, "time": 2}\n')
    [e] = tail.poll()
    assert (e.type, e.step, e.loss) == ("step", 1, 2.5)


@pytest.mark.parametrize("fmt", ["firefly-v1", "firefly-v2"])
def test_final_folder_prompts_like_training(bloom_dir, tmp_path, fmt):
    """The final tokenizer carries a chat_template equal to the trained Firefly format, so chat,
    transformers and vLLM all prompt the model as it was trained."""
    from transformers import AutoTokenizer

    from firefly_core.formats import ChatTemplate, Message, get_format, resolve_format

    run = tmp_path / fmt
    launch(_config(bloom_dir, run, max_steps=1, data=[CONVERSATIONS], prompt_format=fmt))
    tok = AutoTokenizer.from_pretrained(run / "final")
    assert isinstance(resolve_format(tok), ChatTemplate)
    conv = [Message("system", "你是助手"), Message("user", "你好"), Message("assistant", "你好呀"),
            Message("user", "再见"), Message("assistant", "再见！")]
    for messages in (conv, conv[1:], conv[:4]):
        gen = messages[-1].role == "user"
        want = get_format(fmt).render(tok, messages, add_generation_prompt=gen)
        got = ChatTemplate().render(tok, messages, add_generation_prompt=gen)
        assert got.ids == want.ids
        if not gen:  # a prompt to reply to is rendered in one pass: its mask is never used (formats.py)
            assert got.trainable == want.trainable
    assert ChatTemplate().stop_token_ids(tok) == get_format(fmt).stop_token_ids(tok)


def test_generated_launch_configs_for_several_gpus(tmp_path):
    """What `--gpu 0,1 --deepspeed 3 --offload` hands to accelerate launch (run on GPUs only)."""
    from accelerate.commands.config.config_args import load_config_from_file

    from firefly_core.training.launch import ACCELERATE_CONFIG_FILE, _yaml, accelerate_config, deepspeed_config, worker_command

    cfg = TrainConfig(model="m", data=["d"], out=str(tmp_path), gpu="0,1", deepspeed=3, offload=True,
                      grad_accum=4, batch_size=2).validate()
    (tmp_path / ACCELERATE_CONFIG_FILE).write_text(_yaml(accelerate_config(cfg, "bf16")))
    parsed = load_config_from_file(str(tmp_path / ACCELERATE_CONFIG_FILE))
    assert (str(parsed.distributed_type), parsed.num_processes, parsed.gpu_ids, parsed.mixed_precision) == (
        "DistributedType.DEEPSPEED", 2, "0,1", "bf16")
    ds = deepspeed_config(cfg, "bf16")
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert (ds["gradient_accumulation_steps"], ds["train_micro_batch_size_per_gpu"], ds["bf16"]["enabled"]) == (4, 2, True)
    cmd, _ = worker_command(cfg, resume=True)
    assert cmd[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(tmp_path.resolve() / ACCELERATE_CONFIG_FILE)]
    assert cmd[-3:] == ["firefly_core.training.worker", str(tmp_path.resolve()), "--resume"]


def test_asking_for_a_gpu_without_cuda_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError) as e:
        launch(TrainConfig(model="m", data=["d"], out=str(tmp_path / "r"), gpu="0"))
    assert "CUDA is not available" in e.value.message and e.value.hint == "use --gpu cpu"
    assert not (tmp_path / "r").exists()
