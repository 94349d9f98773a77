"""What the browser console shows that no API endpoint answers (ADR 0018): finding a person by
name or street, a person's whole event history, the cap-usage series, and the district's figures.

Everything here only reads and arranges what the ledger recorded; it decides nothing. The
district figures are kept by small followers of the notification log that the console catches up
on each visit, built from the project's own read-model code: the fund books are
:class:`projections.funds.FundBooks` and the monthly street report is the report subscriber's
:class:`infra.reports.ReportStore`, fed with the public messages of :mod:`infra.contract.mapping`
exactly as the relay would feed it.
"""

from __future__ import annotations

import dataclasses
import heapq
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Iterator

from eventsourcing.utils import get_topic

from infra.http import svg
from ledger import errors
from ledger.aggregates import Claim, Recipient
from ledger.eligibility import category_periods
from ledger.money import ZERO, fmt
from ledger.values import CATEGORY_ZH, CST, ERASED, SCHEME_ZH, VISIT_ZH, local_date, same_identity, validate_id_number

if TYPE_CHECKING:
    from commands.lookup import Person

BATCH = 1000
_PAID = get_topic(Recipient.AidPaid)


def local_time(moment: datetime) -> str:
    """A recorded time as officers read it: China Standard Time, to the second."""
    return moment.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")


def _notifications(app: Any, topics: list[str], after: int = 0, stop: int | None = None) -> Iterator[Any]:
    start = after + 1
    while True:
        batch = app.recorder.select_notifications(start=start, limit=BATCH, stop=stop, topics=topics)
        if not batch:
            return
        yield from batch
        start = batch[-1].id + 1


# ------------------------------------------------------------------------------------ finding
SEARCH_BY = ("auto", "id_number", "name", "street")


def search(app: Any, query: str, by: str = "auto", *, street: str | None = None, limit: int = 200) -> tuple[str, list["Person"]]:
    """Find recipients through :func:`commands.lookup.search_people` (ADR 0019), the one place
    the CLI, the API and the console resolve people: by resident id number (through the ledger's
    keyed hash, ADR 0015: the number itself is never compared or stored), by name (contains,
    normalised), by street office, or ``auto``: a name, else a street. ``street`` limits the
    results to one street (a street handler's, R-PH-1 [002 4.1]), and in ``auto`` the handler's
    own street typed in the box is found as a street. Returns how the query was read and the matches."""
    from commands.lookup import search_people

    if by not in SEARCH_BY:
        raise errors.InvalidInput(f"by: one of {', '.join(SEARCH_BY)}", field="by")
    read_as, found = search_people(app, query, by=by, street=street, limit=limit)
    if read_as == "recipient":
        read_as = "auto"
    return read_as, [dataclasses.replace(x, enrolled_at=local_time(datetime.fromisoformat(x.enrolled_at))) for x in found]


# ------------------------------------------------------------------------------------ timeline
EVENT_ZH: dict[str, str] = {
    "Enrolled": "登记为救助对象",
    "CategoryGranted": "认定救助对象类别",
    "CategoryRevoked": "撤销救助对象类别",
    "InsuranceEnrolmentStarted": "参加基本医疗保险",
    "InsuranceEnrolmentEnded": "基本医疗保险终止",
    "EnrolmentSubsidised": "参保资助（类别认定后）",
    "MutualAidContributionPaid": "缴纳互助帮困费用",
    "AutoClaimConsentChanged": "免申即享授权变更",
    "ExpenseRecorded": "记录医疗费用",
    "InsuranceSettled": "保险支付",
    "ClaimAttached": "费用列入申请",
    "DuplicateAttempted": "重复申请被拒",
    "AidDecided": "救助决定",
    "AidReassessed": "重新核定",
    "SuspensionStarted": "四医联动暂停",
    "SuspensionLifted": "四医联动恢复",
    "SocialHelpGranted": "社会组织帮扶",
    "AidPaid": "救助金支付",
    "ClearingCaseOpened": "开立个人清算",
    "SupplementaryPayoutDue": "应补发",
    "RepaymentReceived": "收到退款",
    "WriteOffProposed": "提出核销",
    "WriteOffRefused": "核销被拒绝",
    "WriteOffApproved": "核销批准",
    "Lodged": "申请受理（经办人）",
    "Reviewed": "审核（审核人）",
    "Approved": "审批（审批人）",
    "Rejected": "申请驳回",
    "Paid": "区级发放",
}


