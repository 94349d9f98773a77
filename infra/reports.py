"""The monthly street report subscriber (R-PH-6 [002 3.5]; ADR 0011, ADR 0012).

A downstream subscriber in the sense of ADR 0011: it reads only the public messages (never the
ledger's tables) and keeps its own store (``LEDGER_REPORTS_DATABASE_URL``). Per street and month it
builds the settlement summary 汇总表 (claims, expenses, aid per scheme and per fund) and the payout
list 发放清单 (recipient key, claim, amount), with the month's two deadlines: the street submits by
the 20th, the district pays by the 25th, each moved to the next working day (infra.working_days).

What the report covers: claims (post-hoc and 免申即享 auto) approved in the month's settlement period
(after the previous month's submission deadline, up to this month's), with the aid approved for
them; the payout columns fill in when the district pays (``aid.paid``: offsets against clearing
cases and the amount that reached the person). One-stop settlements are paid to the facility at
the point of care and supplementary payouts are not claims: neither is on the street's list.

Exactly once: each message is applied in one transaction together with its event id in
``report_inbox`` and the position in ``report_tracking``. A message already seen (same event id),
or at or below the last position applied when the transport keeps the log order, changes nothing.
The report's rows do not depend on the order the messages arrive in (the street comes from
``recipient.enrolled``, the amounts from ``aid.decided``, the payment from ``aid.paid``), so an
unordered transport (Kafka across partitions) needs only the inbox.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable

import sqlalchemy as sa
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra import working_days
from infra.contract import messages as pm
from infra.relay import Topology, ensure_stream, safe_name
from ledger.money import ZERO, fmt
from ledger.procedure import MONTHLY_DAYS, PROCEDURE
from ledger.values import CST, FUND_ZH, FUNDS, SCHEME_ZH

log = logging.getLogger("ledger.reports")

CHANNEL_ZH = {"post_hoc": "事后申请", "auto": "免申即享"}
UNKNOWN_STREET = "（未登记街镇）"
REPORTED_CHANNELS = ("post_hoc", "auto")
#: JetStream redelivers an unacknowledged message after this long. With one message in flight
#: (max ack pending 1, for the log order) an ack lost with a broken connection stalls the consumer
#: for at most this long; a redelivery of a message still being applied is dropped as a repeat.
ACK_WAIT_S = 5


class ReportSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_REPORTS_", extra="ignore")

    database_url: str = "sqlite:///./var/reports.db"
    name: str = "reports"  # the subscriber's queue / durable consumer, and its replay destination


# ---------------------------------------------------------------------------------- the store
metadata = sa.MetaData()
inbox = sa.Table(
    "report_inbox",
    metadata,
    sa.Column("event_id", sa.String(36), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("type", sa.String(60), nullable=False),
    sa.Column("applied_at", sa.String(40), nullable=False),
)
tracking = sa.Table(
    "report_tracking",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("last_position", sa.BigInteger, nullable=False),
    sa.Column("applied", sa.BigInteger, nullable=False),
    sa.Column("repeats", sa.BigInteger, nullable=False),
    sa.Column("skipped", sa.BigInteger, nullable=False),
    sa.Column("replayed_to", sa.BigInteger, nullable=True),
)
recipients = sa.Table(
    "report_recipients",
    metadata,
    sa.Column("recipient_key", sa.String(64), primary_key=True),
    sa.Column("street", sa.String(200), nullable=False),
)
claims = sa.Table(
    "report_claims",
    metadata,
    sa.Column("claim_id", sa.String(64), primary_key=True),
    sa.Column("recipient_key", sa.String(64)),
    sa.Column("channel", sa.String(20)),
    sa.Column("lodged_on", sa.String(10)),
    sa.Column("approved_at", sa.String(40)),
    sa.Column("approved_on", sa.String(10), index=True),
    sa.Column("expenses", sa.Integer),
    sa.Column("aid_total", sa.String(20)),
    sa.Column("rejected", sa.Boolean),
    sa.Column("paid_at", sa.String(40)),
    sa.Column("paid_on", sa.String(10)),
    sa.Column("paid_total", sa.String(20)),
    sa.Column("offsets", sa.String(20)),
    sa.Column("to_person", sa.String(20)),
)
claim_amounts = sa.Table(
    "report_claim_amounts",
    metadata,
    sa.Column("claim_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(10), primary_key=True),  # scheme | fund
    sa.Column("key", sa.String(60), primary_key=True),
    sa.Column("amount", sa.String(20), nullable=False),
)

#: R-PH-3, R-PH-6: amendments of the procedure's days of the month, as published
#: (``policy.parameter_amended``); the latest published that covers a month's first day wins.
procedure_days = sa.Table(
    "report_procedure_days",
    metadata,
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False, index=True),
    sa.Column("effective_from", sa.String(10), nullable=False),
    sa.Column("effective_to", sa.String(10)),
    sa.Column("value", sa.Integer),  # null: the amendment ends the day (the text's day applies)
)
PROCEDURE_DAYS = {f"{PROCEDURE}.{key}": key for key in MONTHLY_DAYS}


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """WAL with ``synchronous=NORMAL``: a commit is durable against a crash of the process (what
    exactly-once needs here) without an fsync per message."""
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _local_date(moment: datetime) -> date:
    return moment.astimezone(CST).date()


def _sum(values: Iterable[str | Decimal | None]) -> Decimal:
    return sum((Decimal(str(v)) for v in values if v is not None), ZERO)


class ReportStore:
    """The subscriber's own store: inbox, tracking and the facts the report is built from."""

    def __init__(self, url: str, name: str = "reports"):
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
            if url.startswith("sqlite:///") and ":memory:" not in url:
                Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_wal)
        self.name = name
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            if conn.execute(sa.select(tracking.c.name).where(tracking.c.name == name)).first() is None:
                conn.execute(tracking.insert().values(name=name, last_position=0, applied=0, repeats=0, skipped=0))

    def close(self) -> None:
        self.engine.dispose()

    def reset(self) -> None:
        """Forget everything (before a rebuild from a replay at position 0)."""
        with self.engine.begin() as conn:
            for table in (claim_amounts, claims, recipients, inbox, procedure_days):
                conn.execute(table.delete())
            conn.execute(tracking.update().where(tracking.c.name == self.name).values(last_position=0, applied=0, repeats=0, skipped=0, replayed_to=None))

    # -- reading -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tracking).where(tracking.c.name == self.name)).mappings().one()
        return dict(row)

    def last_position(self) -> int:
        return int(self.state()["last_position"])

    def event_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(inbox.c.event_id))]

    # -- applying ----------------------------------------------------------------------------
    def apply(self, data: pm.Envelope | dict[str, Any] | bytes | str, *, ordered: bool = True) -> str:
        """Apply one received message; returns ``applied``, ``repeat``, ``skipped``, ``replay_completed``
        or ``checkpoint`` (an integrity checkpoint, left alone).

        ``ordered``: the transport delivers in log order (one RabbitMQ queue, one JetStream stream,
        one Redis stream), so anything at or below the last position applied is a repeat.
        """
        try:
            message = data if isinstance(data, pm.Envelope) else pm.parse_message(data)
        except ValidationError as exc:
            log.warning("reports: a message outside contract v%s was skipped: %s", pm.SCHEMA_VERSION, exc.errors()[:1])
            with self.engine.begin() as conn:
                conn.execute(tracking.update().where(tracking.c.name == self.name).values(skipped=tracking.c.skipped + 1))
            return "skipped"
        if isinstance(message, pm.ChainCheckpointSealed):
            return "checkpoint"  # the integrity chain's checkpoint (ADR 0016): no figure of the report
        with self.engine.begin() as conn:
            state = conn.execute(sa.select(tracking).where(tracking.c.name == self.name)).mappings().one()
            last = int(state["last_position"])
            mine = tracking.update().where(tracking.c.name == self.name)
            if isinstance(message, pm.ReplayCompleted):
                up_to = message.payload.up_to_position
                conn.execute(mine.values(last_position=max(last, up_to), replayed_to=up_to))
                return "replay_completed"
            eid = str(message.event_id)
            seen = (ordered and message.position <= last) or conn.execute(
                sa.select(inbox.c.event_id).where(inbox.c.event_id == eid)
            ).first() is not None
            if seen:
                conn.execute(mine.values(repeats=tracking.c.repeats + 1))
                return "repeat"
            conn.execute(inbox.insert().values(event_id=eid, position=message.position, type=message.type, applied_at=datetime.now(timezone.utc).isoformat()))
            handler = _HANDLERS.get(message.type)
            if handler is not None:
                handler(conn, message)
            conn.execute(mine.values(last_position=max(last, message.position), applied=tracking.c.applied + 1))
            return "applied"

    def catch_up(self, app: Any, *, page: int = 2000, progress: Any = None) -> int:
        """Apply, straight from the ledger's store, every public message after the last position
        applied, a page per transaction: the report then needs no relay or broker (``ledger
        report monthly`` does this by default). The messages are the relay's own (infra.relay
        StoreReader: the same mapping), so a subscriber fed by a broker and this catch-up agree,
        and the inbox keeps each message applied once whichever came first. Returns how many
        messages were applied; ``progress(done, head)`` is called after each page."""
        from infra.relay import StoreReader

        reader = StoreReader(app)
        head = reader.head()
        applied = 0
        while True:
            after = self.last_position()
            if after >= head:
                break
            batch = reader.read(after, page, stop=head)
            with self.engine.begin() as conn:
                mine = tracking.update().where(tracking.c.name == self.name)
                seen = {r[0] for r in conn.execute(sa.select(inbox.c.event_id).where(inbox.c.event_id.in_([str(m.event_id) for m in batch.messages])))} if batch.messages else set()
                rows = []
                for message in batch.messages:
                    if isinstance(message, (pm.ChainCheckpointSealed, pm.ReplayCompleted)) or str(message.event_id) in seen:
                        continue
                    handler = _HANDLERS.get(message.type)
                    if handler is not None:
                        handler(conn, message)
                    rows.append({"event_id": str(message.event_id), "position": message.position, "type": message.type, "applied_at": datetime.now(timezone.utc).isoformat()})
                if rows:
                    conn.execute(inbox.insert(), rows)
                conn.execute(mine.values(last_position=max(after, batch.last), applied=tracking.c.applied + len(rows)))
            applied += len(rows)
            if progress is not None:
                progress(batch.last, head)
            if batch.last <= after:
                break
        return applied

    # -- the report ---------------------------------------------------------------------------
    def days_of(self, month: str) -> dict[str, int]:
        """R-PH-3, R-PH-6 [002 3.3, 3.5]: the procedure's days for ``month`` under the amendments
        received, each looked up on the month's first day; the text's where none covers it."""
        first = f"{month}-01"
        days = dict(MONTHLY_DAYS)
        with self.engine.connect() as conn:
            for name, key in PROCEDURE_DAYS.items():
                row = conn.execute(
                    sa.select(procedure_days.c.value)
                    .where(procedure_days.c.name == name, procedure_days.c.effective_from <= first,
                           sa.or_(procedure_days.c.effective_to.is_(None), procedure_days.c.effective_to >= first))
                    .order_by(procedure_days.c.position.desc())
                    .limit(1)
                ).first()
                if row is not None and row.value is not None:
                    days[key] = int(row.value)
        return days

    def monthly(self, month: str) -> "MonthlyReport":
        sched = working_days.schedule(month, self.days_of)
        with self.engine.connect() as conn:
            streets = {r.recipient_key: r.street for r in conn.execute(sa.select(recipients))}
            rows = list(
                conn.execute(
                    sa.select(claims).where(
                        claims.c.approved_on >= sched.period_start.isoformat(),
                        claims.c.approved_on <= sched.period_end.isoformat(),
                        sa.or_(claims.c.rejected.is_(None), claims.c.rejected.is_(False)),
                    )
                ).mappings()
            )
            ids = [r["claim_id"] for r in rows]
            amounts: dict[str, dict[str, dict[str, Decimal]]] = defaultdict(lambda: {"scheme": {}, "fund": {}})
            for chunk in _chunks(ids, 500):
                for a in conn.execute(sa.select(claim_amounts).where(claim_amounts.c.claim_id.in_(chunk))).mappings():
                    amounts[a["claim_id"]][a["kind"]][a["key"]] = Decimal(a["amount"])
        return build_report(sched, rows, amounts, streets)


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---------------------------------------------------------------------------------- handlers
def _upsert(conn: sa.Connection, table: sa.Table, key: dict[str, Any], values: dict[str, Any]) -> None:
    cond = sa.and_(*(table.c[k] == v for k, v in key.items()))
    if conn.execute(table.update().where(cond).values(**values)).rowcount == 0:
        conn.execute(table.insert().values(**key, **values))


