"""The first-start welcome: what firefly does, and the way to a first model."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from ..i18n import t
from .dialogs import ButtonRow

LOGO = Path(__file__).resolve().parent.parent / "assets" / "logo.txt"


def logo_text() -> str | None:
    try:
        return LOGO.read_text(encoding="utf-8").rstrip("\n")
    except OSError:
        return None


class WelcomeScreen(ModalScreen[str | None]):
    """Dismisses with "models" (open the catalog), "local" (use a folder on disk) or None (later)."""

    BINDINGS = [Binding("escape", "later", show=False)]

    def compose(self) -> ComposeResult:
        with Vertical(id="welcome"):
            logo = logo_text()
            if logo:
                yield Static(logo, id="logo")
            yield Label(t("welcome.title"), id="welcome-title")
            yield Static(t("welcome.body"), id="welcome-body")
            with ButtonRow(classes="buttons"):
                yield Button(t("welcome.catalog"), id="open-catalog", variant="primary")
                yield Button(t("welcome.local"), id="use-local")
                yield Button(t("welcome.later"), id="later")

    def on_mount(self) -> None:
        self.query_one("#open-catalog", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss({"open-catalog": "models", "use-local": "local"}.get(event.button.id))

    def action_later(self) -> None:
        self.dismiss(None)
