"""Pilot tests of the models screen and the welcome: catalog, real loading, downloads from the loopback hub."""

from __future__ import annotations

import pytest
from app_helpers import screen_text, wait_screen, wait_until

from firefly_core.store import ChatStore
from firefly_tui.app import FireflyApp
from firefly_tui.screens.chat import ChatScreen
from firefly_tui.screens.dialogs import ConfirmDialog, PromptDialog
from firefly_tui.screens.models import ModelsScreen
from firefly_tui.screens.welcome import WelcomeScreen

SIZE = (130, 40)
REPO = "test-org/tiny-bloom"


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


async def open_models(pilot) -> ModelsScreen:
    await pilot.press("f3")
    screen = await wait_screen(pilot, ModelsScreen)
    await wait_until(pilot, lambda: screen.query_one("#catalog").row_count > 0, what="the catalog")
    return screen


async def test_welcome_then_catalog_then_use_local_folder(store, bloom_dir, fresh_home):
    from firefly_core.models.settings import load_settings

    app = FireflyApp(store=store, language="en")  # real settings in this test's FIREFLY_HOME
    async with app.run_test(size=SIZE) as pilot:
        await wait_screen(pilot, WelcomeScreen)  # first start: no model
        assert "Welcome to Firefly" in screen_text(app)
        await pilot.click("#open-catalog")
        screen = await wait_screen(pilot, ModelsScreen)
        await wait_until(pilot, lambda: screen.query_one("#catalog").row_count > 0)
        assert "YeungNLP/firefly-1b4" in screen_text(app)
        await pilot.press("l")
        dialog = await wait_screen(pilot, PromptDialog)
        dialog.query_one("#value").value = str(bloom_dir)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.lm is not None, timeout=60, what="the model")
        await wait_until(pilot, lambda: "Loaded" in screen.status_text)
        assert "cpu" in screen.status_text and f"context {app.lm.context_length}" in screen.status_text
        assert app.model_name == str(bloom_dir)
        # registered local folders are listed as installed
        await wait_until(pilot, lambda: screen.query_one("#installed").row_count == 1)
    assert load_settings().active_model == str(bloom_dir)
    # the next start loads the saved model in a worker, without the welcome
    app = FireflyApp(store=store, language="en")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.lm is not None, timeout=60, what="the saved model")
        assert isinstance(app.screen, ChatScreen)


async def test_failed_load_shows_the_reason(store, tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "README.md").write_text("hi")
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        screen.use_model(str(bad))
        await wait_until(pilot, lambda: screen.loading is None and "failed" in screen.status_text, timeout=30)
        assert str(bad) in screen.status_text or "config" in screen.status_text
        assert screen.query_one("#model-status").has_class("failed")
        assert app.lm is None


async def test_download_progress_cancel_resume_delete(store, online, bloom_dir):
    online.slow_bps = 60_000
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        await pilot.press("p")
        dialog = await wait_screen(pilot, PromptDialog)
        dialog.query_one("#value").value = REPO
        await pilot.press("enter")
        bar = screen.query_one("#download-bar")
        await wait_until(pilot, lambda: (bar.progress or 0) > 40_000, timeout=30, what="download progress")
        text = str(screen.query_one("#download-text").render())
        assert REPO in text and "/s" in text and "ETA" in text
        # the UI is responsive during the download
        await pilot.press("down")
        await pilot.press("x")  # cancel
        await wait_until(pilot, lambda: screen.downloading is None, timeout=10, what="the cancel")
        assert "cancelled" in screen.status_text
        await wait_until(pilot, lambda: any(m.id == REPO and not m.complete for m in screen.installed))
        # resume: select the incomplete row and download again
        online.slow_bps = None
        table = screen.query_one("#installed")
        table.focus()
        table.move_cursor(row=[m.id for m in screen.installed].index(REPO))
        await pilot.press("d")
        await wait_until(pilot, lambda: screen.downloading is None and "Downloaded" in screen.status_text, timeout=30)
        await wait_until(pilot, lambda: any(m.id == REPO and m.complete for m in screen.installed))
        resumed = [r.range for r in online.requests if r.path.startswith("/cdn/") and r.range]
        assert resumed, "the second download continued the partial file"
        # delete, with confirmation
        table.focus()
        table.move_cursor(row=[m.id for m in screen.installed].index(REPO))
        await pilot.press("delete")
        await wait_screen(pilot, ConfirmDialog)
        await pilot.click("#yes")
        await wait_until(pilot, lambda: "Deleted" in screen.status_text, timeout=10)
        await wait_until(pilot, lambda: not any(m.id == REPO for m in screen.installed))