@dataclass
class Entry:
    recorded_at: datetime
    aggregate: str  # recipient | claim
    version: int
    kind: str
    effective: str | None = None
    effective_to: str | None = None
    retroactive: bool = False
    late_insurance: bool = False
    detail: str = ""
    amount: str | None = None
    expenses: list[str] = dataclasses.field(default_factory=list)
    rules: str = ""

    @property
    def zh(self) -> str:
        return EVENT_ZH.get(self.kind, self.kind)

    @property
    def recorded(self) -> str:
        return local_time(self.recorded_at)


def _money_text(d: dict[str, Any] | None, names: dict[str, str] | None = None) -> str:
    return "，".join(f"{(names or {}).get(k, k)} {svg.yuan(v)}" for k, v in sorted((d or {}).items()) if Decimal(str(v)) != 0)


def _entry(e: Any, r: Recipient) -> Entry:
    kind = type(e).__name__
    out = Entry(e.timestamp, "recipient", e.originator_version, kind)
    if kind == "Enrolled":
        out.detail = f"{e.name}，{e.street or '（未登记街镇）'}"
    elif kind == "CategoryGranted":
        out.effective, out.effective_to = e.valid_from, e.valid_to
        out.detail = f"{CATEGORY_ZH.get(e.category, e.category)} {e.category}" + (f"（{e.subtype}）" if e.subtype else "")
        out.rules = "R-CAT-1"
    elif kind == "CategoryRevoked":
        out.effective = e.valid_from
        out.detail = f"{CATEGORY_ZH.get(e.category, e.category)} {e.category}" + (f"：{e.reason}" if e.reason else "")
        out.rules = "R-TIME-2, R-CLR-1(c)"
    elif kind == "InsuranceEnrolmentStarted":
        out.effective, out.effective_to = e.valid_from, e.valid_to
        out.detail = {"employee": "职工医保 employee", "resident": "城乡居民医保 resident"}.get(e.scheme, e.scheme)
        if e.subsidy:
            out.detail += f"；参保补贴 subsidy {svg.yuan(e.subsidy.get('amount'))}"
        out.rules = "R-INS-1"
    elif kind == "EnrolmentSubsidised":
        out.effective = e.valid_from
        out.detail = f"参保补贴 subsidy {svg.yuan(e.subsidy.get('amount'))}（{e.subsidy.get('kind')}，{e.subsidy.get('category')}）"
        out.rules = "R-INS-2"
    elif kind == "InsuranceEnrolmentEnded":
        out.effective = e.valid_to
        out.detail = e.scheme
        out.rules = "R-INS-1"
    elif kind == "MutualAidContributionPaid":
        out.detail = f"{e.year} 年度" + ("，有外地职工医保" if e.has_home_insurance else "")
        out.rules = "R-MA-1, R-MA-2"
    elif kind == "AutoClaimConsentChanged":
        out.detail = "已签署 signed" if e.signed else "已撤回 withdrawn"
        out.rules = "R-PH-3"
    elif kind == "ExpenseRecorded":
        out.effective = e.service_date
        out.detail = f"{VISIT_ZH.get(e.visit_type, e.visit_type)}，{e.facility.get('code', '')}，票据 {e.invoice_no}（开具 {e.invoice_date}）" + (
            f"；重复票据 duplicate of {e.duplicate_of}" if e.duplicate_of else "")
        out.amount = fmt(e.total)
        out.expenses = [e.expense_id]
    elif kind == "InsuranceSettled":
        acc = r.expenses.get(e.expense_id)
        decided = acc is not None and acc.decision is not None and acc.decision.decided_at < e.timestamp
        out.late_insurance = decided
        out.detail = {"critical_illness": "居保大病", "union_mutual_aid": "职工互助保障", "burden_reduction": "综合减负",
                      "children_fund": "少儿住院互助基金"}.get(e.scheme, e.scheme) + f" {e.scheme}"
        out.amount = fmt(e.amount)
        out.expenses = [e.expense_id]
        out.rules = "R-INS-4, R-CLR-1(a)" if decided else "R-INS-3"
    elif kind == "ClaimAttached":
        out.detail = f"申请 claim {e.claim_id}" + ("" if e.attached else "（释放 released）")
        out.expenses = list(e.expense_ids)
    elif kind == "DuplicateAttempted":
        out.detail = f"{e.channel}：{e.reason}"
        out.expenses = [e.expense_id]
        out.rules = "R-PH-7"
    elif kind == "AidDecided":
        total = sum((Decimal(d.get("total") or "0") for d in e.decisions), ZERO)
        refused = [d for d in e.decisions if not d.get("granted")]
        out.detail = f"{e.channel}" + (f"，申请 claim {e.claim_id}" if e.claim_id else "") + (f"；{len(refused)} 项不予救助" if refused else "")
        out.amount = fmt(total)
        out.expenses = [d["expense"] for d in e.decisions]
        out.rules = "R-TIME-1"
    elif kind == "AidReassessed":
        cause = e.cause or {}
        out.effective = cause.get("revoked_from") or cause.get("granted_from")
        out.detail = f"{e.trigger}" + ("：" + "，".join(f"{k} {v}" for k, v in sorted(cause.items())) if cause else "")
        out.expenses = [x["expense"] for x in e.results]
        out.rules = "R-TIME-2, R-CLR-2"
    elif kind == "SuspensionStarted":
        out.effective = e.valid_from
        out.detail = f"{SCHEME_ZH.get(e.scheme, e.scheme)}：{e.reason}"
        out.expenses = [e.expense_id]
        out.rules = "R-4L-4"
    elif kind == "SuspensionLifted":
        out.effective = e.lifted_on
        out.detail = f"{SCHEME_ZH.get(e.scheme, e.scheme)}，复核 reviewer {e.reviewer}"
        out.rules = "R-4L-4"
    elif kind == "SocialHelpGranted":
        out.detail = f"{e.organisation or ''} {e.period}"
        out.amount = fmt(e.amount)
        out.rules = "R-4L-5"
    elif kind == "AidPaid":
        total = sum((Decimal(p["total"]) for p in e.payments), ZERO)
        offsets = sum((Decimal(o["amount"]) for o in e.offsets), ZERO)
        out.detail = f"{e.channel}；抵扣清算 offset {svg.yuan(offsets)}，到个人 to person {svg.yuan(e.to_person)}"
        out.amount = fmt(total)
        out.expenses = [p["expense"] for p in e.payments]
        out.rules = "R-CLR-3" if offsets else ""
    elif kind == "ClearingCaseOpened":
        out.detail = f"{e.case_id}，{e.trigger}；{_money_text(e.by_fund)}"
        out.amount = fmt(e.amount)
        out.expenses = [e.expense_id]
        out.rules = "R-CLR-1, R-CLR-2"
    elif kind == "SupplementaryPayoutDue":
        out.detail = f"{e.supplementary_id}，{e.trigger}"
        out.amount = fmt(e.amount)
        out.expenses = [e.expense_id]
        out.rules = "R-CLR-2"
    elif kind == "RepaymentReceived":
        out.detail = "，".join(f"{a['case']} {svg.yuan(a['amount'])}" for a in e.allocations)
        received = [f"{label} {value}" for label, value in (("收款人 officer", e.officer), ("收到 received", e.received_on), ("凭证 voucher", e.voucher),
                                                             ("方式 method", REPAY_METHODS.get(e.method or "", e.method))) if value]
        if received:  # recorded since v2 (R-CLR-3 [000 第七条])
            out.detail += "；" + "，".join(received)
        out.amount = fmt(e.amount)
        out.rules = "R-CLR-3"
    elif kind == "WriteOffProposed":
        out.detail = f"提议 proposal {e.proposal_id}，提出 {e.officer}" + (f"：{e.reason}" if e.reason else "")
        out.amount = fmt(e.amount)
        out.rules = "R-CLR-3"
    elif kind == "WriteOffRefused":
        out.detail = f"提议 proposal {e.proposal_id}，拒绝 {e.officer}" + (f"：{e.reason}" if e.reason else "")
        out.rules = "R-CLR-3"
    elif kind == "WriteOffApproved":
        total = sum((Decimal(a["amount"]) for a in e.allocations), ZERO)
        out.detail = f"提出 {e.officer}，批准 {e.approver}" + (f"：{e.reason}" if e.reason else "")
        out.amount = fmt(total)
        out.rules = "R-CLR-3"
    if out.effective:
        out.retroactive = date.fromisoformat(out.effective) < local_date(e.timestamp)
    return out


