"""The narrow read interface over the aggregates (for adapters that need one person's figures now).

Population-wide reading (caps tables, fund books, duplicate index, statements) belongs to the
projections; these functions answer from the aggregates themselves, so the write path never
waits for a projection.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from ledger import engine
from ledger.aggregates import Recipient
from ledger.money import ZERO, fmt
from ledger.values import FUNDS, Scheme

CAPPED = {Scheme.SHANGHAI_MEDICAL_AID.value, Scheme.LIANYUNGANG.value}


def money_view(total: Decimal, by_scheme: dict[str, Decimal], by_fund: dict[str, Decimal]) -> dict[str, Any]:
    return {
        "total": fmt(total),
        "by_scheme": {k: fmt(v) for k, v in sorted(by_scheme.items())},
        "by_fund": {k: fmt(v) for k, v in sorted(by_fund.items()) if v != 0 or k in by_fund},
    }


def expense_view(r: Recipient, expense_id: str) -> dict[str, Any]:
    acc = r.expenses[expense_id]
    due = acc.due if acc.due and acc.due.get("granted") else None
    due_view = (
        money_view(
            Decimal(due["total"]),
            {k: Decimal(v) for k, v in due["by_scheme"].items()},
            {k: Decimal(v) for k, v in due["by_fund"].items()},
        )
        if due
        else money_view(ZERO, {}, {})
    )
    return {
        "id": expense_id,
        "self_pay": fmt(acc.facts.self_pay()),
        "paid": money_view(acc.paid_total, acc.paid_by_scheme, acc.paid_by_fund),
        "due": due_view,
        "category": (acc.due or {}).get("category") if acc.decision else None,
        "channel": acc.decision.channel if acc.decision else None,
        "duplicate_of": acc.facts.duplicate_of,
        "decision": {"code": (acc.due or {}).get("code"), "rule": (acc.due or {}).get("rule")} if acc.due and not acc.due.get("granted") else None,
    }


def recorded_summaries(events: Iterable[Any], expense_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """R-TIME-1: the first decision on an expense and its latest assessment as their events
    recorded them, traces included (a recipient's state keeps them without:
    ``ledger.aggregates.kept_summary``), from the recipient's events in order; (None, None) before
    a decision."""
    decided = due = None
    for event in events:
        if isinstance(event, Recipient.AidDecided) and decided is None:
            decided = due = next((s for s in event.decisions if s.get("expense") == expense_id), None)
        elif isinstance(event, Recipient.AidReassessed) and decided is not None:
            due = next((x["due"] for x in event.results if x.get("expense") == expense_id), due)
    return decided, due


_ASSESS = object()


def annual_rows(r: Recipient, book, schemes: tuple[str, ...], passed: Any = _ASSESS) -> list[dict[str, Any]]:
    """R-CAP-2: per year (of the invoice date), scheme and kind, the aid due that counts against
    the cap, the cap and what remains. ``passed``: the pass over ``r``'s decided expenses under
    ``book`` when the caller has it (``LedgerCore.annual_caps`` gives ``LedgerCore.current_pass``,
    None before a first decision); else it is made here."""
    result = passed
    if result is _ASSESS:
        result = engine.assess(r.knowledge(), r.expense_facts(), r.decided_refs(), book, schemes) if r.decided_refs() else None
    rows: dict[tuple[int, str, str], Decimal] = {}
    paid_any: set[tuple[int, str, str]] = set()
    for eid, acc in r.expenses.items():
        if acc.decision is None:
            continue
        year = acc.facts.invoice_date.year
        due = acc.due or {}
        for part in due.get("parts", []) if due.get("granted") else []:
            key = (year, part["scheme"], part["kind"])
            rows[key] = rows.get(key, ZERO) + Decimal(part["amount"])
        for scheme, amount in acc.paid_by_scheme.items():
            if amount:
                paid_any.add((year, scheme, acc.facts.cap_kind))
    out = []
    for key in sorted(set(rows) | paid_any):
        year, scheme, kind = key
        granted = rows.get(key, ZERO)
        if granted == 0 and key not in paid_any:
            continue
        cap = None
        if scheme in CAPPED and result is not None:
            cap = result.caps.get((scheme, year, kind), (None, None))[1]
        out.append(
            {
                "recipient": str(r.id),
                "year": year,
                "scheme": scheme,
                "kind": kind,
                "granted": fmt(granted),
                "cap": fmt(cap) if cap is not None else None,
                "remaining": fmt(max(ZERO, cap - granted)) if cap is not None else None,
            }
        )
    return out


def fund_movements(r: Recipient) -> dict[str, Decimal]:
    """Net outflow per fund: aid paid (incl. offset parts), subsidies and social help, less
    recoveries (repayments and offsets; a write-off recovers nothing)."""
    funds = {f: ZERO for f in FUNDS}
    for p in r.payouts:
        for pay in p["payments"]:
            for f, v in pay["by_fund"].items():
                funds[f] = funds.get(f, ZERO) + Decimal(v)
    for rec in r.recoveries:
        if rec["kind"] == "write_off":
            continue
        for f, v in rec["by_fund"].items():
            funds[f] = funds.get(f, ZERO) - Decimal(v)
    for s in r.social_help:
        funds["social"] += Decimal(s["amount"])
    for s in r.subsidies:
        funds[s.get("fund", "city")] = funds.get(s.get("fund", "city"), ZERO) + Decimal(s.get("amount") or "0")
    return funds


def case_view(c) -> dict[str, Any]:
    return {
        "case": c.id,
        "expense": c.expense_id,
        "trigger": c.trigger,
        "amount": fmt(c.amount),
        "balance": fmt(c.balance),
        "status": c.status,
        "by_fund": {k: fmt(v) for k, v in c.by_fund.items()},
        "opened_at": c.opened_at.isoformat(),
    }


def supplementary_view(s) -> dict[str, Any]:
    return {
        "supplementary": s.id,
        "expense": s.expense_id,
        "trigger": s.trigger,
        "amount": fmt(s.amount),
        "status": s.status,
        "by_fund": {k: fmt(v) for k, v in s.by_fund.items()},
    }
