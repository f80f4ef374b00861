"""The message box of a chat: several lines, Enter sends, Ctrl+J adds a line, paste keeps every line.

Terminals send Enter and Shift+Enter as the same byte unless they speak the kitty keyboard
protocol, so Shift+Enter cannot be the only "new line" key. Ctrl+J sends a line feed (0x0A),
which every terminal delivers distinctly from Enter's carriage return, so it always works; Shift+Enter
is accepted too where the terminal tells it apart. The box grows with its text up to a few lines
(CSS max-height), then scrolls.

The composer also shows whether it is editing an earlier message (a border title and a class);
it does not decide what editing means: it posts `Submitted` and `Cleared`, and the conversation
that owns it acts on them.
"""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import TextArea

from ..i18n import t

NEWLINE_KEYS = ("ctrl+j", "shift+enter", "alt+enter")


class Composer(TextArea):
    """A multi-line message box. `Submitted(text)` on Enter; `Cleared` when its text becomes empty."""

    DEFAULT_CSS = """
    Composer {
        height: auto;
        min-height: 3;
        max-height: 8;
        border: tall $primary 40%;
        padding: 0 1;
    }
    Composer:focus { border: tall $primary; }
    Composer.editing { border: tall $warning; }
    Composer.editing:focus { border: tall $warning; }
    """

    editing: reactive[bool] = reactive(False)

    class Submitted(Message):
        """Enter was pressed with this (stripped, non-empty) text."""

        def __init__(self, composer: "Composer", text: str) -> None:
            super().__init__()
            self.composer, self.text = composer, text

    class LeaveUp(Message):
        """Up on the first line: the user wants the messages above (the log takes focus)."""

    class Cleared(Message):
        """The user removed all the text (used to leave edit mode)."""

        def __init__(self, composer: "Composer") -> None:
            super().__init__()
            self.composer = composer

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(
            "",
            id=id,
            soft_wrap=True,
            tab_behavior="focus",
            show_line_numbers=False,
            highlight_cursor_line=False,
            compact=False,
            placeholder=t("chat.placeholder"),
        )
        self._had_text = False

    @property
    def value(self) -> str:
        """The text (an Input-like name, so callers and tests read it the same way)."""
        return self.text

    @value.setter
    def value(self, text: str) -> None:
        self.load_text(text)
        self.move_cursor(self.document.end)  # editing starts at the end, where one types on

    def relabel(self) -> None:
        self.placeholder = t("chat.placeholder")
        self._watch_editing(self.editing)

    def _watch_editing(self, editing: bool) -> None:
        self.set_class(editing, "editing")
        self.border_title = t("chat.editing_title") if editing else None

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            text = self.text.strip()
            if text:
                self.post_message(self.Submitted(self, text))
            return
        if event.key == "up" and self.cursor_location[0] == 0:
            event.stop()
            event.prevent_default()
            self.post_message(self.LeaveUp())
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)

    def _on_text_area_changed(self, event: TextArea.Changed) -> None:
        has_text = bool(self.text)
        if self._had_text and not has_text:
            self.post_message(self.Cleared(self))
        self._had_text = has_text
