"""The browser console (ADR 0018): server-rendered pages on the HTTP service, for auditors,
clearing officers, the district and the regulator.

- **Same tokens, same roles.** The login page takes a bearer token (``ledger token issue``),
  checks it and keeps it in an HttpOnly, SameSite=Strict cookie; every page verifies it again.
  Which pages a role sees follows :data:`infra.http.app.PERMISSIONS` (ADR 0013): an auditor sees
  everything and changes nothing, a regulator sees snapshots only, a street handler sees the
  people of their own street (R-PH-1 [002 4.1]).
- **A client of the API.** Whatever the API answers (a statement, caps, an explanation, a replay,
  clearing cases, write-off proposals, projection status) and every write (a repayment, a
  write-off proposal and its approval) goes through the API itself, in process, with the
  officer's own token: one permission table, one access log (ADR 0014), one idempotency store.
  Each form carries its own ``Idempotency-Key``, so a resubmitted form is applied once.
- What no endpoint answers (finding by name or street, a person's whole history, cap usage
  through the year, the district's figures, snapshot manifests) is read here from the ledger
  (:mod:`infra.http.console_data`); each read of personal data is written to the access log.
- Forms are protected by the SameSite cookie and a token derived from the session (HMAC of the
  bearer token), checked on every POST.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
import uuid
import zipfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from commands.lookup import is_exact_reference, mask_id_number, resolve_expense, resolve_recipient
from infra.http import console_data as data
from infra.http import svg
from infra.http.app import PERMISSIONS
from infra.http.auth import Principal, Role, TokenError, verify
from ledger import errors
from ledger.values import CATEGORY_ZH, CST, FUND_ZH, SCHEME_ZH, local_date

COOKIE = "ledger_console"
EXPENSE_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}:[1-9][0-9]{0,8}")
BASE = "/console"
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

ROLE_ZH = {
    "street_handler": "街镇经办人",
    "reviewer": "审核人",
    "approver": "审批人",
    "district_officer": "区级经办人",
    "clearing_officer": "清算专员",
    "auditor": "审计人员",
    "regulator": "监管部门",
    "system": "系统",
}
ACCOUNT_ZH = {"cash": "资金", "aid": "救助支出", "receivable": "应收（清算）", "written_off": "核销", "social_help": "社会帮扶", "subsidy": "参保补贴"}
TRIGGER_ZH = {
    "late_insurance": "保险后到",
    "duplicate": "重复救助",
    "category_change": "身份类别变更",
    "parameter_change": "政策参数调整",
    "cap_overrun": "超出限额（年度限额或四医联动月度限额）",
}
KIND_ZH = {"inpatient": "住院", "outpatient": "门急诊（含门诊大病）"}

#: Who sees which page: the API operation each page stands for (ADR 0013). The district view is
#: population-wide figures: the district's readers, as for the duplicate index.
PAGES: dict[str, frozenset[Role]] = {
    "search": PERMISSIONS["recipient_statement"],
    "recipient": PERMISSIONS["recipient_statement"],
    "expense": PERMISSIONS["explain_expense"],
    "clearing": PERMISSIONS["clearing_cases"],
    "district": PERMISSIONS["duplicate_index"],
    "snapshots": PERMISSIONS["snapshot"],
    "import": PERMISSIONS["import_expenses"],
}
NAV = (
    ("search", f"{BASE}/recipients", "查找救助对象", "Find a recipient"),
    ("clearing", f"{BASE}/clearing", "个人清算", "Clearing"),
    ("district", f"{BASE}/district", "全区概览", "District"),
    ("snapshots", f"{BASE}/snapshots", "时点快照", "Snapshots"),
    ("import", f"{BASE}/import", "导入结算记录", "Import"),
)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


class _Login(Exception):
    """No valid session: go to the login page."""

    def __init__(self, reason: str = ""):
        super().__init__(reason)
        self.reason = reason


class Refused(Exception):
    """A page or action the console will not show or do; rendered as an error page."""

    def __init__(self, status: int, code: str, message: str, rule: str = "", field: str = ""):
        super().__init__(message)
        self.status, self.code, self.message, self.rule, self.field = status, code, message, rule, field

    @classmethod
    def from_problem(cls, status: int, body: Any) -> "Refused":
        if not isinstance(body, dict):
            return cls(status, "HTTP_ERROR", str(body)[:300])
        return cls(status, body.get("code") or "HTTP_ERROR", body.get("message") or "", body.get("rule") or "", body.get("field") or "")


@dataclass(frozen=True)
class Session:
    principal: Principal
    token: str
    csrf: str

    def can(self, page_or_operation: str) -> bool:
        roles = PAGES.get(page_or_operation) or PERMISSIONS.get(page_or_operation) or frozenset()
        return self.principal.role in roles


def _service(request: Request) -> Any:
    return request.app.state.service


def _csrf(secret: str, token: str) -> str:
    return hmac.new(secret.encode("utf-8"), b"console-form:" + token.encode("ascii", "replace"), hashlib.sha256).hexdigest()[:40]


def _session(request: Request) -> Session:
    token = request.cookies.get(COOKIE)
    if not token:
        raise _Login()
    secret = _service(request).settings.token_secret
    try:
        p = verify(secret, token)
    except TokenError as exc:
        raise _Login(str(exc)) from None
    return Session(p, token, _csrf(secret, token))


def _need(s: Session, page: str) -> None:
    if not s.can(page):
        raise Refused(403, "FORBIDDEN", f"role {s.principal.role.value} may not open this page ({page})", field="role")


async def _check_form(request: Request, s: Session) -> dict[str, str]:
    form = {k: str(v) for k, v in (await request.form()).items()}
    if not hmac.compare_digest(form.get("csrf", ""), s.csrf):
        raise Refused(403, "CSRF", "the form is not from this session: reload the page and try again")
    return form


def _log(request: Request, s: Session, operation: str, target: str, recipients: list[str] | None) -> None:
    """Reads of personal data that did not go through the API are logged here (ADR 0014)."""
    p = s.principal
    _service(request).store.record_access(officer=p.officer, role=p.role.value, street=p.street, recipients=recipients, operation=operation, target=target)


async def _blocking(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Run a store read off the event loop; the ledger's refusals become error pages."""
    try:
        return await run_in_threadpool(fn, *args, **kw)
    except errors.UnknownEntity as exc:
        raise Refused(404, exc.code, exc.message, exc.rule, exc.field) from None
    except errors.LedgerError as exc:
        raise Refused(422 if isinstance(exc, errors.InvalidInput) else 409, exc.code, exc.message, exc.rule, exc.field) from None


