"""A person moves district (R-CAP-4 [001; 000 第七条]; ADR 0020).

Each district keeps its own store, so a move is two commands in two ledgers:

- ``TransferOut`` in the district the person leaves records ``TransferredOut``: the city scheme's
  cap usage per (scheme, year, kind) as that district decided it (plus any it had itself carried
  in), the receipts aided there, and its store position just before the move. Claims lodged there
  before the move are finished there; a claim lodged afterwards is refused (TRANSFERRED_OUT,
  ``commands.core.LedgerCore._check_claimable``).
- ``TransferIn`` in the district the person joins records ``Enrolled`` (the id number, name and
  street, encrypted at rest as every enrolment, ADR 0015) and ``TransferredIn`` (categories,
  insurance, the carried usage, the receipts, the source district and position). The city
  scheme's annual caps there start from the carried usage (``Knowledge.carried_caps``); the
  四医联动 top-up and its monthly count start afresh: they belong to the district that pays.

:func:`transfer` runs both, each in its own ledger, and can be run again after a failure between
the two: the second step is built from the first's recorded event.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from eventsourcing.application import AggregateNotFoundError

from commands import models as m
from commands.core import LedgerCore, Result
from ledger import errors
from ledger.aggregates import Recipient
from ledger.facts import DecisionRef
from ledger.money import fmt
from ledger.values import ERASED, Scheme

RULE = "R-CAP-4"
CLAUSE = "[001; 000 第七条]"

#: The city scheme whose limits are the person's, city-wide (R-CAP-4); the district top-up is not.
CITY_SCHEMES = (Scheme.SHANGHAI_MEDICAL_AID.value,)


def transfer_out(app: LedgerCore, cmd: m.TransferOut) -> Result:
    """R-CAP-4 [001; 000 第七条]: record the move in the district the person leaves."""
    r = app.recipient(cmd.recipient)
    gone = getattr(r, "transferred_out", None)
    if gone is not None:
        raise errors.Conflict(
            f"the recipient already moved to district {gone['to_district']} ({RULE} {CLAUSE})",
            code="TRANSFERRED_OUT", rule=RULE, field="recipient",
        )
    if r.id_number == ERASED:
        raise errors.PersonalDataErased(f"{RULE}: a move carries the person's record, but their personal data was erased (ADR 0015)", rule=RULE, field="recipient")
    if cmd.from_district is not None and cmd.from_district == cmd.to_district:
        raise errors.InvalidInput(f"to_district: the person is already in district {cmd.to_district}", field="to_district")
    moment = app._now(cmd.at)
    position = int(app.recorder.max_notification_id() or 0)
    r.trigger_event(
        Recipient.TransferredOut,
        timestamp=moment,
        to_district=cmd.to_district,
        from_district=cmd.from_district,
        position=position,
        carried_caps=city_usage(app, r, moment),
        aided_receipts=aided_receipts(r),
        in_flight=_in_flight(r),
    )
    return app._commit(cmd, Result(ids={"recipient": str(r.id), "to_district": cmd.to_district, "position": position}), r)


def city_usage(app: LedgerCore, r: Recipient, at: datetime) -> list[dict[str, Any]]:
    """The city scheme's cap usage per (scheme, year, kind): the aid due on the expenses decided
    here under what the ledger knows now (R-CAP-2), each bucket started from what was carried in
    (R-CAP-4). The expenses of claims still in flight (lodged before the move, finished here)
    count as if decided now, so that the cap room they will use here is not spent again in the
    new district (nothing is paid twice); the event lists them (``in_flight``). Every year is
    carried, not only the current one: an expense invoiced last year may still be claimed within
    the deadline (R-PH-5) and counts against last year's cap."""
    used: dict[tuple[str, int, str], Any] = dict(r.knowledge().carried_caps)
    refs = r.decided_refs()
    seq = r.decision_seq
    claims: dict[str, str] = {}
    for pos, eid in enumerate(_in_flight(r)):
        cid = r.expenses[eid].claim_id
        if cid not in claims:
            seq += 1
            claims[cid] = app.claim(cid).channel
        refs.append(DecisionRef(eid, claims[cid], cid, at, seq, pos))
    if refs:
        result = app._pass(r, r.expense_facts(), refs)
        for bucket, (amount, _cap) in result.caps.items():
            used[bucket] = amount
    return [
        {"scheme": s, "year": y, "kind": k, "used": fmt(v)}
        for (s, y, k), v in sorted(used.items())
        if s in CITY_SCHEMES
    ]


def _in_flight(r: Recipient) -> list[str]:
    """Expenses on a claim lodged here and not yet decided: the claim is finished here (R-CAP-4)."""
    return [eid for eid, acc in r.expenses.items() if acc.decision is None and acc.claim_id is not None]


def aided_receipts(r: Recipient) -> list[list[str]]:
    """The receipts aided for the person here, or on a claim in flight here (and those carried in):
    a duplicate in every other district (R-CAP-4, R-CLR-1(b) [002 4.5; 000 第七条])."""
    keys = {acc.facts.receipt_key for acc in r.expenses.values() if acc.decision is not None or acc.claim_id is not None}
    keys |= set(getattr(r, "carried_receipts", {}))
    return [list(k) for k in sorted(keys)]


