"""Getting models from the Hugging Face Hub into the standard cache, and managing what is on disk.

Downloads land in the standard HF cache (`HF_HOME` / `HF_HUB_CACHE`, layout
`models--org--name/{blobs,snapshots,refs}`), so models fetched by other tools are reused and ours
work in theirs. `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE` are honoured.

What the library gives us and what we add:
- huggingface_hub does the talking: `HfApi.model_info` (file list and sizes), `get_hf_file_metadata`
  (the HEAD call: etag, commit, size, redirects), its shared HTTP session (proxies, offline hook,
  user agent), its token handling and its error types, `scan_cache_dir` for the library listing.
- We stream each blob ourselves into `blobs/<etag>.incomplete` and keep that file when a
  download stops. huggingface_hub 2.x downloads into a per-process temporary name and deletes it
  on any error, so a cancelled or crashed multi-GB download would restart from zero; ours resumes
  with an HTTP Range request, in this process (dropped connection) or the next `pull`. It also
  lets a `threading.Event` stop the download between received chunks, and gives progress events.
- Only what a model needs is fetched: config, tokenizer files, generation config, chat template,
  license, and one copy of the weights (safetensors when present; the duplicate .bin/.h5/.msgpack/
  .onnx/.gguf/.ckpt copies and sub-folders are skipped).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import paths
from ..errors import (
    DownloadCancelled,
    FireflyError,
    HubAccessError,
    InvalidModelError,
    ModelNotFoundError,
    OfflineError,
    RemoteCodeError,
    UnsupportedModelError,
)
from .folder import LICENSE_PATTERN, PYTORCH_INDEX, SAFETENSORS_INDEX, SMALL_FILES, index_shards, needs_remote_code
from .inventory import cache_folder, find_installed, local_summary, looks_like_hub_id, pending_blobs, register_local

CONNECT_TIMEOUT_S = 4.0  # an unreachable hub must be reported within a few seconds
READ_TIMEOUT_S = 30.0  # a stalled connection: retried with Range after this long
MAX_RETRIES = 5  # consecutive failed attempts (no new byte) before giving up on a file
PROGRESS_INTERVAL_S = 0.1
SPEED_WINDOW_S = 5.0


# ---------------------------------------------------------------- events and records


@dataclass
class DownloadProgress:
    """A snapshot of a running `pull`, sent to the progress callback (about 10 per second)."""

    repo_id: str
    bytes_done: int
    bytes_total: int
    speed_bps: float
    eta_s: float | None
    current_file: str | None
    files_done: int
    files_total: int

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0

@dataclass
class DownloadPlan:
    """The files `pull` fetches from one commit, and the ones it leaves on the hub."""

    repo_id: str
    commit: str
    files: dict[str, int | None]  # name -> size in bytes (None if the hub did not say)
    skipped: list[str]

    @property
    def total_bytes(self) -> int:
        return sum(s or 0 for s in self.files.values())


# ---------------------------------------------------------------- environment


def hub_endpoint() -> str:
    """The hub to talk to: `HF_ENDPOINT` (read now, so it can change at runtime) or huggingface.co."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is on, now or when the library loaded."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "on")
    return constants.is_offline_mode()


def _timeout(read: float = READ_TIMEOUT_S):
    import httpx2

    return httpx2.Timeout(read, connect=CONNECT_TIMEOUT_S)



# ---------------------------------------------------------------- choosing files


