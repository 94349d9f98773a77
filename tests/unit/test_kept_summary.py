"""A recipient's state keeps its decisions without their traces (issue 16, ADR 0017): the trace of
every decision and reassessment stays in the event that recorded it, where the explanations read
it; the state keeps the outcome and the amounts. Over every recipient of every public scenario."""

from __future__ import annotations

import json

from aggregate_support import scenario_recipients
from infra.http import views
from ledger.aggregates import Recipient, kept_summary


def test_the_state_keeps_each_decision_as_recorded_but_its_trace() -> None:
    decided = reassessed = 0
    for name, app, _, rid in scenario_recipients():
        r = app.recipient(rid)
        latest: dict[str, dict] = {}
        first: dict[str, dict] = {}
        for event in app.events.get(r.id):
            if isinstance(event, Recipient.AidDecided):
                for s in event.decisions:
                    first.setdefault(s["expense"], s)
                    latest[s["expense"]] = s
            elif isinstance(event, Recipient.AidReassessed):
                for item in event.results:
                    latest[item["expense"]] = item["due"]
                    reassessed += 1
        for eid, acc in r.expenses.items():
            if acc.decision is None:
                assert eid not in first, (name, eid)
                continue
            decided += 1
            assert "trace" in first[eid], "the event keeps the trace"
            assert "trace" not in acc.decided and "trace" not in acc.due, (name, eid)
            assert acc.decided == kept_summary(first[eid]) and acc.due == kept_summary(latest[eid]), (name, eid)
            # the stored explanation (the HTTP fallback) reads the traces back from the events
            stored = views.stored_explanation(app, r, eid)
            assert stored["decided"] == first[eid] and stored["due"] == latest[eid], (name, eid)
        # and the snapshot of the state holds no trace
        assert '"trace"' not in json.dumps(Recipient.Snapshot.take(r).state, default=str), name
    assert decided > 20 and reassessed > 0
