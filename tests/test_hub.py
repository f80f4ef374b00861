"""Downloads against the loopback hub (tests/hubserver.py) with the real huggingface_hub client:
only the needed files, progress, resume after a dropped connection and after a killed process,
cancel, hub errors, offline mode, listing and removal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from firefly_core.models import folder, hub, inventory
from firefly_core.errors import (
    DownloadCancelled,
    HubAccessError,
    InvalidModelError,
    ModelNotFoundError,
    OfflineError,
    RemoteCodeError,
    UnsupportedModelError,
)

REPO = "test-org/tiny-bloom"


def _blobs(repo_id: str) -> Path:
    return inventory.cache_folder(repo_id) / "blobs"


def _expected_files(bloom_dir: Path) -> set[str]:
    return {p.name for p in bloom_dir.iterdir() if p.is_file()}


# ---------------------------------------------------------------- choosing files


def test_select_files_prefers_safetensors_and_skips_copies():
    names = [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "merges.txt",
        "model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "model.ckpt",
        "onnx/model.onnx", "gguf/model-q4.gguf", "README.md", "LICENSE", ".gitattributes", "modeling_x.py",
    ]
    wanted, skipped = hub.select_files(names)
    assert set(wanted) == {
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "merges.txt",
        "model.safetensors", "LICENSE",
    }
    assert {"pytorch_model.bin", "tf_model.h5", "onnx/model.onnx", "modeling_x.py", "README.md"} <= set(skipped)
    wanted, _ = hub.select_files(names, allow_remote_code=True)
    assert "modeling_x.py" in wanted


def test_select_files_uses_the_index_and_falls_back_to_bin():
    names = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
             "model-00002-of-00002.safetensors", "consolidated.safetensors", "pytorch_model.bin"]
    wanted, _ = hub.select_files(names, index_shards=["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
    assert [w for w in wanted if "safetensors" in w] == [
        "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    wanted, _ = hub.select_files(["config.json", "pytorch_model.bin", "tf_model.h5"])
    assert wanted == ["config.json", "pytorch_model.bin"]
    wanted, _ = hub.select_files(["config.json", "tf_model.h5"])
    assert wanted == ["config.json"]


# ---------------------------------------------------------------- downloading


def test_full_download_fetches_only_what_is_needed_and_loads(online, bloom_dir):
    path = hub.pull(REPO)
    assert path == inventory.cache_folder(REPO) / "snapshots" / online.repos[REPO].sha
    assert {p.name for p in path.iterdir()} == _expected_files(bloom_dir)
    for p in path.iterdir():
        assert p.is_symlink() and p.read_bytes() == (bloom_dir / p.name).read_bytes()
    fetched = {r.path.rsplit("/", 1)[-1] for r in online.requests if r.method == "GET"}
    for decoy in ("pytorch_model.bin", "tf_model.h5", "model.onnx", "README.md"):
        assert decoy not in fetched
    assert (inventory.cache_folder(REPO) / "refs" / "main").read_text() == online.repos[REPO].sha
    # the standard cache: the library (and so transformers) finds it offline, and it loads
    from firefly_core.models.loading import load_model
    from firefly_core.models.inventory import resolve_model_path

    assert resolve_model_path(REPO) == path
    lm = load_model(REPO, dtype="fp32")
    ref = load_model(bloom_dir, dtype="fp32")
    for (n1, a), (n2, b) in zip(lm.model.state_dict().items(), ref.model.state_dict().items()):
        assert n1 == n2 and (a == b).all()
    # a second pull is a no-op apart from asking the hub which commit is current
    online.requests.clear()
    assert hub.pull(REPO) == path
    assert [r.method for r in online.requests] == ["GET"] and "/api/models/" in online.requests[0].path


def test_progress_events(online, bloom_dir):
    events: list[hub.DownloadProgress] = []
    plans: list[hub.DownloadPlan] = []
    hub.pull(REPO, progress=events.append, on_plan=plans.append)
    total = sum((bloom_dir / n).stat().st_size for n in _expected_files(bloom_dir))
    assert plans[0].total_bytes == total and "pytorch_model.bin" in plans[0].skipped
    assert events, "no progress events"
    done = [e.bytes_done for e in events]
    assert done == sorted(done), "bytes_done went backwards"
    assert all(e.bytes_total == total and e.files_total == len(_expected_files(bloom_dir)) for e in events)
    last = events[-1]
    assert last.bytes_done == total and last.files_done == last.files_total and last.eta_s == 0.0
    assert "model.safetensors" in {e.current_file for e in events}
    assert all(e.repo_id == REPO for e in events)


def test_resume_after_dropped_connection(online, bloom_dir):
    weights = (bloom_dir / "model.safetensors").read_bytes()
    online.drop_once("model.safetensors", 50_000)
    path = hub.pull(REPO)
    assert (path / "model.safetensors").read_bytes() == weights
    cdn = online.gets("/cdn/" + __import__("hashlib").sha256(weights).hexdigest())
    assert [r.range for r in cdn] == [None, "bytes=50000-"], "the second request must continue where the first stopped"


def _pull_in_thread(repo_id: str, cancel: threading.Event, events: list) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def work():
        try:
            out["path"] = hub.pull(repo_id, progress=events.append, cancel=cancel)
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t, out


def test_cancel_keeps_the_partial_file_and_pull_resumes_it(online, bloom_dir):
    weights = (bloom_dir / "model.safetensors").read_bytes()
    online.slow_bps = 60_000
    cancel = threading.Event()
    events: list[hub.DownloadProgress] = []
    thread, out = _pull_in_thread(REPO, cancel, events)
    deadline = time.monotonic() + 20
    while not any(e.current_file == "model.safetensors" and e.bytes_done > 40_000 for e in events):
        assert time.monotonic() < deadline and thread.is_alive(), out
        time.sleep(0.02)
    cancel.set()
    thread.join(60)  # a hang guard, not a timing: the throttled download would take minutes
    assert not thread.is_alive(), "cancel must stop the download"
    assert isinstance(out.get("error"), DownloadCancelled), out
    partial = list(_blobs(REPO).glob("*.incomplete"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(weights)
    kept = partial[0].stat().st_size
    listed = inventory.find_installed(REPO)
    assert listed is not None and not listed.complete and listed.source == "hub-cache"

    online.slow_bps = None
    online.requests.clear()
    events.clear()
    path = hub.pull(REPO, progress=events.append)
    assert (path / "model.safetensors").read_bytes() == weights
    ranges = [r.range for r in online.requests if r.method == "GET" and r.path.startswith("/cdn/")]
    assert ranges == [f"bytes={kept}-"]
    assert events[0].bytes_done >= kept, "a resumed pull starts its progress at what is already here"
    assert not list(_blobs(REPO).glob("*.incomplete"))
    assert inventory.find_installed(REPO).complete


@pytest.mark.slow
def test_resume_after_the_process_is_killed(online, bloom_dir, tmp_path):
    """A `pull` in another process killed mid-file (no cleanup at all) is resumed by the next one."""
    weights = (bloom_dir / "model.safetensors").read_bytes()
    online.slow_bps = 40_000
    script = textwrap.dedent(
        f"""
        import sys
        from firefly_core.models import folder, hub, inventory
        def show(ev):
            if ev.current_file == "model.safetensors" and ev.bytes_done > 30_000:
                print("HALFWAY", flush=True)
        hub.pull({REPO!r}, progress=show)
        """
    )
    env = dict(os.environ, HF_ENDPOINT=online.url, HF_HUB_OFFLINE="0")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "HALFWAY"
    finally:
        proc.kill()
        proc.wait()
    partial = list(_blobs(REPO).glob("*.incomplete"))
    assert len(partial) == 1
    kept = partial[0].stat().st_size
    assert 0 < kept < len(weights)
    online.slow_bps = None
    online.requests.clear()
    path = hub.pull(REPO)
    assert (path / "model.safetensors").read_bytes() == weights
    assert [r.range for r in online.requests if r.method == "GET" and r.path.startswith("/cdn/")] == [f"bytes={kept}-"]


def test_sharded_model_and_a_missing_shard(online, hub_server):
    path = hub.pull("test-org/tiny-sharded")
    index = path / "model.safetensors.index.json"
    shards = folder.index_shards(index)
    assert len(shards) >= 2 and all((path / s).exists() for s in shards)
    assert inventory.find_installed("test-org/tiny-sharded").complete
    # a shard blob lost (disk cleanup, another tool): listed as incomplete, and pull repairs it
    (path / shards[-1]).resolve().unlink()
    listed = inventory.find_installed("test-org/tiny-sharded")
    assert not listed.complete and shards[-1] in listed.missing
    online.requests.clear()
    hub.pull("test-org/tiny-sharded")
    gets = [r for r in online.requests if r.method == "GET" and r.path.startswith("/cdn/")]
    assert len(gets) == 1
    assert inventory.find_installed("test-org/tiny-sharded").complete


# ---------------------------------------------------------------- refusals and errors


def test_remote_code_is_refused_before_any_weight(online):
    with pytest.raises(RemoteCodeError) as e:
        hub.pull("test-org/remote-code")
    assert "--trust-remote-code" in e.value.hint
    assert not [r for r in online.requests if r.path.startswith("/cdn/")], "no weights before the opt-in"
    path = hub.pull("test-org/remote-code", allow_remote_code=True)
    assert (path / "modeling_tiny.py").is_file() and folder.needs_remote_code(path)


def test_catalog_remote_code_flag_needs_no_network(fresh_home):
    with pytest.raises(RemoteCodeError):
        hub.pull("internlm/internlm2_5-1_8b-chat")


def test_gguf_only_repo_is_unsupported(online):
    with pytest.raises(UnsupportedModelError):
        hub.pull("test-org/gguf-only")


def test_missing_repo_and_revision(online):
    with pytest.raises(ModelNotFoundError) as e:
        hub.pull("test-org/no-such-model")
    assert "not on" in e.value.message
    with pytest.raises(ModelNotFoundError):
        hub.pull(REPO, revision="v9")


def test_gated_repo_needs_a_token_and_the_token_stays_on_the_hub(online, monkeypatch, bloom_dir):
    with pytest.raises(HubAccessError) as e:
        hub.pull("test-org/gated-bloom")
    assert "HF_TOKEN" in e.value.hint
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    path = hub.pull("test-org/gated-bloom")
    assert (path / "model.safetensors").read_bytes() == (bloom_dir / "model.safetensors").read_bytes()
    hub_calls = [r for r in online.requests if not r.path.startswith("/cdn/")]
    cdn_calls = [r for r in online.requests if r.path.startswith("/cdn/")]
    assert hub_calls[-1].authorization == "Bearer hf_test_token"
    assert cdn_calls and all(r.authorization is None for r in cdn_calls)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_fast_and_says_what_is_here(online, monkeypatch, bloom_dir):
    inventory.register_local(bloom_dir)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    with pytest.raises(OfflineError) as e:
        hub.pull(REPO)
    assert time.monotonic() - t0 < 5
    assert "cannot reach" in e.value.message and str(bloom_dir.resolve()) in e.value.hint


def test_offline_mode(online, monkeypatch):
    hub.pull(REPO)
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    online.requests.clear()
    assert hub.pull(REPO) == inventory.find_installed(REPO).path, "a complete model is usable offline"
    with pytest.raises(OfflineError) as e:
        hub.pull("test-org/tiny-sharded")
    assert "HF_HUB_OFFLINE" in e.value.message and REPO in e.value.hint
    assert online.requests == [], "offline means no request at all"


# ---------------------------------------------------------------- list, register, remove


def test_list_and_remove(online, bloom_dir, tmp_path):
    assert inventory.list_installed() == []
    hub.pull(REPO)
    local = tmp_path / "my-model"
    local.mkdir()
    for p in bloom_dir.iterdir():
        (local / p.name).write_bytes(p.read_bytes())
    inventory.register_local(local)
    inventory.register_local(local)  # idempotent
    models = inventory.list_installed()
    assert [(m.id, m.source, m.complete) for m in models] == [(REPO, "hub-cache", True), (str(local.resolve()), "local", True)]
    assert models[0].size_bytes >= (bloom_dir / "model.safetensors").stat().st_size

    freed = inventory.remove(REPO)
    assert freed == models[0].size_bytes and not inventory.cache_folder(REPO).exists()
    assert inventory.remove(local) == 0 and local.is_dir(), "a local folder is forgotten, never deleted"
    assert inventory.list_installed() == []
    with pytest.raises(ModelNotFoundError):
        inventory.remove(REPO)


def test_register_rejects_a_folder_that_is_not_a_model(fresh_home, tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(InvalidModelError):
        inventory.register_local(tmp_path / "x")
    with pytest.raises(ModelNotFoundError):
        inventory.register_local(tmp_path / "nope")


def test_a_folder_the_library_left_half_made_is_listed_incomplete(fresh_home):
    storage = inventory.cache_folder("someone/half")
    (storage / "blobs").mkdir(parents=True)
    (storage / "blobs" / ("a" * 64 + ".incomplete")).write_bytes(b"x" * 10)
    [m] = inventory.list_installed()
    assert m.id == "someone/half" and not m.complete and m.size_bytes == 10


def test_the_cache_is_shared_with_huggingface_hub(online, bloom_dir):
    """A model fetched by the library is listed and not fetched again; ours is found by the library."""
    from huggingface_hub import hf_hub_download, snapshot_download

    lib_path = Path(snapshot_download(REPO, endpoint=online.url, allow_patterns=["*.json", "*.safetensors"]))
    [listed] = inventory.list_installed()
    assert listed.id == REPO and listed.complete and listed.path == lib_path
    online.requests.clear()
    assert hub.pull(REPO) == lib_path
    assert not [r for r in online.requests if r.method == "GET" and not r.path.startswith("/api/")]

    inventory.remove(REPO)
    ours = hub.pull(REPO)
    online.requests.clear()
    got = hf_hub_download(REPO, "model.safetensors", endpoint=online.url)
    assert Path(got) == ours / "model.safetensors"
    assert not [r for r in online.requests if r.method == "GET"], "the library reused our blob"


def test_a_partial_file_from_an_older_commit_is_dropped_after_a_complete_pull(online):
    storage = inventory.cache_folder(REPO)
    (storage / "blobs").mkdir(parents=True)
    stale = storage / "blobs" / ("b" * 64 + ".incomplete")
    stale.write_bytes(b"old weights, half")
    events: list[hub.DownloadProgress] = []
    plans: list[hub.DownloadPlan] = []
    hub.pull(REPO, progress=events.append, on_plan=plans.append)
    assert not stale.exists() and inventory.find_installed(REPO).complete
    assert events[-1].bytes_done == plans[0].total_bytes, "a stale partial is not progress of this pull"


def test_cancel_before_start(online):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DownloadCancelled):
        hub.pull(REPO, cancel=cancel)
    assert online.requests == []


def test_not_enough_disk_space_is_refused_before_downloading(online, monkeypatch):
    import shutil as _shutil

    real = _shutil.disk_usage
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))
    with pytest.raises(hub.FireflyError) as e:
        hub.pull(REPO)
    assert "free" in e.value.message and "firefly rm" in e.value.hint
    assert not [r for r in online.requests if r.path.startswith("/cdn/")]


def test_an_invalid_hub_id_is_a_clear_error(online):
    with pytest.raises(ModelNotFoundError):
        hub.pull("org/bad name!")


# ---------------------------------------------------------------- names from outside (names.py)


def test_names_accept_what_real_repos_use_and_refuse_paths():
    from firefly_core.errors import ConfigError
    from firefly_core.models import names

    for ok in ("model-00001-of-00002.safetensors", "中文说明.json", "onnx/model.onnx", "tokenizer.json", "a b.txt"):
        assert names.check_file_name(ok, where="test") == ok
    for bad in ("../x", "a/../../x", "/etc/passwd", "", ".", "a//b", "a/", "x\\y", "C:x", "a\x00b", "a\nb", "a\x7fb"):
        with pytest.raises(names.UnsafeNameError):
            names.check_file_name(bad, where="test")
    for ok in ("main", "v1.0", "refs/pr/1", "feature/x-y_z", "a" * 40):
        assert names.check_revision(ok) == ok
    for bad in ("", "..", "a..b", "/main", "main/", "a//b", ".hidden", "x/.y", "b.lock", "a b", "a~1", "a^", "a:b",
                "a?", "a*", "a[", "a\\b", "@", "a@{1}", "main\n", "x."):
        with pytest.raises(ConfigError):
            names.check_revision(bad)
    sha = "ab" * 32
    assert names.blob_name(f"{sha.upper()}", filename="f", endpoint="e") == sha
    assert names.blob_name("cd" * 20, filename="f", endpoint="e") == "cd" * 20
    for bad in (None, "", "x" * 64, "ab" * 31, '"' + sha + '"', "../" + sha, sha + "\n"):
        with pytest.raises(names.UnsafeNameError):
            names.blob_name(bad, filename="f", endpoint="e")
    assert names.check_commit_id("AB" * 20, repo_id="r", endpoint="e") == "ab" * 20


def test_an_empty_file_downloads_and_verifies(online, bloom_dir):
    files = {p.name: p.read_bytes() for p in bloom_dir.iterdir() if p.is_file()}
    online.add_repo("test-org/empty-file", {**files, "added_tokens.json": b""})
    path = hub.pull("test-org/empty-file")
    assert (path / "added_tokens.json").read_bytes() == b""
    assert inventory.find_installed("test-org/empty-file").complete


def test_a_truncated_blob_is_fetched_again(online, bloom_dir):
    path = hub.pull(REPO)
    weights = (bloom_dir / "model.safetensors").read_bytes()
    blob = (path / "model.safetensors").resolve()
    blob.write_bytes(weights[:1000])  # a disk problem, another tool: the size no longer matches
    online.requests.clear()
    hub.pull(REPO)
    assert (path / "model.safetensors").read_bytes() == weights
    assert len([r for r in online.requests if r.path.startswith("/cdn/") and r.method == "GET"]) == 1
