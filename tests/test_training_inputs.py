"""Training with real-world inputs: run folders never swallow the user's files, a failed start does
not poison --out, two runs cannot share a folder, checkpoints survive a full disk and a damaged
newest checkpoint, bad train.toml files get clear errors, `firefly merge` never deletes the run or
the model, and the console shows only our own (rounded) output."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from firefly_core.errors import ConfigError, DataError, FireflyError, InvalidModelError, OutputExistsError
from firefly_core.training.config import TrainConfig, load_config, load_saved
from firefly_core.training.events import (
    CheckpointEvent,
    DoneEvent,
    ErrorEvent,
    EventTail,
    StartEvent,
    StepEvent,
    read_events,
)
from firefly_core.training.launch import launch
from firefly_core.training.run_dir import RunLock, resolve_resume

ASSETS = Path(__file__).resolve().parent.parent / "firefly_core" / "assets"
INSTRUCTIONS = str(ASSETS / "sample_instructions.jsonl")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(model_dir, out, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=[INSTRUCTIONS], out=str(out), gpu="cpu", batch_size=4,
                max_length=64, lr=3e-3, warmup_steps=1, max_steps=2, save_every=100, seed=7)
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- the run folder


def test_a_folder_of_user_files_is_refused_and_kept(bloom_dir, tmp_path):
    out = tmp_path / "mine"
    (out / "final").mkdir(parents=True)
    (out / "final" / "notes.txt").write_text("my model notes")
    with pytest.raises(ConfigError, match="already holds a training run"):
        launch(_config(bloom_dir, out))
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(OutputExistsError, match="thesis.tex"):
        launch(_config(bloom_dir, other))
    assert (out / "final" / "notes.txt").read_text() == "my model notes"
    assert sorted(p.name for p in other.iterdir()) == ["thesis.tex"]


def test_out_overlapping_the_model_or_data_is_refused(bloom_dir, tmp_path):
    data = tmp_path / "d" / "data.jsonl"
    data.parent.mkdir()
    data.write_text(Path(INSTRUCTIONS).read_text("utf-8"), "utf-8")
    with pytest.raises(ConfigError, match="overlaps"):
        launch(_config(bloom_dir, bloom_dir / "run"))
    with pytest.raises(ConfigError, match="contains the input"):
        launch(_config(bloom_dir, tmp_path / "d", data=[str(data)]))
    with pytest.raises(ConfigError, match="cannot"):
        launch(_config(bloom_dir, "/proc/firefly-run"))


def test_a_failed_start_does_not_poison_out(bloom_dir, tmp_path):
    run = tmp_path / "run"
    # A typo in --data: refused before the run folder exists.
    with pytest.raises(DataError, match="no data file"):
        launch(_config(bloom_dir, run, data=[str(tmp_path / "typo.jsonl")]))
    assert not run.exists()
    # A start that failed later (here: no sample fits) leaves a config and an error event, no checkpoint.
    empty = tmp_path / "bad.jsonl"
    empty.write_text('{"input": "x"}\n', "utf-8")
    with pytest.raises(DataError):
        launch(_config(bloom_dir, run, data=[str(empty)]))
    assert isinstance(read_events(run)[-1], ErrorEvent)
    with pytest.raises(ConfigError, match="nothing to resume"):
        resolve_resume({"data": [INSTRUCTIONS]}, run)
    result = launch(_config(bloom_dir, run))  # the corrected start, same --out
    assert result.status == "completed"
    assert json.loads((run / "train_config.json").read_text())["data"] == [INSTRUCTIONS]


def test_a_second_run_on_the_same_folder_is_refused(bloom_dir, tmp_path):
    run = tmp_path / "run"
    with RunLock(run):  # as a running `firefly train` holds it
        with pytest.raises(ConfigError, match="another `firefly train`"):
            launch(_config(bloom_dir, run))
    assert not (run / "train_config.json").exists()


# ---------------------------------------------------------------- checkpoints


def test_disk_full_during_a_checkpoint_is_a_clear_error(bloom_dir, tmp_path, monkeypatch):
    from accelerate import Accelerator

    real, calls = Accelerator.save_state, []

    def save_state(self, output_dir=None, **kw):
        calls.append(output_dir)
        if len(calls) == 2:
            Path(output_dir, "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    run = tmp_path / "run"
    with pytest.raises(FireflyError, match="disk is full") as info:
        launch(_config(bloom_dir, run, max_steps=3, save_every=1))
    assert "step-00000001 is intact" in info.value.hint and "--resume" in info.value.hint
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]  # no partial folder
    error = read_events(run)[-1]
    assert isinstance(error, ErrorEvent) and "disk is full" in error.message


def test_disk_full_while_writing_final_then_resume_writes_it(bloom_dir, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    real = PreTrainedModel.save_pretrained

    def full(self, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    run = tmp_path / "run"
    with pytest.raises(FireflyError, match="disk is full") as info:
        launch(_config(bloom_dir, run))
    assert "--resume" in info.value.hint
    assert not (run / "final").exists() and not [p for p in run.iterdir() if p.name.startswith(".final")]
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real)
    resumed = launch(resolve_resume({}, run), resume=True)
    assert resumed.status == "completed" and (run / "final" / "model.safetensors").is_file()


def test_resume_skips_a_damaged_newest_checkpoint(bloom_dir, tmp_path):
    straight = launch(_config(bloom_dir, tmp_path / "a", max_steps=3))
    run = tmp_path / "b"
    launch(_config(bloom_dir, run, max_steps=2, save_every=1))
    weights = run / "checkpoints" / "step-00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a crash or a full disk
    resumed = launch(resolve_resume({"max_steps": 3}, run), resume=True)
    assert resumed.status == "completed"
    start = [e for e in read_events(run) if isinstance(e, StartEvent)][-1]
    assert start.start_step == 1 and start.resumed_from.endswith("step-00000001")
    assert len(start.notes) == 1 and "step-00000002 is damaged" in start.notes[0]
    losses = {e.step: e.loss for e in read_events(run) if isinstance(e, StepEvent)}
    assert losses[3] == pytest.approx(straight.losses[3], rel=1e-5)


# ---------------------------------------------------------------- train.toml


@pytest.mark.parametrize(
    "text, match",
    [
        ('batch-size = "16"\n', "batch-size must be a whole number"),
        ("lr = true\n", "lr must be a number"),
        ("batch_size = 4.5\n", "batch_size must be a whole number"),
        ("data = [1, 2]\n", "data must be a list of strings"),
        ("lora = 1\n", "lora must be true or false"),
    ],
)
def test_toml_with_wrong_types(tmp_path, text, match):
    path = tmp_path / "train.toml"
    path.write_text(text, "utf-8")
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_toml_not_utf8_or_a_folder(tmp_path):
    bad = tmp_path / "gbk.toml"
    bad.write_bytes('model = "模型"\n'.encode("gbk"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    saved = tmp_path / "run"
    saved.mkdir()
    (saved / "train_config.json").write_text('{"batch_size": "x"', "utf-8")
    with pytest.raises(ConfigError, match="damaged"):
        load_saved(saved)


# ---------------------------------------------------------------- merge


def _adapter_folder(tmp_path: Path, base: Path) -> Path:
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    TrainConfig(model=str(base), data=["d"], out=str(adapter.parent), lora=True).save(adapter.parent)
    return adapter.parent


def test_merge_never_deletes_the_run_or_the_model(bloom_dir, tmp_path, capsys):
    from firefly_tui.cli import main

    run = _adapter_folder(tmp_path, bloom_dir)
    before = sorted(p.name for p in run.rglob("*"))
    for out in (run, run / "adapter", tmp_path, bloom_dir, bloom_dir.parent):
        assert main(["merge", str(run), "--out", str(out), "--force"]) == 1
        assert "overlaps" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    assert main(["merge", str(run), "--out", str(mine)]) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and "Traceback" not in err
    assert (mine / "keep.txt").read_text() == "x"
    assert sorted(p.name for p in run.rglob("*")) == before


def test_merge_on_a_stopped_lora_run_says_how_to_get_an_adapter(bloom_dir, tmp_path):
    from firefly_core.training.lora import find_adapter

    run = tmp_path / "stopped"
    TrainConfig(model=str(bloom_dir), data=["d"], out=str(run), lora=True).save(run)
    with pytest.raises(InvalidModelError, match="no adapter yet") as info:
        find_adapter(run)
    assert f"firefly train --out {run} --resume" in info.value.hint
    full = tmp_path / "full"
    TrainConfig(model=str(bloom_dir), data=["d"], out=str(full)).save(full)
    with pytest.raises(InvalidModelError, match="full fine-tuning run"):
        find_adapter(full)


# ---------------------------------------------------------------- typed events, quiet output


def test_events_are_typed_and_untrusted_fields_are_dropped(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [
        {"type": "start", "time": 1, "total_steps": 5, "pid": None, "notes": ["n"]},
        {"type": "step", "time": 2, "step": 1, "loss": "NaN?", "lr": 0.1, "memory": {"rss_gb": 1.0}},
        {"type": "checkpoint", "time": 3, "step": 1, "path": "p"},
        {"type": "mystery", "time": 4},
        {"type": "done", "time": 5, "status": "stopped", "step": 1, "last_loss": [1]},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), "utf-8")
    events = EventTail(tmp_path).poll()
    assert [type(e) for e in events] == [StartEvent, StepEvent, CheckpointEvent, DoneEvent]
    start, step, _, done = events
    assert start.total_steps == 5 and start.notes == ["n"] and start.time == 1.0
    assert step.loss is None and step.lr == 0.1  # a string loss is not a loss
    assert done.stopped and done.last_loss is None
    assert step.data["step"] == 1 and step.type == "step"  # the untyped view still works


def test_console_output_is_ours_only(bloom_dir, tmp_path, capfd):
    from firefly_tui.cli import main

    run = tmp_path / "run"
    code = main(["train", "--gpu", "cpu", "--model", str(bloom_dir), "--data", INSTRUCTIONS, "--out", str(run),
                 "--max-steps", "2", "--save-every", "1", "--batch-size", "4", "--max-length", "64", "--lora"])
    assert code == 0
    err = capfd.readouterr().err
    for noise in ("FutureWarning", "Removed shared tensor", "Setting accelerator", "Loading weights", "Writing model"):
        assert noise not in err, (noise, err)
    done = read_events(run)[-1]
    assert isinstance(done, DoneEvent)
    assert f"last loss {done.last_loss:.4f}," in err and f"last loss {done.last_loss}," not in err