# ---------------------------------------------------------------------------- the API, in process
async def api(request: Request, s: Session, method: str, path: str, *, params: dict[str, Any] | None = None,
              json: Any = None, key: str | None = None) -> tuple[int, Any]:
    """Call the service's own API with the officer's token (same roles, same access log)."""
    headers = {"Authorization": f"Bearer {s.token}"}
    if key:
        headers["Idempotency-Key"] = key
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.internal") as client:
        resp = await client.request(method, path, params={k: v for k, v in (params or {}).items() if v is not None}, json=json, headers=headers)
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    return resp.status_code, body


async def read(request: Request, s: Session, path: str, **params: Any) -> Any:
    status, body = await api(request, s, "GET", path, params=params)
    if status != 200:
        raise Refused.from_problem(status, body)
    return body


# ---------------------------------------------------------------------------- rendering
def _secure(resp: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


def page(request: Request, s: Session | None, template: str, *, status: int = 200, **ctx: Any) -> HTMLResponse:
    nav = [(href, zh, en) for key, href, zh, en in NAV if s is not None and s.can(key)]
    ctx.update(
        s=s,
        nav=nav,
        role_zh=ROLE_ZH.get(s.principal.role.value, "") if s else "",
        yuan=svg.yuan,
        category_zh=CATEGORY_ZH,
        scheme_zh=SCHEME_ZH,
        fund_zh=FUND_ZH,
        trigger_zh=TRIGGER_ZH,
        kind_zh=KIND_ZH,
        account_zh=ACCOUNT_ZH,
        new_key=lambda: f"console-{uuid.uuid4().hex}",
    )
    return _secure(templates.TemplateResponse(request, f"console/{template}", ctx, status_code=status))


def _redirect(url: str, **params: Any) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return _secure(RedirectResponse(url + (f"?{query}" if query else ""), status_code=303))  # type: ignore[return-value]


def _safe_next(value: str | None) -> str:
    """Only a page of the console itself (no open redirect)."""
    if value and value.startswith(BASE + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return BASE + "/"


def today() -> date:
    return local_date(datetime.now(timezone.utc))


# ---------------------------------------------------------------------------- installing
def install(app: FastAPI) -> None:
    """Add the console's pages and static files to the HTTP service (hidden from the OpenAPI
    document: they are pages, not API operations)."""
    app.mount(f"{BASE}/static", StaticFiles(directory=str(HERE / "static" / "console")), name="console-static")
    app.add_exception_handler(_Login, _to_login)  # type: ignore[arg-type]
    app.add_exception_handler(Refused, _refused)  # type: ignore[arg-type]
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with original(a) as state:
            warming = None
            if getattr(a.state, "warm_console", False):  # `ledger serve`: the district's figures ready before the first visit
                warming = threading.Thread(target=_warm, args=(a,), name="console-warm-up", daemon=True)
                warming.start()
            try:
                yield state
            finally:
                if warming is not None:
                    warming.join(timeout=30)
                district = getattr(a.state, "console_district", None)
                if district is not None:
                    district.close()

    app.router.lifespan_context = lifespan
    _install_log_redaction()
    _routes(app)
    from infra.http import console_import  # the settlement-file upload page (docs/import.md)

    console_import.routes(app)


_SEARCHED = re.compile(r"([?&](?:q|recipient)=)[^&\s\"]*")


class _RedactSearches(logging.Filter):
    """The text searched (``q``, and a ``recipient`` given as a name or id number) never reaches a
    log (ADR 0019): the server's access log line keeps the path, with the value replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(a) for a in record.args)
        elif isinstance(record.msg, str) and "=" in record.msg:
            record.msg = _SEARCHED.sub(r"\1[redacted]", record.msg)
        return True


def _redact(value: Any) -> Any:
    if isinstance(value, (int, float)) or value is None:
        return value
    text = str(value)  # an httpx.URL too
    return _SEARCHED.sub(r"\1[redacted]", text) if "=" in text else value


def _install_log_redaction() -> None:
    for name in ("uvicorn.access", "uvicorn.error", "httpx"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactSearches) for f in logger.filters):
            logger.addFilter(_RedactSearches())


async def _to_login(request: Request, exc: _Login) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    resp = _redirect(f"{BASE}/login", next=target if request.method == "GET" else None, reason=exc.reason or None)
    if exc.reason:
        resp.delete_cookie(COOKIE, path=BASE)
    return resp


async def _refused(request: Request, exc: Refused) -> Response:
    try:
        s: Session | None = _session(request)
    except _Login:
        s = None
    return page(request, s, "error.html", status=exc.status, error=exc, title="无法完成 Not done")


_district_lock = threading.Lock()
#: What the clearing workbench lists (``?show=``): the cases' status in the read model, or all.
CLEARING_SHOWN = {"open": "未结 open", "settled": "已结清 settled", "written_off": "已核销 written off", "all": "全部 all"}


def _warm(app: FastAPI) -> None:
    """Bring the clearing read model and the district's figures to the head before the first
    visit (each page then applies only what was recorded since: well under a second)."""
    try:
        app.state.service.read_model("clearing_cases")
        _district_of(app).warm()
    except Exception:  # noqa: BLE001 - a warm-up that fails leaves the work to the first visit
        logging.getLogger("ledger.console").warning("console warm-up failed; the first visit catches up", exc_info=True)


def _district(request: Request) -> data.District:
    return _district_of(request.app)


def _district_of(app: FastAPI) -> data.District:
    state = app.state
    with _district_lock:
        district = getattr(state, "console_district", None)
        if district is None:
            district = state.console_district = data.District(state.service.ledger)
    return district


def _routes(app: FastAPI) -> None:  # noqa: C901 - one block per page reads best here
    def get(path: str):
        return app.get(path, include_in_schema=False, response_class=HTMLResponse)

    def post(path: str):
        return app.post(path, include_in_schema=False, response_class=HTMLResponse)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{BASE}/", status_code=307)

    # -------------------------------------------------------------------- session
    @get(f"{BASE}/login")
    def login_form(request: Request, next: str | None = None, reason: str | None = None) -> Response:
        try:
            _session(request)
        except _Login:
            # The reason in the URL is not echoed (anyone can write a link): only that there was one.
            expired = "令牌已过期或无效，请重新登录 The token has expired or is invalid: log in again" if reason else None
            return page(request, None, "login.html", next=_safe_next(next), reason=expired, title="登录 Log in")
        return _redirect(_safe_next(next))

    @post(f"{BASE}/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        token = str(form.get("token", "")).strip()
        target = _safe_next(str(form.get("next", "")))
        try:
            p = verify(_service(request).settings.token_secret, token)
        except TokenError as exc:
            return page(request, None, "login.html", status=401, next=target, reason=f"令牌无效 invalid token: {exc}", title="登录 Log in")
        resp = _redirect(target)
        resp.set_cookie(COOKIE, token, max_age=max(1, p.exp - int(time.time())), path=BASE, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return resp

    @post(f"{BASE}/logout")
    async def logout(request: Request) -> Response:
        s = _session(request)
        await _check_form(request, s)
        resp = _redirect(f"{BASE}/login")
        resp.delete_cookie(COOKIE, path=BASE)
        return resp

    @get(f"{BASE}/")
    def home(request: Request) -> Response:
        s = _session(request)
        return page(request, s, "home.html", title="首页 Home")

    # -------------------------------------------------------------------- finding a recipient
    @get(f"{BASE}/recipients")
    async def find(request: Request, q: str = "", by: str = "auto") -> Response:
        s = _session(request)
        _need(s, "search")
        return await _find(request, s, q, by)

    @post(f"{BASE}/recipients")
    async def find_posted(request: Request) -> Response:
        """A search posted by an older page or a script; the console's own form is a GET, so a result
        page can be bookmarked (ADR 0019). Either way the text searched is never logged."""
        s = _session(request)
        _need(s, "search")
        form = await _check_form(request, s)
        return await _find(request, s, form.get("q", ""), form.get("by", "auto"))

    async def _find(request: Request, s: Session, q: str, by: str) -> Response:
        found: list[Any] = []  # commands.lookup.Person
        read_as, message = by, None
        if q.strip():
            street = s.principal.street if s.principal.role is Role.STREET_HANDLER else None
            try:
                read_as, found = await _blocking(data.search, _service(request).ledger, q, by, street=street)
            except Refused as exc:
                if exc.status != 422:
                    raise
                message = exc.message
            _log(request, s, "console_search", f"console/recipients?by={read_as}", [p.recipient for p in found])
        return page(request, s, "search.html", q=q, by=by, read_as=read_as, found=found, message=message, title="查找救助对象 Find")

    # -------------------------------------------------------------------- one recipient
    @get(f"{BASE}/recipients/{{recipient_id}}")
    async def recipient(request: Request, recipient_id: str) -> Response:
        s = _session(request)
        _need(s, "recipient")
        try:
            rid = str(uuid.UUID(recipient_id))
        except ValueError:  # an id number or a name, as the ledger shows them (ADR 0019)
            street = s.principal.street if s.principal.role is Role.STREET_HANDLER and not is_exact_reference(recipient_id) else None
            rid = await _blocking(resolve_recipient, _service(request).ledger, recipient_id, street=street)
        statement = await read(request, s, f"/recipients/{rid}")  # the API checks the street and logs the read
        caps = await read(request, s, f"/recipients/{rid}/caps")
        ledger = _service(request).ledger
        r = await _blocking(ledger.recipient, rid)
        entries = await _blocking(data.timeline, ledger, r)
        _log(request, s, "console_timeline", f"recipient:{rid}/timeline", [rid])
        now = today()
        rows, start, end = data.category_rows(r, now)
        category_chart = svg.periods(rows, start=start, end=end, today=now, title="救助对象类别（按有效日期）Categories over valid time",
                                     desc="每一类别的有效期间；斜线为后来追溯撤销的期间。") if rows else None
        series = data.cap_series(r, caps["annual"])
        cap_charts = [
            (x, svg.cap_usage(x.points, year=x.year, cap=x.cap,
                              title=f"{x.year} 年 {SCHEME_ZH.get(x.scheme, x.scheme)} · {KIND_ZH.get(x.kind, x.kind)}年度救助限额使用 annual cap used ({x.kind})",
                              desc=f"按票据日期累计的应救助金额（R-CAP-2），限额 {svg.yuan(x.cap)}。"))
            for x in series
        ]
        return page(request, s, "recipient.html", st=statement, masked_id=mask_id_number, caps=caps["annual"], entries=entries, category_chart=category_chart, category_rows=rows,
                    cap_charts=cap_charts, title=f"{statement['name']} · 救助对象 Recipient")

    @get(f"{BASE}/recipients/{{recipient_id}}/statement")
    async def statement_download(request: Request, recipient_id: str, format: str = "csv") -> Response:
        """The recipient's statement as CSV or XLSX (:mod:`infra.statement_export`): +08:00 times,
        whole expense handles, amounts as numbers, totals per kind of line."""
        s = _session(request)
        _need(s, "recipient")
        if format not in data.STATEMENT_FORMATS:
            raise Refused(422, "INVALID_INPUT", f"format: one of {', '.join(data.STATEMENT_FORMATS)}", field="format")
        rid = _uuid(recipient_id)
        await read(request, s, f"/recipients/{rid}/clearing")  # the API checks the officer's street (R-PH-1 [002 4.1])
        content, name = await _blocking(data.statement_file, _service(request), rid, format)
        _log(request, s, "console_statement_export", f"recipient:{rid}/statement.{format}", [rid])
        return _secure(Response(content, media_type=data.STATEMENT_FORMATS[format], headers={"Content-Disposition": f'attachment; filename="{name}"'}))

    # -------------------------------------------------------------------- one expense
    @get(f"{BASE}/expenses/{{expense_id}}")
    async def expense(request: Request, expense_id: str) -> Response:
        s = _session(request)
        _need(s, "expense")
        if not EXPENSE_ID.fullmatch(expense_id):  # the handle the ledger shows (E004997), ADR 0019
            expense_id = await _blocking(resolve_expense, _service(request).ledger, expense_id)
        explained = await read(request, s, f"/expenses/{expense_id}/explain")
        ex = explained["explanation"]
        replay: dict[str, Any] | None = None
        status, body = await api(request, s, "GET", f"/expenses/{expense_id}/replay")
        if status == 200:
            replay = body
        elif status not in (404, 409, 422):
            raise Refused.from_problem(status, body)
        chart = None
        decision = ex.get("decision")
        if decision and decision.get("waterfall"):
            chart = svg.waterfall(waterfall_steps(decision["waterfall"]), title="先保险后救助 Insurance first: from the receipt to the aid",
                                  desc="总医疗费用 → 医保范围内 → 基本医保 → 居保大病 → 其他补充保障 → 自负 → 救助（R-INS-3）。")
        first = (replay or {}).get("results", [None])[0] if replay and replay.get("results") else None
        return page(request, s, "expense.html", ex=ex, replay=replay, first=first, chart=chart, title=f"费用 {ex.get('handle') or expense_id}")

    # -------------------------------------------------------------------- clearing workbench
    @get(f"{BASE}/clearing")
    async def clearing(request: Request, done: str | None = None, recipient: str | None = None, message: str | None = None,
                       show: str = "open") -> Response:
        s = _session(request)
        _need(s, "clearing")
        if show not in CLEARING_SHOWN:
            raise Refused(422, "INVALID_INPUT", f"show: one of {', '.join(CLEARING_SHOWN)}", field="show")
        # open cases by default; settled and written-off ones on request (the read model keeps them all)
        cases = await read(request, s, "/clearing/cases", **({} if show == "all" else {"status": show}))
        proposals = await read(request, s, "/write-offs", status="pending") if s.can("write_off_proposals") else []
        now = today()
        people: dict[str, dict[str, Any]] = {}
        for c in cases:
            opened = datetime.fromisoformat(c["opened_at"])
            c["age_days"] = (now - local_date(opened)).days
            c["opened_local"] = data.local_time(opened)
            who = people.setdefault(c["recipient"], {"recipient": c["recipient"], "name": c.get("name"), "street": c.get("street"), "balance": Decimal(0), "cases": []})
            who["balance"] += Decimal(c["balance"])
            who["cases"].append(c)
        total = sum((p["balance"] for p in people.values()), Decimal(0))
        return page(request, s, "clearing.html", people=list(people.values()), proposals=proposals, total=total, done=done, show=show, shown=CLEARING_SHOWN,
                    done_recipient=recipient, message=message, today=now.isoformat(), methods=data.REPAY_METHODS,
                    proposals_total=data.proposals_total(proposals), same_officer=data.same_officer, title="个人清算工作台 Clearing workbench")

    async def _write(request: Request, s: Session, path: str, body: Any, key: str, done: str, recipient: str | None) -> Response:
        status, out = await api(request, s, "POST", path, json=body, key=key or None)
        if status in (200, 201):
            return _redirect(f"{BASE}/clearing", done=done, recipient=recipient)
        raise Refused.from_problem(status, out)

    @post(f"{BASE}/clearing/repay")
    async def repay(request: Request) -> Response:
        s = _session(request)
        form = await _check_form(request, s)
        rid = _uuid(form.get("recipient", ""))
        # R-CLR-3 [000 第七条]: the voucher or receipt number, the method and the day received; the
        # officer is the one logged in (the API takes the caller). Blank fields are left out.
        body = {"amount": form.get("amount", "").strip()}
        body.update({k: v.strip() for k, v in form.items() if k in data.REPAY_FIELDS and v.strip()})
        return await _write(request, s, f"/recipients/{rid}/repayments", body, form.get("key", ""), "repay", rid)

    @post(f"{BASE}/clearing/write-offs")
    async def propose_write_off(request: Request) -> Response:
        s = _session(request)
        form = await _check_form(request, s)
        rid = _uuid(form.get("recipient", ""))
        reason = form.get("reason", "").strip() or None
        return await _write(request, s, f"/recipients/{rid}/write-offs", {"reason": reason}, form.get("key", ""), "proposed", rid)

    @post(f"{BASE}/clearing/write-offs/{{proposal_id}}/{{decision}}")
    async def decide_write_off(request: Request, proposal_id: str, decision: str) -> Response:
        s = _session(request)
        form = await _check_form(request, s)
        if decision not in ("approve", "refuse"):
            raise Refused(404, "NOT_FOUND", "unknown decision")
        pid = _uuid(proposal_id)
        return await _write(request, s, f"/write-offs/{pid}/{decision}", None, form.get("key", ""), f"{decision}d", form.get("recipient"))

    # -------------------------------------------------------------------- district
    @get(f"{BASE}/district")
    async def district(request: Request, month: str | None = None) -> Response:
        s = _session(request)
        _need(s, "district")
        d = _district(request)
        position = await _blocking(d.catch_up)
        months = d.months()
        by_fund = d.by_fund(months)
        by_street = d.by_street(months)
        short = [m[2:] for m in months]
        every = svg.sparse_labels(months, 12)
        fund_chart = svg.columns(short, [(f"{FUND_ZH.get(f, f)} {f}", v) for f, v in by_fund], title="每月救助支出（按资金来源）Aid paid per month, by fund",
                                 desc="按支付月份、资金来源堆叠；每种资金以不同图案区分。", label_every=every) if months else None
        street_chart = svg.small_multiples(short, by_street, title="每月救助支出（按街镇）Aid paid per month, by street",
                                           desc="每个街镇一张小图，同一纵轴比例。") if months else None
        books = await _blocking(d.fund_books)
        chosen = month or _default_report_month(months)
        try:
            report = (await _blocking(d.report, chosen)).as_dict() if chosen else None
        except ValueError:
            raise Refused(422, "INVALID_INPUT", f"month: {chosen!r} is not a month (YYYY-MM)", field="month") from None
        projections = await read(request, s, "/projections/status") if s.can("projections_status") else None
        _log(request, s, "console_district", f"console/district?month={chosen or ''}", None)
        table = [(m, [v[i] for _, v in by_fund], sum((v[i] for _, v in by_fund), Decimal(0))) for i, m in enumerate(months)]
        return page(request, s, "district.html", position=position, months=months, funds=[f for f, _ in by_fund], table=table,
                    streets=[(name, sum(v, Decimal(0))) for name, v in by_street], fund_chart=fund_chart, street_chart=street_chart,
                    books=books, report=report, month=chosen, projections=projections, title="全区概览 District")

    # -------------------------------------------------------------------- snapshots
    @get(f"{BASE}/snapshots")
    async def snapshots(request: Request, valid_on: str | None = None, known_at: str | None = None) -> Response:
        s = _session(request)
        _need(s, "snapshots")
        result = None
        if valid_on:
            from infra.http import snapshot_files

            out = snapshot_files.temporary_directory()
            try:  # the files are hashed for the manifest, then removed
                written = await _snapshot(request, s, valid_on, known_at, out, preview=25)
            finally:
                snapshot_files.remove(out)
            result = {"snap": written.head, "manifest": written.manifest, "preview": written.preview,
                      "query": urlencode({"valid_on": valid_on, "known_at": known_at or ""})}
        return page(request, s, "snapshots.html", valid_on=valid_on or today().isoformat(), known_at=known_at or "", result=result,
                    columns=_snapshot_columns(), title="时点快照 Snapshots")

    @get(f"{BASE}/snapshots/download")
    async def snapshot_download(request: Request, valid_on: str, known_at: str | None = None, format: str = "csv") -> Response:
        s = _session(request)
        _need(s, "snapshots")
        if format not in ("csv", "xlsx"):
            raise Refused(422, "INVALID_INPUT", "format: csv or xlsx", field="format")
        from fastapi.responses import StreamingResponse

        from infra.http import snapshot_files

        # The file and its manifest are written to a temporary directory, zipped there and
        # streamed from disk; the directory goes when the response ends.
        out = snapshot_files.temporary_directory()
        try:
            written = await _snapshot(request, s, valid_on, known_at, out, formats=(format,))
            name = f"{written.head.stem}.{format}.zip"
            await run_in_threadpool(_zip, out / name, [written.path(format), written.manifest_path()])
            chunks, cleanup, size = snapshot_files.stream(out / name, out)
        except BaseException:
            snapshot_files.remove(out)
            raise
        return _secure(StreamingResponse(chunks, media_type="application/zip", background=cleanup,
                                         headers={"Content-Disposition": f'attachment; filename="{name}"', "Content-Length": str(size)}))


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        raise Refused(422, "INVALID_INPUT", f"{value!r} is not an id", field="recipient") from None


def _default_report_month(months: list[str]) -> str | None:
    return months[-1] if months else None


def _snapshot_columns() -> list[tuple[str, str]]:
    from commands.snapshot import COLUMNS

    return list(COLUMNS)


def _zip(target: Path, paths: list[Path]) -> None:
    """The files in a zip with fixed entry times (the same files give the same bytes)."""
    import shutil

    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(paths, key=lambda p: p.name):
            info = zipfile.ZipInfo(path.name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with path.open("rb") as src, z.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


async def _snapshot(request: Request, s: Session, valid_on: str, known_at: str | None, out: Path,
                    formats: tuple[str, ...] = ("csv", "xlsx"), preview: int = 0) -> Any:
    """R-TIME-3: the snapshot at (V, T), its files and their manifest written into ``out`` from
    the persisted cuts (``infra.http.snapshot_files``; no replay of the log per request)."""
    from commands.timeline import parse_known_at
    from infra.http import snapshot_files

    try:
        valid = date.fromisoformat(valid_on)
        moment = parse_known_at(known_at)  # without an offset: China Standard Time
    except ValueError as exc:
        raise Refused(422, "INVALID_INPUT", f"valid_on / known_at: {exc}", field="valid_on") from None
    written = await _blocking(snapshot_files.write, _service(request), valid, moment, formats, out, preview=preview)
    _log(request, s, "snapshot", f"console/snapshots?valid_on={valid.isoformat()}&known_at={moment.isoformat() if moment else ''}", None)
    return written


def waterfall_steps(rows: list[dict[str, Any]]) -> list[svg.Step]:
    """R-INS-3 [001 四; 001 二(二)3]: the explanation's waterfall rows as chart steps."""
    kinds = {"total": "total", "out_of_scope": "minus", "in_scope": "subtotal", "basic_insurance": "minus", "critical_illness": "minus",
             "supplements": "minus", "self_pay": "subtotal", "aid": "result"}
    return [svg.Step(r["zh"], r["step"], Decimal(str(r["amount"] or "0")), kinds.get(r["step"], "minus"), r.get("note", "")) for r in rows]


def local(moment: str | None) -> str:
    if not moment:
        return "—"
    return datetime.fromisoformat(moment).astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")


templates.env.filters["local"] = local
templates.env.filters["yuan"] = svg.yuan
templates.env.filters["epoch"] = lambda seconds: datetime.fromtimestamp(int(seconds), CST).strftime("%Y-%m-%d %H:%M:%S")
