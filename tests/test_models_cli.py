"""`firefly pull/download, list, rm, show, use` against the loopback hub, through main(argv) and
as a real subprocess with piped stdin."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from firefly_core.models import folder, hub, inventory
from firefly_core.models.user_settings import load_settings
from firefly_tui.cli import main

REPO = "test-org/tiny-bloom"


def run(capsys, *argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_pull_list_show_use_rm(online, capsys, monkeypatch):
    code, out, err = run(capsys, "pull", REPO)
    assert code == 0 and f"ready: {REPO}" in out
    assert "skipped: " in err and "pytorch_model.bin" in err and "5/5 files" in err

    code, out, _ = run(capsys, "list")
    assert code == 0 and REPO in out and "complete" in out and "hub-cache" in out

    code, out, _ = run(capsys, "use", REPO, "--temperature", "0.5", "--format", "firefly-v1")
    assert code == 0 and load_settings().active_model == REPO
    assert load_settings().for_model(REPO).temperature == 0.5
    code, out, _ = run(capsys, "use")
    assert out.strip() == REPO
    code, out, _ = run(capsys, "list")
    assert f"* {REPO}" in out

    code, out, _ = run(capsys, "show", REPO)
    assert code == 0 and "complete" in out and "temperature=0.5" in out and "(active)" in out

    # rm asks; anything but y keeps the model
    code, out, _ = run(capsys, "rm", REPO, stdin="n\n", monkeypatch=monkeypatch)
    assert code == 1 and "aborted" in out and inventory.find_installed(REPO) is not None
    code, out, _ = run(capsys, "rm", REPO, stdin="", monkeypatch=monkeypatch)  # end of input: no
    assert code == 1 and inventory.find_installed(REPO) is not None
    code, out, _ = run(capsys, "rm", REPO, stdin="y\n", monkeypatch=monkeypatch)
    assert code == 0 and "freed" in out and inventory.find_installed(REPO) is None
    assert load_settings().active_model is None, "the removed model is no longer active"


def test_download_alias_and_errors(online, capsys):
    code, out, err = run(capsys, "download", "test-org/no-such-model")
    assert code == 1 and "error:" in err and "not on" in err and "Traceback" not in err
    code, out, err = run(capsys, "download", "test-org/remote-code")
    assert code == 1 and "--trust-remote-code" in err
    code, out, err = run(capsys, "download", "test-org/remote-code", "--trust-remote-code", "--use")
    assert code == 0
    s = load_settings()
    assert s.for_model("test-org/remote-code").trust_remote_code and s.active_model == "test-org/remote-code"
    # the opt-in is remembered for that model only
    code, out, err = run(capsys, "pull", "test-org/remote-code")
    assert code == 0


def test_use_a_local_folder_and_list_all(fresh_home, capsys, bloom_dir):
    code, out, _ = run(capsys, "use", str(bloom_dir))
    assert code == 0 and load_settings().active_model == str(bloom_dir.resolve())
    code, out, _ = run(capsys, "list", "--all")
    assert str(bloom_dir.resolve()) in out and "local" in out
    assert "YeungNLP/firefly-1b4" in out and "not downloaded" in out
    code, out, err = run(capsys, "use", "YeungNLP/firefly-1b4")
    assert code == 1 and "firefly pull YeungNLP/firefly-1b4" in err
    code, out, _ = run(capsys, "show", "YeungNLP/firefly-2b6-v2")
    assert code == 0 and "firefly-v2" in out and "not downloaded" in out
    code, out, _ = run(capsys, "rm", str(bloom_dir), "--yes")
    assert code == 0 and bloom_dir.is_dir()


def test_offline_pull_says_what_is_here(fresh_home, capsys, bloom_dir):
    inventory.register_local(bloom_dir)
    code, out, err = run(capsys, "pull", "Qwen/Qwen2.5-0.5B-Instruct")
    assert code == 1 and "offline" in err and str(bloom_dir.resolve()) in err


@pytest.mark.slow
def test_subprocess_with_piped_stdin(online, tmp_path):
    """The installed entry point, its exit codes and a piped answer to the rm question."""
    from huggingface_hub import constants

    env = dict(os.environ, HF_ENDPOINT=online.url, HF_HUB_OFFLINE="0", HF_HUB_CACHE=constants.HF_HUB_CACHE)
    cli = [sys.executable, "-m", "firefly_tui.cli"]
    r = subprocess.run(cli + ["pull", REPO], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cli + ["rm", REPO], env=env, input="no\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "aborted" in r.stdout and inventory.find_installed(REPO) is not None
    r = subprocess.run(cli + ["rm", REPO], env=env, input="y\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and inventory.find_installed(REPO) is None


def test_use_saves_the_engine_settings_the_model_service_reads(fresh_home, capsys, bloom_dir):
    """`firefly use` and the app's run settings write the same per-model fields the service reads."""
    from firefly_core.models.service import model_service

    code, _, err = run(capsys, "use", str(bloom_dir), "--engine", "torch", "--quantize", "int8",
                       "--threads", "1", "--no-cuda-graph")
    assert code == 0, err
    request = model_service().request_for(str(bloom_dir))
    assert (request.engine, request.quantize, request.threads, request.cuda_graph) == ("torch", "int8", 1, False)
    with pytest.raises(SystemExit) as exit_:  # refused while the flags are parsed: argparse's exit 2
        run(capsys, "use", str(bloom_dir), "--threads", "0")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --threads: threads = 0 is below 1" in err and "Traceback" not in err


def test_ctrl_c_in_pull_stops_cleanly_and_a_second_pull_resumes(online, fresh_home, bloom_dir):
    """A real `firefly pull` process gets SIGINT mid-download: the download worker is cancelled
    (exit 130, a message, no traceback), the partial blob stays, and the next pull continues it."""
    import hashlib
    import signal
    import time

    weights = hashlib.sha256((bloom_dir / "model.safetensors").read_bytes()).hexdigest()
    online.slow_bps = 40_000
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "firefly_tui.cli", "pull", REPO], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cache = fresh_home / "hf-hub"
    deadline = time.monotonic() + 120  # a bound on waiting for the state, not a timing assert
    while not any(p.stat().st_size > 0 for p in cache.rglob(f"{weights}.incomplete")):
        assert proc.poll() is None and time.monotonic() < deadline, "the download never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped:" in err and f"firefly pull {REPO}" in err and "Traceback" not in err
    assert any(p.stat().st_size > 0 for p in cache.rglob(f"{weights}.incomplete"))  # the partial is kept
    online.slow_bps = None
    online.requests.clear()
    done = subprocess.run([sys.executable, "-m", "firefly_tui.cli", "pull", REPO], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"ready: {REPO}" in done.stdout, done.stderr
    assert any(r.range for r in online.requests if r.path.startswith("/cdn/")), "the second pull resumed"
