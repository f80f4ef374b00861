"""Pilot tests of the chat screen: real tiny models for replies, a scripted slow stream for cancel
and for the one reply a random model cannot be made to give (an empty one)."""

from __future__ import annotations

import json

import pytest
from app_helpers import SlowSession, screen_text, wait_screen, wait_until
from textual import events

from firefly_core.store import ChatStore
from firefly_tui.app import FireflyApp
from firefly_tui.screens.chat import ChatScreen
from firefly_tui.screens.chat_settings import ChatSettingsDialog
from firefly_tui.screens.dialogs import ConfirmDialog, PromptDialog
from firefly_tui.screens.message_actions import MessageActionsDialog
from firefly_tui.widgets.chat_view import ChatLog, MessageView
from firefly_tui.widgets.composer import Composer

SIZE = (110, 36)


@pytest.fixture(scope="module")
def bloom_lm(bloom_dir):
    from firefly_core.models.service import model_service

    return model_service().get(str(bloom_dir))


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


def make_app(store, lm=None, name=None, language="en", sessions=None) -> FireflyApp:
    """The app over `store`; `sessions`: a session provider instead of core's open_session."""
    app = FireflyApp(store=store, welcome=False, language=language, settings=None, sessions=sessions)
    if lm is not None:
        app.lm, app.model_name = lm, name or lm.name
    return app


def chat_of(app) -> ChatScreen:
    assert isinstance(app.screen, ChatScreen), app.screen
    return app.screen


def composer_of(app) -> Composer:
    return chat_of(app).query_one("#composer", Composer)


async def send(pilot, text: str, *, wait: bool = True) -> None:
    """Put `text` in the composer and press Enter; with `wait`, until the reply is saved."""
    app = pilot.app
    chat = chat_of(app)
    before = len(app.store.messages(chat.conversation_id)) if chat.conversation_id else 0
    composer_of(app).value = text
    composer_of(app).focus()
    await pilot.press("enter")
    if wait:
        await wait_until(
            pilot,
            lambda: not chat.generating and len(app.store.messages(chat.conversation_id)) >= before + 2,
            timeout=60,
            what="the reply",
        )


async def test_chat_two_turns_real_model_persisted(store, bloom_lm, bloom_dir):
    conv = store.create_conversation("t", {"max_new_tokens": 12, "temperature": 0})  # greedy: one reply, not luck
    app = make_app(store, bloom_lm, str(bloom_dir))
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await wait_until(pilot, lambda: chat.conversation_id == conv.id)
        composer = composer_of(app)
        composer.focus()
        await pilot.press(*"你好世界")  # CJK typed key by key
        assert composer.value == "你好世界"
        await pilot.press("enter")
        await wait_until(pilot, lambda: not chat.generating and len(store.messages(conv.id)) == 2, timeout=60)
        assert composer.value == ""
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
        assert [v.message_id for v in views] == [m.id for m in msgs]
        status = str(chat.query_one("#status").render())
        assert "tok/s" in status and f"context {second['context_used']}/{bloom_lm.context_length}" in status
        assert msgs[3].meta["new_tokens"] == second["new_tokens"]
    # a new app on the same database finds the chat
    app2 = make_app(store)
    async with app2.run_test(size=SIZE) as pilot:
        chat = chat_of(app2)
        await wait_until(pilot, lambda: len(chat.query(MessageView)) == 4)
        assert chat.conversation_id == conv.id


async def test_composer_keeps_every_line_enter_sends_ctrl_j_adds_a_line(store):
    slow = SlowSession(["好"], delay=0.0, forever=False)
    conv = store.create_conversation("t")
    app = make_app(store, lm=object(), name="scripted", sessions=slow.provider)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        composer = composer_of(app)
        await wait_until(pilot, lambda: app.focused is composer, what="the composer focused")
        height = composer.size.height
        pasted = "第一行\nsecond line\n\n    indented 第四行"
        app.post_message(events.Paste(pasted))  # as the terminal driver delivers a paste
        await wait_until(pilot, lambda: composer.value == pasted, what="the paste")
        await pilot.press("ctrl+j")
        await pilot.press(*"end")
        assert composer.value == pasted + "\nend"
        await pilot.pause()
        assert composer.size.height > height  # it grew with its lines
        assert "Ctrl+J" in composer.placeholder and "^J" in screen_text(app)  # the key is shown
        await pilot.press("enter")
        await wait_until(pilot, lambda: not chat.generating and len(store.messages(conv.id)) == 2)
        assert store.messages(conv.id)[0].content == pasted + "\nend"
        assert slow.histories[0][-1].content == pasted + "\nend"  # the model got every line too
        user_view = list(chat.query(MessageView))[0]
        assert "second line" in screen_text(app) and "indented 第四行" in screen_text(app)
        assert user_view.content.count("\n") == 4
        assert composer.value == "" and composer.size.height == height


