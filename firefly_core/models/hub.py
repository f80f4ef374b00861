"""Getting models from the Hugging Face Hub into the standard cache, safely, with resume.

Downloads land in the standard HF cache (`HF_HOME` / `HF_HUB_CACHE`, layout
`models--org--name/{blobs,snapshots,refs}`), so models fetched by other tools are reused and ours
work in theirs. `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE` are honoured.

What the library gives us and what we add:
- huggingface_hub does the talking: the model-info request as `HfApi.model_info` makes it and its
  `ModelInfo` parser (file list, sizes, hashes; read here with a size and time bound),
  `get_hf_file_metadata` (the HEAD call: etag, size, redirects that stay on the hub), its shared
  HTTP session (proxies, offline hook, user agent), its token handling and error types, its name
  rules (`validate_repo_id`, its relative-file-name check, via `names.py`) and its cache layout
  (`repo_folder_name`, via `inventory.cache_folder`).
- Only what a model needs is fetched: config, tokenizer files, generation config, chat template,
  license, and one copy of the weights (safetensors when present; the duplicate .bin/.h5/.msgpack/
  .onnx/.gguf/.ckpt copies are skipped). Only top-level files: a repo that keeps its weights in a
  subfolder is refused (transformers loads a folder's top level; supporting subfolders would widen
  what a hostile name can reach for no model we know of).

Every value from the server is untrusted (see names.py): the commit id must be 40 hex, an ETag
must be a sha256 or git blob sha1 to become a blob name, every file name (listing and weights
index alike) passes one rule, the repo id the server echoes never changes where files go, and
every path is resolved and checked to lie inside the repo's cache folder before anything is
written, renamed or linked. A file's declared size bounds what is written (more is cut off and the
file discarded); a file becomes a blob only after its bytes match its hash (sha256 for LFS files,
git blob sha1 for the others); retries are bounded per file with backoff.

The one place we deliberately differ from huggingface_hub: it downloads into a per-process
temporary `blobs/<etag>.<random>.incomplete` and deletes it on any error, so a cancelled or crashed
multi-GB download restarts from zero. We stream into a shared `blobs/<etag>.incomplete`, keep it
when a download stops, and continue it with an HTTP Range request (in this process after a dropped
connection, or in the next `pull` after Ctrl-C or kill -9). This is safe because (1) the file is
only ever written while holding the same per-blob file lock huggingface_hub uses
(`.locks/<repo folder>/<etag>.lock`), so two pulls (ours or the library's) never write it at once;
(2) its name is the content hash, so a partial can only ever be continued as the same content; and
(3) it becomes `blobs/<etag>` (by an atomic rename) only after the whole file is hashed and matches,
so a reader never sees a partial or corrupt blob. A resumed file that fails its hash is started
once more from zero. The library ignores our `.incomplete` name (and we ignore its random ones).
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

from .. import atomic, paths
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
from ..units import human_bytes
from . import names
from .folder import LICENSE_PATTERN, PYTORCH_INDEX, SAFETENSORS_INDEX, SMALL_FILES, index_shards, needs_remote_code
from .inventory import (
    cache_folder, find_cache_folder, find_installed, local_summary, looks_like_hub_id, pending_blobs,
    register_local, valid_repo_id,
)

CONNECT_TIMEOUT_S = 4.0  # an unreachable hub must be reported within a few seconds
READ_TIMEOUT_S = 30.0  # a stalled connection: retried with Range after this long
MAX_FAILURES = 5  # attempts of one file that bring too few new bytes, before giving up on it
MIN_PROGRESS_BYTES = 1 << 16  # an attempt that brings at least this much (or the rest) is progress, not a failure
RETRY_BACKOFF_S = 0.5  # pause after the first failure of a file, doubled after each next one
MAX_BACKOFF_S = 4.0
MODEL_INFO_MAX_BYTES = 64 * 1024 * 1024  # the real hub's model info for a repo of thousands of files is a few MB
MODEL_INFO_DEADLINE_S = 60.0
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


def _timeout(read: float | None = None):
    import httpx2

    return httpx2.Timeout(READ_TIMEOUT_S if read is None else read, connect=CONNECT_TIMEOUT_S)



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


# ---------------------------------------------------------------- what the hub says


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo as the hub's listing describes it, after validation."""

    name: str
    size: int | None
    sha256: str | None = None  # LFS files: the sha256 of the content
    blob_id: str | None = None  # other files: the git blob sha1 of the content

    @property
    def expected_blob(self) -> str | None:
        """The blob name (content hash) the listing promises; the ETag must agree with it."""
        return self.sha256 or self.blob_id


