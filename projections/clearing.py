"""Clearing cases, population-wide (R-CLR-2, R-CLR-3 [000 第七条]; RULES.md §7), for
``GET /clearing/cases`` without a replay of every recipient per request (ADR 0008).

``proj_clearing_case`` has one row per case: what ``ClearingCaseOpened`` opened (amount, per fund,
trigger, the expense), what was recovered from it (``RepaymentReceived`` and the offsets of an
``AidPaid``, R-CLR-3) and written off (``WriteOffApproved``), and the balance per fund, signed the
way the Recipient aggregate keeps it (a fund whose balance reaches zero drops out).
``proj_clearing_recipient`` keeps each recipient's enrolment position (the population's order in
the old answer) and ``proj_clearing_expense`` the handle of each expense that has one.

No personal data is stored here: the name and street of a case's recipient are read at query time
from their ``Enrolled`` event through the application's mapper (so an erasure shows as erased, ADR
0015), one small read per recipient listed, never a replay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, String, Table, Text, func, select, text
from sqlalchemy.engine import Connection

from ledger.aggregates import Recipient
from ledger.money import fmt
from projections.common import Item, Projection, Store, dumps, fen, insert_rows, loads, metadata, yuan

clearing_case = Table(
    "proj_clearing_case",
    metadata,
    Column("case_id", String(120), primary_key=True),
    Column("recipient", String(36), nullable=False, index=True),
    Column("expense_id", String(80), nullable=False),
    Column("trigger", String(24), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("by_fund", Text, nullable=False),  # JSON {fund: fen}, as opened
    Column("balance_by_fund", Text, nullable=False),  # JSON {fund: fen}, zero funds dropped
    Column("recovered_fen", BigInteger, nullable=False),  # repayments and offsets
    Column("written_off_fen", BigInteger, nullable=False),
    Column("written_off", Boolean, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("opened_at", String(40), nullable=False),  # the event's timestamp, ISO 8601 as the aggregate shows it
    Column("position", BigInteger, nullable=False),
)

clearing_recipient = Table(
    "proj_clearing_recipient",
    metadata,
    Column("recipient", String(36), primary_key=True),
    Column("position", BigInteger, nullable=False),  # the Enrolled notification: enrolment order
)

clearing_expense = Table(
    "proj_clearing_expense",
    metadata,
    Column("expense_id", String(80), primary_key=True),
    Column("handle", String(200), nullable=False),
)

#: The notification of the last change to the case rows (one row, the view's). Equal stamps mean equal
#: rows (a case's rows are a function of the log up to its last change), so a reader may keep what
#: it rendered from the rows for as long as the stamp stays where it was (``GET /clearing/cases``).
clearing_stamp = Table(
    "proj_clearing_stamp",
    metadata,
    Column("name", String(120), primary_key=True),
    Column("changed", BigInteger, nullable=False),
)


def _status(balance_fen: int, written_off: bool) -> str:
    """As ``CaseState.status``: open while anything is owed (R-CLR-3), else written off or settled."""
    if balance_fen > 0:
        return "open"
    return "written_off" if written_off else "settled"


class ClearingCases(Projection):
    name = "clearing_cases"
    version = 1
    tables = (clearing_recipient, clearing_expense, clearing_case, clearing_stamp)
    events = (
        Recipient.Enrolled,
        Recipient.ExpenseRecorded,
        Recipient.ClearingCaseOpened,
        Recipient.AidPaid,
        Recipient.RepaymentReceived,
        Recipient.WriteOffApproved,
    )

    def apply(self, conn: Connection, items: Sequence[Item]) -> None:
        cases = Store(conn, clearing_case)
        wanted: set[str] = set()
        for _, e in items:
            if isinstance(e, Recipient.AidPaid):
                wanted.update(o["case"] for o in e.offsets)
            elif isinstance(e, (Recipient.RepaymentReceived, Recipient.WriteOffApproved)):
                wanted.update(a["case"] for a in e.allocations)
        cases.fetch("case_id", wanted)
        people: list[dict[str, Any]] = []
        handles: list[dict[str, Any]] = []
        changed = 0  # the last notification that changed a case row (an enrolment or an expense's
        # handle never does: no case can name a recipient or an expense before they are recorded)
        for position, e in items:
            rid = str(e.originator_id)
            if isinstance(e, Recipient.Enrolled):
                people.append({"recipient": rid, "position": position})
            elif isinstance(e, Recipient.ExpenseRecorded):
                if e.handle is not None:
                    handles.append({"expense_id": e.expense_id, "handle": e.handle})
            elif isinstance(e, Recipient.ClearingCaseOpened):
                # R-CLR-2 [000 第七条]: the balance is the whole per-fund difference, signed.
                by_fund = {k: fen(v) for k, v in e.by_fund.items()}
                balance = {k: v for k, v in by_fund.items() if v != 0}
                cases.put(
                    {
                        "case_id": e.case_id, "recipient": rid, "expense_id": e.expense_id, "trigger": e.trigger,
                        "amount_fen": fen(e.amount), "by_fund": dumps(by_fund), "balance_by_fund": dumps(balance),
                        "recovered_fen": 0, "written_off_fen": 0, "written_off": False,
                        "status": _status(sum(balance.values()), False), "opened_at": e.timestamp.isoformat(), "position": position,
                    }
                )
                changed = position
            elif isinstance(e, Recipient.AidPaid):
                changed = position if _recover(cases, e.offsets, "offset") else changed
            elif isinstance(e, Recipient.RepaymentReceived):
                changed = position if _recover(cases, e.allocations, "repayment") else changed
            elif isinstance(e, Recipient.WriteOffApproved):
                changed = position if _recover(cases, e.allocations, "write_off") else changed
        insert_rows(conn, clearing_recipient, people)
        insert_rows(conn, clearing_expense, handles)
        cases.flush()
        if changed:
            _stamp(conn, self.name, changed)


#: Raised, never lowered: the partitions of a parallel rebuild share the row (SQLite and PostgreSQL
#: both take ``ON CONFLICT … DO UPDATE``; plain text, so it is not compiled again each time).
_STAMP = text(
    f"INSERT INTO {clearing_stamp.name} (name, changed) VALUES (:name, :changed) ON CONFLICT (name) DO UPDATE "
    f"SET changed = CASE WHEN {clearing_stamp.name}.changed < excluded.changed THEN excluded.changed ELSE {clearing_stamp.name}.changed END"
)


def _stamp(conn: Connection, name: str, changed: int) -> None:
    """The view's row of ``proj_clearing_stamp`` moved up to ``changed``, in the transaction of the rows."""
    conn.execute(_STAMP, {"name": name, "changed": changed})


