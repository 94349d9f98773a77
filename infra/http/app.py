"""The HTTP service: a FastAPI adapter over ``LedgerApp.run`` and the read functions.

Each endpoint authenticates the bearer token, checks the caller's role against
:data:`PERMISSIONS` (and, for a street handler, the recipient's street), turns the request into
one command and hands it to the ledger, or reads and shapes what the ledger already holds. Rules
live in the domain: the officer ids a command signs with come from the token, so separation of
duties (R-PH-4 [002 3.4], R-CLR-3) is decided by ``commands.app`` on authenticated ids.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from types import ModuleType
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, Header, Path, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError, ResponseValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from commands import models as m
from commands.app import LedgerApp, Result, WriteConflict, recipient_of
from commands.repository import Kept
from infra.http import schemas as s
from infra.http import list_schemas as ls
from infra.http import transfers, views
from infra.http.auth import Principal, Role, TokenError, verify
from infra.http.guard import RequestGuard
from infra.http.store import HttpStore
from infra.input_errors import rule_for
from infra.settings import Settings, get_settings
from ledger import errors
from ledger.aggregates import Claim, PolicyLedger, Recipient
from ledger.values import CST, street_name

R = Role
#: Routes that take a settlement file: their bodies may reach LEDGER_MAX_UPLOAD_BYTES (docs/import.md).
UPLOAD_PATHS = frozenset({"/imports", "/console/import"})
_READERS = frozenset({R.STREET_HANDLER, R.REVIEWER, R.APPROVER, R.DISTRICT_OFFICER, R.CLEARING_OFFICER, R.AUDITOR})
_DISTRICT_READERS = frozenset({R.REVIEWER, R.APPROVER, R.DISTRICT_OFFICER, R.CLEARING_OFFICER, R.AUDITOR})

#: Who may call what (ADR 0013). A street handler is further limited to recipients of their own
#: street (R-PH-1 [002 4.1]); the auditor reads everything and writes nothing; the regulator
#: reads point-in-time snapshots only (R-TIME-3).
PERMISSIONS: dict[str, frozenset[Role]] = {
    # writes
    "enrol": frozenset({R.STREET_HANDLER, R.DISTRICT_OFFICER}),
    "grant_category": frozenset({R.DISTRICT_OFFICER}),
    "revoke_category": frozenset({R.DISTRICT_OFFICER}),
    "insure": frozenset({R.DISTRICT_OFFICER, R.SYSTEM}),
    "end_insurance": frozenset({R.DISTRICT_OFFICER, R.SYSTEM}),
    "join_mutual_aid": frozenset({R.DISTRICT_OFFICER}),
    "consent_auto_claim": frozenset({R.STREET_HANDLER, R.DISTRICT_OFFICER}),
    "record_expense": frozenset({R.STREET_HANDLER, R.SYSTEM}),
    "settle_insurance": frozenset({R.SYSTEM}),
    "one_stop": frozenset({R.SYSTEM}),
    "lodge_claim": frozenset({R.STREET_HANDLER, R.DISTRICT_OFFICER}),
    "review_claim": frozenset({R.REVIEWER}),
    "approve_claim": frozenset({R.APPROVER}),
    "pay_claim": frozenset({R.DISTRICT_OFFICER}),
    "auto_claims": frozenset({R.SYSTEM, R.DISTRICT_OFFICER}),
    "review_batch": frozenset({R.REVIEWER}),
    "approve_batch": frozenset({R.APPROVER}),
    "pay_batch": frozenset({R.DISTRICT_OFFICER}),
    "set_parameter": frozenset({R.DISTRICT_OFFICER}),
    "lift_suspension": frozenset({R.DISTRICT_OFFICER}),
    "social_help": frozenset({R.DISTRICT_OFFICER}),
    "pay_supplementary": frozenset({R.DISTRICT_OFFICER}),
    "repay": frozenset({R.CLEARING_OFFICER}),
    "propose_write_off": frozenset({R.CLEARING_OFFICER}),
    "approve_write_off": frozenset({R.APPROVER, R.DISTRICT_OFFICER}),
    "refuse_write_off": frozenset({R.APPROVER, R.DISTRICT_OFFICER}),
    "run_clearing": frozenset({R.CLEARING_OFFICER, R.DISTRICT_OFFICER}),
    "transfer": frozenset({R.DISTRICT_OFFICER}),  # a person moves district (R-CAP-4, ADR 0020)
    # a month's settlement file (R-PH-2 [002 3.2]; a street handler's rows: their own street only)
    "import_expenses": frozenset({R.STREET_HANDLER, R.SYSTEM, R.DISTRICT_OFFICER}),
    # reads of one person's data (each one recorded in the access log)
    "recipient_statement": _READERS,
    "recipient_caps": _READERS,
    "recipient_clearing": _READERS,
    "claim_status": _READERS,
    "explain_expense": _READERS,
    "replay_expense": _READERS,
    # population-wide reads
    "clearing_cases": frozenset({R.APPROVER, R.DISTRICT_OFFICER, R.CLEARING_OFFICER, R.AUDITOR}),
    "clearing_case": frozenset({R.APPROVER, R.DISTRICT_OFFICER, R.CLEARING_OFFICER, R.AUDITOR}),
    "write_off_proposals": frozenset({R.APPROVER, R.DISTRICT_OFFICER, R.CLEARING_OFFICER, R.AUDITOR}),
    "duplicate_index": _DISTRICT_READERS,
    "snapshot": frozenset({R.REGULATOR, R.AUDITOR, R.DISTRICT_OFFICER}),
    "projections_status": frozenset({R.DISTRICT_OFFICER, R.CLEARING_OFFICER, R.AUDITOR, R.SYSTEM}),
    "access_log": frozenset({R.AUDITOR}),
    "whoami": frozenset(Role),
    # finding (ADR 0019): paginated lists; a street handler sees their own street only (R-PH-1)
    "list_recipients": _READERS,
    "list_expenses": _READERS,
    "list_claims": _READERS,
    "list_payments": _READERS,
}

RecipientId = Annotated[uuid.UUID, Path(description="the recipient's id (returned by enrol)")]
ClaimId = Annotated[uuid.UUID, Path(description="the claim's id (returned when it was lodged)")]
ExpenseId = Annotated[
    str,
    Path(
        description="the expense's id, `<recipient uuid>:<n>` (returned by record_expense)",
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}:[1-9][0-9]{0,8}$",
    ),
]
#: An expense as the ledger shows it: its id or its handle (``E004997``), ADR 0019.
ExpenseRef = Annotated[
    str,
    Path(description="the expense: its id `<recipient uuid>:<n>` or its handle as recorded (e.g. `E004997`)", min_length=1, max_length=200),
]

log = logging.getLogger("ledger.http")


# the finding lists' query parameters (ADR 0019)
Cursor = Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page")]
Limit = Annotated[int, Query(ge=1, le=500, description="rows per page")]
Street = Annotated[str | None, Query(max_length=100, description="one street office (a street handler's own by default)")]
Month = Annotated[str | None, Query(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", description="YYYY-MM, China Standard Time")]


def _expense_ref(svc: "Service", text: str) -> str:
    from commands.lookup import resolve_expense

    return resolve_expense(svc.ledger, text)


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="a client-chosen key: a retry with the same key returns the first response, status code included",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9._:~-]+$",
    ),
]

_PROBLEM = {"model": s.Problem}
_COMMON = {401: _PROBLEM, 403: _PROBLEM, 404: _PROBLEM, 422: _PROBLEM}
_WRITE = {**_COMMON, 409: {"model": s.Problem, "description": "a rule rejected the command (code and R-id), or `CONFLICT`: "
                                                              "concurrent writers outlasted the retries, nothing was recorded, send it again"}}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, rule: str = "", field: str = "", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.rule, self.field, self.headers = status, code, message, rule, field, headers


def _problem(status: int, code: str, message: str, *, rule: str | None = "", field: str | None = "", kind: str = "error", ids: dict | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"status": kind, "code": code, "rule": rule or "", "message": message, "field": field or "", "ids": ids or {}}
    return JSONResponse(body, status_code=status, headers=headers)


def _ledger_error_response(exc: errors.LedgerError) -> JSONResponse:
    if isinstance(exc, WriteConflict):  # retryable: nothing was recorded
        return _problem(409, exc.code, exc.message, headers={"Retry-After": "1"})
    if exc.code == "ALREADY_ENROLLED":  # a duplicate enrolment conflicts with the one recorded (ADR 0019)
        return _problem(409, exc.code, exc.message, rule=exc.rule, field=exc.field)
    if isinstance(exc, errors.UnknownEntity):
        return _problem(404, exc.code, exc.message, rule=exc.rule, field=exc.field)
    if isinstance(exc, errors.InvalidInput):
        return _problem(422, exc.code, exc.message, rule=exc.rule, field=exc.field)
    if isinstance(exc, errors.Rejected):
        return _problem(409, exc.code, exc.message, rule=exc.rule, field=exc.field, kind="rejected")
    return _problem(409, exc.code, exc.message, rule=exc.rule, field=exc.field)


def _validation_problem(errs: list[Any]) -> JSONResponse:
    first = errs[0] if errs else {"loc": (), "msg": "invalid input"}
    if first.get("type") == "json_invalid":
        # FastAPI reports a body that is not JSON at ("body", <character offset>): the field is the body
        at = next((x for x in first.get("loc", ()) if isinstance(x, int)), None)
        where = f" at character {at}" if at is not None else ""
        return _problem(422, "INVALID_INPUT", f"body: not valid JSON{where}: {first.get('msg', '')}", field="body",
                        rule="RFC 8259: a request body is one JSON object")
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path", "header")]
    message = "; ".join(
        f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'input'}: {str(e.get('msg', '')).removeprefix('Value error, ')}"
        for e in errs[:10]
    )
    field = ".".join(loc)
    rule = rule_for(None, field, str(first.get("type", "")), str(first.get("msg", "")))
    return _problem(422, "INVALID_INPUT", message or "invalid input", field=field, rule=rule)


# ---------------------------------------------------------------------- the service object
class Service:
    """What a request needs: the ledger, the HTTP records store, the settings."""

    def __init__(self, settings: Settings, ledger: LedgerApp, store: HttpStore, *, owns: bool):
        self.settings, self.ledger, self.store, self.owns = settings, ledger, store, owns
        self._projection_engine: Any = None
        self._engine_lock = threading.Lock()
        self._read_models_ready: set[str] = set()  # views set up by this process (bounded by the views)
        self.followers = views.Followers()  # each view's runner, kept between requests
        self.names = views.EnrolledNames()  # the people GET /clearing/cases names, decoded once
        self.kept = Kept(8)  # district-wide answers while their read model's rows stay as they were
        self.kept_rows = Kept(50_000)  # rows of those answers, each rendered once
        self.rows = Kept(50_000)  # snapshot rows per recipient cut (commands.snapshot.snapshot_from_cuts)

    def read_model(self, name: str) -> tuple[Any, Any]:
        """The read-model engine and the status of view ``name``, caught up to the log's head
        (``views.caught_up``, ADR 0008)."""
        engine = self.projection_engine()
        return engine, views.caught_up(engine, self.ledger, name, self._read_models_ready, self.followers)

    #: The read models district-wide reads answer from (ADR 0008), brought to the head by
    #: :meth:`warm` before a worker takes its first request.
    FOLLOWED = ("clearing_cases", "duplicates", "cuts")

    def warm(self) -> None:
        """Each followed read model that has been built caught up in this process, and the
        clearing list rendered once (its names decoded): what the first requests of a new worker
        would otherwise all wait for at once. A view never built is left to ``ledger projections
        rebuild`` (or its first read); a failure here is logged and left to the requests."""
        for name in self.FOLLOWED:
            try:
                if not self.built(name):
                    continue
                engine, _ = self.read_model(name)
                if name == "clearing_cases":
                    views.clearing_cases_answer(engine, self.ledger, None, self.names, self.kept, _json_bytes, self.kept_rows)
            except Exception as exc:  # noqa: BLE001 - the service still starts; the read will say what is wrong
                log.warning("warming the %s read model failed: %s", name, exc)

    def projection_engine(self) -> Any:
        """The read models' engine (created on first use)."""
        if self._projection_engine is None:
            from projections.common import make_engine, projection_url

            with self._engine_lock:  # one engine (one pool) per process, however many threads ask first
                if self._projection_engine is None:
                    self._projection_engine = make_engine(projection_url(self.settings.sqlalchemy_url()))
        return self._projection_engine

    def built(self, name: str) -> bool:
        """Whether view ``name`` has been built in this store (set up by this process, or found
        with a stored version): a read then answers from it."""
        if name in self._read_models_ready:
            return True
        runner = self.projections()
        status = next((x for x in runner.status() if x.name == name), None) if runner is not None else None
        return status is not None and status.stored_version is not None

    def projections(self) -> Any:
        """A runner over the read models (for their status and the duplicate index), or None
        when this build has none; nothing is created or applied here."""
        runner_mod = _optional_module("projections.runner")
        if runner_mod is None:
            return None
        return _ReadOnlyRunner(runner_mod.Runner(self.projection_engine(), self.ledger.recorder, self.ledger.mapper))

    def close(self) -> None:
        self.store.close()
        if self._projection_engine is not None:
            self._projection_engine.dispose()
        if self.owns:
            close = getattr(self.ledger, "close", None)
            if close:
                close()


