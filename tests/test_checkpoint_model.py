"""A checkpoint of a run as a chat-ready model folder: the oracle is the run's own final/ — the
checkpoint of the last step must give exactly the same weights, LoRA merged the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from firefly_core.errors import FireflyError
from firefly_core.training.checkpoint import list_checkpoints
from firefly_core.training.checkpoint_model import checkpoint_model
from firefly_core.training.config import TrainConfig
from firefly_core.training.launch import launch

INSTRUCTIONS = str(Path(__file__).resolve().parents[1] / "firefly_core" / "assets" / "sample_instructions.jsonl")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_last_checkpoint_equals_final_and_is_reused(bloom_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    cfg = TrainConfig(model=str(bloom_dir), data=[INSTRUCTIONS], out=str(run), gpu="cpu", batch_size=4,
                      max_length=64, lr=1e-2, warmup_steps=1, max_steps=4, save_every=2, keep_checkpoints=2,
                      seed=3, lora=True, lora_r=4)
    assert launch(cfg).status == "completed"
    ckpts = list_checkpoints(run)
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000004"]
    folder = checkpoint_model(run, ckpts[-1])
    assert folder == run / "checkpoint-models" / "step-00000004"
    final = load_file(str(run / "final" / "model.safetensors"))
    made = load_file(str(folder / "model.safetensors"))
    assert made.keys() == final.keys()
    for key in final:
        assert (made[key] == final[key]).all(), key
    # an earlier step is a different model (training moved the weights), and loads in transformers
    earlier = checkpoint_model(run, ckpts[0])
    assert any(not (load_file(str(earlier / "model.safetensors"))[k] == final[k]).all() for k in final)
    AutoModelForCausalLM.from_pretrained(earlier)
    assert (earlier / "tokenizer.json").is_file() and (earlier / "generation_config.json").is_file()
    # made once: a second call reuses the folder
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert checkpoint_model(run, ckpts[-1]) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_incomplete_checkpoint_and_missing_settings_are_clear_errors(tmp_path):
    run = tmp_path / "run"
    half = run / "checkpoints" / "step-00000002"
    half.mkdir(parents=True)
    with pytest.raises(FireflyError, match="not a complete checkpoint"):
        checkpoint_model(run, half)
    (half / "trainer_state.json").write_text('{"step": 2}')
    (half / "model.safetensors").write_bytes(b"")
    with pytest.raises(FireflyError, match="cannot read the run's settings"):
        checkpoint_model(run, half)
    assert not (run / "checkpoint-models").exists()
