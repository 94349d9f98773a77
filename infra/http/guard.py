"""The door of the HTTP service (ADR 0013): what is refused before any endpoint runs.

A pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` would buffer the body it must not
read). For every HTTP request, in this order:

1. A declared ``Content-Length`` over ``LEDGER_MAX_BODY_BYTES`` gets 413 ``PAYLOAD_TOO_LARGE``,
   and a malformed one 400, without reading a byte of the body. A route may take a larger limit
   (``route_limit``: the settlement-file uploads take ``LEDGER_MAX_UPLOAD_BYTES``, docs/import.md).
2. Outside the public paths (health, readiness, the API documents, the console, which keeps its
   own cookie session and checks it before it reads a form), the bearer token is verified:
   401 ``UNAUTHENTICATED`` without a valid one, the body still unread. FastAPI reads a request's
   body before it resolves the endpoint's dependencies, so the endpoint's own check comes too late
   to spare the server a large body; the role check (403) stays with the endpoint.
3. A body without a declared length (chunked) is counted while the application reads it: past
   the limit the read stops and the answer is 413, whatever the endpoint would have said.

Early answers carry ``Connection: close`` when a body may still be on its way, so that the server
drops the connection instead of draining it. Each request also opens a :func:`privacy.fresh_keys`
scope: a person erased by any process is no longer served from the first request after (ADR 0015).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.responses import Response

from infra import privacy
from infra.http.auth import TokenError, verify

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: ``(status, code, message, field, headers) -> Response``: the service's error body.
Problem = Callable[[int, str, str, str, dict[str, str]], Response]


class _TooLarge(Exception):
    """The body went past the limit while it was read."""


def route_path(scope: Scope) -> str:
    """The path the router matches (without the ``root_path`` a proxy mounts the service at)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


class RequestGuard:
    """Body size limit and bearer token check before the body is read (see the module's text)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: Callable[[], int],
        token_secret: Callable[[], str],
        is_public: Callable[[str], bool],
        problem: Problem,
        route_limit: Callable[[str], int | None] | None = None,
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        #: A larger limit for some paths (the settlement-file uploads, LEDGER_MAX_UPLOAD_BYTES), else None.
        self.route_limit = route_limit
        self.token_secret = token_secret
        self.is_public = is_public
        self.problem = problem

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with privacy.fresh_keys():
            await self._http(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str,
                      field: str = "", headers: dict[str, str] | None = None, *, body_pending: bool) -> None:
        headers = dict(headers or {})
        if body_pending:
            headers["Connection"] = "close"
        await self.problem(status, code, message, field, headers)(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        special = self.route_limit(route_path(scope)) if self.route_limit else None
        limit = special or self.max_body_bytes()
        setting = "LEDGER_MAX_UPLOAD_BYTES" if special else "LEDGER_MAX_BODY_BYTES"
        declared = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        body_pending = chunked or (declared is not None and declared.strip() not in ("", "0"))
        if declared is not None:
            if not declared.strip().isdigit():
                await self._refuse(scope, receive, send, 400, "INVALID_CONTENT_LENGTH", "Content-Length must be a number of bytes",
                                   "Content-Length", body_pending=True)
                return
            if int(declared) > limit:
                await self._refuse(scope, receive, send, 413, "PAYLOAD_TOO_LARGE",
                                   f"the request body is {int(declared)} bytes; this service takes at most {limit} ({setting})",
                                   "body", body_pending=True)
                return
        if not self.is_public(route_path(scope)):
            refusal = self._unauthenticated(headers)
            if refusal is not None:
                await self._refuse(scope, receive, send, 401, "UNAUTHENTICATED", refusal, "", {"WWW-Authenticate": "Bearer"},
                                   body_pending=body_pending)
                return
        await self._counted(scope, receive, send, limit, setting)

    def _unauthenticated(self, headers: Headers) -> str | None:
        """Why the request cannot be trusted, or None; the same reading of the header as the
        endpoint's ``HTTPBearer`` dependency, the same messages as its 401."""
        authorization = headers.get("authorization")
        scheme, credentials = get_authorization_scheme_param(authorization)
        if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
            return "a bearer token is required"
        try:
            verify(self.token_secret(), credentials)
        except TokenError as exc:
            return f"invalid token: {exc}"
        return None

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int, setting: str = "LEDGER_MAX_BODY_BYTES") -> None:
        state = {"received": 0, "over": False, "started": False}

        async def limited_receive() -> Message:
            if state["over"]:
                raise _TooLarge()
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["over"] = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"] and not state["started"]:
                return  # whatever the endpoint makes of the cut body, the answer is 413
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if state["started"]:
                raise
        if state["over"] and not state["started"]:
            await self._refuse(scope, receive, send, 413, "PAYLOAD_TOO_LARGE",
                               f"the request body is over {limit} bytes; this service takes at most {limit} ({setting})",
                               "body", body_pending=True)
