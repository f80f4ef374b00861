"""Pilot tests of the chat screen: real tiny models for replies, a scripted slow stream for cancel."""

from __future__ import annotations

import json

import pytest
from app_helpers import SlowSession, screen_text, wait_screen, wait_until

from firefly_core.store import ChatStore
from firefly_tui import backend
from firefly_tui.app import FireflyApp
from firefly_tui.screens.chat import ChatScreen
from firefly_tui.screens.dialogs import ChatSettingsDialog, ConfirmDialog, PromptDialog
from firefly_tui.widgets.chat_view import MessageView

SIZE = (110, 36)


@pytest.fixture(scope="module")
def bloom_lm(bloom_dir):
    return backend.load_model(str(bloom_dir))


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


def make_app(store, lm=None, name=None, language="en") -> FireflyApp:
    app = FireflyApp(store=store, welcome=False, language=language, settings=None)
    if lm is not None:
        app.lm, app.model_name = lm, name or lm.name
    return app


def chat_of(app) -> ChatScreen:
    assert isinstance(app.screen, ChatScreen), app.screen
    return app.screen


async def send(pilot, text: str, *, wait: bool = True) -> None:
    """Type `text` and press Enter; with `wait`, until the reply is saved."""
    app = pilot.app
    chat = chat_of(app)
    before = len(app.store.messages(chat.conversation_id)) if chat.conversation_id else 0
    chat.query_one("#composer").value = text
    await pilot.press("enter")
    if wait:
        await wait_until(
            pilot,
            lambda: not chat.generating and len(app.store.messages(chat.conversation_id)) >= before + 2,
            timeout=60,
            what="the reply",
        )


async def test_chat_two_turns_real_model_persisted(store, bloom_lm, bloom_dir):
    conv = store.create_conversation("t", {"max_new_tokens": 12, "temperature": 0.0 + 1e-3})
    app = make_app(store, bloom_lm, str(bloom_dir))
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await wait_until(pilot, lambda: chat.conversation_id == conv.id)
        composer = chat.query_one("#composer")
        composer.focus()
        await pilot.press(*"你好世界")  # CJK typed key by key
        assert composer.value == "你好世界"
        await pilot.press("enter")
        await wait_until(pilot, lambda: not chat.generating and len(store.messages(conv.id)) == 2, timeout=60)
        first = chat.last_stats
        assert first["new_tokens"] > 0 and first["stop_reason"] in ("max_new_tokens", "stop_token", "stop_string")
        await send(pilot, "再说一次")
        second = chat.last_stats
        assert second["reused_tokens"] > 0  # the session kept its KV cache across turns
        assert second["context_used"] == second["prompt_tokens"] + second["new_tokens"]
        msgs = store.messages(conv.id)
        assert [m.role for m in msgs] == ["user", "assistant", "user", "assistant"]
        views = chat.query(MessageView)
        assert [v.content for v in views] == [m.content for m in msgs]
        status = str(chat.query_one("#status").render())
        assert "tok/s" in status and f"context {second['context_used']}/{bloom_lm.context_length}" in status
        assert msgs[3].meta["new_tokens"] == second["new_tokens"]
    # a new app on the same database finds the chat
    app2 = make_app(store)
    async with app2.run_test(size=SIZE) as pilot:
        chat = chat_of(app2)
        await wait_until(pilot, lambda: len(chat.query(MessageView)) == 4)
        assert chat.conversation_id == conv.id


