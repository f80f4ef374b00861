"""`firefly serve` against hostile clients: a real uvicorn server on loopback, real sockets.

Each test is what an attacker (or a web page) did to the server before these guards: a chunked body
with no Content-Length, a prompt of millions of characters, connections that never finish their
headers, a cross-site "simple request", a rebinding Host name, values that crashed generation.
Oracles: the status line and OpenAI's error shape on the wire, the socket being closed by the
server (recv returns b"") instead of staying open, the server's own log lines, and a normal
request still answered afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading

import pytest

from firefly_tui.server import ApiServer, served_models
from firefly_tui.server.limits import ServerLimits

LIMITS = ServerLimits(
    max_body_bytes=1024 * 1024, header_timeout_s=1.0, body_timeout_s=2.0, keep_alive_s=1.0, max_connections=8
)
WAIT_S = 60  # how long a test waits for a state before failing (never how long it sleeps)
USER = [{"role": "user", "content": "你好"}]


@pytest.fixture(scope="module")
def torch_one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Log(list):
    """The server's log lines; `wait_for` blocks until a predicate on them holds."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self.changed:
            self.append(line)
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float = WAIT_S) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout)


@pytest.fixture(scope="module")
def server(bloom_dir, torch_one_thread):
    log = _Log()
    models = served_models([str(bloom_dir)], overrides={"device": "cpu", "dtype": "fp32", "engine": "torch"})
    with ApiServer(models, port=0, limits=LIMITS, log=log) as srv:
        srv.log_lines = log
        yield srv


# -- raw HTTP -----------------------------------------------------------------------------------


def _connect(srv) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT_S)
    return s


