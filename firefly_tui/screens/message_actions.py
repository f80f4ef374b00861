"""The actions on one message of a chat, as a small menu: copy, retry from here, edit and resend,
fork a new chat from here, delete.

A menu rather than single-letter keys on the message, so typing never triggers an action by
accident (typed characters belong to the composer). Returns the chosen action's name or None.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from ..i18n import t

# action name -> i18n key of its label; "edit" only for the user's own messages
ACTIONS = {
    "copy": "chat.action.copy",
    "retry": "chat.action.retry",
    "edit": "chat.action.edit",
    "fork": "chat.action.fork",
    "delete": "chat.action.delete",
}


def actions_for(role: str) -> list[str]:
    return [a for a in ACTIONS if a != "edit" or role == "user"]


class MessageActionsDialog(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", show=False)]

    def __init__(self, role: str, preview: str) -> None:
        super().__init__(classes="dialog-screen")
        self.role = role
        self.preview = preview

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="message-actions"):
            text = " ".join(self.preview.split())
            yield Label(text[:60] + ("…" if len(text) > 60 else ""), classes="question")
            yield OptionList(*(Option(t(ACTIONS[a]), id=a) for a in actions_for(self.role)), id="actions")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