async def test_esc_stops_reply_keeps_partial_and_ui_stays_responsive(store, monkeypatch):
    slow = SlowSession(["床前", "明月", "光，"], delay=0.03)
    monkeypatch.setattr(backend, "new_session", lambda lm, history, settings: slow)
    app = make_app(store, lm=object(), name="scripted")
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await send(pilot, "写一首诗", wait=False)
        await wait_until(pilot, lambda: chat.streaming_view is not None and len(chat.streaming_view.content) >= 6)
        # typing while the reply streams
        await pilot.press(*"abc")
        assert chat.query_one("#composer").value == "abc"
        await pilot.press("escape")
        await wait_until(pilot, lambda: not chat.generating, what="stop")
        [user, reply] = store.messages(chat.conversation_id)
        assert reply.partial and reply.content.startswith("床前明月")
        view = list(chat.query(MessageView))[-1]
        assert view.has_class("partial") and view.content == reply.content
        assert "stopped" in str(view.query_one(".role").render())


async def test_regenerate_and_edit_last(store, bloom_lm):
    conv = store.create_conversation("t", {"max_new_tokens": 6})
    app = make_app(store, bloom_lm)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await send(pilot, "问题一")
        first_reply = store.messages(conv.id)[-1]
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: not chat.generating and store.messages(conv.id)[-1].id != first_reply.id, timeout=60)
        msgs = store.messages(conv.id)
        assert [m.role for m in msgs] == ["user", "assistant"] and msgs[1].id != first_reply.id
        assert len(chat.query(MessageView)) == 2
        await pilot.press("ctrl+e")
        composer = chat.query_one("#composer")
        assert composer.value == "问题一" and chat.editing
        composer.value = "问题二"
        await pilot.press("enter")
        await wait_until(pilot, lambda: not chat.generating and len(store.messages(conv.id)) == 2, timeout=60)
        msgs = store.messages(conv.id)
        assert [(m.role, m.content) for m in msgs][0] == ("user", "问题二")
        assert [v.content for v in chat.query(MessageView)] == [m.content for m in msgs]
        # the session's history agrees with the store (nothing of the first question left)
        assert [m.content for m in chat.session.messages] == [m.content for m in msgs]


async def test_copy_and_export(store, tmp_path):
    conv = store.create_conversation("导出测试", {"system": "你是助手"})
    store.add_message(conv.id, "user", "1+1=?")
    store.add_message(conv.id, "assistant", "等于 **2**", partial=True)
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await wait_until(pilot, lambda: len(chat.query(MessageView)) == 2)
        await pilot.press("ctrl+y")
        assert app.clipboard == "等于 **2**"
        first = list(chat.query(MessageView))[0]
        first.focus()
        await pilot.press("c")  # copy the focused message
        assert app.clipboard == "1+1=?"
        for fmt, key in (("md", "ctrl+s"), ("json", None)):
            if key:
                await pilot.press(key)
            else:
                chat.action_export("json")
            await wait_screen(pilot, PromptDialog)
            target = tmp_path / f"out.{fmt}"
            app.screen.query_one("#value").value = str(target)
            await pilot.press("enter")
            await wait_until(pilot, target.exists)
        md = (tmp_path / "out.md").read_text(encoding="utf-8")
        assert md.startswith("# 导出测试") and "## Assistant _(stopped)_" in md and "你是助手" in md
        data = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
        assert data["messages"][1] == {"role": "assistant", "content": "等于 **2**", "partial": True}


async def test_sidebar_new_rename_delete_search(store):
    a = store.create_conversation("猫的故事")
    store.add_message(a.id, "user", "喵")
    b = store.create_conversation("dogs")
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        lv = chat.query_one("#conversations")
        await wait_until(pilot, lambda: len(lv.children) == 2)
        assert chat.conversation_id == b.id  # newest first
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: len(lv.children) == 3)
        new_id = chat.conversation_id
        assert new_id not in (a.id, b.id)
        # rename
        await pilot.press("ctrl+r")
        await wait_screen(pilot, PromptDialog)
        app.screen.query_one("#value").value = "新的名字"
        await pilot.press("enter")
        await wait_until(pilot, lambda: store.get_conversation(new_id).title == "新的名字")
        # delete: No keeps it, Yes removes it
        await pilot.press("ctrl+d")
        await wait_screen(pilot, ConfirmDialog)
        await pilot.press("escape")
        await wait_screen(pilot, ChatScreen)
        assert store.get_conversation(new_id) is not None
        await pilot.press("ctrl+d")
        await wait_screen(pilot, ConfirmDialog)
        await pilot.click("#yes")
        await wait_until(pilot, lambda: store.get_conversation(new_id) is None)
        await wait_until(pilot, lambda: len(lv.children) == 2)
        # search matches titles and message text
        await pilot.press("ctrl+f")
        await pilot.press(*"喵")
        await wait_until(pilot, lambda: [i.conversation_id for i in lv.children] == [a.id])


