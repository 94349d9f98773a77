"""Internal aggregate events → public messages (ADR 0011).

The one place that knows both shapes. Each mapped internal event class has a function here; the
internal events in :data:`SKIPPED` are left out on purpose, with the reason; any other topic (an
event class added later, another application's event) is skipped and counted by the relay until
someone decides what it means for subscribers. Mapping never reads anything but the event itself
and, for claim events that do not name their recipient, ``claim_recipient`` (the relay resolves a
claim's recipient from the claim's own stream).
"""

from __future__ import annotations

import re
import uuid
from datetime import date
from decimal import Decimal
from typing import Any, Callable

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.utils import get_topic

from infra.contract import messages as pm
from ledger.aggregates import Claim, ClaimBatch, ClearingLog, CommandRecord, PolicyLedger, Receipt, Recipient
from ledger.money import fmt

#: Namespace of public event ids: ``uuid5(EVENT_NAMESPACE, "<originator id>:<version>")``.
EVENT_NAMESPACE = uuid.UUID("2b0f8d7e-5a41-4f0c-9a57-6f3c1c7e4b90")

_RULE_ID = re.compile(r"\bR-[A-Z0-9]+-\d+\b")

ClaimRecipient = Callable[[uuid.UUID], str | None]


def event_id(originator_id: uuid.UUID | str, originator_version: int) -> uuid.UUID:
    """Stable across replays and relays: the same stored event always gets the same id."""
    return uuid.uuid5(EVENT_NAMESPACE, f"{originator_id}:{originator_version}")


def _money(value: Any) -> str | None:
    return None if value is None else fmt(Decimal(str(value)))


def _amounts(d: dict[str, Any] | None) -> dict[str, str]:
    return {k: fmt(Decimal(str(v))) for k, v in sorted((d or {}).items())}


def _date(value: str | None) -> date | None:
    return date.fromisoformat(value) if value else None


def _rule_ids(*parts: Any) -> list[str]:
    found: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, str):
            found.update(_RULE_ID.findall(x))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    for p in parts:
        walk(p)
    return sorted(found)


