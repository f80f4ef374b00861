"""`firefly chat` driven as a real subprocess with piped stdin, on the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from firefly_core.formats import Message
from firefly_core.generation import GenerationConfig, ReplyDone
from firefly_core.models.loading import load_model
from firefly_core.session import ChatSession


def _chat(args, stdin, home):
    env = dict(os.environ, FIREFLY_HOME=str(home), PYTHONIOENCODING="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "firefly_tui.cli", "chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=120,
    )


def _expected_replies(model_dir, turns, max_new_tokens):
    """What ChatSession says in-process for the same turns (greedy), /reset included."""
    lm = load_model(model_dir, dtype="fp32", device="cpu")
    session = ChatSession(lm, config=GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens))
    replies, history = [], []
    for turn in turns:
        if turn == "/reset":
            session.reset()
            history = []
            continue
        history.append(Message("user", turn))
        replies.append([e for e in session.reply(history) if isinstance(e, ReplyDone)][0].text)
        history.append(Message("assistant", replies[-1]))
    return replies


@pytest.mark.slow
def test_piped_two_turns_reset_and_eof(bloom_dir, tmp_path):
    turns = ["你好", "Write a poem.", "/reset", "你好"]
    proc = _chat(
        ["--model", str(bloom_dir), "--dtype", "fp32", "--device", "cpu", "--greedy", "--max-new-tokens", "8"],
        "\n".join(turns) + "\n",  # then end of input
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    expected = _expected_replies(bloom_dir, turns, 8)
    assert proc.stdout == "".join(r + "\n" for r in expected)  # replies only, no prompt clutter
    assert expected[0] == expected[2] and expected[1] != expected[0]  # /reset really forgot turn 1
    assert "Traceback" not in proc.stderr


def test_exit_command_and_blank_lines(bloom_dir, tmp_path):
    proc = _chat(
        ["--model", str(bloom_dir), "--dtype", "fp32", "--greedy", "--max-new-tokens", "3"],
        "\n\n/exit\nnever answered\n",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


def test_missing_model_is_a_clear_error(tmp_path):
    proc = _chat(["--model", str(tmp_path / "nope")], "", tmp_path)
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_no_model_and_no_active_model_says_pass_model(tmp_path):
    proc = _chat([], "", tmp_path)
    assert proc.returncode == 1
    assert "--model" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_sampling_flag_is_a_clear_error(bloom_dir, tmp_path):
    proc = _chat(["--model", str(bloom_dir), "--top-p", "1.5"], "", tmp_path)
    assert proc.returncode == 2  # refused while the flags are parsed, by the setting's declared rule
    assert "argument --top-p: top_p = 1.5 is above 1" in proc.stderr and "Traceback" not in proc.stderr


def test_format_stats_line():
    from firefly_core.generation import ReplyStats
    from firefly_tui.commands.chat import format_stats

    stats = ReplyStats(10, 6, 20, 0.25, 4.5, 4.7, "stop_token", 30, 2048)
    line = format_stats(stats)
    assert "20 tokens" in line and "4.5 tok/s" in line and "250 ms" in line and "6 reused" in line


def _chat_bytes(args, stdin: bytes, home):
    env = dict(os.environ, FIREFLY_HOME=str(home), PYTHONIOENCODING="utf-8", PYTHONWARNINGS="default")
    return subprocess.run(
        [sys.executable, "-m", "firefly_tui.cli", "chat", *args],
        input=stdin, capture_output=True, env=env, timeout=120,
    )


TORCH_FP32 = ["--dtype", "fp32", "--device", "cpu", "--engine", "torch", "--greedy"]


def test_gbk_input_is_read_losslessly_and_garbage_is_refused_per_line(bloom_dir, tmp_path):
    """Bytes piped from a GBK tool are decoded (GB18030 is a lossless superset), undecodable bytes
    end only their own line with a clear message, and the chat goes on; never a tokenizer TypeError."""
    proc = _chat_bytes(
        ["--model", str(bloom_dir), *TORCH_FP32, "--max-new-tokens", "6"],
        "你好\n".encode("gbk") + b"\xff\xfe\xfd\n" + "你好\n".encode("utf-8"),
        tmp_path,
    )
    stderr = proc.stderr.decode("utf-8")
    assert proc.returncode == 1, stderr  # one line was refused
    assert "Traceback" not in stderr and "TypeError" not in stderr
    assert "GBK/GB18030" in stderr and "line 2" in stderr and "UTF-8" in stderr
    # Line 1 (GBK) and line 3 (UTF-8) are the same text, and the conversation is two turns of it.
    replies = _expected_replies(bloom_dir, ["你好", "你好"], 6)
    assert proc.stdout.decode("utf-8") == "".join(r + "\n" for r in replies)


def test_an_over_long_message_ends_its_turn_not_the_chat(bloom_dir, tmp_path):
    proc = _chat_bytes(
        ["--model", str(bloom_dir), *TORCH_FP32, "--max-new-tokens", "6"],
        ("萤火虫" * 3000 + "\n你好\n").encode("utf-8"),
        tmp_path,
    )
    stderr = proc.stderr.decode("utf-8")
    assert proc.returncode == 1 and "Traceback" not in stderr
    assert "tokens" in stderr and "hint:" in stderr
    assert proc.stdout.decode("utf-8") == _expected_replies(bloom_dir, ["你好"], 6)[0] + "\n"


def test_chat_output_is_quiet(bloom_dir, tmp_path):
    """No library warnings (transformers' past_key_values FutureWarning, DeepSpeed's accelerator
    line, progress bars) in `firefly chat`, even with Python's warnings shown."""
    proc = _chat_bytes(["--model", str(bloom_dir), "--dtype", "bf16", "--device", "cpu", "--max-new-tokens", "6",
                        "--seed", "1"], "你好\n".encode(), tmp_path)
    stderr = proc.stderr.decode("utf-8")
    assert proc.returncode == 0, stderr
    assert stderr == "", stderr


def test_the_system_prompt_saved_with_use_is_applied_and_system_flag_wins(bloom_dir, tmp_path):
    """`firefly use M --system …` then `firefly chat`: the reply is the one a session with that
    system prompt gives (open_session resolves it, as in the app and `firefly serve`); an empty
    `--system ""` means none."""
    env = dict(os.environ, FIREFLY_HOME=str(tmp_path), PYTHONIOENCODING="utf-8")
    use = subprocess.run([sys.executable, "-m", "firefly_tui.cli", "use", str(bloom_dir), "--system", "你是一个诗人"],
                         capture_output=True, text=True, encoding="utf-8", env=env, timeout=120)
    assert use.returncode == 0, use.stderr
    lm = load_model(bloom_dir, dtype="fp32", device="cpu")
    cfg = GenerationConfig(do_sample=False, max_new_tokens=6)
    question = [Message("user", "你好")]

    def reply(system):
        return [e for e in ChatSession(lm, system=system, config=cfg).reply(question) if isinstance(e, ReplyDone)][0].text

    flags = ["--model", str(bloom_dir), "--dtype", "fp32", "--device", "cpu", "--engine", "torch", "--greedy",
             "--max-new-tokens", "6"]
    assert reply("你是一个诗人") != reply(None)  # the system prompt changes this reply: the check can fail
    saved = _chat(flags, "你好\n", tmp_path)
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout == reply("你是一个诗人") + "\n"
    none = _chat([*flags, "--system", ""], "你好\n", tmp_path)
    assert none.returncode == 0, none.stderr
    assert none.stdout == reply(None) + "\n"