class _ReadOnlyRunner:
    """The projection runner's reads only; a store where the read models were never set up
    reports every view as not built instead of failing."""

    def __init__(self, runner: Any):
        self.runner, self.engine = runner, runner.engine

    def status(self) -> list[Any]:
        from sqlalchemy import inspect

        if not inspect(self.engine).has_table("proj_tracking"):
            from projections.runner import Status

            head = self.runner.head()
            return [Status(p.name, p.version, None, 0, head, None) for p in self.runner.projections]
        return self.runner.status()


def _service(request: Request) -> Service:
    return request.app.state.service


_bearer = HTTPBearer(auto_error=False, description="`ledger token issue --officer X --role R [--street S]`")


async def current(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """The authenticated caller; 401 without a valid, unexpired token. A check of a few
    microseconds, made on the event loop (a worker thread is taken by the endpoint only)."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if creds is None or creds.scheme.lower() != "bearer":
        raise ApiError(401, "UNAUTHENTICATED", "a bearer token is required", headers=challenge)
    try:
        return verify(_service(request).settings.token_secret, creds.credentials)
    except TokenError as exc:
        raise ApiError(401, "UNAUTHENTICATED", f"invalid token: {exc}", headers=challenge) from None


Caller = Annotated[Principal, Depends(current)]


def _allow(operation: str) -> Callable[[Principal], Principal]:
    roles = PERMISSIONS[operation]

    async def check(p: Caller) -> Principal:
        if p.role not in roles:
            raise ApiError(403, "FORBIDDEN", f"role {p.role.value} may not {operation.replace('_', ' ')}", field="role")
        return p

    return check


def _own_street(p: Principal, street: str, what: str = "recipient") -> None:
    """R-PH-1 [002 4.1]: a street handler acts only for recipients of their own street office."""
    if p.role is Role.STREET_HANDLER and street_name(street) != street_name(p.street):
        raise ApiError(403, "OTHER_STREET", f"this {what} belongs to another street office; a street handler acts for their own street only [002 4.1]", rule="R-PH-1", field=what)


def _recipient(svc: Service, p: Principal, recipient_id: uuid.UUID | str) -> Recipient:
    r = svc.ledger.recipient(recipient_id)
    _own_street(p, r.street)
    return r


def _log_read(svc: Service, p: Principal, operation: str, target: str, recipients: list[str] | None) -> None:
    """Every read of personal data is recorded before the data leaves (ADR 0014)."""
    svc.store.record_access(officer=p.officer, role=p.role.value, street=p.street, recipients=recipients, operation=operation, target=target)


def _aware(moment: datetime | None, name: str) -> None:
    if moment is not None and moment.tzinfo is None:
        raise ApiError(422, "INVALID_INPUT", f"{name}: a time needs a UTC offset, e.g. 2026-06-30T18:00:00+08:00", field=name)
    if moment is not None and not 1900 <= moment.year <= 2199:
        # as every command's recorded time (commands/models.py Command); 0001-01-01+01:00 has no UTC
        raise ApiError(422, "INVALID_INPUT", f"{name}: a time must fall in the years 1900–2199", field=name)


_SNAPSHOT_MEDIA = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "json": "application/json",
}


def _json_bytes(content: Any) -> bytes:
    """The bytes of ``JSONResponse(jsonable_encoder(content))`` for content that is JSON already
    but for a few values (those go through ``jsonable_encoder``), without walking every row."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"), default=jsonable_encoder).encode("utf-8")


