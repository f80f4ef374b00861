"""Chat that never hides what the model sees: the token meter, the dropped-turns count, forks, and
attached files (core and `firefly chat`).

Oracles: the meter's count equals the prompt the reply really used (`ReplyStats.prompt_tokens`,
torch engine) and the kept turns' rendering; a fork equals the original's rows up to the message; a
fork killed with SIGKILL mid-transaction leaves no trace; attached text round-trips through the store.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from firefly_core.attachment import AttachmentError, attachments_meta, message_with_attachments, read_attachment
from firefly_core.conversation import Conversation
from firefly_core.formats import Message
from firefly_core.generation import GenerationConfig, ReplyDone
from firefly_core.models.loading import load_model
from firefly_core.session import ChatSession
from firefly_core.store import ChatStore

GREEDY = GenerationConfig(do_sample=False, max_new_tokens=6)


@pytest.fixture(scope="module")
def base_lm(bloom_dir):
    return load_model(bloom_dir, dtype="fp32", device="cpu")  # the torch engine (ModelDecoder)


@pytest.fixture
def lm(base_lm, one_torch_thread):
    fresh = dataclasses.replace(base_lm)
    fresh.__dict__.pop("decoder", None)
    return fresh


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


def done_of(reply) -> ReplyDone:
    return [e for e in reply if isinstance(e, ReplyDone)][-1]


# -- the token meter ------------------------------------------------------------------------------
def test_meter_counts_the_prompt_the_reply_then_uses(store, lm):
    conv = Conversation.create(store, "t", session=ChatSession(lm, system="你是助手", config=GREEDY))
    done_of(conv.send("你好"))
    view = conv.context_view("再说一遍，好吗？")
    stats = done_of(conv.send("再说一遍，好吗？")).stats
    assert view.measure.tokens == stats.prompt_tokens
    assert view.measure.context_length == lm.context_length == stats.context_length
    assert view.measure.dropped_turns == 0 and view.first_sent_id is None and view.measure.fits


def test_meter_says_how_many_turns_are_dropped_and_where_the_view_begins(store, lm):
    small = dataclasses.replace(lm, context_length=64)
    session = ChatSession(small, config=GREEDY)
    conv = Conversation.create(store, "t", session=session)
    for i in range(6):
        done_of(conv.send(f"第{i}个问题：今天天气怎么样"))
    view = conv.context_view("还有吗")
    history = conv.history()
    kept, ids = session.prompt_ids([*history, Message("user", "还有吗")])
    dropped = (len(history) + 1 - len(kept)) // 2
    assert dropped > 0 and view.measure.dropped_turns == dropped
    assert view.measure.tokens == len(ids) <= 64 - GREEDY.max_new_tokens
    first_kept_question = kept[0].content
    msgs = store.messages(conv.id)
    assert next(m for m in msgs if m.id == view.first_sent_id).content == first_kept_question


def test_meter_reports_a_draft_that_cannot_fit_without_raising(store, lm):
    small = dataclasses.replace(lm, context_length=32)
    conv = Conversation.create(store, "t", session=ChatSession(small, config=GREEDY))
    view = conv.context_view("很长的消息" * 40)
    assert not view.measure.fits and view.measure.tokens > 32


def test_meter_needs_a_session_and_does_not_make_one_when_told_not_to(store):
    made = []
    conv = Conversation.create(store, "t", session=lambda: made.append(1))
    assert conv.context_view("hi", make_session=False) is None and made == []


# -- fork -----------------------------------------------------------------------------------------
def test_fork_copies_the_history_up_to_the_message_and_leaves_the_original(store, lm):
    conv = Conversation.create(store, "orig", {"temperature": 0.3}, session=ChatSession(lm, config=GREEDY))
    for q in ("一", "二", "三"):
        done_of(conv.send(q))
    before = [(m.id, m.role, m.content, m.meta) for m in store.messages(conv.id)]
    at = store.messages(conv.id)[2]  # the second question
    fork = conv.fork(at.id)
    assert [(m.role, m.content, m.meta) for m in store.messages(fork.id)] == [b[1:] for b in before[:3]]
    assert [(m.id, m.role, m.content, m.meta) for m in store.messages(conv.id)] == before
    assert store.get_conversation(fork.id).title == "二"
    assert store.get_conversation(fork.id).settings == {"temperature": 0.3}
    # the fork answers on its own: its reply follows its own history
    done_of(fork.regenerate())
    assert [m.content for m in store.messages(fork.id)][:3] == ["一", before[1][2], "二"]
    assert [(m.id, m.content) for m in store.messages(conv.id)] == [(b[0], b[2]) for b in before]


def test_fork_of_a_message_of_another_chat_is_refused(store):
    a = Conversation.create(store, "a")
    b = Conversation.create(store, "b")
    m = store.add_message(b.id, "user", "x")
    with pytest.raises(Exception, match="not in this chat"):
        a.fork(m.id)


def test_fork_killed_mid_transaction_leaves_no_half_chat(tmp_path):
    db = tmp_path / "chats.sqlite3"
    code = textwrap.dedent(
        f"""
        import os, signal
        from firefly_core.conversation import Conversation
        from firefly_core.store import ChatStore
        store = ChatStore({str(db)!r})
        conv = Conversation.create(store, "orig")
        for i in range(20):
            store.add_message(conv.id, "user" if i % 2 == 0 else "assistant", f"m{{i}}")
        last = store.messages(conv.id)[-1].id
        def kill_on_copy(sql):
            if sql.startswith("INSERT INTO messages") and "SELECT" in sql:
                os.kill(os.getpid(), signal.SIGKILL)
        store._db.set_trace_callback(kill_on_copy)
        conv.fork(last)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    store = ChatStore(db)
    [only] = store.list_conversations()
    assert only.title == "orig" and [m.content for m in store.messages(only.id)] == [f"m{i}" for i in range(20)]
    fork = Conversation(store, only.id).fork(store.messages(only.id)[5].id)  # and forking works afterwards
    assert [m.content for m in store.messages(fork.id)] == [f"m{i}" for i in range(6)]
    store.close()


