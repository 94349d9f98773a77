"""A recipient's copy (``Recipient.__deepcopy__``, issue 16): made without walking its expenses,
and still independent of the recipient it was copied from.

Given every state a recipient of the project's scenarios passes through (every kind of recipient
event among them, with the kinds no scenario records added at the end), when a copy takes all the
later events, then the recipient copied is exactly as it was (compared with the same state rebuilt
from its events) and the copy is exactly the recipient rebuilt from all of them.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any


from ledger.aggregates import Recipient
from aggregate_support import KINDS, extra_events, scenario_recipients, state_of

def _replay(events: list[Any]) -> Recipient:
    state = None
    for event in events:
        state = event.mutate(state)
    return state


def _history(app: Any, rid: Any, extra: bool) -> list[Any]:
    """The recipient's stored events, then (``extra``) the kinds no scenario records."""
    events = list(app.events.get(rid))
    if extra:
        r = _replay(events)
        extra_events(r, events[-1].timestamp + timedelta(seconds=1))
        events += r.collect_events()
    return events


def test_a_copy_takes_later_events_without_changing_the_recipient_copied() -> None:
    seen: set[str] = set()
    checked = 0
    for name, app, n, rid in scenario_recipients():
        events = _history(app, rid, n == 0)
        whole = _replay(events)
        seen.update(type(e).__name__ for e in events)
        state = None
        for k, event in enumerate(events):
            state = event.mutate(state)
            twin = copy.deepcopy(state)
            assert twin is not state and twin.expenses is not state.expenses
            for later in events[k + 1:]:
                twin = later.mutate(twin)
            # the recipient copied is as it was; the copy is the recipient after every event
            assert state_of(state) == state_of(_replay(events[: k + 1])), (name, k, event)
            assert (twin.version, state_of(twin)) == (whole.version, state_of(whole)), (name, k, event)
            checked += 1
    assert checked > 500
    assert KINDS - {"Created", "Event"} <= seen, sorted(KINDS - seen)
