"""The chat list beside the conversation: search, "new chat", and the saved chats, newest first.

The sidebar knows the store only to list and search chats; it never opens one itself. It posts
`Picked` (a chat was chosen) and `NewChat`, and the screen decides what happens. In the search
box, Down moves into the results and Enter opens the highlighted (or first) one, so a search is
finished without reaching for the mouse or Tab.
"""

from __future__ import annotations

from textual import events, on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, ListItem, ListView

from ..i18n import t


class ConversationItem(ListItem):
    def __init__(self, conversation_id: int, title: str) -> None:
        super().__init__(Label(title))
        self.conversation_id = conversation_id
        self.title_text = title


class SearchBox(Input):
    """The search field: Down enters the results, Enter opens the first result."""

    class EnterResults(Message):
        def __init__(self, open_it: bool) -> None:
            super().__init__()
            self.open_it = open_it

    async def _on_key(self, event: events.Key) -> None:
        if event.key in ("down", "enter"):
            event.stop()
            event.prevent_default()
            self.post_message(self.EnterResults(open_it=event.key == "enter"))
            return
        await super()._on_key(event)


class ChatSidebar(Vertical):
    """Search, new chat, and the list of chats. Posts `Picked(conversation_id)` and `NewChat`."""

    class Picked(Message):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class NewChat(Message):
        pass

    def __init__(self, store, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.store = store
        self.search_text = ""
        self.current: int | None = None

    def compose(self) -> ComposeResult:
        yield SearchBox(self.search_text, placeholder=t("chat.search"), id="search")
        yield Button(t("chat.new"), id="new-chat", variant="primary")
        yield ListView(id="conversations")

    @property
    def list_view(self) -> ListView:
        return self.query_one("#conversations", ListView)

    def conversation_ids(self) -> list[int]:
        return [item.conversation_id for item in self.list_view.children if isinstance(item, ConversationItem)]

    async def refresh_list(self, current: int | None = None) -> None:
        """Reload the chats (matching the search) and highlight `current`."""
        if current is not None:
            self.current = current
        lv = self.list_view
        await lv.clear()
        convs = self.store.list_conversations(self.search_text or None)
        await lv.extend(ConversationItem(c.id, c.title) for c in convs)
        for i, item in enumerate(lv.children):
            if item.conversation_id == self.current:
                lv.index = i

    async def clear_search(self) -> None:
        if self.search_text:
            self.search_text = ""
            self.query_one("#search", Input).value = ""

    @on(Input.Changed, "#search")
    async def _search(self, event: Input.Changed) -> None:
        event.stop()
        self.search_text = event.value
        await self.refresh_list()

    @on(SearchBox.EnterResults)
    def _enter_results(self, event: SearchBox.EnterResults) -> None:
        event.stop()
        lv = self.list_view
        if not lv.children:
            return
        if lv.index is None:
            lv.index = 0
        if event.open_it:
            item = lv.children[lv.index]
            self.post_message(self.Picked(item.conversation_id))
        else:
            lv.focus()

    @on(ListView.Selected, "#conversations")
    def _picked(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, ConversationItem):
            self.post_message(self.Picked(event.item.conversation_id))

    @on(Button.Pressed, "#new-chat")
    def _new_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.NewChat())