async def test_esc_stops_reply_keeps_partial_and_ui_stays_responsive(store):
    slow = SlowSession(["床前", "明月", "光，"], delay=0.03)
    app = make_app(store, lm=object(), name="scripted", sessions=slow.provider)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await send(pilot, "写一首诗", wait=False)
        await wait_until(pilot, lambda: chat.streaming_view is not None and len(chat.streaming_view.content) >= 6)
        await pilot.press(*"abc")  # typing while the reply streams
        assert composer_of(app).value == "abc"
        await pilot.press("escape")
        await wait_until(pilot, lambda: not chat.generating, what="stop")
        [user, reply] = store.messages(chat.conversation_id)
        assert reply.partial and reply.content.startswith("床前明月")
        view = list(chat.query(MessageView))[-1]
        assert view.has_class("partial") and view.content == reply.content and view.message_id == reply.id
        assert "stopped" in str(view.query_one(".role").render())


async def test_empty_reply_says_so(store):
    app = make_app(store, lm=object(), name="scripted", sessions=SlowSession([], forever=False).provider)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await send(pilot, "你好")
        view = list(chat.query(MessageView))[-1]
        assert view.content == "" and view.has_class("empty")
        assert "empty reply (the model stopped at once: stop_token)" in str(view.query_one(".role").render())
        status = str(chat.query_one("#status").render())
        assert "empty reply" in status and "tok/s" not in status


async def test_regenerate_and_edit_and_resend(store, bloom_lm):
    conv = store.create_conversation("t", {"max_new_tokens": 6})
    app = make_app(store, bloom_lm)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        composer = composer_of(app)
        await send(pilot, "问题一")
        first_reply = store.messages(conv.id)[-1]
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: not chat.generating and store.messages(conv.id)[-1].id != first_reply.id, timeout=60)
        msgs = store.messages(conv.id)
        assert [m.role for m in msgs] == ["user", "assistant"] and msgs[1].id != first_reply.id
        assert [v.message_id for v in chat.query(MessageView)] == [m.id for m in msgs]

        # edit mode: the text with the cursor at its end, shown as editing; Esc leaves it and
        # gives back what was being typed
        await pilot.press(*"draft")
        await pilot.press("ctrl+e")
        assert composer.value == "问题一" and chat.editing and composer.has_class("editing")
        assert composer.cursor_location == composer.document.end
        assert "Editing" in screen_text(app)
        await pilot.press("escape")
        assert not chat.editing and composer.value == "draft" and not composer.has_class("editing")
        # clearing the composer leaves edit mode too: the next message is a new one
        await pilot.press("ctrl+e")
        assert chat.editing
        composer.value = ""
        await wait_until(pilot, lambda: not chat.editing, what="edit mode to end")
        await send(pilot, "新问题")
        assert [m.content for m in store.messages(conv.id) if m.role == "user"] == ["问题一", "新问题"]

        # edit and resend: the message is replaced and its old reply goes
        old_reply = store.messages(conv.id)[-1]
        await pilot.press("ctrl+e")
        assert composer.value == "新问题"
        composer.value = "问题二"
        await pilot.press("enter")
        await wait_until(pilot, lambda: not chat.generating and store.messages(conv.id)[-1].id != old_reply.id, timeout=60)
        assert not chat.editing
        msgs = store.messages(conv.id)
        assert [(m.role, m.content) for m in msgs if m.role == "user"] == [("user", "问题一"), ("user", "问题二")]
        assert [m.role for m in msgs] == ["user", "assistant", "user", "assistant"]
        assert [v.content for v in chat.query(MessageView)] == [m.content for m in msgs]
        # the last reply was made from the store's history: its prompt is what the session cached
        history = chat.chat.conversation.history()
        assert [m.content for m in history] == [m.content for m in msgs]
        _, prompt = chat.session.prompt_ids(history[:-1])
        assert list(chat.session._prefix.ids[: len(prompt)]) == prompt