def _bad_hub(what: str) -> FireflyError:
    return FireflyError(
        f"{hub_endpoint()} {what}",
        "this endpoint does not behave like a Hugging Face hub: check HF_ENDPOINT (unset it for "
        "huggingface.co) or your proxy, then try again",
    )


def _cut(value: object, limit: int = 120) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _model_info(repo_id: str, revision: str | None, repo_type: str = "model") -> Any:
    """The repo's model (or dataset) info with files metadata: the request `HfApi.model_info(files_metadata=True)`
    makes (same URL, headers, session, error mapping and `ModelInfo` parser), but read with bounds
    (MODEL_INFO_MAX_BYTES, MODEL_INFO_DEADLINE_S), so an endless or trickling answer cannot hang
    the pull or fill the memory. A body that is not a hub's JSON becomes our error naming the endpoint.
    """
    import json
    from urllib.parse import quote

    import httpx2
    from huggingface_hub import get_session
    from huggingface_hub.hf_api import DatasetInfo, ModelInfo
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, validate_repo_id

    validate_repo_id(repo_id)
    url = f"{hub_endpoint()}/api/{repo_type}s/{repo_id}"
    if revision is not None:
        url += f"/revision/{quote(revision, safe='')}"
    t0 = time.monotonic()
    body = bytearray()
    with get_session().stream(
        "GET", url, headers=build_hf_headers(), params={"blobs": True}, timeout=_timeout(15.0)
    ) as r:
        for chunk in r.iter_bytes():
            body += chunk
            if len(body) > MODEL_INFO_MAX_BYTES or time.monotonic() - t0 > MODEL_INFO_DEADLINE_S:
                raise _bad_hub(
                    f"sent more than {human_bytes(MODEL_INFO_MAX_BYTES)} of model info for {repo_id}, or took longer "
                    f"than {MODEL_INFO_DEADLINE_S:.0f} s; firefly stopped reading"
                )
        answer = httpx2.Response(r.status_code, headers=r.headers, content=bytes(body), request=r.request)
    hf_raise_for_status(answer)  # the hub's own errors (not found, gated, ...) as the library words them
    try:
        return (DatasetInfo if repo_type == "dataset" else ModelInfo)(**json.loads(bytes(body)))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _bad_hub(
            f"answered the model info of {repo_id} with something that is not a hub's model info "
            f"({type(e).__name__}: {_cut(e)})"
        ) from None


