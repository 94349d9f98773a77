"""``ledger serve`` as a process, under attack (ADR 0013): it will not start on 0.0.0.0 with the
development settings; on loopback it says so once; and a 200 MB body sent without a token, or
with one, is answered before it is read, with the server's memory unchanged."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infra.http.auth import issue

LEDGER = Path(sys.executable).with_name("ledger")
SECRET = "serve-hardening-secret-of-at-least-32-bytes"
HUGE = 200 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update({f"LEDGER_{k.upper()}": v for k, v in settings.items()})
    return env


def _start(tmp_path: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    server = subprocess.Popen([str(LEDGER), "serve", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"ledger serve did not answer: {server.communicate()[0]}")
        time.sleep(0.2)


def _stop(server: subprocess.Popen) -> str:
    server.terminate()
    try:
        return server.communicate(timeout=10)[0]
    except subprocess.TimeoutExpired:
        server.kill()
        return server.communicate()[0]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _push(port: int, head: str, chunked: bool) -> tuple[int, bytes]:
    """Send ``head`` and then up to 200 MB of body as fast as the server takes it, until it
    answers; returns how many body bytes went out and the answer's status line."""
    piece = b"x" * 65536
    frame = (b"%x\r\n" % len(piece)) + piece + b"\r\n" if chunked else piece
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head.encode("latin-1"))
        s.setblocking(False)
        pending = memoryview(frame)
        deadline = time.monotonic() + 60
        while sent < HUGE and time.monotonic() < deadline:
            readable, writable, _ = select.select([s], [s], [], 1)
            if readable:
                try:
                    data = s.recv(65536)
                except ConnectionResetError:
                    break
                answer += data
                if not data or b"\r\n" in answer:
                    break
            if writable:
                try:
                    n = s.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += n
                pending = pending[n:] or memoryview(frame)
        s.setblocking(True)
        s.settimeout(5)
        while b"\r\n" not in answer:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            answer += data
    return sent, answer.split(b"\r\n", 1)[0]


def test_serve_on_all_addresses_with_development_settings_exits_at_once(tmp_path):
    port = _free_port()
    done = subprocess.run([str(LEDGER), "serve", "--host", "0.0.0.0", "--port", str(port)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "LEDGER_DATA_KEY" in lines[0] and "LEDGER_TOKEN_SECRET" in lines[0], done.stderr
    assert not (tmp_path / "var").exists(), "nothing was opened"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "nothing listens"


def test_serve_on_loopback_with_development_settings_warns_once(tmp_path):
    port = _free_port()
    server = _start(tmp_path, port, _env())
    try:
        for _ in range(3):  # requests that decrypt nothing and that open the key store again
            assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200
    finally:
        output = _stop(server)
    mentions = [line for line in output.splitlines() if "LEDGER_DATA_KEY" in line]
    assert len(mentions) == 1 and mentions[0].startswith("warning:"), output
    assert "LEDGER_TOKEN_SECRET" in mentions[0]


def test_a_huge_body_is_answered_unread_and_memory_stays_flat(tmp_path):
    port = _free_port()
    server = _start(tmp_path, port, _env(token_secret=SECRET, data_key="serve hardening data key"))
    token = issue(SECRET, "district-1", "district_officer")
    try:
        base = _rss_kib(server.pid)
        cases = [
            ("POST /recipients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", True, b" 401 "),
            (f"POST /recipients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {HUGE}\r\n\r\n", False, b" 413 "),
            (f"POST /recipients HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
             "Transfer-Encoding: chunked\r\n\r\n", True, b" 413 "),
            (f"POST /recipients HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {HUGE}\r\n\r\n", False, b" 413 "),
        ]
        for head, chunked, expected in cases:
            sent, status = _push(port, head, chunked)
            assert expected in status, (head.splitlines()[0], status)
            # what a socket's buffers hold plus the 1 MiB limit: nowhere near the 200 MB offered
            assert sent < 32 * 1024 * 1024, (head.splitlines()[0], sent)
        assert _rss_kib(server.pid) - base < 64 * 1024, "the server's memory grew with the refused bodies"
        assert httpx.get(f"http://127.0.0.1:{port}/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        _stop(server)