async def test_message_actions_delete_retry_copy(store, bloom_lm):
    conv = store.create_conversation("t", {"max_new_tokens": 4})
    app = make_app(store, bloom_lm)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await send(pilot, "一")
        await send(pilot, "二")
        msgs = store.messages(conv.id)
        log = chat.query_one("#log", ChatLog)
        # the log is one Tab stop; Up/Down select messages inside it
        log.focus()
        await pilot.pause()
        assert log.selected is list(chat.query(MessageView))[-1]
        await pilot.press("up", "up", "up")
        assert log.selected.message_id == msgs[0].id

        # copy from the menu
        await pilot.press("enter")
        dialog = await wait_screen(pilot, MessageActionsDialog)
        assert [o.id for o in dialog.query_one("#actions").options] == ["copy", "retry", "edit", "fork", "delete"]
        await pilot.press("enter")  # the first action: copy
        await wait_screen(pilot, ChatScreen)
        assert app.clipboard == "一"

        # retry from the first question: what followed it is replaced by one new answer
        await pilot.press("enter")
        await wait_screen(pilot, MessageActionsDialog)
        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: not chat.generating and len(store.messages(conv.id)) == 2, timeout=60)
        after = store.messages(conv.id)
        assert after[0].id == msgs[0].id and after[1].id not in [m.id for m in msgs]
        assert [v.message_id for v in chat.query(MessageView)] == [m.id for m in after]

        # delete one message (asks first): the new answer
        log.focus()
        await pilot.press("down")
        assert log.selected.message_id == after[1].id
        await pilot.press("delete")
        await wait_screen(pilot, ConfirmDialog)
        await pilot.press("y")
        await wait_until(pilot, lambda: len(store.messages(conv.id)) == 1)
        assert [v.message_id for v in chat.query(MessageView)] == [after[0].id]
        # the chat stays usable: the unanswered question is answered by a new message's turn
        await send(pilot, "三")
        assert [m.role for m in store.messages(conv.id)] == ["user", "user", "assistant"]


async def test_focus_follows_the_user(store):
    a = store.create_conversation("猫的故事")
    store.add_message(a.id, "user", "喵")
    store.add_message(a.id, "assistant", "喵喵")
    b = store.create_conversation("dogs")
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        composer = composer_of(app)
        lv = chat.query_one("#conversations")
        await wait_until(pilot, lambda: len(lv.children) == 2)
        # typed characters go to the composer from anywhere that takes no text
        lv.focus()
        await pilot.press(*"hi")
        assert app.focused is composer and composer.value == "hi"
        chat.query_one("#log").focus()
        await pilot.press("x")
        assert app.focused is composer and composer.value == "hix"
        await wait_until(pilot, lambda: chat.conversation_id == b.id)
        await chat.open_conversation(a.id)
        # Up on the composer's first line enters the messages; Down past the last one comes back
        composer.value = ""
        await pilot.press("up")
        log = chat.query_one("#log", ChatLog)
        assert app.focused is log and log.selected.content == "喵喵"
        await pilot.press("up")
        assert log.selected.content == "喵"
        await pilot.press("down", "down")
        assert app.focused is composer
        # Tab does not walk through the messages: the log is one stop
        stops = []
        for _ in range(8):
            await pilot.press("tab")
            stops.append(app.focused)
        assert not any(isinstance(w, MessageView) for w in stops)
        assert sum(isinstance(w, ChatLog) for w in stops) <= 2
        # search: Enter opens the first result and focus goes to the composer
        await pilot.press("ctrl+f")
        assert app.focused.id == "search"
        await pilot.press(*"猫")
        await wait_until(pilot, lambda: [i.conversation_id for i in lv.children] == [a.id])
        await pilot.press("enter")
        await wait_until(pilot, lambda: chat.conversation_id == a.id and app.focused is composer)
        # Down enters the results; picking one there moves focus to the composer too
        await pilot.press("ctrl+f")
        chat.query_one("#search").value = ""
        await wait_until(pilot, lambda: len(lv.children) == 2)
        await pilot.press("down")
        assert app.focused is lv
        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: chat.conversation_id == a.id and app.focused is composer)
        assert b.id in [i.conversation_id for i in lv.children]


