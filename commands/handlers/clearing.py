"""Individual clearing 个人清算: clearing runs, supplementary payouts, repayments and write-offs
(R-CLR-1..3).

Each handler takes the ledger (the unit of work, ``commands.core.LedgerCore``) and one
command, and returns its ``Result``; ``commands.handlers.HANDLERS`` registers them."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from commands import models as m
from commands.clearing_runs import RULE_CITY, RULE_CITY_CAP, and_also, city_conflicts_from, city_usage_from, recipients_since
from commands.clearing_views import proposal_owner
from commands.core import LedgerCore, Result
from ledger import clearing, errors
from ledger.aggregates import NAMESPACE, Recipient
from ledger.money import ZERO, fmt
from ledger.values import Trigger, same_identity


def run_clearing(app: LedgerCore, cmd: m.ClearingRun) -> Result:
    """A clearing run (R-CLR-2); with ``since``, only recipients with events recorded after it
    (every one when the policy changed since: commands.clearing_runs.recipients_since). A
    ``duplicate`` run of a district that reads the city view also clears the receipts it paid
    second in the city (R-CAP-4, R-CLR-1(b) [002 4.5; 000 第七条]: late discovery); a ``cap_overrun``
    run checks the city reads of the persons aided here and in another district (R-CAP-4,
    R-CLR-1(e) [001; 000 第七条]: a decision made while the city view lagged)."""
    recipients = recipients_since(app, cmd.since) if cmd.since is not None else None
    city = city_conflicts_from(getattr(app, "city", None)) if cmd.trigger == Trigger.DUPLICATE.value else None
    if city and recipients is not None:
        recipients = and_also(recipients, city.by_recipient)
    opened = {"cases": 0, "supplementary": 0}
    cause = {"run": "clearing", "city_view": {"district": city.district, "positions": city.positions, "rule": RULE_CITY}} if city else None
    usage = city_usage_from(getattr(app, "city", None)) if cmd.trigger == Trigger.CAP_OVERRUN.value else None
    if usage:
        if recipients is not None:  # R-CAP-4, R-CLR-1(e): the persons aided here and elsewhere too
            recipients = and_also(recipients, usage.by_recipient)
        cause = {**(cause or {"run": "clearing"}), "city_view": {"district": usage.district, "positions": dict(usage.positions), "rule": RULE_CITY_CAP}}
    changed = app.clearing_run(cmd.trigger, at=cmd.at, recipients=recipients, opened=opened, cause=cause, city=city.by_recipient if city else None,
                               city_usage=usage or None)
    ids = {"recipients_changed": changed, "cases_opened": opened["cases"], "supplementary_opened": opened["supplementary"]}
    if city is not None:
        ids["city_conflicts"] = len(city)
    if usage is not None:
        ids["city_usage"] = len(usage)
    return Result(ids=ids)


def pay_supplementary(app: LedgerCore, cmd: m.PaySupplementary) -> Result:
    """Pay every pending supplementary payout of the recipient (R-CLR-2), offsetting open cases."""
    r = app.recipient(cmd.recipient)
    pending = [s for s in r.supplementary.values() if s.paid_at is None]
    if not pending:
        return Result(ids={"paid": "0.00"})
    moment = app._now(cmd.at)
    per_expense: dict[str, dict[str, Any]] = {}
    ids: dict[str, list[str]] = {}
    for s in pending:
        entry = per_expense.setdefault(s.expense_id, {"total": ZERO, "by_scheme": {}, "by_fund": {}})
        entry["total"] += s.amount
        entry["by_scheme"] = clearing.add(entry["by_scheme"], s.by_scheme)
        entry["by_fund"] = clearing.add(entry["by_fund"], s.by_fund)
        ids.setdefault(s.expense_id, []).append(s.id)
    items = [
        (eid, {"total": fmt(v["total"]), "by_scheme": {k: fmt(x) for k, x in v["by_scheme"].items()}, "by_fund": {k: fmt(x) for k, x in v["by_fund"].items()}})
        for eid, v in per_expense.items()
    ]
    total = app._pay(r, None, "supplementary", items, moment, supplementary=ids)
    return app._commit(cmd, Result(ids={"paid": fmt(total)}), r)


def repay(app: LedgerCore, cmd: m.Repay) -> Result:
    """A repayment toward the recipient's open clearing cases, oldest first (R-CLR-3)."""
    r = app.recipient(cmd.recipient)
    owed = r.open_balance()
    if owed <= 0:
        raise errors.NothingOwed("the recipient has no open clearing balance", field="recipient")
    if cmd.amount > owed:
        raise errors.ExceedsBalance(f"amount: {cmd.amount} exceeds the open clearing balance {owed}; a case never goes below zero (R-CLR-3)", field="amount")
    if cmd.voucher is not None:
        _voucher_not_recorded(app, r, cmd.voucher)
    allocations = []
    for case_id, amount in clearing.oldest_first(cmd.amount, [(c.id, c.balance) for c in r.open_cases()]):
        by_fund = clearing.allocate(amount, r.cases[case_id].balance_by_fund)
        allocations.append({"case": case_id, "amount": fmt(amount), "by_fund": {k: fmt(v) for k, v in by_fund.items()}})
    moment = app._now(cmd.at)
    # R-CLR-3 [000 第七条]: who received the money, on which day, against which receipt or voucher
    # and how (cash, bank_transfer, offset); the date defaults to the recorded day (+08:00).
    received_on = cmd.received_on or m.recorded_day(moment)
    r.trigger_event(
        Recipient.RepaymentReceived, timestamp=moment, amount=cmd.amount, allocations=allocations,
        officer=cmd.officer, received_on=received_on.isoformat(), voucher=cmd.voucher, method=cmd.method,
    )
    return app._commit(cmd, Result(), r)