def _claim_entry(e: Any) -> Entry:
    kind = type(e).__name__
    out = Entry(e.timestamp, "claim", e.originator_version, kind, rules="R-PH-4")
    claim = str(e.originator_id)
    if kind == "Lodged":
        out.detail = f"申请 claim {claim}，{e.channel}，经办人 handler {e.handler}"
        out.expenses = list(e.expense_ids)
        out.rules = "R-PH-1, R-PH-2, R-PH-5"
    elif kind == "Reviewed":
        out.detail = f"申请 claim {claim}，审核人 reviewer {e.reviewer}"
    elif kind == "Approved":
        out.detail = f"申请 claim {claim}，审批人 approver {e.approver}"
    elif kind == "Rejected":
        out.detail = f"申请 claim {claim}：{e.code} {e.message or ''}"
        out.rules = e.rule or ""
    elif kind == "Paid":
        out.detail = f"申请 claim {claim}，到个人 to person {svg.yuan(e.to_person)}"
        out.amount = fmt(e.total)
        out.rules = "R-PH-6"
    else:
        out.detail = f"申请 claim {claim}"
    return out


def timeline(app: Any, r: Recipient) -> list[Entry]:
    """Every event of the person and of their claims, in recorded order, each with its effective
    date where it has one; a fact recorded after its effective date is marked retroactive
    (R-TIME-2: it changes what was true before the ledger knew it)."""
    events = list(app.events.get(r.id))
    streams = [[_entry(e, r) for e in events]]
    claims: set[str] = set()
    for e in events:
        if isinstance(e, Recipient.ClaimAttached) or (isinstance(e, (Recipient.AidDecided, Recipient.AidPaid)) and e.claim_id):
            claims.add(e.claim_id)
    for cid in sorted(claims):
        streams.append([_claim_entry(e) for e in app.events.get(uuid.UUID(cid))])
    # Each stream stays in its own order. At one recorded time (``aid`` records its four commands at
    # one moment, ADR 0006) the steps of a claim come in the order they happen: lodged, reviewed,
    # approved and decided, paid; at one step the claim's signature comes first, as what the
    # recipient's decision or payment recorded with it follows from.
    return [x for _, x in heapq.merge(*(_staged(s) for s in streams), key=lambda kx: kx[0])]


