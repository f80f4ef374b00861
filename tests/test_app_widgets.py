"""App building blocks without a model: i18n, the loss plot, the chat's model list, a chat's JSON export."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from firefly_tui import i18n
from firefly_tui.widgets.loss_plot import BrailleCanvas, Series, render_plot, smooth


def test_every_string_in_both_languages_and_every_used_key_exists():
    for key, (zh, en) in i18n.STRINGS.items():
        assert zh and en, key
        # the same {fields} in both, so formatting never fails in one language only
        assert set(re.findall(r"{(\w+)", zh)) == set(re.findall(r"{(\w+)", en)), key
    src = Path(i18n.__file__).parent
    used = set()
    for path in (p for p in src.rglob("*.py") if p.name != "i18n.py"):
        text = path.read_text(encoding="utf-8")
        used |= set(re.findall(r'\bt\(\s*"([\w.]+)"', text))
        used |= set(re.findall(r'Binding\([^)]*?"[^"]*",\s*"[^"]*",\s*"([\w.]+)"', text))
    missing = {k for k in used if k not in i18n.STRINGS}
    assert not missing


@pytest.mark.parametrize(
    "env, lang",
    [
        ({"LANG": "zh_CN.UTF-8"}, "zh"),
        ({"LANG": "en_US.UTF-8"}, "en"),
        ({"LC_ALL": "zh_TW.UTF-8", "LANG": "en_US.UTF-8"}, "zh"),
        ({"LANGUAGE": "en", "LANG": "zh_CN.UTF-8"}, "en"),
        ({}, "en"),
    ],
)
def test_language_from_locale(env, lang):
    assert i18n.detect_language(env) == lang


def test_switching_language():
    before = i18n.language()
    try:
        i18n.set_language("zh")
        assert i18n.t("chat.user") == "你"
        i18n.set_language("en")
        assert i18n.t("chat.user") == "You"
        assert i18n.t("chat.exported", path="/x") == "Exported to /x"
        with pytest.raises(ValueError):
            i18n.set_language("fr")
    finally:
        i18n.set_language(before)


def test_smoothing_is_debiased_ema():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    s = smooth([4.0, 0.0], weight=0.5)
    assert s[0] == pytest.approx(4.0) and s[1] == pytest.approx(4.0 / 3)


def test_braille_canvas_dots():
    c = BrailleCanvas(2, 1)
    c.dot(0, 0, "x")
    c.dot(1, 3, "x")
    c.dot(2, 0, "x")
    c.dot(99, 99, "x")  # outside: ignored
    row = c.rows()[0].plain
    assert row == chr(0x2800 | 0x01 | 0x80) + chr(0x2800 | 0x01)


def test_plot_falls_from_top_left_to_bottom_right():
    pts = [(i, 3 * math.exp(-i / 10)) for i in range(1, 51)]
    text = render_plot([Series(pts, "cyan")], 40, 10).plain.splitlines()
    assert len(text) == 10
    assert text[0].lstrip().startswith(f"{pts[0][1]:.3g}")
    assert text[-2].lstrip().startswith(f"{pts[-1][1]:.3g}")
    assert text[-1].strip().startswith("└1") and text[-1].rstrip().endswith("50")
    plot_rows = [r.split("┤", 1)[-1].split("│", 1)[-1] for r in text[:-1]]
    first_col = [i for i, r in enumerate(plot_rows) if r[:1].strip()]
    last_col = [i for i, r in enumerate(plot_rows) if r.rstrip()[-1:] and len(r.rstrip()) == max(len(x.rstrip()) for x in plot_rows)]
    assert first_col and first_col[0] == 0  # the first point is in the top row
    assert last_col and last_col[-1] == len(plot_rows) - 1  # the last point in the bottom row


def test_plot_empty_and_nan():
    assert render_plot([Series([], "c")], 40, 10, "nothing").plain == "nothing"
    text = render_plot([Series([(1, 1.0), (2, float("nan")), (3, 0.5)], "c")], 30, 6).plain
    assert "⠀" not in text and any(0x2800 < ord(ch) <= 0x28FF for ch in text)


def test_train_command_line():
    from firefly_core.training.run import TrainRequest

    req = TrainRequest(model="m", data=["a.jsonl", "b.jsonl"], out=Path("/r"), gpu="cpu", lora=True,
                       max_steps=5, zero=2, lr=1e-3, batch_size=2, max_length=128)
    argv = req.argv()
    assert argv[0] == "train"
    i = argv.index("--data")
    assert argv[i + 1 : i + 3] == ["a.jsonl", "b.jsonl"]
    for flag, value in [("--gpu", "cpu"), ("--max-steps", "5"), ("--deepspeed", "2"), ("--lr", "0.001")]:
        assert argv[argv.index(flag) + 1] == value
    assert "--lora" in argv
    # and the real CLI accepts every option we pass
    from firefly_tui.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.data == ["a.jsonl", "b.jsonl"] and args.lora and args.deepspeed == 2


def test_short_model_name_keeps_the_status_line_to_one_row():
    from firefly_tui.widgets.conversation import short_model_name

    assert short_model_name("/home/me/models/tiny-bloom/") == "tiny-bloom"
    assert short_model_name("./runs/poems/final") == "poems/final"  # a run's model: the run names it
    assert short_model_name("runs/poems/checkpoints/step-40") == "checkpoints/step-40"
    assert short_model_name("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"  # a hub id stays whole


def test_model_choices_lists_complete_models_then_the_active_and_the_chats_own(bloom_dir, qwen_dir, fresh_home, tmp_path):
    from firefly_core.models.inventory import register_local
    from firefly_tui.model_choices import model_choices

    import shutil

    register_local(bloom_dir)
    broken = shutil.copytree(bloom_dir, tmp_path / "half-model")  # this test's own copy
    register_local(broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()  # now it cannot be loaded: not offered
    choices = model_choices(active=str(qwen_dir), current="YeungNLP/firefly-1b4")
    assert choices == [str(bloom_dir), str(qwen_dir), "YeungNLP/firefly-1b4"]  # no incomplete folder


def test_export_json_keeps_chinese_and_the_settings_used(tmp_path):
    import json

    from firefly_core.conversation import Conversation, export_chat_json
    from firefly_core.store import ChatStore
    from firefly_tui.widgets.conversation import stats_dict
    from app_helpers import SlowSession

    store = ChatStore(tmp_path / "c.sqlite3")
    scripted = SlowSession(["你好！"], delay=0.0, forever=False)
    used = {"model": "m", "prompt_format": "firefly-v1", "system": None, "generation": {"temperature": 0.0}}
    scripted.settings_used = lambda: used
    conv = Conversation.create(store, "诗", {"temperature": 0}, session=scripted)
    done = list(conv.send("你好"))[-1]  # the Conversation keeps the settings with the reply it stores
    assert stats_dict(done.stats)["new_tokens"] == 1
    text = export_chat_json(store, conv.id)
    assert "你好！" in text and "\\u4f60" not in text
    data = json.loads(text)
    assert data["settings_used"] == used and data["messages"][1]["meta"]["settings"] == used
    assert data["messages"][1]["content"] == "你好！" and data["messages"][1]["meta"]["new_tokens"] == 1
    store.close()
