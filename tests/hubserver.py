"""A small Hugging Face Hub-compatible HTTP server on loopback, so download tests run the real client.

It serves what huggingface_hub 2.x asks for when it downloads a model:

- `GET /api/models/{repo}[/revision/{rev}]` (model_info): id, sha, siblings with size, blobId and
  lfs {size, sha256, pointerSize} (`?blobs=true`); `GET /api/models/{repo}/tree/{rev}` (the file
  list snapshot_download asks for).
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: small files answered directly with ETag = git blob
  sha1, X-Repo-Commit and Content-Length; LFS files (weights) answered with a 302 to a "CDN" on
  another origin (`localhost` instead of `127.0.0.1`, so the client does not follow it on HEAD and
  must drop the Authorization header), with X-Linked-Etag = sha256, X-Linked-Size, X-Repo-Commit.
- `HEAD|GET /cdn/{sha256}`: the blob, with `Range: bytes=N-` answered by 206 + Content-Range.
- Errors as the hub sends them: 404 + X-Error-Code RepoNotFound / RevisionNotFound /
  EntryNotFound; 401 + X-Error-Code GatedRepo for a gated repo without the right token.

Fault modes for tests: `drop_once(file, after_bytes)` closes the connection in the middle of that
file's body once (resume), `slow_bps` throttles blob bodies (cancel), and every request is logged
(method, path, Range, Authorization) so tests can check what the client really did.

A scriptable hostile hub: `script(fn)` adds a hook called for every request with a `Call` (method,
route, repo, file, Range, and `default()`, the `Reply` an honest hub would send). The hook returns
a `Reply` to send instead (a changed copy of the default, or anything: HTML, a lying ETag, an
endless body, a redirect to file://) or None to stay honest. `clear_scripts()` ends the act.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".gguf", ".h5", ".msgpack", ".ckpt", ".pt")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes]
    gated_token: str | None = None  # set: 401 GatedRepo unless "Authorization: Bearer <token>"
    sha256: dict[str, str] = field(default_factory=dict)  # digests computed once (files can be large)
    git_sha1: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, data in self.files.items():
            self.sha256[name] = hashlib.sha256(data).hexdigest()
            self.git_sha1[name] = git_blob_sha1(data)
        h = hashlib.sha1()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + self.sha256[name].encode())
        self.sha = h.hexdigest()  # the commit id

    def is_lfs(self, name: str) -> bool:
        return name.endswith(LFS_SUFFIXES)

    def sibling(self, name: str) -> dict:
        data = self.files[name]
        out = {"rfilename": name, "size": len(data), "blobId": self.git_sha1[name]}
        if self.is_lfs(name):
            out["lfs"] = {"size": len(data), "sha256": self.sha256[name], "pointerSize": 134}
        return out


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class Reply:
    """One HTTP answer. `body` is bytes or an iterable of chunks (it may never end). Content-Length
    is sent only when `headers` has it (`Reply.of` sets it); without it the body ends when the
    connection closes. `name` is the repo file the body belongs to (for drop_once and slow_bps)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterable[bytes] = b""
    name: str | None = None

    @classmethod
    def of(cls, status: int, body: bytes, headers: dict[str, str] | None = None, name: str | None = None) -> "Reply":
        return cls(status, {**(headers or {}), "Content-Length": str(len(body))}, body, name)

    def but(self, **changes) -> "Reply":
        """A copy with some fields changed; `headers=` is merged into the current headers (None drops one)."""
        headers = dict(self.headers)
        for k, v in (changes.pop("headers", None) or {}).items():
            if v is None:
                headers.pop(k, None)
            else:
                headers[k] = v
        return replace(self, headers=headers, **changes)


@dataclass
class Call:
    """What a script sees of one request."""

    method: str
    route: str  # "info" | "tree" | "resolve" | "cdn" | "other"
    path: str
    repo_id: str | None
    filename: str | None  # resolve: the file; cdn: the file whose blob it is
    range: str | None
    authorization: str | None
    default: Callable[[], Reply]  # what the honest hub answers


