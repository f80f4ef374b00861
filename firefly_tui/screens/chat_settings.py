"""The settings of one chat: its model (from a list), prompt format (a choice), sampling, system prompt.

Every field shows the chat's current value and, beside it, the default the chat gets when the
field is left empty (the model's generation_config.json → catalog → the user's saved model
settings, as core resolves them). Saving checks the values with core's own validation
(`firefly_core.session.check_chat_settings` → `resolve_generation_config`): an out-of-range value is refused
with core's reason, not a second copy of the rules. Dismisses with the new settings dict (empty
fields left out) or None.
"""

from __future__ import annotations

from typing import Any, Callable

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from firefly_core.errors import format_error
from firefly_core.formats import FORMAT_NAMES
from firefly_core.generation.config import GenerationConfig  # torch-free
from firefly_core.setting_spec import setting_fields

from ..model_choices import model_choices
from ..i18n import t
from ..widgets.conversation import short_model_name

# the generation fields of the dialog and how their text is read: GenerationConfig's declared
# settings (a field declared there appears here), in the order the dialog has always shown them
_ORDER = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")
NUMBER_FIELDS: dict[str, type] = {
    f.name: kind
    for f, _spec, kind in sorted(setting_fields(GenerationConfig),
                                 key=lambda x: _ORDER.index(x[0].name) if x[0].name in _ORDER else len(_ORDER))
}


def _field_label(name: str) -> str:
    """The translated label, or the field's name for a field declared after the strings were written."""
    from ..i18n import STRINGS

    return t(f"settings.{name}") if f"settings.{name}" in STRINGS else name.replace("_", " ")


def _shown(value: Any) -> str:
    return "" if value is None else str(value)


class ChatSettingsDialog(ModalScreen[dict[str, Any] | None]):
    """Per-chat settings. `check(settings)` raises core's ConfigError for values it refuses."""

    DEFAULT_CSS = """
    ChatSettingsDialog .dialog.wide { width: 90%; max-width: 100; }
    ChatSettingsDialog .settings-form { grid-size: 3; grid-columns: 24 1fr 14; grid-rows: 3; height: auto; }
    ChatSettingsDialog .settings-form Label { padding: 1 1 0 0; }
    ChatSettingsDialog .settings-form .default { color: $text-muted; padding: 1 0 0 1; }
    ChatSettingsDialog #system { height: 5; }
    ChatSettingsDialog #error { height: auto; color: $error; }
    """

    BINDINGS = [Binding("escape", "cancel", show=False)]

    def __init__(
        self,
        settings: dict[str, Any],
        *,
        defaults: dict[str, Any] | None = None,
        active_model: str | None = None,
        format_default: str | None = None,
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(classes="dialog-screen")
        self.settings = dict(settings)
        self.defaults = dict(defaults or {})
        self.active_model = active_model
        self.format_default = format_default
        self.check = check

    def compose(self) -> ComposeResult:
        current_model = self.settings.get("model")
        model_options = [(self._model_label(m), m) for m in dict.fromkeys(x for x in (self.active_model, current_model) if x)]
        fmt_options = [(name, name) for name in FORMAT_NAMES]
        with Vertical(classes="dialog wide", id="chat-settings"):
            yield Label(t("settings.title"), classes="question")
            with VerticalScroll(classes="dialog-body"):
                with Grid(classes="settings-form"):
                    yield Label(t("settings.model"))
                    yield Select(
                        model_options, value=current_model or Select.NULL, allow_blank=True, id="model",
                        prompt=t("settings.model_default", name=short_model_name(self.active_model) if self.active_model else t("none")),
                    )
                    yield Label("")
                    yield Label(t("settings.prompt_format"))
                    yield Select(
                        fmt_options, value=self.settings.get("prompt_format") or Select.NULL, allow_blank=True,
                        id="prompt_format", prompt=t("settings.format_auto"),
                    )
                    yield Label(t("settings.default", value=self.format_default or t("settings.auto")), classes="default")
                    for name in NUMBER_FIELDS:
                        default = self.defaults.get(name)
                        yield Label(_field_label(name))
                        yield Input(_shown(self.settings.get(name)), placeholder=_shown(default), id=name)
                        yield Label(t("settings.default", value=_shown(default) or "?"), classes="default")
                yield Label(t("settings.system"))
                yield TextArea(str(self.settings.get("system") or ""), id="system")
            yield Static("", id="error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button(t("save"), variant="primary", id="save")
                yield Button(t("cancel"), id="cancel")

    def _model_label(self, model: str) -> str:
        return f"★ {model} ({t('chat.active_model')})" if model == self.active_model else model

    def on_mount(self) -> None:
        self.query_one("#model", Select).focus()  # the first field
        self._load_models()

    @work(thread=True, exit_on_error=False)
    def _load_models(self) -> None:
        """The installed models and local folders (scanning the cache takes a moment)."""
        names = model_choices(self.active_model, self.settings.get("model"))
        self.app.call_from_thread(self._set_models, names)

    def _set_models(self, names: list[str]) -> None:
        select = self.query_one("#model", Select)
        value = select.value
        select.set_options([(self._model_label(m), m) for m in names])
        if value in names:
            select.value = value

    def collect(self) -> dict[str, Any] | None:
        """The settings in the form, or None after showing why they cannot be saved."""
        out: dict[str, Any] = {}
        for name in ("model", "prompt_format"):
            value = self.query_one(f"#{name}", Select).value
            out[name] = None if value in (Select.NULL, None, "") else str(value)
        out["system"] = self.query_one("#system", TextArea).text.strip() or None
        for name, kind in NUMBER_FIELDS.items():
            raw = self.query_one(f"#{name}", Input).value.strip()
            if not raw:
                out[name] = None
                continue
            try:
                out[name] = kind(raw)
            except ValueError:
                what = t("settings.whole_number" if kind is int else "settings.bad_number", field=_field_label(name))
                return self._refuse(what, name)
        out = {k: v for k, v in out.items() if v is not None}
        if self.check is not None:
            try:
                self.check(out)
            except Exception as e:  # noqa: BLE001 - core's ConfigError: its reason is the message
                field = next((n for n in NUMBER_FIELDS if n in str(getattr(e, "message", e))), None)
                return self._refuse(format_error(e), field)
        return out

    def _refuse(self, why: str, field: str | None) -> None:
        self.query_one("#error", Static).update(why)
        if field is not None:
            self.query_one(f"#{field}").focus()
        return None

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id != "save":
            self.dismiss(None)
            return
        settings = self.collect()
        if settings is not None:
            self.dismiss(settings)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        settings = self.collect()
        if settings is not None:
            self.dismiss(settings)

    def action_cancel(self) -> None:
        self.dismiss(None)
