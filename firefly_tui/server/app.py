"""The HTTP side of `firefly serve`: a Starlette app speaking OpenAI's API over the served models.

Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions`, `POST /v1/completions`,
`GET /health`. Every error, including 404/405 and an unexpected failure, is answered in OpenAI's
shape (`{"error": {"message", "type", "param", "code"}}`), so clients raise their usual exceptions.

A completion is an ASGI callable (`_CompletionResponse`) that submits a job to the model's queue and
then waits on two things at once: the job's next event, and the client's `http.disconnect`. A client
that goes away cancels its job, queued or running, so the model is free at once. Streamed replies
wait for the job to start before sending the status line, so a load failure or a prompt longer than
the context window is still a proper 4xx/5xx; an error after that is sent as an SSE `error` event,
which the openai client raises.

Hostile clients (see `limits.py` for the bounds): the body is counted while it is read (413 for any
transfer encoding) within a deadline (408); only `application/json` bodies are read (415), so a web
page cannot send a cross-site "simple request"; a server on loopback answers only loopback Host
names (421 otherwise: DNS rebinding), and browsers from other origins only with `--allow-origin`
(Starlette's CORSMiddleware); a client that aborts its upload costs one log line, not a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import time
import uuid
from typing import Any, AsyncIterator, Callable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .engine import Failed, Job, ServedModel, Started
from .limits import DEFAULT_LIMITS, ServerLimits
from .protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    finish_reason,
    parse_chat_request,
    parse_completion_request,
    shutting_down,
)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies must not hold tokens back
]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


CLOSES_CONNECTION = (408, 413)  # the rest of the body is not read: the connection cannot be reused


def error_response(e: ApiError) -> JSONResponse:
    headers = {"connection": "close"} if e.status in CLOSES_CONNECTION else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


class ApiKeyMiddleware:
    """With an API key set, every request must carry `Authorization: Bearer KEY` (else 401).

    The scheme is case-insensitive (RFC 9110: `bearer` is `Bearer`); two Authorization headers are
    refused (400), since proxies and frameworks disagree on which one counts. The key is compared
    in constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = [v for k, v in scope["headers"] if k == b"authorization"]
            e = None
            if len(given) > 1:
                e = ApiError(400, "send one Authorization header, not several", code="invalid_api_key")
            else:
                scheme, _, token = (given[0] if given else b"").strip().partition(b" ")
                ok = hmac.compare_digest(token.strip(), self.expected)
                if not (ok and scheme.lower() == b"bearer"):
                    e = ApiError(
                        401,
                        "no API key given: send the header 'Authorization: Bearer KEY'"
                        if not given
                        else "incorrect API key: use the key `firefly serve --api-key` was started with",
                        code="invalid_api_key",
                    )
            if e is not None:
                await error_response(e)(scope, receive, send)
                return
        await self.app(scope, receive, send)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


def is_loopback(host: str) -> bool:
    """Whether `host` (a --host value) is this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LoopbackHostMiddleware:
    """On a loopback server, answer only requests whose Host is a loopback name (421 otherwise).

    A web page can make a browser reach 127.0.0.1 under its own domain by DNS rebinding, and then
    read the replies as same-origin; the browser still sends that domain in Host, so refusing
    other Host names closes the hole (the same fix ollama made for CVE-2024-28224)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hosts = [v for k, v in scope["headers"] if k == b"host"]
            name = _host_name(hosts[0].decode("latin-1")) if len(hosts) == 1 else None
            if len(hosts) > 1 or (hosts and name not in LOOPBACK_NAMES and not _is_loopback_ip(name)):
                e = ApiError(
                    421,
                    "this server only answers requests addressed to localhost (Host header); "
                    "to serve other names, start it with --host and an --api-key",
                    code="invalid_host",
                )
                await error_response(e)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_loopback_ip(name: str | None) -> bool:
    if not name:
        return False
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


class _ClientGone(Exception):
    pass


_GONE = object()  # put in a job's event queue when its client disconnects