def _on_enrolled(conn: sa.Connection, m: pm.RecipientEnrolled) -> None:
    _upsert(conn, recipients, {"recipient_key": m.recipient_key}, {"street": m.payload.street})


def _on_lodged(conn: sa.Connection, m: pm.ClaimLodged) -> None:
    p = m.payload
    _upsert(conn, claims, {"claim_id": p.claim_id}, {"recipient_key": p.recipient_id, "channel": p.channel, "lodged_on": p.lodged_on.isoformat()})


def _on_rejected(conn: sa.Connection, m: pm.ClaimRejected) -> None:
    _upsert(conn, claims, {"claim_id": m.payload.claim_id}, {"recipient_key": m.payload.recipient_id, "rejected": True})


def _on_decided(conn: sa.Connection, m: pm.AidDecided) -> None:
    p = m.payload
    if p.claim_id is None or p.channel not in REPORTED_CHANNELS:
        return
    by: dict[tuple[str, str], Decimal] = defaultdict(lambda: ZERO)
    for d in p.decisions:
        for k, v in d.by_scheme.items():
            by[("scheme", k)] += Decimal(v)
        for k, v in d.by_fund.items():
            by[("fund", k)] += Decimal(v)
    _upsert(
        conn,
        claims,
        {"claim_id": p.claim_id},
        {
            "recipient_key": m.recipient_key,
            "channel": p.channel,
            "approved_at": m.recorded_at.isoformat(),
            "approved_on": _local_date(m.recorded_at).isoformat(),
            "expenses": len(p.decisions),
            "aid_total": fmt(_sum(d.total for d in p.decisions)),
        },
    )
    conn.execute(claim_amounts.delete().where(claim_amounts.c.claim_id == p.claim_id))
    rows = [{"claim_id": p.claim_id, "kind": kind, "key": key, "amount": fmt(v)} for (kind, key), v in sorted(by.items())]
    if rows:
        conn.execute(claim_amounts.insert(), rows)


