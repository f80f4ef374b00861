"""The app's top line: the title and the three modes as tabs, with the keys that reach them.

Textual's Footer drops keys that do not fit, so at 80 columns F2/F3/F4 and Ctrl+Q used to vanish.
This one line carries the navigation keys on every mode screen (the app mounts it, see
`FireflyApp.track_screen`), which leaves the footer to each screen's own keys. Each tab is also
clickable.
"""

from __future__ import annotations

from rich.markup import escape
from textual.widgets import Static

from ..i18n import t

MODES = ("chat", "models", "train")
_MODE_KEYS = {"chat": "F2", "models": "F3", "train": "F4"}


def nav_markup(active: str | None, *, title: bool = True, sidebar: bool = False) -> str:
    """The line's content markup: title, tabs (the active one highlighted), the chat-list key
    where there is a chat list, language, command palette and quit."""
    parts = [f"[b]{escape(t('app.title'))}[/b] " if title else ""]
    for mode in MODES:
        label = escape(f" {_MODE_KEYS[mode]} {t('nav.' + mode)} ")
        style = "reverse b" if mode == active else "u"
        parts.append(f"[@click=app.show('{mode}')][{style}]{label}[/{style}][/] ")
    if sidebar:
        parts.append(f" [@click=app.toggle_sidebar][dim]^B[/dim] {escape(t('nav.sidebar'))}[/] ")
    parts.append(f" [@click=app.toggle_language][dim]F6[/dim] {escape(t('nav.language'))}[/]")
    parts.append(f"  [@click=app.command_palette][dim]^P[/dim] {escape(t('nav.commands'))}[/]")
    parts.append(f"  [@click=app.quit][dim]^Q[/dim] {escape(t('nav.quit'))}[/]")
    return "".join(parts)


class NavBar(Static):
    """Tabs for Chat / Models / Train; `mode` is the tab of the screen this bar sits on."""

    DEFAULT_CSS = """
    NavBar {
        dock: top;
        height: 1;
        width: 100%;
        background: $panel;
        color: $text;
    }
    """

    WIDE = 100  # columns from which the title fits too (App.HORIZONTAL_BREAKPOINTS' "-wide")

    def __init__(self, mode: str | None) -> None:
        super().__init__(nav_markup(mode), id="nav", markup=True)
        self.mode = mode

    def on_mount(self) -> None:
        self.relabel()

    def on_resize(self) -> None:
        self.relabel()

    def relabel(self) -> None:
        """Re-render for the current language and width (the title only where it fits)."""
        wide = self.app.size.width >= self.WIDE
        sidebar = bool(self.screen.query("#sidebar"))
        self.update(nav_markup(self.mode, title=wide, sidebar=sidebar))