async def test_chat_settings_dialog_validates_and_saves(store):
    conv = store.create_conversation("s")
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+o")
        await wait_screen(pilot, ChatSettingsDialog)
        dialog = app.screen
        dialog.query_one("#max_new_tokens").value = "lots"
        dialog.query_one("#temperature").value = "0.7"
        dialog.query_one("#system").text = "你是一个诗人"
        await pilot.click("#save")
        assert isinstance(app.screen, ChatSettingsDialog)  # refused
        assert "number" in str(dialog.query_one("#error").render())
        dialog.query_one("#max_new_tokens").value = "64"
        await pilot.pause(0.3)  # a Button ignores presses during its 0.2 s press effect
        await pilot.click("#save")
        await wait_screen(pilot, ChatScreen)
        assert store.get_conversation(conv.id).settings == {"max_new_tokens": 64, "temperature": 0.7, "system": "你是一个诗人"}


async def test_settings_reach_the_session(store, bloom_lm):
    conv = store.create_conversation("s", {"max_new_tokens": 3, "system": "你是助手", "prompt_format": "firefly-v2"})
    app = make_app(store, bloom_lm)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await send(pilot, "你好")
        assert chat.last_stats["new_tokens"] <= 3
        assert chat.session.config.max_new_tokens == 3
        assert chat.session.system == "你是助手"
        assert chat.session.lm.prompt_format.name == "firefly-v2"
        assert chat.session.lm.model is bloom_lm.model  # same weights, no reload


async def test_no_model_and_failed_reply_are_explained(store, monkeypatch):
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        chat.query_one("#composer").value = "hi"
        await pilot.press("enter")
        await pilot.pause()
        assert not chat.generating and "No model loaded" in " ".join(str(n.message) for n in app._notifications)

    from firefly_core.errors import PromptTooLongError

    def broken(lm, history, settings):
        raise PromptTooLongError("the message is too long", "shorten it")

    monkeypatch.setattr(backend, "new_session", broken)
    app = make_app(store, lm=object(), name="x")
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await send(pilot, "hi", wait=False)
        await wait_until(pilot, lambda: chat.query(".failed") and not chat.generating, what="the error")
        view = list(chat.query(MessageView))[-1]
        assert view.has_class("failed") and not chat.generating
        assert "too long — shorten it" in str(view.query_one(".role").render())


async def test_language_switch_relabels(store):
    store.create_conversation("x")
    app = make_app(store, language="en")
    async with app.run_test(size=SIZE) as pilot:
        assert "+ New chat" in screen_text(app)
        await pilot.press("f6")
        await wait_until(pilot, lambda: "新对话" in screen_text(app))
        assert "重新生成" in screen_text(app)  # footer bindings follow
        await pilot.press("f6")
        await wait_until(pilot, lambda: "Regenerate" in screen_text(app))


async def test_command_palette_offers_the_app_commands(store):
    app = make_app(store, language="zh")
    async with app.run_test(size=SIZE) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("新建对话", "导出当前对话为 Markdown", "打开模型管理", "打开训练", "切换界面语言（中文/English）"):
            assert title in titles
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"模型管理")
        await wait_until(pilot, lambda: "打开模型管理" in screen_text(app))
        await pilot.press("enter")
        await wait_until(pilot, lambda: type(app.screen).__name__ == "ModelsScreen")
