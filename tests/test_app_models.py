"""Pilot tests of the models screen and the welcome: catalog, real loading, downloads from the loopback hub."""

from __future__ import annotations

import sys
from pathlib import Path

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
    from firefly_core.models.user_settings import load_settings

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
        assert str(bad) in screen.status_text and "no config.json" in screen.status_text
        assert screen.query_one("#model-status").has_class("failed")
        assert app.lm is None


async def test_d_on_a_catalog_row_asks_before_a_multi_gb_download(store, online):
    """`d` on a catalog row names the model and its size and waits for a yes; No starts nothing."""
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        table = screen.query_one("#catalog")
        table.focus()
        table.move_cursor(row=0)
        repo_id = screen.selected()[1]
        await pilot.press("d")
        dialog = await wait_screen(pilot, ConfirmDialog)
        assert repo_id in dialog.question and "GB" in dialog.question
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmDialog))
        assert screen.downloading is None and not online.requests


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


# -- the frame: navigation, narrow terminals, start-up errors, quitting, the command palette -------
NARROW = (80, 24)


def visible(widget) -> bool:
    """On screen: displayed, with a region inside the terminal."""
    app = widget.app
    r = widget.region
    return widget.display and r.width > 0 and r.height > 0 and r.right <= app.size.width and r.bottom <= app.size.height


async def test_navigation_keys_and_tabs_are_visible_at_80x24(store):
    from textual.widgets import Footer

    from firefly_tui.screens.train import TrainScreen
    from firefly_tui.widgets.nav import NavBar

    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    async with app.run_test(size=NARROW) as pilot:
        for key, cls in (("f3", ModelsScreen), ("f4", TrainScreen), ("f2", ChatScreen)):
            await pilot.press(key)
            screen = await wait_screen(pilot, cls)
            await wait_until(pilot, lambda: screen.query(NavBar), what="the navigation line")
            top = screen_text(app).splitlines()[0]
            for label in ("F2 Chat", "F3 Models", "F4 Train", "F6 中文", "^P", "^Q Quit"):
                assert label in top, (label, top)
            assert len(screen.query(NavBar)) == 1 and len(screen.query(Footer)) == 1
        # the tabs are clickable: click "F3 Models" in the top line
        x = screen_text(app).splitlines()[0].index("F3 Models")
        await pilot.click(NavBar, offset=(x + 1, 0))
        await wait_screen(pilot, ModelsScreen)
        # after a language switch the line follows the language (and there is still one)
        await pilot.press("f6")
        await wait_until(pilot, lambda: "F3 模型" in screen_text(app).splitlines()[0])
        assert len(app.screen.query(NavBar)) == 1


async def test_sidebar_folds_at_80_columns_and_ctrl_b_shows_it(store):
    store.create_conversation("第一个对话")
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    async with app.run_test(size=NARROW) as pilot:
        chat = await wait_screen(pilot, ChatScreen)
        sidebar = chat.query_one("#sidebar")
        await wait_until(pilot, lambda: not sidebar.display, what="the sidebar to fold")
        assert "^B Chat list" in screen_text(app).splitlines()[0]
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: sidebar.display and sidebar.region.width > 0)
        assert "第一个对话" in screen_text(app)
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: not sidebar.display)
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    async with app.run_test(size=(140, 45)) as pilot:
        chat = await wait_screen(pilot, ChatScreen)
        sidebar = chat.query_one("#sidebar")
        await pilot.pause()
        assert sidebar.display and sidebar.region.width > 0  # wide: shown, and Ctrl+B hides it
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: not sidebar.display)


async def test_use_a_local_folder_is_reachable_at_80x24_from_welcome_and_models(store, fresh_home):
    app = FireflyApp(store=store, welcome=True, language="en", settings=None)
    async with app.run_test(size=NARROW) as pilot:
        welcome = await wait_screen(pilot, WelcomeScreen)
        assert visible(welcome.query_one("#use-local"))
        await pilot.click("#use-local")
        dialog = await wait_screen(pilot, PromptDialog)
        assert "local model folder" in screen_text(app)
        await pilot.press("escape")
        models = await wait_screen(pilot, ModelsScreen)
        button = models.query_one("#local")
        assert visible(button), button.region
        await pilot.click("#local")
        await wait_screen(pilot, PromptDialog)
        assert dialog is not app.screen


