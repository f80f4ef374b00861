"""Small modal dialogs: confirm, one line of text, a choice from a list, text to read, an error, a model's run settings (chat settings: chat_settings.py)."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from ..i18n import t


class ButtonRow(Horizontal):
    """A row of buttons that Left/Right walk through, as a row of buttons looks like it should."""

    BINDINGS = [
        Binding("left", "step(-1)", show=False),
        Binding("right", "step(1)", show=False),
    ]

    def action_step(self, delta: int) -> None:
        buttons = [b for b in self.query(Button) if b.display and not b.disabled]
        if not buttons:
            return
        focused = self.screen.focused
        i = buttons.index(focused) if focused in buttons else 0
        buttons[(i + delta) % len(buttons)].focus()


class ConfirmDialog(ModalScreen[bool]):
    """Yes/No. Destructive actions go through here; the default button is No."""

    BINDINGS = [Binding("escape", "answer(False)", show=False), Binding("y", "answer(True)", show=False)]

    def __init__(self, question: str) -> None:
        super().__init__(classes="dialog-screen")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question")
            with ButtonRow(classes="buttons"):
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


class TextDialog(ModalScreen[None]):
    """Text to read (a data check summary, a command line to copy): a title, the text, Close."""

    BINDINGS = [Binding("escape", "close", show=False)]

    def __init__(self, title: str, text: str, *, failed: bool = False) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text, self.text, self.failed = title, text, failed

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide text-dialog"):
            yield Label(self.title_text, classes="question")
            with VerticalScroll(classes="dialog-body"):
                yield Static(self.text, id="text", markup=False, classes="failed" if self.failed else "")
            with ButtonRow(classes="buttons"):
                yield Button(t("close"), variant="primary", id="close")

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)


class DataCheckDialog(ModalScreen[str | None]):
    """The training data check's summary, shown over the form. Dismisses "start" (the data is
    usable and the user pressed Start / Ctrl+L) or None."""

    BINDINGS = [Binding("escape", "close", show=False), Binding("ctrl+l", "start", show=False)]

    def __init__(self, text: str, *, ok: bool) -> None:
        super().__init__(classes="dialog-screen")
        self.text, self.ok = text, ok

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide text-dialog"):
            yield Label(t("train.check_title"), classes="question")
            with VerticalScroll(classes="dialog-body"):
                yield Static(self.text, id="text", markup=False, classes="" if self.ok else "failed")
            yield Label(t("train.check_ok_hint" if self.ok else "train.check_bad_hint"), classes="note")
            with ButtonRow(classes="buttons"):
                if self.ok:
                    yield Button(t("train.start"), variant="primary", id="start")
                yield Button(t("close"), id="close")

    def on_mount(self) -> None:
        self.query_one("#start" if self.ok else "#close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss("start" if event.button.id == "start" else None)

    def action_start(self) -> None:
        self.dismiss("start" if self.ok else None)

    def action_close(self) -> None:
        self.dismiss(None)


class ChoiceDialog(ModalScreen[str | None]):
    """Pick one of several (value, label) choices; Enter picks, Esc cancels (None)."""

    BINDINGS = [Binding("escape", "cancel", show=False)]

    def __init__(self, title: str, choices: list[tuple[str, str]], *, note: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text, self.choices, self.note = title, choices, note

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="question")
            if self.note:
                yield Static(self.note, markup=False, classes="note")
            yield OptionList(*(Option(label, id=value) for value, label in self.choices), id="choices")
            with ButtonRow(classes="buttons"):
                yield Button(t("cancel"), id="cancel")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = 0 if self.choices else None
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ErrorDialog(ModalScreen[bool]):
    """A problem found at start (a broken settings file or chat store): what and how to fix it.

    Dismisses True to go on without the broken part, False to quit; nothing is written."""

    BINDINGS = [Binding("escape", "answer(False)", show=False)]

    def __init__(self, text: str, *, can_continue: bool) -> None:
        super().__init__(classes="dialog-screen")
        self.text, self.can_continue = text, can_continue

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide-ish"):
            yield Label(t("error"), classes="question failed")
            yield Static(self.text, id="error-text", markup=False)
            with ButtonRow(classes="buttons"):
                if self.can_continue:
                    yield Button(t("app.continue"), variant="primary", id="continue")
                yield Button(t("nav.quit"), variant="error" if self.can_continue else "primary", id="quit")

    def on_mount(self) -> None:
        self.query_one("#continue" if self.can_continue else "#quit", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "continue")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


# How each engine setting is offered: (field, choices as (label, value)); "" = automatic (None).
def _label(key: str, fallback: str) -> str:
    """The translated label, or `fallback` for a field declared after the strings were written."""
    from ..i18n import STRINGS

    return t(key) if key in STRINGS else fallback


class ModelSettingsDialog(ModalScreen[dict[str, Any] | None]):
    """How one model runs: one row per declared engine setting (`EngineSettings`: engine,
    quantization, CUDA graphs, threads; a field declared there appears here). Empty = automatic.

    Dismisses with the engine fields to save (None values = automatic); the rules are the core's
    (`ModelSettings.validate`, as a save applies them, the llama.cpp extra included), checked here
    so a wrong value is refused with its reason."""

    # one line per field (compact widgets), so the buttons stay on an 80x24 terminal
    DEFAULT_CSS = """
    ModelSettingsDialog .engine-form { grid-size: 2; grid-columns: 24 1fr; grid-rows: 1; grid-gutter: 1 1; height: auto; }
    ModelSettingsDialog .engine-form Label { padding: 0 1 0 0; }
    ModelSettingsDialog #error { width: 100%; height: auto; }
    """
    BINDINGS = [Binding("escape", "cancel", show=False)]

    def __init__(self, model: str, current: dict[str, Any]) -> None:
        super().__init__(classes="dialog-screen")
        self.model, self.current = model, dict(current)

    def compose(self) -> ComposeResult:
        from firefly_core.models.engine_settings import EngineSettings
        from firefly_core.setting_spec import setting_fields

        auto = t("models.auto")
        with Vertical(classes="dialog wide text-dialog"):
            yield Label(t("models.settings_title", name=self.model), classes="question")
            with Grid(classes="engine-form"):
                for f, spec, kind in setting_fields(EngineSettings):
                    value = self.current.get(f.name)
                    yield Label(_label(f"models.setting.{f.name}", f.name.replace("_", " ")))
                    if kind is bool:
                        shown = "" if value is None else ("on" if value else "off")
                        yield Select([(auto, ""), (t("models.on"), "on"), (t("models.off"), "off")],
                                     value=shown, allow_blank=False, compact=True, id=f"m-{f.name}")
                    elif spec.choices is not None:
                        options = [(spec.labels.get(c, c) if spec.labels else c, c) for c in spec.choices]
                        yield Select([(auto, "")] + options, value=value or "", allow_blank=False, compact=True,
                                     id=f"m-{f.name}")
                    else:
                        yield Input("" if value is None else str(value), placeholder=auto, compact=True,
                                    id=f"m-{f.name}")
            yield Static(t("models.settings_note"), classes="note")
            yield Label("", id="error", classes="error")
            with ButtonRow(classes="buttons"):
                yield Button(t("save"), variant="primary", id="save")
                yield Button(t("cancel"), id="cancel")

    def on_mount(self) -> None:
        self.query(".engine-form > Select, .engine-form > Input").first().focus()

    def values(self) -> dict[str, Any]:
        """The fields as EngineSettings values; raises ValueError (naming the field) for a number
        field whose text is no number."""
        from firefly_core.models.engine_settings import EngineSettings
        from firefly_core.setting_spec import setting_fields

        out: dict[str, Any] = {}
        for f, _spec, kind in setting_fields(EngineSettings):
            widget = self.query_one(f"#m-{f.name}")
            if isinstance(widget, Select):
                raw = widget.value if isinstance(widget.value, str) and widget.value else None
                out[f.name] = {"on": True, "off": False}.get(raw) if kind is bool and raw else raw
                continue
            text = widget.value.strip()
            try:
                out[f.name] = kind(text) if text else None
            except ValueError:
                raise ValueError(f.name) from None
        return out

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id != "save":
            self.dismiss(None)
            return
        from firefly_core.errors import FireflyError, format_error
        from firefly_core.models.user_settings import ModelSettings

        error = self.query_one("#error", Label)
        try:
            values = self.values()
        except ValueError as e:
            name = str(e)
            error.update(t("settings.bad_number", field=_label(f"models.setting.{name}", name)))
            self.query_one(f"#m-{name}").focus()
            return
        merged = {**self.current, **values}
        try:
            ModelSettings(**merged).validate("", saving=True)  # the dialog's title names the model
        except FireflyError as e:
            error.update(escape(format_error(e)))  # "[llamacpp]" is no markup
            return
        self.dismiss(values)

    def action_cancel(self) -> None:
        self.dismiss(None)
