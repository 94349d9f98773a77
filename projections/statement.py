"""The recipient statement: every expense, decision, payout and recovery of a person, in the order
the ledger recorded them (RULES.md §10).

``proj_statement`` has one row per item (an event can give several: one per expense decided or
paid, one per case a recovery went to), keyed by (recipient, notification id, item). ``amount``
is the item's money (the receipt's total, the aid due, the amount paid or recovered); ``detail``
the rest as JSON (scheme and fund splits, codes and R-ids, triggers). ``proj_statement_claim``
maps claims to their recipient, for the claim events.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Column, Integer, String, Table, Text, select
from sqlalchemy.engine import Connection

from ledger.aggregates import Claim, Recipient
from ledger.values import CST
from projections.common import Item, Projection, Store, insert_rows, dumps, fen, loads, metadata, utc, yuan_str

statement = Table(
    "proj_statement",
    metadata,
    Column("recipient", String(36), primary_key=True),
    Column("position", BigInteger, primary_key=True),
    Column("item", Integer, primary_key=True),
    Column("kind", String(24), nullable=False),
    Column("recorded_at", String(40), nullable=False),
    Column("expense_id", String(80), nullable=True),
    Column("claim_id", String(36), nullable=True),
    Column("amount_fen", BigInteger, nullable=True),
    Column("detail", Text, nullable=False),
)

statement_claim = Table(
    "proj_statement_claim",
    metadata,
    Column("claim_id", String(36), primary_key=True),
    Column("recipient", String(36), nullable=False),
)


def _money(d: dict[str, Any] | None) -> dict[str, str]:
    return {k: str(v) for k, v in sorted((d or {}).items())}


class Statement(Projection):
    name = "statement"
    version = 1
    tables = (statement, statement_claim)
    events = (
        Recipient.Enrolled,
        Recipient.InsuranceEnrolmentStarted,
        Recipient.ExpenseRecorded,
        Recipient.InsuranceSettled,
        Recipient.DuplicateAttempted,
        Recipient.AidDecided,
        Recipient.AidReassessed,
        Recipient.SuspensionStarted,
        Recipient.SuspensionLifted,
        Recipient.SuspensionEnded,
        Recipient.SocialHelpGranted,
        Recipient.EnrolmentSubsidised,
        Recipient.AidPaid,
        Recipient.ClearingCaseOpened,
        Recipient.SupplementaryPayoutDue,
        Recipient.RepaymentReceived,
        Recipient.WriteOffApproved,
        Claim.Lodged,
        Claim.Rejected,
    )

    def apply(self, conn: Connection, items: Sequence[Item]) -> None:
        claims = Store(conn, statement_claim)
        claims.fetch("claim_id", {str(e.originator_id) for _, e in items if isinstance(e, Claim.Rejected)})
        rows: list[dict[str, Any]] = []
        for position, e in items:
            at = utc(e.timestamp)
            n = 0

            def add(rid: str, kind: str, amount: Any = None, expense: str | None = None, claim: str | None = None, **detail: Any) -> None:
                nonlocal n
                n += 1
                rows.append(
                    {
                        "recipient": rid,
                        "position": position,
                        "item": n,
                        "kind": kind,
                        "recorded_at": at,
                        "expense_id": expense,
                        "claim_id": claim,
                        "amount_fen": None if amount is None else fen(Decimal(str(amount))),
                        "detail": dumps(detail),
                    }
                )

            if isinstance(e, Claim.Lodged):
                claims.put({"claim_id": str(e.originator_id), "recipient": e.recipient_id})
                add(e.recipient_id, "claim_lodged", None, None, str(e.originator_id), channel=e.channel, expenses=e.expense_ids, handler=e.handler, street=e.street, proxy=bool(e.proxy_id_number))
                continue
            if isinstance(e, Claim.Rejected):
                c = claims.get(str(e.originator_id))
                if c is not None:
                    add(c["recipient"], "claim_rejected", None, e.expense_id, str(e.originator_id), code=e.code, rule=e.rule, message=e.message)
                continue
            rid = str(e.originator_id)
            if isinstance(e, Recipient.Enrolled):
                add(rid, "enrolled", street=e.street)
            elif isinstance(e, (Recipient.InsuranceEnrolmentStarted, Recipient.EnrolmentSubsidised)):
                if e.subsidy:
                    add(rid, "subsidy", e.subsidy.get("amount") or "0", scheme=e.scheme, subsidy={k: v for k, v in e.subsidy.items() if k != "amount"}, rule="R-INS-2")
            elif isinstance(e, Recipient.ExpenseRecorded):
                add(
                    rid, "expense_recorded", e.total, e.expense_id,
                    visit_type=e.visit_type, facility=e.facility, service_date=e.service_date, invoice_date=e.invoice_date,
                    invoice_no=e.invoice_no, in_scope=str(e.in_scope), basic_insurance_paid=str(e.basic_insurance_paid),
                    duplicate_of=e.duplicate_of, source=e.source,
                )
            elif isinstance(e, Recipient.InsuranceSettled):
                add(rid, "insurance_settled", e.amount, e.expense_id, scheme=e.scheme)
            elif isinstance(e, Recipient.DuplicateAttempted):
                add(rid, "duplicate_attempted", None, e.expense_id, e.claim_id, channel=e.channel, aided_as=e.aided_as, reason=e.reason)
            elif isinstance(e, Recipient.AidDecided):
                for s in e.decisions:
                    add(
                        rid, "aid_decided", s["total"], s["expense"], e.claim_id,
                        channel=e.channel, granted=s["granted"], category=s.get("category"), self_pay=s.get("self_pay"),
                        by_scheme=_money(s.get("by_scheme")), by_fund=_money(s.get("by_fund")),
                    )
            elif isinstance(e, Recipient.AidReassessed):
                for r in e.results:
                    due, prev = r["due"], r.get("previous") or {}
                    add(
                        rid, "aid_reassessed", due["total"], r["expense"],
                        trigger=e.trigger, granted=due["granted"], code=due.get("code"), rule=due.get("rule"),
                        previous_total=prev.get("total"), by_scheme=_money(due.get("by_scheme")), by_fund=_money(due.get("by_fund")),
                    )
            elif isinstance(e, Recipient.SuspensionStarted):
                add(rid, "suspension_started", None, e.expense_id, scheme=e.scheme, valid_from=e.valid_from, reason=e.reason)
            elif isinstance(e, Recipient.SuspensionLifted):
                add(rid, "suspension_lifted", scheme=e.scheme, lifted_on=e.lifted_on, reviewer=e.reviewer)
            elif isinstance(e, Recipient.SuspensionEnded):
                add(rid, "suspension_ended", None, e.expense_id, scheme=e.scheme, ended_on=e.ended_on, reason=e.reason)
            elif isinstance(e, Recipient.SocialHelpGranted):
                add(rid, "social_help", e.amount, organisation=e.organisation, period=e.period, rule="R-4L-5")
            elif isinstance(e, Recipient.AidPaid):
                for p in e.payments:
                    add(rid, "aid_paid", p["total"], p["expense"], e.claim_id, channel=p.get("channel") or e.channel, by_scheme=_money(p["by_scheme"]), by_fund=_money(p["by_fund"]))
                for o in e.offsets:
                    add(rid, "offset", o["amount"], None, e.claim_id, case=o["case"], by_fund=_money(o["by_fund"]), rule="R-CLR-3")
            elif isinstance(e, Recipient.ClearingCaseOpened):
                add(rid, "case_opened", e.amount, e.expense_id, case=e.case_id, trigger=e.trigger, by_fund=_money(e.by_fund), rule="R-CLR-2")
            elif isinstance(e, Recipient.SupplementaryPayoutDue):
                add(rid, "supplementary_due", e.amount, e.expense_id, supplementary=e.supplementary_id, trigger=e.trigger, by_fund=_money(e.by_fund), rule="R-CLR-2")
            elif isinstance(e, Recipient.RepaymentReceived):
                for a in e.allocations:
                    add(rid, "repayment", a["amount"], case=a["case"], by_fund=_money(a["by_fund"]), rule="R-CLR-3")
            elif isinstance(e, Recipient.WriteOffApproved):
                for a in e.allocations:
                    add(rid, "write_off", a["amount"], case=a["case"], by_fund=_money(a["by_fund"]), officer=e.officer, approver=e.approver, reason=e.reason, rule="R-CLR-3")
        claims.flush()
        insert_rows(conn, statement, rows)


def for_recipient(conn: Connection, recipient: str) -> list[dict[str, Any]]:
    """A person's statement, in recorded order."""
    q = select(statement).where(statement.c.recipient == recipient).order_by(statement.c.position, statement.c.item)
    return [
        {
            "position": r.position,
            "kind": r.kind,
            "recorded_at": datetime.fromisoformat(r.recorded_at.replace("Z", "+00:00")).astimezone(CST).isoformat(),  # stored UTC, shown +08:00
            "expense": r.expense_id,
            "claim": r.claim_id,
            "amount": yuan_str(r.amount_fen),
            **loads(r.detail),
        }
        for r in conn.execute(q)
    ]