def _newer_store(path) -> bytes:
    import sqlite3

    from firefly_core.store import SCHEMA_VERSION

    con = sqlite3.connect(path)
    con.execute("CREATE TABLE future (x)")
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    con.commit()
    con.close()
    return Path(path).read_bytes()


@pytest.mark.parametrize("kind", ["damaged", "newer"])
async def test_corrupt_store_is_shown_with_its_hint_and_never_touched(fresh_home, kind):
    from firefly_core.paths import chats_db

    db = chats_db()
    db.parent.mkdir(parents=True, exist_ok=True)
    if kind == "damaged":
        junk = b"this is not a database" * 100
        db.write_bytes(junk)
    else:
        junk = _newer_store(db)
    from firefly_core.errors import FireflyError
    from firefly_core.store import ChatStore as Store

    with pytest.raises(FireflyError) as raised:  # the oracle: what the store itself says
        Store(db)
    app = FireflyApp(language="en")
    async with app.run_test(size=NARROW) as pilot:
        from firefly_tui.screens.dialogs import ErrorDialog

        dialog = await wait_screen(pilot, ErrorDialog)
        assert "chat history cannot be opened" in dialog.text
        assert raised.value.message in dialog.text and raised.value.hint in dialog.text
        assert not dialog.query("#continue")  # nothing to show without the store: only Quit
        await pilot.click("#quit")
        await wait_until(pilot, lambda: app._exit, what="the exit")
    assert app.return_code == 1
    assert db.read_bytes() == junk


async def test_invalid_config_is_shown_and_the_app_goes_on_without_saving(store, fresh_home):
    from firefly_core.paths import config_file
    from firefly_tui.screens.dialogs import ErrorDialog

    cfg = config_file()
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_bytes(b'{"active_model": ')
    app = FireflyApp(store=store, language="en")
    async with app.run_test(size=(120, 36)) as pilot:
        dialog = await wait_screen(pilot, ErrorDialog)
        assert "settings file cannot be read" in dialog.text and "config.json" in dialog.text
        await pilot.click("#continue")
        await wait_screen(pilot, WelcomeScreen)  # no settings: no active model
        await pilot.press("escape")
        await wait_screen(pilot, ChatScreen)
        await pilot.press("f6")  # a language switch would save settings: not with a broken file
        await wait_until(pilot, lambda: "F3 模型" in screen_text(app))
    assert cfg.read_bytes() == b'{"active_model": '


async def test_quit_while_a_run_trains_says_it_keeps_going(store, fresh_home, capfd):
    import subprocess
    import sys

    from app_helpers import write_events

    from firefly_core.paths import runs_dir

    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_events(runs_dir() / "run-busy", [{"type": "start", "pid": trainer.pid, "total_steps": 10}])
        app = FireflyApp(store=store, welcome=False, language="en", settings=None)
        async with app.run_test(size=NARROW) as pilot:
            await wait_screen(pilot, ChatScreen)
            await pilot.press("ctrl+q")
            await wait_until(pilot, lambda: app._exit, timeout=30, what="the exit")  # not the trainer's 60 s
        assert "run-busy keeps going" in capfd.readouterr().err  # printed once the app has closed
        assert trainer.poll() is None  # the run itself is untouched
    finally:
        trainer.kill()
        trainer.wait()


async def test_command_palette_follows_the_language_and_helps(store):
    app = FireflyApp(store=store, welcome=False, language="zh", settings=None)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await wait_screen(pilot, ChatScreen)
        commands = list(app.get_system_commands(screen))
        titles = [c.title for c in commands]
        assert "更换配色主题" in titles and "退出流萤" in titles and "使用本地模型文件夹" in titles
        for c in commands:
            assert not any(word in c.title for word in ("Theme", "Quit", "Keys", "Screenshot")), c.title
            assert c.help and c.help != c.title, c.title
        await pilot.press("ctrl+p")
        from textual.command import CommandPalette

        palette = await wait_screen(pilot, CommandPalette)
        assert palette.query_one("Input").placeholder == "搜索命令…"


def test_no_internal_wording_in_what_users_read():
    from firefly_core.models.catalog import catalog
    from firefly_tui.i18n import STRINGS

    texts = [e.note for e in catalog()] + [e.license for e in catalog()]
    texts += [s for pair in STRINGS.values() for s in pair]
    assert not [s for s in texts if "seed" in s.lower()]
    firefly = [e for e in catalog() if e.id.startswith("YeungNLP/firefly")]
    assert firefly and all("Firefly project" in e.license and "research" in e.license for e in firefly)