# -- attached files -------------------------------------------------------------------------------
def test_attached_text_is_sent_and_stored_with_its_name(store, lm, tmp_path):
    f = tmp_path / "notes.md"
    f.write_text("流萤是一个模型。\n", encoding="utf-8")
    att = read_attachment(f)
    session = ChatSession(lm, config=GREEDY)
    text = message_with_attachments("总结一下", [att])
    conv = Conversation.create(store, "t", session=session)
    view = conv.context_view(text)
    stats = done_of(conv.send(text, meta=attachments_meta([att], [session.count_tokens(att.text)]))).stats
    assert stats.prompt_tokens == view.measure.tokens
    question = store.messages(conv.id)[0]
    assert "流萤是一个模型。" in question.content and question.content.endswith("总结一下")
    assert question.meta["attachments"][0]["name"] == "notes.md"
    assert question.meta["attachments"][0]["tokens"] == len(lm.tokenizer.encode(att.text, add_special_tokens=False))
    exported = store.export_json(conv.id)
    assert exported["messages"][0]["meta"]["attachments"][0]["name"] == "notes.md"


def test_gbk_file_is_read_with_the_gb18030_fallback(tmp_path):
    f = tmp_path / "gbk.txt"
    f.write_bytes("你好，世界".encode("gbk"))
    att = read_attachment(f)
    assert att.text == "你好，世界" and att.encoding == "gb18030"


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (b"\xff\xfe\xfd\xfc" * 10, "neither UTF-8 nor GBK"),
        (b"x" * 2048, "limit"),
        (b"  \n", "empty"),
    ],
)
def test_files_that_are_not_attachable_text_are_refused_with_the_reason(tmp_path, content, reason):
    f = tmp_path / "f.bin"
    f.write_bytes(content)
    with pytest.raises(AttachmentError, match=reason):
        read_attachment(f, max_bytes=1024)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(AttachmentError, match="is not a file"):
        read_attachment(tmp_path / "nope.txt")


# -- firefly chat ---------------------------------------------------------------------------------
def _chat(args, stdin: str, home):
    env = dict(os.environ, FIREFLY_HOME=str(home), PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "firefly_tui.cli", "chat", *args], input=stdin, capture_output=True,
        text=True, encoding="utf-8", env=env, timeout=180,
    )


TORCH = ["--dtype", "fp32", "--device", "cpu", "--engine", "torch", "--greedy", "--max-new-tokens", "6"]


