"""What hostile uploads cost `firefly serve`: its memory after aborted and oversized uploads, and
how fast an oversized prompt is refused.

    python bench/serve_hostile.py            # 30 aborted 10 MB uploads, each way; a 200 MB chunked body

A real `firefly serve` process (tiny test-kit BLOOM, torch engine) on loopback; raw sockets send:
30 uploads that declare 10 MB and close after 9.9 MB; 30 chunked uploads that close after 10 MB;
one chunked 200 MB body (answered 413 once 16 MB have arrived); one 15 MB prompt inside the body
limit (answered 400 by the character bound, before any tokenizing). Printed: the server's resident
memory (VmRSS) after loading and answering once, and after each step, and the time to each answer.
Before these guards the chunked 200 MB body took the server to 23 GB RSS and the kernel killed it,
and the 15 MB prompt cost 17-51 s of CPU before its 400.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MB = 1024 * 1024


from machine import cpu_label  # noqa: E402 - the one CPU line of bench/ (machine.py)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def request(port: int, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(head + body)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data


def post_head(port: int, length: int | None) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\n{size}\r\n\r\n").encode()


def aborted(port: int, chunked: bool) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(post_head(port, None if chunked else 10 * MB))
        piece = b"a" * (256 * 1024)
        for _ in range(39 if not chunked else 40):  # 9.75 MB declared-length / 10 MB chunked, then gone
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)


def chunked_until_answered(port: int, total: int) -> tuple[bytes, int]:
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    s.sendall(post_head(port, None))
    piece = b"a" * MB
    sent = 0
    try:
        while sent < total:
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            s.setblocking(False)
            try:
                if s.recv(1, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    s.close()
    return data, sent


def main() -> None:
    from firefly_core.testkit import build_model_folder

    print(f"CPU: {cpu_label()}  ·  python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model_folder(Path(tmp) / "tiny-bloom", "bloom")
        env = dict(os.environ, FIREFLY_HOME=str(Path(tmp) / "home"), HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
        proc = subprocess.Popen(
            [sys.executable, "-m", "firefly_tui.cli", "serve", "--model", str(folder), "--port", "0",
             "--dtype", "fp32", "--device", "cpu", "--engine", "torch"],
            stderr=subprocess.PIPE, text=True, env=env,
        )
        try:
            while "OpenAI API at" not in (line := proc.stderr.readline()):
                if not line:
                    raise SystemExit("the server did not start")
            port = int(line.split("http://")[1].split("/")[0].rsplit(":", 1)[1])
            ok = json.dumps({"messages": [{"role": "user", "content": "你好"}], "max_tokens": 4}).encode()
            request(port, post_head(port, len(ok)), ok)
            print(f"server RSS after loading and one reply: {rss_mb(proc.pid):.0f} MB")
            for chunked in (False, True):
                t = time.perf_counter()
                for _ in range(30):
                    aborted(port, chunked)
                kind = "chunked" if chunked else "Content-Length"
                time.sleep(1.0)  # let the server notice the last disconnect before reading its memory
                print(f"after 30 aborted 10 MB uploads ({kind}): RSS {rss_mb(proc.pid):.0f} MB "
                      f"({time.perf_counter() - t:.1f} s for all 30)")
            t = time.perf_counter()
            answer, sent = chunked_until_answered(port, 200 * MB)
            status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
            print(f"chunked 200 MB body: '{status}' after {sent / MB:.0f} MB sent, "
                  f"{time.perf_counter() - t:.2f} s; RSS {rss_mb(proc.pid):.0f} MB")
            big = json.dumps({"messages": [{"role": "user", "content": "萤" * (5 * MB)}]}, ensure_ascii=False).encode()
            t = time.perf_counter()
            answer = request(port, post_head(port, len(big)), big)
            status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
            print(f"{len(big) / MB:.0f} MB prompt (5M characters): '{status}' in {time.perf_counter() - t:.2f} s; "
                  f"RSS {rss_mb(proc.pid):.0f} MB")
            request(port, post_head(port, len(ok)), ok)
            print(f"still answering afterwards; final RSS {rss_mb(proc.pid):.0f} MB")
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