@dataclass
class HubServer:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    slow_bps: float | None = None
    _drops: dict[str, int] = field(default_factory=dict)
    scripts: list[Callable[[Call], Reply | None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # -- content

    def add_repo(self, repo_id: str, source: Path | dict[str, bytes], *, gated_token: str | None = None) -> Repo:
        if isinstance(source, dict):
            files = dict(source)
        else:
            files = {p.relative_to(source).as_posix(): p.read_bytes() for p in sorted(Path(source).rglob("*")) if p.is_file()}
        repo = Repo(repo_id, files, gated_token)
        self.repos[repo_id.lower()] = repo
        return repo

    def blob(self, sha256: str) -> tuple[str, bytes] | None:
        for repo in self.repos.values():
            for name, digest in repo.sha256.items():
                if digest == sha256:
                    return name, repo.files[name]
        return None

    # -- fault modes

    def drop_once(self, filename: str, after_bytes: int) -> None:
        """The next GET of `filename`'s body sends `after_bytes` bytes, then closes the connection."""
        with self._lock:
            self._drops[filename] = after_bytes

    def take_drop(self, filename: str) -> int | None:
        with self._lock:
            return self._drops.pop(filename, None)

    def script(self, fn: Callable[[Call], Reply | None]) -> Callable[[Call], Reply | None]:
        """Add a hook that may answer any request instead of the honest hub (see `Call`)."""
        with self._lock:
            self.scripts.append(fn)
        return fn

    def clear_scripts(self) -> None:
        with self._lock:
            self.scripts.clear()

    def log(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def gets(self, suffix: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.path.endswith(suffix)]

    # -- lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        assert self._server is not None
        return f"http://localhost:{self._server.server_address[1]}"

    def start(self) -> "HubServer":
        hub = self

        class Handler(_Handler):
            server_state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="hubserver", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Handler(BaseHTTPRequestHandler):
    server_state: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    def handle(self):
        # a client that cuts a body off (as firefly does with an oversized one) resets the
        # connection; that is the test going as planned, not a server error to print
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            pass

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    # -- routing

    def _route(self, head: bool) -> None:
        hub = self.server_state
        path = unquote(urlsplit(self.path).path)
        hub.log(Request(self.command, path, self.headers.get("Range"), self.headers.get("Authorization")))
        route, repo_id, filename, default = self._honest(path, head)
        call = Call(self.command, route, path, repo_id, filename, self.headers.get("Range"),
                    self.headers.get("Authorization"), default)
        with hub._lock:
            scripts = list(hub.scripts)
        reply = None
        for fn in scripts:
            reply = fn(call)
            if reply is not None:
                break
        try:
            self._send_reply(reply if reply is not None else default(), head)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True

    def _honest(self, path: str, head: bool):
        """(route, repo id, file name, a function computing the honest reply)."""
        parts = path.strip("/").split("/")
        # Dataset repos: the same repos, reached as the client reaches datasets
        # (/api/datasets/{repo}..., /datasets/{repo}/resolve/...).
        if parts[:2] == ["api", "datasets"]:
            parts = ["api", "models", *parts[2:]]
        elif parts[:1] == ["datasets"] and len(parts) >= 4 and parts[3] == "resolve":
            parts = parts[1:]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
            repo_id = f"{parts[2]}/{parts[3]}"
            return "tree", repo_id, None, lambda: self._tree(repo_id, parts[5])
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = f"{parts[2]}/{parts[3]}"
            rev = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
            return "info", repo_id, None, lambda: self._model_info(repo_id, rev)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, name = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
            return "resolve", repo_id, name, lambda: self._resolve(repo_id, parts[3], name, head)
        if len(parts) == 2 and parts[0] == "cdn":
            found = self.server_state.blob(parts[1])
            return "cdn", None, found[0] if found else None, lambda: self._cdn(parts[1], head)
        return "other", None, None, lambda: self._error(404, "NotFound", "no such route")

    def _repo(self, repo_id: str, rev: str) -> Repo | Reply:
        repo = self.server_state.repos.get(repo_id.lower())
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        if repo.gated_token and self.headers.get("Authorization") != f"Bearer {repo.gated_token}":
            return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it.")
        if rev not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo

    def _model_info(self, repo_id: str, rev: str) -> Reply:
        repo = self._repo(repo_id, rev)
        if isinstance(repo, Reply):
            return repo
        body = {
            "_id": "0" * 24, "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha,
            "private": False, "gated": "manual" if repo.gated_token else False, "disabled": False,
            "tags": ["transformers"], "siblings": [repo.sibling(n) for n in sorted(repo.files)],
        }
        return Reply.of(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _tree(self, repo_id: str, rev: str) -> Reply:
        """list_repo_tree (snapshot_download uses it): every file, recursive, one page."""
        repo = self._repo(repo_id, rev)
        if isinstance(repo, Reply):
            return repo
        entries = []
        for name in sorted(repo.files):
            entry = {"type": "file", "path": name, "size": len(repo.files[name]), "oid": repo.git_sha1[name]}
            if repo.is_lfs(name):
                entry["lfs"] = {"oid": repo.sha256[name], "size": len(repo.files[name]), "pointerSize": 134}
            entries.append(entry)
        return Reply.of(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, rev: str, name: str, head: bool) -> Reply:
        repo = self._repo(repo_id, rev)
        if isinstance(repo, Reply):
            return repo
        if name not in repo.files:
            return self._error(404, "EntryNotFound", f"{name} does not exist", {"X-Repo-Commit": repo.sha})
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{repo.git_sha1[name]}"', "Accept-Ranges": "bytes"}
        if repo.is_lfs(name):
            sha = repo.sha256[name]
            headers.update({
                "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                "Location": f"{self.server_state.cdn_url}/cdn/{sha}",
            })
            return Reply.of(302, b"", headers)
        return self._body(name, data, headers, head)

    def _cdn(self, sha256: str, head: bool) -> Reply:
        if self.headers.get("Authorization"):
            return self._error(400, "BadRequest", "the CDN must not receive the hub token")
        found = self.server_state.blob(sha256)
        if found is None:
            return self._error(404, "EntryNotFound", "no such blob")
        name, data = found
        return self._body(name, data, {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}, head)

    # -- responses

    def _body(self, name: str, data: bytes, headers: dict[str, str], head: bool) -> Reply:
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            first = rng[len("bytes="):].split("-")[0]
            start = int(first or 0)
            if start >= len(data):
                return Reply.of(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        return Reply(status, {**headers, "Content-Length": str(len(body))}, body, name)

    def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> Reply:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        headers.update(extra or {})
        return Reply.of(status, json.dumps({"error": message}).encode(), headers)

    def _send_reply(self, reply: Reply, head: bool) -> None:
        hub = self.server_state
        self.send_response(reply.status)
        for k, v in reply.headers.items():
            self.send_header(k, v)
        if "Content-Length" not in reply.headers:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return
        body = reply.body
        chunks = [body] if isinstance(body, (bytes, bytearray)) else body
        drop = hub.take_drop(reply.name) if reply.name else None
        sent = 0
        for chunk in chunks:
            if drop is not None and sent + len(chunk) >= drop:
                self.wfile.write(chunk[: drop - sent])
                self.wfile.flush()
                self.close_connection = True
                return
            step = 4096 if hub.slow_bps else 1 << 20
            for i in range(0, len(chunk), step):
                self.wfile.write(chunk[i:i + step])
                if hub.slow_bps:
                    self.wfile.flush()
                    time.sleep(step / hub.slow_bps)
            sent += len(chunk)
        self.wfile.flush()
