"""Shared fixtures: no network, a private HF cache and firefly home, and the test-kit models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before anything imports huggingface_hub, which reads these at import time.
_SANDBOX = Path(tempfile.mkdtemp(prefix="firefly-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SANDBOX / "hf")
os.environ["FIREFLY_HOME"] = str(_SANDBOX / "firefly")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402


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
