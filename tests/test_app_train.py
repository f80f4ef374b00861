"""Pilot tests of the training screen: the live panel tails RUN_DIR/events.jsonl, re-attaches,
checks data before launch, and stops a run with SIGINT. Starting processes goes through the
screen's `RunLauncher`, which tests replace with a recording one (no module is patched)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from app_helpers import screen_text, wait_screen, wait_until, write_events
from textual.widgets import Label

from firefly_core.paths import runs_dir
from firefly_core.store import ChatStore
from firefly_core.training.run import TrainRequest, start_run
from firefly_core.training.run_dir import LOG_FILE
from firefly_tui.app import FireflyApp
from firefly_tui.screens.chat import ChatScreen
from firefly_tui.screens.dialogs import ChoiceDialog, ConfirmDialog, DataCheckDialog, TextDialog
from firefly_tui.screens.train import TrainScreen
from firefly_tui.widgets.loss_plot import LossPlot
from firefly_tui.widgets.run_panel import RunLauncher
from firefly_tui.widgets.train_form import config_of

SIZE = (150, 48)
SAMPLE = Path(__file__).resolve().parent.parent / "firefly_core" / "assets" / "sample_instructions.jsonl"


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


def make_app(store) -> FireflyApp:
    return FireflyApp(store=store, welcome=False, language="en", settings=None)


async def open_train(pilot, launcher: RunLauncher | None = None) -> TrainScreen:
    await pilot.press("f4")
    screen = await wait_screen(pilot, TrainScreen)
    if launcher is not None:
        screen.launcher = launcher
    return screen


class RecordingLauncher(RunLauncher):
    """Records what would be started; a checkpoint "becomes" `model` (turning a real checkpoint
    into a model folder is tested on a real run in test_checkpoint_model)."""

    def __init__(self, model: Path | None = None) -> None:
        self.started: list[TrainRequest] = []
        self.resumed: list[list[str]] = []
        self.made: list[str] = []
        self.model = model

    def start(self, request, config):
        self.started.append(request)

    def resume(self, run) -> None:
        self.resumed.append(run.resume_argv())

    def checkpoint_model(self, run, checkpoint):
        self.made.append(Path(checkpoint).name)
        return self.model


def shown(screen: TrainScreen, path: Path | None = None) -> bool:
    """The panel shows a run (that one)."""
    return screen.run is not None and (path is None or screen.run.path == path)


class JsonlRun:
    """Writes RUN_DIR/events.jsonl line by line, as the trainer's process does (the file is the contract)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def emit(self, type: str, **data) -> None:
        write_events(self.run_dir, [{"type": type, **data}])

    def close(self) -> None:
        pass


def write_run(run_dir: Path, steps: int, *, total: int = 20, pid: int | None = None, done: bool = False) -> JsonlRun:
    w = JsonlRun(run_dir)
    w.emit("start", pid=pid, total_steps=total, start_step=0)
    for s in range(1, steps + 1):
        w.emit("step", step=s, total=total, loss=3.0 / s, lr=1e-4, tokens_per_s=1234.5, eta=60.0 - s,
               memory={"rss_gb": 1.25})
        if s % 4 == 0:
            w.emit("eval", step=s, loss=3.2 / s)
    if done:
        w.emit("done", status="completed", step=steps, total=total, final_path=str(run_dir / "final"))
    return w


