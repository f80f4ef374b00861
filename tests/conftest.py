"""Shared fixtures: no network, a private HF cache, firefly home and kernel build folder, the
engine named (torch unless a test asks for llama.cpp), and the test-kit models."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Set before anything imports huggingface_hub, which reads these at import time.
_SANDBOX = Path(tempfile.mkdtemp(prefix="firefly-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SANDBOX / "hf")
os.environ["FIREFLY_HOME"] = str(_SANDBOX / "firefly")
# Kernels (generation/gemv.py) and any other cache build under this run's own folder, never in the
# user's ~/.cache: a test's outcome must not depend on what an earlier run left there.
os.environ["TORCH_EXTENSIONS_DIR"] = str(_SANDBOX / "torch_extensions")
os.environ["XDG_CACHE_HOME"] = str(_SANDBOX / "cache")
# The engine a test generates with is named, not taken from what is installed: the model service
# picks llama.cpp automatically when it is usable, so it is off unless a test asks for it with
# the `llamacpp` fixture. `FIREFLY_LLAMACPP=0` given to pytest keeps it off for those too (the
# suite as it runs without the extra).
_LLAMACPP_OFF_BY_CALLER = os.environ.get("FIREFLY_LLAMACPP", "").strip() == "0"
os.environ["FIREFLY_LLAMACPP"] = "0"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    """The sandbox is ours (made above): remove it, kernels and caches included."""
    shutil.rmtree(_SANDBOX, ignore_errors=True)


def _llamacpp_unavailable() -> str | None:
    if _LLAMACPP_OFF_BY_CALLER:
        return "FIREFLY_LLAMACPP=0 was given to this test run"
    from firefly_core.llamacpp_lib import available

    previous = os.environ.pop("FIREFLY_LLAMACPP", None)
    try:
        return available()
    finally:
        if previous is not None:
            os.environ["FIREFLY_LLAMACPP"] = previous


@pytest.fixture
def llamacpp(monkeypatch):
    """This test runs the llama.cpp engine (or its GGUF tools): on for it, skipped with the reason
    where the `llamacpp` extra is missing or FIREFLY_LLAMACPP=0 was given."""
    reason = _llamacpp_unavailable()
    if reason:
        pytest.skip(f"llama.cpp is not usable here: {reason}")
    monkeypatch.delenv("FIREFLY_LLAMACPP", raising=False)


@pytest.fixture(scope="module")
def llamacpp_module():
    """`llamacpp` for module-scoped fixtures (a GGUF made once per module)."""
    reason = _llamacpp_unavailable()
    if reason:
        pytest.skip(f"llama.cpp is not usable here: {reason}")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FIREFLY_LLAMACPP", raising=False)
        yield


@pytest.fixture(scope="session")
def gemv_kernels():
    """The CPU GEMV kernels, built once per run in the run's own TORCH_EXTENSIONS_DIR (never while
    pytest collects); tests that need them skip with the reason where they cannot be built."""
    from firefly_core.generation import gemv

    reason = gemv.prepare_kernels()
    if reason is not None:
        pytest.skip(f"the CPU GEMV kernel is not available here: {reason}")
    return gemv


@pytest.fixture(scope="session")
def bloom_dir(tmp_path_factory) -> Path:
    """A tiny random BloomForCausalLM (tied embeddings) with the kit's byte-level BPE tokenizer."""
    from firefly_core.testkit import build_model_folder

    return build_model_folder(tmp_path_factory.mktemp("models") / "tiny-bloom", "bloom")


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2ForCausalLM (untied) whose tokenizer has a ChatML chat_template."""
    from firefly_core.testkit import build_model_folder

    return build_model_folder(
        tmp_path_factory.mktemp("models") / "tiny-qwen2", "qwen2", tie_word_embeddings=False
    )


@pytest.fixture(params=["bloom", "qwen2"])
def model_dir(request, bloom_dir, qwen_dir) -> Path:
    """Each tiny family in turn, so tests cover both."""
    return bloom_dir if request.param == "bloom" else qwen_dir


# ---- models helper: a hub-compatible server on loopback and a private cache per test


@pytest.fixture(scope="session")
def hub_server(bloom_dir, tmp_path_factory):
    """tests/hubserver.py serving tiny model repos (see there for the routes and fault modes)."""
    import json

    from hubserver import HubServer

    from firefly_core.testkit import build_model_folder

    server = HubServer()
    files = {p.name: p.read_bytes() for p in bloom_dir.iterdir() if p.is_file()}
    decoys = {  # copies a download must skip when safetensors exist
        "pytorch_model.bin": bytes(range(256)) * 64,
        "tf_model.h5": b"h5" * 1000,
        "onnx/model.onnx": b"onnx" * 500,
        "README.md": b"# tiny bloom\n",
    }
    server.add_repo("test-org/tiny-bloom", {**files, **decoys})
    server.add_repo("test-org/gated-bloom", files, gated_token="hf_test_token")
    sharded = build_model_folder(
        tmp_path_factory.mktemp("models") / "tiny-sharded", "bloom", max_shard_size="40KB"
    )
    server.add_repo("test-org/tiny-sharded", sharded)
    remote_cfg = json.loads(files["config.json"])
    remote_cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}
    server.add_repo(
        "test-org/remote-code",
        {**files, "config.json": json.dumps(remote_cfg).encode(), "modeling_tiny.py": b"raise SystemExit('never run')\n"},
    )
    server.add_repo("test-org/gguf-only", {"model-q4.gguf": b"GGUF" * 100, "README.md": b"# gguf\n"})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    """An empty HF cache and firefly home for this test only."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv("FIREFLY_HOME", str(tmp_path / "firefly"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return tmp_path


@pytest.fixture
def online(hub_server, fresh_home, monkeypatch):
    """Offline mode off and HF_ENDPOINT on the loopback hub, for this test only."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    hub_server.requests.clear()
    hub_server.slow_bps = None
    hub_server._drops.clear()
    return hub_server


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy machine OpenMP's spinning workers make
    them hundreds of times slower; one thread keeps these tests fast everywhere."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
