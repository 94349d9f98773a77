"""Clearing for officers (RULES.md §7): the population's cases and supplementary payouts, and one
case with both decisions side by side. Used by ``ledger clearing list/show`` and the HTTP API.

Read-only: answers from the recipients' aggregates, and for one case from the recipient's own
events (the reassessment recorded with the case carries its cause and the decision it replaced).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Iterator

from ledger import errors
from ledger.aggregates import CaseState, Recipient, SupplementaryState
from ledger.money import ZERO, fmt
from ledger.values import validate_id_number

if TYPE_CHECKING:  # pragma: no cover
    from commands.core import LedgerCore as LedgerApp

STATUSES = ("open", "settled", "written_off")

#: R-CLR-1: each trigger, the rule it comes from and what it means to an officer.
TRIGGERS: dict[str, dict[str, str]] = {
    "late_insurance": {
        "rule": "R-CLR-1(a)",
        "rules": "R-CLR-1(a), R-INS-4",
        "clause": "[001 二(二)3; 002 4.4; 000 第七条]",
        "means": "an insurance payment (居保大病, union mutual aid, 综合减负, ...) recorded after aid lowered self-pay",
    },
    "duplicate": {
        "rule": "R-CLR-1(b)",
        "rules": "R-CLR-1(b), R-PH-7",
        "clause": "[002 4.5; 000 第七条]",
        "means": "the same receipt (facility code and invoice number) was aided twice",
    },
    "category_change": {
        "rule": "R-CLR-1(c)",
        "rules": "R-CLR-1(c), R-CAT-1, R-TIME-2",
        "clause": "[002 3.2; 000 第七条]",
        "means": "a category (or insurance enrolment) granted, revoked or ended with an earlier effective date",
    },
    "parameter_change": {
        "rule": "R-CLR-1(d)",
        "rules": "R-CLR-1(d), R-TIME-2",
        "clause": "[000 第七条]",
        "means": "a policy parameter amended with an earlier effective date",
    },
    "cap_overrun": {
        "rule": "R-CLR-1(e)",
        "rules": "R-CLR-1(e), R-CAP-2, R-CAP-3, R-4L-4",
        "clause": "[002 4.3; 000 第四条(三)]",
        "means": "an expense decided out of invoice-date order took room an earlier decision had used under a limit: "
                 "the annual aid limit (R-CAP-2, R-CAP-3) or 四医联动's monthly ceiling or visit count (R-4L-4)",
    },
}


# ---------------------------------------------------------------------------------------- finding


def recipient_for(app: "LedgerApp", text: str) -> Recipient:
    """A recipient by ledger id (uuid) or by resident id number (身份证号)."""
    text = text.strip()
    try:
        return app.recipient(uuid.UUID(text))
    except ValueError:
        pass
    try:
        number = validate_id_number(text, today=None)
    except Exception:  # noqa: BLE001 - any malformed id is the same answer to an officer
        raise errors.UnknownEntity(f"{text!r} is neither a recipient id nor a resident id number", field="recipient") from None
    id_for = getattr(app, "recipient_id_for", Recipient.id_for)  # keyed when personal data is protected
    return app.recipient(id_for(number))


def _owner(app: "LedgerApp", item_id: str) -> Recipient:
    try:
        rid = uuid.UUID(item_id.split(":", 1)[0])
    except ValueError:
        raise errors.UnknownEntity(f"{item_id!r} is not a clearing case id", field="case") from None
    return app.recipient(rid)


# ---------------------------------------------------------------------------------------- rows


def _money(d: dict[str, Decimal]) -> dict[str, str]:
    return {k: fmt(v) for k, v in sorted(d.items())}


def _recovered(c: CaseState) -> tuple[Decimal, Decimal]:
    recovered = sum((h["amount"] for h in c.history if h["kind"] in ("repayment", "offset")), ZERO)
    written_off = sum((h["amount"] for h in c.history if h["kind"] == "write_off"), ZERO)
    return recovered, written_off


def case_row(r: Recipient, c: CaseState) -> dict[str, Any]:
    recovered, written_off = _recovered(c)
    acc = r.expenses.get(c.expense_id)
    return {
        "case": c.id,
        "recipient": str(r.id),
        "name": r.name,
        "street": r.street,
        "expense": c.expense_id,
        "handle": acc.handle if acc else None,
        "trigger": c.trigger,
        "rule": TRIGGERS.get(c.trigger, {}).get("rule"),
        "amount": fmt(c.amount),
        "recovered": fmt(recovered),
        "written_off": fmt(written_off),
        "balance": fmt(c.balance),
        "status": c.status,
        "by_fund": _money(c.by_fund),
        "balance_by_fund": _money(c.balance_by_fund),
        "opened_at": c.opened_at.isoformat(),
    }


def supplementary_row(r: Recipient, s: SupplementaryState) -> dict[str, Any]:
    acc = r.expenses.get(s.expense_id)
    return {
        "supplementary": s.id,
        "recipient": str(r.id),
        "name": r.name,
        "street": r.street,
        "expense": s.expense_id,
        "handle": acc.handle if acc else None,
        "trigger": s.trigger,
        "rule": TRIGGERS.get(s.trigger, {}).get("rule"),
        "amount": fmt(s.amount),
        "status": s.status,
        "by_fund": _money(s.by_fund),
        "created_at": s.created_at.isoformat(),
        "paid_at": s.paid_at.isoformat() if s.paid_at else None,
    }


def clearing_cases(app: "LedgerApp", status: str | None = None, recipient: str | None = None) -> Iterator[dict[str, Any]]:
    """Every clearing case (of one recipient, or of the population in enrolment order), oldest
    first per recipient; ``status`` one of open, settled, written_off."""
    if status is not None and status not in STATUSES:
        raise errors.InvalidInput(f"status: one of {', '.join(STATUSES)}", field="status")
    people = [recipient_for(app, recipient)] if recipient else (app.recipient(rid) for rid in app.recipient_ids())
    for r in people:
        for c in sorted(r.cases.values(), key=lambda c: (c.opened_at, c.id)):
            if status is None or c.status == status:
                yield case_row(r, c)


def supplementary_payouts(app: "LedgerApp", status: str | None = None, recipient: str | None = None) -> Iterator[dict[str, Any]]:
    """Every supplementary payout (``status`` pending or paid)."""
    people = [recipient_for(app, recipient)] if recipient else (app.recipient(rid) for rid in app.recipient_ids())
    for r in people:
        for s in sorted(r.supplementary.values(), key=lambda s: (s.created_at, s.id)):
            if status is None or s.status == status:
                yield supplementary_row(r, s)


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and sums of case rows, by status."""
    out: dict[str, Any] = {}
    for row in rows:
        t = out.setdefault(row["status"], {"cases": 0, "amount": ZERO, "balance": ZERO})
        t["cases"] += 1
        t["amount"] += Decimal(row["amount"])
        t["balance"] += Decimal(row["balance"])
    return {k: {"cases": v["cases"], "amount": fmt(v["amount"]), "balance": fmt(v["balance"])} for k, v in sorted(out.items())}


