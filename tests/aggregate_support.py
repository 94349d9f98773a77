"""Support shared by the aggregate tests: the kinds of recipient event, a recipient's state, the
recipient events no scenario records, a counter of the saves the store refused, and every
recipient of every public scenario."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from collections.abc import Iterator
from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from infra import scenario as sc
from ledger.aggregates import Recipient
from ledger.snapshots import StateSnapshot
from scenario_store import SCENARIOS

#: Every kind of recipient event (snapshots aside).
KINDS = {
    name
    for name, value in vars(Recipient).items()
    if isinstance(value, type) and issubclass(value, Aggregate.Event) and not issubclass(value, StateSnapshot)
}


def state_of(r: Recipient) -> dict[str, Any]:
    """A recipient's state as two replays must agree on it (pending events aside)."""
    return {k: v for k, v in vars(r).items() if k != "_pending_events"}


def extra_events(r: Recipient, at: datetime) -> None:
    """The kinds no scenario records: an insurance enrolment ended, a write-off proposed and
    refused (on a case if there is one), a corrected city read, a move in and out of the district,
    a subsidy found due after the enrolment."""
    r.trigger_event(Recipient.InsuranceEnrolmentEnded, timestamp=at, scheme="resident", valid_to="2026-12-31")
    case = next(iter(r.cases), None)
    cases = [{"case": case, "amount": "1.00"}] if case else []
    r.trigger_event(Recipient.WriteOffProposed, timestamp=at + timedelta(seconds=1), proposal_id="p1", officer="o1", reason="test", amount=Decimal("1.00"), cases=cases)
    r.trigger_event(Recipient.WriteOffRefused, timestamp=at + timedelta(seconds=2), proposal_id="p1", officer="o2", reason="no")
    # a clearing run's corrected read of the city view (R-CAP-4, R-CLR-1(e))
    block = {"district": "changning", "positions": {"xuhui": 7}, "caps": [{"scheme": "shanghai.medical_aid", "year": 2026, "kind": "outpatient",
             "elsewhere": {"xuhui": "900.00"}, "counted": "900.00"}], "corrected": {"counted_before": "0.00", "reason": "test"}}
    r.trigger_event(Recipient.CityUsageCorrected, timestamp=at + timedelta(seconds=2, microseconds=500), positions={"xuhui": 7},
                    results=[{"expense": next(iter(r.expenses), "e1"), "previous": None, "city": block}])
    # a move between districts (R-CAP-4): what arrives with a person, and what leaves with them
    caps = [{"scheme": "shanghai.medical_aid", "year": 2026, "kind": "outpatient", "used": "900.00"}]
    r.trigger_event(Recipient.TransferredIn, timestamp=at + timedelta(seconds=3), from_district="xuhui", source_recipient="s1",
                    source_position=7, categories=[{"kind": "grant", "category": "dibao", "valid_from": "2020-01-01"}],
                    insurance=[{"kind": "start", "scheme": "resident", "valid_from": "2015-01-01"}], carried_caps=caps,
                    aided_receipts=[["x-code", "inv-1"]])
    # R-INS-2: a subsidy found due by a category granted after the enrolment it belongs to
    r.trigger_event(Recipient.EnrolmentSubsidised, timestamp=at + timedelta(seconds=3, microseconds=500), scheme="resident",
                    valid_from="2015-01-01", enrolment_at=at.isoformat(),
                    subsidy={"kind": "fixed_subsidy", "category": "low_income", "amount": "300.00", "fund": "city", "rule": "R-INS-2", "clause": "[001 二(二)1]"})
    r.trigger_event(Recipient.TransferredOut, timestamp=at + timedelta(seconds=4), to_district="jingan", from_district="changning",
                    position=9, carried_caps=caps, aided_receipts=[["x-code", "inv-1"]], in_flight=[])


def count_conflicts(app: Any) -> Counter:
    """Count the saves the store refuses (a stale aggregate, written or read)."""
    seen: Counter = Counter()
    save = app.save

    def counted(*objs, **kw):
        try:
            return save(*objs, **kw)
        except IntegrityError:
            seen["conflict"] += 1
            raise

    app.save = counted  # type: ignore[method-assign]
    return seen


def scenario_recipients() -> Iterator[tuple[str, Any, int, str]]:
    """(scenario file, the application it was replayed into, n, recipient id) for every recipient of
    every public scenario, each scenario replayed once."""
    for path in sorted(SCENARIOS.glob("*.yaml")):
        _, runner = sc.replay(path.read_text(encoding="utf-8"))
        for n, rid in enumerate(dict.fromkeys(runner.app.recipient_ids())):
            yield path.name, runner.app, n, rid


def recorded_decision(app: Any, rid: Any, eid: str) -> dict[str, Any]:
    """The first decision on expense ``eid`` as its ``AidDecided`` event recorded it, trace
    included (the recipient's state keeps it without: ``ledger.aggregates.kept_summary``)."""
    import uuid

    from commands.queries import recorded_summaries

    decided, _ = recorded_summaries(app.events.get(uuid.UUID(str(rid))), eid)
    assert decided is not None, f"no decision recorded on {eid}"
    return decided