async def test_panel_reattaches_tails_and_chats_with_final(store, fresh_home, bloom_dir):
    old = runs_dir() / "run-old"
    write_run(old, 8, total=8, done=True).close()
    shutil.copytree(bloom_dir, old / "final")
    live = runs_dir() / "run-live"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        w = write_run(live, 3, pid=sleeper.pid)
        (live / LOG_FILE).write_text("line one\nstep 3 loss 1.0\n")
        app = make_app(store)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_train(pilot)
            # re-attached to the running one, not the newest finished one
            await wait_until(pilot, lambda: shown(screen, live))
            plot = screen.query_one("#loss-plot", LossPlot)
            await wait_until(pilot, lambda: len(plot.train) == 3)
            stats = str(screen.query_one("#run-stats").render())
            assert "step 3/20" in stats and "1234.5 tok/s" in stats and "rss 1.25 GB" in stats and "ETA 57s" in stats
            assert "step 3 loss 1.0" in str(screen.query_one("#run-log-text").render())
            assert not screen.query_one("#stop").disabled
            # the run goes on: the panel follows the file
            for s in range(4, 9):
                w.emit("step", step=s, total=20, loss=3.0 / s, lr=1e-4, tokens_per_s=1000.0, eta=10.0, memory={})
            w.emit("eval", step=8, loss=0.5)
            await wait_until(pilot, lambda: len(plot.train) == 8 and len(plot.eval) == 1)
            assert any(0x2800 < ord(c) <= 0x28FF for c in screen_text(app)), "the curve is drawn"
            # past runs are listed; picking one shows its curve
            runs = screen.query_one("#runs")
            await wait_until(pilot, lambda: len(runs.children) == 2)
            runs.focus()
            runs.index = [i.run_dir for i in runs.children].index(old)
            await pilot.press("enter")
            await wait_until(pilot, lambda: shown(screen, old) and len(plot.train) == 8)
            assert screen.run.status == "done" and not screen.query_one("#chat-final").disabled
            await pilot.press("ctrl+t")
            await wait_until(pilot, lambda: app.model_name == str(old / "final"), timeout=60, what="final loaded")
            assert isinstance(app.screen, ChatScreen)
            conv = store.get_conversation(app.screen.conversation_id)
            assert conv.settings == {"model": str(old / "final")}
            # a second "chat with this run" reopens that chat instead of making another
            await pilot.press("f4")
            await wait_screen(pilot, TrainScreen)
            await pilot.press("ctrl+t")
            await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.conversation_id == conv.id)
            assert [c.settings.get("model") for c in store.list_conversations()].count(str(old / "final")) == 1
        w.close()
    finally:
        sleeper.kill()
        sleeper.wait()


async def test_process_gone_without_final_event_is_an_error(store, fresh_home):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = runs_dir() / "run-crashed"
    write_run(run, 2, pid=gone.pid).close()
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        await wait_until(pilot, lambda: shown(screen) and screen.run.status == "error")
        assert "without a final event" in str(screen.query_one("#run-title").render())


STOPPABLE = textwrap.dedent(
    """
    import json, os, signal, time
    f = open(os.path.join({run!r}, "events.jsonl"), "a")
    def emit(type, **data):
        f.write(json.dumps(dict(type=type, time=time.time(), **data)) + chr(10)); f.flush()
    emit("start", pid=os.getpid(), total_steps=1000, start_step=0)
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    step = 0
    while not stop:
        step += 1
        emit("step", step=step, total=1000, loss=1.0 / step)
        time.sleep(0.05)
    emit("checkpoint", step=step, path="ckpt")
    emit("done", status="stopped", step=step, total=1000, message="stopped by SIGINT")
    """
)


