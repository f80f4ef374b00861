"""`firefly serve`: local models behind an OpenAI-compatible HTTP API.

- `protocol.py`: the OpenAI request fields we accept (validated) and the error shape;
- `engine.py`: per served model, a FIFO of jobs on one worker thread, prompt rendering and KV
  caches kept between requests, on top of firefly_core's model service and generation loop;
- `app.py`: the Starlette routes, SSE streaming, disconnect handling, the API key check;
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

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def model_id_for(name: str) -> str:
    """The id clients use for a model: what `firefly list` shows (the hub id as the cache spells it,
    or the registered folder), else the folder's absolute path."""
    from firefly_core.errors import FireflyError
    from firefly_core.models.inventory import find_installed

    try:
        found = find_installed(name)
    except FireflyError:
        found = None
    if found is not None:
        return found.id
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


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
        if model_id in seen:
            continue
        seen.add(model_id)
        out.append(ServedModel(name, model_id, overrides=overrides, cache_slots=cache_slots, log=log))
    return out


class ApiServer:
    """uvicorn serving the API for `models` on host:port (port 0 = a free port)."""

    def __init__(
        self,
        models: Sequence[ServedModel],
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        access_log: bool = False,
    ) -> None:
        import uvicorn

        from .app import create_app

        self.models = list(models)
        self.sock = _bind(host, port)
        self.host = host
        self.port = self.sock.getsockname()[1]
        app = create_app(self.models, api_key=api_key)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=access_log,
            lifespan="on",
            timeout_graceful_shutdown=10,
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