async def test_copy_and_export_json_readable_with_settings_used(store, bloom_lm, tmp_path):
    conv = store.create_conversation("导出测试", {"system": "你是助手", "max_new_tokens": 3, "temperature": 0})
    app = make_app(store, bloom_lm)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        assert "System: 你是助手" in screen_text(app)  # the system prompt is visible in the chat
        await send(pilot, "一加一等于几？")
        await pilot.press("ctrl+y")
        assert app.clipboard == store.messages(conv.id)[-1].content
        for fmt in ("md", "json"):
            chat.action_export(fmt)
            await wait_screen(pilot, PromptDialog)
            target = tmp_path / f"out.{fmt}"
            app.screen.query_one("#value").value = str(target)
            await pilot.press("enter")
            await wait_until(pilot, target.exists)
        md = (tmp_path / "out.md").read_text(encoding="utf-8")
        assert md.startswith("# 导出测试") and "你是助手" in md
        raw = (tmp_path / "out.json").read_text(encoding="utf-8")
        assert "一加一等于几" in raw and "\\u4e00" not in raw  # Chinese stays readable
        data = json.loads(raw)
        used = data["settings_used"]
        assert used["system"] == "你是助手" and used["prompt_format"] == bloom_lm.prompt_format.name
        assert used["generation"]["max_new_tokens"] == 3 and used["generation"]["do_sample"] is False
        assert data["messages"][1]["meta"]["settings"] == used


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
        assert new_id not in (a.id, b.id) and app.focused is composer_of(app)
        await pilot.press("ctrl+r")
        await wait_screen(pilot, PromptDialog)
        app.screen.query_one("#value").value = "新的名字"
        await pilot.press("enter")
        await wait_until(pilot, lambda: store.get_conversation(new_id).title == "新的名字")
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
        await pilot.press("ctrl+f")
        await pilot.press(*"喵")
        await wait_until(pilot, lambda: [i.conversation_id for i in lv.children] == [a.id])


async def test_settings_dialog_lists_models_shows_defaults_refuses_out_of_range(store, bloom_lm, bloom_dir, qwen_dir, fresh_home):
    from firefly_core.errors import ConfigError
    from firefly_core.models.inventory import register_local
    from firefly_core.session import check_chat_settings, generation_defaults

    register_local(qwen_dir)
    conv = store.create_conversation("s", {"temperature": 0.7})
    app = make_app(store, bloom_lm, str(bloom_dir))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+o")
        dialog = await wait_screen(pilot, ChatSettingsDialog)
        model = dialog.query_one("#model")
        assert app.focused is model  # the first field
        await wait_until(pilot, lambda: len(model._options) >= 3, what="the installed models")
        labels = {str(v): str(label) for label, v in model._options}
        assert labels[str(bloom_dir)].startswith("★") and "in use" in labels[str(bloom_dir)]
        assert str(qwen_dir) in labels and not labels[str(qwen_dir)].startswith("★")
        fmt = dialog.query_one("#prompt_format")
        assert {v for _, v in fmt._options if isinstance(v, str)} == {"firefly-v1", "firefly-v2", "chat_template"}
        # current values in the fields, defaults beside them (core's resolution of the model's)
        assert dialog.query_one("#temperature").value == "0.7"
        defaults = generation_defaults(str(bloom_dir), bloom_lm)
        shown = [str(label.render()) for label in dialog.query(".default")]
        assert f"default {defaults['top_p']}" in shown and f"default {defaults['max_new_tokens']}" in shown
        assert dialog.query_one("#top_p").placeholder == str(defaults["top_p"])
        # out of range: refused with core's reason, nothing saved
        dialog.query_one("#top_p").value = "1.5"
        await pilot.click("#save")
        assert isinstance(app.screen, ChatSettingsDialog)
        with pytest.raises(ConfigError) as refused:  # core's reason, not a copy of the rule
            check_chat_settings(str(bloom_dir), {"temperature": 0.7, "top_p": 1.5}, bloom_lm)
        assert refused.value.message in str(dialog.query_one("#error").render())
        assert app.focused is dialog.query_one("#top_p")
        dialog.query_one("#top_p").value = "0.9"
        dialog.query_one("#max_new_tokens").value = "lots"
        await pilot.pause(0.3)
        await pilot.click("#save")
        assert "whole number" in str(dialog.query_one("#error").render())
        dialog.query_one("#max_new_tokens").value = "64"
        model.value = str(qwen_dir)
        fmt.value = "firefly-v2"
        dialog.query_one("#system").text = "你是一个诗人"
        await pilot.pause(0.3)  # a Button ignores presses during its 0.2 s press effect
        await pilot.click("#save")
        await wait_screen(pilot, ChatScreen)
        assert store.get_conversation(conv.id).settings == {
            "model": str(qwen_dir), "prompt_format": "firefly-v2", "temperature": 0.7, "top_p": 0.9,
            "max_new_tokens": 64, "system": "你是一个诗人",
        }
        assert "System: 你是一个诗人" in screen_text(app)