#: The step of a claim an event belongs to, for ordering events recorded at one moment.
_CLAIM_STEP = {"Lodged": 0, "ClaimAttached": 0, "Reviewed": 1, "Approved": 2, "Rejected": 2, "AidDecided": 2, "Paid": 3, "AidPaid": 3}


def _staged(stream: list[Entry]) -> Iterator[tuple[tuple[Any, ...], Entry]]:
    """``stream`` (one aggregate's entries, in version order) keyed for the merge: by recorded time,
    then the claim step so far at that time (never going back, so the stream keeps its order)."""
    at, step = None, 0
    for x in stream:
        if x.recorded_at != at:
            at, step = x.recorded_at, 0
        step = max(step, _CLAIM_STEP.get(x.kind, 0))
        yield (x.recorded_at, step, x.aggregate != "claim", x.version), x


# ------------------------------------------------------------------------------------ charts' data
def _subtract(span: tuple[date, date | None], holes: list[tuple[date, date | None]]) -> list[tuple[date, date | None]]:
    """The parts of ``span`` not covered by ``holes`` (inclusive day ranges; None: open)."""
    parts = [span]
    for hs, he in holes:
        out = []
        for s, e in parts:
            if he is not None and he < s or (e is not None and hs > e):
                out.append((s, e))
                continue
            if hs > s:
                out.append((s, hs.fromordinal(hs.toordinal() - 1)))
            if he is not None and (e is None or he < e):
                out.append((he.fromordinal(he.toordinal() + 1), e))
        parts = out
    return parts


def category_rows(r: Recipient, today: date) -> tuple[list[svg.Row], date, date]:
    """R-CAT-1 periods as the ledger knows them now (``held``), and the parts of earlier grants a
    later revocation took back (``revoked``, R-TIME-2). Returns the rows and the date range."""
    knowledge = r.knowledge()
    held = category_periods(knowledge)
    granted = category_periods(dataclasses.replace(knowledge, categories=[f for f in knowledge.categories if f.kind == "grant"]))
    rows: list[svg.Row] = []
    first = today
    for category in sorted(set(held) | set(granted), key=lambda c: list(CATEGORY_ZH).index(c) if c in CATEGORY_ZH else 99):
        spans: list[svg.Span] = []
        kept = [(s, e) for s, e, _ in held.get(category, [])]
        for s, e in kept:
            spans.append(svg.Span(s, e, "held", f"{s.isoformat()} → {e.isoformat() if e else '至今 open'}"))
            first = min(first, s)
        for s, e, _ in granted.get(category, []):
            for rs, re_ in _subtract((s, e), kept):
                spans.append(svg.Span(rs, re_, "revoked", f"撤销 {rs.isoformat()} → {re_.isoformat() if re_ else '至今'}"))
                first = min(first, rs)
        rows.append(svg.Row(CATEGORY_ZH.get(category, category), category, tuple(sorted(spans, key=lambda x: x.start))))
    start = date(first.year, 1, 1)
    end = date(max(today.year, start.year), 12, 31)
    return rows, start, end


