"""The Textual app that `firefly` opens: chat, models and training, one mode each.

The app holds what the screens share: the chat store, the loaded model (loaded only in workers,
through `backend`), the user's settings and the interface language. Nothing heavy is imported at
module import time, so the first screen paints before torch is ever loaded.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from . import backend, i18n
from .i18n import t
from .screens.chat import ChatScreen
from .screens.models import ModelsScreen
from .screens.train import TrainScreen
from .screens.welcome import WelcomeScreen
from .widgets.localized import localize_bindings


class FireflyApp(App):
    CSS_PATH = Path(__file__).resolve().parent / "app.tcss"
    TITLE = "Firefly"
    MODES = {"chat": ChatScreen, "models": ModelsScreen, "train": TrainScreen}
    BINDINGS = [
        Binding("f2", "show('chat')", "nav.chat"),
        Binding("f3", "show('models')", "nav.models"),
        Binding("f4", "show('train')", "nav.train"),
        Binding("f6", "toggle_language", "nav.language"),
        Binding("ctrl+q", "quit", "nav.quit", priority=True),
    ]

    def __init__(
        self,
        *,
        store=None,
        welcome: bool | None = None,
        language: str | None = None,
        settings: Any = "load",
    ) -> None:
        """`welcome`: None = show it on first start (no active model); `settings`: "load" reads
        the user's settings, None runs without them."""
        super().__init__()
        self.settings = backend.load_settings() if settings == "load" else settings
        i18n.set_language(language or getattr(self.settings, "language", None))
        localize_bindings(self)
        if store is None:
            from firefly_core.store import ChatStore

            store = ChatStore()
        self.store = store
        self.lm = None
        self.model_name: str | None = None
        self.want_welcome = welcome
        self._screens: weakref.WeakSet[Screen] = weakref.WeakSet()

    # -- start --------------------------------------------------------------------------------
    def on_mount(self) -> None:
        self.title = t("app.title")
        self.switch_mode("chat")
        welcome = self.want_welcome
        if welcome is None:
            welcome = getattr(self.settings, "active_model", None) is None
        if welcome:
            # After the chat screen's first refresh, so the screen under the welcome is complete.
            self.call_after_refresh(self.push_screen, WelcomeScreen(), self._welcome_done)
        elif getattr(self.settings, "active_model", None):
            self.load_active_model(self.settings.active_model)

    def _welcome_done(self, choice: str | None) -> None:
        if choice == "models":
            self.switch_mode("models")

    def track_screen(self, screen: Screen) -> None:
        self._screens.add(screen)

    # -- model --------------------------------------------------------------------------------
    def set_model(self, lm, name: str, persist: bool = True) -> None:
        """The model chats use from now on (may be called from a worker thread)."""
        self.lm = lm
        self.model_name = name
        if persist and self.settings is not None:
            self.settings.active_model = name
            try:
                backend.save_settings(self.settings)
            except Exception as e:  # noqa: BLE001 - a read-only config must not break chat
                self.log.warning(f"cannot save settings: {e}")
        self.call_later(self._model_changed)

    def _model_changed(self) -> None:
        for screen in list(self._screens):
            if isinstance(screen, ChatScreen) and screen.is_mounted:
                screen.update_status()

    def load_active_model(self, name: str) -> None:
        """Load the saved active model in a worker; the chat status line shows progress."""
        self._load_worker(name)

    def _chat_screen(self) -> ChatScreen | None:
        return next((s for s in self._screens if isinstance(s, ChatScreen)), None)

    def _load_worker(self, name: str) -> None:
        def work() -> None:
            chat = self._chat_screen()
            if chat is not None:
                chat.post_message(ChatScreen.Status(t("chat.loading_model", name=name)))
            try:
                lm = backend.load_model(name, settings=self.settings)
            except BaseException as e:  # noqa: BLE001 - shown, not raised
                msg = t("models.load_failed", error=backend.format_error(e))
                self.call_from_thread(self.notify, msg, severity="error", timeout=10)
                if chat is not None:
                    chat.post_message(ChatScreen.Status(msg))
                return
            self.set_model(lm, name, persist=False)

        self.run_worker(work, thread=True, exclusive=True, group="app-load")

    def chat_with_model(self, path: str) -> None:
        """A new chat whose model is `path` (a trained RUN_DIR/final); loads it right away."""
        self.switch_mode("chat")

        async def open_chat() -> None:
            chat = self._chat_screen()
            if chat is None:
                return
            conv = self.store.create_conversation(f"{Path(path).parent.name}", {"model": path})
            await chat.open_conversation(conv.id)
            await chat.refresh_conversations()
            self._load_and_use(path)

        self.call_later(open_chat)

    def _load_and_use(self, path: str) -> None:
        def work() -> None:
            chat = self._chat_screen()
            if chat is not None:
                chat.post_message(ChatScreen.Status(t("chat.loading_model", name=path)))
            try:
                lm = backend.load_model(path, settings=self.settings)
            except BaseException as e:  # noqa: BLE001
                self.call_from_thread(
                    self.notify, t("models.load_failed", error=backend.format_error(e)), severity="error"
                )
                return
            self.set_model(lm, path, persist=False)

        self.run_worker(work, thread=True, exclusive=True, group="app-load")

    # -- navigation, language, commands -------------------------------------------------------
    def action_show(self, mode: str) -> None:
        self.switch_mode(mode)

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
                backend.save_settings(self.settings)
            except Exception as e:  # noqa: BLE001
                self.log.warning(f"cannot save settings: {e}")
        localize_bindings(self)
        self.title = t("app.title")
        for screen in list(self._screens):
            if screen.is_mounted:
                await screen.relabel()
        self.refresh_bindings()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield SystemCommand(t("cmd.chat"), t("cmd.chat"), lambda: self.switch_mode("chat"))
        yield SystemCommand(t("cmd.models"), t("cmd.models"), lambda: self.switch_mode("models"))
        yield SystemCommand(t("cmd.train"), t("cmd.train"), lambda: self.switch_mode("train"))
        yield SystemCommand(t("cmd.language"), t("cmd.language"), self.action_toggle_language)
        yield SystemCommand(t("cmd.welcome"), t("cmd.welcome"), lambda: self.push_screen(WelcomeScreen(), self._welcome_done))
        if isinstance(screen, ChatScreen):
            yield SystemCommand(t("cmd.new_chat"), t("cmd.new_chat"), screen.action_new_chat)
            yield SystemCommand(t("cmd.chat_settings"), t("cmd.chat_settings"), screen.action_chat_settings)
            yield SystemCommand(t("cmd.export_md"), t("cmd.export_md"), lambda: screen.action_export("md"))
            yield SystemCommand(t("cmd.export_json"), t("cmd.export_json"), lambda: screen.action_export("json"))
        yield from super().get_system_commands(screen)


def run_app() -> int:
    FireflyApp().run()
    return 0
