"""`firefly data sample`: the shipped sample files' paths, and --copy that never overwrites."""

from __future__ import annotations

from firefly_core.samples import sample_files
from firefly_tui.cli import main


def test_sample_prints_the_shipped_paths(capsys):
    assert main(["data", "sample"]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = dict(line.split(None, 1) for line in out)
    assert listed == {kind: str(path) for kind, path in sample_files().items()}


def test_sample_copy_copies_and_keeps_what_is_there(tmp_path, capsys):
    target = tmp_path / "new" / "folder"
    mine = target / "sample_messages.jsonl"
    target.mkdir(parents=True)
    mine.write_text("my own file\n", encoding="utf-8")
    assert main(["data", "sample", "--copy", str(target)]) == 0
    out = capsys.readouterr().out
    for path in sample_files().values():
        if path.name == mine.name:
            assert mine.read_text(encoding="utf-8") == "my own file\n" and f"kept     {mine}" in out
        else:
            assert (target / path.name).read_bytes() == path.read_bytes()
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in sample_files().values())


def test_sample_copy_into_a_file_is_a_message(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["data", "sample", "--copy", str(blocker / "sub")]) == 1
    err = capsys.readouterr().err
    assert "cannot create" in err and "Traceback" not in err