@dataclass
class CapSeries:
    year: int
    scheme: str
    kind: str
    cap: Decimal | None
    granted: Decimal  # as the API's caps answer says
    points: list[svg.Point]

    @property
    def cumulative(self) -> Decimal:
        return self.points[-1].cumulative if self.points else ZERO

    @property
    def agrees(self) -> bool:
        return self.cumulative == self.granted


def cap_series(r: Recipient, caps_rows: list[dict[str, Any]]) -> list[CapSeries]:
    """R-CAP-1, R-CAP-2 [002 4.3]: for each annual cap, the aid due now that counts against it,
    accumulated in invoice-date order through the cap year (the year of the invoice date)."""
    out = []
    for row in caps_rows:
        if row.get("cap") is None:
            continue
        year, scheme, kind = int(row["year"]), row["scheme"], row["kind"]
        items = []
        for eid, acc in r.expenses.items():
            due = acc.due or {}
            if acc.decision is None or acc.facts.invoice_date.year != year or not due.get("granted"):
                continue
            amount = sum((Decimal(p["amount"]) for p in due.get("parts", []) if p["scheme"] == scheme and p["kind"] == kind), ZERO)
            if amount:
                items.append((acc.facts.invoice_date, acc.facts.service_date, acc.decision.seq, acc.decision.position, eid, amount))
        items.sort()
        level, points = ZERO, []
        for invoice, _, _, _, eid, amount in items:
            level += amount
            points.append(svg.Point(invoice, level, f"{r.expenses[eid].handle or eid} +{svg.yuan(amount)}"))
        out.append(CapSeries(year, scheme, kind, Decimal(row["cap"]), Decimal(row["granted"]), points))
    return out