async def test_settings_reach_the_session(store, bloom_lm):
    from firefly_core.session import generation_config

    store.create_conversation("s", {"max_new_tokens": 3, "system": "你是助手", "prompt_format": "firefly-v2", "temperature": 0})
    app = make_app(store, bloom_lm)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await send(pilot, "你好")
        assert chat.last_stats["new_tokens"] <= 3
        session = chat.session
        assert session.config.max_new_tokens == 3 and session.config.do_sample is False  # 0 = greedy
        assert session.config == generation_config(bloom_lm.name, {"max_new_tokens": 3, "temperature": 0}, lm=bloom_lm)
        assert session.system == "你是助手"
        assert session.lm.prompt_format.name == "firefly-v2"
        assert session.lm.model is bloom_lm.model  # same weights, no reload


async def test_no_model_failed_reply_and_read_only_store_lose_nothing(store, bloom_lm):
    app = make_app(store)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        composer_of(app).value = "hi"
        await pilot.press("enter")
        await pilot.pause()
        assert not chat.generating and "No model loaded" in " ".join(str(n.message) for n in app._notifications)
        assert composer_of(app).value == "hi"

    from firefly_core.errors import PromptTooLongError
    from firefly_core.session import open_session

    broken = True

    def sessions(model, chat, **options):
        """Core's provider, failing while `broken`."""
        if broken:
            raise PromptTooLongError("the message is too long", "shorten it")
        return open_session(model, chat, **options)

    conv = store.create_conversation("f", {"max_new_tokens": 3})
    app = make_app(store, bloom_lm, sessions=sessions)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await send(pilot, "hi", wait=False)
        await wait_until(pilot, lambda: chat.query(".failed") and not chat.generating, what="the error")
        view = list(chat.query(MessageView))[-1]
        header = str(view.query_one(".role").render())
        assert view.role == "user" and "the message is too long" in header and "shorten it" in header
        assert [m.content for m in store.messages(conv.id)] == ["hi"]  # the question is kept
        # the chat is not stuck: with a working model the next message is answered
        broken = False
        await send(pilot, "again")
        assert [m.role for m in store.messages(conv.id)] == ["user", "user", "assistant"]
        # a store that refuses writes: the message stays in the composer, the reason is shown
        store._db.execute("PRAGMA query_only=1")
        try:
            composer_of(app).value = "不要丢"
            await pilot.press("enter")
            await pilot.pause()
            assert composer_of(app).value == "不要丢" and not chat.generating
            assert any("read-only" in str(n.message) for n in app._notifications)
            assert len(store.messages(conv.id)) == 3
        finally:
            store._db.execute("PRAGMA query_only=0")


async def test_language_switch_relabels(store):
    store.create_conversation("x")
    app = make_app(store, language="en")
    async with app.run_test(size=SIZE) as pilot:
        assert "+ New chat" in screen_text(app)
        await pilot.press("f6")
        await wait_until(pilot, lambda: "新对话" in screen_text(app))
        assert "重新生成" in screen_text(app)  # footer bindings follow
        assert "Ctrl+J 换行" in composer_of(app).placeholder
        await pilot.press("f6")
        await wait_until(pilot, lambda: "Regenerate" in screen_text(app))


