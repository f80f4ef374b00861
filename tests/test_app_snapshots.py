"""Snapshots of the main screens with Chinese content (pytest-textual-snapshot).

Everything shown is fixed: the chat database and runs are written by the test, paths that would
differ per machine are replaced, and the welcome uses a fixed logo. Update the snapshots after an
intended change with `pytest tests/test_app_snapshots.py --snapshot-update` and review the SVGs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import wait_screen, wait_until, write_events

from firefly_core.paths import runs_dir
from firefly_core.store import ChatStore
from firefly_tui.app import FireflyApp
from firefly_tui.screens import welcome
from firefly_tui.screens.models import ModelsScreen
from firefly_tui.screens.train import TrainScreen

SIZE = (120, 36)

ANSWER = """好的，下面是用 Python 计算斐波那契数列的例子：

```python
def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
```

- 时间复杂度：**O(n)**
- 中文、English 与 emoji 混排：流萤 ✨ works"""


async def steady(pilot) -> None:
    """No blinking cursors: a blink phase would make the screenshot depend on timing."""
    from textual.widgets import Input

    for screen in pilot.app.screen_stack:
        for w in screen.query(Input):
            w.cursor_blink = False
    await pilot.pause()


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


@pytest.mark.parametrize("size", [(80, 24), (140, 45)], ids=["80x24", "140x45"])
def test_chat_screen_chinese(snap_compare, store, size):
    older = store.create_conversation("唐诗三百首")
    store.add_message(older.id, "user", "背一首李白的诗")
    store.add_message(older.id, "assistant", "床前明月光，疑是地上霜。", partial=True)
    conv = store.create_conversation("斐波那契数列", {"system": "你是一位耐心的编程老师。"})
    store.add_message(conv.id, "user", "用 Python 写一个斐波那契函数，\n并解释复杂度。")
    store.add_message(conv.id, "assistant", ANSWER)
    store.add_message(conv.id, "user", "再写一个递归版本")
    store.add_message(conv.id, "assistant", "递归版本：`fib(n) = fib(n-1) + fib(n-2)`", partial=True)
    store.add_message(conv.id, "user", "还有吗？")
    store.add_message(conv.id, "assistant", "", meta={"stop_reason": "stop_token"})
    app = FireflyApp(store=store, welcome=False, language="zh", settings=None)

    async def run_before(pilot) -> None:
        from textual.widgets import TextArea

        for w in pilot.app.screen.query(TextArea):
            w.cursor_blink = False
        await steady(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


# The frame at the sizes the issue names: a small terminal (80x24) and a roomy one (140x45).
FRAME_SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((140, 45), id="140x45")]


def test_models_screen(snap_compare, store, fresh_home):
    app = FireflyApp(store=store, welcome=False, language="zh", settings=None)

    async def run_before(pilot) -> None:
        await pilot.press("f3")
        screen = await wait_screen(pilot, ModelsScreen)
        await wait_until(pilot, lambda: screen.query_one("#catalog").row_count > 0)
        await steady(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def demo_run() -> Path:
    """A stopped run with 30 steps of a falling loss, evals every 10 steps and a short log."""
    run = runs_dir() / "run-演示"
    events = [{"type": "start", "pid": None, "total_steps": 40, "start_step": 0, "time": 1.0}]
    for s in range(1, 31):
        loss = 3.0 * 0.93**s + (0.15 if s % 3 == 0 else 0.0)
        events.append({"type": "step", "step": s, "total": 40, "loss": round(loss, 4), "lr": 2e-4,
                       "tokens_per_s": 812.5, "eta": 40.0 - s, "memory": {"rss_gb": 1.5}, "time": 1.0 + s})
        if s % 10 == 0:
            events.append({"type": "eval", "step": s, "loss": round(3.1 * 0.93**s, 4), "time": 1.0 + s})
    events.append({"type": "done", "status": "stopped", "step": 30, "total": 40,
                   "message": "在第 30 步停止；用 --resume 继续", "time": 40.0})
    write_events(run, events)
    (run / "train.log").write_text(
        "开始训练\nstep 30/40 loss 0.43 · 这是一行很长的日志，用来检查日志在窄终端里会自动换行而不是被截断 ✨\n已保存检查点\n",
        encoding="utf-8",
    )
    return run


def test_train_screen_with_a_run(snap_compare, store, fresh_home):
    demo_run()
    app = FireflyApp(store=store, welcome=False, language="zh", settings=None)

    async def run_before(pilot) -> None:
        await pilot.press("f4")
        screen = await wait_screen(pilot, TrainScreen)
        await wait_until(pilot, lambda: screen.run is not None and len(screen.run.state.train) == 30)
        await wait_until(pilot, lambda: len(screen.query_one("#runs").children) == 1)
        values = {"#f-model": "YeungNLP/bloom-1b4-zh", "#f-data": "data/中文指令.jsonl", "#f-out": "runs/新的训练"}
        for sel, value in values.items():
            screen.query_one(sel).value = value
            screen.query_one(sel).cursor_position = 0
        screen.query_one("#f-gpu").value = "cpu"
        await steady(pilot)

    assert snap_compare(app, terminal_size=(150, 44), run_before=run_before)


def test_welcome_screen(snap_compare, store, tmp_path, monkeypatch):
    logo = tmp_path / "logo.txt"
    logo.write_text("  * 流萤 *\n FIREFLY\n", encoding="utf-8")
    monkeypatch.setattr(welcome, "LOGO", logo)
    app = FireflyApp(store=store, welcome=True, language="zh", settings=None)

    async def run_before(pilot) -> None:
        await wait_screen(pilot, welcome.WelcomeScreen)
        await steady(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


@pytest.mark.parametrize("size", FRAME_SIZES)
def test_models_screen_sizes(snap_compare, store, fresh_home, size):
    """"Use a local folder" stays on screen at 80 columns; the navigation line shows every mode."""
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)

    async def run_before(pilot) -> None:
        await pilot.press("f3")
        screen = await wait_screen(pilot, ModelsScreen)
        await wait_until(pilot, lambda: screen.query_one("#catalog").row_count > 0)
        await steady(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", FRAME_SIZES)
def test_train_screen_sizes(snap_compare, store, fresh_home, size):
    """At 80 columns the form stacks above the chart (scrolled here to the run's panel)."""
    demo_run()
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)

    async def run_before(pilot) -> None:
        await pilot.press("f4")
        screen = await wait_screen(pilot, TrainScreen)
        await wait_until(pilot, lambda: screen.run is not None and len(screen.run.state.train) == 30)
        await wait_until(pilot, lambda: len(screen.query_one("#runs").children) == 1)
        for sel, value in {"#f-model": "YeungNLP/bloom-1b4-zh", "#f-data": "data/train.jsonl",
                           "#f-out": "runs/new-run", "#f-gpu": "cpu"}.items():
            screen.query_one(sel).value = value
            screen.query_one(sel).cursor_position = 0
        if size[0] < 100:
            screen.query_one("#train-panel").scroll_visible(top=True, animate=False)
        await steady(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", FRAME_SIZES)
def test_welcome_screen_sizes(snap_compare, store, tmp_path, monkeypatch, size):
    logo = tmp_path / "logo.txt"
    logo.write_text("  * 流萤 *\n FIREFLY\n", encoding="utf-8")
    monkeypatch.setattr(welcome, "LOGO", logo)
    app = FireflyApp(store=store, welcome=True, language="en", settings=None)

    async def run_before(pilot) -> None:
        await wait_screen(pilot, welcome.WelcomeScreen)
        await steady(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