def transfer_in(app: LedgerCore, cmd: m.TransferIn) -> Result:
    """R-CAP-4 [001; 000 第七条]: the person joins this district with what the move carries."""
    rid = app.recipient_id_for(cmd.id_number)
    try:
        existing = app.repository.get(rid)
    except AggregateNotFoundError:
        existing = None
    if existing is not None:
        came = getattr(existing, "transferred_in", None)
        if came is not None and came["from_district"] == cmd.from_district and came["source_position"] == cmd.source_position:
            return Result(ids={"recipient": str(rid)})  # this move is already recorded here
        raise errors.Conflict(
            "the person is already held in this district (a move back into a district the person "
            f"left is not supported yet): nothing recorded ({RULE} {CLAUSE})",
            code="ALREADY_ENROLLED", rule=RULE, field="id_number",
        )
    moment = app._now(cmd.at)
    r = Recipient._create(  # noqa: SLF001
        Recipient.Enrolled, id=rid, timestamp=moment, id_number=cmd.id_number, name=cmd.name, street=cmd.street
    )
    r.trigger_event(
        Recipient.TransferredIn,
        timestamp=moment,
        from_district=cmd.from_district,
        source_recipient=cmd.source_recipient,
        source_position=cmd.source_position,
        categories=[_category(c) for c in cmd.categories],
        insurance=[_insurance(i) for i in cmd.insurance],
        carried_caps=[{"scheme": c.scheme, "year": c.year, "kind": c.kind, "used": fmt(c.used)} for c in cmd.carried_caps],
        aided_receipts=[list(k) for k in cmd.aided_receipts],
    )
    return app._commit(cmd, Result(ids={"recipient": str(rid)}), r)


def transfer_command(r: Recipient, from_district: str, at: Any = None, command_id: str | None = None) -> m.TransferIn:
    """The ``TransferIn`` that the source district's recorded ``TransferredOut`` calls for."""
    gone = getattr(r, "transferred_out", None)
    if gone is None:
        raise errors.Conflict(f"the recipient has not moved out of district {from_district} ({RULE})", code="NOT_TRANSFERRED", rule=RULE, field="recipient")
    return m.TransferIn(
        from_district=from_district,
        source_recipient=str(r.id),
        source_position=gone["position"],
        id_number=r.id_number,
        name=r.name,
        street=r.street,
        categories=[_fact(c, "kind", "category", "valid_from", "valid_to", "subtype", "determined_on", "means_test_expenses_from") for c in r.category_facts],
        insurance=[_fact(i, "kind", "scheme", "valid_from", "valid_to") for i in r.insurance_facts],
        carried_caps=gone["carried_caps"],
        aided_receipts=[tuple(k) for k in gone["aided_receipts"]],
        at=at,
        command_id=command_id,
    )


def transfer(source: LedgerCore, target: LedgerCore, recipient: str, *, from_district: str, to_district: str,
             at: Any = None, command_id: str | None = None) -> Result:
    """Both steps of a move, each in its own district's ledger (R-CAP-4 [001; 000 第七条]). Run
    again after a failure between them, it finishes the move without recording anything twice."""
    r = source.recipient(recipient)
    gone = getattr(r, "transferred_out", None)
    if gone is None:
        out = source.run(m.TransferOut(recipient=recipient, to_district=to_district, from_district=from_district, at=at,
                                       command_id=command_id and f"{command_id}:out"))
        if out.status != "accepted":
            return out
        r = source.recipient(recipient)
    elif gone["to_district"] != to_district:
        return Result.rejected(errors.Conflict(
            f"the recipient already moved to district {gone['to_district']}, not {to_district} ({RULE} {CLAUSE})",
            code="TRANSFERRED_OUT", rule=RULE, field="to_district"))
    joined = target.run(transfer_command(r, from_district, at, command_id and f"{command_id}:in"))
    if joined.status != "accepted":
        return joined
    return Result(ids={"recipient": joined.ids["recipient"], "source_recipient": str(r.id), "from_district": from_district,
                       "to_district": to_district, "source_position": r.transferred_out["position"]})


def _fact(fact: Any, *names: str) -> dict[str, Any]:
    out = {}
    for name in names:
        value = getattr(fact, name)
        out[name] = value.isoformat() if isinstance(value, date) else value
    return out


def _category(c: dict[str, Any]) -> dict[str, Any]:
    return _checked(c, "categories", ("grant", "revoke"), "category", ("subtype", "determined_on", "means_test_expenses_from"))


def _insurance(i: dict[str, Any]) -> dict[str, Any]:
    return _checked(i, "insurance", ("start", "end"), "scheme", ())


def _checked(fact: dict[str, Any], field: str, kinds: tuple[str, ...], name: str, extra: tuple[str, ...]) -> dict[str, Any]:
    """A carried fact, resolved to what the event stores: dates as ISO text, checked."""
    if fact.get("kind") not in kinds or not isinstance(fact.get(name), str) or not fact.get(name):
        raise errors.InvalidInput(f"{field}: each needs kind ({' or '.join(kinds)}) and {name}", field=field)
    out: dict[str, Any] = {"kind": fact["kind"], name: fact[name]}
    for key in ("valid_from", "valid_to", *extra):
        value = fact.get(key)
        if key in ("valid_from", "valid_to", "determined_on", "means_test_expenses_from") and value is not None:
            try:
                value = date.fromisoformat(str(value)).isoformat()
            except ValueError:
                raise errors.InvalidInput(f"{field}: {key} {value!r} is not a date (YYYY-MM-DD)", field=field) from None
        out[key] = value
    if out["valid_from"] is None:
        raise errors.InvalidInput(f"{field}: each needs valid_from", field=field)
    return out
