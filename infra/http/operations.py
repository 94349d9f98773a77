"""Operating the HTTP service: ``/metrics`` (Prometheus), one log line per request (JSON when
``LEDGER_LOG_FORMAT=json``), the API documents served without internet, and the readiness of the
read models.

What is measured and logged is about requests and positions only: never an id number, a name, a
query string or a body (the console's search text included), so neither the metrics nor the logs
hold personal data (ADR 0015).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.responses import HTMLResponse, Response

from ledger.values import CST

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("ledger.http")

#: The API documents' assets, from the ``fastapi-offline`` package (no CDN: /docs and /redoc
#: render on a machine without internet).
DOCS_ASSETS = "/docs-assets"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# ----------------------------------------------------------------------------------- logging
class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (+08:00), level, logger, message and the request's fields."""

    FIELDS = ("request_id", "officer", "role", "method", "route", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, CST).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in self.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, ensure_ascii=False)


def log_format() -> str:
    return "json" if os.environ.get("LEDGER_LOG_FORMAT", "").strip().lower() == "json" else "text"


def configure_logging(stream: Any = None) -> None:
    """``LEDGER_LOG_FORMAT=json``: the service's loggers (``ledger.*``) write one JSON object a line,
    one line per request included. Otherwise logging is left as it is (uvicorn's access log
    gives the request lines). Idempotent."""
    logger = logging.getLogger("ledger")
    for old in [h for h in logger.handlers if h.get_name() == "ledger-operations"]:
        logger.removeHandler(old)
        logger.propagate = True
    if log_format() != "json":
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.set_name("ledger-operations")
    logger.addHandler(handler)
    logger.propagate = False
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's logging for ``ledger serve``: its own in text; JSON lines (and no separate access
    log: the service writes one line per request itself) when ``LEDGER_LOG_FORMAT=json``."""
    from uvicorn.config import LOGGING_CONFIG

    if log_format() != "json":
        return LOGGING_CONFIG
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


# ----------------------------------------------------------------------------------- metrics
class Metrics:
    """The service's Prometheus registry: request latency by route template, method and status;
    the store's and the read models' positions, read at each scrape."""

    def __init__(self, service: Any):
        from prometheus_client import CollectorRegistry, Histogram

        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "ledger_http_request_duration_seconds",
            "HTTP request latency, by route template, method and status",
            ("route", "method", "status"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.store = _StoreCollector(service)
        self.registry.register(self.store)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def close(self) -> None:
        self.store.close()


class _StoreCollector:
    """Positions read at scrape time: events appended, read-model and relay lag (events, seconds),
    age of the last sealed checkpoint. A figure that cannot be read is left out, never faked."""

    def __init__(self, service: Any):
        self.service = service
        self._relay_engine: Any = None

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        ledger = self.service.ledger
        now = time.time()
        head = int(ledger.recorder.max_notification_id() or 0)
        events = GaugeMetricFamily("ledger_events_appended", "Events appended to the store (the log's head position)")
        events.add_metric([], head)
        yield events

        proj_events = GaugeMetricFamily("ledger_projection_lag_events", "Events a read model has still to apply", labels=["view"])
        proj_seconds = GaugeMetricFamily("ledger_projection_lag_seconds", "Age of the oldest event a read model has not applied (0 when current)", labels=["view"])
        proj_stalled = GaugeMetricFamily("ledger_projection_stalled", "1 when a read model is stopped at an event it could not apply", labels=["view"])
        try:
            statuses = list(self.service.projections().status()) if self.service.projections() is not None else []
        except Exception:  # noqa: BLE001 - a scrape reports what it can read
            statuses = []
        for st in statuses:
            proj_events.add_metric([st.name], st.lag)
            proj_seconds.add_metric([st.name], self._age_after(st.position, head, now))
            proj_stalled.add_metric([st.name], 1 if st.failed is not None else 0)
        yield proj_events
        yield proj_seconds
        yield proj_stalled

        relay = self._relay_positions()
        relay_events = GaugeMetricFamily("ledger_relay_lag_events", "Events the relay has still to publish", labels=["relay"])
        relay_seconds = GaugeMetricFamily("ledger_relay_lag_seconds", "Age of the oldest event the relay has not published (0 when current)", labels=["relay"])
        for name, position in relay:
            relay_events.add_metric([name], max(0, head - position))
            relay_seconds.add_metric([name], self._age_after(position, head, now))
        yield relay_events
        yield relay_seconds

        checkpoint = self._last_checkpoint()
        if checkpoint is not None:
            age = GaugeMetricFamily("ledger_checkpoint_age_seconds", "Age of the last sealed integrity checkpoint")
            age.add_metric([], max(0.0, now - checkpoint))
            yield age

    def _age_after(self, position: int, head: int, now: float) -> float:
        """Seconds since the first event after ``position`` was recorded; 0 when none is left."""
        if position >= head:
            return 0.0
        ledger = self.service.ledger
        try:
            notes = ledger.recorder.select_notifications(position + 1, 1)
            if not notes:
                return 0.0
            event = ledger.mapper.to_domain_event(notes[0])
            return max(0.0, now - event.timestamp.timestamp())
        except Exception:  # noqa: BLE001
            return 0.0

    def _relay_positions(self) -> list[tuple[str, int]]:
        import sqlalchemy as sa

        try:
            if self._relay_engine is None:
                self._relay_engine = sa.create_engine(self.service.settings.sqlalchemy_url(), future=True)
            if not sa.inspect(self._relay_engine).has_table("relay_tracking"):
                return []
            with self._relay_engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT name, position FROM relay_tracking ORDER BY name")).all()
            return [(str(r[0]), int(r[1])) for r in rows]
        except Exception:  # noqa: BLE001
            return []

    def _last_checkpoint(self) -> float | None:
        last = getattr(self.service.ledger.recorder, "chain_last_checkpoint", None)
        if last is None:
            return None
        try:
            cp = last()
            return datetime.fromisoformat(cp.recorded_at).timestamp() if cp is not None else None
        except Exception:  # noqa: BLE001
            return None

    def close(self) -> None:
        if self._relay_engine is not None:
            self._relay_engine.dispose()


# ------------------------------------------------------------------------------- middleware
class ObservedRequests:
    """Pure ASGI: times each request, gives it an id (``X-Request-ID``, kept from the caller when
    it sends a plain one), records its latency by route template and writes one log line with the
    officer (from the token; never the query or the body)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, token_secret: Callable[[], str], routes: Callable[[], list[Any]] = list):
        self.app = app
        self.metrics = metrics
        self.token_secret = token_secret
        self.routes = routes  # the router's routes: a request answered before routing (401, 413) is still named by its template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root = scope.get("root_path", "") or ""
        request_id = _request_id(scope)
        status = {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope, root, self.routes())
            method = scope.get("method", "")
            self.metrics.latency.labels(route, method, str(status["code"])).observe(elapsed)
            officer, role = self._caller(scope)
            log.info(
                "%s %s %s %.1fms", method, route, status["code"], elapsed * 1000,
                extra={"request_id": request_id, "officer": officer, "role": role, "method": method, "route": route,
                       "status": status["code"], "duration_ms": round(elapsed * 1000, 1)},
            )

    def _caller(self, scope: Scope) -> tuple[str | None, str | None]:
        from starlette.datastructures import Headers

        from infra.http.auth import TokenError, verify

        headers = Headers(scope=scope)
        token = None
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        else:
            for part in headers.get("cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == "ledger_console":
                    token = value
        if not token:
            return None, None
        try:
            p = verify(self.token_secret(), token)
        except TokenError:
            return None, None
        return p.officer, p.role.value


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            if 0 < len(text) <= 64 and all(c.isalnum() or c in "-_." for c in text):
                return text
    return uuid.uuid4().hex


def _route_template(scope: Scope, root: str = "", routes: list[Any] | None = None) -> str:
    """The matched route's template (``/recipients/{recipient_id}``), never the path itself (a path
    can carry an id); a mounted application by its prefix (``/docs-assets/*``); ``unmatched`` for
    a request no route takes."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    mounted = scope.get("root_path", "") or ""
    if mounted != root and mounted.startswith(root):
        return f"{mounted[len(root):]}/*"
    from starlette.routing import Match, Mount

    probe = {**scope, "root_path": root}
    for candidate in routes or []:  # answered before routing (the guard's 401 / 413): which route it was for
        try:
            match, _ = candidate.matches(probe)
        except Exception:  # noqa: BLE001
            continue
        if match != Match.NONE:
            return f"{candidate.path}/*" if isinstance(candidate, Mount) else candidate.path
    return "unmatched"


# --------------------------------------------------------------------------------- install
def install(app: Any, service: Any) -> None:
    """``/metrics``, request observation and logs, and the offline API documents on ``app``
    (``create_app`` calls it before it adds the guard, so the guard runs first)."""
    from contextlib import asynccontextmanager

    configure_logging()
    metrics = Metrics(service)
    app.state.metrics = metrics
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> Any:
        async with original(a) as state:
            try:
                yield state
            finally:
                metrics.close()

    app.router.lifespan_context = lifespan
    app.state.public_paths.add("/metrics")

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    favicon = Path(__file__).parent / "static" / "console" / "favicon.svg"
    app.state.public_paths.add("/favicon.ico")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon_ico() -> Response:  # browsers ask for it unprompted: the console's icon, not a 401
        return Response(favicon.read_bytes(), media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})

    _install_docs(app)
    app.add_middleware(ObservedRequests, metrics=metrics, token_secret=lambda: service.settings.token_secret, routes=lambda: app.router.routes)


def _install_docs(app: Any) -> None:
    """/docs (Swagger UI) and /redoc with their scripts served here, from the fastapi-offline
    package, instead of from a CDN."""
    import fastapi_offline
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.staticfiles import StaticFiles

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        app.state.public_paths.add(f"{DOCS_ASSETS}/{name}")
    docs, redoc, oauth = "/docs", "/redoc", "/docs/oauth2-redirect"
    app.state.public_paths.update({docs, redoc, oauth})

    @app.get(docs, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI", oauth2_redirect_url=oauth,
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        )

    @app.get(oauth, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc, include_in_schema=False)
    def redoc_html(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc", redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", with_google_fonts=False,
        )