def test_repl_attach_sends_the_file_with_the_next_message_and_unknown_commands_are_refused(bloom_dir, base_lm, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("流萤，一个中文对话模型。", encoding="utf-8")
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\x00\x01\x02")
    proc = _chat(["--model", str(bloom_dir), *TORCH],
                 f"/foo\n/attach {binary}\n/attach {f}\n总结\n", tmp_path)
    att = read_attachment(f)
    expected = done_of(ChatSession(base_lm, config=GREEDY).reply([Message("user", message_with_attachments("总结", [att]))])).text
    assert proc.stdout == expected + "\n"  # only the message with the file was sent
    assert "unknown command /foo" in proc.stderr and "/attach PATH" in proc.stderr
    assert "x.bin is a binary file" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.returncode == 1  # the refused lines are failures a script can see


def test_stats_line_has_the_meter_and_the_dropped_turns():
    from firefly_core.conversation import ContextView
    from firefly_core.generation import ReplyStats
    from firefly_core.session import PromptMeasure
    from firefly_tui.commands.chat import format_stats, meter_text

    stats = ReplyStats(10, 6, 20, 0.25, 4.5, 4.7, "stop_token", 30, 2048)
    line = format_stats(stats, meter=meter_text(ContextView(PromptMeasure(1900, 2048, 512, 3, True), 7)))
    assert "tokens 1900/2048" in line and "3 earlier turns not sent" in line and "20 tokens" in line
    assert "not sent" not in meter_text(ContextView(PromptMeasure(30, 2048, 512, 0, True), None))


# -- the app --------------------------------------------------------------------------------------
from app_helpers import wait_until  # noqa: E402

from firefly_tui.app import FireflyApp  # noqa: E402

APP_SIZE = (110, 36)


@pytest.fixture(scope="module")
def service_lm(bloom_dir):
    from firefly_core.models.service import model_service

    return model_service().get(str(bloom_dir))


def make_app(store, lm, name):
    app = FireflyApp(store=store, welcome=False, language="en", settings=None)
    app.lm, app.model_name = lm, name
    return app


def _chat_with_turns(store, n: int, settings: dict) -> int:
    conv = store.create_conversation("long", settings)
    for i in range(n):
        store.add_message(conv.id, "user", f"第{i}个问题：今天的天气怎么样？")
        store.add_message(conv.id, "assistant", f"第{i}个回答：晴天，适合出门散步。")
    return conv.id


async def test_app_meter_follows_typing_and_marks_where_the_models_view_begins(tmp_path, service_lm, bloom_dir):
    from firefly_tui.widgets.chat_view import DropMarker, MessageView
    from firefly_tui.widgets.conversation import ChatConversation

    store = ChatStore(tmp_path / "chats.sqlite3")
    budget = 80
    cid = _chat_with_turns(store, 8, {"max_new_tokens": service_lm.context_length - budget, "temperature": 0})
    app = make_app(store, service_lm, str(bloom_dir))
    async with app.run_test(size=APP_SIZE) as pilot:
        chat = app.screen.query_one(ChatConversation)
        await wait_until(pilot, lambda: chat.conversation_id == cid and chat.context_view is not None, what="the meter")
        first = chat.context_view
        session = chat.conversation.session
        history = chat.conversation.history()
        kept, ids = session.prompt_ids([*history, Message("user", "")])
        assert first.measure.tokens == len(ids) and first.measure.dropped_turns == (len(history) + 1 - len(kept)) // 2 > 0
        meter = str(chat.query_one("#meter").render())
        assert f"tokens {len(ids)}/{service_lm.context_length}" in meter and "earlier turns not sent" in meter
        # the marker sits right above the first message the model sees
        children = list(chat.log_view.children)
        [marker] = [c for c in children if isinstance(c, DropMarker)]
        after = children[children.index(marker) + 1]
        assert isinstance(after, MessageView) and after.message_id == first.first_sent_id
        assert after.content == kept[0].content
        # typing changes the count (debounced, in a worker)
        chat.composer.focus()
        await pilot.press(*"hello there")
        await wait_until(pilot, lambda: chat.context_view.measure.tokens != first.measure.tokens, what="a new count")
        _, typed_ids = session.prompt_ids([*history, Message("user", "hello there")])
        await wait_until(pilot, lambda: chat.context_view.measure.tokens == len(typed_ids), what="the typed count")
    store.close()


async def test_app_fork_from_the_message_menu_and_attach_with_ctrl_a(tmp_path, service_lm, bloom_dir):
    from firefly_tui.screens.dialogs import PromptDialog
    from firefly_tui.screens.message_actions import MessageActionsDialog
    from firefly_tui.widgets.conversation import ChatConversation

    store = ChatStore(tmp_path / "chats.sqlite3")
    cid = _chat_with_turns(store, 3, {"max_new_tokens": 4, "temperature": 0})
    original = [(m.id, m.content) for m in store.messages(cid)]
    app = make_app(store, service_lm, str(bloom_dir))
    async with app.run_test(size=APP_SIZE) as pilot:
        chat = app.screen.query_one(ChatConversation)
        await wait_until(pilot, lambda: chat.conversation_id == cid)
        log = chat.log_view
        log.focus()
        await pilot.pause()
        log.select(log.messages()[2])  # the second question
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, MessageActionsDialog))
        app.screen.dismiss("fork")
        await wait_until(pilot, lambda: chat.conversation_id not in (None, cid), what="the fork opened")
        assert [m.content for m in store.messages(chat.conversation_id)] == [c for _, c in original[:3]]
        assert [(m.id, m.content) for m in store.messages(cid)] == original
        assert [v.content for v in log.messages()] == [c for _, c in original[:3]]

        # attach: a binary file is refused with the reason; a text file gets a chip and is sent
        binary = tmp_path / "x.bin"
        binary.write_bytes(b"\x00\x01")
        notes = tmp_path / "notes.md"
        notes.write_text("流萤是一个模型。", encoding="utf-8")
        for path in (binary, notes):
            chat.composer.focus()
            await pilot.press("ctrl+a")
            await wait_until(pilot, lambda: isinstance(app.screen, PromptDialog))
            app.screen.dismiss(str(path))
            await pilot.pause()
        await wait_until(pilot, lambda: len(chat.attachments) == 1, what="the chip")
        assert any("x.bin is a binary file" in str(n.message) for n in app._notifications)
        chips = str(chat.query_one("#attachments").render())
        tokens = len(service_lm.tokenizer.encode("流萤是一个模型。", add_special_tokens=False))
        assert f"notes.md · {tokens} tokens" in chips
        chat.composer.value = "总结"
        chat.composer.focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: not chat.generating and store.messages(chat.conversation_id)[-1].role == "assistant"
                         and len(store.messages(chat.conversation_id)) == 5, what="the reply")
        question = store.messages(chat.conversation_id)[3]
        assert question.content == message_with_attachments("总结", [read_attachment(notes)])
        assert question.meta["attachments"][0] == {"name": "notes.md", "tokens": tokens, "encoding": "utf-8"}
        assert chat.attachments == [] and chat.query_one("#attachments").has_class("-hidden")
        sent = next(v for v in log.messages() if v.message_id == question.id)
        assert "📎 notes.md" in str(sent.query_one(".role").render())  # the chip stays on the message
    store.close()