# ------------------------------------------------------------------------------------ district
class District:
    """The district's figures, following the ledger's log: aid paid per month, street and fund;
    the fund books (the ``FundBooks`` read model on an in-memory database); and the monthly street
    report (R-PH-6 [002 3.5]), built by :func:`infra.reports.build_report` from the same claim rows
    the report subscriber keeps (its ``report_claims`` / ``report_claim_amounts``), folded here in
    memory from the same events. Caught up, under a lock, on each visit."""

    def __init__(self, app: Any):
        from projections.common import make_engine
        from projections.funds import FundBooks
        from projections.runner import Runner

        self.app = app
        self.lock = threading.RLock()  # one visit catches up while another reads
        self.position = 0
        self.streets: dict[str, str] = {}
        self.aid: dict[tuple[str, str, str], Decimal] = defaultdict(lambda: ZERO)  # (month, street, fund)
        self.claims: dict[str, dict[str, Any]] = {}
        self.amounts: dict[str, dict[str, dict[str, Decimal]]] = {}
        self.funds_engine = make_engine("sqlite://")
        self.funds = Runner(self.funds_engine, app.recorder, app.mapper, [FundBooks()])
        self.funds.setup()
        self.topics = [get_topic(c) for c in (Recipient.Enrolled, Recipient.AidDecided, Recipient.AidPaid, Claim.Lodged, Claim.Rejected)]
        self._books: tuple[int, dict[str, Any]] | None = None  # (position, fund books proved there)

    def warm(self) -> None:
        """Catch up and prove the books once, so that the first visit reads what is ready
        (the console starts this in the background when the service starts)."""
        self.catch_up()
        self.fund_books()

    def close(self) -> None:
        self.funds_engine.dispose()

    def catch_up(self) -> int:
        """Bring every figure to the log's head; returns that position."""
        with self.lock:
            head = int(self.app.recorder.max_notification_id() or 0)
            if head <= self.position:
                return self.position
            for n in _notifications(self.app, self.topics, self.position, head):
                self._apply(self.app.mapper.to_domain_event(n))
            self.funds.catch_up()
            self.position = head
            return head

    def _claim(self, claim_id: str) -> dict[str, Any]:
        return self.claims.setdefault(claim_id, {k: None for k in _CLAIM_COLUMNS} | {"claim_id": claim_id})

    def _apply(self, e: Any) -> None:
        """The report subscriber's handlers (``infra.reports._on_*``), on rows in memory."""
        from infra.reports import REPORTED_CHANNELS

        rid = str(e.originator_id)
        if isinstance(e, Recipient.Enrolled):
            self.streets[rid] = e.street or ""
        elif isinstance(e, Claim.Lodged):
            self._claim(rid).update(recipient_key=e.recipient_id, channel=e.channel, lodged_on=e.lodged_on)
        elif isinstance(e, Claim.Rejected):
            self._claim(rid)["rejected"] = True
        elif isinstance(e, Recipient.AidDecided):
            if e.claim_id is None or e.channel not in REPORTED_CHANNELS:
                return
            by: dict[str, dict[str, Decimal]] = {"scheme": defaultdict(lambda: ZERO), "fund": defaultdict(lambda: ZERO)}
            for d in e.decisions:
                for k, v in (d.get("by_scheme") or {}).items():
                    by["scheme"][k] += Decimal(str(v))
                for k, v in (d.get("by_fund") or {}).items():
                    by["fund"][k] += Decimal(str(v))
            self._claim(e.claim_id).update(
                recipient_key=rid, channel=e.channel, approved_at=e.timestamp.isoformat(), approved_on=local_date(e.timestamp).isoformat(),
                expenses=len(e.decisions), aid_total=fmt(sum((Decimal(str(d.get("total") or "0")) for d in e.decisions), ZERO)),
            )
            self.amounts[e.claim_id] = {kind: dict(v) for kind, v in by.items()}
        elif isinstance(e, Recipient.AidPaid):
            month = local_date(e.timestamp).strftime("%Y-%m")
            street = self.streets.get(rid) or UNKNOWN_STREET
            for p in e.payments:
                for fund, v in p["by_fund"].items():
                    self.aid[(month, street, fund)] += Decimal(str(v))
            if e.claim_id is not None:
                self._claim(e.claim_id).update(
                    recipient_key=rid, paid_at=e.timestamp.isoformat(), paid_on=local_date(e.timestamp).isoformat(),
                    paid_total=fmt(sum((Decimal(str(p["total"])) for p in e.payments), ZERO)),
                    offsets=fmt(sum((Decimal(str(o["amount"])) for o in e.offsets), ZERO)), to_person=fmt(e.to_person),
                )

    # -- reading -------------------------------------------------------------------------
    def months(self) -> list[str]:
        with self.lock:
            keys = sorted({m for m, _, _ in self.aid})
        if not keys:
            return []
        first, last = date.fromisoformat(keys[0] + "-01"), date.fromisoformat(keys[-1] + "-01")
        return svg.months_between(first, last)

    def by_fund(self, months: list[str]) -> list[tuple[str, list[Decimal]]]:
        totals: dict[tuple[str, str], Decimal] = defaultdict(lambda: ZERO)
        with self.lock:
            for (m, _, f), v in self.aid.items():
                totals[(m, f)] += v
        return [(f, [totals.get((m, f), ZERO) for m in months]) for f in sorted({f for _, f in totals})]

    def by_street(self, months: list[str]) -> list[tuple[str, list[Decimal]]]:
        totals: dict[tuple[str, str], Decimal] = defaultdict(lambda: ZERO)
        with self.lock:
            for (m, s, _), v in self.aid.items():
                totals[(m, s)] += v
        return [(s, [totals.get((m, s), ZERO) for m in months]) for s in sorted({s for _, s in totals})]

    def fund_books(self) -> dict[str, Any]:
        """The trial balance and its proof (balanced at every position) as of the position caught
        up to; proved once per position (the proof reads every line: 0.6 s on the demo store)."""
        from projections import funds

        with self.lock:
            if self._books is not None and self._books[0] == self.position:
                return self._books[1]
            with self.funds_engine.connect() as conn:  # one in-memory connection: no reads during a catch-up
                rows = funds.balances(conn)
                result = funds.check(conn)
            books = {"rows": summarise_books(rows), "ok": result.ok, "problems": result.problems, "lines": result.lines}
            self._books = (self.position, books)
            return books

    def _days_of(self, month: str) -> dict[str, int]:
        """R-PH-3, R-PH-6: the procedure's days of ``month`` under the policy as recorded now."""
        from ledger import errors
        from ledger.procedure import monthly_days

        year, mon = (int(x) for x in month.split("-"))
        try:
            book = self.app.policy().book
        except errors.InvalidInput:  # no policy recorded yet: the text's days
            book = None
        return monthly_days(book, date(year, mon, 1))

    def report(self, month: str) -> Any:
        """The month's street summary and payout list, as ``ReportStore.monthly`` selects them:
        claims approved in the settlement period ending on the (moved) 20th, not rejected."""
        from infra import working_days
        from infra.reports import build_report

        sched = working_days.schedule(month, self._days_of)
        lo, hi = sched.period_start.isoformat(), sched.period_end.isoformat()
        with self.lock:
            rows = [dict(r) for r in self.claims.values() if r["approved_on"] and lo <= r["approved_on"] <= hi and not r["rejected"]]
            rows.sort(key=lambda r: r["claim_id"])
            amounts = defaultdict(lambda: {"scheme": {}, "fund": {}}, {r["claim_id"]: self.amounts.get(r["claim_id"], {"scheme": {}, "fund": {}}) for r in rows})
            streets = dict(self.streets)
        return build_report(sched, rows, amounts, streets)