def select_files(
    names: Iterable[str], *, index_shards: Iterable[str] | None = None, allow_remote_code: bool = False
) -> tuple[list[str], list[str]]:
    """Split a repo's file names into (what a model needs, what is skipped).

    Weights: the safetensors index and its shards, else `model.safetensors`, else all top-level
    safetensors; only without safetensors the PyTorch .bin (index + shards, or the single file).
    `index_shards` is the index's weight_map values, when the index has been read.
    """
    names = list(dict.fromkeys(names))
    top = [n for n in names if "/" not in n]
    wanted = [n for n in top if n in SMALL_FILES or n.endswith(".tiktoken") or LICENSE_PATTERN.match(n)]
    safetensors = [n for n in top if n.endswith(".safetensors")]
    shards = sorted(set(index_shards)) if index_shards is not None else None
    if safetensors:
        if SAFETENSORS_INDEX in top:
            weights = [SAFETENSORS_INDEX] + (shards if shards is not None else safetensors)
        elif "model.safetensors" in top:
            weights = ["model.safetensors"]
        else:
            weights = safetensors
    elif PYTORCH_INDEX in top:
        bins = [n for n in top if n.endswith(".bin")]
        weights = [PYTORCH_INDEX] + (shards if shards is not None else bins)
    elif "pytorch_model.bin" in top:
        weights = ["pytorch_model.bin"]
    else:
        weights = []
    wanted += [w for w in weights if w in names]
    if allow_remote_code:
        wanted += [n for n in top if n.endswith(".py")]
    wanted = list(dict.fromkeys(wanted))
    skipped = [n for n in names if n not in wanted]
    return wanted, skipped


# ---------------------------------------------------------------- progress


