"""End to end through the app: first start, pick the tiny model, chat two turns, stop a reply,
train on the sample data in a real `firefly train` process, restart and find it all again."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import GatedDecoder, screen_text, wait_screen, wait_until

from firefly_core.paths import runs_dir
from firefly_tui.app import FireflyApp
from firefly_tui.screens.chat import ChatScreen
from firefly_tui.screens.chat_settings import ChatSettingsDialog
from firefly_tui.screens.dialogs import PromptDialog
from firefly_tui.screens.models import ModelsScreen
from firefly_tui.screens.train import TrainScreen
from firefly_tui.screens.welcome import WelcomeScreen
from firefly_tui.widgets.chat_view import MessageView
from firefly_tui.widgets.loss_plot import LossPlot

SIZE = (150, 48)
SAMPLE = Path(__file__).resolve().parent.parent / "firefly_core" / "assets" / "sample_instructions.jsonl"


async def set_max_new_tokens(pilot, n: int) -> None:
    await pilot.press("ctrl+o")
    dialog = await wait_screen(pilot, ChatSettingsDialog)
    field = dialog.query_one("#max_new_tokens")
    field.value = str(n)
    field.focus()
    await pilot.press("enter")  # Enter in a field saves
    await wait_screen(pilot, ChatScreen)


async def chat_turn(pilot, text: str) -> None:
    app = pilot.app
    chat = app.screen
    before = len(app.store.messages(chat.conversation_id))
    chat.query_one("#composer").value = text
    await pilot.press("enter")
    await wait_until(
        pilot, lambda: not chat.generating and len(app.store.messages(chat.conversation_id)) == before + 2,
        timeout=60, what=f"the reply to {text!r}",
    )


@pytest.mark.slow
async def test_first_start_chat_stop_train_restart(fresh_home, bloom_dir):
    run_dir = runs_dir() / "e2e-run"
    app = FireflyApp(language="en")  # real settings and chat database under this test's FIREFLY_HOME
    async with app.run_test(size=SIZE) as pilot:
        # first start: the welcome leads to the catalog; pick the tiny model (a local folder)
        await wait_screen(pilot, WelcomeScreen)
        await pilot.click("#open-catalog")
        models = await wait_screen(pilot, ModelsScreen)
        await pilot.press("l")
        dialog = await wait_screen(pilot, PromptDialog)
        dialog.query_one("#value").value = str(bloom_dir)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.lm is not None, timeout=60, what="the model")
        assert "Loaded" in models.status_text
        assert app.lm.engine == "torch"  # named by tests/conftest.py (FIREFLY_LLAMACPP=0), not by what is installed

        # chat two turns
        await pilot.press("f2")
        chat = await wait_screen(pilot, ChatScreen)
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: chat.conversation_id is not None)
        cid = chat.conversation_id
        await set_max_new_tokens(pilot, 8)
        await chat_turn(pilot, "你好，请介绍一下你自己")
        await chat_turn(pilot, "谢谢")
        assert chat.last_stats["reused_tokens"] > 0

        # stop a long reply: the model runs every step, but a gate lets the test release each token,
        # so the reply is still streaming when stop is pressed (no race with EOS or a fast engine)
        await set_max_new_tokens(pilot, 1500)
        script = app.lm.tokenizer.encode("萤火虫在夏夜里一闪一闪，像星星落在草地上。", add_special_tokens=False)
        real = app.lm.decoder
        gate = app.lm.decoder = GatedDecoder(real, script)
        chat.query_one("#composer").value = "写一篇很长的文章"
        await pilot.press("enter")
        await wait_until(pilot, lambda: gate.waiting, what="the reply's first step")
        await gate.release_until(pilot, lambda: chat.streaming_view is not None and "萤火" in chat.streaming_view.content,
                                 what="the reply to show on screen")
        shown = chat.streaming_view.content
        await pilot.press("escape")
        gate.open()  # the step waiting at the gate finishes; the loop then sees the stop
        await wait_until(pilot, lambda: not chat.generating, what="the stop")
        app.lm.decoder = real
        msgs = app.store.messages(cid)
        assert len(msgs) == 6 and msgs[-1].partial and msgs[-1].meta["stop_reason"] == "cancelled"
        said = app.lm.tokenizer.decode(script)
        assert msgs[-1].content.startswith(shown) and said.startswith(msgs[-1].content)
        assert gate.steps <= gate.released + 1  # stopped at the next step, not run on to max_new_tokens

        # train on the sample data: data check first, then a real `firefly train` process
        await pilot.press("f4")
        train = await wait_screen(pilot, TrainScreen)
        form = {
            "#f-model": str(bloom_dir),
            "#f-data": str(SAMPLE),
            "#f-out": str(run_dir),
            "#f-max_steps": "4",
            "#f-batch": "4",
            "#f-max_length": "128",
            "#f-lr": "1e-3",
            "#f-gpu": "cpu",
            "#f-extra": "--eval-fraction 0.1 --eval-every 2",
        }
        for sel, value in form.items():
            train.query_one(sel).value = value
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: "samples" in str(train.query_one("#check-summary").render()), timeout=60)
        assert "300 lines" in str(train.query_one("#check-summary").render())
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: train.run is not None and train.run.path == run_dir)
        plot = train.query_one("#loss-plot", LossPlot)
        await wait_until(pilot, lambda: len(plot.train) >= 2, timeout=120, what="the loss panel to fill")
        await wait_until(pilot, lambda: train.run.status in ("done", "error"), timeout=120, what="the run to end")
        assert train.run.status == "done", train.run.state.detail
        assert len(plot.train) == 4 and len(plot.eval) == 2
        assert "step 4/4" in str(train.query_one("#run-stats").render())
        assert (run_dir / "final" / "config.json").is_file()

    # restart: the chat and the run are still there, and the model comes back
    app = FireflyApp(language="en")
    async with app.run_test(size=SIZE) as pilot:
        chat = await wait_screen(pilot, ChatScreen)
        await wait_until(pilot, lambda: len(chat.query(MessageView)) == 6)
        assert chat.conversation_id == cid
        assert "stopped" in screen_text(app)
        await wait_until(pilot, lambda: app.lm is not None, timeout=60, what="the saved model")
        await pilot.press("f4")
        train = await wait_screen(pilot, TrainScreen)
        await wait_until(pilot, lambda: train.run is not None and train.run.path == run_dir)
        await wait_until(pilot, lambda: len(train.query_one("#loss-plot", LossPlot).train) == 4)
        assert train.run.status == "done"
        assert "e2e-run" in screen_text(app)
