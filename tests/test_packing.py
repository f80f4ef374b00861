"""Packing without cross-contamination: each sample's loss packed equals its loss alone, for BLOOM
(ALiBi) and Qwen2 (RoPE); a naive causal mask over the row would not; real packed runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from firefly_core.data import IGNORE_INDEX, TokenizedSample, collate, load_samples, tokenize_samples
from firefly_core.training import packing
from firefly_core.training.methods import token_loss_sum

ASSETS = Path(__file__).resolve().parents[1] / "firefly_core" / "assets"
INSTRUCTIONS = str(ASSETS / "sample_instructions.jsonl")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _samples(model_dir, n=10, max_length=96):
    from transformers import AutoTokenizer

    from firefly_core.formats import resolve_format

    tok = AutoTokenizer.from_pretrained(model_dir)
    samples, _ = load_samples([INSTRUCTIONS])
    items, _ = tokenize_samples(samples[:n], resolve_format(tok), tok, max_length)
    return items


def _per_sample_packed(model, rows):
    """Each sample's summed loss inside its packed row (one forward for all rows)."""
    import torch
    import torch.nn.functional as F

    batch = packing.collate_packed(rows, 0)
    with torch.no_grad():
        logits = model(**packing.model_inputs(batch, packing.mask_dtype(model))).logits[:, :-1].float()
    token_losses = F.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], ignore_index=IGNORE_INDEX,
                                   reduction="none")
    out = []
    for r, row in enumerate(rows):
        start = 0
        for s in row.samples:
            # Position t predicts token t+1: a sample's losses are at start .. start+len-2.
            out.append((s, float(token_losses[r, start : start + len(s.input_ids) - 1].sum())))
            start += len(s.input_ids)
    return out


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_each_sample_loss_packed_equals_alone(family, bloom_dir, qwen_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = bloom_dir if family == "bloom" else qwen_dir
    items = _samples(model_dir)
    rows = packing.pack(items, 320)
    assert len(rows) < len(items) and any(len(r.samples) >= 3 for r in rows)  # really packed
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    packing.prepare_model(model)
    results = _per_sample_packed(model, rows)
    assert len(results) == len(items)
    for s, packed in results:
        with torch.no_grad():
            alone = float(token_loss_sum(model, collate([s], 0)))
        assert abs(packed / s.supervised - alone / s.supervised) < 1e-5, (family, packed, alone)
    # The run's own check passes on this model.
    packing.check_packing(model, items, token_loss_sum)


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
def test_naive_packing_would_leak(family, bloom_dir, qwen_dir):
    """The oracle can fail: one causal mask over the row (the TRL #1230 bug) changes the losses of
    every sample but the first; and BLOOM without its ALiBi fix (ALiBi positions from the mask) too."""
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = bloom_dir if family == "bloom" else qwen_dir
    items = _samples(model_dir, n=3)
    row = packing.PackedRow(items)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = packing.collate_packed([row], 0)
    with torch.no_grad():
        naive = float(token_loss_sum(model, {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}))
        alone = sum(float(token_loss_sum(model, collate([s], 0))) for s in items)
    assert abs(naive - alone) / row.supervised > 1e-3
    if family == "bloom":
        with pytest.raises(Exception):  # BLOOM cannot build ALiBi from a 4-D mask by itself
            with torch.no_grad():
                token_loss_sum(model, batch)


def test_pack_is_deterministic_and_fits(bloom_dir):
    items = _samples(bloom_dir, n=20, max_length=64)
    rows = packing.pack(items, 128)
    again = packing.pack(items, 128)
    assert [r.lengths for r in rows] == [r.lengths for r in again]
    assert all(sum(r.lengths) <= 128 for r in rows)
    assert sorted(id(s) for r in rows for s in r.samples) == sorted(id(s) for s in items)
    assert sum(r.supervised for r in rows) == sum(s.supervised for s in items)
    batch = packing.collate_packed(rows[:2], 0)
    for b, row in enumerate(rows[:2]):
        start = 0
        for k, n in enumerate(row.lengths):
            assert batch["position_ids"][b, start : start + n].tolist() == list(range(n))
            assert batch["labels"][b, start] == IGNORE_INDEX  # nothing before it in its sample
            assert set(batch["segment_ids"][b, start : start + n].tolist()) == {k}
            start += n


def test_block_mask_shapes():
    import torch

    seg = torch.tensor([[0, 0, 1, 1, 1, -1]])
    allowed = packing.block_causal_mask(seg)[0, 0]
    assert allowed.tolist()[3] == [False, False, True, True, False, False]
    assert allowed.tolist()[5] == [False] * 5 + [True]
    additive = packing.block_causal_mask(seg, torch.float32)[0, 0]
    assert additive[3, 2] == 0 and additive[3, 1] == torch.finfo(torch.float32).min


def test_check_packing_refuses_a_model_that_leaks(bloom_dir):
    """A model whose attention ignores the packed mask is refused with a clear message."""
    import torch
    from transformers import AutoModelForCausalLM

    from firefly_core.errors import ConfigError

    model = AutoModelForCausalLM.from_pretrained(bloom_dir, dtype=torch.float32).eval()
    packing.prepare_model(model)
    items = _samples(bloom_dir, n=6)
    assert len(items) >= 2

    def leaky(model, batch):  # the packed batch run with a plain causal mask
        plain = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        return token_loss_sum(model, plain)

    with pytest.raises(ConfigError, match="--packing is not exact"):
        packing.check_packing(model, items, leaky)


@pytest.mark.parametrize("family,lora", [("bloom", False), ("qwen2", False), ("bloom", True)],
                         ids=["bloom", "qwen2", "bloom-lora"])
def test_packed_sft_run_trains(family, lora, bloom_dir, qwen_dir, tmp_path):
    from firefly_core.training.config import TrainConfig
    from firefly_core.training.events import read_events
    from firefly_core.training.launch import launch

    model_dir = bloom_dir if family == "bloom" else qwen_dir
    run = tmp_path / "packed"
    cfg = TrainConfig(model=str(model_dir), data=[INSTRUCTIONS], out=str(run), gpu="cpu", batch_size=2,
                      max_length=256, lr=5e-2 if lora else 1e-2, warmup_steps=1, max_steps=8, save_every=100, seed=3,
                      packing=True, lora=lora, lora_r=8)
    assert launch(cfg).status == "completed"
    events = read_events(run)
    start = events[0]
    assert any("packed into" in n for n in start.notes)
    steps = [e for e in events if e.type == "step"]
    assert all(s.padding_tokens < s.computed_tokens * 0.2 for s in steps)  # rows are full
    assert all(s.reward_accuracy is None for s in steps)
    assert sum(s.loss for s in steps[-3:]) / 3 < steps[0].loss - (0.2 if lora else 0.5)


@pytest.mark.parametrize("family", ["bloom", "qwen2"])
@pytest.mark.parametrize("packed", [False, True])
def test_chunked_cross_entropy_equals_the_plain_loss_and_gradients(family, packed, bloom_dir, qwen_dir):
    """The chunked path (head + cross-entropy a few positions at a time, checkpointed) gives the
    plain loss and the same gradients, packed or not, LoRA-wrapped or not."""
    import torch
    from transformers import AutoModelForCausalLM

    from firefly_core.training.losses import chunked_token_loss_sum

    model_dir = bloom_dir if family == "bloom" else qwen_dir
    items = _samples(model_dir, n=6, max_length=64)
    batch = packing.collate_packed(packing.pack(items, 200), 0) if packed else collate(items, 0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    packing.prepare_model(model)

    def run(fn):
        model.zero_grad()
        loss = fn()
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    plain_loss, plain_grads = run(lambda: token_loss_sum(model, batch))
    chunk_loss, chunk_grads = run(lambda: chunked_token_loss_sum(model, batch, 7))
    assert abs(plain_loss - chunk_loss) / plain_loss < 1e-6
    torch.testing.assert_close(chunk_grads, plain_grads, rtol=1e-4, atol=1e-6)

    from firefly_core.training.lora import apply_lora

    lora = apply_lora(model, 4, 8, 0.0, None)
    with torch.no_grad():
        a = float(token_loss_sum(lora, batch))
        b = float(chunked_token_loss_sum(lora, batch, 5))
    assert abs(a - b) / a < 1e-6


def test_chunking_is_chosen_by_logits_size(qwen_dir, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from firefly_core.training import losses

    model = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = {"input_ids": torch.zeros(2, 100, dtype=torch.long)}
    assert losses.chunk_for(model, batch, True) is None  # 200 x vocab floats: small
    monkeypatch.setattr(losses, "CHUNK_BYTES", 50 * vocab * 4)
    assert losses.chunk_for(model, batch, True) == 50
    assert losses.chunk_for(model, batch, False) is None  # several processes: the wrapped forward


def test_a_run_with_chunked_cross_entropy_has_the_same_losses(bloom_dir, tmp_path, monkeypatch):
    from firefly_core.training import losses
    from firefly_core.training.config import TrainConfig
    from firefly_core.training.events import read_events
    from firefly_core.training.launch import launch

    def run(name):
        cfg = TrainConfig(model=str(bloom_dir), data=[INSTRUCTIONS], out=str(tmp_path / name), gpu="cpu", batch_size=4,
                          max_length=96, lr=1e-2, warmup_steps=0, max_steps=3, save_every=100, seed=3)
        launch(cfg)
        return [e.loss for e in read_events(tmp_path / name) if e.type == "step"]

    plain = run("plain")
    calls = []
    real = losses.chunked_token_loss_sum
    monkeypatch.setattr(losses, "CHUNK_BYTES", 4 * 400 * 16)  # 16 positions of a 400-token vocabulary
    import firefly_core.training.methods as methods

    monkeypatch.setattr(methods, "chunked_token_loss_sum", lambda *a: calls.append(1) or real(*a))
    chunked = run("chunked")
    assert calls and chunked == pytest.approx(plain, rel=1e-5)
