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
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
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
class HubServer:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    slow_bps: float | None = None
    _drops: dict[str, int] = field(default_factory=dict)
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

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    # -- routing

    def _route(self, head: bool) -> None:
        hub = self.server_state
        path = unquote(urlsplit(self.path).path)
        hub.log(Request(self.command, path, self.headers.get("Range"), self.headers.get("Authorization")))
        try:
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                return self._tree(f"{parts[2]}/{parts[3]}", parts[5])
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                rev = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
                return self._model_info(f"{parts[2]}/{parts[3]}", rev)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), head)
            if len(parts) == 2 and parts[0] == "cdn":
                return self._cdn(parts[1], head)
            self._error(404, "NotFound", "no such route")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _repo(self, repo_id: str, rev: str) -> Repo | None:
        repo = self.server_state.repos.get(repo_id.lower())
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        if repo.gated_token and self.headers.get("Authorization") != f"Bearer {repo.gated_token}":
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it.")
            return None
        if rev not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo

    def _model_info(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        body = {
            "_id": "0" * 24, "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha,
            "private": False, "gated": "manual" if repo.gated_token else False, "disabled": False,
            "tags": ["transformers"], "siblings": [repo.sibling(n) for n in sorted(repo.files)],
        }
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _tree(self, repo_id: str, rev: str) -> None:
        """list_repo_tree (snapshot_download uses it): every file, recursive, one page."""
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        entries = []
        for name in sorted(repo.files):
            entry = {"type": "file", "path": name, "size": len(repo.files[name]), "oid": repo.git_sha1[name]}
            if repo.is_lfs(name):
                entry["lfs"] = {"oid": repo.sha256[name], "size": len(repo.files[name]), "pointerSize": 134}
            entries.append(entry)
        self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, rev: str, name: str, head: bool) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        if name not in repo.files:
            return self._error(404, "EntryNotFound", f"{name} does not exist", {"X-Repo-Commit": repo.sha})
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{repo.git_sha1[name]}"', "Accept-Ranges": "bytes"}
        if repo.is_lfs(name):
            sha = repo.sha256[name]
            headers.update({
                "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                "Location": f"{self.server_state.cdn_url}/cdn/{sha}", "Content-Length": "0",
            })
            self.send_response(302)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            return
        self._body(name, data, headers, head)

    def _cdn(self, sha256: str, head: bool) -> None:
        if self.headers.get("Authorization"):
            return self._error(400, "BadRequest", "the CDN must not receive the hub token")
        found = self.server_state.blob(sha256)
        if found is None:
            return self._error(404, "EntryNotFound", "no such blob")
        name, data = found
        self._body(name, data, {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}, head)

    # -- responses

    def _body(self, name: str, data: bytes, headers: dict[str, str], head: bool) -> None:
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            first = rng[len("bytes="):].split("-")[0]
            start = int(first or 0)
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        drop = self.server_state.take_drop(name)
        if drop is not None:
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        step = 4096 if self.server_state.slow_bps else 1 << 20
        for i in range(0, len(body), step):
            self.wfile.write(body[i:i + step])
            if self.server_state.slow_bps:
                self.wfile.flush()
                time.sleep(step / self.server_state.slow_bps)

    def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        headers.update(extra or {})
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