def _voucher_not_recorded(app: LedgerCore, r: Recipient, voucher: str) -> None:
    """R-CLR-3 [000 第七条]: one receipt or voucher is one repayment. A voucher typed again (after
    NFKC, case folding and trimming, as people type it) is refused, so money received once is
    never counted twice; a repayment is rare, so its recipient's stream is read for it."""
    wanted = same_identity(voucher)
    for e in app.repository.event_store.get(r.id):
        if isinstance(e, Recipient.RepaymentReceived) and e.voucher and same_identity(e.voucher) == wanted:
            raise errors.Conflict(
                f"voucher: {e.voucher!r} is already recorded for a repayment of {e.amount} received on {e.received_on} "
                "(R-CLR-3 [000 第七条]: one voucher, one repayment)",
                code="VOUCHER_RECORDED", rule="R-CLR-3", field="voucher",
            )


def _nothing_writable(r: Recipient, field: str) -> errors.NothingOwed:
    if r.open_cases():
        return errors.NothingOwed(
            "the recipient's pending supplementary payouts cover the open clearing balance: paying them offsets it (R-CLR-2, R-CLR-3)",
            field=field,
        )
    return errors.NothingOwed("the recipient has no open clearing balance (R-CLR-3)", field=field)


def write_off(app: LedgerCore, cmd: m.WriteOff) -> Result:
    """Write off the open clearing balance, less what pending supplementary payouts will offset
    (``Recipient.forgivable``); the approver must differ from the clearing officer (R-CLR-3)."""
    if same_identity(cmd.officer) == same_identity(cmd.approver):
        raise errors.SameOfficer("a write-off needs an approver distinct from the clearing officer (R-CLR-3)", rule="R-CLR-3", field="approver")
    r = app.recipient(cmd.recipient)
    writable = r.forgivable()
    if not writable:
        raise _nothing_writable(r, "recipient")
    allocations = [
        {"case": c.id, "amount": fmt(amount), "by_fund": {k: fmt(v) for k, v in clearing.allocate(amount, c.balance_by_fund).items()}}
        for c, amount in writable
    ]
    r.trigger_event(Recipient.WriteOffApproved, timestamp=app._now(cmd.at), officer=cmd.officer, approver=cmd.approver, reason=cmd.reason, allocations=allocations, proposal_id=None)
    return app._commit(cmd, Result(), r)


# ------------------------------------------------------------------ write-off in two steps (R-CLR-3)


def _proposal_owner(app: LedgerCore, proposal_id: str) -> tuple[Recipient, dict[str, Any]]:
    r = proposal_owner(app, proposal_id)
    return r, r.write_off_proposals()[str(uuid.UUID(proposal_id))]