def _on_paid(conn: sa.Connection, m: pm.AidPaid) -> None:
    p = m.payload
    if p.claim_id is None:
        return
    _upsert(
        conn,
        claims,
        {"claim_id": p.claim_id},
        {
            "recipient_key": m.recipient_key,
            "paid_at": m.recorded_at.isoformat(),
            "paid_on": _local_date(m.recorded_at).isoformat(),
            "paid_total": fmt(_sum(x.total for x in p.payments)),
            "offsets": fmt(_sum(o.amount for o in p.offsets)),
            "to_person": p.to_person,
        },
    )


def _on_parameter(conn: sa.Connection, m: pm.PolicyParameterAmended) -> None:
    p = m.payload
    if p.name not in PROCEDURE_DAYS:
        return
    values = {"name": p.name, "effective_from": p.effective_from.isoformat(),
              "effective_to": p.effective_to.isoformat() if p.effective_to else None,
              "value": int(p.value) if p.value is not None else None}
    _upsert(conn, procedure_days, {"position": m.position}, values)


_HANDLERS = {
    "policy.parameter_amended": _on_parameter,
    "recipient.enrolled": _on_enrolled,
    "claim.lodged": _on_lodged,
    "claim.rejected": _on_rejected,
    "aid.decided": _on_decided,
    "aid.paid": _on_paid,
}