def _public_value(value: Any) -> Any:
    """A parameter value as stored (decimals as ``{"decimal": "…"}``) → plain JSON."""
    if isinstance(value, dict) and set(value) == {"decimal"}:
        return str(value["decimal"])
    if isinstance(value, dict):
        return {k: _public_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_public_value(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


def _allocations(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"case_id": a["case"], "amount": _money(a["amount"]), "by_fund": _amounts(a.get("by_fund"))} for a in items]


# ---------------------------------------------------------------------------------- per event
# Each function returns (message class, recipient_key, effective_date, payload).
Mapped = tuple[type[pm.Envelope], str | None, date | None, dict[str, Any]]


def _enrolled(e: Any, _: ClaimRecipient) -> Mapped:
    # The id number and the name stay in the ledger: the key is the aggregate id.
    return pm.RecipientEnrolled, str(e.originator_id), None, {"street": e.street or ""}


def _granted(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {
        "category": e.category,
        "valid_from": e.valid_from,
        "valid_to": e.valid_to,
        "subtype": e.subtype,
        "determined_on": e.determined_on,
        "means_test_expenses_from": e.means_test_expenses_from,
    }
    return pm.CategoryGranted, str(e.originator_id), _date(e.valid_from), payload


def _revoked(e: Any, _: ClaimRecipient) -> Mapped:
    return pm.CategoryRevoked, str(e.originator_id), _date(e.valid_from), {"category": e.category, "valid_from": e.valid_from}


def _subsidy(s: dict[str, Any] | None) -> dict[str, Any] | None:
    if not s:
        return None
    return {"kind": s.get("kind"), "category": s.get("category"), "amount": _money(s.get("amount") or "0"), "fund": s.get("fund", "city"), "rule": s.get("rule", "R-INS-2")}


def _insured(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {"scheme": e.scheme, "valid_from": e.valid_from, "valid_to": e.valid_to, "subsidy": _subsidy(e.subsidy)}
    return pm.InsuranceEnrolled, str(e.originator_id), _date(e.valid_from), payload


def _subsidised(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {"scheme": e.scheme, "valid_from": e.valid_from, "subsidy": _subsidy(e.subsidy)}
    return pm.InsuranceSubsidised, str(e.originator_id), _date(e.valid_from), payload


def _insurance_ended(e: Any, _: ClaimRecipient) -> Mapped:
    return pm.InsuranceEnded, str(e.originator_id), _date(e.valid_to), {"scheme": e.scheme, "valid_to": e.valid_to}


def _mutual_aid(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {"year": e.year, "has_home_insurance": e.has_home_insurance, "home_insurance_deductible": _money(e.home_insurance_deductible)}
    return pm.MutualAidContributionPaid, str(e.originator_id), date(e.year, 1, 1), payload


def _expense(e: Any, _: ClaimRecipient) -> Mapped:
    f = e.facility or {}
    payload = {
        "expense_id": e.expense_id,
        "visit_type": e.visit_type,
        "facility": {
            "kind": f.get("kind"),
            "level": f.get("level"),
            "district_designated": bool(f.get("district_designated", False)),
            "out_of_province": bool(f.get("out_of_province", False)),
            "code": f.get("code"),
        },
        "service_date": e.service_date,
        "invoice_date": e.invoice_date,
        "invoice_no": e.invoice_no,
        "total": _money(e.total),
        "in_scope": _money(e.in_scope),
        "basic_insurance_paid": _money(e.basic_insurance_paid),
        "duplicate_of": e.duplicate_of,
        "source": e.source,
    }
    return pm.ExpenseRecorded, str(e.originator_id), _date(e.service_date), payload


def _settled(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {"expense_id": e.expense_id, "scheme": e.scheme, "amount": _money(e.amount)}
    return pm.InsuranceSettled, str(e.originator_id), None, payload


def _decided(e: Any, _: ClaimRecipient) -> Mapped:
    decisions = [
        {
            "expense_id": d["expense"],
            "granted": bool(d.get("granted")),
            "total": _money(d.get("total") or "0"),
            "self_pay": _money(d.get("self_pay")),
            "by_scheme": _amounts(d.get("by_scheme")),
            "by_fund": _amounts(d.get("by_fund")),
            "category": d.get("category"),
            "code": d.get("code"),
            "rule_ids": _rule_ids(d.get("rule"), d.get("trace")),
        }
        for d in e.decisions
    ]
    payload = {"claim_id": e.claim_id, "channel": e.channel, "decisions": decisions, "policy_hash": (e.knowledge or {}).get("policy_hash")}
    return pm.AidDecided, str(e.originator_id), None, payload


def _reassessed(e: Any, _: ClaimRecipient) -> Mapped:
    results = [
        {
            "expense_id": r["expense"],
            "previous_total": _money((r.get("previous") or {}).get("total")),
            "total": _money((r.get("due") or {}).get("total") or "0"),
            "by_scheme": _amounts((r.get("due") or {}).get("by_scheme")),
            "by_fund": _amounts((r.get("due") or {}).get("by_fund")),
        }
        for r in e.results
    ]
    return pm.AidReassessed, str(e.originator_id), None, {"trigger": e.trigger, "results": results}


def _paid(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {
        "claim_id": e.claim_id,
        "channel": e.channel,
        "payments": [
            {"expense_id": p["expense"], "total": _money(p["total"]), "by_scheme": _amounts(p.get("by_scheme")), "by_fund": _amounts(p.get("by_fund")), "channel": p.get("channel")}
            for p in e.payments
        ],
        "offsets": _allocations(e.offsets),
        "to_person": _money(e.to_person),
    }
    return pm.AidPaid, str(e.originator_id), None, payload


def _case_opened(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {"case_id": e.case_id, "expense_id": e.expense_id, "trigger": e.trigger, "amount": _money(e.amount), "by_fund": _amounts(e.by_fund), "by_scheme": _amounts(e.by_scheme)}
    return pm.ClearingCaseOpened, str(e.originator_id), None, payload


def _repaid(e: Any, _: ClaimRecipient) -> Mapped:
    return pm.ClearingRepaymentReceived, str(e.originator_id), None, {"amount": _money(e.amount), "allocations": _allocations(e.allocations)}


def _written_off(e: Any, _: ClaimRecipient) -> Mapped:
    # The officer's free-text reason is left out (it may name the person).
    payload = {"officer": e.officer, "approver": e.approver, "allocations": _allocations(e.allocations)}
    return pm.ClearingWrittenOff, str(e.originator_id), None, payload


def _supplementary(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {"supplementary_id": e.supplementary_id, "expense_id": e.expense_id, "trigger": e.trigger, "amount": _money(e.amount), "by_fund": _amounts(e.by_fund), "by_scheme": _amounts(e.by_scheme)}
    return pm.SupplementaryDue, str(e.originator_id), None, payload


def _suspended(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {"scheme": e.scheme, "valid_from": e.valid_from, "expense_id": e.expense_id}
    return pm.SuspensionStarted, str(e.originator_id), _date(e.valid_from), payload


def _lifted(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {"scheme": e.scheme, "lifted_on": e.lifted_on, "reviewer": e.reviewer}
    return pm.SuspensionLifted, str(e.originator_id), _date(e.lifted_on), payload


def _ended(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {"scheme": e.scheme, "expense_id": e.expense_id, "ended_on": e.ended_on, "reason": e.reason}
    return pm.SuspensionEnded, str(e.originator_id), _date(e.ended_on), payload


def _social_help(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {"amount": _money(e.amount), "organisation": e.organisation, "period": e.period}
    return pm.SocialHelpGranted, str(e.originator_id), None, payload


def _claim_lodged(e: Any, _: ClaimRecipient) -> Mapped:
    payload = {
        "claim_id": str(e.originator_id),
        "recipient_id": e.recipient_id,
        "expense_ids": list(e.expense_ids),
        "channel": e.channel,
        "lodged_on": e.lodged_on,
        "handler": e.handler,
        "by_proxy": bool(e.proxy_id_number),
    }
    return pm.ClaimLodged, e.recipient_id, _date(e.lodged_on), payload


def _claim_event(cls: type[pm.Envelope], fields: Callable[[Any], dict[str, Any]]) -> Callable[[Any, ClaimRecipient], Mapped]:
    def mapper(e: Any, claim_recipient: ClaimRecipient) -> Mapped:
        rid = claim_recipient(e.originator_id)
        return cls, rid, None, {"claim_id": str(e.originator_id), "recipient_id": rid or "", **fields(e)}

    return mapper


def _amended(e: Any, _: ClaimRecipient) -> Mapped:
    v = e.version
    payload = {
        "name": v["name"],
        "value": _public_value(v.get("value")),
        "effective_from": v["effective_from"],
        "effective_to": v.get("effective_to"),
        "reference": v.get("reference", ""),
        "local_setting": bool(v.get("local_setting", False)),
    }
    return pm.PolicyParameterAmended, None, _date(v["effective_from"]), payload


MAPPERS: dict[type, Callable[[Any, ClaimRecipient], Mapped]] = {
    Recipient.Enrolled: _enrolled,
    Recipient.CategoryGranted: _granted,
    Recipient.CategoryRevoked: _revoked,
    Recipient.InsuranceEnrolmentStarted: _insured,
    Recipient.InsuranceEnrolmentEnded: _insurance_ended,
    Recipient.EnrolmentSubsidised: _subsidised,
    Recipient.MutualAidContributionPaid: _mutual_aid,
    Recipient.ExpenseRecorded: _expense,
    Recipient.InsuranceSettled: _settled,
    Recipient.AidDecided: _decided,
    Recipient.AidReassessed: _reassessed,
    Recipient.AidPaid: _paid,
    Recipient.ClearingCaseOpened: _case_opened,
    Recipient.RepaymentReceived: _repaid,
    Recipient.WriteOffApproved: _written_off,
    Recipient.SupplementaryPayoutDue: _supplementary,
    Recipient.SuspensionStarted: _suspended,
    Recipient.SuspensionLifted: _lifted,
    Recipient.SuspensionEnded: _ended,
    Recipient.SocialHelpGranted: _social_help,
    Claim.Lodged: _claim_lodged,
    Claim.Reviewed: _claim_event(pm.ClaimReviewed, lambda e: {"reviewer": e.reviewer}),
    Claim.Approved: _claim_event(pm.ClaimApproved, lambda e: {"approver": e.approver}),
    Claim.Rejected: _claim_event(pm.ClaimRejected, lambda e: {"code": e.code, "rule": e.rule, "message": e.message, "expense_id": e.expense_id}),
    Claim.Paid: _claim_event(pm.ClaimPaid, lambda e: {"total": _money(e.total), "to_person": _money(e.to_person)}),
    PolicyLedger.ParameterAmended: _amended,
}

#: Internal events deliberately not published, and why.
SKIPPED: dict[type, str] = {
    Recipient.AutoClaimConsentChanged: "the person's consent is procedure state of the ledger; subscribers see the auto claims it leads to",
    Recipient.ClaimAttached: "internal reservation of expenses by an open claim; claim.lodged/rejected say the same publicly",
    Recipient.DuplicateAttempted: "audit trail for clearing officers; the rejection itself is claim.rejected (DUPLICATE)",
    Recipient.CityUsageCorrected: "a district's corrected read of the city view (R-CAP-4, R-CLR-1(e)); what it changes is published as aid.reassessed and clearing.case_opened",
    PolicyLedger.Opened: "bookkeeping of the policy stream; carries nothing a subscriber uses",
    PolicyLedger.PackPublished: "whole policy packs are published as documents (ledger/policy/packs), not as messages",
    CommandRecord.Recorded: "idempotency record of a client command id; internal",
    ClaimBatch.Opened: "a 免申即享 batch groups claims for one signature per role; each claim's own events are published",
    ClaimBatch.Signed: "a 免申即享 batch groups claims for one signature per role; each claim's own events are published",
    Receipt.Opened: "the ledger-wide receipt index (R-CLR-1(b)); expense.recorded carries duplicate_of publicly",
    Receipt.ExpenseNoted: "the ledger-wide receipt index (R-CLR-1(b)); expense.recorded carries duplicate_of publicly",
    Receipt.Aided: "the ledger-wide receipt index (R-PH-7); aid.decided says the same publicly",
    Recipient.WriteOffProposed: "a write-off awaiting a second officer (R-CLR-3); nothing moves until clearing.written_off",
    Recipient.WriteOffRefused: "a refused write-off proposal (R-CLR-3); no money moves, the case stays open",
    ClearingLog.Opened: "bookkeeping of the clearing runs' positions; internal",
    ClearingLog.RunRecorded: "where the last clearing run stopped in the log; the cases it opened are published",
    Recipient.TransferredOut: "a move between districts (R-CAP-4) carries the person's receipts and cap usage between two district stores; the city view sums each district's own aid.decided/aid.reassessed, so publishing the carried usage would count it twice",
    Recipient.TransferredIn: "a move between districts (R-CAP-4) carries the person's record (personal data) and usage into the new district's store; the city view sums each district's own aid.decided/aid.reassessed, so publishing the carried usage would count it twice",
}

#: Topics the relay decodes; everything else is skipped without decoding.
MAPPED_TOPICS: dict[str, type] = {get_topic(cls): cls for cls in MAPPERS}
SKIPPED_TOPICS: dict[str, str] = {get_topic(cls): why for cls, why in SKIPPED.items()}


def to_public(event: DomainEventProtocol, position: int, claim_recipient: ClaimRecipient | None = None) -> pm.Envelope | None:
    """The public message for one stored event at ``position``, or None when it is not published."""
    mapper = MAPPERS.get(type(event))
    if mapper is None:
        return None
    cls, recipient_key, effective, payload = mapper(event, claim_recipient or (lambda _cid: None))
    return cls.model_validate(
        {
            "event_id": event_id(event.originator_id, event.originator_version),
            "position": position,
            "recipient_key": recipient_key,
            "recorded_at": event.timestamp,
            "effective_date": effective,
            "payload": payload,
        }
    )


def checkpoint_sealed(number: int, position: int, hash_hex: str, recorded_at: str, kind: str, signature: str, previous: str) -> pm.ChainCheckpointSealed:
    """The message for one numbered checkpoint of the integrity chain (ADR 0016): its id is stable
    for that checkpoint and differs between stores (the hash is part of it)."""
    from datetime import datetime

    return pm.ChainCheckpointSealed(
        event_id=uuid.uuid5(EVENT_NAMESPACE, f"chain-checkpoint:{number}:{hash_hex}"),
        position=position,
        recipient_key=None,
        recorded_at=datetime.fromisoformat(recorded_at),
        payload=pm.ChainCheckpointSealedPayload(number=number, hash=hash_hex, kind=kind, signature=signature, previous_signature=previous),
    )


def replay_completed(destination: str, up_to: int) -> pm.ReplayCompleted:
    """The marker closing a replay into ``destination`` (ADR 0011, catch-up)."""
    from datetime import datetime, timezone

    return pm.ReplayCompleted(
        event_id=uuid.uuid5(EVENT_NAMESPACE, f"replay:{destination}:{up_to}"),
        position=up_to,
        recipient_key=None,
        recorded_at=datetime.now(timezone.utc),
        payload=pm.ReplayCompletedPayload(up_to_position=up_to),
    )