def _pending(proposal: dict[str, Any]) -> None:
    if proposal["status"] != "pending":
        raise errors.Conflict(
            f"the write-off proposal is already {proposal['status']} (R-CLR-3 [000 第七条])",
            code="PROPOSAL_CLOSED", rule="R-CLR-3", field="proposal",
        )


def propose_write_off(app: LedgerCore, cmd: m.ProposeWriteOff) -> Result:
    """A clearing officer proposes writing off every open case at its balance, less what the
    recipient's pending supplementary payouts will offset (``Recipient.forgivable``; R-CLR-3 [000 第七条]);
    nothing is written off until a distinct officer approves."""
    r = app.recipient(cmd.recipient)
    writable = r.forgivable()
    if not writable:
        raise _nothing_writable(r, "recipient")
    proposal_id = str(uuid.uuid5(NAMESPACE, f"{r.id}:write-off:{len(r.write_off_proposals()) + 1}"))
    amount = sum((a for _, a in writable), ZERO)
    r.trigger_event(
        Recipient.WriteOffProposed, timestamp=app._now(cmd.at), proposal_id=proposal_id, officer=cmd.officer,
        reason=cmd.reason, amount=amount, cases=[{"case": c.id, "amount": fmt(a)} for c, a in writable],
    )
    return app._commit(cmd, Result(ids={"proposal": proposal_id, "amount": fmt(amount)}), r)


def approve_write_off(app: LedgerCore, cmd: m.ApproveWriteOff) -> Result:
    """A second officer approves a proposal (R-CLR-3 [000 第七条]: an approver distinct from the
    clearing officer, compared as identities). Each case is written off at what was proposed for
    it, never past what may be forgiven of it now (``Recipient.forgivable``: a repayment or offset since
    lowers its balance, a pending supplementary payout what it will offset)."""
    r, proposal = _proposal_owner(app, cmd.proposal)
    _pending(proposal)
    if same_identity(proposal["officer"]) == same_identity(cmd.approver):
        raise errors.SameOfficer(
            "a write-off needs an approver distinct from the clearing officer who proposed it (R-CLR-3 [000 第七条])",
            rule="R-CLR-3", field="approver",
        )
    allocations = []
    now = {c.id: a for c, a in r.forgivable()}  # a repayment, offset or new pending payout since lowers it
    for entry in proposal["cases"]:
        case = r.cases.get(entry["case"])
        if case is None or now.get(case.id, ZERO) <= 0:
            continue
        amount = min(Decimal(entry["amount"]), now[case.id])
        by_fund = clearing.allocate(amount, case.balance_by_fund)
        allocations.append({"case": case.id, "amount": fmt(amount), "by_fund": {k: fmt(v) for k, v in by_fund.items()}})
    if not allocations:
        raise errors.NothingOwed("the cases of this proposal have no open balance left (R-CLR-3)", field="proposal")
    r.trigger_event(
        Recipient.WriteOffApproved, timestamp=app._now(cmd.at), officer=proposal["officer"], approver=cmd.approver,
        reason=proposal["reason"], allocations=allocations, proposal_id=proposal["id"],
    )
    written = sum((Decimal(a["amount"]) for a in allocations), ZERO)
    return app._commit(cmd, Result(ids={"proposal": proposal["id"], "written_off": fmt(written)}), r)


def refuse_write_off(app: LedgerCore, cmd: m.RefuseWriteOff) -> Result:
    """A second officer refuses a proposal, with the reason (R-CLR-3 [000 第七条]); the proposer
    cannot decide their own proposal either way."""
    r, proposal = _proposal_owner(app, cmd.proposal)
    _pending(proposal)
    if same_identity(proposal["officer"]) == same_identity(cmd.officer):
        raise errors.SameOfficer(
            "a write-off proposal is decided by an officer distinct from the one who proposed it (R-CLR-3 [000 第七条])",
            rule="R-CLR-3", field="officer",
        )
    r.trigger_event(Recipient.WriteOffRefused, timestamp=app._now(cmd.at), proposal_id=proposal["id"], officer=cmd.officer, reason=cmd.reason)
    return app._commit(cmd, Result(ids={"proposal": proposal["id"]}), r)
