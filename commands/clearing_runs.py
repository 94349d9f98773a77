"""Population clearing runs (R-CLR-2 [000 第七条; 002 4.4]): which recipients a run must look at,
and what it did.

A run recomputes recipients with today's knowledge and opens cases or supplementary payouts for
the differences; ``LedgerApp.clearing_run`` does the work and is idempotent. ``--since T``
narrows it to the recipients whose facts changed after T, read from the notification log (the
event store is the only source of recorded times, ADR 0002):

- a recipient with any event recorded after T is looked at;
- when the policy ledger recorded anything after T (a pack or an amendment, possibly back-dated),
  every recipient is looked at: an amendment can touch anyone's decided expenses.

Recorded times live inside the stored events, so the scan decodes the events of recipients not
yet known to be touched; it is one pass over the log.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from ledger.aggregates import PolicyLedger
from ledger.values import Trigger

if TYPE_CHECKING:  # pragma: no cover
    from commands.core import LedgerCore as LedgerApp

PAGE = 1000


def recipients_since(app: "LedgerApp", since: datetime) -> list[uuid.UUID]:
    """Recipients (in enrolment order) with an event recorded after ``since``; all of them when
    the policy changed after ``since``."""
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    everyone = list(app.recipient_ids())
    known = set(everyone)
    touched: set[uuid.UUID] = set()
    for n in app.notifications(page=PAGE):
        rid = n.originator_id
        if rid == PolicyLedger.ID:
            if app.mapper.to_domain_event(n).timestamp > since:
                return everyone
            continue
        if rid in touched or rid not in known:
            continue
        if app.mapper.to_domain_event(n).timestamp > since:
            touched.add(rid)
    return [rid for rid in everyone if rid in touched]


@dataclass
class RunSummary:
    """What one clearing run looked at and what it opened."""

    scope: str  # "all" or "since <time>"
    recipients_seen: int
    recipients_changed: int
    cases_opened: int
    supplementary_opened: int
    trigger: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(
    app: "LedgerApp",
    *,
    since: datetime | None = None,
    trigger: str = Trigger.PARAMETER_CHANGE.value,
    at: datetime | None = None,
    on_scope: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunSummary:
    """Recompute the recipients in scope (all, or those touched since ``since``). ``on_scope`` is
    told how many recipients the run will visit; ``progress`` is called once per recipient."""
    recipients = recipients_since(app, since) if since is not None else list(app.recipient_ids())
    if on_scope is not None:
        on_scope(len(recipients))
    opened = {"cases": 0, "supplementary": 0}
    changed = app.clearing_run(
        trigger, at=at, cause={"run": "clearing", "since": since.isoformat() if since else None},
        progress=progress, recipients=recipients, opened=opened,
    )
    return RunSummary(
        scope="all" if since is None else f"since {since.isoformat()}",
        recipients_seen=len(recipients),
        recipients_changed=changed,
        cases_opened=opened["cases"],
        supplementary_opened=opened["supplementary"],
        trigger=trigger,
    )
