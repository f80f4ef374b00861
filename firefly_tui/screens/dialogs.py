"""Small modal dialogs: confirm a destructive action, ask for one line of text, chat settings."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, TextArea

from ..i18n import t


class ConfirmDialog(ModalScreen[bool]):
    """Yes/No. Destructive actions go through here; the default button is No."""

    BINDINGS = [Binding("escape", "answer(False)", show=False), Binding("y", "answer(True)", show=False)]

    def __init__(self, question: str) -> None:
        super().__init__(classes="dialog-screen")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            with Horizontal(classes="buttons"):
                yield Button(t("yes"), variant="error", id="yes")
                yield Button(t("no"), variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class PromptDialog(ModalScreen[str | None]):
    """One line of text (rename, a path). Enter accepts, Esc cancels (None)."""

    BINDINGS = [Binding("escape", "cancel", show=False)]

    def __init__(self, title: str, value: str = "", placeholder: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.value = value
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="question")
            yield Input(self.value, placeholder=self.placeholder, id="value")
            with Horizontal(classes="buttons"):
                yield Button(t("ok"), variant="primary", id="ok")
                yield Button(t("cancel"), id="cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self.dismiss(self.query_one(Input).value.strip() or None)
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


_NUMBER_FIELDS: dict[str, type] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "repetition_penalty": float,
    "max_new_tokens": int,
}


class ChatSettingsDialog(ModalScreen[dict[str, Any] | None]):
    """Per-chat settings: model, system prompt, prompt format, sampling. Empty = default."""

    BINDINGS = [Binding("escape", "cancel", show=False)]

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(classes="dialog-screen")
        self.settings = dict(settings)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(t("settings.title"), classes="question")
            with VerticalScroll(classes="dialog-body"):
                with Grid(classes="form"):
                    yield Label(t("settings.model"))
                    yield Input(str(self.settings.get("model") or ""), id="model")
                    yield Label(t("settings.prompt_format"))
                    yield Input(
                        str(self.settings.get("prompt_format") or ""),
                        placeholder="firefly-v1 | firefly-v2 | chat_template",
                        id="prompt_format",
                    )
                    for name in _NUMBER_FIELDS:
                        value = self.settings.get(name)
                        yield Label(t(f"settings.{name}"))
                        yield Input("" if value is None else str(value), id=name)
                yield Label(t("settings.system"))
                yield TextArea(str(self.settings.get("system") or ""), id="system")
            yield Label("", id="error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button(t("save"), variant="primary", id="save")
                yield Button(t("cancel"), id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id != "save":
            self.dismiss(None)
            return
        out: dict[str, Any] = {}
        for name in ("model", "prompt_format"):
            value = self.query_one(f"#{name}", Input).value.strip()
            out[name] = value or None
        out["system"] = self.query_one("#system", TextArea).text.strip() or None
        for name, kind in _NUMBER_FIELDS.items():
            raw = self.query_one(f"#{name}", Input).value.strip()
            if not raw:
                out[name] = None
                continue
            try:
                out[name] = kind(raw)
            except ValueError:
                self.query_one("#error", Label).update(t("settings.bad_number", field=t(f"settings.{name}")))
                return
        self.dismiss({k: v for k, v in out.items() if v is not None})

    def action_cancel(self) -> None:
        self.dismiss(None)
