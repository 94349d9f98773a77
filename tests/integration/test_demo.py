"""The demo generator at a small scale, on SQLite and PostgreSQL: everything it planned is recorded
through the handlers, recorded times only go forward, and every payout adds up."""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from decimal import Decimal

import pytest
from stdnum.cn import ric

from infra import demo
from infra.ops import event_count
from infra.settings import Settings
from ledger.aggregates import Claim, Recipient

UNTIL = date(2026, 11, 24)


def _money(d: dict) -> dict[str, Decimal]:
    return {k: Decimal(v) for k, v in d.items() if Decimal(v) != 0}


def test_a_small_demo_is_recorded_consistently(settings_for: Settings) -> None:
    app = demo.demo_app(settings_for)
    try:
        summary = demo.generate(app, recipients=20, seed=11, until=UNTIL)
        planned = demo.plan(recipients=20, seed=11, until=UNTIL, id_for=app.recipient_id_for)

        assert summary.recipients == 20
        assert summary.expenses == sum(1 for s in planned.steps if s.kind == "record_expense") > 100
        assert summary.duplicates >= 1 and summary.one_stop > 0 and summary.claims["paid"] > 0
        assert summary.events == event_count(app)

        # recorded times never go back along the log (one command's events share its time);
        # enrolments carry valid id numbers
        previous = None
        claims_paid: dict[str, Decimal] = {}
        for n in app.recorder.select_notifications(start=1, limit=1_000_000):
            event = app.mapper.to_domain_event(n)
            assert previous is None or event.timestamp >= previous
            previous = event.timestamp
            if isinstance(event, Recipient.Enrolled):
                assert ric.is_valid(event.id_number)
            if isinstance(event, Claim.Paid):
                claims_paid[str(event.originator_id)] = event.total
        assert previous.date() <= UNTIL

        decided_per_receipt: dict[tuple, int] = defaultdict(int)
        for rid in app.recipient_ids():
            r = app.recipient(rid)
            touched = {c.expense_id for c in r.cases.values()} | {s.expense_id for s in r.supplementary.values()}
            for eid, acc in r.expenses.items():
                if acc.facts.receipt_key and acc.decision is not None:
                    decided_per_receipt[acc.facts.receipt_key] += 1
                assert sum(acc.paid_by_fund.values(), Decimal(0)) == acc.paid_total
                assert sum(acc.paid_by_scheme.values(), Decimal(0)) == acc.paid_total
                if acc.decision is None:
                    assert acc.paid_total == 0
                    continue
                decided = acc.decided
                claim_id = acc.decision.claim_id
                if claim_id is not None and app.claim(claim_id).status == "approved":
                    assert acc.paid_total == 0  # approved, to be paid on the next payment day (R-PH-6)
                elif eid not in touched:
                    # no clearing, no supplementary: paid is exactly what was decided
                    assert acc.paid_total == Decimal(decided["total"])
                    assert _money(acc.paid_by_scheme) == _money(decided["by_scheme"])
                    assert _money(acc.paid_by_fund) == _money(decided["by_fund"])
                # R-CLR-2: decided + supplementary − clearing = what is due now
                due = Decimal(acc.due["total"]) if acc.due and acc.due.get("granted") else Decimal(0)
                assert r.expected(eid)["total"] == due, eid
            for case in r.cases.values():
                assert case.balance >= 0
        assert all(k == 1 for k in decided_per_receipt.values())  # no receipt aided twice (R-PH-7)

        for cid, total in claims_paid.items():
            c = app.claim(cid)
            r = app.recipient(c.recipient_id)
            assert total == sum((Decimal(r.expenses[e].decided["total"]) for e in c.expense_ids), Decimal(0))

        with pytest.raises(ValueError, match="already holds recipients"):
            demo.generate(app, recipients=2, seed=11, until=UNTIL)
    finally:
        app.close()