def stamp(conn: Connection) -> int | None:
    """Where the case rows last changed (None: not known, e.g. a view built before the stamp)."""
    value = conn.execute(select(func.max(clearing_stamp.c.changed))).scalar_one_or_none()
    return None if value is None else int(value)


def _recover(cases: Store, allocations: Iterable[dict[str, Any]], kind: str) -> bool:
    """R-CLR-3 [000 第七条]: a recovery lowers the case's balance per fund; a write-off recovers
    nothing but marks the case written off. Whether a row changed."""
    changed = False
    for a in allocations:
        row = cases.get(a["case"])
        if row is None:  # a case opened before a skipped event: the fund check shows it
            continue
        changed = True
        balance = loads(row["balance_by_fund"])
        for f, v in a["by_fund"].items():
            balance[f] = balance.get(f, 0) - fen(v)
        balance = {k: v for k, v in balance.items() if v != 0}
        amount = fen(a["amount"])
        written_off = row["written_off"] or kind == "write_off"
        row.update(
            balance_by_fund=dumps(balance),
            recovered_fen=row["recovered_fen"] + (amount if kind != "write_off" else 0),
            written_off_fen=row["written_off_fen"] + (amount if kind == "write_off" else 0),
            written_off=written_off,
            status=_status(sum(balance.values()), written_off),
        )
    return changed


# --------------------------------------------------------------------------- reading


def _money(d: dict[str, int]) -> dict[str, str | None]:
    return {k: fmt(yuan(v)) for k, v in sorted(d.items())}


def case_rows(conn: Connection, status: str | None = None) -> list[Any]:
    """The stored rows behind ``GET /clearing/cases`` (each a plain tuple of its columns, the
    recipient's enrolment position and the expense's handle), in the answer's order: population
    in enrolment order, each recipient's cases oldest first (as ``commands.clearing_views``)."""
    q = (
        select(clearing_case, clearing_recipient.c.position.label("enrolled"), clearing_expense.c.handle)
        .join(clearing_recipient, clearing_recipient.c.recipient == clearing_case.c.recipient, isouter=True)
        .join(clearing_expense, clearing_expense.c.expense_id == clearing_case.c.expense_id, isouter=True)
    )
    if status is not None:
        q = q.where(clearing_case.c.status == status)
    rows = list(conn.execute(q))
    rows.sort(key=lambda r: (r.enrolled if r.enrolled is not None else r.position, r.recipient, datetime.fromisoformat(r.opened_at), r.case_id))
    return rows


def case_dict(r: Any) -> dict[str, Any]:
    """One row of :func:`case_rows` as the answer shows it (without name and street)."""
    balance = loads(r.balance_by_fund)
    return {
        "case": r.case_id,
        "recipient": r.recipient,
        "expense": r.expense_id,
        "handle": r.handle,
        "trigger": r.trigger,
        "amount": fmt(yuan(r.amount_fen)),
        "recovered": fmt(yuan(r.recovered_fen)),
        "written_off": fmt(yuan(r.written_off_fen)),
        "balance": fmt(yuan(sum(balance.values()))),
        "status": r.status,
        "by_fund": _money(loads(r.by_fund)),
        "balance_by_fund": _money(balance),
        "opened_at": r.opened_at,
    }


def cases(conn: Connection, status: str | None = None) -> list[dict[str, Any]]:
    """The rows of ``GET /clearing/cases`` without name and street (the caller adds them from the
    recipients' ``Enrolled`` events)."""
    return [case_dict(r) for r in case_rows(conn, status)]
