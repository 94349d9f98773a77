"""``ledger serve`` starts on a bare machine (embedded SQLite by default) and answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

LEDGER = Path(sys.executable).with_name("ledger")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ledger_serve_answers_health_ready_and_tokens(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_TOKEN_SECRET"] = "e2e-secret"
    token = subprocess.run([str(LEDGER), "token", "issue", "--officer", "aud-1", "--role", "auditor"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    server = subprocess.Popen([str(LEDGER), "serve", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "ledger serve did not answer within 30 s"
            time.sleep(0.2)
        assert httpx.get(f"{base}/ready").json()["status"] == "ready"
        assert httpx.get(f"{base}/me").status_code == 401
        me = httpx.get(f"{base}/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["officer"] == "aud-1"
        assert (tmp_path / "var" / "ledger.db").exists()  # the embedded default store
    finally:
        server.terminate()
        server.wait(timeout=10)
