"""Changning 四医联动 by recipient × service month, and the suspensions (R-4L-4, R-4L-3).

``proj_community_month``: for each recipient and service month, the 四医联动 aid (city part +
district top-up, R-4L-3) of the community-health-centre outpatient expenses the latest decision
counted against the monthly one-stop ceiling, how many such visits, and the ceiling and visit
allowance that decision applied (R-4L-4 [000 第四条(三)]). It follows the latest ``AidDecided`` /
``AidReassessed`` summary of each expense, so a reassessment moves the figures.

``proj_suspension``: every suspension of 四医联动 eligibility (``SuspensionStarted``), from the
service date of the expense that started it, and the district review that lifted it
(``SuspensionLifted``); a row with no ``lifted_on`` is a current suspension.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Column, Date, Integer, String, Table, Text, select
from sqlalchemy.engine import Connection

from ledger.aggregates import Recipient
from ledger.money import ZERO
from ledger.values import Scheme
from projections.common import Item, Parsed, Projection, Store, dumps, fen, metadata, utc, yuan_str

FOUR_LINKAGE = Scheme.FOUR_LINKAGE.value

community_state = Table(
    "proj_community_recipient",
    metadata,
    Column("recipient", String(36), primary_key=True),
    Column("state", Text, nullable=False),  # per expense: month, aid, visit number, limits applied
)

community_month = Table(
    "proj_community_month",
    metadata,
    Column("recipient", String(36), primary_key=True),
    Column("month", String(7), primary_key=True),  # service month YYYY-MM
    Column("aid_fen", BigInteger, nullable=False),
    Column("visits", Integer, nullable=False),
    Column("ceiling_fen", BigInteger, nullable=True),
    Column("visits_allowed", Integer, nullable=True),
)

suspension = Table(
    "proj_suspension",
    metadata,
    Column("recipient", String(36), primary_key=True),
    Column("number", Integer, primary_key=True),  # 1, 2, … per recipient
    Column("scheme", String(40), nullable=False),
    Column("valid_from", Date, nullable=False),
    Column("expense_id", String(80), nullable=False),
    Column("reason", Text, nullable=True),
    Column("started_position", BigInteger, nullable=False),
    Column("started_at", String(40), nullable=False),
    Column("lifted_on", Date, nullable=True),
    Column("reviewer", String(80), nullable=True),
    Column("lifted_position", BigInteger, nullable=True),
)


def _monthly(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The 四医联动 monthly figures of a decision, if it counted the expense (R-4L-4)."""
    if not summary.get("granted"):
        return None
    for entry in (summary.get("trace") or {}).get("schemes", []):
        if isinstance(entry, dict) and entry.get("scheme") == FOUR_LINKAGE and entry.get("applied") and entry.get("monthly"):
            m = entry["monthly"]
            return {
                "month": m["month"],
                "aid": str(Decimal(entry.get("city_part") or "0") + Decimal(entry.get("top_up") or "0")),
                "visit": int(m["visit"]),
                "ceiling": str((m.get("ceiling") or {}).get("value")) if (m.get("ceiling") or {}).get("value") is not None else None,
                "visits_allowed": (m.get("visits_allowed") or {}).get("value"),
            }
    return None


