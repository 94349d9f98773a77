"""Response shaping for the HTTP service: aggregate state → the documented response models.

Amounts come from ``commands.queries`` (the narrow read interface); this module only arranges
what the aggregates already hold. No rule is decided here.
"""

from __future__ import annotations

from typing import Any

from commands import queries
from commands.app import LedgerApp
from ledger.aggregates import Claim, Recipient
from ledger.money import fmt


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def expense(r: Recipient, eid: str) -> dict[str, Any]:
    acc = r.expenses[eid]
    f = acc.facts
    view = queries.expense_view(r, eid)
    return {
        **view,
        "handle": acc.handle,
        "visit_type": f.visit_type.value,
        "service_date": f.service_date.isoformat(),
        "invoice_date": f.invoice_date.isoformat(),
        "invoice_no": f.invoice_no,
        "facility": f.facility.to_dict(),
        "total": fmt(f.total),
        "in_scope": fmt(f.in_scope),
        "basic_insurance_paid": fmt(f.basic_insurance_paid),
        "claim": acc.claim_id,
    }


def statement(app: LedgerApp, r: Recipient) -> dict[str, Any]:
    return {
        "recipient": str(r.id),
        "name": r.name,
        "id_number": r.id_number,
        "street": r.street,
        "consent": r.consent,
        "version": r.version,
        "categories": [
            {"kind": c.kind, "category": c.category, "valid_from": c.valid_from.isoformat(), "valid_to": _iso(c.valid_to),
             "subtype": c.subtype, "recorded_at": c.recorded_at.isoformat()}
            for c in r.category_facts
        ],
        "insurance": [
            {"kind": i.kind, "scheme": i.scheme, "valid_from": i.valid_from.isoformat(), "valid_to": _iso(i.valid_to),
             "recorded_at": i.recorded_at.isoformat()}
            for i in r.insurance_facts
        ],
        "mutual_aid_years": sorted({y.year for y in r.mutual_aid_years}),
        "expenses": [expense(r, eid) for eid in r.expenses],
        "clearing_cases": [queries.case_view(c) for c in r.cases.values()],
        "supplementary": [queries.supplementary_view(s) for s in r.supplementary.values()],
        "suspensions": [{"scheme": s["scheme"], "from": s["from"], "expense": s.get("expense"), "lifted": s["lifted"]} for s in r.suspensions],
        "open_balance": fmt(r.open_balance()),
        "funds": {k: fmt(v) for k, v in queries.fund_movements(r).items()},
    }


def caps(app: LedgerApp, r: Recipient) -> dict[str, Any]:
    return {"recipient": str(r.id), "annual": queries.annual_rows(r, app.policy().book, app.schemes)}


def recipient_clearing(r: Recipient) -> dict[str, Any]:
    return {
        "recipient": str(r.id),
        "open_balance": fmt(r.open_balance()),
        "clearing_cases": [queries.case_view(c) for c in r.cases.values()],
        "supplementary": [queries.supplementary_view(s) for s in r.supplementary.values()],
    }


def claim(c: Claim) -> dict[str, Any]:
    return {
        "claim": str(c.id),
        "recipient": c.recipient_id,
        "street": c.street,
        "channel": c.channel,
        "status": c.status,
        "expenses": list(c.expense_ids),
        "handler": c.handler,
        "reviewer": c.reviewer,
        "approver": c.approver,
        "lodged_on": c.lodged_on,
        "rejection": c.rejection,
        "paid_at": _iso(c.paid_at),
        "version": c.version,
    }


def duplicates(r: Recipient) -> list[dict[str, Any]]:
    """R-PH-7 / R-CLR-1(b) from one recipient's aggregate: receipts recorded twice (``receipt``)
    and attempts to aid an aided receipt again (``attempted``); the read model finds more."""
    rows = []
    for eid, acc in r.expenses.items():
        if acc.facts.duplicate_of:
            rows.append({"kind": "receipt", "subject": eid, "matched": acc.facts.duplicate_of, "recipient": str(r.id),
                         "facility_code": acc.facts.facility.code, "invoice_no": acc.facts.invoice_no,
                         "recorded_at": acc.facts.recorded_at.isoformat()})
        for a in acc.attempted_duplicates:
            rows.append({"kind": "attempted", "subject": eid, "matched": a.get("aided_as") or "", "recipient": str(r.id),
                         "channel": a.get("channel"), "claim": a.get("claim"), "reason": a.get("reason"), "recorded_at": a.get("at")})
    return rows


def stored_explanation(r: Recipient, eid: str) -> dict[str, Any]:
    """The decision summaries the events keep (R-TIME-1): first decision and latest assessment."""
    acc = r.expenses[eid]
    return {
        "decided": acc.decided,
        "due": acc.due,
        "decision": None if acc.decision is None else {
            "channel": acc.decision.channel,
            "claim": acc.decision.claim_id,
            "decided_at": acc.decision.decided_at.isoformat(),
        },
    }
