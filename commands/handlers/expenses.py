"""Expenses: receipts recorded (one receipt in the whole ledger), insurance settled, one-stop
settlement at the point of care (R-INS-3..6, R-PH-7, R-CLR-1(a)(b)).

Each handler takes the ledger (the unit of work, ``commands.core.LedgerCore``) and one
command, and returns its ``Result``; ``commands.handlers.HANDLERS`` registers them."""

from __future__ import annotations

from typing import Any

from commands import models as m
from commands.core import LedgerCore, Result, expense_ref, recipient_of
from ledger import errors
from ledger.aggregates import Receipt, Recipient
from ledger.money import ZERO, fmt
from ledger.values import Channel, Trigger, local_date, receipt_identity


def record_expense(app: LedgerCore, cmd: m.RecordExpense) -> Result:
    """A receipt / settlement record. The same receipt recorded again is kept and flagged as a
    duplicate of the first (SCENARIOS.md); it can never be aided twice (R-PH-7)."""
    r = app.recipient(cmd.recipient)
    moment = app._now(cmd.at)
    eid = expense_ref(r.id, len(r.expenses) + 1)
    # R-CLR-1(b) [002 4.5; 000 第七条]: the same receipt (facility code and invoice number after
    # NFKC, case folding and trimming; the invoice number alone without a code) recorded again,
    # under this or any other recipient, is kept and flagged as a duplicate of the first.
    if cmd.handle is not None:
        _handle_free(r, cmd.handle)
    key = receipt_identity(cmd.facility.code, cmd.invoice_no)
    rc = app.receipt(key, saving=True)  # taken as new unless held: the save checks it (ADR 0021)
    if rc is None:
        rc = Receipt._create(  # noqa: SLF001
            Receipt.Opened, id=Receipt.id_for(key), timestamp=moment, facility_code=key[0], invoice_no=key[1]
        )
    earlier = r.receipts.get(key)  # recorded before the ledger-wide index existed
    duplicate_of = rc.first_recorded or (earlier[0] if earlier else None)
    rc.trigger_event(Receipt.ExpenseNoted, timestamp=moment, expense_id=eid, recipient_id=str(r.id))
    app._also_save(rc)
    r.trigger_event(
        Recipient.ExpenseRecorded,
        timestamp=moment,
        expense_id=eid,
        handle=cmd.handle,
        visit_type=cmd.visit_type.value,
        facility=cmd.facility.model_dump(mode="json"),
        service_date=cmd.service_date.isoformat(),
        invoice_date=cmd.invoice_date.isoformat(),
        invoice_no=cmd.invoice_no,
        total=cmd.total,
        in_scope=cmd.in_scope,
        basic_insurance_paid=cmd.basic_insurance_paid,
        referred=cmd.referred,
        dispensing_only=cmd.dispensing_only,
        critical_illness_related=cmd.critical_illness_related,
        critical_illness_evidence=cmd.critical_illness_evidence.value,
        basic_insurance_settled=cmd.basic_insurance_settled,
        duplicate_of=duplicate_of,
        source=cmd.source,
    )
    if duplicate_of is not None:
        _settlements_of_the_receipt(app, r, eid, duplicate_of, moment)
    return app._commit(cmd, Result(ids={"expense": eid, "duplicate_of": duplicate_of}), r)


def _settlements_of_the_receipt(app: LedgerCore, r: Recipient, eid: str, first: str, moment: Any) -> None:
    """R-CLR-1(b) with R-INS-3, R-INS-4 [002 4.5; 001 二(二)3]: a copy of a receipt is the same
    receipt, so the insurance already paid on it is a fact of the copy too (``settle_insurance``
    records a payment on every recording there is; this gives a recording made later the ones
    paid before it). Aid on the copy is then computed on the same self-pay, whichever order the
    payment and the copy were recorded in."""
    holder = r if recipient_of(first) == r.id else app.repository.get_from_store(recipient_of(first))
    recorded = holder.expenses.get(first)
    for settlement in recorded.facts.settlements if recorded is not None else ():
        r.trigger_event(Recipient.InsuranceSettled, timestamp=moment, expense_id=eid, scheme=settlement.scheme, amount=settlement.amount)


def settle_insurance(app: LedgerCore, cmd: m.SettleInsurance) -> Result:
    """An insurance payment on an expense. After aid it lowers self-pay and makes part of the
    aid an overpayment: clearing (R-INS-4, R-CLR-1(a) [001 二(二)3; 002 4.4; 000 第七条])."""
    r = app.recipient(recipient_of(cmd.expense))
    acc = app._expense(r, cmd.expense)
    # R-INS-3 [001 四]: self-pay is never below zero. Payments that together exceed the in-scope
    # amount are recorded as paid (the facts as they happened); self-pay is then 0.00 and any aid
    # already paid on the expense becomes an overpayment to clear (R-CLR-1(a)).
    moment = app._now(cmd.at)
    # R-CLR-1(b) [002 4.5; 000 第七条]: the same receipt is one receipt under whichever recipient it
    # was recorded, so a payment on it is a fact of every recording: the one that was aided sees
    # it and clears, whichever recording the payment names, and no two recordings of one receipt
    # show two self-pays.
    holders: dict[str, Recipient] = {str(r.id): r}
    recordings = [(r, cmd.expense)]
    rc = app.receipt(acc.facts.receipt_key)
    for eid, rid in rc.expenses if rc is not None else ():
        holder = holders.get(rid) or app.recipient(recipient_of(eid))
        if eid != cmd.expense and eid in holder.expenses:
            holders[rid] = holder
            recordings.append((holder, eid))
    for holder, eid in recordings:
        holder.trigger_event(Recipient.InsuranceSettled, timestamp=moment, expense_id=eid, scheme=cmd.scheme.value, amount=cmd.amount)
    for holder in holders.values():
        app._reconcile(holder, Trigger.LATE_INSURANCE.value, moment, {"expense": cmd.expense, "scheme": cmd.scheme.value, "amount": fmt(cmd.amount)})
    return app._commit(cmd, Result(), *holders.values())


def one_stop(app: LedgerCore, cmd: m.OneStop) -> Result:
    """Real-time one-stop settlement at the point of care: assessed and paid to the facility at
    once. An aided receipt cannot be settled again (R-PH-7)."""
    r = app.recipient(recipient_of(cmd.expense))
    app._expense(r, cmd.expense)
    moment = app._now(cmd.at)
    channel = Channel.ONE_STOP.value
    exc, eid, result = app._first_rejection(r, [cmd.expense], channel, local_date(moment), None, moment)
    if exc is not None:
        if isinstance(exc, errors.Duplicate):
            app._note_duplicate(r, cmd.expense, channel, None, exc, moment)
            app._commit(cmd, Result.rejected(exc), r)
        return Result.rejected(exc, expense=cmd.expense)
    assert result is not None
    [a] = app._record_decision(r, [cmd.expense], channel, None, moment, result)
    app._pay(r, None, channel, [(cmd.expense, a.summary())], moment, offset=False)
    return app._commit(cmd, Result(ids={"expense": cmd.expense, "aid": fmt(a.total)}), r)


def _handle_free(r: Recipient, handle: str) -> None:
    """A handle names one of the recipient's expenses (ADR 0019): one already given to another of
    them, as people type it (NFKC, case folding, trimming), is refused, so a claim or a lookup
    that names it never finds two."""
    for eid in r.expenses_named(handle):
        raise errors.InvalidInput(f"handle: {handle!r} already names expense {eid} of this recipient (ADR 0019)",
                                  code="HANDLE_TAKEN", field="handle", rule="ADR 0019")
