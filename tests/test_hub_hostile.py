"""`firefly pull` against a hub that lies (tests/hubserver.py scripts): every value the server
sends is untrusted. Each test pulls through the CLI and then checks, whatever happened:

- nothing was created or changed in the test's whole temporary root outside the requested
  repo's cache folder (and the cache's `.locks`), no symlink in the cache points out of its repo
  folder, and a planted "victim" file next to the cache is untouched;
- no corrupt or oversized file is listed complete by `firefly list`;
- the pull ended within a time bound, with an `error:` message and no traceback.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
from pathlib import Path

import pytest
from hubserver import Reply

from firefly_core.errors import ModelNotFoundError
from firefly_core.models import hub, inventory
from firefly_tui.cli import main

VICTIM = b"the user's own file, never to be touched\n"
PULL_BOUND_S = 10.0  # every hostile pull ends well within this (on a busy 2-core machine)

pytestmark = pytest.mark.timeout(90)


# ---------------------------------------------------------------- the walk


def _walk(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under root: relative path -> (kind, content hash or link target)."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture
def hostile(online, fresh_home, monkeypatch):
    """The loopback hub with scripts cleared afterwards, short retry pauses, and a victim file
    planted where a traversal out of the cache (snapshots/<commit>/../../../../) would land."""
    monkeypatch.setattr(hub, "RETRY_BACKOFF_S", 0.01)
    monkeypatch.setattr(hub, "MAX_BACKOFF_S", 0.05)
    (fresh_home / "victim.safetensors").write_bytes(VICTIM)
    (fresh_home / "hf-hub").mkdir(exist_ok=True)
    (fresh_home / "hf-hub" / "victim.safetensors").write_bytes(VICTIM)
    online.root = fresh_home
    online.before = _walk(fresh_home)
    try:
        yield online
    finally:
        online.clear_scripts()


def assert_contained(hub_server, repo_id: str) -> None:
    """Nothing new or changed (since the last check) outside the repo's cache folder and .locks;
    links stay inside."""
    root: Path = hub_server.root
    allowed = (f"hf-hub/{inventory.cache_folder(repo_id).name}", "hf-hub/.locks")
    after = _walk(root)
    changed = [p for p, v in after.items() if hub_server.before.get(p) != v]
    changed += [p for p in hub_server.before if p not in after]  # deleted
    outside = [p for p in changed if not any(p == a or p.startswith(a + "/") for a in allowed)]
    assert outside == [], f"created or changed outside the repo's cache folder: {outside}"
    assert (root / "victim.safetensors").read_bytes() == VICTIM
    assert (root / "hf-hub" / "victim.safetensors").read_bytes() == VICTIM
    for p in changed:  # links the test planted on purpose are not the pull's doing
        if p in after and after[p][0] == "link" and p.startswith("hf-hub/models--"):
            repo_folder = (root / "/".join(p.split("/")[:2])).resolve()
            target = (root / p).resolve()
            assert repo_folder in target.parents, f"{p} links out of its repo folder to {target}"
    hub_server.before = after  # the next check looks at what changes from here


def assert_not_listed_complete(capsys, repo_id: str) -> None:
    code, out, err = _cli(capsys, "list")
    assert code == 0 and "Traceback" not in err
    for line in out.splitlines():
        if repo_id in line:
            assert "INCOMPLETE" in line, f"listed complete: {line}"
    found = inventory.find_installed(repo_id)
    assert found is None or not found.complete


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def pull_fails(capsys, hub_server, repo_id: str, *extra: str, bound: float = PULL_BOUND_S) -> str:
    """`firefly pull` must end within `bound` with an error message and no traceback; returns stderr."""
    t0 = time.monotonic()
    code, out, err = _cli(capsys, "pull", repo_id, *extra)
    took = time.monotonic() - t0
    assert code == 1, (out, err)
    assert "error:" in err and "Traceback" not in out + err
    assert took < bound, f"pull took {took:.1f}s"
    assert_contained(hub_server, repo_id)
    assert_not_listed_complete(capsys, repo_id)
    return err


def _bloom_files(bloom_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in bloom_dir.iterdir() if p.is_file()}


def _repo(hub_server, name: str, files: dict[str, bytes]):
    return hub_server.add_repo(f"hostile/{name}", files)


def _info_script(repo_id: str, patch):
    """A script that answers the model info of repo_id with patch(honest JSON) (bytes sent as they are)."""
    def script(call):
        if call.route == "info" and call.repo_id.lower() == repo_id.lower():
            honest = json.loads(call.default().body)
            body = patch(honest)
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            return Reply.of(200, raw, {"Content-Type": "application/json"})
        return None
    return script


# ---------------------------------------------------------------- commit ids and revisions


@pytest.mark.parametrize("sha", ["../../../../victim.safetensors", "abc123", "g" * 40, 12345, None, "a" * 40 + "/.."])
def test_a_commit_id_that_is_not_40_hex_stops_the_pull(hostile, capsys, bloom_dir, sha):
    repo = _repo(hostile, "bad-commit", _bloom_files(bloom_dir))
    hostile.script(_info_script(repo.repo_id, lambda info: {**info, "sha": sha}))
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert "commit" in err and hostile.url in err
    assert not [r for r in hostile.requests if "/resolve/" in r.path], "no file is asked for"


def test_an_uppercase_commit_id_is_taken_lowercased(hostile, capsys, bloom_dir):
    repo = _repo(hostile, "upper-commit", _bloom_files(bloom_dir))
    hostile.script(_info_script(repo.repo_id, lambda info: {**info, "sha": info["sha"].upper()}))
    code, out, err = _cli(capsys, "pull", repo.repo_id)
    assert code == 0, err
    assert (inventory.cache_folder(repo.repo_id) / "snapshots" / repo.sha).is_dir()
    assert_contained(hostile, repo.repo_id)


@pytest.mark.parametrize("rev", ["../../../../victim", "main\n", "a b", "/etc", "v1..v2", "x/.hidden", "br.lock", "@{-1}"])
def test_a_revision_that_is_not_a_ref_name_is_refused_before_any_request(hostile, capsys, rev):
    err = pull_fails(capsys, hostile, "test-org/tiny-bloom", "--revision", rev, bound=3.0)
    assert "not a revision" in err
    assert hostile.requests == []


def test_a_commit_asked_for_and_another_one_answered_is_refused(hostile, capsys, bloom_dir):
    repo = _repo(hostile, "other-commit", _bloom_files(bloom_dir))
    hostile.script(_info_script(repo.repo_id, lambda info: {**info, "sha": "0" * 40}))
    err = pull_fails(capsys, hostile, repo.repo_id, "--revision", repo.sha)
    assert "answered a request for commit" in err
    hostile.clear_scripts()
    code, out, err = _cli(capsys, "pull", repo.repo_id, "--revision", repo.sha.upper())
    assert code == 0, err
    assert inventory.find_installed(repo.repo_id).path.name == repo.sha
    assert_contained(hostile, repo.repo_id)


def test_a_ref_name_with_slashes_is_a_revision(hostile, capsys):
    err = pull_fails(capsys, hostile, "test-org/tiny-bloom", "--revision", "refs/pr/1")
    assert "no such revision" in err


# ---------------------------------------------------------------- ETags


def _head_script(repo_id: str, filename: str, headers: dict):
    def script(call):
        if call.route == "resolve" and call.repo_id.lower() == repo_id.lower() and call.filename == filename:
            return call.default().but(headers=headers)
        return None
    return script


@pytest.mark.parametrize("filename, headers", [
    ("config.json", {"ETag": '"../../../../victim.safetensors"'}),
    ("config.json", {"ETag": 'W/"1234"'}),
    ("config.json", {"ETag": None}),
    ("model.safetensors", {"X-Linked-Etag": '"../../blobs/x"'}),
    ("model.safetensors", {"X-Linked-Etag": '"' + "z" * 64 + '"'}),
])
def test_an_etag_that_is_not_a_hash_is_an_error_for_that_file(hostile, capsys, bloom_dir, filename, headers):
    repo = _repo(hostile, "bad-etag", _bloom_files(bloom_dir))
    hostile.script(_head_script(repo.repo_id, filename, headers))
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert filename in err and ("ETag" in err or "disagrees" in err)


def test_an_etag_that_disagrees_with_the_listing_is_refused(hostile, capsys, bloom_dir):
    repo = _repo(hostile, "etag-disagrees", _bloom_files(bloom_dir))
    other = hashlib.sha256(b"another file").hexdigest()
    hostile.script(_head_script(repo.repo_id, "model.safetensors", {"X-Linked-Etag": f'"{other.upper()}"'}))
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert "disagrees" in err and repo.sha256["model.safetensors"] in err
    assert not list((inventory.cache_folder(repo.repo_id) / "blobs").glob(other + "*"))


# ---------------------------------------------------------------- file names (listing and weights index)

HOSTILE_NAMES = [
    "../../../../victim.safetensors",
    "../../../victim.safetensors",
    "/tmp/firefly-abs.safetensors",
    "ok/../../../../../victim.safetensors",
    "evil\x00.safetensors",
    "evil\n.safetensors",
    "a//b.safetensors",
    "./model.safetensors",
    "..\\..\\..\\..\\victim.safetensors",
    "C:\\evil.safetensors",
    "x" * 300 + ".safetensors",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_file_name_in_the_listing_stops_the_pull_before_any_file(hostile, capsys, bloom_dir, name):
    files = _bloom_files(bloom_dir)
    repo = _repo(hostile, "bad-name", {**files, name: b"evil"})
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert "not a safe file name" in err and "file list" in err
    assert not [r for r in hostile.requests if "/resolve/" in r.path or "/cdn/" in r.path]


def _sharded_with_index(hub_server, name: str, edit) -> tuple:
    base = hub_server.repos["test-org/tiny-sharded"]
    files = dict(base.files)
    index = json.loads(files["model.safetensors.index.json"])
    extra = edit(index)
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    files.update(extra or {})
    return _repo(hub_server, name, files), index


@pytest.mark.parametrize("shard", HOSTILE_NAMES[:4] + ["evil\n.safetensors", "a//b.safetensors"])
def test_a_hostile_shard_name_in_the_weights_index_is_refused_by_the_same_rule(hostile, capsys, shard):
    def edit(index):
        first = next(iter(index["weight_map"]))
        index["weight_map"][first] = shard

    repo, _ = _sharded_with_index(hostile, "bad-shard", edit)
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert "weights index" in err and "not a safe file name" in err
    assert not [r for r in hostile.requests if "/cdn/" in r.path], "no weights fetched"


def test_shards_in_a_subfolder_of_another_type_or_missing_are_refused(hostile, capsys):
    def in_subfolder(index):
        old = next(iter(index["weight_map"].values()))
        index["weight_map"] = {k: "sub/" + v for k, v in index["weight_map"].items()}
        return {"sub/" + old: b"x"}

    repo, _ = _sharded_with_index(hostile, "shard-subfolder", in_subfolder)
    assert "subfolder" in pull_fails(capsys, hostile, repo.repo_id)

    def pickle(index):
        first = next(iter(index["weight_map"]))
        index["weight_map"][first] = "pytorch_model.bin"
        return {"pytorch_model.bin": b"pickle"}

    repo, _ = _sharded_with_index(hostile, "shard-bin", pickle)
    assert "not a .safetensors file" in pull_fails(capsys, hostile, repo.repo_id)

    def missing(index):
        first = next(iter(index["weight_map"]))
        index["weight_map"][first] = "model-09999-of-09999.safetensors"

    repo, _ = _sharded_with_index(hostile, "shard-missing", missing)
    assert "does not have" in pull_fails(capsys, hostile, repo.repo_id)


# ---------------------------------------------------------------- the repo id the server echoes


@pytest.mark.parametrize("echo", ["other-org/elsewhere", "../../../victim", "HOSTILE/ECHO"])
def test_the_echoed_repo_id_never_reroutes_the_files(hostile, capsys, bloom_dir, echo):
    repo = _repo(hostile, "echo", _bloom_files(bloom_dir))
    hostile.script(_info_script(repo.repo_id, lambda info: {**info, "id": echo}))
    code, out, err = _cli(capsys, "pull", repo.repo_id)
    assert code == 0, err
    cache = inventory.cache_folder(repo.repo_id).parent
    folders = sorted(p.name for p in cache.glob("models--*"))
    if echo.lower() == repo.repo_id.lower():
        assert folders == ["models--HOSTILE--ECHO"], "the hub's spelling of the same repo"
    else:
        assert folders == ["models--hostile--echo"]
        assert_contained(hostile, repo.repo_id)
    assert inventory.find_installed(repo.repo_id).complete


# ---------------------------------------------------------------- model info that is not model info


@pytest.mark.parametrize("patch, words", [
    (lambda info: b"<!doctype html><html><body>Welcome to our proxy</body></html>", "not a hub's model info"),
    (lambda info: [info], "not a hub's model info"),
    (lambda info: {k: v for k, v in info.items() if k != "id"}, "not a hub's model info"),
    (lambda info: {k: v for k, v in info.items() if k != "siblings"}, "without a file list"),
    (lambda info: {**info, "siblings": "config.json"}, "not a hub's model info"),
    (lambda info: {**info, "siblings": [{"size": 3}]}, "not a hub's model info"),
    (lambda info: {**info, "siblings": [{**s, "size": -5} for s in info["siblings"]]}, "not a number of bytes"),
    (lambda info: {**info, "siblings": [{**s, "size": "12"} for s in info["siblings"]]}, "not a number of bytes"),
    (lambda info: {**info, "siblings": [{**s, "rfilename": 7} for s in info["siblings"]]}, "not a safe file name"),
    (lambda info: {**info, "siblings": [
        {**s, "lfs": {**s["lfs"], "sha256": "../x"}} if "lfs" in s else s for s in info["siblings"]]}, "not a sha256"),
    (lambda info: {**info, "siblings": [{**s, "blobId": "zz"} for s in info["siblings"]]}, "not one"),
])
def test_model_info_that_is_not_model_info_is_a_clear_error_naming_the_endpoint(hostile, capsys, bloom_dir, patch, words):
    repo = _repo(hostile, "bad-info", _bloom_files(bloom_dir))
    hostile.script(_info_script(repo.repo_id, patch))
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert hostile.url in err and words in err and "HF_ENDPOINT" in err


def test_endless_model_info_is_cut_off(hostile, capsys, bloom_dir, monkeypatch):
    monkeypatch.setattr(hub, "MODEL_INFO_MAX_BYTES", 1_000_000)
    repo = _repo(hostile, "endless-info", _bloom_files(bloom_dir))

    def script(call):
        if call.route == "info":
            return Reply(200, {"Content-Type": "application/json"},
                         itertools.chain([b'{"id": "x", "siblings": ['], itertools.repeat(b" " * 65536)))
        return None

    hostile.script(script)
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert "stopped reading" in err and hostile.url in err


# ---------------------------------------------------------------- sizes


def _body_script(repo, filename: str, make_body, *, content_length: bool, ignore_range: bool = False):
    """Serve `make_body(data, start)` (bytes or chunks) for every GET of that file's body
    (with `ignore_range`: always as a 200 from the first byte, as a server that ignores Range)."""
    def script(call):
        if call.method != "GET" or call.filename != filename or call.route not in ("cdn", "resolve"):
            return None
        if call.route == "resolve" and repo.is_lfs(filename):
            return None  # the redirect to the CDN stays honest
        honest = call.default()
        start, status = 0, honest.status
        if call.range and honest.status == 206 and not ignore_range:
            start = int(call.range.split("=")[1].split("-")[0])
        body = make_body(repo.files[filename], start)
        drop = ("Content-Length",) + (("Content-Range",) if ignore_range else ())
        headers = {k: v for k, v in honest.headers.items() if k not in drop}
        if ignore_range:
            status = 200
        if content_length:
            headers["Content-Length"] = str(len(body))
        return Reply(status, headers, body, filename)
    return script


@pytest.mark.parametrize("filename", ["model.safetensors", "config.json"])
@pytest.mark.parametrize("endless", [False, True])
def test_a_body_longer_than_declared_is_cut_off_and_discarded(hostile, capsys, bloom_dir, filename, endless):
    repo = _repo(hostile, "oversized", _bloom_files(bloom_dir))
    if endless:  # no Content-Length, a body that never ends: only our bound stops it
        body = lambda data, start: itertools.chain([data[start:]], itertools.repeat(b"\0" * 65536))  # noqa: E731
    else:
        body = lambda data, start: data[start:] + b"X" * 100_000  # noqa: E731
    hostile.script(_body_script(repo, filename, body, content_length=not endless))
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert "sent more than" in err and filename in err
    blobs = inventory.cache_folder(repo.repo_id) / "blobs"
    digest = repo.sha256[filename] if repo.is_lfs(filename) else repo.git_sha1[filename]
    assert not list(blobs.glob(digest + "*")), "the oversized file is discarded, partial included"
    for p in blobs.iterdir():
        assert p.stat().st_size <= max(len(d) for d in repo.files.values())


def test_a_body_shorter_than_declared_every_time_ends_after_a_few_tries(hostile, capsys, bloom_dir):
    """The server ignores Range and always sends the first half with a matching Content-Length."""
    repo = _repo(hostile, "short", _bloom_files(bloom_dir))
    weights = repo.files["model.safetensors"]
    hostile.script(_body_script(repo, "model.safetensors", lambda data, start: data[: len(data) // 2],
                                content_length=True, ignore_range=True))
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert "keeps failing" in err and "resume" in err
    gets = hostile.gets("/cdn/" + repo.sha256["model.safetensors"])
    assert 2 <= len(gets) <= hub.MAX_FAILURES + 1, "bounded retries"
    partial = inventory.cache_folder(repo.repo_id) / "blobs" / (repo.sha256["model.safetensors"] + ".incomplete")
    assert partial.stat().st_size == len(weights) // 2, "a short body is a resumable partial"
    assert not (inventory.cache_folder(repo.repo_id) / "blobs" / repo.sha256["model.safetensors"]).exists()
    # the hub is honest again: the next pull continues the partial and finishes
    hostile.clear_scripts()
    hostile.requests.clear()
    code, _, err = _cli(capsys, "pull", repo.repo_id)
    assert code == 0, err
    assert [r.range for r in hostile.gets("/cdn/" + repo.sha256["model.safetensors"])] == [f"bytes={len(weights) // 2}-"]
    assert inventory.find_installed(repo.repo_id).complete


@pytest.mark.parametrize("status", [503, 404])
def test_an_error_answer_with_an_endless_body_is_not_read_to_its_end(hostile, capsys, bloom_dir, status):
    repo = _repo(hostile, "endless-error", _bloom_files(bloom_dir))

    def script(call):
        if call.route == "cdn" and call.method == "GET":
            return Reply(status, {"X-Error-Code": "EntryNotFound"}, itertools.repeat(b"E" * 65536))
        return None

    hostile.script(script)
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert ("keeps failing" in err and "503" in err) if status == 503 else "disappeared" in err
    assert len(hostile.gets("/cdn/" + repo.sha256["model.safetensors"])) <= hub.MAX_FAILURES


def test_a_size_that_head_and_listing_disagree_on_is_refused(hostile, capsys, bloom_dir):
    repo = _repo(hostile, "size-disagrees", _bloom_files(bloom_dir))
    hostile.script(_head_script(repo.repo_id, "model.safetensors", {"X-Linked-Size": "10"}))
    assert "disagrees" in pull_fails(capsys, hostile, repo.repo_id)


def test_no_declared_size_is_refused(hostile, capsys, bloom_dir):
    repo = _repo(hostile, "no-size", _bloom_files(bloom_dir))

    def strip_sizes(info):
        for s in info["siblings"]:
            s.pop("size", None)
            s.pop("lfs", None)
        return info

    hostile.script(_info_script(repo.repo_id, strip_sizes))
    hostile.script(_head_script(repo.repo_id, "config.json", {"Content-Length": None}))
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert "how big" in err or "sent more than" in err


def test_a_stalled_body_ends_after_bounded_tries(hostile, capsys, bloom_dir, monkeypatch):
    monkeypatch.setattr(hub, "READ_TIMEOUT_S", 0.3)
    repo = _repo(hostile, "stall", _bloom_files(bloom_dir))
    release = threading.Event()

    def stall(data, start):
        yield data[start:start + 1000]
        release.wait(30)

    hostile.script(_body_script(repo, "model.safetensors", stall, content_length=False))
    try:
        err = pull_fails(capsys, hostile, repo.repo_id)
    finally:
        release.set()
    assert "keeps failing" in err


# ---------------------------------------------------------------- integrity


def _flip(data: bytes, start: int) -> bytes:
    body = bytearray(data[start:])
    body[len(body) // 2] ^= 0xFF
    return bytes(body)


@pytest.mark.parametrize("filename", ["model.safetensors", "tokenizer.json"])
def test_corrupt_bytes_of_the_right_length_are_never_complete(hostile, capsys, bloom_dir, filename):
    repo = _repo(hostile, "corrupt", _bloom_files(bloom_dir))
    hostile.script(_body_script(repo, filename, _flip, content_length=True))
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert "does not match its checksum" in err and filename in err
    blobs = inventory.cache_folder(repo.repo_id) / "blobs"
    digest = repo.sha256[filename] if repo.is_lfs(filename) else repo.git_sha1[filename]
    assert not list(blobs.glob(digest + "*")), "the corrupt download is deleted"


def test_a_resumed_file_that_fails_its_hash_is_fetched_once_more_from_zero(hostile, capsys, bloom_dir):
    repo = _repo(hostile, "bad-partial", _bloom_files(bloom_dir))
    sha = repo.sha256["model.safetensors"]
    blobs = inventory.cache_folder(repo.repo_id) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha}.incomplete").write_bytes(b"\xff" * 1000)  # not the file's first bytes
    hostile.before = _walk(hostile.root)
    code, _, err = _cli(capsys, "pull", repo.repo_id)
    assert code == 0, err
    assert [r.range for r in hostile.gets("/cdn/" + sha)] == ["bytes=1000-", None]
    assert (blobs / sha).read_bytes() == repo.files["model.safetensors"]
    assert_contained(hostile, repo.repo_id)


# ---------------------------------------------------------------- redirects


@pytest.mark.parametrize("where", ["file:///etc/passwd", "ftp://127.0.0.1/x", "loop"])
def test_redirects_firefly_will_not_follow_fail_fast(hostile, capsys, bloom_dir, where):
    repo = _repo(hostile, "redirects", _bloom_files(bloom_dir))
    sha = repo.sha256["model.safetensors"]

    def script(call):
        if where == "loop" and call.route == "cdn":
            return Reply.of(302, b"", {"Location": f"{hostile.cdn_url}/cdn/{sha}"})
        if where != "loop" and call.route == "resolve" and call.filename == "model.safetensors":
            return call.default().but(headers={"Location": where})
        return None

    hostile.script(script)
    err = pull_fails(capsys, hostile, repo.repo_id, bound=3.0)
    assert "redirect" in err


# ---------------------------------------------------------------- links planted in the cache


def test_a_partial_file_planted_as_a_link_out_of_the_cache_is_not_written_through(hostile, capsys, bloom_dir):
    repo = _repo(hostile, "planted-partial", _bloom_files(bloom_dir))
    blobs = inventory.cache_folder(repo.repo_id) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / (repo.sha256["model.safetensors"] + ".incomplete")).symlink_to(hostile.root / "victim.safetensors")
    hostile.before = _walk(hostile.root)
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert "refusing to write" in err and "leads outside" in err


def test_a_snapshot_folder_planted_as_a_link_out_of_the_cache_is_refused(hostile, capsys, bloom_dir):
    repo = _repo(hostile, "planted-snapshot", _bloom_files(bloom_dir))
    elsewhere = hostile.root / "elsewhere"
    elsewhere.mkdir()
    snaps = inventory.cache_folder(repo.repo_id) / "snapshots"
    snaps.mkdir(parents=True)
    (snaps / repo.sha).symlink_to(elsewhere, target_is_directory=True)
    hostile.before = _walk(hostile.root)
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert "refusing to write" in err and "leads outside" in err
    assert list(elsewhere.iterdir()) == []


def test_a_snapshot_entry_planted_as_a_link_is_replaced_not_followed(hostile, capsys, bloom_dir):
    repo = _repo(hostile, "planted-pointer", _bloom_files(bloom_dir))
    snap = inventory.cache_folder(repo.repo_id) / "snapshots" / repo.sha
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to(hostile.root / "victim.safetensors")
    hostile.before = _walk(hostile.root)
    code, _, err = _cli(capsys, "pull", repo.repo_id)
    assert code == 0, err
    assert (snap / "config.json").read_bytes() == repo.files["config.json"]
    assert_contained(hostile, repo.repo_id)


# ---------------------------------------------------------------- rm and damaged caches


def test_rm_of_a_symlinked_cache_folder_is_a_clear_error_that_deletes_nothing(hostile, capsys, fresh_home):
    online = hostile
    hub.pull("test-org/tiny-bloom")
    storage = inventory.cache_folder("test-org/tiny-bloom")
    moved = fresh_home / "bigger-disk" / storage.name
    moved.parent.mkdir()
    storage.rename(moved)
    storage.symlink_to(moved, target_is_directory=True)
    hostile.before = _walk(hostile.root)
    # a cache folder moved to another disk and linked back is still used (paths resolve inside it)
    online.requests.clear()
    assert hub.pull("test-org/tiny-bloom") == storage / "snapshots" / online.repos["test-org/tiny-bloom"].sha
    assert not [r for r in online.requests if r.method == "GET" and not r.path.startswith("/api/")]
    before = _walk(moved)
    code, out, err = _cli(capsys, "rm", "test-org/tiny-bloom", "--yes")
    assert code == 1 and "symbolic link" in err and "Traceback" not in err
    assert _walk(moved) == before and storage.is_symlink()
    assert_contained(hostile, "test-org/tiny-bloom")


@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00garbage", b"../../../../bigger", b"", b"0" * 39])
def test_a_cache_whose_refs_main_holds_garbage(hostile, capsys, fresh_home, bloom_dir, garbage):
    online = hostile
    hub.pull("test-org/tiny-bloom")
    storage = inventory.cache_folder("test-org/tiny-bloom")
    # a model folder outside the cache that a garbage ref could point at
    outside = fresh_home / "bigger"
    outside.mkdir()
    for name, data in _bloom_files(bloom_dir).items():
        (outside / name).write_bytes(data)
    (storage / "refs" / "main").write_bytes(garbage)
    hostile.before = _walk(hostile.root)

    code, out, err = _cli(capsys, "list")
    assert code == 0 and "Traceback" not in err
    [line] = [ln for ln in out.splitlines() if "test-org/tiny-bloom" in ln]
    assert "INCOMPLETE, damaged" in line
    code, out, err = _cli(capsys, "show", "test-org/tiny-bloom")
    assert code == 0 and "refs/main" in out
    with pytest.raises(ModelNotFoundError) as e:
        inventory.resolve_model_path("test-org/tiny-bloom")
    assert "damaged" in e.value.message and "firefly pull" in e.value.hint
    # a pull repairs it
    code, out, err = _cli(capsys, "pull", "test-org/tiny-bloom")
    assert code == 0, err
    assert (storage / "refs" / "main").read_text() == online.repos["test-org/tiny-bloom"].sha
    assert inventory.find_installed("test-org/tiny-bloom").complete
    # and rm works on a damaged one too
    (storage / "refs" / "main").write_bytes(garbage)
    code, out, err = _cli(capsys, "rm", "test-org/tiny-bloom", "--yes")
    assert code == 0 and not storage.exists() and outside.is_dir()
    assert_contained(hostile, "test-org/tiny-bloom")


# ---------------------------------------------------------------- kept: two pulls at once


def test_two_pulls_at_once_fetch_each_blob_once_and_both_finish(hostile, bloom_dir):
    online = hostile
    online.slow_bps = 400_000
    results: dict[int, object] = {}

    def work(i):
        try:
            results[i] = hub.pull("test-org/tiny-bloom")
        except BaseException as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[0] == results[1] and isinstance(results[0], Path), results
    weights = (bloom_dir / "model.safetensors").read_bytes()
    assert (results[0] / "model.safetensors").read_bytes() == weights
    sha = hashlib.sha256(weights).hexdigest()
    assert len(online.gets("/cdn/" + sha)) == 1, "the second pull waited for the lock and reused the blob"
    assert_contained(hostile, "test-org/tiny-bloom")


@pytest.mark.slow
def test_two_pulls_in_two_processes_share_one_download(hostile, bloom_dir):
    """The per-blob lock is huggingface_hub's file lock: a second process waits, then reuses the blob."""
    import subprocess
    import sys
    import textwrap

    online = hostile
    online.slow_bps = 100_000
    script = textwrap.dedent(
        """
        from firefly_core.models import hub
        def show(ev):
            if ev.current_file == "model.safetensors" and ev.bytes_done > 30_000:
                print("HALFWAY", flush=True)
        print(hub.pull("test-org/tiny-bloom", progress=show), flush=True)
        """
    )
    from huggingface_hub import constants

    env = dict(os.environ, HF_ENDPOINT=online.url, HF_HUB_OFFLINE="0", HF_HUB_CACHE=constants.HF_HUB_CACHE)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "HALFWAY"
        here = hub.pull("test-org/tiny-bloom")
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and out.strip().splitlines()[-1] == str(here)
    weights = (bloom_dir / "model.safetensors").read_bytes()
    assert (here / "model.safetensors").read_bytes() == weights
    assert len(online.gets("/cdn/" + hashlib.sha256(weights).hexdigest())) == 1
    assert_contained(hostile, "test-org/tiny-bloom")


def test_a_lock_folder_planted_as_a_link_out_of_the_cache_is_refused(hostile, capsys, bloom_dir):
    repo = _repo(hostile, "planted-lock", _bloom_files(bloom_dir))
    elsewhere = hostile.root / "elsewhere-locks"
    elsewhere.mkdir()
    locks = inventory.cache_folder(repo.repo_id).parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    (locks / inventory.cache_folder(repo.repo_id).name).symlink_to(elsewhere, target_is_directory=True)
    hostile.before = _walk(hostile.root)
    err = pull_fails(capsys, hostile, repo.repo_id)
    assert "leads outside" in err and list(elsewhere.iterdir()) == []