UNKNOWN_STREET = "（未登记街镇）"
_CLAIM_COLUMNS = ("recipient_key", "channel", "lodged_on", "approved_at", "approved_on", "expenses", "aid_total", "rejected",
                  "paid_at", "paid_on", "paid_total", "offsets", "to_person")


def summarise_books(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trial balance per fund and account (receivables of all recipients together)."""
    acc: dict[tuple[str, str], list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    for row in rows:
        a = acc[(row["fund"], row["account"])]
        a[0] += Decimal(row["debit"])
        a[1] += Decimal(row["credit"])
    return [{"fund": f, "account": a, "debit": fmt(d), "credit": fmt(c), "balance": fmt(d - c)} for (f, a), (d, c) in sorted(acc.items())]


# ------------------------------------------------------------------------------------ clearing
#: R-CLR-3 [000 第七条]: how a repayment was received (the values of ``Repay.method``).
REPAY_METHODS = {"cash": "现金 cash", "bank_transfer": "银行转账 bank transfer", "offset": "抵扣 offset"}
#: What the console's repayment form may pass on to ``POST /recipients/{id}/repayments`` besides
#: the amount (the officer is the caller's own token).
REPAY_FIELDS = ("voucher", "method", "received_on")


def proposals_total(proposals: list[dict[str, Any]]) -> Decimal:
    """The amount of the write-offs waiting for approval, in all (R-CLR-3)."""
    return sum((Decimal(p.get("amount") or "0") for p in proposals), ZERO)


def same_officer(a: str | None, b: str | None) -> bool:
    """Whether two officer ids are one person, compared as the ledger compares them (R-CLR-3
    [000 第七条]: the approver of a write-off is not the officer who proposed it)."""
    return same_identity(a) == same_identity(b)


# ------------------------------------------------------------------------------------ statement
STATEMENT_FORMATS = {"csv": "text/csv; charset=utf-8", "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def statement_file(service: Any, recipient: str, fmt: str) -> tuple[bytes, str]:
    """A recipient's statement as a CSV or XLSX file, written by :mod:`infra.statement_export`
    from the statement read model brought to the log's head (the lines, +08:00 times, whole
    expense handles, totals per kind). Returns the file's bytes and its name."""
    import tempfile
    from pathlib import Path

    from infra import statement_export
    from projections import statement as st
    from projections.common import reading

    if fmt not in STATEMENT_FORMATS:
        raise errors.InvalidInput(f"format: one of {', '.join(STATEMENT_FORMATS)}", field="format")
    engine, _ = service.read_model("statement")
    with reading(engine) as conn:
        rows = st.for_recipient(conn, recipient)
    handles = statement_export.handles_of(service.ledger, recipient)
    write = statement_export.write_csv if fmt == "csv" else statement_export.write_xlsx
    name = f"statement-{recipient}.{fmt}"
    with tempfile.TemporaryDirectory(prefix="ledger-statement-") as tmp:  # nothing personal is left on disk
        return write(rows, Path(tmp) / name, handles).read_bytes(), name