def test_repl_ctrl_c_keeps_the_interrupted_exchange_with_its_partial_reply(store, lm, capsys):
    """Ctrl-C (a real SIGINT, from the decoder mid-reply) stops the reply; the exchange stays in the
    history, so the next prompt holds it (checked against the rendering of that history)."""
    from firefly_core.generation import Decoder, ModelDecoder
    from firefly_tui.commands.chat import _stream_reply

    inner = ModelDecoder(lm.model)

    class InterruptingDecoder(Decoder):
        calls = 0

        def __getattr__(self, name):
            return getattr(inner, name)

        def new_cache(self):
            return inner.new_cache()

        def forward(self, ids, cache, every_position=False):
            InterruptingDecoder.calls += 1
            if InterruptingDecoder.calls == 3:
                os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, handled by the REPL
            return inner.forward(ids, cache, every_position)

    interrupted = dataclasses.replace(lm)
    interrupted.decoder = InterruptingDecoder()
    session = ChatSession(interrupted, config=GenerationConfig(do_sample=False, max_new_tokens=20))
    conv = Conversation.create(store, "t", session=session)
    _stream_reply(conv, "你好", show_stats=False)
    [question, partial] = store.messages(conv.id)
    assert partial.role == "assistant" and partial.partial and partial.content
    assert capsys.readouterr().out == partial.content + "\n"
    view = conv.context_view("还在吗")
    _, ids = session.prompt_ids([Message("user", "你好"), Message("assistant", partial.content), Message("user", "还在吗")])
    assert view.measure.tokens == len(ids)
    stats = done_of(conv.send("还在吗")).stats
    assert stats.prompt_tokens == len(ids) and stats.reused_tokens > 0


@pytest.mark.parametrize("argv, usage, hint", [
    (["chat", "--temprature", "0.5"], "firefly chat", "did you mean --temperature"),
    (["data", "check", "--min-lenght", "3", "x.jsonl"], "firefly data check", None),
])
def test_a_flag_typo_prints_the_subcommands_usage_with_did_you_mean(capsys, argv, usage, hint):
    from firefly_tui.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"usage: {usage}" in err and f"{usage}: error: unrecognized arguments" in err
    assert hint is None or hint in err