async def test_stop_sends_sigint_after_confirmation(store, fresh_home, tmp_path):
    """The Stop button's contract with the trainer: SIGINT to the run's process, confirmed first.
    (The trainer's own reaction to SIGINT, a checkpoint and a "stopped" event, is its own tests' job.)"""
    run = runs_dir() / "run-stop"
    run.mkdir(parents=True)
    script = STOPPABLE.format(run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        app = make_app(store)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_train(pilot)
            await wait_until(pilot, lambda: shown(screen) and len(screen.run.state.train) >= 3, timeout=20)
            await pilot.press("ctrl+x")
            await wait_screen(pilot, ConfirmDialog)
            await pilot.press("escape")  # No: nothing sent
            await pilot.pause(0.3)
            assert proc.poll() is None
            await pilot.press("ctrl+x")
            dialog = await wait_screen(pilot, ConfirmDialog)
            assert dialog.focused.id == "no"  # the safe answer first; the arrow keys move as the row looks
            await pilot.press("left")
            assert dialog.focused.id == "yes"
            await pilot.press("right")
            assert dialog.focused.id == "no"
            await pilot.press("right")
            assert dialog.focused.id == "yes"
            await pilot.press("enter")
            await wait_until(pilot, lambda: screen.run.status == "stopped", timeout=20)
            assert "stopped by SIGINT" in str(screen.query_one("#run-title").render())
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_data_check_is_shown_before_launch(store, fresh_home, bloom_dir, tmp_path):
    launcher = RecordingLauncher()
    launched = launcher.started
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversation": [{"human": "你好", "assistant": "你好！"}]}\nnot json\n', encoding="utf-8")
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_train(pilot, launcher)
        screen.query_one("#f-model").value = str(bloom_dir)
        screen.query_one("#f-data").value = str(bad)
        screen.query_one("#f-out").value = str(tmp_path / "run")
        await pilot.press("ctrl+l")  # start: checks first, and shows the summary where the user looks
        dialog = await wait_screen(pilot, DataCheckDialog, timeout=30)
        text = dialog.text
        assert "2 lines, 1 samples, 1 bad" in text and "bad.jsonl:2" in text
        # on screen, not below the fold: the summary's whole text inside the terminal
        summary = dialog.query_one("#text")
        assert summary.region.height >= 2 and app.screen.region.contains_region(summary.region)
        assert launched == []
        await pilot.press("ctrl+l")  # Start from the dialog launches
        await wait_until(pilot, lambda: launched)
        assert launched[0].data == [str(bad)] and launched[0].model == str(bloom_dir)


def write_config(run_dir: Path, **values) -> dict:
    """RUN_DIR/train_config.json as `firefly train` saves it (the resolved TrainConfig)."""
    import dataclasses
    import json

    from firefly_core.training.config import TrainConfig

    cfg = dataclasses.asdict(TrainConfig(**values))
    (run_dir / "train_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return cfg


async def test_resume_clone_show_command_and_the_form_remembers(store, fresh_home, tmp_path):
    import shlex

    run = runs_dir() / "run-stopped"
    w = write_run(run, 4, total=10)
    w.emit("checkpoint", step=4, path=str(run / "checkpoints" / "step-00000004"))
    w.emit("done", status="stopped", step=4, total=10, message="stopped by SIGINT at step 4; resume it to continue from this checkpoint")
    ckpt = run / "checkpoints" / "step-00000004"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"step": 4}')
    data = tmp_path / "指令.jsonl"
    write_config(run, model="YeungNLP/bloom-1b4-zh", data=[str(data)], out=str(run), gpu="cpu", lora=True, lr=1e-4,
                 batch_size=2, max_steps=10, max_length=256, eval_fraction=0.1, save_every=2, gradient_checkpointing=True)
    launcher = RecordingLauncher()
    launched = launcher.resumed
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_train(pilot, launcher)
        await wait_until(pilot, lambda: shown(screen) and screen.run.status == "stopped")
        assert not screen.query_one("#resume").disabled and screen.query_one("#stop").disabled
        # resume: confirmed, then `firefly train --resume --out RUN`
        await pilot.press("ctrl+r")
        await wait_screen(pilot, ConfirmDialog)
        await pilot.click("#yes")
        await wait_until(pilot, lambda: launched)
        assert launched == [["train", "--resume", "--out", str(run)]]
        # clone: the run's settings in the form, a new output folder, the rest as extra options
        await pilot.click("#clone")
        await wait_until(pilot, lambda: screen.query_one("#f-model").value == "YeungNLP/bloom-1b4-zh")
        form = screen.form.values()
        assert form["data"] == str(data) and form["mode"] == "lora" and form["lr"] == "0.0001"
        assert form["batch"] == "2" and form["max_steps"] == "10" and form["max_length"] == "256" and form["gpu"] == "cpu"
        assert form["out"] != str(run) and Path(form["out"]).parent == run.parent
        assert shlex.split(form["extra"]) == ["--eval-fraction", "0.1", "--save-every", "2", "--gradient-checkpointing"]
        # show command: the exact line, which parses back to the same options
        await pilot.press("ctrl+g")
        dialog = await wait_screen(pilot, TextDialog)
        line = dialog.text
        argv = shlex.split(line)
        assert argv[0] == "firefly" and argv[1:] == screen.form.request().argv() and argv[1] == "train"
        assert "--lora" in argv and "--gradient-checkpointing" in argv and str(data) in argv
        await pilot.press("escape")
        await pilot.press("f2")  # leaving the screen remembers the form
        await wait_screen(pilot, ChatScreen)
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_train(pilot)
        assert screen.query_one("#f-model").value == "YeungNLP/bloom-1b4-zh"
        assert screen.query_one("#f-data").value == str(data)
        assert screen.query_one("#f-extra").value == form["extra"]
        assert screen.query_one("#f-out").value != form["out"]  # a new run folder every time


async def test_ctrl_t_without_final_offers_the_newest_checkpoint(store, fresh_home, bloom_dir):
    run = runs_dir() / "run-partial"
    w = write_run(run, 6, total=10)
    w.emit("done", status="stopped", step=6, total=10, message="stopped")
    for step in (3, 6):
        c = run / "checkpoints" / f"step-{step:08d}"
        c.mkdir(parents=True)
        (c / "trainer_state.json").write_text(f'{{"step": {step}}}')
    launcher = RecordingLauncher(model=bloom_dir)
    made = launcher.made
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_train(pilot, launcher)
        await wait_until(pilot, lambda: shown(screen) and screen.run.status == "stopped")
        assert not screen.query_one("#chat-final").disabled
        await pilot.press("ctrl+t")
        dialog = await wait_screen(pilot, ChoiceDialog)
        options = dialog.query_one("#choices")
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert labels[0].startswith("step 6") and labels[1].startswith("step 3") and len(labels) == 2
        assert "no final/" in screen_text(app)
        await pilot.press("enter")  # the newest, highlighted first
        await wait_until(pilot, lambda: app.model_name == str(bloom_dir), timeout=60, what="the checkpoint model")
        assert made == ["step-00000006"]
        conv = store.get_conversation(app.screen.conversation_id)
        assert conv.title == "run-partial · step 6"


async def test_narrow_train_screen_stacks_the_form_above_the_chart_and_log_lines_wrap(store, fresh_home):
    run = runs_dir() / "run-narrow"
    write_run(run, 5, total=10, done=True).close()
    long_line = "warning: " + "很长的日志行 " * 40 + "END"
    (run / LOG_FILE).write_text(f"short\n{long_line}\n", encoding="utf-8")
    app = make_app(store)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_train(pilot)
        await wait_until(pilot, lambda: shown(screen) and len(screen.run.state.train) == 5)
        form, panel = screen.query_one("#train-form"), screen.query_one("#train-panel")
        plot = screen.query_one("#loss-plot")
        await wait_until(pilot, lambda: plot.virtual_region.width > 0)
        # both in the one scrolling body: the panel starts below the form's last row
        assert panel.virtual_region.y >= form.virtual_region.bottom
        assert plot.virtual_region.width >= 70  # the chart spans the terminal, not 17 columns
        text = screen.query_one("#run-log-text")
        await wait_until(pilot, lambda: text.virtual_region.height > 2)
        assert text.virtual_region.width <= 80  # wrapped to the terminal, not cut off


def test_launching_into_a_folder_of_user_files_is_refused_before_anything_is_written(tmp_path):
    """The app checks --out with `firefly train`'s own rule before it writes its log there."""
    from firefly_core.errors import OutputExistsError

    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    req = TrainRequest(model="org/model", data=[str(SAMPLE)], out=mine)
    with pytest.raises(OutputExistsError):
        start_run(req, config_of(req))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"], "nothing written into the user's folder"


async def test_method_and_packing_reach_the_command_line_and_come_back_with_a_clone(store, fresh_home, tmp_path):
    """The form's Method and Packing fields are `firefly train --method/--packing`, parsed by the
    CLI's own parser; a clone of a DPO run selects DPO again."""
    import shlex

    from firefly_core.training.config import TrainConfig

    run = runs_dir() / "run-dpo"
    w = write_run(run, 2, total=10)
    w.emit("done", status="completed", step=2, total=10)
    write_config(run, model="org/model", data=["pairs.jsonl"], out=str(run), gpu="cpu", method="dpo", lora=True,
                 beta=0.2)
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_train(pilot, RecordingLauncher())
        for sel, value in {"#f-model": "org/model", "#f-data": "raw.jsonl", "#f-out": str(tmp_path / "new")}.items():
            screen.query_one(sel).value = value
        screen.query_one("#f-method").value = "pretrain"
        await pilot.pause()
        assert not screen.query_one("#f-packing").disabled
        screen.query_one("#f-packing").value = "on"
        await pilot.press("ctrl+g")
        dialog = await wait_screen(pilot, TextDialog)
        argv = shlex.split(dialog.text)[1:]
        assert argv[argv.index("--method") + 1] == "pretrain" and "--packing" in argv
        config: TrainConfig = config_of(screen.form.request())
        assert (config.method, config.packing, config.data) == ("pretrain", True, ["raw.jsonl"])
        await pilot.press("escape")
        # SFT without packing adds neither flag: the command stays what `firefly train` always took
        screen.query_one("#f-method").value = "sft"
        screen.query_one("#f-packing").value = "off"
        assert "--method" not in screen.form.request().argv() and "--packing" not in screen.form.request().argv()

        await wait_until(pilot, lambda: shown(screen, run) and screen.run.status == "done")
        await pilot.click("#clone")
        await wait_until(pilot, lambda: screen.query_one("#f-method").value == "dpo")
        await wait_until(pilot, lambda: screen.query_one("#f-packing").disabled)  # DPO is never packed
        form = screen.form.values()
        assert form["packing"] == "off" and form["mode"] == "lora" and shlex.split(form["extra"]) == ["--beta", "0.2"]
        assert config_of(screen.form.request()).method == "dpo"


async def test_the_panel_shows_rewards_perplexity_and_a_diverging_loss(store, fresh_home):
    """DPO's reward accuracy and margin next to the loss, the eval's perplexity, and a loss that
    explodes said in the panel (not only in a chart going up)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = runs_dir() / "run-rewards"
        w = JsonlRun(run)
        w.emit("start", pid=sleeper.pid, total_steps=50, start_step=0)
        for s in range(1, 6):
            w.emit("step", step=s, total=50, loss=0.6931 - 0.01 * s, lr=1e-6, reward_accuracy=0.5 + 0.1 * s,
                   reward_margin=0.05 * s, chosen_reward=0.1, rejected_reward=-0.1)
        w.emit("eval", step=5, loss=1.25, perplexity=3.4903)
        app = make_app(store)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_train(pilot)
            await wait_until(pilot, lambda: shown(screen, run) and len(screen.run.state.train) == 5)
            stats = str(screen.query_one("#run-stats").render())
            assert "loss 0.6431" in stats and "reward accuracy 1.00 · margin 0.250" in stats
            assert "eval 1.2500 (perplexity 3.49)" in stats
            alarm = screen.query_one("#run-alarm")
            assert not alarm.display
            for s in range(6, 9):
                w.emit("step", step=s, total=50, loss=2.5 * s, lr=1e-6)
            await wait_until(pilot, lambda: alarm.display)
            assert "exploding" in str(alarm.render()) and "step 8" in str(alarm.render())
            assert "exploding" in screen_text(app)
            # and the runs list's row says the step the chart says
            row = next(i for i in screen.query_one("#runs").children if i.run_dir == run)
            await wait_until(pilot, lambda: "8/50" in str(row.query_one(Label).render()))
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("size", [(140, 45), (80, 24)], ids=["140x45", "80x24"])
async def test_past_runs_and_every_run_button_are_on_screen(store, fresh_home, size):
    """Issue 22: "Past runs" visible without scrolling at 140x45; no run button cut ("Clon")."""
    run = runs_dir() / "run-seen"
    write_run(run, 5, total=10, done=True).close()
    app = make_app(store)
    async with app.run_test(size=size) as pilot:
        screen = await open_train(pilot)
        await wait_until(pilot, lambda: shown(screen, run) and len(screen.query_one("#runs").children) == 1)
        await pilot.pause()
        if size == (140, 45):
            title, runs = screen.query_one("#runs-title"), screen.query_one("#runs")
            assert screen.region.contains_region(title.region) and runs.region.height >= 1
            assert runs.region.bottom <= size[1] - 1  # above the footer
        else:
            screen.show_panel()
            await pilot.pause()
        for button in screen.query("#run-buttons Button"):
            label = str(button.label)
            assert button.region.width >= len(label), (label, button.region)
            assert screen.query_one("#train-panel").region.contains_region(button.region), label


async def test_the_data_check_reads_the_data_as_the_method_will(store, fresh_home, bloom_dir, tmp_path):
    """DPO checks preference pairs, pretraining checks documents, and SFT given pairs says which
    method they are for (each through core's own reader)."""
    from firefly_core.samples import sample_path

    text = tmp_path / "book.txt"
    text.write_text("第一段，很长的文字。\n还是第一段。\n\n第二段。\n", encoding="utf-8")
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_train(pilot, RecordingLauncher())
        screen.query_one("#f-model").value = str(bloom_dir)
        screen.query_one("#f-out").value = str(tmp_path / "run")
        for method, data, expected in (
            ("dpo", sample_path("preferences"), "12 lines, 12 pairs, 0 bad"),
            ("pretrain", text, "2 documents, 0 bad"),
            ("sft", sample_path("preferences"), "train it with --method dpo"),
        ):
            screen.query_one("#f-method").value = method
            screen.query_one("#f-data").value = str(data)
            await pilot.press("ctrl+k")
            dialog = await wait_screen(pilot, DataCheckDialog, timeout=30)
            assert expected in dialog.text, (method, dialog.text)
            await pilot.press("escape")
            await wait_screen(pilot, TrainScreen)


async def test_the_palette_fills_the_form_with_the_shipped_sample_data(store, fresh_home, bloom_dir):
    """A first run needs no data of one's own: the command palette's "Use the sample training data"
    puts the file shipped inside the package (the DPO pairs for DPO) in the Data field, and the
    data check reads it as trainable."""
    from textual.command import CommandPalette

    from firefly_core.samples import sample_path

    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_train(pilot, RecordingLauncher())
        await pilot.press("ctrl+p")
        await wait_until(pilot, lambda: CommandPalette.is_open(app))
        await pilot.press(*"sample training")
        await pilot.pause()
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.query_one("#f-data").value == str(sample_path("instructions")))
        screen.query_one("#f-model").value = str(bloom_dir)
        report = screen.form.request().check_data()
        assert report.valid > 0
        screen.query_one("#f-method").value = "dpo"
        await pilot.pause()
        screen.action_use_sample()
        assert screen.query_one("#f-data").value == str(sample_path("preferences"))