async def _watch_disconnect(receive: Receive, events: asyncio.Queue) -> None:
    """Wait for the client's `http.disconnect` (uvicorn reports it as soon as the socket closes)
    and wake the response with `_GONE`, so one `events.get()` waits on both."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            events.put_nowait(_GONE)
            return


class _CompletionResponse:
    """Run one completion job and answer it, whole or as Server-Sent Events."""

    def __init__(self, served: ServedModel, request: ChatRequest | CompletionRequest) -> None:
        self.served = served
        self.request = request
        self.chat = isinstance(request, ChatRequest)
        prefix = "chatcmpl" if self.chat else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope, self.receive = scope, receive
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        job = Job(self.request, emit=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        watcher = asyncio.ensure_future(_watch_disconnect(receive, events))
        self.served.submit(job)
        try:
            if self.request.stream:
                await self._stream(events, send)
            else:
                await self._whole(events, send)
        except _ClientGone:
            pass
        finally:
            job.cancel.set()  # a finished job ignores it; a queued or running one stops now
            watcher.cancel()

    @staticmethod
    async def _next(events: asyncio.Queue) -> Any:
        event = await events.get()
        if event is _GONE:
            raise _ClientGone
        return event

    async def _whole(self, events: asyncio.Queue, send: Send) -> None:
        from firefly_core.generation.config import ReplyDone

        prompt_tokens = 0
        while True:
            event = await self._next(events)
            if isinstance(event, Failed):
                await error_response(event.error)(self.scope, self.receive, send)
                return
            if isinstance(event, Started):
                prompt_tokens = event.prompt_tokens
            elif isinstance(event, ReplyDone):
                break
        if event.cancelled:
            await error_response(shutting_down())(self.scope, self.receive, send)
            return
        reason = finish_reason(event.stats.stop_reason)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": event.text},
                      "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": event.text, "logprobs": None, "finish_reason": reason}
        body = self._envelope("chat.completion" if self.chat else "text_completion", [choice])
        body["usage"] = _usage(prompt_tokens, event.stats.new_tokens)
        await JSONResponse(body)(self.scope, self.receive, send)

    async def _stream(self, events: asyncio.Queue, send: Send) -> None:
        from firefly_core.generation.config import ReplyDone, TextDelta

        event = await self._next(events)
        if isinstance(event, Failed):
            await error_response(event.error)(self.scope, self.receive, send)
            return
        prompt_tokens = event.prompt_tokens if isinstance(event, Started) else 0
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        usage_field = {"usage": None} if self.request.include_usage else {}

        async def emit(data: Any) -> None:
            await send({"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True})

        if self.chat:
            await emit(_dumps(self._chunk({"role": "assistant", "content": ""}, None) | usage_field))
        while True:
            event = await self._next(events)
            if isinstance(event, TextDelta):
                delta = {"content": event.text} if self.chat else event.text
                await emit(_dumps(self._chunk(delta, None) | usage_field))
            elif isinstance(event, Failed):
                await emit(_dumps(event.error.body()))
                break
            elif isinstance(event, ReplyDone):
                if event.cancelled:
                    await emit(_dumps(shutting_down().body()))
                    break
                reason = finish_reason(event.stats.stop_reason)
                await emit(_dumps(self._chunk({} if self.chat else "", reason) | usage_field))
                if self.request.include_usage:
                    final = self._envelope(self._chunk_object, [])
                    final["usage"] = _usage(prompt_tokens, event.stats.new_tokens)
                    await emit(_dumps(final))
                await emit(b"[DONE]")
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _chunk(self, delta: Any, reason: str | None) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": reason}
        return self._envelope(self._chunk_object, [choice])

    def _envelope(self, obj: str, choices: list) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.served.id, "choices": choices}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_app(
    models: Sequence[ServedModel],
    *,
    api_key: str | None = None,
    on_shutdown: Callable[[], None] | None = None,
    limits: ServerLimits = DEFAULT_LIMITS,
    loopback_only: bool = False,
    allow_origins: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
) -> ASGIApp:
    """The ASGI app answering for `models` (the first is the default when a request names none).

    `loopback_only`: answer only loopback Host names (a server bound to loopback). `allow_origins`:
    browser origins allowed to call it (CORS), e.g. "http://localhost:3000"; "*" allows any.
    `log`: where one line per aborted upload goes."""
    if not models:
        raise ValueError("serve at least one model")
    say = log if log is not None else (lambda _line: None)
    served = list(models)
    created = int(time.time())

    def pick(name: str | None) -> ServedModel:
        if name is None:
            return served[0]
        for m in served:
            if name in (m.id, m.name):
                return m
        for m in served:
            if name.casefold() in (m.id.casefold(), m.name.casefold()):
                return m
        raise ApiError(
            404,
            f"the model {name!r} is not served here; this server has: {', '.join(m.id for m in served)}",
            param="model",
            code="model_not_found",
        )

    def card(m: ServedModel) -> dict[str, Any]:
        return {"id": m.id, "object": "model", "created": created, "owned_by": "firefly"}

    async def list_models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [card(m) for m in served]})

    async def get_model(request: Request) -> JSONResponse:
        return JSONResponse(card(pick(request.path_params["model"])))

    too_large = ApiError(413, f"the request body is larger than {limits.max_body_bytes / (1024 * 1024):g} MB")

    async def read_json(request: Request) -> Any:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise ApiError(
                415,
                f"the request body must be sent as application/json, not {media_type or 'without a Content-Type'}",
                code="unsupported_media_type",
            )
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limits.max_body_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                async for chunk in request.stream():  # counted as it arrives: chunked bodies too
                    size += len(chunk)
                    if size > limits.max_body_bytes:
                        raise too_large
                    chunks.append(chunk)
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {limits.body_timeout_s:g} s") from None
        raw = b"".join(chunks)
        del chunks
        if not raw.strip():
            raise ApiError(400, "the request body is empty; send a JSON object")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        except RecursionError:
            raise ApiError(400, "the request body is not valid JSON: it is nested too deeply") from None

    async def chat_completions(request: Request) -> _CompletionResponse:
        req = parse_chat_request(await read_json(request))
        return _CompletionResponse(pick(req.model), req)

    async def completions(request: Request) -> _CompletionResponse:
        req = parse_completion_request(await read_json(request))
        return _CompletionResponse(pick(req.model), req)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "models": [m.id for m in served]})

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)  # type: ignore[arg-type]

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route {request.url.path}; this server has /v1/models, /v1/chat/completions, /v1/completions"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(ApiError(exc.status_code, message))

    async def on_upload_aborted(request: Request, exc: Exception) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        say(f"{client} closed the connection before its {request.method} {request.url.path} body arrived")
        return Response(status_code=400)  # nobody reads it: the connection is gone

    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for m in served:
            m.cancel_all()
        if on_shutdown is not None:
            on_shutdown()

    app = Starlette(
        routes=[
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", get_model, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            ClientDisconnect: on_upload_aborted,
            Exception: on_crash,
        },
        lifespan=lifespan,
    )
    outer: ASGIApp = ApiKeyMiddleware(app, api_key) if api_key else app
    if allow_origins:
        from starlette.middleware.cors import CORSMiddleware

        # outside the key check: a browser's preflight (OPTIONS) never carries the key
        outer = CORSMiddleware(
            outer,
            allow_origins=list(allow_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
            max_age=600,
        )
    return LoopbackHostMiddleware(outer) if loopback_only else outer