# ---------------------------------------------------------------------------------- the report
@dataclass
class StreetSummary:
    """One row of the 汇总表."""

    street: str
    month: str
    claims: int = 0
    expenses: int = 0
    aid_total: Decimal = ZERO
    by_scheme: dict[str, Decimal] = field(default_factory=dict)
    by_fund: dict[str, Decimal] = field(default_factory=dict)
    paid_claims: int = 0
    offsets: Decimal = ZERO
    to_person: Decimal = ZERO


@dataclass
class PayoutLine:
    """One row of the 发放清单."""

    street: str
    recipient_key: str
    claim_id: str
    channel: str
    approved_on: str
    expenses: int
    amount: Decimal
    offsets: Decimal | None
    to_person: Decimal | None
    paid_on: str | None


@dataclass
class MonthlyReport:
    month: str
    schedule: working_days.Schedule
    summaries: list[StreetSummary]
    payouts: list[PayoutLine]

    @property
    def warning(self) -> str | None:
        return self.schedule.warning

    def as_dict(self) -> dict[str, Any]:
        s = self.schedule
        return {
            "month": self.month,
            "period": {"from": s.period_start.isoformat(), "to": s.period_end.isoformat()},
            "submission_due": s.submission.due.isoformat(),
            "payment_due": s.payment.due.isoformat(),
            "auto_claims_due": s.auto_claims.isoformat() if s.auto_claims else None,
            "calendar": s.submission.basis if s.submission.basis == s.payment.basis else working_days.WEEKENDS_ONLY,
            "warning": self.warning,
            "streets": [
                {
                    "street": x.street,
                    "claims": x.claims,
                    "expenses": x.expenses,
                    "aid_total": fmt(x.aid_total),
                    "by_scheme": {k: fmt(v) for k, v in sorted(x.by_scheme.items())},
                    "by_fund": {k: fmt(v) for k, v in sorted(x.by_fund.items())},
                    "paid_claims": x.paid_claims,
                    "offsets": fmt(x.offsets),
                    "to_person": fmt(x.to_person),
                }
                for x in self.summaries
            ],
            "payouts": [
                {
                    "street": p.street,
                    "recipient_key": p.recipient_key,
                    "claim_id": p.claim_id,
                    "channel": p.channel,
                    "approved_on": p.approved_on,
                    "expenses": p.expenses,
                    "amount": fmt(p.amount),
                    "offsets": fmt(p.offsets),
                    "to_person": fmt(p.to_person),
                    "paid_on": p.paid_on,
                }
                for p in self.payouts
            ],
        }