# ---------------------------------------------------------------------------------------- one case


def _side(summary: dict[str, Any] | None, by_scheme: dict[str, Decimal], by_fund: dict[str, Decimal], total: Decimal) -> dict[str, Any]:
    summary = summary or {}
    return {
        "category": summary.get("category"),
        "self_pay": summary.get("self_pay"),
        "granted": summary.get("granted"),
        "refusal": {"code": summary.get("code"), "rule": summary.get("rule")} if summary and not summary.get("granted") else None,
        "total": fmt(total),
        "by_scheme": _money(by_scheme),
        "by_fund": _money(by_fund),
    }


def _decimal_map(d: dict[str, Any] | None) -> dict[str, Decimal]:
    return {k: Decimal(v) for k, v in (d or {}).items()}


def _add(a: dict[str, Decimal], b: dict[str, Decimal], sign: int = 1) -> dict[str, Decimal]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, ZERO) + sign * v
    return {k: v for k, v in out.items() if v != 0 or k in a}


def case_detail(app: "LedgerApp", item_id: str) -> dict[str, Any]:
    """One clearing case (or supplementary payout) with what the ledger had settled on before the
    trigger and what it says now, side by side: category, self-pay, total, per scheme, per fund;
    the trigger, its rule and its cause; the recoveries so far."""
    r = _owner(app, item_id)
    item: CaseState | SupplementaryState | None = r.cases.get(item_id) or r.supplementary.get(item_id)
    if item is None:
        raise errors.UnknownEntity(f"unknown clearing case {item_id!r}", field="case")
    is_case = isinstance(item, CaseState)
    opened_event, reassessed = None, None
    kind = Recipient.ClearingCaseOpened if is_case else Recipient.SupplementaryPayoutDue
    events = list(app.repository.event_store.get(r.id))
    for ev in events:
        if isinstance(ev, kind) and getattr(ev, "case_id" if is_case else "supplementary_id") == item_id:
            opened_event = ev
            break
    if opened_event is not None:
        for ev in events:
            if isinstance(ev, Recipient.AidReassessed) and ev.timestamp == opened_event.timestamp:
                reassessed = ev
    current = dict(getattr(opened_event, "current", None) or {})
    previous_event = dict(getattr(opened_event, "previous", None) or {})
    before = next((x["previous"] for x in (reassessed.results if reassessed else []) if x["expense"] == item.expense_id), None)
    previous_summary = before or previous_event.get("decision")
    # The difference recorded on the case is expected − now (a case) or now − expected (a payout):
    # what the ledger had settled on is recovered from "now" and that difference.
    # One recomputation may open a case on the funds that paid too much and a payout on those that
    # paid too little for the same expense (R-CLR-2, ADR 0009): every item it opened counts.
    moment = item.opened_at if is_case else item.created_at
    siblings = [(1, c) for c in r.cases.values() if c.expense_id == item.expense_id and c.opened_at == moment]
    siblings += [(-1, x) for x in r.supplementary.values() if x.expense_id == item.expense_id and x.created_at == moment]
    if not any(x is item for _, x in siblings):
        siblings.append((1 if is_case else -1, item))
    now_scheme, now_fund = _decimal_map(current.get("by_scheme")), _decimal_map(current.get("by_fund"))
    prev_scheme, prev_fund = now_scheme, now_fund
    for sign, x in siblings:
        prev_scheme = _add(prev_scheme, x.by_scheme, sign)
        prev_fund = _add(prev_fund, x.by_fund, sign)
    now_total = Decimal(current.get("total") or "0")
    prev_total = Decimal(previous_event.get("total") or now_total + sum((sign * x.amount for sign, x in siblings), Decimal(0)))
    if before and before.get("by_scheme") is not None:
        # the recomputation recorded what the ledger had settled on: a case and a payout are per
        # fund, so they cannot say how the schemes moved (R-4L-2 [000 第六条])
        prev_scheme, prev_fund = _decimal_map(before.get("by_scheme")), _decimal_map(before.get("by_fund"))
        prev_total = Decimal(before.get("total") or prev_total)
    acc = r.expenses.get(item.expense_id)
    first = acc.decided if acc else None
    detail: dict[str, Any] = {
        "kind": "clearing_case" if is_case else "supplementary_payout",
        "id": item.id,
        "recipient": {"id": str(r.id), "name": r.name, "street": r.street},
        "expense": _expense_facts(acc, item.expense_id),
        "trigger": item.trigger,
        **{k: v for k, v in TRIGGERS.get(item.trigger, {}).items() if k != "rule"},
        "rule": TRIGGERS.get(item.trigger, {}).get("rule"),
        "cause": reassessed.cause if reassessed is not None else None,
        "cause_text": cause_text(reassessed.cause if reassessed is not None else None, r),
        "recorded_at": (item.opened_at if is_case else item.created_at).isoformat(),
        "amount": fmt(item.amount),
        "by_scheme": _money(item.by_scheme),
        "by_fund": _money(item.by_fund),
        "decisions": {
            "previous": {
                **_side(previous_summary, prev_scheme, prev_fund, prev_total),
                "first_decision": {
                    "total": (first or {}).get("total"),
                    "channel": acc.decision.channel if acc and acc.decision else None,
                    "decided_at": acc.decision.decided_at.isoformat() if acc and acc.decision else None,
                },
            },
            "current": {
                **_side(current, now_scheme, now_fund, now_total),
                "knowledge": reassessed.knowledge if reassessed is not None else None,
            },
        },
    }
    detail["side_by_side"] = side_by_side(detail["decisions"]["previous"], detail["decisions"]["current"])
    if is_case:
        recovered, written_off = _recovered(item)
        repayments = {ev.timestamp.isoformat(): ev for ev in events if isinstance(ev, Recipient.RepaymentReceived)}
        detail.update(
            {
                "status": item.status,
                "balance": fmt(item.balance),
                "balance_by_fund": _money(item.balance_by_fund),
                "recovered": fmt(recovered),
                "written_off": fmt(written_off),
                "history": sorted(
                    [_history_entry(h, repayments) for h in item.history]
                    + _write_off_signatures(events, item.id),
                    key=lambda h: h["at"],
                ),
                "write_off_proposals": [proposal_row(r, p) for p in r.write_off_proposals().values() if any(c["case"] == item.id for c in p["cases"])],
            }
        )
    else:
        detail.update({"status": item.status, "paid_at": item.paid_at.isoformat() if item.paid_at else None})
    return detail