def _rendered_in_thread(endpoint: Callable[..., Any], model: Any, status_code: int) -> Callable[..., Any]:
    """A sync endpoint whose answer is checked against its response model and rendered in the
    worker thread that ran it, as FastAPI would (``validate_python``, then ``dump_json`` by alias):
    FastAPI takes a thread of the pool a second time to check a sync endpoint's answer, and
    under load that second turn waits behind every request queued since. An endpoint that returns
    a ``Response`` is left as it is; the route keeps its model for the OpenAPI document."""
    if model is None or inspect.iscoroutinefunction(endpoint):
        return endpoint
    adapter: TypeAdapter[Any] = TypeAdapter(model)

    @functools.wraps(endpoint)
    def rendered(*args: Any, **kwargs: Any) -> Any:
        out = endpoint(*args, **kwargs)
        if isinstance(out, Response):
            return out
        try:
            value = adapter.validate_python(out, from_attributes=True)
        except ValidationError as exc:
            raise ResponseValidationError(errors=[{**e, "loc": ("response", *e["loc"])} for e in exc.errors(include_url=False)], body=out) from None
        return Response(adapter.dump_json(value, by_alias=True), status_code=status_code, media_type="application/json")

    return rendered


#: What the read endpoints import on first use: imported at start-up instead, so that the first
#: requests of a new worker do not wait seconds behind the imports of another.
_READ_PATH_MODULES = ("projections.runner", "projections.clearing", "projections.duplicates", "projections.cuts",
                      "commands.snapshot", "commands.clearing_views", "commands.lookup", "commands.explain", "commands.replay",
                      "infra.http.snapshot_files")


def _import_read_paths() -> None:
    for name in _READ_PATH_MODULES:
        _optional_module(name)
    runner = _optional_module("projections.runner")
    if runner is not None:
        runner.all_projections()  # imports every view's module


def _optional_module(name: str) -> ModuleType | None:
    """A read module another part of the project provides (``commands.explain``, ...)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


# ---------------------------------------------------------------------- writes
def _result_response(result: Result, created: bool) -> tuple[int, dict[str, Any]]:
    if result.status == "accepted":
        return (201 if created else 200), {"status": "accepted", "ids": jsonable_encoder(result.ids)}
    return 409, {
        "status": "rejected",
        "code": result.code or "REJECTED",
        "rule": result.rule or "",
        "message": result.message or "",
        "field": result.field_name or "",
        "ids": jsonable_encoder(result.ids),
    }


def _write(request: Request, p: Principal, key: str | None, body: BaseModel | None, run: Callable[[str | None], tuple[int, dict[str, Any]]]) -> JSONResponse:
    """Run a write once per ``Idempotency-Key`` (per officer): the key becomes the command's
    ``command_id`` and the first response is kept and returned again, status code included."""
    svc = _service(request)
    scoped = f"{p.officer}/{key}" if key else None
    digest = hashlib.sha256(
        json.dumps(
            {"method": request.method, "path": request.url.path, "body": body.model_dump(mode="json", by_alias=True) if body else None},
            sort_keys=True, ensure_ascii=False,
        ).encode("utf-8", "surrogatepass")  # a lone surrogate is the command's to refuse (422), not the hash's
    ).hexdigest()
    key_reused = _problem(422, "IDEMPOTENCY_KEY_REUSED", "this Idempotency-Key was already used for a different request", field="Idempotency-Key")
    if scoped:
        stored = svc.store.stored_response(scoped)
        if stored is not None:
            if stored.request_hash != digest:
                return key_reused
            return JSONResponse(stored.body, status_code=stored.status_code, headers={"Idempotent-Replayed": "true", **_location(stored.status_code, stored.body)})
    try:
        status, out = run(f"http:{scoped}" if scoped else None)
    except ValidationError as exc:
        return _validation_problem(exc.errors())
    except WriteConflict as exc:  # not kept: a retry with the same key runs the command again
        return _ledger_error_response(exc)
    except errors.LedgerError as exc:
        if scoped and exc.code == "IDEMPOTENCY_MISMATCH":  # the ledger saw the key (as command_id) first
            return key_reused
        response = _ledger_error_response(exc)
        status, out = response.status_code, json.loads(bytes(response.body))
        if status != 409:
            return response
    except ApiError as exc:
        return _problem(exc.status, exc.code, exc.message, rule=exc.rule, field=exc.field)
    if scoped and status in (200, 201, 409):
        stored = svc.store.store_response(scoped, digest, status, out)
        if stored.request_hash != digest:  # a concurrent request with the same key and another body won
            return key_reused
        status, out = stored.status_code, stored.body
    return JSONResponse(out, status_code=status, headers=_location(status, out))


def _location(status: int, body: Any) -> dict[str, str]:
    """A 201 names what it created (RFC 9110 10.2.2): the claim, the expense's explanation, the
    recipient, or the write-off proposals."""
    if status != 201 or not isinstance(body, dict):
        return {}
    ids = body.get("ids") if isinstance(body.get("ids"), dict) else {}
    if ids.get("claim"):
        return {"Location": f"/claims/{ids['claim']}"}
    if ids.get("expense"):
        return {"Location": f"/expenses/{ids['expense']}/explain"}
    if ids.get("recipient"):
        return {"Location": f"/recipients/{ids['recipient']}"}
    if body.get("id") and body.get("status"):
        return {"Location": f"/write-offs?status={body['status']}"}
    return {}


def _command(request: Request, p: Principal, key: str | None, body: BaseModel | None, command: type[m.Command], fields: dict[str, Any], *, created: bool = False) -> JSONResponse:
    svc = _service(request)
    data = body.model_dump(by_alias=True) if body is not None else {}

    def run(command_id: str | None) -> tuple[int, dict[str, Any]]:
        cmd = command.model_validate({**data, **fields, "command_id": command_id})
        return _result_response(svc.ledger.run(cmd), created)

    return _write(request, p, key, body, run)


# ---------------------------------------------------------------------- the application
def create_app(settings: Settings | None = None, *, ledger: LedgerApp | None = None, store: HttpStore | None = None,
               worker: bool = False) -> FastAPI:
    """The HTTP service on the configured store (``LEDGER_DATABASE_URL``).

    ``worker``: the process serves this app and nothing else (``ledger serve`` and its worker
    processes, :func:`worker_app`), so the app may manage the process's cyclic collector
    (``infra.http.collector``, ADR 0023). An app served inside another process (a test client, an
    embedding) leaves that process's collector as it found it."""
    settings = settings or get_settings()
    if ledger is None:
        from infra.wiring import build_app

        ledger_app, owns = build_app(settings), True
    else:
        ledger_app, owns = ledger, False
    service = Service(settings, ledger_app, store or HttpStore.for_settings(settings), owns=owns)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Iterator[None]:
        import anyio.to_thread

        # Endpoints (and streamed bodies) run in at most ``settings.http_threads`` threads of a
        # worker process (LEDGER_HTTP_THREADS, ADR 0023); more requests wait their turn, first come
        # first served. A worker is one Python process (one core at a time): more threads only
        # share it out thinner, a request taking longer the more others run beside it, and each
        # running thread holds database connections (the server's limit is shared by every worker).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.http_threads
        await anyio.to_thread.run_sync(_import_read_paths)
        await anyio.to_thread.run_sync(service.warm)
        from infra.http.collector import WorkerCollector

        # The collector is the process's: only a worker process's own app manages it.
        collector = WorkerCollector(settings.http_gc_full_seconds if worker else 0)
        collector.start()
        try:
            yield
        finally:
            collector.stop()
            service.close()

    app = FastAPI(
        title="Medical-aid ledger (医疗救助台账)",
        version="1",
        description=(
            "Commands and queries of the district medical-aid ledger. Every request but `/health` and "
            "`/ready` carries a bearer token (`ledger token issue`). Errors are `{status, code, rule, "
            "message, field}`: 422 invalid input, 409 a rule's rejection or a conflict, 404 unknown "
            "entity, 401/403 authentication and roles, 413 a body over `LEDGER_MAX_BODY_BYTES` (1 MiB by "
            "default; the token is checked before any body is read). Every write takes an `Idempotency-Key`."
        ),
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc are served by infra.http.operations, assets included (no CDN)
        redoc_url=None,
    )
    app.state.service = service
    app.state.public_paths = {p for p in (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url) if p}
    public_prefixes: tuple[str, ...] = ()
    _install_error_handlers(app)
    _routes(app)
    console = _optional_module("infra.http.console")  # the browser console's pages (ADR 0018)
    if console is not None:
        console.install(app)
        # The console keeps its own session (a cookie holding the same token), checked by every
        # page before it reads a form; its API calls come back through the guard with the token.
        app.state.public_paths.add("/")
        public_prefixes = (console.BASE + "/",)

    def is_public(path: str) -> bool:
        return path in app.state.public_paths or path.startswith(public_prefixes)

    # Body limit and token check before any body is read (ADR 0013); every other path fails closed.
    app.add_middleware(
        RequestGuard,
        max_body_bytes=lambda: service.settings.max_body_bytes,
        token_secret=lambda: service.settings.token_secret,
        is_public=is_public,
        problem=lambda status, code, message, field, headers: _problem(status, code, message, field=field, headers=headers),
        route_limit=lambda path: service.settings.max_upload_bytes if path in UPLOAD_PATHS else None,
    )
    from infra.http import operations

    operations.install(app, service)  # /metrics, request logs (LEDGER_LOG_FORMAT), offline /docs and /redoc; outermost
    return app


