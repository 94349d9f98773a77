"""What the HTTP service refuses at the door, before a body is read (ADR 0013): bodies over
``LEDGER_MAX_BODY_BYTES``, requests without a valid bearer token, tokens with non-ASCII bytes.

The client is httpx on the ASGI app itself (``httpx.ASGITransport`` asks the request body for one
chunk each time the application reads), and every body is a generator that counts the bytes the
service pulled: "refused without reading" is measured, not assumed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from http_helpers import id_number

from infra.http import create_app
from infra.http.auth import TokenError, issue, verify
from infra.settings import DEFAULT_MAX_BODY_BYTES, Settings

SECRET = "door-test-token-secret-long-enough-for-serve"
LIMIT = 64 * 1024
CHUNK = 8 * 1024


class Body:
    """A request body of ``size`` bytes, produced on demand; ``pulled`` is what was asked for."""

    def __init__(self, size: int, start: bytes = b""):
        self.size, self.start, self.pulled = size, start, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.size:
            piece = (self.start if sent == 0 else b"") or b" " * min(CHUNK, self.size - sent)
            piece = piece[: self.size - sent]
            self.pulled += len(piece)
            sent += len(piece)
            yield piece


@pytest.fixture
def door(tmp_path: Path) -> Iterator["Door"]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'door.db'}", token_secret=SECRET, data_key="door data key",
                        max_body_bytes=LIMIT)
    app = create_app(settings)
    try:
        yield Door(app)
    finally:
        app.state.service.close()


class Door:
    def __init__(self, app):
        self.app = app
        self.ledger = app.state.service.ledger

    def send(self, method: str, path: str, *, body: Body | bytes | None = None, headers: dict | None = None,
             declared: int | None = None) -> httpx.Response:
        headers = dict(headers or {})
        if declared is not None:
            headers["Content-Length"] = str(declared)  # with a generator body: sent as declared, not chunked

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as client:
                return await client.request(method, path, content=body, headers=headers)

        return asyncio.run(go())

    def token(self, officer: str = "district-1", role: str = "district_officer") -> dict[str, str]:
        return {"Authorization": "Bearer " + issue(SECRET, officer, role), "Content-Type": "application/json"}

    def events(self) -> int:
        return self.ledger.recorder.max_notification_id() or 0


def _enrol_json(n: int = 1) -> bytes:
    return json.dumps({"id_number": id_number(n), "name": f"person {n}", "street": "华阳路街道"}).encode()


def test_the_limit_is_a_setting_of_one_mebibyte_by_default(monkeypatch):
    assert Settings().max_body_bytes == DEFAULT_MAX_BODY_BYTES == 1024 * 1024
    monkeypatch.setenv("LEDGER_MAX_BODY_BYTES", "2048")
    assert Settings().max_body_bytes == 2048
    monkeypatch.setenv("LEDGER_MAX_BODY_BYTES", "0")
    with pytest.raises(ValueError):
        Settings()


def test_a_declared_oversized_body_gets_413_unread_before_the_token_is_looked_at(door):
    before = door.events()
    for headers in ({}, door.token()):  # no token, and a good one: the size alone decides
        body = Body(200 * 1024 * 1024)
        r = door.send("POST", "/recipients", body=body, headers=headers, declared=body.size)
        assert r.status_code == 413, r.text
        assert r.json()["code"] == "PAYLOAD_TOO_LARGE" and "LEDGER_MAX_BODY_BYTES" in r.json()["message"]
        assert r.headers["connection"] == "close"
        assert body.pulled == 0
    assert door.events() == before


def test_an_unauthenticated_large_body_gets_401_without_being_read(door):
    before = door.events()
    for headers in ({}, {"Authorization": "Bearer not.a-token"}, {"Authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"},
                    {"Authorization": "Bearer " + issue("another secret", "district-1", "district_officer")}):
        body = Body(200 * 1024 * 1024, _enrol_json())
        r = door.send("POST", "/recipients", body=body, headers=headers)  # chunked: no length declared
        assert r.status_code == 401, r.text
        assert r.json()["code"] == "UNAUTHENTICATED" and r.headers["www-authenticate"] == "Bearer"
        assert body.pulled == 0, f"{body.pulled} bytes were read before the token was checked"
    assert door.events() == before


def test_a_chunked_body_past_the_limit_is_cut_there_and_gets_413(door):
    before = door.events()
    body = Body(200 * 1024 * 1024, _enrol_json())
    r = door.send("POST", "/recipients", body=body, headers=door.token())
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "PAYLOAD_TOO_LARGE" and r.headers["connection"] == "close"
    assert LIMIT < body.pulled <= LIMIT + CHUNK, body.pulled  # read up to the limit, not one chunk more
    assert door.events() == before


def test_bodies_within_the_limit_still_work(door):
    r = door.send("POST", "/recipients", body=_enrol_json(), headers=door.token())
    assert r.status_code == 201, r.text
    # exactly at the limit: not refused for its size (it is not valid JSON: 422)
    r = door.send("POST", "/recipients", body=b"{" + b" " * (LIMIT - 1), headers=door.token())
    assert r.status_code == 422, r.text
    r = door.send("POST", "/recipients", body=b"{" + b" " * LIMIT, headers=door.token())
    assert r.status_code == 413, r.text


def test_a_malformed_content_length_is_refused(door):
    r = door.send("POST", "/recipients", body=Body(10), headers={**door.token(), "Content-Length": "ten"})
    assert r.status_code == 400 and r.json()["code"] == "INVALID_CONTENT_LENGTH"


def test_a_token_with_a_non_ascii_byte_gets_401_not_500(door):
    good = issue(SECRET, "aud-1", "auditor")
    payload, signature = good.split(".")
    for raw in (b"Bearer \xff", b"Bearer " + payload.encode() + b"\xe9." + signature.encode(),
                b"Bearer " + payload.encode() + b"." + signature.encode() + b"\xc3\xa9", "Bearer 令牌.签名".encode()):
        for method, path, body in (("GET", "/me", None), ("POST", "/recipients", _enrol_json())):
            r = door.send(method, path, body=body, headers={"Authorization": raw, "Content-Type": "application/json"})
            assert r.status_code == 401, (raw, path, r.status_code, r.text)
            assert r.json()["code"] == "UNAUTHENTICATED"
    # and where no door stands in front: the token check itself refuses it as a TokenError
    for token in ("ÿ", payload + "é." + signature, "令牌.签名"):
        with pytest.raises(TokenError):
            verify(SECRET, token)
    assert door.send("GET", "/me", headers={"Authorization": "Bearer " + good}).status_code == 200


def test_the_console_login_refuses_a_non_ascii_token_with_401(door):
    form = "token=" + "%E4%BB%A4%E7%89%8C.%FF" + "&next=%2Fconsole%2F"
    r = door.send("POST", "/console/login", body=form.encode(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 401, r.text[:300]


def test_public_paths_stay_public_and_everything_else_is_closed(door):
    for path in ("/health", "/ready", "/openapi.json", "/docs", "/redoc", "/console/login", "/console/static/console.css"):
        r = door.send("GET", path)
        assert r.status_code != 401, (path, r.status_code)
    assert door.send("GET", "/health").status_code == 200
    assert door.send("GET", "/openapi.json").status_code == 200
    # an unknown path answers 401 to a stranger (nothing is learnt of what exists), 404 to an officer
    assert door.send("GET", "/no-such-thing").status_code == 401
    assert door.send("GET", "/no-such-thing", headers=door.token()).status_code == 404


def test_the_console_reads_no_form_without_a_session(door):
    body = Body(200 * 1024 * 1024, b"q=x&csrf=y")
    r = door.send("POST", "/console/recipients", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    assert body.pulled == 0
    body = Body(200 * 1024 * 1024, b"token=x")
    r = door.send("POST", "/console/login", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413 and body.pulled <= LIMIT + CHUNK  # the login form is public, and limited
