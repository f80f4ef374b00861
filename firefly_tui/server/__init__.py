"""`firefly serve`: local models behind an OpenAI-compatible HTTP API.

- `protocol.py`: the OpenAI request fields we accept (validated) and the error shape;
- `engine.py`: per served model, a FIFO of jobs on one worker thread, prompt rendering and KV
  caches kept between requests, on top of firefly_core's model service and generation loop;
- `app.py`: the Starlette routes, SSE streaming, disconnect handling, the API key, Host and CORS
  checks;
- `limits.py`: what one client may cost (body size, timeouts, connections, prompt length), and
  `connections.py`: the request-head deadline and connection cap uvicorn lacks;
- this module: `ApiServer`, uvicorn on a socket we bind ourselves (so `--port 0` works and a port in
  use is a clear error), run in the foreground (`firefly serve`) or on a thread (tests, benchmarks).

Starlette + uvicorn (h11): three small, well-kept packages (starlette needs only anyio, uvicorn
only click and h11) and no validation framework; FastAPI would add pydantic models and OpenAPI
generation we do not need, since `protocol.py` validates by hand to give OpenAI's error shape.

Nothing here imports torch at import time; the worker threads do when the first model loads.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from .engine import DEFAULT_CACHE_SLOTS, ServedModel
from .limits import DEFAULT_LIMITS, ServerLimits

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def model_id_for(name: str) -> str:
    """The id clients use for a model: the hub id as the cache spells it, or a local folder's name
    as the app shows it (its last part; `run/final` for a training run's model) — never a local
    path, which would tell any client the user's name and folder layout."""
    from firefly_core.errors import FireflyError
    from firefly_core.models.inventory import find_installed, local_name

    try:
        found = find_installed(name)
    except FireflyError:
        found = None
    if found is not None and found.source != "local":
        return found.id
    path = Path(name).expanduser()
    if not path.is_dir():
        return name  # a hub id
    return local_name(path.resolve()) or "model"


def served_models(
    names: Sequence[str],
    *,
    overrides: dict[str, Any] | None = None,
    cache_slots: int = DEFAULT_CACHE_SLOTS,
    log: Callable[[str], None] | None = None,
) -> list[ServedModel]:
    """A ServedModel for each distinct model name (checked to exist here, not yet loaded)."""
    from firefly_core.models.inventory import resolve_model_path

    out: list[ServedModel] = []
    seen: set[str] = set()
    for name in names:
        resolve_model_path(name)  # a missing model is an error now, not on the first request
        model_id = model_id_for(name)
        if any(m.name == name or _same_folder(m.name, name) for m in out):
            continue
        base, n = model_id, 2
        while model_id in seen:  # two folders with one name: the second is `name-2`
            model_id, n = f"{base}-{n}", n + 1
        seen.add(model_id)
        out.append(ServedModel(name, model_id, overrides=overrides, cache_slots=cache_slots, log=log))
    return out


def _same_folder(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


class ApiServer:
    """uvicorn serving the API for `models` on host:port (port 0 = a free port).

    `limits`: what one client may cost (see limits.py). `allow_origins`: browser origins allowed
    by CORS. `log`: one line per notable client event (aborted upload, timed-out head)."""

    def __init__(
        self,
        models: Sequence[ServedModel],
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        access_log: bool = False,
        limits: ServerLimits = DEFAULT_LIMITS,
        allow_origins: Sequence[str] = (),
        log: Callable[[str], None] | None = None,
    ) -> None:
        import uvicorn

        from .app import create_app, is_loopback
        from .connections import guarded_protocol

        self.models = list(models)
        self.sock = _bind(host, port)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.limits = limits
        say = log if log is not None else warn
        app = create_app(
            self.models,
            api_key=api_key,
            limits=limits,
            loopback_only=is_loopback(host),
            allow_origins=allow_origins,
            log=say,
        )
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=access_log,
            lifespan="on",
            timeout_graceful_shutdown=10,
            http=guarded_protocol(limits, on_event=lambda kind: _log_connection_event(say, kind, limits)),
            timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type] (a float works)
            limit_concurrency=limits.max_connections + 1,  # uvicorn counts the asking connection too
            h11_max_incomplete_event_size=limits.max_header_bytes,
        )
        self._server = _uvicorn_server(config, on_exit=self.cancel_all)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def cancel_all(self) -> None:
        for m in self.models:
            m.cancel_all()

    def serve_forever(self) -> None:
        """Serve until Ctrl-C / SIGTERM; open replies are stopped and the workers end cleanly."""
        try:
            self._server.run(sockets=[self.sock])
        finally:
            self._close()

    def start(self) -> "ApiServer":
        """Serve on a background thread (tests, benchmarks); `stop()` ends it."""
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self.sock]}, name="firefly-serve", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.cancel_all()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._close()

    def _close(self) -> None:
        for m in self.models:
            m.stop()
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    from firefly_core.errors import ConfigError

    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is out of range", "use a port between 1 and 65535 (0 = any free port)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"cannot use the address {host!r}: {e.strerror}", "use --host 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use", "choose another with --port") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}", "check --host and --port") from None
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(config: Any, on_exit: Callable[[], None]) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, which also stops the running replies when asked to exit, so Ctrl-C
        does not wait for a long reply to finish. uvicorn re-raises the signal it handled once it
        has shut down; a stop the user asked for is a clean exit here (status 0), so we drop it."""

        def __init__(self, config: Any, on_exit: Callable[[], None]) -> None:
            super().__init__(config)
            self._on_exit = on_exit

        def handle_exit(self, sig: int, frame: Any) -> None:
            self._on_exit()
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return Server(config, on_exit)


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _log_connection_event(say: Callable[[str], None], kind: str, limits: ServerLimits) -> None:
    if kind == "header_timeout":
        say(f"closed a connection that sent no complete request within {limits.header_timeout_s:g} s")
    elif kind == "too_many_connections":
        say(f"refused a connection: {limits.max_connections} are open already")