class CommunityMonths(Projection):
    name = "community"
    version = 1
    tables = (community_state, community_month, suspension)
    events = (Recipient.AidDecided, Recipient.AidReassessed, Recipient.SuspensionStarted, Recipient.SuspensionLifted, Recipient.SuspensionEnded)

    def __init__(self) -> None:
        self._parsed = Parsed()  # the recipients' working states, parsed, between batches

    def apply(self, conn: Connection, items: Sequence[Item]) -> None:
        rids = {str(e.originator_id) for _, e in items}
        states = Store(conn, community_state)
        states.fetch("recipient", rids)
        susp = Store(conn, suspension, index=("recipient",))
        susp.fetch("recipient", {str(e.originator_id) for _, e in items if isinstance(e, (Recipient.SuspensionStarted, Recipient.SuspensionLifted, Recipient.SuspensionEnded))})
        parsed: dict[str, dict[str, Any]] = {}
        touched: set[str] = set()

        def state(rid: str) -> dict[str, Any]:
            if rid not in parsed:
                row = states.get(rid)
                parsed[rid] = self._parsed.take(rid, row["state"]) if row else {"expenses": {}}
            return parsed[rid]

        for position, e in items:
            rid = str(e.originator_id)
            if isinstance(e, (Recipient.AidDecided, Recipient.AidReassessed)):
                summaries = e.decisions if isinstance(e, Recipient.AidDecided) else [r["due"] for r in e.results]
                st = state(rid)
                for s in summaries:
                    m = _monthly(s)
                    if m is None:
                        st["expenses"].pop(s["expense"], None)
                    else:
                        st["expenses"][s["expense"]] = m
                touched.add(rid)
            elif isinstance(e, Recipient.SuspensionStarted):
                number = 1 + max((r["number"] for r in susp.where(recipient=rid)), default=0)
                susp.put(
                    {
                        "recipient": rid,
                        "number": number,
                        "scheme": e.scheme,
                        "valid_from": date.fromisoformat(e.valid_from),
                        "expense_id": e.expense_id,
                        "reason": e.reason,
                        "started_position": position,
                        "started_at": utc(e.timestamp),
                        "lifted_on": None,
                        "reviewer": None,
                        "lifted_position": None,
                    }
                )
            elif isinstance(e, Recipient.SuspensionLifted):
                # R-4L-4: the district review lifts every open suspension of the scheme.
                for r in susp.where(recipient=rid, scheme=e.scheme, lifted_on=None):
                    r.update(lifted_on=date.fromisoformat(e.lifted_on), reviewer=e.reviewer, lifted_position=position)
            elif isinstance(e, Recipient.SuspensionEnded):
                # R-4L-4, R-CLR-2: a recomputation no longer supports this suspension; it ends (no reviewer).
                for r in susp.where(recipient=rid, scheme=e.scheme, lifted_on=None):
                    if r["expense_id"] == e.expense_id:
                        r.update(lifted_on=date.fromisoformat(e.ended_on), reviewer=None, lifted_position=position)
        susp.flush()
        for rid, st in parsed.items():
            text = dumps(st)
            states.put({"recipient": rid, "state": text})
            self._parsed.keep(rid, text, st)
        states.flush()
        if not touched:
            return
        out = Store(conn, community_month, index=("recipient",))
        out.fetch("recipient", touched)
        for rid in sorted(touched):
            fresh: dict[str, dict[str, Any]] = {}
            for m in parsed[rid]["expenses"].values():
                row = fresh.setdefault(
                    m["month"],
                    {"recipient": rid, "month": m["month"], "aid": ZERO, "visits": 0, "last": 0, "ceiling_fen": None, "visits_allowed": None},
                )
                row["aid"] += Decimal(m["aid"])
                row["visits"] += 1
                if m["visit"] >= row["last"]:  # the limits the month's latest visit was held to
                    row["last"] = m["visit"]
                    row["ceiling_fen"] = fen(m["ceiling"]) if m["ceiling"] is not None else None
                    row["visits_allowed"] = int(m["visits_allowed"]) if m["visits_allowed"] is not None else None
            for old in out.where(recipient=rid):
                if old["month"] not in fresh:
                    out.delete(rid, old["month"])
            for month, row in fresh.items():
                aid = row.pop("aid")
                row.pop("last")
                out.put({**row, "aid_fen": fen(aid)})
        out.flush()


# --------------------------------------------------------------------------- reading


def suspensions(conn: Connection, *, current_only: bool = False) -> list[dict[str, Any]]:
    """SCENARIOS.md ``suspensions`` rows (ledger ids; ``from`` / ``lifted`` as ISO dates)."""
    q = select(suspension).order_by(suspension.c.started_position, suspension.c.recipient, suspension.c.number)
    if current_only:
        q = q.where(suspension.c.lifted_on.is_(None))
    return [
        {
            "recipient": r.recipient,
            "scheme": r.scheme,
            "from": r.valid_from.isoformat(),
            "lifted": r.lifted_on.isoformat() if r.lifted_on else None,
            "expense": r.expense_id,
        }
        for r in conn.execute(q)
    ]


def months(conn: Connection, recipient: str | None = None) -> list[dict[str, Any]]:
    q = select(community_month).order_by(community_month.c.recipient, community_month.c.month)
    if recipient is not None:
        q = q.where(community_month.c.recipient == recipient)
    return [
        {
            "recipient": r.recipient,
            "month": r.month,
            "aid": yuan_str(r.aid_fen),
            "visits": r.visits,
            "ceiling": yuan_str(r.ceiling_fen),
            "visits_allowed": r.visits_allowed,
        }
        for r in conn.execute(q)
    ]