async def test_a_chat_with_its_own_model_loads_it_through_the_service_and_shows_the_steps(
    store, bloom_lm, bloom_dir, qwen_dir, monkeypatch
):
    from firefly_core.models.service import model_service
    from firefly_tui.widgets.conversation import ChatConversation

    model_service().unload(str(qwen_dir))  # not left loaded by an earlier test: this chat loads it
    conv = store.create_conversation("q", {"model": str(qwen_dir), "max_new_tokens": 3, "temperature": 0})
    app = make_app(store, bloom_lm, str(bloom_dir))
    shown: list[str] = []
    original = ChatConversation.update_status

    def recording(self, extra=None):
        if extra:
            shown.append(extra)
        original(self, extra)

    monkeypatch.setattr(ChatConversation, "update_status", recording)
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await send(pilot, "你好")
        lm = chat.session.lm
        assert lm is model_service().get(str(qwen_dir))  # the service's shared model
        assert lm is not bloom_lm and app.lm is bloom_lm  # the active model stays
        assert any("loading" in s and "tiny-qwen2" in s for s in shown), shown  # the service's steps
        assert "tiny-qwen2" in str(chat.query_one("#status").render())
        assert store.messages(conv.id)[-1].meta["settings"]["model"] == str(qwen_dir)


async def test_a_message_sent_while_the_active_model_loads_waits_for_that_one_load(store, bloom_dir, fresh_home):
    from firefly_core.models.service import model_service
    from firefly_core.models.user_settings import UserSettings

    model_service().unload(str(bloom_dir))  # a fresh load, as at start-up
    conv = store.create_conversation("s", {"max_new_tokens": 3})
    app = FireflyApp(store=store, welcome=False, language="en", settings=UserSettings(active_model=str(bloom_dir)))
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await send(pilot, "你好")  # sent before the start-up load is done: answered, not refused
        await wait_until(pilot, lambda: app.lm is not None, timeout=60, what="the start-up load")
        assert chat.session.lm.model is app.lm.model  # one model in memory, shared
        assert [m.role for m in store.messages(conv.id)] == ["user", "assistant"]


async def test_the_system_prompt_saved_for_the_model_is_shown_and_applied(store, bloom_lm, bloom_dir, fresh_home):
    """`firefly use M --system …` saves a system prompt for M: the app's chats with M show it and
    answer with it (`firefly chat` and `firefly serve` did; the app ignored it). Oracle: the reply a
    fresh ChatSession gives with that system prompt; a chat's own system prompt still wins."""
    from firefly_core.formats import Message
    from firefly_core.generation import ReplyDone
    from firefly_core.session import ChatSession, generation_config
    from firefly_tui.cli import main

    assert main(["use", str(bloom_dir), "--system", "你是一个诗人"]) == 0
    chat_settings = {"max_new_tokens": 6, "temperature": 0}
    conv = store.create_conversation("p", chat_settings)
    app = make_app(store, bloom_lm, str(bloom_dir))
    async with app.run_test(size=SIZE) as pilot:
        chat = chat_of(app)
        await wait_until(pilot, lambda: "System: 你是一个诗人" in screen_text(app), what="the saved system prompt")
        await send(pilot, "你好")
        reply = store.messages(conv.id)[-1]
        assert chat.session.system == "你是一个诗人"
        assert reply.meta["settings"]["system"] == "你是一个诗人"  # kept with the reply, exported with the chat
        config = generation_config(str(bloom_dir), chat_settings, lm=bloom_lm)
        fresh = ChatSession(bloom_lm, system="你是一个诗人", config=config)
        question = [Message("user", "你好")]
        expected = [e for e in fresh.reply(question) if isinstance(e, ReplyDone)][0]
        assert reply.content == expected.text
        assert chat.last_stats["prompt_tokens"] == len(fresh.prompt_ids(question)[1])
        assert len(fresh.prompt_ids(question)[1]) > len(ChatSession(bloom_lm, config=config).prompt_ids(question)[1])
        # the chat's own system prompt wins over the model's
        store.update_settings(conv.id, {**chat_settings, "system": "你是助手"})
        chat.chat.settings_changed()
        await wait_until(pilot, lambda: "System: 你是助手" in screen_text(app), what="the chat's own system prompt")
        await send(pilot, "再来")
        assert chat.session.system == "你是助手"
        assert store.messages(conv.id)[-1].meta["settings"]["system"] == "你是助手"