def side_by_side(previous: dict[str, Any], current: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``(item, previous, current, change)`` for a two-column display."""
    rows: list[dict[str, Any]] = []

    def row(item: str, a: Any, b: Any, money_row: bool = False) -> None:
        change = None
        if money_row:
            change = fmt(Decimal(b or "0") - Decimal(a or "0"))
        rows.append({"item": item, "previous": a, "current": b, "change": change})

    row("category", previous.get("category"), current.get("category"))
    row("self_pay", previous.get("self_pay"), current.get("self_pay"), True)
    row("total", previous.get("total"), current.get("total"), True)
    for scheme in sorted(set(previous["by_scheme"]) | set(current["by_scheme"])):
        row(f"scheme {scheme}", previous["by_scheme"].get(scheme, "0.00"), current["by_scheme"].get(scheme, "0.00"), True)
    for fund in sorted(set(previous["by_fund"]) | set(current["by_fund"])):
        row(f"fund {fund}", previous["by_fund"].get(fund, "0.00"), current["by_fund"].get(fund, "0.00"), True)
    return rows


def cause_text(cause: dict[str, Any] | None, r: Any) -> str | None:
    """The recorded cause of a recomputation in words, an expense named by its handle and receipt
    rather than its id (what a clearing officer reads in ``ledger clearing show``)."""
    if not cause:
        return None

    def expense(ref: str) -> str:
        acc = r.expenses.get(ref)
        if acc is None:  # recorded by handle (or another recipient's receipt)
            named = r.expenses_named(ref)
            acc = r.expenses.get(named[0]) if named else None
        if acc is None:  # the settlement was recorded on another recipient's record of the receipt
            return f"expense {ref}, another record of the receipt (R-CLR-1(b))"
        return f"expense {acc.handle or ref} (receipt {acc.facts.invoice_no}, served {acc.facts.service_date.isoformat()})"

    if "expense" in cause and "scheme" in cause:  # R-INS-4, R-CLR-1(a)
        return f"{cause['scheme']} paid {cause.get('amount')} on {expense(str(cause['expense']))}, recorded after aid"
    if "revoked_from" in cause:  # R-CLR-1(c)
        return f"category {cause.get('category')} revoked from {cause['revoked_from']}"
    if "granted_from" in cause:
        return f"category {cause.get('category')} granted from {cause['granted_from']}"
    if "insurance" in cause:
        return f"{cause['insurance']} insurance enrolment recorded"
    if "insurance_ended" in cause:
        return f"{cause['insurance_ended']} insurance enrolment ended"
    if "mutual_aid_year" in cause:
        return f"mutual-aid participation for {cause['mutual_aid_year']} recorded or corrected"
    if "decision" in cause:  # R-CLR-1(e): an earlier-invoiced expense decided later took cap room first
        return f"a later decision ({cause['decision']}) on an expense invoiced earlier took the cap room first (R-CAP-2, R-CLR-1(e))"
    if "parameter" in cause:  # R-CLR-1(d)
        return f"parameter {cause['parameter']} amended"
    if cause.get("run") == "clearing":
        since = f" since {cause['since']}" if cause.get("since") else ""
        city = " against the city's view of aid paid elsewhere (R-CAP-4)" if cause.get("city_view") else ""
        return f"a clearing run{since}{city}"
    return ", ".join(f"{k} {v}" for k, v in cause.items())


def _expense_facts(acc: Any, expense_id: str) -> dict[str, Any]:
    if acc is None:
        return {"id": expense_id}
    f = acc.facts
    return {
        "id": expense_id,
        "handle": acc.handle,
        "visit_type": f.visit_type.value,
        "facility": {"kind": f.facility.kind.value, "level": f.facility.level, "code": f.facility.code},
        "service_date": f.service_date.isoformat(),
        "invoice_date": f.invoice_date.isoformat(),
        "invoice_no": f.invoice_no,
        "in_scope": fmt(f.in_scope),
        "basic_insurance_paid": fmt(f.basic_insurance_paid),
        "settlements": [{"scheme": s.scheme, "amount": fmt(s.amount), "recorded_at": s.recorded_at.isoformat()} for s in f.settlements],
        "duplicate_of": f.duplicate_of,
        "paid": fmt(acc.paid_total),
    }


def _history_entry(h: dict[str, Any], repayments: dict[str, Any]) -> dict[str, Any]:
    """A recovery on the case; a repayment with who took it, when, on which voucher and how
    (R-CLR-3; none for repayments recorded before RepaymentReceived v2)."""
    entry = {"kind": h["kind"], "amount": fmt(h["amount"]), "at": h["at"]}
    ev = repayments.get(h["at"]) if h["kind"] == "repayment" else None
    if ev is not None:
        entry.update(officer=ev.officer, received_on=ev.received_on, voucher=ev.voucher, method=ev.method)
    return entry


def _write_off_signatures(events: list[Any], case_id: str) -> list[dict[str, Any]]:
    """The write-off steps touching a case (R-CLR-3): proposed (officer, reason, amount for the
    case), refused (officer, reason), signed (officer, approver, reason)."""
    out: list[dict[str, Any]] = []
    for ev in events:
        if isinstance(ev, Recipient.WriteOffApproved) and any(a["case"] == case_id for a in ev.allocations):
            out.append({"kind": "write_off_signed", "officer": ev.officer, "approver": ev.approver, "reason": ev.reason,
                        "proposal": ev.proposal_id, "at": ev.timestamp.isoformat()})
        elif isinstance(ev, Recipient.WriteOffProposed):
            mine = [c for c in ev.cases if c["case"] == case_id]
            if mine:
                out.append({"kind": "write_off_proposed", "officer": ev.officer, "reason": ev.reason, "amount": mine[0]["amount"],
                            "proposal": ev.proposal_id, "at": ev.timestamp.isoformat()})
    proposed = {x["proposal"] for x in out if x["kind"] == "write_off_proposed"}
    for ev in events:
        if isinstance(ev, Recipient.WriteOffRefused) and ev.proposal_id in proposed:
            out.append({"kind": "write_off_refused", "officer": ev.officer, "reason": ev.reason, "proposal": ev.proposal_id,
                        "at": ev.timestamp.isoformat()})
    return out


# ---------------------------------------------------------------------------------------- write-off proposals


def mask_id_number(number: str | None) -> str:
    """An id number as lists show it: region and the last four characters only."""
    n = number or ""
    return n if len(n) < 10 else f"{n[:6]}{'*' * (len(n) - 10)}{n[-4:]}"


def proposal_row(r: Recipient, p: dict[str, Any]) -> dict[str, Any]:
    """A write-off proposal as the approver sees it (R-CLR-3): the person by name and masked id
    number, the amount proposed per case and in all, the reason, and its decision."""
    def at(x: Any) -> str | None:
        return x.isoformat() if x is not None else None

    cases = []
    for c in p["cases"]:
        case = r.cases.get(c["case"])
        acc = r.expenses.get(case.expense_id) if case else None
        cases.append({"case": c["case"], "amount": c["amount"], "balance": fmt(case.balance) if case else None,
                      "trigger": case.trigger if case else None, "handle": acc.handle if acc else None})
    return {
        "id": p["id"],
        "recipient": str(r.id),
        "name": r.name,
        "id_number": mask_id_number(r.id_number),
        "street": r.street,
        "officer": p["officer"],
        "reason": p["reason"],
        "amount": fmt(p["amount"]),
        "cases": cases,
        "proposed_at": at(p["proposed_at"]),
        "status": p["status"],
        "decided_by": p["decided_by"],
        "decided_at": at(p["decided_at"]),
        "refusal": p["refusal"],
        "written_off": fmt(p["written_off"]) if p["written_off"] is not None else None,
    }


PROPOSAL_STATUSES = ("pending", "approved", "refused")


def write_off_proposals(app: "LedgerApp", status: str | None = None, recipient: str | None = None) -> list[dict[str, Any]]:
    """Write-off proposals (R-CLR-3), oldest first; ``status`` pending, approved or refused."""
    if status is not None and status not in PROPOSAL_STATUSES:
        raise errors.InvalidInput(f"status: one of {', '.join(PROPOSAL_STATUSES)}", field="status")
    if recipient:
        people: Any = [recipient_for(app, recipient)]
    else:  # only the people with a proposal: their proposal events name them
        people = (app.recipient(rid) for rid in dict.fromkeys(n.originator_id for n in app.notifications([_PROPOSED_TOPIC])))
    rows = []
    for r in people:
        for p in r.write_off_proposals().values():
            if status is None or p["status"] == status:
                rows.append(proposal_row(r, p))
    return sorted(rows, key=lambda x: (x["proposed_at"], x["id"]))


_PROPOSED_TOPIC = f"{Recipient.WriteOffProposed.__module__}:{Recipient.WriteOffProposed.__qualname__}"


def proposal_owner(app: "LedgerApp", proposal_id: str) -> Recipient:
    """The recipient holding a write-off proposal (ids are uuids): found among the proposal
    events of the log, which are few."""
    try:
        wanted = str(uuid.UUID(str(proposal_id)))
    except ValueError:
        raise errors.UnknownEntity(f"{proposal_id!r} is not a write-off proposal id", field="proposal") from None
    for n in app.notifications([_PROPOSED_TOPIC]):
        if app.mapper.to_domain_event(n).proposal_id == wanted:
            return app.recipient(n.originator_id)
    raise errors.UnknownEntity(f"unknown write-off proposal {wanted}", field="proposal")


def write_off_proposal(app: "LedgerApp", proposal_id: str) -> dict[str, Any]:
    """One proposal by id."""
    r = proposal_owner(app, proposal_id)
    return proposal_row(r, r.write_off_proposals()[str(uuid.UUID(str(proposal_id)))])
