"""The Textual app that `firefly` opens: chat, models and training, one mode each.

The app holds what the screens share: the chat store, the session provider chats answer with
(`firefly_core.session.open_session` unless a test gives a fake), the active model (loaded in the
app's one loading worker, through the model service), the user's settings and the interface
language. Nothing heavy is imported at module import time, so the first screen paints before torch
is ever loaded.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from firefly_core.errors import format_error
from firefly_core.models import user_settings  # torch-free: the saved settings file

from . import i18n
from .i18n import t
from .model_loading import ModelLoaded, ModelStatus
from .screens.chat import ChatScreen
from .screens.models import ModelsScreen
from .screens.train import TrainScreen
from .screens.dialogs import ErrorDialog
from .screens.welcome import WelcomeScreen
from .widgets.localized import localize_bindings
from .widgets.nav import MODES, NavBar

if TYPE_CHECKING:
    from firefly_core.session import SessionProvider

# Textual's own command-palette entries (matched by their English title) -> our i18n keys.
_SYSTEM_COMMANDS = {
    "Theme": "cmd.sys.theme",
    "Quit": "cmd.sys.quit",
    "Keys": "cmd.sys.keys",
    "Minimize": "cmd.sys.minimize",
    "Maximize": "cmd.sys.maximize",
    "Screenshot": "cmd.sys.screenshot",
}


QUIT_GRACE_S = 2.0  # how long quitting waits for background work (a stopped reply saving its text)


class _NoWaitExecutor(ThreadPoolExecutor):
    """The event loop's executor for thread workers, whose shutdown does not wait for them.

    asyncio.run joins the default executor when the app ends, so a model load or a GGUF export in
    progress held "quit" for as long as it took (a first load can take a minute). Work abandoned
    this way is safe to drop: loads only read, downloads resume, exports and checkpoint models are
    written beside their final path and renamed when complete."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)