def build_report(sched: working_days.Schedule, rows: list[Any], amounts: dict[str, dict[str, dict[str, Decimal]]], streets: dict[str, str]) -> MonthlyReport:
    summaries: dict[str, StreetSummary] = {}
    payouts: list[PayoutLine] = []
    for r in rows:
        if r["channel"] not in REPORTED_CHANNELS or r["aid_total"] is None:
            continue
        street = streets.get(r["recipient_key"]) or UNKNOWN_STREET
        s = summaries.setdefault(street, StreetSummary(street, sched.month))
        total = Decimal(r["aid_total"])
        s.claims += 1
        s.expenses += int(r["expenses"] or 0)
        s.aid_total += total
        for k, v in amounts[r["claim_id"]]["scheme"].items():
            s.by_scheme[k] = s.by_scheme.get(k, ZERO) + v
        for k, v in amounts[r["claim_id"]]["fund"].items():
            s.by_fund[k] = s.by_fund.get(k, ZERO) + v
        paid = r["paid_on"] is not None
        if paid:
            s.paid_claims += 1
            s.offsets += Decimal(r["offsets"])
            s.to_person += Decimal(r["to_person"])
        payouts.append(
            PayoutLine(
                street=street,
                recipient_key=r["recipient_key"],
                claim_id=r["claim_id"],
                channel=r["channel"],
                approved_on=r["approved_on"],
                expenses=int(r["expenses"] or 0),
                amount=total,
                offsets=Decimal(r["offsets"]) if paid else None,
                to_person=Decimal(r["to_person"]) if paid else None,
                paid_on=r["paid_on"],
            )
        )
    payouts.sort(key=lambda p: (p.street, p.approved_on, p.recipient_key, p.claim_id))
    return MonthlyReport(sched.month, sched, [summaries[k] for k in sorted(summaries)], payouts)


# ---------------------------------------------------------------------------------- exports
def _schemes(report: MonthlyReport) -> list[str]:
    return sorted({k for s in report.summaries for k in s.by_scheme})


#: ``people(recipient_key) -> (name, masked id number)``: who a payout line is for. The subscriber
#: holds no personal data (ADR 0011); the CLI passes one read from the ledger (``ledger_people``).
People = Any


