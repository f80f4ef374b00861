"""The footer of key bindings, rebuilt at most once per refresh.

Textual's Footer rebuilds all its keys on every bindings change; at start-up focus and mounts
change the bindings several times in a row, and each rebuild of ~16 keys costs tens of
milliseconds on a slow machine. Coalescing them keeps the first paint fast.
"""

from __future__ import annotations

from textual.widgets import Footer


class QuickFooter(Footer):
    """Compact (one space between keys) and without Textual's "^p palette" entry: the navigation
    line shows ^P, and at 80 columns every cell counts for the screen's own keys."""

    _recompose_pending = False

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("compact", True)
        kwargs.setdefault("show_command_palette", False)
        super().__init__(*args, **kwargs)

    def bindings_changed(self, screen) -> None:
        self._bindings_ready = True
        if not screen.app.app_focus:
            return
        if self.is_attached and screen is self.screen and not self._recompose_pending:
            self._recompose_pending = True
            self.call_after_refresh(self._recompose_once)

    async def _recompose_once(self) -> None:
        self._recompose_pending = False
        await self.recompose()