async def test_chat_settings_are_checked_against_the_model_when_saved(tmp_path, service_lm, bloom_dir):
    from app_helpers import wait_screen

    from firefly_core.errors import ConfigError
    from firefly_core.session import check_chat_settings
    from firefly_tui.screens.chat import ChatScreen
    from firefly_tui.screens.chat_settings import ChatSettingsDialog

    vocab = len(service_lm.tokenizer)
    with pytest.raises(ConfigError, match="context window"):
        check_chat_settings(str(bloom_dir), {"max_new_tokens": service_lm.context_length}, service_lm)
    with pytest.raises(ConfigError, match="vocabulary"):
        check_chat_settings(str(bloom_dir), {"top_k": vocab + 1}, service_lm)
    check_chat_settings(str(bloom_dir), {"top_k": vocab, "max_new_tokens": service_lm.context_length - 1}, service_lm)

    store = ChatStore(tmp_path / "chats.sqlite3")
    conv = store.create_conversation("s", {})
    app = make_app(store, service_lm, str(bloom_dir))
    async with app.run_test(size=APP_SIZE) as pilot:
        await pilot.press("ctrl+o")
        dialog = await wait_screen(pilot, ChatSettingsDialog)
        for field, value, reason in (("max_new_tokens", "99999", "context window"), ("top_k", "99999", "vocabulary")):
            dialog.query_one(f"#{field}").value = value
            await pilot.pause(0.3)
            await pilot.click("#save")
            error = str(dialog.query_one("#error").render())
            assert reason in error and "--" not in error, error  # the app names no command-line flag
            assert isinstance(app.screen, ChatSettingsDialog)
            dialog.query_one(f"#{field}").value = ""
        await pilot.pause(0.3)
        await pilot.click("#save")
        await wait_screen(pilot, ChatScreen)
        assert store.get_conversation(conv.id).settings.get("max_new_tokens") is None
    store.close()