def _read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response (body up to Content-Length, or to the close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(s)
        if not chunk:
            raise AssertionError(f"the server closed the connection without a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        chunk = _recv(s)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except ConnectionResetError:
        return b""


def _request(srv, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    hdrs = {"Host": f"127.0.0.1:{srv.port}", "Content-Type": "application/json", "Connection": "close"}
    hdrs.update(headers or {})
    if body or method == "POST":
        hdrs.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    with _connect(srv) as s:
        s.sendall(head.encode("latin-1") + body)
        status, headers_out, raw = _read_response(s)
    return status, headers_out, (json.loads(raw) if raw.startswith(b"{") else raw)


def _closed_by_server(s: socket.socket) -> bool:
    """Wait (up to WAIT_S) until the server closes `s`; False if it is still open then."""
    s.settimeout(WAIT_S)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def _assert_openai_error(reply, status_expected, status, param=None):
    assert status == status_expected, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"}, reply
    assert reply["error"]["message"]
    if param is not None:
        assert reply["error"]["param"] == param, reply


def _still_answers(srv) -> None:
    status, _, reply = _request(srv, "POST", "/v1/chat/completions",
                                json.dumps({"messages": USER, "max_tokens": 2, "temperature": 0}).encode())
    assert status == 200 and reply["choices"][0]["message"]["content"] is not None, reply


# -- (1) body limit for every transfer encoding ----------------------------------------------------


def test_a_chunked_body_over_the_limit_is_refused_while_it_is_read(server):
    """No Content-Length to check first: the bytes are counted as they arrive (413), and the server
    stops reading (it closes the connection) instead of buffering the whole upload."""
    s = _connect(server)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b'{"messages": [{"role": "user", "content": "' + b"a" * 65536
    sent = 0
    for _ in range(40 * LIMITS.max_body_bytes // len(piece)):  # up to 40x the limit: more than socket buffers hold
        try:
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(piece)
        if select.select([s], [], [], 0.05)[0]:
            break  # the server answered before the upload ended
    status, headers, body = _read_response(s)
    s.close()
    assert status == 413 and json.loads(body)["error"]["message"].startswith("the request body is larger than 1 MB")
    assert headers.get("connection") == "close"
    assert sent < 40 * LIMITS.max_body_bytes  # it did not wait for the whole upload
    _still_answers(server)


def test_a_declared_length_over_the_limit_is_refused_before_reading(server):
    s = _connect(server)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n{" % (LIMITS.max_body_bytes + 1))
    status, _, body = _read_response(s)
    s.close()
    assert status == 413 and json.loads(body)["error"]["message"]


# -- (2) prompt bounded by the context window before tokenizing --------------------------------------


@pytest.mark.parametrize("route", ["chat", "completion"])
def test_a_prompt_longer_than_the_window_could_hold_is_refused_before_tokenizing(server, route):
    text = "萤" * (LIMITS.max_body_bytes // 8)  # ~131k characters, inside the body limit
    if route == "chat":
        status, _, reply = _request(server, "POST", "/v1/chat/completions",
                                    json.dumps({"messages": [{"role": "user", "content": text}]}).encode())
    else:
        status, _, reply = _request(server, "POST", "/v1/completions", json.dumps({"prompt": text}).encode())
    _assert_openai_error(reply, 400, status, "messages" if route == "chat" else "prompt")
    assert reply["error"]["code"] == "context_length_exceeded"
    # the character bound answered (the token count would have needed the whole text tokenized)
    assert f"the prompt is {len(text)} characters" in reply["error"]["message"]


def test_more_messages_than_the_window_has_tokens_are_refused_before_rendering(server):
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": ""} for i in range(4001)]
    status, _, reply = _request(server, "POST", "/v1/chat/completions", json.dumps({"messages": messages}).encode())
    _assert_openai_error(reply, 400, status, "messages")
    assert reply["error"]["code"] == "context_length_exceeded" and "4001 messages" in reply["error"]["message"]


def test_the_character_bound_never_refuses_a_prompt_that_fits(server):
    from firefly_tui.server.limits import prompt_char_limit

    lm = server.models[0].load()
    limit = prompt_char_limit(lm)
    # the longest-token bound is an upper bound: real text that fits in tokens is never refused by it
    text = "你好，萤火虫。" * 20
    assert len(lm.tokenizer.encode(text)) * max(len(t) for t in lm.tokenizer.get_vocab()) >= len(text)
    assert limit is not None and limit >= lm.context_length
    _still_answers(server)


# -- (3) slowloris: head deadline, body deadline, idle keep-alive, connection cap -------------------


def test_headers_over_the_limit_are_refused(server):
    s = _connect(server)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * (2 * LIMITS.max_header_bytes) + b"\r\n\r\n")
    status, _, _ = _read_response(s)
    s.close()
    assert status == 400
    _still_answers(server)


def test_a_connection_that_never_finishes_its_headers_is_closed(server):
    s = _connect(server)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
    assert _closed_by_server(s)
    s.close()
    silent = _connect(server)  # a connection that sends nothing at all
    assert _closed_by_server(silent)
    silent.close()
    assert any("no complete request" in line for line in server.log_lines)


def test_a_body_that_trickles_in_is_answered_408(server):
    s = _connect(server)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{\"messages\"")
    status, headers, body = _read_response(s)
    s.close()
    assert status == 408 and json.loads(body)["error"]["message"] and headers.get("connection") == "close"


def test_an_idle_kept_alive_connection_is_closed(server):
    s = _connect(server)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, _, _ = _read_response(s)
    assert status == 200
    assert _closed_by_server(s)
    s.close()


def test_connections_beyond_the_cap_are_closed_and_the_server_recovers(server):
    idle = [_connect(server) for _ in range(LIMITS.max_connections)]
    extra = [_connect(server) for _ in range(4)]
    try:
        for s in extra:  # closed at once, not left hanging (file descriptors stay bounded)
            assert _closed_by_server(s)
        assert any("refused a connection" in line for line in server.log_lines)
        for s in idle:  # the idle ones time out (they never sent a request)
            assert _closed_by_server(s)
    finally:
        for s in idle + extra:
            s.close()
    _still_answers(server)


# -- (4) browsers: JSON only, loopback Host names, CORS only when allowed, no local paths ------------


def test_a_cross_site_simple_request_is_refused(server):
    body = json.dumps({"messages": USER, "max_tokens": 2}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, _, reply = _request(server, "POST", "/v1/chat/completions", body,
                                    {"Content-Type": ctype, "Origin": "http://evil.example"})
        _assert_openai_error(reply, 415, status)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "localhost.evil.example"])
def test_a_rebinding_host_name_is_refused_on_loopback(server, host):
    status, _, reply = _request(server, "GET", "/v1/models", headers={"Host": host})
    _assert_openai_error(reply, 421, status)


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1", "[::1]:8000"])
def test_loopback_host_names_are_answered(server, host):
    status, _, reply = _request(server, "GET", "/v1/models", headers={"Host": host})
    assert status == 200 and reply["data"]


def test_model_ids_never_reveal_local_paths(server, bloom_dir):
    status, _, reply = _request(server, "GET", "/v1/models")
    ids = [m["id"] for m in reply["data"]]
    assert ids == [bloom_dir.name]
    assert not any(str(bloom_dir.parent) in i or i.startswith("/") for i in ids)
    status, _, health = _request(server, "GET", "/health")
    assert str(bloom_dir.parent) not in json.dumps(health)


def test_without_allow_origin_no_cors_headers_are_sent(server):
    status, headers, _ = _request(server, "GET", "/v1/models", headers={"Origin": "http://evil.example"})
    assert status == 200 and "access-control-allow-origin" not in headers


def test_allow_origin_answers_preflight_for_that_origin_only(bloom_dir, torch_one_thread):
    models = served_models([str(bloom_dir)], overrides={"device": "cpu", "dtype": "fp32", "engine": "torch"})
    with ApiServer(models, port=0, limits=LIMITS, api_key="k", allow_origins=["http://localhost:3000"], log=_Log()) as srv:
        preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"}
        status, headers, _ = _request(srv, "OPTIONS", "/v1/chat/completions", headers=preflight)
        assert status == 200 and headers["access-control-allow-origin"] == "http://localhost:3000"
        status, headers, _ = _request(srv, "OPTIONS", "/v1/chat/completions",
                                      headers={**preflight, "Origin": "http://evil.example"})
        assert status == 400 and "access-control-allow-origin" not in headers
        status, headers, reply = _request(srv, "GET", "/v1/models",
                                          headers={"Origin": "http://localhost:3000", "Authorization": "Bearer k"})
        assert status == 200 and headers["access-control-allow-origin"] == "http://localhost:3000"


# -- (5) values the validator let through, which ended in 500s with tracebacks -----------------------


def _chat_body(**fields) -> bytes:
    return json.dumps({"messages": USER, "max_tokens": 2, **fields}).encode()


@pytest.mark.parametrize(
    "body, param",
    [
        (b"[" * 100_000 + b"]" * 100_000, None),
        (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
        (json.dumps({"messages": [{"role": "user", "content": "a\ud800b"}]}).encode(), "messages"),
        (json.dumps({"messages": [{"role": "system", "content": "\udfff"}, *USER]}).encode(), "messages"),
        (json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}]}).encode(), "messages"),
        (_chat_body(temperature=1e-300), "temperature"),
        (_chat_body(temperature=5e-324), "temperature"),
        (_chat_body(repetition_penalty=1e-300), "repetition_penalty"),
        (_chat_body(stop=["\ud800"]), "stop"),
    ],
)
def test_values_that_crashed_generation_are_400_in_openai_shape(server, body, param):
    status, _, reply = _request(server, "POST", "/v1/chat/completions", body)
    _assert_openai_error(reply, 400, status, param)
    assert "internal error" not in reply["error"]["message"]


def test_a_lone_surrogate_in_a_completion_prompt_is_400(server):
    status, _, reply = _request(server, "POST", "/v1/completions", json.dumps({"prompt": "x\udc00"}).encode())
    _assert_openai_error(reply, 400, status, "prompt")


def _aborted(lines: list[str]) -> list[str]:
    return [ln for ln in lines if "closed the connection before" in ln]


def test_an_aborted_upload_is_one_log_line_not_a_traceback(server):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(handler)
    before = len(server.log_lines)
    try:
        for _ in range(3):
            s = _connect(server)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 900000\r\n\r\n" + b"{" + b" " * 100_000)
            s.close()  # mid-body
        assert server.log_lines.wait_for(lambda lines: len(_aborted(lines[before:])) >= 3)
        _still_answers(server)
    finally:
        uvicorn_log.removeHandler(handler)
    aborted = _aborted(server.log_lines[before:])
    assert len(aborted) == 3 and all("\n" not in ln for ln in aborted)
    assert not [r for r in records if r.exc_info], [r.getMessage() for r in records]


# -- (10) the API key -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(bloom_dir, torch_one_thread):
    models = served_models([str(bloom_dir)], overrides={"device": "cpu", "dtype": "fp32", "engine": "torch"})
    with ApiServer(models, port=0, limits=LIMITS, api_key="s3cret", log=_Log()) as srv:
        yield srv


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(keyed, scheme):
    status, _, reply = _request(keyed, "GET", "/v1/models", headers={"Authorization": f"{scheme} s3cret"})
    assert status == 200 and reply["data"]


def test_a_wrong_key_or_scheme_is_401(keyed):
    for value in ("Bearer wrong", "Basic s3cret", "s3cret", "Bearer"):
        status, _, reply = _request(keyed, "GET", "/v1/models", headers={"Authorization": value})
        _assert_openai_error(reply, 401, status)


def test_two_authorization_headers_are_refused(keyed):
    head = (b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Authorization: Bearer s3cret\r\nAuthorization: Bearer other\r\n\r\n")
    with _connect(keyed) as s:
        s.sendall(head)
        status, _, body = _read_response(s)
    _assert_openai_error(json.loads(body), 400, status)


def test_an_empty_api_key_warns_that_the_key_is_off(bloom_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "firefly_tui.cli", "serve", "--model", str(bloom_dir), "--port", "0",
         "--api-key", "", "--dtype", "fp32", "--device", "cpu", "--engine", "torch"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
        env=dict(os.environ, PYTHONIOENCODING="utf-8"),
    )
    try:
        lines = []
        while True:
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            if "OpenAI API at" in line:
                break
        assert any("API key is empty" in ln and "OFF" in ln for ln in lines), lines
    finally:
        proc.terminate()
        proc.wait(timeout=WAIT_S)