def _size_value(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad_hub(f"gave {names.quoted(value)} as the size of {what}, which is not a number of bytes")
    return value


def _listing(info: Any, repo_id: str) -> dict[str, RemoteFile]:
    """The repo's files from model info, every name, size and hash checked (names.check_file_name)."""
    siblings = info.siblings
    if not isinstance(siblings, list):
        raise _bad_hub(f"sent model info for {repo_id} without a file list")
    where = f"the file list of {repo_id} from {hub_endpoint()}"
    files: dict[str, RemoteFile] = {}
    for s in siblings:
        name = names.check_file_name(getattr(s, "rfilename", None), where=where)
        if name in files:
            raise _bad_hub(f"lists {names.quoted(name)} twice in the file list of {repo_id}")
        lfs = s.lfs
        if lfs:
            sha = lfs.sha256.lower() if isinstance(lfs.sha256, str) else None
            if sha is None or not names.SHA256_RE.fullmatch(sha):
                raise _bad_hub(
                    f"gave {names.quoted(lfs.sha256)} as the sha256 of {name} in {repo_id}, which is not a sha256"
                )
            files[name] = RemoteFile(name, _size_value(lfs.size, name), sha256=sha)
        else:
            blob = s.blob_id.lower() if isinstance(s.blob_id, str) else None
            if s.blob_id is not None and (blob is None or not names.GIT_SHA1_RE.fullmatch(blob)):
                raise _bad_hub(f"gave {names.quoted(s.blob_id)} as the git id of {name} in {repo_id}, which is not one")
            files[name] = RemoteFile(name, _size_value(s.size, name), blob_id=blob)
    return files


# ---------------------------------------------------------------- paths inside the cache


def _inside(storage: Path, path: Path, *, follow: bool = True) -> Path:
    """`path`, after checking that it lies inside the repo's cache folder `storage`.

    Resolves symlinks (all of them with `follow`, else only the parent's, for an entry we are about
    to replace rather than open), so a link planted in the cache cannot send a write elsewhere.
    """
    root = storage.resolve()
    target = path.resolve() if follow else path.parent.resolve() / path.name
    if target != root and root not in target.parents:
        raise FireflyError(
            f"refusing to write {path}: it leads outside {storage} (to {target})",
            "a symbolic link in the cache points elsewhere; delete the model (firefly rm ID) and pull again",
        )
    return path


# ---------------------------------------------------------------- downloading


def _library_error(e: Exception, repo_id: str) -> FireflyError | None:
    """A huggingface_hub / HTTP / file-system error of a pull as one of ours (`_hub_error`), or
    None for anything else (a bug, which the caller re-raises as it is)."""
    import httpx2
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, OfflineModeIsEnabled

    if not isinstance(e, (HfHubHTTPError, OfflineModeIsEnabled, HFValidationError, httpx2.HTTPError, OSError)):
        return None
    return _hub_error(e, repo_id)


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
    if isinstance(e, (httpx2.UnsupportedProtocol, httpx2.TooManyRedirects)):
        return _redirect_error(repo_id, e)
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
    return FireflyError(f"download of {repo_id} failed: {type(e).__name__}: {_cut(e)}")


def _redirect_error(repo_id: str, e: BaseException | str) -> FireflyError:
    return FireflyError(
        f"the hub at {hub_endpoint()} redirected a download of {repo_id} somewhere firefly will not follow ({_cut(e)})",
        "downloads follow only http(s) redirects, a few at most; check HF_ENDPOINT or your proxy",
    )


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


def _lock_path(storage: Path, blob: str) -> Path:
    """huggingface_hub's lock for one blob: `.locks/<repo folder>/<blob>.lock` in the cache root
    (checked to stay there, like every path we write)."""
    cache = paths.hf_cache_dir()
    return _inside(cache, cache / ".locks" / storage.name / f"{blob}.lock")


def _hasher(blob: str, size: int):
    """The hash a blob name promises: sha256 of the content (64 hex) or git's blob sha1 (40 hex).

    git's id hashes a header with the length first, so the declared size goes in now; a body of
    another length cannot match anyway. (huggingface_hub's `sha_fileobj` and `git_hash` give only a
    finished digest of a whole file or of bytes in memory; hashing while streaming needs a hasher
    that continues after a resume, and spares a second read of a multi-GB file.)
    """
    if len(blob) == 64:
        return hashlib.sha256()
    h = hashlib.sha1()
    h.update(b"blob %d\0" % size)
    return h


class _Retry(Exception):
    """An attempt that ended without the whole file, worth another try (counted per file)."""


def _content_range_start(value: str | None, size: int) -> int | None:
    """The first byte of a `Content-Range: bytes N-M/T` answer, or None when it is not for this file."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m or (m.group(3) != "*" and int(m.group(3)) != size):
        return None
    return int(m.group(1))


def _stream_blob(
    url: str, headers: dict[str, str], partial: Path, size: int, blob: str, name: str,
    progress: _Progress, cancel: threading.Event | None, repo_id: str,
) -> None:
    """Download into `partial` until it holds exactly `size` bytes whose hash is `blob`.

    Resumes from the partial's current length with a Range request. Never writes past `size`:
    a server that sends more is cut off at once and the partial deleted. An attempt that brings
    fewer than MIN_PROGRESS_BYTES new bytes is a failure; after MAX_FAILURES the file is given
    up with the partial kept (a later `pull` resumes it). Between failures: RETRY_BACKOFF_S,
    doubling, at most MAX_BACKOFF_S.
    """
    import httpx2
    from huggingface_hub import get_session
    from huggingface_hub.utils import hf_raise_for_status

    with open(partial, "ab"):  # exists from here on, even for an empty file
        pass
    have = partial.stat().st_size
    if have > size:  # not a prefix of this file
        partial.unlink()
        progress.add(-have)
        have = 0
    hasher = _hasher(blob, size)
    if have:
        with open(partial, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                hasher.update(block)
    resumed_from, retried_from_zero = have, False
    failures = 0

    def restart() -> None:
        nonlocal have, hasher
        with open(partial, "wb"):
            pass
        progress.add(-have)
        have, hasher = 0, _hasher(blob, size)

    while True:
        _check_cancel(cancel, repo_id)
        if have == size:
            if hasher.hexdigest() == blob:
                return
            if resumed_from and not retried_from_zero:  # the kept part may be what was wrong
                retried_from_zero, resumed_from = True, 0
                restart()
                continue
            partial.unlink(missing_ok=True)
            progress.add(-have)
            raise FireflyError(
                f"{name} of {repo_id} from {hub_endpoint()} does not match its checksum "
                f"({'sha256' if len(blob) == 64 else 'git sha1'} {blob[:12]}...); the download was deleted",
                "the hub, a mirror or a proxy sent wrong bytes; try again, or check HF_ENDPOINT / your proxy",
            )
        start = have
        h = dict(headers, **{"Accept-Encoding": "identity"})
        if have:
            h["Range"] = f"bytes={have}-"
        try:
            with get_session().stream("GET", url, headers=h, timeout=_timeout(), follow_redirects=True) as r:
                if r.status_code == 416 and have:  # our partial is not a prefix of what the server has
                    restart()
                    raise _Retry("the server refused to continue the file (HTTP 416)")
                if r.status_code in (429, 500, 502, 503, 504):
                    raise _Retry(f"HTTP {r.status_code}")
                if r.status_code >= 400:
                    hf_raise_for_status(_bounded(r))
                if have and (r.status_code != 206 or _content_range_start(r.headers.get("Content-Range"), size) != have):
                    restart()  # the server ignored our Range, or answered another one: take it from the start
                    if r.status_code == 206:
                        raise _Retry("the server answered another byte range than the one asked")
                declared = r.headers.get("Content-Length")
                if declared is not None and declared.strip().isdigit() and int(declared) > size - have:
                    _discard_oversized(partial, progress, have)
                    raise _oversized_error(name, repo_id, size)
                with open(partial, "ab") as f:
                    for chunk in r.iter_bytes():
                        if cancel is not None and cancel.is_set():
                            break
                        if have + len(chunk) > size:
                            f.close()
                            _discard_oversized(partial, progress, have)
                            raise _oversized_error(name, repo_id, size)
                        f.write(chunk)
                        hasher.update(chunk)
                        have += len(chunk)
                        progress.add(len(chunk))
                _check_cancel(cancel, repo_id)
            if have < size:
                raise _Retry(f"the connection closed after {have} of {size} bytes")
        except (httpx2.UnsupportedProtocol, httpx2.TooManyRedirects) as e:
            raise _redirect_error(repo_id, e) from None
        except (httpx2.TransportError, _Retry) as e:
            if have - start < min(MIN_PROGRESS_BYTES, size - start):
                failures += 1
            if failures >= MAX_FAILURES:
                raise OfflineError(
                    f"the download of {name} of {repo_id} from {hub_endpoint()} keeps failing "
                    f"({type(e).__name__}: {_cut(e)}); gave up after {failures} tries",
                    f"{human_bytes(have)} of this file are kept; run `firefly pull {repo_id}` to resume "
                    "(if it keeps failing, the hub or a proxy is misbehaving: check HF_ENDPOINT)",
                ) from None
            if have - start < min(MIN_PROGRESS_BYTES, size - start):
                _sleep(min(RETRY_BACKOFF_S * 2 ** (failures - 1), MAX_BACKOFF_S), cancel, repo_id)


def _bounded(r: Any, limit: int = 1 << 16) -> Any:
    """A streamed error answer with at most `limit` bytes of its body read (enough for the hub's
    error message; an endless error body is not read to its end)."""
    import httpx2

    body = bytearray()
    for chunk in r.iter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return httpx2.Response(r.status_code, headers=r.headers, content=bytes(body[:limit]), request=r.request)


def _discard_oversized(partial: Path, progress: _Progress, have: int) -> None:
    partial.unlink(missing_ok=True)
    progress.add(-have)


def _oversized_error(name: str, repo_id: str, size: int) -> FireflyError:
    return FireflyError(
        f"{hub_endpoint()} sent more than the {size} bytes it declared for {name} of {repo_id}; "
        "the download was stopped and the partial file deleted",
        "the hub, a mirror or a proxy is misbehaving; check HF_ENDPOINT or your proxy, then try again",
    )


def _sleep(seconds: float, cancel: threading.Event | None, repo_id: str) -> None:
    if cancel is not None:
        cancel.wait(seconds)
        _check_cancel(cancel, repo_id)
    elif seconds > 0:
        time.sleep(seconds)


def _link(storage: Path, blob: Path, pointer: Path) -> None:
    """The snapshot entry: a relative symlink to the blob, as huggingface_hub makes it (copy where
    the file system has no symlinks). Whatever was at `pointer` is replaced, never followed."""
    _inside(storage, pointer.parent).mkdir(parents=True, exist_ok=True)
    _inside(storage, pointer, follow=False)
    if pointer.is_dir() and not pointer.is_symlink():
        raise FireflyError(
            f"{pointer} is a folder where a file of the model belongs", "delete the model (firefly rm ID) and pull again"
        )
    if os.path.lexists(pointer):
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except FileExistsError:  # another pull linked it between our unlink and symlink
        if os.path.realpath(pointer) != os.path.realpath(blob):
            raise FireflyError(f"{pointer} changed while firefly was writing it", "run `firefly pull` again") from None
    except OSError:
        shutil.copyfile(blob, pointer)


def _pointer_ok(storage: Path, pointer: Path, size: int | None) -> bool:
    """A snapshot entry already there: a file (or a link to one inside the cache) of the listed size;
    anything else (a dangling or outside link, a truncated blob) is fetched again."""
    if not pointer.is_file():
        return False
    try:
        _inside(storage, pointer)
    except FireflyError:
        return False
    return size is None or pointer.stat().st_size == size


def _fetch_file(
    repo_id: str, remote: RemoteFile, commit: str, storage: Path,
    progress: _Progress, cancel: threading.Event | None, repo_type: str = "model",
) -> Path:
    """One file of the snapshot `commit` into the cache (skipped when already there)."""
    from urllib.parse import urljoin

    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    name = remote.name
    pointer = storage / "snapshots" / commit / name
    _inside(storage, pointer.parent)
    if _pointer_ok(storage, pointer, remote.size):
        return pointer
    endpoint = hub_endpoint()
    url = hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint, repo_type=repo_type)
    meta = get_hf_file_metadata(url, timeout=_timeout(10.0), endpoint=endpoint)
    blob_id = names.blob_name(meta.etag, filename=f"{name} of {repo_id}", endpoint=endpoint)
    if remote.expected_blob and remote.expected_blob != blob_id:
        raise _bad_hub(
            f"disagrees with itself about {name} of {repo_id}: its file list says {remote.expected_blob}, "
            f"the download says {blob_id}"
        )
    size = remote.size
    head_size = meta.size if isinstance(meta.size, int) and meta.size >= 0 else None
    if size is not None and head_size is not None and head_size != size:
        raise _bad_hub(f"disagrees with itself about the size of {name} of {repo_id}: {size} or {head_size} bytes")
    size = size if size is not None else head_size
    if size is None:
        raise _bad_hub(f"did not say how big {name} of {repo_id} is, so its download could not be bounded")
    location = urljoin(url, meta.location or url)
    if _origin(location)[0] not in ("http", "https"):
        raise _redirect_error(repo_id, f"to {names.quoted(location)}")
    headers = build_hf_headers()
    if _origin(location) != _origin(url):
        headers.pop("authorization", None)  # a signed CDN url: the token stays on the hub
    blob = _inside(storage, storage / "blobs" / blob_id, follow=False)
    _inside(storage, blob.parent)
    if not _blob_ok(storage, blob, size):
        lock = _acquire_lock(_lock_path(storage, blob_id), cancel, repo_id)
        try:
            if not _blob_ok(storage, blob, size):
                blob.parent.mkdir(parents=True, exist_ok=True)
                partial = _inside(storage, blob.with_name(blob.name + ".incomplete"))
                _stream_blob(location, headers, partial, size, blob_id, name, progress, cancel, repo_id)
                os.replace(partial, blob)
            else:
                progress.add(size)
        finally:
            lock.__exit__(None, None, None)
    else:
        progress.add(size)
    _link(storage, blob, pointer)
    return pointer


def _blob_ok(storage: Path, blob: Path, size: int) -> bool:
    """A finished blob to reuse: a regular file inside the cache of the declared size (it was hashed
    when it was written, by us or by huggingface_hub). A blob of another size is downloaded again."""
    if blob.is_symlink() or not blob.is_file():
        if blob.is_symlink():
            raise FireflyError(
                f"{blob} is a symbolic link, not a downloaded file",
                "delete the model (firefly rm ID) and pull again",
            )
        return False
    return blob.stat().st_size == size


def _origin(url: str) -> tuple[str, str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _already_have(storage: Path, commit: str, files: dict[str, int | None], blob_ids: set[str]) -> tuple[int, int]:
    """(bytes, files) of the plan already in the cache, partial blobs included, for a resumed pull."""
    done_bytes = done_files = 0
    for name, size in files.items():
        if _pointer_ok(storage, storage / "snapshots" / commit / name, size):
            done_files += 1
            done_bytes += size or 0
    for partial in pending_blobs(storage):
        # ours (`<etag>.incomplete`) of a planned file; the library's temporary files are not resumable
        if partial.name.count(".") == 1 and partial.name.split(".")[0] in blob_ids and not partial.is_symlink():
            done_bytes += partial.stat().st_size
    return done_bytes, done_files


def plan_download(
    repo_id: str, *, revision: str | None = None, allow_remote_code: bool = False
) -> tuple[DownloadPlan, dict[str, RemoteFile]]:
    """Ask the hub for the repo's files (one API call), check what it says, and choose what to fetch.

    Also returns every file as the listing describes it (size, content hash): the hash is the
    name the cache stores it under, which tells a resumable partial file apart.
    """
    info = _model_info(repo_id, revision)
    commit = names.check_commit_id(info.sha, repo_id=repo_id, endpoint=hub_endpoint())
    if revision is not None and names.is_commit_id(revision) and commit != revision:
        raise _bad_hub(f"answered a request for commit {revision} of {repo_id} with commit {commit}")
    remote = _listing(info, repo_id)
    wanted, skipped = select_files(remote, allow_remote_code=allow_remote_code)
    echoed = info.id if isinstance(info.id, str) else ""
    # The id the server echoes is used only for its spelling (case) of the same repo, never to
    # choose another folder.
    canonical = echoed if echoed.lower() == repo_id.lower() and valid_repo_id(echoed) else repo_id
    plan = DownloadPlan(canonical, commit, {n: remote[n].size for n in wanted}, skipped)
    return plan, remote


def _storage_for(repo_id: str, canonical: str) -> Path:
    """The cache folder of the repo the user asked for: an existing one of any case, else the
    canonical spelling (the hub is case-insensitive, the cache folder names are not)."""
    return find_cache_folder(repo_id) or cache_folder(canonical)


def _check_shards(index: Path, repo_id: str, remote: dict[str, RemoteFile]) -> list[str]:
    """The weights index's shard names, by the same name rule as the listing, top level, with the
    index's own extension, and all in the repo."""
    shards = index_shards(index)
    where = f"the weights index {index.name} of {repo_id}"
    ext = ".safetensors" if index.name == SAFETENSORS_INDEX else ".bin"
    for shard in shards:
        names.check_file_name(shard, where=where)
        if not names.is_top_level(shard):
            raise UnsupportedModelError(
                f"{where} keeps its weights in a subfolder ({names.quoted(shard)}); firefly downloads top-level files only",
                "use a repo with the weights at its top level",
            )
        if not shard.endswith(ext):
            raise InvalidModelError(f"{where} names {names.quoted(shard)}, which is not a {ext} file")
    lost = [s for s in shards if s not in remote]
    if lost:
        raise InvalidModelError(f"{where} names files the repo does not have: {', '.join(map(names.quoted, lost[:5]))}")
    return shards


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
    if revision is not None:
        revision = names.check_revision(revision)
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
        storage = _storage_for(repo_id, plan.repo_id)
        repo_id = plan.repo_id
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
            _fetch_file(repo_id, remote[name], plan.commit, storage, _Progress(repo_id, None), cancel)
        _write_ref(storage, revision, plan.commit)
        if needs_remote_code(snapshot) and not allow_remote_code:
            raise _remote_code_error(repo_id)
        index = next((snapshot / n for n in (SAFETENSORS_INDEX, PYTORCH_INDEX) if n in plan.files), None)
        if index is not None:
            shards = _check_shards(index, repo_id, remote)
            wanted, plan.skipped = select_files(remote, index_shards=shards, allow_remote_code=allow_remote_code)
            plan.files = {n: remote[n].size for n in wanted}
        if not any(n.endswith((".safetensors", ".bin")) for n in plan.files):
            raise UnsupportedModelError(
                f"{repo_id} has no safetensors or PyTorch weights at the top of the repo",
                "firefly loads transformers models; .gguf/.onnx/.h5-only repos and weights in subfolders are not supported",
            )
        if on_plan is not None:
            on_plan(plan)
        blob_ids = {remote[n].expected_blob for n in plan.files if remote[n].expected_blob}
        done, files_done = _already_have(storage, plan.commit, plan.files, blob_ids)
        _check_disk_space(storage, plan.total_bytes - done, repo_id)
        tracker.start(plan.total_bytes, len(plan.files), done, files_done)
        order = first + sorted((n for n in plan.files if n not in first), key=lambda n: (plan.files[n] or 0, n))
        for name in order:
            if _pointer_ok(storage, snapshot / name, remote[name].size):
                continue
            tracker.file(name)
            _fetch_file(repo_id, remote[name], plan.commit, storage, tracker, cancel)
            tracker.file(None, done=True)
    except FireflyError:
        raise
    except Exception as e:  # noqa: BLE001 - every library/network error becomes one of ours
        err = _library_error(e, repo_id)
        if err is None:
            raise
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
        if partial.is_symlink() or not (names.SHA256_RE.fullmatch(etag) or names.GIT_SHA1_RE.fullmatch(etag)):
            continue  # not one of ours: left alone
        try:
            with WeakFileLock(_lock_path(storage, etag), timeout=0.05):
                partial.unlink(missing_ok=True)
        except Timeout:
            pass


def _remote_code_error(repo_id: str) -> RemoteCodeError:
    return RemoteCodeError(
        f"{repo_id} needs remote code: it runs Python files from the repo to load the model",
        f"read that code on the hub first; if you trust it: firefly pull {repo_id} --trust-remote-code",
    )


def _write_ref(storage: Path, revision: str | None, commit: str) -> None:
    """`refs/<revision>` = commit, atomically (it repairs a ref that holds garbage). `revision` was
    checked by names.check_revision, and the path is checked to stay in the cache folder anyway."""
    rev = revision or "main"
    if rev == commit:
        return
    ref = _inside(storage, storage / "refs" / rev, follow=False)
    _inside(storage, ref.parent)
    if ref.is_dir() and not ref.is_symlink():
        raise FireflyError(f"{ref} is a folder, where git keeps a commit id", "delete the model (firefly rm ID) and pull again")
    try:
        if ref.is_file() and not ref.is_symlink() and ref.read_bytes().strip() == commit.encode():
            return
    except OSError:
        pass
    if ref.is_symlink():
        ref.unlink()
    atomic.write_text(ref, commit)


# ---------------------------------------------------------------- datasets
#
# `firefly pull --dataset ID` (C-Eval, CMMLU, your own exams on the hub): the same safe downloader
# as models (one bounded info request, every name/hash/size checked, resumable blobs, the standard
# cache layout `datasets--org--name`), choosing only data files firefly can read: CSV, JSONL and
# Parquet files (top level or one folder down, as `{subject}/{split}-*.parquet`), plus the README
# and licence. Loading scripts (.py) and archives are never fetched: nothing from a dataset repo runs
# or is unpacked here.

DATASET_SUFFIXES = (".csv", ".jsonl", ".parquet")
DATASET_MAX_DEPTH = 3  # parts of a file's path: `data/dev/x.csv` at most
DATASET_MAX_BYTES = 2 * 1024**3  # C-Eval is ~10 MB and CMMLU ~20 MB; a repo of more is not an exam


def dataset_cache_folder(repo_id: str) -> Path:
    """The standard HF cache folder of dataset `repo_id` (`datasets--org--name`)."""
    from huggingface_hub.file_download import repo_folder_name

    return paths.hf_cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="dataset")