def test_data_check_ends_with_a_verdict_and_fails_when_nothing_is_trainable(tmp_path, capsys):
    from firefly_tui.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\nnot json\n', "utf-8")
    assert main(["data", "check", str(bad)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "verdict: nothing to train on: no valid samples (2 bad line(s) above)"
    good = tmp_path / "good.jsonl"
    good.write_text('{"input": "q", "target": "a"}\n', "utf-8")
    assert main(["data", "check", str(good)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "verdict: ready: 1 samples to train on"


def test_show_has_the_models_details_and_a_temperature_of_0(bloom_dir, base_lm, fresh_home, capsys):
    from firefly_tui.cli import main

    assert main(["use", str(bloom_dir), "--temperature", "0", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["show", str(bloom_dir)]) == 0
    out = capsys.readouterr().out
    params = sum(p.numel() for p in base_lm.model.parameters())
    assert f"({params:,})" in out and "BloomForCausalLM" in out
    assert "prompt:      firefly-v1" in out and "on disk" in out
    assert "temperature=0.0" in out and "threads=1" in out.split("engine:")[1].splitlines()[0]


def test_train_without_gpu_flag_on_a_cpu_only_machine_uses_the_cpu_and_says_so(bloom_dir, tmp_path, capsys):
    import torch

    from firefly_tui.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the default is GPU 0")
    # the data file is missing: the run stops there, after the device was chosen (not at "CUDA is not available")
    assert main(["train", "--model", str(bloom_dir), "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "training on the CPU" in err and "no data file" in err and "CUDA is not available here" not in err
    toml = tmp_path / "t.toml"
    toml.write_text('gpu = "0"\n', "utf-8")  # asked for in the config file: still refused clearly
    assert main(["train", "--config", str(toml), "--model", str(bloom_dir), "--data", str(tmp_path / "none.jsonl"),
                 "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "training on the CPU" not in err


def test_one_name_per_model_the_apps_and_the_apis_name_works_in_every_command(bloom_dir, fresh_home, tmp_path, capsys):
    from firefly_core.errors import ModelNotFoundError
    from firefly_core.models.inventory import register_local, resolve_model_path
    from firefly_core.models.user_settings import load_settings
    from firefly_tui.cli import main
    from firefly_tui.server import model_id_for
    from firefly_tui.widgets.conversation import short_model_name

    register_local(bloom_dir)
    name = model_id_for(str(bloom_dir))
    assert name == bloom_dir.name == short_model_name(str(bloom_dir))  # the API's id is the app's name
    assert resolve_model_path(name) == bloom_dir
    assert main(["use", name]) == 0 and load_settings().active_model == str(bloom_dir)
    assert main(["show", name]) == 0 and str(bloom_dir) in capsys.readouterr().out
    # two registered folders with the same name: the name alone is ambiguous, the path is needed
    twin = tmp_path / "elsewhere" / bloom_dir.name
    twin.parent.mkdir()
    import shutil

    shutil.copytree(bloom_dir, twin)
    register_local(twin)
    with pytest.raises(ModelNotFoundError):
        resolve_model_path(name)


async def test_copy_never_claims_the_terminal_took_it_and_keeps_a_file(tmp_path, service_lm, bloom_dir, fresh_home):
    from firefly_core import paths
    from firefly_tui.widgets.conversation import ChatConversation

    store = ChatStore(tmp_path / "chats.sqlite3")
    cid = _chat_with_turns(store, 1, {})
    app = make_app(store, service_lm, str(bloom_dir))
    async with app.run_test(size=APP_SIZE) as pilot:
        chat = app.screen.query_one(ChatConversation)
        await wait_until(pilot, lambda: chat.conversation_id == cid)
        await pilot.press("ctrl+y")
        saved = paths.data_dir() / "copied.txt"
        await wait_until(pilot, lambda: saved.exists(), what="the copy's file")
        assert saved.read_text("utf-8") == store.messages(cid)[-1].content == app.clipboard
        said = [str(n.message) for n in app._notifications]
        assert any("Sent to the terminal's clipboard" in m and str(saved) in m for m in said), said
        assert not any(m.startswith("Copied") for m in said)
    store.close()


async def test_status_line_says_which_engine_and_weights_answer(tmp_path, service_lm, bloom_dir):
    from firefly_core.models.service import weights_label
    from firefly_tui.widgets.conversation import ChatConversation

    store = ChatStore(tmp_path / "chats.sqlite3")
    cid = _chat_with_turns(store, 1, {})
    app = make_app(store, service_lm, str(bloom_dir))
    async with app.run_test(size=(140, 45)) as pilot:
        chat = app.screen.query_one(ChatConversation)
        await wait_until(pilot, lambda: chat.conversation_id == cid)
        label = f"{service_lm.engine} {weights_label(service_lm)}"
        await wait_until(pilot, lambda: label in str(chat.query_one("#status").render()), what=label)
    store.close()


def test_exported_json_says_when_in_iso_8601(store):
    from datetime import datetime

    conv = Conversation.create(store, "t")
    m = store.add_message(conv.id, "user", "你好")
    data = store.export_json(conv.id)
    assert datetime.fromisoformat(data["created"]).timestamp() == pytest.approx(store.get_conversation(conv.id).created, abs=1)
    assert data["created"].endswith("+00:00")
    assert datetime.fromisoformat(data["messages"][0]["created"]).timestamp() == pytest.approx(m.created, abs=1)


async def test_search_opens_the_chat_at_the_match_highlighted(tmp_path, service_lm, bloom_dir):
    from firefly_tui.widgets.chat_view import MessageView
    from firefly_tui.widgets.conversation import ChatConversation

    store = ChatStore(tmp_path / "chats.sqlite3")
    target = _chat_with_turns(store, 2, {})
    store.add_message(target, "user", "萤火虫为什么会发光？")
    store.add_message(target, "assistant", "因为荧光素酶。")
    for i in range(12):
        store.add_message(target, "user", f"later {i}")
        store.add_message(target, "assistant", f"reply {i}")
    newer = _chat_with_turns(store, 1, {})  # the newest chat opens first
    app = make_app(store, service_lm, str(bloom_dir))
    async with app.run_test(size=(80, 24)) as pilot:
        chat = app.screen.query_one(ChatConversation)
        await wait_until(pilot, lambda: chat.conversation_id == newer)
        await pilot.press("ctrl+f")
        await pilot.press(*"萤火虫")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_until(pilot, lambda: chat.conversation_id == target, what="the found chat")
        log = chat.log_view
        match = lambda: next((v for v in log.messages() if v.has_class("-match")), None)  # noqa: E731
        await wait_until(pilot, lambda: match() is not None, what="the highlighted match")
        assert match().content == "萤火虫为什么会发光？" and isinstance(match(), MessageView)
        await wait_until(pilot, lambda: log.region.contains_region(match().region) or
                         log.region.overlaps(match().region), what="the match on screen")
    store.close()