class _Progress:
    """Counts bytes across files and turns them into throttled DownloadProgress events."""

    def __init__(self, repo_id: str, callback: Callable[[DownloadProgress], None] | None) -> None:
        self.repo_id = repo_id
        self.callback = callback
        self.bytes_total = 0
        self.bytes_done = 0
        self.files_total = 0
        self.files_done = 0
        self.current: str | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._last_emit = 0.0

    def start(self, total: int, files_total: int, done: int, files_done: int) -> None:
        self.bytes_total, self.files_total = total, files_total
        self.bytes_done, self.files_done = done, files_done
        self._samples.clear()
        self._samples.append((time.monotonic(), done))
        self.emit(force=True)

    def add(self, n: int) -> None:
        self.bytes_done += n
        now = time.monotonic()
        self._samples.append((now, self.bytes_done))
        while len(self._samples) > 2 and now - self._samples[0][0] > SPEED_WINDOW_S:
            self._samples.popleft()
        self.emit()

    def file(self, name: str | None, done: bool = False) -> None:
        if done:
            self.files_done += 1
        self.current = name
        self.emit(force=True)

    def speed(self) -> float:
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 - t0 > 0.05 else 0.0

    def event(self) -> DownloadProgress:
        speed = self.speed()
        left = max(self.bytes_total - self.bytes_done, 0)
        eta = left / speed if speed > 0 else (0.0 if left == 0 else None)
        return DownloadProgress(
            self.repo_id, self.bytes_done, max(self.bytes_total, self.bytes_done), speed, eta,
            self.current, self.files_done, self.files_total,
        )

    def emit(self, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if force or now - self._last_emit >= PROGRESS_INTERVAL_S:
            self._last_emit = now
            self.callback(self.event())


# ---------------------------------------------------------------- downloading


def _hub_error(e: BaseException, repo_id: str) -> FireflyError:
    """Our error for a huggingface_hub / HTTP failure, with what to do about it."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hub_endpoint()
    if isinstance(e, GatedRepoError):
        return HubAccessError(
            f"{repo_id} is gated: the hub wants you to accept its conditions first",
            f"accept them at {endpoint}/{repo_id}, then set HF_TOKEN to a token of that account",
        )
    if isinstance(e, RevisionNotFoundError):
        return ModelNotFoundError(f"{repo_id} has no such revision on {endpoint}", "leave --revision out to get main")
    if isinstance(e, RepositoryNotFoundError):
        status = e.response.status_code if e.response is not None else None
        token_hint = "HF_TOKEN is set but has no access to it" if os.environ.get("HF_TOKEN") else "if it is private, set HF_TOKEN"
        return ModelNotFoundError(
            f"{repo_id} is not on {endpoint}" + (" (or it is private)" if status == 401 else ""),
            f"check the spelling (see: firefly list --all); {token_hint}",
        )
    if isinstance(e, RemoteEntryNotFoundError):
        return ModelNotFoundError(f"a file of {repo_id} disappeared from the hub during the download: {e}", "try again")
    if isinstance(e, (OfflineModeIsEnabled,)):
        return OfflineError(
            "offline mode is on (HF_HUB_OFFLINE), so nothing can be downloaded",
            f"unset HF_HUB_OFFLINE to download; {local_summary()}",
        )
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else "?"
        if status in (401, 403):
            return HubAccessError(f"the hub refused access to {repo_id} (HTTP {status})", "check HF_TOKEN")
        return OfflineError(f"the hub at {endpoint} answered HTTP {status} for {repo_id}", f"try again later; {local_summary()}")
    if isinstance(e, HFValidationError):
        return ModelNotFoundError(f"{repo_id!r} is not a valid hub id: {e}", "ids look like org/name, e.g. YeungNLP/firefly-1b4")
    if isinstance(e, OSError) and not isinstance(e, httpx2.TransportError):
        if e.errno == errno.ENOSPC:
            return FireflyError(
                f"the disk is full while downloading {repo_id} into {paths.hf_cache_dir()}",
                f"free some space (firefly rm ID deletes a model), then run `firefly pull {repo_id}` to resume",
            )
        return FireflyError(f"cannot write the download of {repo_id}: {e}", "check the permissions of HF_HOME")
    if isinstance(e, httpx2.TransportError):
        return OfflineError(
            f"cannot reach the hub at {endpoint} ({type(e).__name__}: {e})",
            "check the network, a proxy (HTTPS_PROXY) or HF_ENDPOINT; " + local_summary(),
        )
    return FireflyError(f"download of {repo_id} failed: {e}")


def _check_cancel(cancel: threading.Event | None, repo_id: str) -> None:
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled(
            f"download of {repo_id} cancelled", f"what was downloaded is kept; run `firefly pull {repo_id}` to resume"
        )


def _acquire_lock(lock_path: Path, cancel: threading.Event | None, repo_id: str):
    """A file lock shared with huggingface_hub's own downloads, waited for in a cancellable way."""
    from filelock import Timeout
    from huggingface_hub.utils import WeakFileLock

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        _check_cancel(cancel, repo_id)
        cm = WeakFileLock(lock_path, timeout=0.5)
        try:
            cm.__enter__()
            return cm
        except Timeout:
            continue


def _expected_hash(etag: str):
    # LFS files (weights) are named by their sha256; git files by a sha1 we don't re-derive here.
    return hashlib.sha256() if re.fullmatch(r"[0-9a-f]{64}", etag) else None


def _stream_blob(
    url: str, headers: dict[str, str], partial: Path, size: int | None, etag: str,
    progress: _Progress, cancel: threading.Event | None, repo_id: str,
) -> None:
    """Download into `partial`, resuming from its current length with a Range request."""
    import httpx2
    from huggingface_hub import get_session
    from huggingface_hub.utils import hf_raise_for_status

    hasher = _expected_hash(etag)
    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have > size:
        partial.unlink()
        progress.add(-have)
        have = 0
    if hasher is not None and have:
        with open(partial, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                hasher.update(block)
    failures = 0
    while size is None or have < size:
        _check_cancel(cancel, repo_id)
        h = dict(headers, **{"Accept-Encoding": "identity"})
        if have:
            h["Range"] = f"bytes={have}-"
        got_bytes = False
        try:
            with get_session().stream("GET", url, headers=h, timeout=_timeout(), follow_redirects=True) as r:
                if r.status_code == 416 and have:  # our partial is longer than the file: start over
                    partial.unlink()
                    progress.add(-have)
                    have, hasher = 0, _expected_hash(etag)
                    continue
                if r.status_code >= 400:
                    r.read()
                hf_raise_for_status(r)
                if have and r.status_code != 206:  # the server ignored Range: take it from the start
                    progress.add(-have)
                    have, hasher = 0, _expected_hash(etag)
                    partial.write_bytes(b"")
                with open(partial, "ab") as f:
                    for chunk in r.iter_bytes():
                        if cancel is not None and cancel.is_set():
                            break
                        f.write(chunk)
                        if hasher is not None:
                            hasher.update(chunk)
                        have += len(chunk)
                        got_bytes = True
                        progress.add(len(chunk))
                    f.flush()
                _check_cancel(cancel, repo_id)
            if size is None:
                break
            if have < size:  # connection closed early without an error: resume
                raise httpx2.RemoteProtocolError("connection closed before the end of the file")
        except (httpx2.TransportError,) as e:
            failures = 0 if got_bytes else failures + 1
            if failures > MAX_RETRIES:
                raise OfflineError(
                    f"the download of {repo_id} keeps failing ({type(e).__name__}: {e})",
                    f"{have / 1e6:.1f} MB of this file are kept; run `firefly pull {repo_id}` to resume",
                ) from None
            _sleep(min(0.5 * 2 ** max(failures - 1, 0), 4.0), cancel, repo_id)
    if size is not None and have != size:
        raise FireflyError(f"a file of {repo_id} is {have} bytes, the hub said {size}", "run `firefly pull` again")
    if hasher is not None and hasher.hexdigest() != etag:
        partial.unlink()
        raise FireflyError(
            f"a downloaded file of {repo_id} does not match its checksum (deleted)", "run `firefly pull` again"
        )


def _sleep(seconds: float, cancel: threading.Event | None, repo_id: str) -> None:
    if cancel is not None:
        cancel.wait(seconds)
        _check_cancel(cancel, repo_id)
    else:
        time.sleep(seconds)


def _link(blob: Path, pointer: Path) -> None:
    """The snapshot entry: a relative symlink to the blob, as huggingface_hub makes it (copy where
    the file system has no symlinks)."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        shutil.copyfile(blob, pointer)


def _fetch_file(
    repo_id: str, filename: str, commit: str, storage: Path,
    progress: _Progress, cancel: threading.Event | None,
) -> Path:
    """One file of the snapshot `commit` into the cache (skipped when already there)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    pointer = storage / "snapshots" / commit / filename
    if pointer.exists():
        return pointer
    endpoint = hub_endpoint()
    url = hf_hub_url(repo_id, filename, revision=commit, endpoint=endpoint)
    meta = get_hf_file_metadata(url, timeout=_timeout(10.0), endpoint=endpoint)
    if not meta.etag:
        raise OfflineError(f"{endpoint} does not look like a Hugging Face hub (no ETag for {filename})", "check HF_ENDPOINT")
    headers = build_hf_headers()
    location = meta.location or url
    if _origin(location) != _origin(url):
        headers.pop("authorization", None)  # a signed CDN url: the token stays on the hub
    blob = storage / "blobs" / meta.etag
    if not blob.exists():
        lock = _acquire_lock(paths.hf_cache_dir() / ".locks" / storage.name / f"{meta.etag}.lock", cancel, repo_id)
        try:
            if not blob.exists():
                partial = blob.with_name(blob.name + ".incomplete")
                blob.parent.mkdir(parents=True, exist_ok=True)
                _stream_blob(location, headers, partial, meta.size, meta.etag, progress, cancel, repo_id)
                os.replace(partial, blob)
        finally:
            lock.__exit__(None, None, None)
    else:
        progress.add(blob.stat().st_size)
    _link(blob, pointer)
    return pointer


def _origin(url: str) -> tuple[str, str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _already_have(storage: Path, commit: str, files: dict[str, int | None], blob_ids: set[str]) -> tuple[int, int]:
    """(bytes, files) of the plan already in the cache, partial blobs included, for a resumed pull."""
    done_bytes = done_files = 0
    for name, size in files.items():
        if (storage / "snapshots" / commit / name).exists():
            done_files += 1
            done_bytes += size or 0
    for partial in pending_blobs(storage):
        # ours (`<etag>.incomplete`) of a planned file; the library's temporary files are not resumable
        if partial.name.count(".") == 1 and partial.name.split(".")[0] in blob_ids:
            done_bytes += partial.stat().st_size
    return done_bytes, done_files


def plan_download(repo_id: str, *, revision: str | None = None, allow_remote_code: bool = False) -> tuple[DownloadPlan, Any]:
    """Ask the hub for the repo's files (one API call) and choose what to fetch.

    Also returns every file's (size, blob id): the blob id is the name the cache stores it under
    (sha256 for LFS files, the git id otherwise), which tells a resumable partial file apart.
    """
    from huggingface_hub import HfApi

    info = HfApi(endpoint=hub_endpoint()).model_info(
        repo_id, revision=revision, files_metadata=True, timeout=_timeout(15.0)
    )
    files = {
        s.rfilename: ((s.lfs.size, s.lfs.sha256) if s.lfs else (s.size, s.blob_id)) for s in (info.siblings or [])
    }
    if not info.sha:
        raise OfflineError(f"{hub_endpoint()} did not say which commit {repo_id} is at", "check HF_ENDPOINT")
    wanted, skipped = select_files(files, allow_remote_code=allow_remote_code)
    plan = DownloadPlan(info.id or repo_id, info.sha, {n: files[n][0] for n in wanted}, skipped)
    return plan, files


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
    allow_remote_code: bool = False,
    on_plan: Callable[[DownloadPlan], None] | None = None,
) -> Path:
    """Download what model `repo_id` needs into the HF cache and return its snapshot folder.

    Resumes whatever an earlier pull left (finished files are kept, a partial file continues with
    a Range request). `cancel.set()` from another thread stops it with DownloadCancelled, keeping
    the partial file. A model that needs remote code is refused unless `allow_remote_code`.
    Offline, or with the hub unreachable, a model already complete here is returned as it is.
    `on_plan` is called once with the files chosen (and skipped) before the weights download.
    """
    from .catalog import find_entry

    repo_id = str(repo_id).strip()
    if Path(repo_id).expanduser().is_dir():
        register_local(repo_id)
        return Path(repo_id).expanduser().resolve()
    if not looks_like_hub_id(repo_id):
        raise ModelNotFoundError(f"{repo_id!r} is not a hub id (org/name) or a folder", "example: firefly pull Qwen/Qwen2.5-0.5B-Instruct")
    _check_cancel(cancel, repo_id)
    entry = find_entry(repo_id)
    if entry and entry.needs_remote_code and not allow_remote_code:
        raise _remote_code_error(repo_id)
    existing = find_installed(repo_id)
    if is_offline():
        if existing and existing.complete:
            return existing.path
        raise OfflineError(
            f"cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE)",
            f"unset HF_HUB_OFFLINE to download; {local_summary()}",
        )
    tracker = _Progress(repo_id, progress)
    try:
        plan, remote = plan_download(repo_id, revision=revision, allow_remote_code=allow_remote_code)
        sizes = {n: size for n, (size, _) in remote.items()}
        repo_id = plan.repo_id
        storage = cache_folder(repo_id)
        snapshot = storage / "snapshots" / plan.commit
        # The first files decide the rest: remote code is refused before any weight is fetched,
        # and the weights index names the shards.
        first = [n for n in ("config.json", "tokenizer_config.json", SAFETENSORS_INDEX, PYTORCH_INDEX) if n in plan.files]
        if "config.json" not in plan.files:
            raise UnsupportedModelError(
                f"{repo_id} has no config.json, so it is not a transformers model firefly can load",
                "GGUF-only or adapter-only repos are not supported; look for the full model",
            )
        for name in first:
            _fetch_file(repo_id, name, plan.commit, storage, _Progress(repo_id, None), cancel)
        _write_ref(storage, revision, plan.commit)
        if needs_remote_code(snapshot) and not allow_remote_code:
            raise _remote_code_error(repo_id)
        index = next((snapshot / n for n in (SAFETENSORS_INDEX, PYTORCH_INDEX) if n in plan.files), None)
        if index is not None:
            wanted, plan.skipped = select_files(sizes, index_shards=index_shards(index), allow_remote_code=allow_remote_code)
            plan.files = {n: sizes.get(n) for n in wanted}
            lost = [n for n in plan.files if n not in sizes]
            if lost:
                raise InvalidModelError(f"{repo_id}: its weights index names files the repo does not have: {lost}")
        if not any(n.endswith((".safetensors", ".bin")) for n in plan.files):
            raise UnsupportedModelError(
                f"{repo_id} has no safetensors or PyTorch weights at the top of the repo",
                "firefly loads transformers models; .gguf/.onnx/.h5-only repos are not supported",
            )
        if on_plan is not None:
            on_plan(plan)
        blob_ids = {remote[n][1] for n in plan.files if n in remote and remote[n][1]}
        done, files_done = _already_have(storage, plan.commit, plan.files, blob_ids)
        _check_disk_space(storage, plan.total_bytes - done, repo_id)
        tracker.start(plan.total_bytes, len(plan.files), done, files_done)
        order = first + sorted((n for n in plan.files if n not in first), key=lambda n: (plan.files[n] or 0, n))
        for name in order:
            if (snapshot / name).exists():
                continue
            tracker.file(name)
            _fetch_file(repo_id, name, plan.commit, storage, tracker, cancel)
            tracker.file(None, done=True)
    except FireflyError:
        raise
    except Exception as e:  # noqa: BLE001 - every library/network error becomes one of ours
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
        import httpx2

        from huggingface_hub.errors import HFValidationError

        if not isinstance(e, (HfHubHTTPError, OfflineModeIsEnabled, HFValidationError, httpx2.HTTPError, OSError)):
            raise
        err = _hub_error(e, repo_id)
        if isinstance(err, OfflineError) and existing and existing.complete:
            return existing.path
        raise err from None
    tracker.current = None
    tracker.emit(force=True)
    _drop_stale_partials(storage)
    return snapshot


def _check_disk_space(storage: Path, needed: int, repo_id: str) -> None:
    """Refuse before downloading rather than fill the disk half way through a file."""
    probe = storage
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise FireflyError(
            f"{repo_id} needs {needed / 1e9:.2f} GB more, but only {free / 1e9:.2f} GB are free on the disk of {paths.hf_cache_dir()}",
            "free some space (firefly rm ID deletes a model) or point HF_HOME at a bigger disk",
        )


def _drop_stale_partials(storage: Path) -> None:
    """After a complete pull, our partial blobs left from an older commit can never finish:
    delete them (unless another process is downloading them right now) so the model lists complete."""
    from filelock import Timeout
    from huggingface_hub.utils import WeakFileLock

    for partial in pending_blobs(storage):
        if partial.name.count(".") != 1:
            continue  # the library's own temporary file: its process owns it
        etag = partial.name.split(".")[0]
        try:
            with WeakFileLock(paths.hf_cache_dir() / ".locks" / storage.name / f"{etag}.lock", timeout=0.05):
                partial.unlink(missing_ok=True)
        except Timeout:
            pass


def _remote_code_error(repo_id: str) -> RemoteCodeError:
    return RemoteCodeError(
        f"{repo_id} needs remote code: it runs Python files from the repo to load the model",
        f"read that code on the hub first; if you trust it: firefly pull {repo_id} --trust-remote-code",
    )


def _write_ref(storage: Path, revision: str | None, commit: str) -> None:
    rev = revision or "main"
    if rev == commit:
        return
    ref = storage / "refs" / rev
    ref.parent.mkdir(parents=True, exist_ok=True)
    if not ref.is_file() or ref.read_text().strip() != commit:
        ref.write_text(commit)
