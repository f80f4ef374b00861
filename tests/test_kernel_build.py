"""CPU kernel builds that cannot hang or thrash: stale locks broken, bounded waits, keyed folders,
no build where the kernel does not pay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from firefly_core.generation import gemv


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(directory, pid, age_s=0.0):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / gemv.LOCK_FILE
    path.write_text(json.dumps({"pid": pid, "host": __import__("socket").gethostname(), "started": time.time()}))
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


@pytest.fixture
def fresh_kernel_state(monkeypatch):
    """prepare_kernels decides once per process: give this test its own decision."""
    monkeypatch.setattr(gemv, "_state", None)


def test_a_lock_left_by_a_dead_process_is_broken(tmp_path):
    path = _plant(tmp_path, _dead_pid())
    assert gemv.acquire_build_lock(tmp_path, wait_s=0)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    gemv.release_build_lock(tmp_path)
    assert not path.exists()


def test_an_old_lock_is_broken_whatever_its_pid(tmp_path):
    _plant(tmp_path, os.getpid(), age_s=gemv.STALE_LOCK_S + 60)
    assert gemv.acquire_build_lock(tmp_path, wait_s=0)


def test_a_live_builder_is_awaited_then_pytorch_kernels_with_a_reason(tmp_path, monkeypatch, fresh_kernel_state):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv("FIREFLY_GEMV", raising=False)
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("no AVX2: the kernel is never built here")
    lock = _plant(gemv.build_directory(), os.getpid())  # alive: this very process
    said: list[str] = []
    reason = gemv.prepare_kernels(status=said.append, wait_s=0.5)  # returns: the wait is bounded
    assert reason is not None and "still compiling" in reason
    assert said and "waiting up to" in said[0]
    assert lock.exists()  # someone else's live lock is left alone
    assert not any(gemv.build_directory().glob("*.so"))  # and nothing was compiled


def test_the_build_folder_is_keyed_by_package_torch_and_python_prefix(tmp_path, monkeypatch):
    from firefly_core import __version__

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    here = gemv.build_directory()
    assert here.parent == tmp_path
    assert __version__ in here.name and torch.__version__.replace("+", "_") in here.name
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "another-venv"))
    assert gemv.build_directory() != here
    monkeypatch.setattr(gemv, "_package_version", lambda: "9.9.9")
    assert "9.9.9" in gemv.build_directory().name


def test_no_kernel_for_fp32_or_tiny_models(bloom_dir, monkeypatch, fresh_kernel_state):
    from firefly_core.models.service import ModelRequest, ModelService

    monkeypatch.delenv("FIREFLY_GEMV", raising=False)

    def no_build(*args, **kwargs):
        raise AssertionError("the kernel must not be built for this model")

    monkeypatch.setattr(gemv, "_decide", no_build)
    said: list = []
    for dtype in ("fp32", "bf16"):
        lm = ModelService().get(ModelRequest(str(bloom_dir), device="cpu", dtype=dtype, engine="torch"), status=said.append)
        assert lm.model.firefly_cpu_route.gemv is False
    assert not [s for s in said if s.step == "kernels"]
    assert not gemv.kernels_pay(torch.nn.Linear(64, 64).float())


def test_a_big_bf16_model_is_where_the_kernel_pays(monkeypatch):
    monkeypatch.delenv("FIREFLY_GEMV", raising=False)
    big = torch.nn.Linear(4096, 8192, bias=False, dtype=torch.bfloat16)  # 64 MiB of weights
    small = torch.nn.Linear(256, 256, bias=False, dtype=torch.bfloat16)
    assert gemv.kernels_pay(big) == gemv.slow_half_gemm(torch.bfloat16)
    assert not gemv.kernels_pay(small)
    monkeypatch.setenv("FIREFLY_GEMV", "1")  # forced on, whatever the CPU's bf16 speed
    assert gemv.kernels_pay(small)
    assert not gemv.kernels_pay(small.float())  # the kernel is bf16 only
    monkeypatch.setenv("FIREFLY_GEMV", "0")
    assert not gemv.kernels_pay(big)


@pytest.mark.slow
def test_stale_locks_planted_in_the_build_folder_and_chat_still_answers(bloom_dir, tmp_path, gemv_kernels):
    """A compile killed midway leaves torch's `lock` (and ours) behind; torch alone would wait for
    it forever. `firefly chat` with the kernel forced on must break both and answer as PyTorch does."""
    from firefly_core.formats import Message
    from firefly_core.session import ChatSession
    from firefly_core.generation import GenerationConfig, ReplyDone
    from firefly_core.models.loading import load_model

    directory = gemv.build_directory()  # this run's own folder (conftest), built by `gemv_kernels`
    assert gemv.kernels_built(directory) and not (directory / gemv.LOCK_FILE).exists()
    _plant(directory, _dead_pid())
    (directory / "lock").write_text("")  # torch's FileBaton, left by a killed compile
    env = dict(os.environ, FIREFLY_HOME=str(tmp_path), PYTHONIOENCODING="utf-8", FIREFLY_GEMV="1")
    proc = subprocess.run(
        [sys.executable, "-m", "firefly_tui.cli", "chat", "--model", str(bloom_dir), "--device", "cpu",
         "--dtype", "bf16", "--engine", "torch", "--greedy", "--max-new-tokens", "8", "--threads", "1"],
        input="你好\n", capture_output=True, text=True, encoding="utf-8", env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (directory / "lock").exists() and not (directory / gemv.LOCK_FILE).exists()
    lm = load_model(bloom_dir, device="cpu", dtype="bf16")
    from firefly_core.generation import ModelDecoder

    lm.decoder = ModelDecoder(lm.model)  # no CPU route written: PyTorch's kernels, the reference
    session = ChatSession(lm, config=GenerationConfig(do_sample=False, max_new_tokens=8))
    expected = [e for e in session.reply([Message("user", "你好")]) if isinstance(e, ReplyDone)][0].text
    assert proc.stdout == expected + "\n"