async def test_delete_of_a_local_folder_says_it_only_forgets_it(store, bloom_dir, fresh_home):
    from firefly_core.models.inventory import register_local

    register_local(bloom_dir)
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        table = screen.query_one("#installed")
        await wait_until(pilot, lambda: table.row_count == 1)
        table.focus()
        await pilot.press("delete")
        dialog = await wait_screen(pilot, ConfirmDialog)
        question = str(dialog.query_one(".question").render())
        assert "only forgets" in question and "frees" not in question
        assert dialog.query_one(".question").size.height >= 2  # wrapped, not cut after its first sentence
        await pilot.click("#yes")
        await wait_until(pilot, lambda: "Removed" in screen.status_text, timeout=10)
        assert "still on disk" in screen.status_text and "freed" not in screen.status_text
        await wait_until(pilot, lambda: table.row_count == 0)
    assert (bloom_dir / "config.json").is_file()


async def test_failed_download_stops_the_progress_bar(store, online):
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        screen.start_download("test-org/does-not-exist")
        bar = screen.query_one("#download-bar")
        assert bar.display
        await wait_until(pilot, lambda: screen.downloading is None, timeout=30, what="the failure")
        assert "failed" in screen.status_text.lower()
        assert not bar.display and not screen.query_one("#cancel-download").display
        assert "failed" in str(screen.query_one("#download-text").render()).lower()


async def test_model_settings_expose_engine_int8_cuda_graphs_threads(store, bloom_dir, fresh_home):
    from textual.widgets import Select

    from firefly_core.models.inventory import register_local
    from firefly_core.models.user_settings import load_settings
    from firefly_tui.screens.dialogs import ModelSettingsDialog

    register_local(bloom_dir)
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        table = screen.query_one("#installed")
        await wait_until(pilot, lambda: table.row_count == 1)
        table.focus()
        await pilot.press("s")
        dialog = await wait_screen(pilot, ModelSettingsDialog)
        assert dialog.query_one("#m-engine", Select).value == ""  # automatic until chosen
        dialog.query_one("#m-engine", Select).value = "torch"
        dialog.query_one("#m-quantize", Select).value = "int8"
        dialog.query_one("#m-cuda_graph", Select).value = "off"
        dialog.query_one("#m-threads").value = "0"
        await pilot.click("#save")
        await wait_until(pilot, lambda: "threads" in str(dialog.query_one("#error").render()))
        assert isinstance(app.screen, ModelSettingsDialog)  # refused with the core's reason
        dialog.query_one("#m-threads").value = "2"
        save = dialog.query_one("#save")
        await wait_until(pilot, lambda: not save.has_class("-active"))  # a button ignores clicks while it animates
        await pilot.click("#save")
        await wait_until(pilot, lambda: "Saved" in screen.status_text)
    ms = load_settings().for_model(str(bloom_dir))
    assert (ms.engine, ms.quantize, ms.cuda_graph, ms.threads) == ("torch", "int8", False, 2)


async def test_export_gguf_from_the_models_screen(store, bloom_dir, fresh_home, tmp_path, llamacpp):
    import gguf

    from firefly_core.models.inventory import register_local
    from firefly_tui.screens.dialogs import ChoiceDialog

    register_local(bloom_dir)
    out = tmp_path / "tiny.gguf"
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        table = screen.query_one("#installed")
        await wait_until(pilot, lambda: table.row_count == 1)
        table.focus()
        await pilot.press("e")
        await wait_screen(pilot, ChoiceDialog)
        await pilot.press("enter")  # bf16, the first (lossless) type
        dialog = await wait_screen(pilot, PromptDialog)
        assert dialog.query_one("#value").value.endswith("-bf16.gguf")
        dialog.query_one("#value").value = str(out)
        await pilot.press("enter")
        await wait_until(pilot, lambda: "Exported" in screen.status_text or "failed" in screen.status_text, timeout=120)
        assert "Exported" in screen.status_text, screen.status_text
    assert out.read_bytes()[:4] == b"GGUF"

    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.architecture"].contents() == "bloom"



