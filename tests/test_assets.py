"""Bundled assets: the sample JSONL files parse and have the right shape; the logos fit."""

from __future__ import annotations

import collections
import json
import re
import unicodedata
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import pytest

from firefly_core.samples import SAMPLE_FILES, assets_dir, sample_files

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"  # the repository's own: logo.svg and the README describing the samples
SAMPLES = assets_dir()  # the shipped sample data, inside the package (firefly_core/assets/)
ROLES = {"system", "user", "assistant"}


def read_jsonl(name: str) -> list[dict]:
    """Every line of firefly_core/assets/<name> as a dict; a bad line fails with file:line."""
    rows = []
    text = (SAMPLES / name).read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{name}: last line has no newline"
    for lineno, line in enumerate(text.splitlines(), 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:  # pragma: no cover - only on a broken file
            pytest.fail(f"{name}:{lineno}: not JSON: {exc}")
        assert isinstance(obj, dict), f"{name}:{lineno}: not an object"
        rows.append(obj)
    return rows


def nonempty(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def display_width(line: str) -> int:
    """Terminal columns: wide and full-width characters (CJK) take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def test_instructions_are_firefly_rows():
    rows = read_jsonl("sample_instructions.jsonl")
    assert len(rows) >= 280
    for i, row in enumerate(rows, 1):
        assert set(row) == {"kind", "input", "target"}, f"line {i}: fields {sorted(row)}"
        for key in ("kind", "input", "target"):
            assert nonempty(row[key]), f"line {i}: empty {key}"
        assert re.fullmatch(r"[A-Z][A-Za-z]+", row["kind"]), f"line {i}: kind {row['kind']!r}"
    kinds = collections.Counter(r["kind"] for r in rows)
    assert len(kinds) >= 14, kinds
    inputs = [r["input"] for r in rows]
    assert len(set(inputs)) == len(inputs), "duplicate inputs"


def test_instructions_mix_lengths_and_languages():
    rows = read_jsonl("sample_instructions.jsonl")
    han = [len(re.findall(r"[\u4e00-\u9fff]", r["target"])) for r in rows]
    assert sum(300 <= n <= 600 for n in han) >= 3, "a few long targets (300-600 Chinese characters)"
    assert sorted(han)[len(han) // 2] < 150, "mostly short targets"
    english = [r for r in rows if not re.search(r"[\u4e00-\u9fff]", r["input"])]
    assert 3 <= len(english) <= len(rows) // 10, "a handful of English rows"


def test_files_are_utf8_not_ascii_escaped():
    for name in ("sample_instructions.jsonl", "sample_conversations.jsonl", "sample_messages.jsonl"):
        text = (SAMPLES / name).read_text(encoding="utf-8")
        assert "\\u" not in text, f"{name}: written with ensure_ascii=True"
        assert re.search(r"[\u4e00-\u9fff]", text)


def test_conversations_shape():
    rows = read_jsonl("sample_conversations.jsonl")
    assert len(rows) >= 40
    with_system = 0
    for i, row in enumerate(rows, 1):
        assert set(row) <= {"conversation", "system"} and "conversation" in row, f"line {i}"
        if "system" in row:
            with_system += 1
            assert nonempty(row["system"]), f"line {i}: empty system"
        turns = row["conversation"]
        assert isinstance(turns, list) and 2 <= len(turns) <= 5, f"line {i}: {len(turns)} turns"
        for turn in turns:
            assert set(turn) == {"human", "assistant"}, f"line {i}: turn fields {sorted(turn)}"
            assert nonempty(turn["human"]) and nonempty(turn["assistant"]), f"line {i}: empty turn"
    assert 0 < with_system < len(rows)


def test_messages_shape():
    rows = read_jsonl("sample_messages.jsonl")
    assert len(rows) >= 10
    for i, row in enumerate(rows, 1):
        assert set(row) == {"messages"}, f"line {i}"
        msgs = row["messages"]
        assert isinstance(msgs, list) and msgs, f"line {i}"
        for m in msgs:
            assert set(m) == {"role", "content"} and m["role"] in ROLES, f"line {i}: {m}"
            assert nonempty(m["content"]), f"line {i}: empty content"
        body = msgs[1:] if msgs[0]["role"] == "system" else msgs
        # user and assistant alternate, starting with the user and ending with the assistant
        assert [m["role"] for m in body] == ["user", "assistant"] * (len(body) // 2), f"line {i}"
        assert len(body) >= 2


def test_readme_counts_match_the_data():
    rows = read_jsonl("sample_instructions.jsonl")
    kinds = collections.Counter(r["kind"] for r in rows)
    readme = (ASSETS / "README.md").read_text(encoding="utf-8")
    for kind, n in kinds.items():
        assert re.search(rf"\b{kind}\b[^,;.\d]*?\b{n}\b", readme), f"README lacks '{kind} {n}'"


def test_terminal_logo_fits_40_by_8():
    text = resources.files("firefly_tui").joinpath("assets/logo.txt").read_text(encoding="utf-8")
    lines = text.rstrip("\n").split("\n")
    assert 1 <= len(lines) <= 8
    for line in lines:
        assert display_width(line) <= 40, f"{display_width(line)} columns: {line!r}"
        assert "\t" not in line
        # ambiguous-width characters render 1 or 2 columns depending on the terminal
        assert not [c for c in line if unicodedata.east_asian_width(c) == "A"], line
    assert "firefly 流萤" in text
    assert "[" not in text, "Rich/Textual would read [ as markup"


def test_svg_logo_is_xml_with_the_name():
    root = ET.parse(ASSETS / "logo.svg").getroot()
    assert root.tag.endswith("svg")
    assert "流萤" in (ASSETS / "logo.svg").read_text(encoding="utf-8")


def test_the_samples_ship_inside_the_package():
    """The wheel carries firefly_core/assets/ (package-data), so a pipx user has them offline."""
    assert SAMPLES == ROOT / "firefly_core" / "assets"
    files = sample_files()
    assert set(files) == set(SAMPLE_FILES) and all(p.is_file() and p.parent == SAMPLES for p in files.values())
    assert not list(ASSETS.glob("sample_*"))  # one copy: the package's