def find_dataset(repo_id: str) -> Path | None:
    """The snapshot folder of a downloaded dataset (the one refs/main names, else the newest), or None."""
    from .inventory import _current_snapshot

    if not valid_repo_id(repo_id):
        return None
    storage = dataset_cache_folder(repo_id)
    if not storage.is_dir() or storage.is_symlink():
        return None
    snapshot, _problem = _current_snapshot(storage)
    return snapshot


def select_dataset_files(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split a dataset repo's file names into (data files firefly reads, the rest)."""
    wanted, skipped = [], []
    for n in dict.fromkeys(names):
        depth = n.count("/") + 1
        data = n.lower().endswith(DATASET_SUFFIXES) and depth <= DATASET_MAX_DEPTH
        top_doc = depth == 1 and (n == "README.md" or LICENSE_PATTERN.match(n))
        (wanted if data or top_doc else skipped).append(n)
    return wanted, skipped


def pull_dataset(
    repo_id: str,
    *,
    revision: str | None = None,
    progress: Callable[[DownloadProgress], None] | None = None,
    cancel: threading.Event | None = None,
    on_plan: Callable[[DownloadPlan], None] | None = None,
) -> Path:
    """Download dataset `repo_id`'s data files into the HF cache and return its snapshot folder.

    Offline, a dataset already here is returned as it is. Resumes like `pull`; refuses a repo with no
    data file firefly reads, or with more than DATASET_MAX_BYTES of them.
    """
    repo_id = str(repo_id).strip()
    if not looks_like_hub_id(repo_id) or not valid_repo_id(repo_id):
        raise ModelNotFoundError(f"{repo_id!r} is not a hub dataset id (org/name)", "example: firefly pull --dataset ceval/ceval-exam")
    if revision is not None:
        revision = names.check_revision(revision)
    _check_cancel(cancel, repo_id)
    existing = find_dataset(repo_id)
    if is_offline():
        if existing is not None:
            return existing
        raise OfflineError(f"cannot download dataset {repo_id}: offline mode is on (HF_HUB_OFFLINE)", "unset HF_HUB_OFFLINE to download")
    tracker = _Progress(repo_id, progress)
    try:
        info = _model_info(repo_id, revision, repo_type="dataset")
        commit = names.check_commit_id(info.sha, repo_id=repo_id, endpoint=hub_endpoint())
        if revision is not None and names.is_commit_id(revision) and commit != revision:
            raise _bad_hub(f"answered a request for commit {revision} of {repo_id} with commit {commit}")
        remote = _listing(info, repo_id)
        wanted, skipped = select_dataset_files(remote)
        if not any(n.lower().endswith(DATASET_SUFFIXES) for n in wanted):
            raise UnsupportedModelError(
                f"dataset {repo_id} has no CSV, JSONL or Parquet files firefly can read",
                "firefly reads exam files as released (C-Eval/CMMLU CSV folders, Parquet per subject); "
                "datasets that need a loading script or an archive unpacked are not supported",
            )
        plan = DownloadPlan(repo_id, commit, {n: remote[n].size for n in wanted}, skipped)
        if plan.total_bytes > DATASET_MAX_BYTES:
            raise FireflyError(
                f"dataset {repo_id} lists {human_bytes(plan.total_bytes)} of data files; firefly fetches exams of at most "
                f"{human_bytes(DATASET_MAX_BYTES)}",
                "this does not look like an exam; download it with the datasets library instead",
            )
        storage = existing.parent.parent if existing is not None else dataset_cache_folder(repo_id)
        snapshot = storage / "snapshots" / commit
        if on_plan is not None:
            on_plan(plan)
        blob_ids = {remote[n].expected_blob for n in plan.files if remote[n].expected_blob}
        done, files_done = _already_have(storage, commit, plan.files, blob_ids)
        _check_disk_space(storage, plan.total_bytes - done, repo_id)
        tracker.start(plan.total_bytes, len(plan.files), done, files_done)
        for name in sorted(plan.files, key=lambda n: (plan.files[n] or 0, n)):
            if _pointer_ok(storage, snapshot / name, remote[name].size):
                continue
            tracker.file(name)
            _fetch_file(repo_id, remote[name], commit, storage, tracker, cancel, repo_type="dataset")
            tracker.file(None, done=True)
        _write_ref(storage, revision, commit)
    except FireflyError:
        raise
    except Exception as e:  # noqa: BLE001 - every library/network error becomes one of ours
        err = _library_error(e, repo_id)
        if err is None:
            raise
        if isinstance(err, OfflineError) and existing is not None:
            return existing
        raise err from None
    tracker.current = None
    tracker.emit(force=True)
    _drop_stale_partials(storage)
    return snapshot