async def test_export_without_the_extra_says_so_before_asking(store, bloom_dir, fresh_home, monkeypatch):
    """Without the llamacpp extra, `e` answers with the extra's one message (its "[llamacpp]" shown
    as text, not eaten as markup) and asks nothing: no type, no path."""
    from firefly_core.extras import missing_extra
    from firefly_core.models.inventory import register_local
    from firefly_tui.screens.dialogs import ChoiceDialog

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if the extra were not installed
    expected = missing_extra("llamacpp")
    register_local(bloom_dir)
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        table = screen.query_one("#installed")
        await wait_until(pilot, lambda: table.row_count == 1)
        table.focus()
        await pilot.press("e")
        await wait_until(pilot, lambda: "Export failed" in screen.status_text, what="the message")
        assert not isinstance(app.screen, ChoiceDialog) and app.screen is screen
        assert expected.message in screen.status_text and expected.hint in screen.status_text
        shown = str(screen.query_one("#model-status").render())
        assert "pip install 'firefly-tui[llamacpp]'" in shown  # the brackets survive rendering

def test_quitting_does_not_wait_for_background_work(tmp_path):
    """A model load or an export still running in a worker thread must not hold "quit" (Python
    joins executor threads at exit): the process ends within the grace period, with its code."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys, time
        from firefly_tui import app as appmod

        class Busy(appmod.FireflyApp):
            def on_mount(self):
                super().on_mount()
                self.run_worker(lambda: time.sleep(120), thread=True)  # a long load, say
                self.set_timer(0.5, self.action_quit)

        a = Busy(welcome=False, settings=None)
        a.run(headless=True)
        print("returned", flush=True)
        appmod._leave_background_work(3)
        print("not reached")
        """
    )
    # timeout: a hang guard (the worker sleeps 120 s); the exit code proves quit did not join it
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100,
                          env={**__import__("os").environ, "FIREFLY_HOME": str(tmp_path)})
    assert proc.stdout.split() == ["returned"], proc.stderr[-2000:]
    assert proc.returncode == 3


async def test_run_settings_and_chat_settings_dialogs_list_the_declared_fields(monkeypatch):
    """Both dialogs are derived from the declarations: one row per declared engine setting (a
    choice list for choices, on/off for true/false, a text field for numbers), and the chat
    settings' number fields are GenerationConfig's declared settings."""
    from textual.app import App
    from textual.widgets import Input, Select

    from firefly_core.generation.config import GENERATION_KEYS
    from firefly_core.models.engine_settings import EngineSettings
    from firefly_core.setting_spec import setting_fields
    from firefly_tui.screens.chat_settings import NUMBER_FIELDS
    from firefly_tui.screens.dialogs import ModelSettingsDialog

    assert set(NUMBER_FIELDS) == set(GENERATION_KEYS)
    current = {"engine": "torch", "cuda_graph": False, "threads": 3}

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(ModelSettingsDialog("m", current))

    async with Host().run_test(size=SIZE) as pilot:
        dialog = await wait_screen(pilot, ModelSettingsDialog)
        for f, spec, kind in setting_fields(EngineSettings):
            widget = dialog.query_one(f"#m-{f.name}")
            if kind is bool:
                assert isinstance(widget, Select) and widget.value == "off"
            elif spec.choices is not None:
                assert isinstance(widget, Select)
                assert [v for _label, v in widget._options if v] == list(spec.choices)
            else:
                assert isinstance(widget, Input)
        assert dialog.values() == {"engine": "torch", "quantize": None, "cuda_graph": False, "threads": 3}
        dialog.query_one("#m-threads", Input).value = "100000"
        await pilot.click("#save")
        await wait_until(pilot, lambda: "threads = 100000 is above" in str(dialog.query_one("#error").render()))
        assert isinstance(pilot.app.screen, ModelSettingsDialog), "refused, not saved"
        # llama.cpp without its extra: refused with the install command, "[llamacpp]" shown as text
        monkeypatch.setitem(sys.modules, "llama_cpp", None)
        dialog.query_one("#m-threads", Input).value = "1"
        dialog.query_one("#m-engine", Select).value = "llamacpp"
        save = dialog.query_one("#save")
        await wait_until(pilot, lambda: not save.has_class("-active"))
        await pilot.click("#save")
        await wait_until(pilot, lambda: "firefly-tui[llamacpp]" in str(dialog.query_one("#error").render()))
        assert isinstance(pilot.app.screen, ModelSettingsDialog)