# ---------------------------------------------------------------------------------- export
#: What each kind of line is called on an exported statement.
KIND_ZH = {
    "enrolled": "登记", "subsidy": "参保资助", "expense_recorded": "医疗费用", "insurance_settled": "保险结算",
    "duplicate_attempted": "重复申请", "claim_lodged": "提出申请", "claim_rejected": "申请驳回", "aid_decided": "救助核定",
    "aid_reassessed": "重新核定", "suspension_started": "暂停", "suspension_lifted": "恢复", "suspension_ended": "暂停结束",
    "social_help": "社会组织帮扶", "aid_paid": "救助发放", "offset": "清算抵扣", "case_opened": "清算应退",
    "supplementary_due": "补发应付", "repayment": "退款", "write_off": "核销",
}
EXPORT_HEADER = ["记录时间", "类型", "费用编号", "申请编号", "金额", "说明"]


def local_time(recorded_at: str) -> str:
    """A stored (UTC) recorded time as people read it: +08:00 (Asia/Shanghai), to the second."""
    return datetime.fromisoformat(recorded_at.replace("Z", "+00:00")).astimezone(CST).isoformat(timespec="seconds")


def _note(row: dict[str, Any]) -> str:
    keys = ("channel", "scheme", "trigger", "case", "code", "rule", "officer", "approver", "reason", "organisation")
    return "; ".join(f"{k}={row[k]}" for k in keys if row.get(k) not in (None, "", False))


def export_table(rows: list[dict[str, Any]], handles: dict[str, str] | None = None) -> tuple[list[str], list[list[Any]], list[tuple[str, Decimal, int]]]:
    """A statement (``for_recipient`` rows) as a table for CSV or XLSX: +08:00 times, the whole
    expense handle (``handles``: expense id → handle, else the expense id), amounts as Decimals;
    and the totals per kind of line (label, amount, lines), in first-seen order."""
    handles = handles or {}
    table: list[list[Any]] = []
    totals: dict[str, list[Any]] = {}
    for r in rows:
        amount = Decimal(r["amount"]) if r.get("amount") is not None else None
        label = KIND_ZH.get(r["kind"], r["kind"])
        table.append([local_time(r["recorded_at"]), label, handles.get(r["expense"] or "", r["expense"] or ""), r.get("claim") or "", amount, _note(r)])
        if amount is not None:
            t = totals.setdefault(label, [Decimal("0.00"), 0])
            t[0] += amount
            t[1] += 1
    return EXPORT_HEADER, table, [(k, v[0], v[1]) for k, v in totals.items()]