def summary_table(report: MonthlyReport, *, numbers: bool = False) -> tuple[list[str], list[list[Any]]]:
    """汇总表: header and rows (money as two-decimal strings, or as Decimals with ``numbers``)."""
    money = (lambda v: v) if numbers else fmt  # noqa: E731
    schemes = _schemes(report)
    s = report.schedule
    header = (
        ["街镇", "月份", "申请件数", "费用笔数", "救助金额合计"]
        + [f"{SCHEME_ZH.get(k, k)}" for k in schemes]
        + [FUND_ZH.get(f, f) for f in FUNDS]
        + ["已发放件数", "清算抵扣", "实发金额", "上报截止日", "拨付截止日", "日历依据"]
    )
    basis = "国务院节假日安排" if report.warning is None else "仅按双休日（无节假日数据）"
    rows = [
        [x.street, x.month, x.claims, x.expenses, money(x.aid_total)]
        + [money(x.by_scheme.get(k, ZERO)) for k in schemes]
        + [money(x.by_fund.get(f, ZERO)) for f in FUNDS]
        + [x.paid_claims, money(x.offsets), money(x.to_person), s.submission.due.isoformat(), s.payment.due.isoformat(), basis]
        for x in report.summaries
    ]
    return header, rows


def payout_table(report: MonthlyReport, *, numbers: bool = False, people: People = None) -> tuple[list[str], list[list[Any]]]:
    """发放清单: header and rows. With ``people`` each line names the person by name and masked id
    number (姓名, 证件号码) instead of the recipient key."""
    money = (lambda v: v) if numbers else fmt  # noqa: E731
    who = ["姓名", "证件号码"] if people is not None else ["救助对象标识"]
    header = ["街镇", *who, "申请编号", "申请渠道", "审批日期", "费用笔数", "救助金额", "清算抵扣", "实发金额", "发放日期"]
    rows = []
    for p in report.payouts:
        person = list(people(p.recipient_key)) if people is not None else [p.recipient_key]
        paid = [money(p.offsets), money(p.to_person)] if p.paid_on else ["", ""]
        rows.append([p.street, *person, p.claim_id, CHANNEL_ZH.get(p.channel, p.channel), p.approved_on, p.expenses, money(p.amount), *paid, p.paid_on or ""])
    return header, rows


def ledger_people(app: Any) -> People:
    """``people`` for the exports, read from the ledger: each person's enrolment (the first event
    of their stream, decrypted by the ledger's own mapper, ADR 0015), cached per key."""
    from commands.clearing_views import mask_id_number

    cache: dict[str, tuple[str, str]] = {}

    def people(key: str) -> tuple[str, str]:
        if key not in cache:
            try:
                r = app.repository.get(uuid.UUID(key), version=1)
                cache[key] = (r.name, mask_id_number(r.id_number))
            except Exception:  # noqa: BLE001 - an unknown or erased person still gets a line
                cache[key] = ("（未知）", "")
        return cache[key]

    return people