class FireflyApp(App):
    CSS_PATH = Path(__file__).resolve().parent / "app.tcss"
    TITLE = "Firefly"
    MODES = {"chat": ChatScreen, "models": ModelsScreen, "train": TrainScreen}
    # The navigation keys live in the top line (widgets/nav.py), so the footer keeps its room
    # for each screen's own keys; at 80 columns they would be cut off there.
    BINDINGS = [
        Binding("f2", "show('chat')", "nav.chat", show=False),
        Binding("f3", "show('models')", "nav.models", show=False),
        Binding("f4", "show('train')", "nav.train", show=False),
        # priority: a focused TextArea (the composer) binds F6 to "select line"
        Binding("f6", "toggle_language", "nav.language", show=False, priority=True),
        Binding("ctrl+b", "toggle_sidebar", "nav.sidebar"),
        Binding("ctrl+q", "quit", "nav.quit", priority=True, show=False),
    ]
    # Below 100 columns screens get the "-narrow" class: the chat sidebar folds away (Ctrl+B shows
    # it), the training form stacks above the chart, the models' buttons wrap (app.tcss).
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]

    def __init__(
        self,
        *,
        store=None,
        welcome: bool | None = None,
        language: str | None = None,
        settings: Any = "load",
        sessions: SessionProvider | None = None,
    ) -> None:
        """`welcome`: None = show it on first start (no active model); `settings`: "load" reads
        the user's settings, None runs without them; `sessions`: what chats open their session
        with (`firefly_core.session.open_session`'s signature; tests give a scripted one)."""
        super().__init__()
        # A broken config.json or chat store is shown in the app (ErrorDialog), never rewritten:
        # without settings nothing is saved; without a store the app offers only to quit.
        self.startup_errors: list[tuple[str, BaseException]] = []
        if settings == "load":
            try:
                settings = user_settings.load_settings()
            except Exception as e:  # noqa: BLE001 - shown in the app with its hint
                self.startup_errors.append(("settings", e))
                settings = None
        self.settings = settings
        i18n.set_language(language or getattr(self.settings, "language", None))
        localize_bindings(self)
        if store is None:
            try:
                from firefly_core.store import ChatStore

                store = ChatStore()
            except Exception as e:  # noqa: BLE001
                self.startup_errors.append(("store", e))
        self.store = store
        if sessions is None:
            from firefly_core.session import open_session as sessions  # light: no torch
        self.sessions = sessions
        self.lm = None
        self.model_name: str | None = None
        self.loading_model: str | None = None  # the model the loading worker is getting ready
        self.want_welcome = welcome
        self._screens: weakref.WeakSet[Screen] = weakref.WeakSet()

    # -- start --------------------------------------------------------------------------------
    def on_load(self) -> None:
        asyncio.get_running_loop().set_default_executor(_NoWaitExecutor(thread_name_prefix="firefly-worker"))

    def on_mount(self) -> None:
        self.title = t("app.title")
        if self.startup_errors:
            self._show_startup_errors()
            return
        self.switch_mode("chat")
        welcome = self.want_welcome
        if welcome is None:
            welcome = getattr(self.settings, "active_model", None) is None
        if welcome:
            # After the chat screen's first refresh, so the screen under the welcome is complete.
            self.call_after_refresh(self.push_screen, WelcomeScreen(), self._welcome_done)
        elif getattr(self.settings, "active_model", None):
            self.load_active_model(self.settings.active_model)

    def _show_startup_errors(self) -> None:
        """One dialog per problem; a store that cannot open leaves only Quit (nothing to show)."""
        kind, error = self.startup_errors[0]
        fatal = kind == "store"
        text = t("app.store_error" if fatal else "app.settings_error", error=format_error(error))

        def done(go_on: bool | None) -> None:
            if fatal or not go_on:
                self.exit(return_code=1)
                return
            self.startup_errors.pop(0)
            self.call_later(self.on_mount)

        self.push_screen(ErrorDialog(text, can_continue=not fatal), done)

    def _welcome_done(self, choice: str | None) -> None:
        if choice == "models":
            self.switch_mode("models")
        elif choice == "local":
            self.open_local_folder()

    def open_local_folder(self) -> None:
        """The Models screen with its "Use a local folder" dialog open."""
        self.switch_mode("models")

        def ask() -> None:
            if isinstance(self.screen, ModelsScreen):
                self.screen.action_local()

        self.call_after_refresh(ask)

    def notify(self, message: str, *, title: str = "", severity="information", timeout=None, markup: bool = True) -> None:
        """Every notification is plain text (whatever a widget passes as `markup`): errors and paths
        carry brackets ("firefly-tui[llamacpp]", "run[1]") that markup would swallow."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def track_screen(self, screen: Screen) -> None:
        """Called by each mode screen when it mounts: gives it the navigation line."""
        self._screens.add(screen)
        if screen.id in MODES and not screen.query(NavBar):
            screen.mount(NavBar(screen.id))

    # -- model --------------------------------------------------------------------------------
    def set_model(self, lm, name: str, persist: bool = True) -> None:
        """The model chats use from now on (may be called from a worker thread)."""
        self.lm = lm
        self.model_name = name
        if persist and self.settings is not None:
            self.settings.active_model = name
            try:
                user_settings.save_settings(self.settings)
            except Exception as e:  # noqa: BLE001 - a read-only config must not break chat
                self.log.warning(f"cannot save settings: {e}")
        self.call_later(self._model_changed)

    def _model_changed(self) -> None:
        for screen in list(self._screens):
            if isinstance(screen, ChatScreen) and screen.is_mounted:
                screen.model_changed()

    def load_active_model(self, name: str) -> None:
        """Load the saved active model; the chat status line shows progress."""
        self.load_model(name)

    def _chat_screen(self) -> ChatScreen | None:
        return next((s for s in self._screens if isinstance(s, ChatScreen)), None)

    # -- the one model-loading worker ---------------------------------------------------------
    def load_model(self, name: str, *, persist: bool = False, register: bool = False) -> None:
        """Load `name` through the model service and make it the active model (`persist`: saved as
        the model `firefly` starts with; `register`: a local folder added to the model list first).
        Every screen hears the steps (`ModelStatus`) and the end (`ModelLoaded`)."""
        self.loading_model = name
        self._tell(lambda: ModelStatus(name))
        self._model_loader(name, persist, register)

    @work(thread=True, exclusive=True, group="app-load", exit_on_error=False)
    def _model_loader(self, name: str, persist: bool, register: bool) -> tuple[str, Any, bool]:
        """Blocking load; posts messages only, its end is handled in `on_worker_state_changed`."""
        from firefly_core.models.service import model_service
        from firefly_core.quiet import quiet_libraries

        if register:
            from firefly_core.models.inventory import register_local

            register_local(name)
        quiet_libraries(ui=True)  # no progress bars drawn over the app
        service = model_service()
        say = lambda status: self._tell(lambda: ModelStatus(name, status.message))  # noqa: E731
        return name, service.get(service.request_for(name), status=say), persist

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place a model load ends: the active model changes, or the failure is shown."""
        if event.worker.group != "app-load" or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        if event.state == WorkerState.SUCCESS:
            name, lm, persist = event.worker.result
            self.loading_model = None
            self.set_model(lm, name, persist=persist)
            self._tell(lambda: ModelLoaded(name, lm))
        else:
            name, error = self.loading_model or "", format_error(event.worker.error)
            self.loading_model = None
            self.notify(t("models.load_failed", error=error), severity="error", timeout=10)
            self._tell(lambda: ModelLoaded(name, error=error))

    def _tell(self, message) -> None:
        """Post a fresh `message()` to every mode screen (thread-safe)."""
        for screen in list(self._screens):
            screen.post_message(message())

    def chat_with_model(self, path: str, title: str | None = None) -> None:
        """The chat whose model is `path` (a run's final/ or checkpoint model); loads it right away.

        The chat made for that folder before is reused, so "chat with this run" twice gives one
        chat, not two with the same name."""
        self.switch_mode("chat")

        async def open_chat() -> None:
            chat = self._chat_screen()
            if chat is None:
                return
            conv = _chat_for_model(self.store, path)
            if conv is None:
                conv = self.store.create_conversation(title or Path(path).parent.name, {"model": path})
            await chat.open_conversation(conv.id)
            await chat.refresh_conversations()
            self.load_model(path)

        self.call_later(open_chat)

    # -- navigation, language, commands -------------------------------------------------------
    def action_show(self, mode: str) -> None:
        if self.startup_errors:
            return
        self.switch_mode(mode)

    def action_toggle_sidebar(self) -> None:
        """Show the chat list at narrow widths (it is folded away there), hide it at wide ones."""
        self.screen.toggle_class("-sidebar-toggled")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "toggle_sidebar":
            return bool(self.screen.query("#sidebar"))
        return True

    async def action_quit(self) -> None:
        """Quit at once; a training run keeps going (its own process), and we say so."""
        chat = getattr(self._chat_screen(), "chat", None)
        stop = getattr(chat, "stop", None)
        if callable(stop):
            stop()  # a reply in progress stops between tokens and keeps its text
        try:
            from firefly_core.training.run import running_runs

            running = running_runs()
        except Exception:  # noqa: BLE001 - quitting must not fail on a broken runs folder
            running = []
        if running:
            names = ", ".join(p.name for p in running)
            self.exit(message=t("app.quit_runs_continue", runs=names))
        else:
            self.exit()

    async def action_toggle_language(self) -> None:
        await self.set_language("en" if i18n.language() == "zh" else "zh")

    async def set_language(self, lang: str) -> None:
        chat = self._chat_screen()
        if chat is not None and chat.generating:
            self.notify(t("chat.busy"), severity="warning")
            return
        i18n.set_language(lang)
        if self.settings is not None:
            self.settings.language = lang
            try:
                user_settings.save_settings(self.settings)
            except Exception as e:  # noqa: BLE001
                self.log.warning(f"cannot save settings: {e}")
        localize_bindings(self)
        self.title = t("app.title")
        for screen in list(self._screens):
            if screen.is_mounted:
                await screen.relabel()
        self.refresh_bindings()

    def action_command_palette(self) -> None:
        """Textual's palette, with its search prompt in the interface language too."""
        from textual.command import CommandPalette

        if self.use_command_palette and not CommandPalette.is_open(self):
            self.push_screen(CommandPalette(id="--command-palette", placeholder=t("cmd.search")))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The command palette in the interface language; each help line says what the title does not."""

        def cmd(key: str, callback) -> SystemCommand:
            return SystemCommand(t(key), t(key + ".help"), callback)

        yield cmd("cmd.chat", lambda: self.switch_mode("chat"))
        yield cmd("cmd.models", lambda: self.switch_mode("models"))
        yield cmd("cmd.train", lambda: self.switch_mode("train"))
        yield cmd("cmd.local", self.open_local_folder)
        yield cmd("cmd.language", self.action_toggle_language)
        yield cmd("cmd.welcome", lambda: self.push_screen(WelcomeScreen(), self._welcome_done))
        if screen.query("#sidebar"):
            yield cmd("cmd.sidebar", self.action_toggle_sidebar)
        if isinstance(screen, ChatScreen):
            yield cmd("cmd.new_chat", screen.action_new_chat)
            yield cmd("cmd.chat_settings", screen.action_chat_settings)
            yield cmd("cmd.export_md", lambda: screen.action_export("md"))
            yield cmd("cmd.export_json", lambda: screen.action_export("json"))
            yield cmd("cmd.fork", screen.action_fork)
            yield cmd("cmd.attach", screen.action_attach)
        if isinstance(screen, TrainScreen):
            yield cmd("cmd.sample_data", screen.action_use_sample)
        for command in super().get_system_commands(screen):
            key = _SYSTEM_COMMANDS.get(command.title)
            if key is None:
                yield command
            elif key == "cmd.sys.quit":
                yield cmd(key, self.action_quit)
            else:
                yield SystemCommand(t(key), t(key + ".help"), command.callback, command.discover)


def _chat_for_model(store, model_path: str):
    """The chat made earlier for this model folder (newest), so "chat with this run" reuses it."""
    wanted = str(model_path)
    for conv in store.list_conversations():
        if str((conv.settings or {}).get("model") or "") == wanted:
            return conv
    return None


def run_app() -> int:
    app = FireflyApp()
    app.run()
    code = app.return_code or 0
    _leave_background_work(code)
    return code


def _leave_background_work(code: int) -> None:
    """Give background work a moment (a stopped reply saving itself), then end the process without
    joining what is still running: Python would otherwise wait for every worker thread at exit."""
    workers = [t for t in threading.enumerate() if t.name.startswith("firefly-worker") and t.is_alive()]
    deadline = QUIT_GRACE_S
    for t in workers:
        start = time.monotonic()
        t.join(max(0.0, deadline))
        deadline -= time.monotonic() - start
    if any(t.is_alive() for t in workers):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