def worker_app() -> FastAPI:
    """The application of a ``ledger serve`` worker process (uvicorn's factory, ``--workers N``):
    the configured store, and the process's collector managed by the app (ADR 0023)."""
    return create_app(worker=True)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return _problem(exc.status, exc.code, exc.message, rule=exc.rule, field=exc.field, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_problem(list(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> JSONResponse:
        return _validation_problem(exc.errors())

    @app.exception_handler(errors.LedgerError)
    async def _ledger(_: Request, exc: errors.LedgerError) -> JSONResponse:
        return _ledger_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return _problem(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return _problem(500, "INTERNAL_ERROR", "the server failed to answer; nothing was recorded unless a retry with the same Idempotency-Key says so")


def _routes(app: FastAPI) -> None:  # noqa: C901 - one block per endpoint reads best here
    def op(method: str, path: str, operation: str, *, status_code: int = 200, responses: dict | None = None, **kw: Any):
        roles = sorted(r.value for r in PERMISSIONS[operation])
        route = app.api_route(
            path,
            methods=[method],
            operation_id=operation,
            status_code=status_code,
            dependencies=[Depends(_allow(operation))],
            responses=responses if responses is not None else (_WRITE if method == "POST" else _COMMON),
            openapi_extra={"x-roles": roles},
            description=(kw.pop("description", "") + f"\n\nRoles: {', '.join(roles)}.").strip(),
            **kw,
        )
        model = kw.get("response_model")
        return lambda endpoint: route(_rendered_in_thread(endpoint, model, status_code))

    def public(path: str, operation: str, **kw: Any):
        app.state.public_paths.add(path)  # no token asked at the door (infra.http.guard)
        return app.api_route(path, methods=["GET"], operation_id=operation, **kw)

    # ------------------------------------------------------------------ health
    @public("/health", "health", response_model=s.Health, summary="Liveness: the process answers")
    def health() -> s.Health:
        return s.Health()

    @public("/ready", "ready", response_model=s.Readiness, summary="Readiness: the store answers and the policy is published",
            responses={503: {"model": s.Readiness}})
    def ready(request: Request) -> JSONResponse:
        svc = _service(request)
        checks: dict[str, str] = {}
        try:
            checks["policy"] = "ok" if PolicyLedger.ID in svc.ledger.repository else "not published"
        except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
            checks["policy"] = f"store unavailable: {type(exc).__name__}"
        try:
            svc.store.ping()
            checks["http_store"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["http_store"] = f"unavailable: {type(exc).__name__}"
        try:  # a read model stopped at an event it could not apply is not ready (ADR 0008)
            runner = svc.projections()
            stalled = [f"{st.name} at {st.failed.position}" for st in (runner.status() if runner is not None else []) if st.failed is not None]
            checks["projections"] = "ok" if not stalled else "stalled: " + ", ".join(stalled) + " (ledger projections status)"
        except Exception as exc:  # noqa: BLE001
            checks["projections"] = f"unavailable: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)

    @op("GET", "/me", "whoami", response_model=s.Me, summary="The caller as the token names them")
    def whoami(p: Caller) -> s.Me:
        return s.Me(officer=p.officer, role=p.role.value, street=p.street, expires=p.exp)

    # ------------------------------------------------------------------ recipients
    @op("POST", "/recipients", "enrol", status_code=201, response_model=s.Accepted, summary="Enrol a recipient")
    def enrol(request: Request, p: Caller, body: s.EnrolBody, key: IdempotencyKey = None) -> JSONResponse:
        street = body.street
        if p.role is Role.STREET_HANDLER:
            street = street or p.street or ""
            _own_street(p, street, "street")
        return _command(request, p, key, body, m.Enrol, {"street": street}, created=True)

    @op("POST", "/recipients/{recipient_id}/categories", "grant_category", response_model=s.Accepted, summary="Grant a category (RULES §2)")
    def grant_category(request: Request, p: Caller, recipient_id: RecipientId, body: s.GrantCategoryBody, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, body, m.GrantCategory, {"recipient": str(recipient_id)})

    @op("POST", "/recipients/{recipient_id}/categories/revocations", "revoke_category", response_model=s.Accepted, summary="Revoke a category from a date (R-TIME-2)")
    def revoke_category(request: Request, p: Caller, recipient_id: RecipientId, body: s.RevokeCategoryBody, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, body, m.RevokeCategory, {"recipient": str(recipient_id)})

    @op("POST", "/recipients/{recipient_id}/insurance", "insure", response_model=s.Accepted, summary="Basic insurance enrolment (R-INS-1)")
    def insure(request: Request, p: Caller, recipient_id: RecipientId, body: s.InsureBody, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, body, m.Insure, {"recipient": str(recipient_id)})

    @op("POST", "/recipients/{recipient_id}/insurance/end", "end_insurance", response_model=s.Accepted, summary="End a basic insurance enrolment")
    def end_insurance(request: Request, p: Caller, recipient_id: RecipientId, body: s.EndInsuranceBody, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, body, m.EndInsurance, {"recipient": str(recipient_id)})

    @op("POST", "/recipients/{recipient_id}/mutual-aid", "join_mutual_aid", response_model=s.Accepted, summary="Mutual-aid contribution paid for a year (R-MA)")
    def join_mutual_aid(request: Request, p: Caller, recipient_id: RecipientId, body: s.JoinMutualAidBody, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, body, m.JoinMutualAid, {"recipient": str(recipient_id)})

    @op("POST", "/recipients/{recipient_id}/consent", "consent_auto_claim", response_model=s.Accepted, summary="免申即享 consent signed or withdrawn (R-PH-3)")
    def consent(request: Request, p: Caller, recipient_id: RecipientId, body: s.ConsentBody, key: IdempotencyKey = None) -> JSONResponse:
        _recipient(_service(request), p, recipient_id)
        return _command(request, p, key, body, m.ConsentAutoClaim, {"recipient": str(recipient_id)})

    @op("POST", "/recipients/{recipient_id}/expenses", "record_expense", status_code=201, response_model=s.Accepted, summary="Record an expense (a receipt or settlement record)")
    def record_expense(request: Request, p: Caller, recipient_id: RecipientId, body: s.RecordExpenseBody, key: IdempotencyKey = None) -> JSONResponse:
        _recipient(_service(request), p, recipient_id)
        source = "settlement_system" if p.role is Role.SYSTEM else "claimant"
        return _command(request, p, key, body, m.RecordExpense, {"recipient": str(recipient_id), "source": source}, created=True)

    @op("POST", "/expenses/{expense_id}/insurance-settlements", "settle_insurance", response_model=s.Accepted, summary="An insurance payment on an expense (R-INS-4)")
    def settle_insurance(request: Request, p: Caller, expense_id: ExpenseId, body: s.SettleInsuranceBody, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, body, m.SettleInsurance, {"expense": expense_id})

    @op("POST", "/expenses/{expense_id}/one-stop", "one_stop", response_model=s.Accepted, summary="One-stop settlement at the point of care")
    def one_stop(request: Request, p: Caller, expense_id: ExpenseId, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, None, m.OneStop, {"expense": expense_id})

    # ------------------------------------------------------------------ claims
    @op("POST", "/recipients/{recipient_id}/claims", "lodge_claim", status_code=201, response_model=s.Accepted,
        summary="Lodge a post-hoc claim at the street office (R-PH-1, R-PH-2)",
        description="The handler is the caller. `deadline_override` (R-PH-5) is a district officer's.")
    def lodge_claim(request: Request, p: Caller, recipient_id: RecipientId, body: s.LodgeClaimBody, key: IdempotencyKey = None) -> JSONResponse:
        _recipient(_service(request), p, recipient_id)
        if body.deadline_override and p.role is not Role.DISTRICT_OFFICER:
            raise ApiError(403, "FORBIDDEN", "a deadline override is the district's decision (R-PH-5 [002 4.3])", rule="R-PH-5", field="deadline_override")
        return _command(request, p, key, body, m.LodgeClaim, {"recipient": str(recipient_id), "handler": p.officer}, created=True)

    @op("POST", "/claims/{claim_id}/review", "review_claim", response_model=s.Accepted, summary="The reviewer signs (R-PH-4)")
    def review_claim(request: Request, p: Caller, claim_id: ClaimId, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, None, m.Review, {"claim": str(claim_id), "reviewer": p.officer})

    @op("POST", "/claims/{claim_id}/approve", "approve_claim", response_model=s.Accepted, summary="The approver signs (R-PH-4); the aid is decided")
    def approve_claim(request: Request, p: Caller, claim_id: ClaimId, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, None, m.Approve, {"claim": str(claim_id), "approver": p.officer})

    @op("POST", "/claims/{claim_id}/pay", "pay_claim", response_model=s.Accepted, summary="District disbursement of an approved claim (R-PH-6, R-CLR-3)")
    def pay_claim(request: Request, p: Caller, claim_id: ClaimId, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, None, m.Pay, {"claim": str(claim_id), "payer": p.officer})

    @op("GET", "/claims/{claim_id}", "claim_status", response_model=s.ClaimView, summary="A claim's status and signatures")
    def claim_status(request: Request, p: Caller, claim_id: ClaimId) -> Any:
        svc = _service(request)
        c: Claim = svc.ledger.claim(claim_id)
        _own_street(p, c.street, "claim")
        _log_read(svc, p, "claim_status", f"claim:{claim_id}", [c.recipient_id])
        return views.claim(c)

    @op("POST", "/auto-claims", "auto_claims", response_model=s.Accepted, summary="Lodge the 免申即享 monthly batch (R-PH-3)",
        description="The caller is the batch's handler. The claims wait for a reviewer, an approver and a payer, "
                    "each a different officer, who sign the batch as a whole (R-PH-4): `/auto-claims/{batch}/review`, `/approve`, `/pay`.")
    def auto_claims(request: Request, p: Caller, body: s.AutoClaimsBody, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, body, m.AutoClaims, {"handler": p.officer})

    def _sign_batch(request: Request, p: Principal, key: str | None, batch_id: uuid.UUID, role: str) -> JSONResponse:
        return _command(request, p, key, None, m.SignBatch, {"batch": str(batch_id), "role": role, "officer": p.officer})

    @op("POST", "/auto-claims/{batch_id}/review", "review_batch", response_model=s.Accepted, summary="Review a 免申即享 batch as a whole (R-PH-4)")
    def review_batch(request: Request, p: Caller, batch_id: Annotated[uuid.UUID, Path()], key: IdempotencyKey = None) -> JSONResponse:
        return _sign_batch(request, p, key, batch_id, "reviewer")

    @op("POST", "/auto-claims/{batch_id}/approve", "approve_batch", response_model=s.Accepted, summary="Approve a 免申即享 batch as a whole (R-PH-4): one signature, recorded on each claim")
    def approve_batch(request: Request, p: Caller, batch_id: Annotated[uuid.UUID, Path()], key: IdempotencyKey = None) -> JSONResponse:
        return _sign_batch(request, p, key, batch_id, "approver")

    @op("POST", "/auto-claims/{batch_id}/pay", "pay_batch", response_model=s.Accepted, summary="Pay a 免申即享 batch (R-PH-4: the payer is a fourth officer)")
    def pay_batch(request: Request, p: Caller, batch_id: Annotated[uuid.UUID, Path()], key: IdempotencyKey = None) -> JSONResponse:
        return _sign_batch(request, p, key, batch_id, "payer")

    # ------------------------------------------------------------------ district actions
    @op("POST", "/policy/parameters", "set_parameter", response_model=s.Accepted, summary="Publish or amend a policy parameter (may be retroactive)")
    def set_parameter(request: Request, p: Caller, body: s.SetParameterBody, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, body, m.SetParameter, {})

    @op("POST", "/recipients/{recipient_id}/suspension/lift", "lift_suspension", response_model=s.Accepted, summary="District review lifts a 四医联动 suspension (R-4L-4)")
    def lift_suspension(request: Request, p: Caller, recipient_id: RecipientId, body: s.LiftSuspensionBody, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, body, m.LiftSuspension, {"recipient": str(recipient_id), "reviewer": p.officer})

    @op("POST", "/recipients/{recipient_id}/social-help", "social_help", response_model=s.Accepted, summary="One-time social-organisation help (R-4L-5)")
    def social_help(request: Request, p: Caller, recipient_id: RecipientId, body: s.SocialHelpBody, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, body, m.SocialHelp, {"recipient": str(recipient_id)})

    @op("POST", "/recipients/{recipient_id}/supplementary/pay", "pay_supplementary", response_model=s.Accepted, summary="Pay pending supplementary payouts (R-CLR-2)")
    def pay_supplementary(request: Request, p: Caller, recipient_id: RecipientId, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, None, m.PaySupplementary, {"recipient": str(recipient_id)})

    # ------------------------------------------------------------------ clearing
    @op("POST", "/recipients/{recipient_id}/repayments", "repay", response_model=s.Accepted, summary="A repayment toward open clearing cases (R-CLR-3)",
        description="Records the receiving officer (the caller), the day, the receipt or voucher number and the method.")
    def repay(request: Request, p: Caller, recipient_id: RecipientId, body: s.RepayBody, key: IdempotencyKey = None) -> JSONResponse:
        for name in ("voucher", "method"):  # as `ledger clearing repay`: the officer says on which voucher and how
            if getattr(body, name) is None:
                raise ApiError(422, "INVALID_INPUT", f"{name}: a repayment names its receipt or voucher and how it was paid "
                               "(R-CLR-3 [000 第七条])", rule="R-CLR-3", field=name)
        return _command(request, p, key, body, m.Repay, {"recipient": str(recipient_id), "officer": p.officer})

    # Write-off proposals and their decisions are ledger events (WriteOffProposed, WriteOffApproved,
    # WriteOffRefused, R-CLR-3); the http_write_off_proposals table of earlier versions is no longer
    # read or written (docs/clearing.md says what to do with pending rows left in it).
    def _proposal_response(svc: Service, result: Result, created: bool) -> tuple[int, dict[str, Any]]:
        if result.status != "accepted":
            return _result_response(result, created)
        cv = importlib.import_module("commands.clearing_views")
        return (201 if created else 200), jsonable_encoder(cv.write_off_proposal(svc.ledger, result.ids["proposal"]))

    @op("POST", "/recipients/{recipient_id}/write-offs", "propose_write_off", status_code=201, response_model=s.WriteOffProposal,
        summary="A clearing officer proposes a write-off (R-CLR-3)",
        description="Another officer approves it (`POST /write-offs/{proposal_id}/approve`); the ledger refuses SAME_OFFICER.")
    def propose_write_off(request: Request, p: Caller, recipient_id: RecipientId, body: s.WriteOffProposalBody, key: IdempotencyKey = None) -> JSONResponse:
        svc = _service(request)

        def run(command_id: str | None) -> tuple[int, dict[str, Any]]:
            cmd = m.ProposeWriteOff(recipient=str(recipient_id), officer=p.officer, reason=body.reason, command_id=command_id)
            return _proposal_response(svc, svc.ledger.run(cmd), True)

        return _write(request, p, key, body, run)

    @op("POST", "/write-offs/{proposal_id}/approve", "approve_write_off", response_model=s.Accepted,
        summary="A second officer approves a proposed write-off (R-CLR-3)")
    def approve_write_off(request: Request, p: Caller, proposal_id: Annotated[uuid.UUID, Path()], key: IdempotencyKey = None) -> JSONResponse:
        svc = _service(request)

        def run(command_id: str | None) -> tuple[int, dict[str, Any]]:
            # The proposal id and the approver are the command id: each approver's decision is applied
            # at most once; a refused one (R-CLR-3: the proposer) leaves the proposal to another approver.
            cmd = m.ApproveWriteOff(proposal=str(proposal_id), approver=p.officer, command_id=command_id or f"write-off:{proposal_id}:{p.officer}")
            return _result_response(svc.ledger.run(cmd), False)

        return _write(request, p, key, None, run)

    @op("POST", "/write-offs/{proposal_id}/refuse", "refuse_write_off", response_model=s.WriteOffProposal, summary="Refuse a proposed write-off (R-CLR-3)")
    def refuse_write_off(request: Request, p: Caller, proposal_id: Annotated[uuid.UUID, Path()], body: s.WriteOffRefusalBody | None = None, key: IdempotencyKey = None) -> JSONResponse:
        svc = _service(request)

        def run(command_id: str | None) -> tuple[int, dict[str, Any]]:
            cmd = m.RefuseWriteOff(proposal=str(proposal_id), officer=p.officer, reason=body.reason if body else None, command_id=command_id)
            return _proposal_response(svc, svc.ledger.run(cmd), False)

        return _write(request, p, key, body, run)

    @op("GET", "/write-offs", "write_off_proposals", response_model=list[s.WriteOffProposal], summary="Write-off proposals, with the person and the amount (R-CLR-3)")
    def write_off_proposals(request: Request, p: Caller, status: Literal["pending", "approved", "refused"] | None = None) -> Any:
        svc = _service(request)
        rows = importlib.import_module("commands.clearing_views").write_off_proposals(svc.ledger, status=status)
        _log_read(svc, p, "write_off_proposals", f"write-offs?status={status or ''}", [r["recipient"] for r in rows])
        return rows

    @op("POST", "/clearing/run", "run_clearing", response_model=s.Accepted, summary="Recompute every decided expense with today's knowledge (R-CLR-2)")
    def run_clearing(request: Request, p: Caller, body: s.ClearingRunBody, key: IdempotencyKey = None) -> JSONResponse:
        return _command(request, p, key, body, m.ClearingRun, {})

    # ------------------------------------------------------------------ districts (ADR 0020)
    @op("POST", "/transfers", "transfer", status_code=201, response_model=s.Accepted,
        summary="A person moves from this district to another (R-CAP-4): city cap usage and aided receipts carried",
        description=(transfers.__doc__ or "").split("\n\n", 1)[1].strip())
    def transfer(request: Request, p: Caller, body: transfers.TransferBody, key: IdempotencyKey = None) -> JSONResponse:
        svc = _service(request)
        _aware(body.at, "at")

        def run(command_id: str | None) -> tuple[int, dict[str, Any]]:
            try:
                return _result_response(transfers.run_transfer(svc.ledger, body, command_id), True)
            except transfers.Refused as exc:
                raise ApiError(422, exc.code, exc.message, rule=exc.rule, field=exc.field) from None

        return _write(request, p, key, body, run)

    @op("GET", "/clearing/cases", "clearing_cases", response_model=list[dict[str, Any]], summary="Clearing cases, population-wide (R-CLR-2, R-CLR-3)")
    def clearing_cases(request: Request, p: Caller, status: Literal["open", "settled", "written_off"] | None = None) -> Any:
        svc = _service(request)
        # From the clearing_cases read model caught up to the head, never a replay of every
        # recipient per request (R-CLR-2, R-CLR-3 [000 第七条]; ADR 0008).
        engine, state = svc.read_model("clearing_cases")
        body, listed = views.clearing_cases_answer(engine, svc.ledger, status, svc.names, svc.kept, _json_bytes, svc.kept_rows)
        _log_read(svc, p, "clearing_cases", f"clearing/cases?status={status or ''}", listed)
        return Response(body, media_type="application/json",
                        headers={"X-Read-Model-Position": str(state.position), "X-Read-Model-Lag": str(state.lag)})

    @op("GET", "/clearing/cases/{case_id}", "clearing_case", response_model=dict[str, Any],
        summary="One clearing case or supplementary payout: both decisions side by side, the trigger and its rule")
    def clearing_case(request: Request, p: Caller,
                      case_id: Annotated[str, Path(pattern=r"^[0-9a-fA-F-]{36}:(case|supp):[1-9][0-9]{0,8}$", description="`<recipient uuid>:case:<n>` or `:supp:<n>`")]) -> Any:
        svc = _service(request)
        cv = _optional_module("commands.clearing_views")
        if cv is None:
            raise ApiError(404, "NOT_AVAILABLE", "case details are not available in this build (commands.clearing_views)", field="case_id")
        r = svc.ledger.recipient(case_id.split(":", 1)[0])
        detail = cv.case_detail(svc.ledger, case_id)
        _log_read(svc, p, "clearing_case", f"case:{case_id}", [str(r.id)])
        return jsonable_encoder(detail)

    # ------------------------------------------------------------------ one recipient's reads
    @op("GET", "/recipients/{recipient_id}", "recipient_statement", response_model=s.Statement, summary="A recipient's statement")
    def recipient_statement(request: Request, p: Caller, recipient_id: RecipientId) -> Any:
        svc = _service(request)
        r = _recipient(svc, p, recipient_id)
        _log_read(svc, p, "recipient_statement", f"recipient:{r.id}", [str(r.id)])
        return views.statement(svc.ledger, r)

    @op("GET", "/recipients/{recipient_id}/caps", "recipient_caps", response_model=s.Caps, summary="Annual caps: granted and remaining (R-CAP-1, R-CAP-2)")
    def recipient_caps(request: Request, p: Caller, recipient_id: RecipientId) -> Any:
        svc = _service(request)
        r = _recipient(svc, p, recipient_id)
        _log_read(svc, p, "recipient_caps", f"recipient:{r.id}/caps", [str(r.id)])
        return views.caps(svc.ledger, r)

    @op("GET", "/recipients/{recipient_id}/clearing", "recipient_clearing", response_model=s.RecipientClearing, summary="A recipient's clearing cases and supplementary payouts")
    def recipient_clearing(request: Request, p: Caller, recipient_id: RecipientId) -> Any:
        svc = _service(request)
        r = _recipient(svc, p, recipient_id)
        _log_read(svc, p, "recipient_clearing", f"recipient:{r.id}/clearing", [str(r.id)])
        return views.recipient_clearing(r)

    @op("GET", "/expenses/{expense_id}/explain", "explain_expense", response_model=s.Explanation, summary="Why an expense got what it got")
    def explain_expense(request: Request, p: Caller, expense_id: ExpenseRef) -> Any:
        svc = _service(request)
        expense_id = _expense_ref(svc, expense_id)
        r = _recipient(svc, p, recipient_of(expense_id))
        if expense_id not in r.expenses:
            raise errors.UnknownEntity(f"unknown expense {expense_id!r}", field="expense_id")
        _log_read(svc, p, "explain_expense", f"expense:{expense_id}", [str(r.id)])
        mod = _optional_module("commands.explain")
        if mod is not None:
            return {"expense": expense_id, "source": "commands.explain", "explanation": jsonable_encoder(mod.explain_expense(svc.ledger, expense_id))}
        return {"expense": expense_id, "source": "stored_decision", "explanation": jsonable_encoder(views.stored_explanation(svc.ledger, r, expense_id))}

    @op("GET", "/expenses/{expense_id}/replay", "replay_expense", response_model=s.Replay, summary="Replay an expense's decision with the knowledge it had (R-TIME-1)",
        description="Each stored decision and reassessment of the expense, re-made with the knowledge it recorded, or with what was known at `known_at`, and compared to the fen.")
    def replay_expense(request: Request, p: Caller, expense_id: ExpenseRef, known_at: datetime | None = None) -> Any:
        svc = _service(request)
        expense_id = _expense_ref(svc, expense_id)
        r = _recipient(svc, p, recipient_of(expense_id))
        if expense_id not in r.expenses:
            raise errors.UnknownEntity(f"unknown expense {expense_id!r}", field="expense_id")
        _aware(known_at, "known_at")
        mod = _optional_module("commands.replay")
        if mod is None:
            raise ApiError(404, "NOT_AVAILABLE", "replay is not available in this build (commands.replay)", field="expense_id")
        results = mod.replay_expense(svc.ledger, expense_id, known_at)
        _log_read(svc, p, "replay_expense", f"expense:{expense_id}", [str(r.id)])
        return {"expense": expense_id, "known_at": known_at.astimezone(CST) if known_at else None, "equal": all(x.equal for x in results),
                "results": jsonable_encoder([x.as_dict() for x in results])}

    # ------------------------------------------------------------------ settlement files (docs/import.md)
    @op("POST", "/imports", "import_expenses", response_model=dict[str, Any],
        summary="Import a month's settlement records, a CSV or XLSX file (R-PH-2)",
        description="multipart/form-data: `file` (.csv or .xlsx in the columns of record_expense, Chinese or English headers, "
                    "docs/import.md) and `skip_invalid`. Every row is checked first; a file with an invalid row records nothing (422 "
                    "`IMPORT_INVALID`, each problem with its line, column, field and rule) unless `skip_invalid`, which records the good "
                    "rows and returns the rejected ones as a file to fix and upload again. Each row's receipt is its idempotency key: "
                    "uploading a file again records nothing twice. Bodies up to `LEDGER_MAX_UPLOAD_BYTES` (16 MiB by default).")
    def import_expenses(request: Request, p: Caller, file: Annotated[UploadFile, File(description="the settlement file (.csv or .xlsx)")],
                        skip_invalid: Annotated[bool, Form()] = False) -> JSONResponse:
        from infra.http.imports import upload

        status, body = upload(_service(request).ledger, p, file.filename or "", file.file.read(), skip_invalid)
        return JSONResponse(jsonable_encoder(body), status_code=status)

    # ------------------------------------------------------------------ population reads
    @op("GET", "/duplicates", "duplicate_index", response_model=s.DuplicateIndex,
        summary="Duplicate index: no aid twice for the same cost (R-CLR-1(b), R-PH-7)",
        description="From the `duplicates` read model when it has been built (with its position and lag), else from the recipients' aggregates.")
    def duplicate_index(request: Request, p: Caller, kind: Annotated[str | None, Query(max_length=40)] = None) -> Any:
        svc = _service(request)
        if svc.built("duplicates"):
            from projections.common import reading
            from projections.duplicates import index

            engine, status = svc.read_model("duplicates")  # brought to the head first (ADR 0008)
            with reading(engine) as conn:
                findings = index(conn, kind)
            out = {"source": "projection", "position": status.position, "head": status.head, "lag": status.lag, "findings": findings}
        else:
            findings = []
            for rid in svc.ledger.recipient_ids():
                findings += views.duplicates(svc.ledger.recipient(rid))
            if kind is not None:
                findings = [f for f in findings if f["kind"] == kind]
            out = {"source": "aggregates", "position": None, "head": None, "lag": None, "findings": findings}
        people = [x for f in findings for x in (f.get("recipient"), f.get("matched_recipient")) if x]
        _log_read(svc, p, "duplicate_index", f"duplicates?kind={kind or ''}", people)
        return jsonable_encoder(out)

    @op("GET", "/snapshots", "snapshot", summary="Point-in-time snapshot (R-TIME-3), streamed as CSV, XLSX or JSON",
        description="The books as effective on `valid_on`, from the events recorded up to `known_at` (everything when absent).",
        response_class=StreamingResponse,
        responses={**_COMMON, 200: {"content": {media: {"schema": {"type": "string", "format": "binary"}} for media in _SNAPSHOT_MEDIA.values()},
                                     "description": "the snapshot file"}})
    def snapshot(request: Request, p: Caller, valid_on: date, known_at: datetime | None = None,
                 format: Literal["csv", "xlsx", "json"] = "csv") -> Response:
        svc = _service(request)
        _aware(known_at, "known_at")
        if _optional_module("commands.snapshot") is None or _optional_module("projections.cuts") is None:
            raise ApiError(404, "NOT_AVAILABLE", "snapshots are not available in this build (commands.snapshot)", field="format")
        from infra.http import snapshot_files

        # From the persisted cuts, never a replay of the log per request (ADR 0010); the file is
        # written row by row to a temporary directory, then sent in one piece when small
        # (``snapshot_files.WHOLE``), else streamed from there.
        out = snapshot_files.temporary_directory()
        try:
            written = snapshot_files.write(svc, valid_on, known_at, (format,), out)
            _log_read(svc, p, "snapshot", f"snapshot?valid_on={valid_on}&known_at={known_at.isoformat() if known_at else ''}&format={format}", None)
            disposition = {"Content-Disposition": f'attachment; filename="{written.head.stem}.{format}"'}
            body = snapshot_files.whole(written.path(format), out)
            if body is not None:
                return Response(body, media_type=_SNAPSHOT_MEDIA[format], headers=disposition)
            chunks, cleanup, size = snapshot_files.stream(written.path(format), out)
        except BaseException:
            snapshot_files.remove(out)
            raise
        return StreamingResponse(chunks, media_type=_SNAPSHOT_MEDIA[format], background=cleanup,
                                 headers={**disposition, "Content-Length": str(size)})

    @op("GET", "/projections/status", "projections_status", response_model=s.ProjectionsStatus, summary="Read models: position and lag")
    def projections_status(request: Request, p: Caller) -> Any:
        runner = _service(request).projections()
        if runner is None:
            return {"head": None, "projections": []}
        rows = runner.status()
        return {"head": rows[0].head if rows else None, "projections": [
            {"name": x.name, "version": x.version, "built": x.stored_version is not None, "stale": x.stale,
             "position": x.position, "head": x.head, "lag": x.lag, "updated_at": x.updated_at} for x in rows]}

    @op("GET", "/audit/access", "access_log", response_model=s.AccessLog, summary="Who read this person's data, when (access log)")
    def access_log(request: Request, p: Caller, recipient: Annotated[uuid.UUID, Query(description="the recipient's id")],
                   include_population: bool = True, since: datetime | None = None,
                   limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> Any:
        svc = _service(request)
        _aware(since, "since")
        rows = svc.store.accesses(str(recipient), include_population=include_population, since=since, limit=limit)
        return {"recipient": str(recipient), "entries": rows}

    # ------------------------------------------------------------------ finding (ADR 0019)
    def _scope(p: Principal, street: str | None) -> str | None:
        """R-PH-1 [002 4.1]: a street handler lists their own street only."""
        if p.role is Role.STREET_HANDLER:
            _own_street(p, street or p.street or "", "street")
            return p.street
        return street_name(street) if street is not None else None

    def _recipient_ref(svc: Service, p: Principal, text: str | None, street: str | None) -> str | None:
        from commands.lookup import is_exact_reference, resolve_recipient

        if not text:
            return None
        # an id or id number of another street is refused as the other endpoints refuse it (403); a name
        # is searched within the caller's street only
        rid = resolve_recipient(svc.ledger, text, street=None if is_exact_reference(text) else street)
        _own_street(p, svc.ledger.recipient(rid).street)
        return rid

    def _listed(svc: Service, p: Principal, operation: str, target: str, page: Any, key: str = "recipient") -> Any:
        _log_read(svc, p, operation, target, sorted({i[key] for i in page.items}))  # the searched text is never logged
        return page.as_dict()

    @op("GET", "/recipients", "list_recipients", response_model=ls.RecipientPage,
        summary="Find recipients: by id, resident id number (keyed hash), name or street; paginated",
        description="`q` is read as a recipient id, an 18-character resident id number (matched through the ledger's keyed "
                    "hash, ADR 0015), a name (contains, normalised) or, when no name matches, a street. Id numbers come back masked.")
    def list_recipients(request: Request, p: Caller, q: Annotated[str | None, Query(max_length=100)] = None, street: Street = None,
                        month: Month = None, cursor: Cursor = None, limit: Limit = 50) -> Any:
        from commands import lookup

        svc = _service(request)
        page = lookup.list_recipients(svc.ledger, q, street=_scope(p, street), month=month, cursor=cursor, limit=limit)
        return _listed(svc, p, "list_recipients", f"recipients?street={street or ''}&month={month or ''}", page)

    @op("GET", "/expenses", "list_expenses", response_model=ls.ExpensePage,
        summary="Expenses by handle, recipient, street, invoice month, scheme and status; paginated")
    def list_expenses(request: Request, p: Caller, q: Annotated[str | None, Query(max_length=200, description="an expense handle (E004997) or id")] = None,
                      recipient: Annotated[str | None, Query(max_length=100, description="id, id number or name")] = None,
                      street: Street = None, month: Month = None, scheme: Annotated[str | None, Query(max_length=60)] = None,
                      status: Literal["recorded", "claimed", "decided", "paid"] | None = None, cursor: Cursor = None, limit: Limit = 50) -> Any:
        from commands import lookup

        svc = _service(request)
        scope = _scope(p, street)
        rid = _recipient_ref(svc, p, recipient, scope)
        page = lookup.list_expenses(svc.ledger, q, recipient=rid, street=scope, month=month, scheme=scheme, status=status, cursor=cursor, limit=limit)
        return _listed(svc, p, "list_expenses", f"expenses?street={street or ''}&month={month or ''}&scheme={scheme or ''}&status={status or ''}", page)

    @op("GET", "/claims", "list_claims", response_model=ls.ClaimPage, summary="Claims by recipient, street, month lodged and status; paginated")
    def list_claims(request: Request, p: Caller, q: Annotated[str | None, Query(max_length=200, description="a claim id, or an expense it lists")] = None,
                    recipient: Annotated[str | None, Query(max_length=100)] = None, street: Street = None, month: Month = None,
                    status: Literal["lodged", "reviewed", "approved", "rejected", "paid"] | None = None,
                    channel: Literal["post_hoc", "auto"] | None = None, cursor: Cursor = None, limit: Limit = 50) -> Any:
        from commands import lookup

        svc = _service(request)
        scope = _scope(p, street)
        rid = _recipient_ref(svc, p, recipient, scope)
        page = lookup.list_claims(svc.ledger, q, recipient=rid, street=scope, month=month, status=status, channel=channel, cursor=cursor, limit=limit)
        return _listed(svc, p, "list_claims", f"claims?street={street or ''}&month={month or ''}&status={status or ''}", page)

    @op("GET", "/payments", "list_payments", response_model=ls.PaymentPage, summary="Payouts by month paid, street, scheme and recipient; paginated")
    def list_payments(request: Request, p: Caller, month: Month = None, recipient: Annotated[str | None, Query(max_length=100)] = None,
                      street: Street = None, scheme: Annotated[str | None, Query(max_length=60)] = None,
                      channel: Annotated[str | None, Query(max_length=40)] = None, cursor: Cursor = None, limit: Limit = 50) -> Any:
        from commands import lookup

        svc = _service(request)
        scope = _scope(p, street)
        rid = _recipient_ref(svc, p, recipient, scope)
        page = lookup.list_payments(svc.ledger, recipient=rid, street=scope, month=month, scheme=scheme, channel=channel, cursor=cursor, limit=limit)
        return _listed(svc, p, "list_payments", f"payments?street={street or ''}&month={month or ''}&scheme={scheme or ''}", page)