def write_csv(report: MonthlyReport, folder: Path, *, people: People = None) -> list[Path]:
    """Two UTF-8 (with BOM, for Excel) CSV files: ``<month>-汇总表.csv`` and ``<month>-发放清单.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for title, (header, rows) in (("汇总表", summary_table(report)), ("发放清单", payout_table(report, people=people))):
        path = folder / f"{report.month}-{title}.csv"
        with path.open("w", encoding="utf-8-sig", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
            if report.warning:
                w.writerow([])
                w.writerow(["注意", report.warning])
        out.append(path)
    return out


#: Columns summed on the 合计 row (counts and money); the others are labels or dates.
_TOTALLED = {"申请件数", "费用笔数", "已发放件数", "救助金额合计", "清算抵扣", "实发金额", "救助金额", *FUND_ZH.values(), *SCHEME_ZH.values()}
_COUNTS = {"申请件数", "费用笔数", "已发放件数"}


def format_sheet(ws: Any, header: list[str], rows: list[list[Any]], *, money: set[str], totals: set[str], label: str = "合计") -> None:
    """Write a table on a worksheet as an officer wants it in Excel: numbers as numbers (money
    with two decimals), a bold header frozen above an autofilter, a 合计 row summing ``totals``
    (as values, so that the sheet reads the same without recalculation), column widths fitting
    the longest cell (CJK characters counted double)."""
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    ws.append(header)
    for row in rows:
        ws.append(row)
    last = ws.max_row
    total_row = [label] + [None] * (len(header) - 1)
    for i, name in enumerate(header):
        if name in totals and i > 0:
            total_row[i] = sum((Decimal(str(r[i])) for r in rows if r[i] not in (None, "")), ZERO)
            if name in _COUNTS:
                total_row[i] = int(total_row[i])
    ws.append(total_row)
    bold = Font(bold=True)
    for cell in ws[1]:
        cell.font = bold
    for cell in ws[ws.max_row]:
        cell.font = bold
    for i, name in enumerate(header, start=1):
        if name in money:
            for (cell,) in ws.iter_rows(min_row=2, max_row=ws.max_row, min_col=i, max_col=i):
                cell.number_format = "#,##0.00"
        width = max(_width(v) for v in [name, *(r[i - 1] for r in rows), total_row[i - 1]])
        ws.column_dimensions[get_column_letter(i)].width = min(max(width + 2, 8), 60)
    ws.freeze_panes = "A2"
    ws.auto_filter.ref = f"A1:{get_column_letter(len(header))}{last}"


def _width(value: Any) -> int:
    if value is None:
        return 0
    text = f"{value:,.2f}" if isinstance(value, Decimal) else str(value)
    return sum(2 if ord(ch) > 0x2E7F else 1 for ch in text)


def write_xlsx(report: MonthlyReport, path: Path, *, people: People = None) -> Path:
    """One workbook, two sheets: 汇总表 and 发放清单, amounts as numbers, each with a 合计 row,
    column widths and an autofilter; people by name and masked id number when ``people`` is
    given."""
    from openpyxl import Workbook

    wb = Workbook()
    first = True
    tables = (("汇总表", summary_table(report, numbers=True)), ("发放清单", payout_table(report, numbers=True, people=people)))
    for title, (header, rows) in tables:
        ws = wb.active if first else wb.create_sheet()
        first = False
        ws.title = title
        money = {h for h in header if h in _TOTALLED and h not in _COUNTS}
        format_sheet(ws, header, rows, money=money, totals=_TOTALLED)
        if report.warning:
            ws.append([])
            ws.append(["注意", report.warning])
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


# ---------------------------------------------------------------------------------- subscribing
class ReportSubscriber:
    """Consumes the public messages into a :class:`ReportStore` through faststream.

    Live: a durable queue bound to the exchange with ``#`` (RabbitMQ), or a durable JetStream
    consumer on ``ledger.events.>`` (NATS); one message at a time (prefetch 1 / max ack pending
    1), acknowledged only after its transaction committed, so the log order holds and a crash
    redelivers. Catch-up (ADR 0011): :meth:`prepare` creates the live destination first, so it
    buffers from then on; the relay's replay fills the replay destination from position 0 and
    closes it with a marker; :meth:`run` consumes the replay up to the marker, then the live
    destination, where everything the replay already covered is at or below the last position.
    """

    def __init__(self, store: ReportStore, topology: Topology, name: str = "reports"):
        if topology.kind not in ("rabbit", "nats"):
            raise ValueError("the report subscriber runs on RabbitMQ or NATS JetStream")
        self.store = store
        self.topology = topology
        self.name = name
        self.outcomes: dict[str, int] = defaultdict(int)

    # -- destinations -------------------------------------------------------------------
    def _broker(self, replay: bool) -> tuple[Any, asyncio.Event]:
        t = self.topology
        if t.kind == "rabbit":
            from faststream.rabbit import RabbitBroker

            broker = RabbitBroker(t.url, client_properties={"connection_name": f"ledger-reports:{self.name}"}, reconnect_interval=0.5, log_level=logging.DEBUG)
        else:
            from faststream.nats import NatsBroker

            broker = NatsBroker(t.url, name=f"ledger-reports:{self.name}", connect_timeout=2, reconnect_time_wait=0.5, max_reconnect_attempts=-1, log_level=logging.DEBUG)
        return broker, self.attach(broker, replay=replay)

    def attach(self, broker: Any, *, replay: bool = False) -> asyncio.Event:
        """Register the subscriber on ``broker`` (live or replay destination); the returned event
        is set when the replay's marker arrives."""
        done = asyncio.Event()
        t = self.topology

        async def handle(body: Any) -> None:
            outcome = await asyncio.to_thread(self.store.apply, body)
            self.outcomes[outcome] += 1
            if outcome == "replay_completed":
                done.set()

        if t.kind == "rabbit":
            from faststream import AckPolicy
            from faststream.rabbit import Channel, ExchangeType, RabbitExchange, RabbitQueue

            channel = Channel(prefetch_count=1)
            if replay:
                broker.subscriber(RabbitQueue(t.replay_queue(self.name), durable=True), channel=channel, ack_policy=AckPolicy.NACK_ON_ERROR)(handle)
            else:
                exchange = RabbitExchange(t.exchange, type=ExchangeType.TOPIC, durable=True)
                broker.subscriber(RabbitQueue(self.name, durable=True, routing_key="#"), exchange, channel=channel, ack_policy=AckPolicy.NACK_ON_ERROR)(handle)
        else:
            from faststream import AckPolicy
            from faststream.nats import ConsumerConfig, DeliverPolicy, JStream, PullSub

            if replay:
                stream, subject, durable = t.replay_stream(self.name), t.replay_subject(self.name), f"{safe_name(self.name)}-replay"
            else:
                stream, subject, durable = t.stream, t.subject(">"), safe_name(self.name)
            broker.subscriber(
                subject,
                stream=JStream(stream, declare=False),
                durable=durable,
                pull_sub=PullSub(batch_size=1, timeout=1.0),
                deliver_policy=DeliverPolicy.ALL if replay else DeliverPolicy.NEW,
                config=ConsumerConfig(max_ack_pending=1, ack_wait=ACK_WAIT_S),
                ack_policy=AckPolicy.NACK_ON_ERROR,
            )(handle)
        return done

    async def prepare(self) -> None:
        """Create the live destination (and the replay destination) before any replay starts."""
        t = self.topology
        if t.kind == "rabbit":
            from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

            broker = RabbitBroker(t.url, log_level=logging.DEBUG)
            async with broker:
                await broker.connect()
                ex = await broker.declare_exchange(RabbitExchange(t.exchange, type=ExchangeType.TOPIC, durable=True))
                q = await broker.declare_queue(RabbitQueue(self.name, durable=True))
                await q.bind(ex, routing_key="#")
                await broker.declare_queue(RabbitQueue(t.replay_queue(self.name), durable=True))
        else:
            from faststream.nats import NatsBroker
            from nats.js.api import ConsumerConfig, DeliverPolicy
            from nats.js.errors import NotFoundError

            broker = NatsBroker(t.url, log_level=logging.DEBUG)
            async with broker:
                await broker.connect()
                await ensure_stream(broker, t.stream, [t.subject(">")])
                await ensure_stream(broker, t.replay_stream(self.name), [t.replay_subject(self.name)])
                js = broker.connection.jetstream()
                # The durable live consumer starts at the stream's end *now*: it buffers from here.
                try:
                    await js.consumer_info(t.stream, safe_name(self.name))
                except NotFoundError:
                    await js.add_consumer(t.stream, ConsumerConfig(durable_name=safe_name(self.name), deliver_policy=DeliverPolicy.NEW, filter_subject=t.subject(">"), max_ack_pending=1, ack_wait=ACK_WAIT_S))

    async def run(self, *, catch_up: bool = False, stop: threading.Event | None = None) -> None:
        """Consume the replay first (``catch_up``) until its marker, then the live destination
        until ``stop`` is set."""
        stop = stop or threading.Event()
        if catch_up and not stop.is_set():
            broker, done = self._broker(replay=True)
            async with broker:
                await broker.start()
                while not done.is_set() and not stop.is_set():
                    await asyncio.sleep(0.05)
        if stop.is_set():
            return
        broker, _ = self._broker(replay=False)
        async with broker:
            await broker.start()
            while not stop.is_set():
                await asyncio.sleep(0.05)
