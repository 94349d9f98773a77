"""Claims: lodged at the street office, signed by three officers and paid by a fourth (R-PH-1..5,
R-PH-9); the 免申即享 monthly batch and its signatures (R-PH-3, R-PH-4).

Each handler takes the ledger (the unit of work, ``commands.core.LedgerCore``) and one
command, and returns its ``Result``; ``commands.handlers.HANDLERS`` registers them."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta

from commands import models as m
from commands.core import LedgerCore, Result, default_payer
from ledger import errors, procedure
from ledger.aggregates import Claim, ClaimBatch, Recipient
from ledger.money import ZERO, fmt
from ledger.values import CST, Channel, local_date


def lodge_claim(app: LedgerCore, cmd: m.LodgeClaim) -> Result:
    """A post-hoc claim lodged at the street office (R-PH-1, R-PH-2 [002 3.1, 3.2, 4.1]). It is
    rejected as a whole when any expense it lists would be; the claim and the rejection are
    recorded either way."""
    r = app.recipient(cmd.recipient)
    listed = [app.expense_of(r, ref) for ref in cmd.expenses]  # ids or the recipient's own handles
    moment = app._now(cmd.at)
    unverified: errors.NotEligible | None = None
    try:
        proxy = procedure.check_proxy(cmd.proxy_id_number, r.id_number, local_date(moment))
    except errors.NotEligible as exc:  # R-PH-9: the claim is refused; who lodged it is recorded as given
        proxy, unverified = (cmd.proxy_id_number or "").strip() or None, exc
    lodged_on = local_date(moment)
    ordered = app.claim_order(r, listed)
    claim = Claim._create(  # noqa: SLF001
        Claim.Lodged,
        id=uuid.uuid4(),
        timestamp=moment,
        recipient_id=str(r.id),
        expense_ids=ordered,
        handler=cmd.handler,
        channel=cmd.channel.value,
        proxy_id_number=proxy,
        street=r.street,
        lodged_on=lodged_on.isoformat(),
        deadline_override=cmd.deadline_override,  # R-PH-5 [002 4.3]: the district's reason, kept for audit
    )
    if unverified is not None:
        exc, eid = unverified, None
    elif cmd.channel is Channel.AUTO and not r.consent:
        # R-PH-3 [002 3.3]: a claim is 免申即享 (auto) only for a person whose consent is signed and
        # not withdrawn; marking another claim auto would record a consent that was never given
        exc, eid = errors.NotEligible(
            "channel: auto is the 免申即享 channel of a recipient who signed the consent, and this recipient's "
            "consent is not signed (or was withdrawn) [002 3.3]; lodge it as post_hoc", rule="R-PH-3", field="channel"), None
    else:
        exc, eid, _ = app._first_rejection(r, ordered, cmd.channel.value, lodged_on, str(claim.id), moment, bool(cmd.deadline_override), deciding=False)
    if exc is not None:
        claim.trigger_event(Claim.Rejected, timestamp=moment, code=exc.code, rule=exc.rule, message=exc.message, expense_id=eid)
        # The person's record names the refused claim (it reserves nothing): an explanation or a
        # timeline then finds every claim on the person's expenses in their own stream (ADR 0017).
        r.trigger_event(Recipient.ClaimAttached, timestamp=moment, claim_id=str(claim.id), expense_ids=ordered, attached=False)
        if isinstance(exc, errors.Duplicate) and eid:
            app._note_duplicate(r, eid, cmd.channel.value, str(claim.id), exc, moment)
        res = Result.rejected(exc, claim=str(claim.id))
        return app._commit(cmd, res, claim, r)
    r.trigger_event(Recipient.ClaimAttached, timestamp=moment, claim_id=str(claim.id), expense_ids=ordered, attached=True)
    return app._commit(cmd, Result(ids={"claim": str(claim.id)}), claim, r)


def review(app: LedgerCore, cmd: m.Review) -> Result:
    """The reviewer signs (R-PH-4 [002 3.4]): a different person from the handler."""
    c = app.claim(cmd.claim)
    if c.status != "lodged":
        raise errors.ClaimClosed(f"claim is {c.status}; only a lodged claim can be reviewed", field="claim")
    procedure.check_officers(c.handler, cmd.reviewer, None)
    c.trigger_event(Claim.Reviewed, timestamp=app._now(cmd.at), reviewer=cmd.reviewer)
    return app._commit(cmd, Result(), c)


def approve(app: LedgerCore, cmd: m.Approve) -> Result:
    """The approver signs (R-PH-4): the decision is final and the aid is due. The expenses are
    assessed now, in claim order, with what the ledger knows now."""
    c = app.claim(cmd.claim)
    if c.status == "lodged":
        raise errors.NotApproved("the claim has not been reviewed yet: the reviewer signs before the approver [002 3.4]", code="NOT_REVIEWED", field="claim")
    if c.status != "reviewed":
        raise errors.ClaimClosed(f"claim is {c.status}; only a reviewed claim can be approved", field="claim")
    procedure.check_officers(c.handler, c.reviewer, cmd.approver)
    r = app.recipient(c.recipient_id)
    moment = app._now(cmd.at)
    ordered = app.claim_order(r, c.expense_ids)
    exc, eid, result = app._first_rejection(r, ordered, c.channel, date.fromisoformat(c.lodged_on), str(c.id), moment, True)
    if exc is not None:
        c.trigger_event(Claim.Rejected, timestamp=moment, code=exc.code, rule=exc.rule, message=exc.message, expense_id=eid)
        r.trigger_event(Recipient.ClaimAttached, timestamp=moment, claim_id=str(c.id), expense_ids=ordered, attached=False)
        if isinstance(exc, errors.Duplicate) and eid:
            app._note_duplicate(r, eid, c.channel, str(c.id), exc, moment)
        return app._commit(cmd, Result.rejected(exc, claim=str(c.id)), c, r)
    assert result is not None
    c.trigger_event(Claim.Approved, timestamp=moment, approver=cmd.approver)
    decided = app._record_decision(r, ordered, c.channel, str(c.id), moment, result)
    return app._commit(cmd, Result(ids={"claim": str(c.id), "aid": fmt(sum((a.total for a in decided), ZERO))}), c, r)


def pay(app: LedgerCore, cmd: m.Pay) -> Result:
    """District disbursement of an approved claim [002 3.5]; open clearing cases are offset
    first (R-CLR-3)."""
    c = app.claim(cmd.claim)
    if c.status == "paid":
        raise errors.ClaimClosed("claim already paid", code="ALREADY_PAID", field="claim")
    if c.status != "approved":
        raise errors.NotApproved(f"claim is {c.status}: only an approved claim is paid [002 3.4]", field="claim")
    payer = cmd.payer or default_payer(c.handler, c.reviewer, c.approver)
    procedure.check_officers(c.handler, c.reviewer, c.approver, payer)
    r = app.recipient(c.recipient_id)
    moment = app._now(cmd.at)
    items = [(eid, r.expenses[eid].decided or {}) for eid in c.expense_ids]
    total = app._pay(r, str(c.id), c.channel, items, moment)
    c.trigger_event(Claim.Paid, timestamp=moment, total=total, to_person=r.payouts[-1]["to_person"] if r.payouts else total, payer=payer)
    return app._commit(cmd, Result(ids={"claim": str(c.id), "paid": fmt(total)}), c, r)


def auto_claims(app: LedgerCore, cmd: m.AutoClaims) -> Result:
    """R-PH-3 [002 3.3]: the 免申即享 monthly batch. For every consenting recipient, the
    unclaimed expenses served up to the end of the month are claimed (channel ``auto``) by the
    batch's handler, leaving out any that would be rejected. The claims form one batch
    (``ClaimBatch``): automatic claims skip the applicant's paperwork, not the officers, so a
    reviewer, an approver and a payer sign it afterwards (``sign_batch``, R-PH-4 [002 3.4])."""
    year, month = (int(x) for x in cmd.month.split("-"))
    month_end = (date(year + month // 12, month % 12 + 1, 1)) - timedelta(days=1)
    at = cmd.at
    claims = []
    lodges: list[m.LodgeClaim] = []
    # Only a recipient with a consent event can have consented: load just those (ADR 0017).
    consent_topic = f"{Recipient.AutoClaimConsentChanged.__module__}:{Recipient.AutoClaimConsentChanged.__qualname__}"
    asked = set(app._originators([consent_topic]))
    # R-PH-7, R-CLR-1(b) [002 4.5; 000 第七条]: a receipt is aided once in the whole ledger, so a
    # receipt recorded twice (for one recipient or two) is claimed once in the batch and its copies
    # are left out; a claim lodged on a copy would be refused whole at its approval, the
    # recipient's other expenses with it.
    receipts: set[tuple[str, str]] = set()
    for rid in [rid for rid in app.recipient_ids() if rid in asked]:
        r = app.recipient(rid)
        if not r.consent:
            continue
        moment = at or datetime.now(CST)  # people's clock, +08:00
        lodged_on = local_date(moment)
        pending = [
            eid
            for eid, acc in r.expenses.items()
            if acc.decision is None and acc.claim_id is None and acc.facts.service_date <= month_end
        ]
        keep = []
        for eid in app.claim_order(r, pending):
            key = r.expenses[eid].facts.receipt_key
            if key in receipts:
                continue
            exc, _, _ = app._first_rejection(r, [eid], Channel.AUTO.value, lodged_on, None, moment, deciding=False)
            if exc is None:
                keep.append(eid)
                receipts.add(key)
        if not keep:
            continue
        lodges.append(m.LodgeClaim(recipient=str(rid), expenses=keep, handler=cmd.handler, channel=Channel.AUTO, at=at))
    # Group commit (commands.group): the claims are saved many to a transaction, each with its
    # own savepoint, so one that fails (an exception, not a rule's answer) is left out and the
    # others kept; its expenses stay unclaimed for the next batch.
    failed = []
    for lodge, lodged in zip(lodges, app.run_many(lodges)):
        if isinstance(lodged, Exception):
            failed.append(lodge.recipient)
        elif lodged.status == "accepted":
            claims.append(lodged.ids["claim"])
    if not claims:
        return Result(ids={"claims": [], "month": cmd.month, "batch": None, **({"failed": failed} if failed else {})})
    batch = ClaimBatch._create(  # noqa: SLF001
        ClaimBatch.Opened, id=uuid.uuid4(), timestamp=app._now(at), month=cmd.month, handler=cmd.handler, claim_ids=claims
    )
    app.save(batch)
    return Result(ids={"claims": claims, "month": cmd.month, "batch": str(batch.id), **({"failed": failed} if failed else {})})


def sign_batch(app: LedgerCore, cmd: m.SignBatch) -> Result:
    """One signature for a whole 免申即享 batch (R-PH-3, R-PH-4 [002 3.3, 3.4]): the officer reviews,
    approves or pays every claim of the batch that waits for that step, each claim in its own
    transaction, with the officer recorded on each claim; the same separation of duties holds
    on every claim as on a claim lodged by hand. Refused whole (SAME_OFFICER) when the officer
    already signed the batch in another role."""
    b = app.batch(cmd.batch)
    if cmd.role in b.signatures:
        # one signature per role: a second would rewrite who signed what the first signed
        raise errors.ClaimClosed(
            f"the batch is already signed as {cmd.role} by {b.signatures[cmd.role]!r} [002 3.3, 3.4]", field="role")
    signed = {"handler": b.handler, **b.signatures}
    procedure.check_officers(signed.get("handler"), cmd.officer if cmd.role == "reviewer" else signed.get("reviewer"),
                             cmd.officer if cmd.role == "approver" else signed.get("approver"),
                             cmd.officer if cmd.role == "payer" else signed.get("payer"))
    step = {"reviewer": (lambda cid: m.Review(claim=cid, reviewer=cmd.officer, at=cmd.at), "lodged"),
            "approver": (lambda cid: m.Approve(claim=cid, approver=cmd.officer, at=cmd.at), "reviewed"),
            "payer": (lambda cid: m.Pay(claim=cid, payer=cmd.officer, at=cmd.at), "approved")}[cmd.role]
    outcomes: dict[str, str] = {}
    for cid in b.claim_ids:
        if app.claim(cid).status != step[1]:
            continue
        res = app.run(step[0](cid))
        outcomes[cid] = "accepted" if res.status == "accepted" else (res.code or "rejected")
    if "accepted" not in outcomes.values():
        # nothing was signed: the batch records no signature (each claim's refusal is recorded on it)
        if not outcomes:
            raise errors.ClaimClosed(f"no claim of the batch waits for the {cmd.role} [002 3.3, 3.4]", field="batch")
        first = next(iter(outcomes.values()))
        raise errors.Rejected(f"every claim of the batch refused the {cmd.role}'s signature ({first}) [002 3.4]",
                              code=first, rule="R-PH-4", field="officer")
    b.trigger_event(ClaimBatch.Signed, timestamp=app._now(cmd.at), role=cmd.role, officer=cmd.officer, outcomes=outcomes)
    return app._commit(cmd, Result(ids={"batch": str(b.id), "outcomes": outcomes}), b)
