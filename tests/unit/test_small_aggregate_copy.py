"""The copy the aggregate cache hands a command of a claim, a claim batch or a receipt
(``ledger.aggregates._deepcopy_small``, issue 16): exactly a deep copy.

Given each small aggregate after its events, when it is copied and the copy takes the next
events, then the aggregate copied is exactly as it was, the copy is exactly the aggregate rebuilt
from all the events, and no list or map is shared between the two.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ledger.aggregates import Claim, ClaimBatch, Receipt
from ledger.values import CST

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=CST)


def _state(a: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(a).items() if k != "_pending_events"}


def _replay(events: list[Any]) -> Any:
    state = None
    for event in events:
        state = event.mutate(state)
    return state


def _containers(a: Any) -> set[int]:
    return {id(v) for v in vars(a).values() if isinstance(v, (list, dict, set))}


def _check(make: Any, steps: list[Any]) -> None:
    """``make()`` a fresh aggregate; each step changes it. Copy after every prefix of the steps."""
    for cut in range(len(steps) + 1):
        original = make()
        for step in steps[:cut]:
            step(original)
        events = original.collect_events()
        before = copy.deepcopy(_state(original))  # the library's generic walk, for comparison

        twin = copy.deepcopy(original)

        assert type(twin) is type(original) and twin is not original
        assert _state(twin) == _state(original) == before
        assert not _containers(twin) & _containers(original)
        for step in steps[cut:]:
            step(twin)
        assert _state(original) == before  # the cached aggregate never sees the copy's events
        assert _state(twin) == _state(_replay(events + twin.collect_events()))


def test_a_claim_copy_is_independent_through_every_claim_event():
    def make() -> Claim:
        return Claim(recipient_id="r1", expense_ids=["e1", "e2"], handler="h", channel="counter",
                     proxy_id_number=None, street="新华路街道", lodged_on="2026-03-02")

    _check(make, [
        lambda c: c.trigger_event(Claim.Reviewed, reviewer="rev", timestamp=T0),
        lambda c: c.trigger_event(Claim.Approved, approver="app", timestamp=T0 + timedelta(hours=1)),
        lambda c: c.trigger_event(Claim.Paid, total=Decimal("10.00"), to_person=Decimal("10.00"), payer="pay", timestamp=T0 + timedelta(hours=2)),
    ])
    _check(make, [
        lambda c: c.trigger_event(Claim.Rejected, code="DUPLICATE", rule="R-PH-7", message="paid once", expense_id="e1", timestamp=T0),
    ])


def test_a_receipt_copy_is_independent_through_every_receipt_event():
    def make() -> Receipt:
        return Receipt(facility_code="F01", invoice_no="INV-1")

    _check(make, [
        lambda rc: rc.trigger_event(Receipt.ExpenseNoted, expense_id="e1", recipient_id="r1", timestamp=T0),
        lambda rc: rc.trigger_event(Receipt.Aided, expense_id="e1", channel="one_stop", timestamp=T0),
        lambda rc: rc.trigger_event(Receipt.ExpenseNoted, expense_id="e2", recipient_id="r2", timestamp=T0),
    ])


def test_a_claim_batch_copy_is_independent_through_its_signatures():
    def make() -> ClaimBatch:
        return ClaimBatch(month="2026-03", handler="h", claim_ids=["c1", "c2"])

    _check(make, [
        lambda b: b.trigger_event(ClaimBatch.Signed, role=role, officer=f"o-{role}", outcomes={"c1": "accepted"}, timestamp=T0)
        for role in ("reviewer", "approver", "payer")
    ])


def test_state_that_is_not_flat_is_deep_copied_too():
    # Given a receipt holding, besides its own fields, a map of lists and a list of maps
    rc = Receipt(facility_code="F01", invoice_no="INV-1")
    rc.collect_events()
    rc.extra = {"k": ["a"]}
    rc.rows = [{"n": 1}]
    # When it is copied
    twin = copy.deepcopy(rc)
    # Then nothing nested is shared: changing the copy's leaves the original as it was
    twin.extra["k"].append("b")
    twin.rows[0]["n"] = 2
    assert rc.extra == {"k": ["a"]} and rc.rows == [{"n": 1}]
    assert twin.extra == {"k": ["a", "b"]} and twin.rows == [{"n": 2}]
