"""The duplicate-aid index: no aid twice for the same cost (R-CLR-1(b), R-PH-7, R-4L-6
[000 第七条; 002 4.5]).

``proj_duplicate`` has one row per finding, with the notification ids of the events that matched
(``evidence``) and why (``reason``):

- ``receipt``: an expense recorded with the facility code and invoice number of an earlier
  expense of the same recipient (the same receipt, R-CLR-1(b): compared after NFKC, case folding
  and trimming; a receipt without a facility code by its invoice number alone);
- ``receipt_other_recipient``: the same receipt recorded earlier for another recipient;
- ``aided_twice``: an expense whose receipt (or the expense itself) already had aid decided,
  through any channel (one-stop, post-hoc, auto);
- ``attempted``: a ``DuplicateAttempted`` event (a claim or one-stop on an aided receipt, R-PH-7);
- ``claim_rejected``: a claim rejected with ``DUPLICATE``.

``proj_dup_expense`` and ``proj_dup_claim`` are its working tables: every expense with its receipt
and the decisions on it, every claim with its recipient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Column, String, Table, Text, select
from sqlalchemy.engine import Connection

from ledger.aggregates import Claim, Recipient
from ledger.values import receipt_identity
from projections.common import Item, Projection, Store, insert_rows, dumps, loads, metadata, utc

dup_expense = Table(
    "proj_dup_expense",
    metadata,
    Column("expense_id", String(80), primary_key=True),
    Column("recipient", String(36), nullable=False),
    Column("facility_code", String(80), nullable=True),
    Column("invoice_no", String(200), nullable=False),
    Column("receipt", String(420), nullable=False, index=True),  # receipt_identity, joined by U+001F
    Column("position", BigInteger, nullable=False),
    Column("decisions", Text, nullable=False),  # JSON [[notification id, channel, claim], …]
)

dup_claim = Table(
    "proj_dup_claim",
    metadata,
    Column("claim_id", String(36), primary_key=True),
    Column("recipient", String(36), nullable=False),
    Column("channel", String(20), nullable=False),
    Column("position", BigInteger, nullable=False),
)

duplicate = Table(
    "proj_duplicate",
    metadata,
    Column("position", BigInteger, primary_key=True),  # the event that revealed it
    Column("kind", String(32), primary_key=True),
    Column("subject", String(80), primary_key=True),  # the later expense, or the claim
    Column("matched", String(80), primary_key=True),  # the expense it matched ('' if none)
    Column("recipient", String(36), nullable=False),
    Column("matched_recipient", String(36), nullable=True),
    Column("facility_code", String(80), nullable=True),
    Column("invoice_no", String(80), nullable=True),
    Column("channel", String(20), nullable=True),
    Column("evidence", Text, nullable=False),  # JSON list of notification ids
    Column("reason", Text, nullable=False),
    Column("recorded_at", String(40), nullable=False),
)

_RULE = "R-CLR-1(b), R-PH-7 [000 第七条; 002 4.5]"


class Duplicates(Projection):
    name = "duplicates"
    version = 2  # 2: receipts compared after normalising, ledger-wide, codeless ones by number
    tables = (dup_expense, dup_claim, duplicate)
    partitionable = False  # receipts match across recipients, in log order
    events = (Recipient.ExpenseRecorded, Recipient.AidDecided, Recipient.DuplicateAttempted, Claim.Lodged, Claim.Rejected)

    def apply(self, conn: Connection, items: Sequence[Item]) -> None:
        exp = Store(conn, dup_expense, index=("receipt",))
        claims = Store(conn, dup_claim)
        ids: set[str] = set()
        for _, e in items:
            if isinstance(e, Recipient.AidDecided):
                ids.update(d["expense"] for d in e.decisions)
            elif isinstance(e, Recipient.DuplicateAttempted):
                ids.update(x for x in (e.expense_id, e.aided_as) if x)
            elif isinstance(e, Claim.Rejected) and e.expense_id:
                ids.add(e.expense_id)
        exp.fetch("expense_id", ids)
        receipts = {r["receipt"] for r in exp.rows.values()}
        receipts |= {_receipt(e.facility.get("code"), e.invoice_no) for _, e in items if isinstance(e, Recipient.ExpenseRecorded)}
        exp.fetch("receipt", receipts)
        claims.fetch(
            "claim_id",
            {str(e.originator_id) for _, e in items if isinstance(e, Claim.Rejected)}
            | {e.claim_id for _, e in items if isinstance(e, Recipient.DuplicateAttempted) and e.claim_id},
        )
        found: list[dict[str, Any]] = []

        def same_receipt(receipt: str, but: str) -> list[dict[str, Any]]:
            rows = [r for r in exp.where(receipt=receipt) if r["expense_id"] != but]
            return sorted(rows, key=lambda r: r["position"])

        for position, e in items:
            at = utc(e.timestamp)
            if isinstance(e, Recipient.ExpenseRecorded):
                rid, code = str(e.originator_id), e.facility.get("code")
                receipt = _receipt(code, e.invoice_no)
                earlier = same_receipt(receipt, e.expense_id)
                own = next((r for r in earlier if r["recipient"] == rid), None)
                other = next((r for r in earlier if r["recipient"] != rid), None)
                for kind, match, whose in (("receipt", own, "the same recipient"), ("receipt_other_recipient", other, "another recipient")):
                    if match is None:
                        continue
                    found.append(
                        _finding(
                            position, kind, e.expense_id, match["expense_id"], rid, match["recipient"], code, e.invoice_no, None,
                            [match["position"], position],
                            f"same facility code {code} and invoice number {e.invoice_no} as expense {match['expense_id']}, "
                            f"recorded earlier for {whose}: the same receipt ({_RULE})",
                            at,
                        )
                    )
                exp.put(
                    {
                        "expense_id": e.expense_id,
                        "recipient": rid,
                        "facility_code": code,
                        "invoice_no": e.invoice_no,
                        "receipt": receipt,
                        "position": position,
                        "decisions": "[]",
                    }
                )
            elif isinstance(e, Recipient.AidDecided):
                rid = str(e.originator_id)
                for d in e.decisions:
                    x = exp.get(d["expense"])
                    if x is None:  # an expense is always recorded before it is decided
                        continue
                    before = loads(x["decisions"])
                    if before:
                        found.append(
                            _finding(
                                position, "aided_twice", x["expense_id"], x["expense_id"], rid, rid, x["facility_code"], x["invoice_no"], e.channel,
                                [before[0][0], position],
                                f"expense {x['expense_id']} already had aid decided through channel {before[0][1]}; "
                                f"decided again through channel {e.channel} ({_RULE})",
                                at,
                            )
                        )
                    aided = [r for r in same_receipt(x["receipt"], x["expense_id"]) if loads(r["decisions"])]
                    if aided:
                        first = min(aided, key=lambda r: loads(r["decisions"])[0][0])
                        fd = loads(first["decisions"])[0]
                        found.append(
                            _finding(
                                position, "aided_twice", x["expense_id"], first["expense_id"], rid, first["recipient"], x["facility_code"], x["invoice_no"], e.channel,
                                [first["position"], fd[0], x["position"], position],
                                f"receipt {x['facility_code'] or ''}/{x['invoice_no']} was aided as {first['expense_id']} through channel "
                                f"{fd[1]} and again as {x['expense_id']} through channel {e.channel} ({_RULE})",
                                at,
                            )
                        )
                    x["decisions"] = dumps(before + [[position, e.channel, e.claim_id]])
            elif isinstance(e, Recipient.DuplicateAttempted):
                rid = str(e.originator_id)
                x = exp.get(e.expense_id)
                aided = exp.get(e.aided_as) if e.aided_as else None
                evidence = [position]
                if x is not None:
                    evidence.append(x["position"])
                if aided is not None:
                    evidence += [aided["position"]] + [d[0] for d in loads(aided["decisions"])]
                claim = claims.get(e.claim_id) if e.claim_id else None
                if claim is not None:
                    evidence.append(claim["position"])
                found.append(
                    _finding(
                        position, "attempted", e.expense_id, e.aided_as or "", rid, aided["recipient"] if aided else None,
                        x["facility_code"] if x else None, x["invoice_no"] if x else None, e.channel, evidence, e.reason, at,
                    )
                )
            elif isinstance(e, Claim.Lodged):
                claims.put({"claim_id": str(e.originator_id), "recipient": e.recipient_id, "channel": e.channel, "position": position})
            elif isinstance(e, Claim.Rejected) and e.code == "DUPLICATE":
                claim = claims.get(str(e.originator_id))
                x = exp.get(e.expense_id) if e.expense_id else None
                evidence = [position] + ([claim["position"]] if claim else []) + ([x["position"]] if x else [])
                found.append(
                    _finding(
                        position, "claim_rejected", str(e.originator_id), e.expense_id or "", claim["recipient"] if claim else "",
                        x["recipient"] if x else None, x["facility_code"] if x else None, x["invoice_no"] if x else None,
                        claim["channel"] if claim else None, evidence, f"{e.code} ({e.rule}): {e.message}", at,
                    )
                )
        exp.flush()
        claims.flush()
        insert_rows(conn, duplicate, found)


def _finding(position, kind, subject, matched, recipient, matched_recipient, code, invoice_no, channel, evidence, reason, at) -> dict[str, Any]:  # noqa: ANN001
    return {
        "position": position,
        "kind": kind,
        "subject": subject,
        "matched": matched,
        "recipient": recipient,
        "matched_recipient": matched_recipient,
        "facility_code": code,
        "invoice_no": invoice_no,
        "channel": channel,
        "evidence": dumps(sorted(set(evidence))),
        "reason": reason,
        "recorded_at": at,
    }


# --------------------------------------------------------------------------- reading


def index(conn: Connection, kind: str | None = None) -> list[dict[str, Any]]:
    q = select(duplicate).order_by(duplicate.c.position, duplicate.c.kind, duplicate.c.subject, duplicate.c.matched)
    if kind is not None:
        q = q.where(duplicate.c.kind == kind)
    return [{**dict(r._mapping), "evidence": loads(r.evidence)} for r in conn.execute(q)]


def receipt_duplicates(conn: Connection) -> list[dict[str, str]]:
    """SCENARIOS.md ``duplicates``: each expense recorded again on a receipt already recorded, for
    the same or another recipient (a receipt is one in the whole ledger, R-CLR-1(b)), with the
    first expense recorded on it."""
    first: dict[str, tuple[int, str]] = {}  # in the order the duplicates were recorded
    for r in index(conn):
        if r["kind"] in ("receipt", "receipt_other_recipient"):
            at = min(r["evidence"])  # the earliest match is the receipt's first recording
            if r["subject"] not in first or at < first[r["subject"]][0]:
                first[r["subject"]] = (at, r["matched"])
    return [{"expense": subject, "duplicate_of": matched} for subject, (_, matched) in first.items()]


def _receipt(code: str | None, invoice_no: str) -> str:
    return "\x1f".join(receipt_identity(code, invoice_no))
