"""Reading the event log as it stood at a known-at time T (R-TIME-1, R-TIME-3).

Recorded (transaction) time lives inside each event's stored state, not in a column, so a cut
"as known at T" is one scan of the notification log: every event recorded at or before T is kept,
per aggregate, up to its last version recorded by T. The aggregates are rebuilt from exactly those
events, so what the cut shows never depends on the current projections (ADR 0010).

This full scan is the reference. ``ledger snapshot`` reads the recorded time from the ``cuts``
read model's side table instead (``projections.cuts``: a range read) and is tested to give the
same position, recorded time and recipient versions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, Iterable

from eventsourcing.application import Application

from ledger.aggregates import PolicyLedger, Recipient
from ledger.values import CST

_RECIPIENT_TOPIC = f"{Recipient.__module__}:{Recipient.__qualname__}."
_POLICY_TOPIC = f"{PolicyLedger.__module__}:{PolicyLedger.__qualname__}."
BATCH = 1000


def parse_known_at(text: str | None) -> datetime | None:
    """A known-at time from the command line: ISO 8601 (without an offset: China Standard Time);
    a bare date means the end of that day, everything recorded on it included."""
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    if len(text) == 10:
        day = date.fromisoformat(text)
        return datetime.combine(day, time.max, tzinfo=CST)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=CST)


def parse_valid(text: str | None) -> date | None:
    if text is None or not str(text).strip():
        return None
    return date.fromisoformat(str(text).strip())


def project(events: Iterable[Any], known_at: datetime | None = None) -> Any:
    """An aggregate rebuilt from its events recorded at or before ``known_at`` (all: None).

    The events are taken as a prefix: the first one recorded after T ends the projection, so the
    result is always a real version of the aggregate."""
    aggregate = None
    for event in events:
        if known_at is not None and event.timestamp > known_at:
            break
        aggregate = event.mutate(aggregate)
    return aggregate


@dataclass
class Cut:
    """The store as known at T: its position and the aggregates the snapshot needs."""

    known_at: datetime | None  # as requested (None: everything recorded)
    position: int  # the largest notification id recorded at or before T (0: nothing)
    last_recorded_at: datetime | None  # recorded time of the latest event kept
    recipients: dict[uuid.UUID, Recipient] = field(default_factory=dict)
    policy: PolicyLedger | None = None
    versions: dict[uuid.UUID, int] = field(default_factory=dict)  # originator -> last version ≤ T

    @property
    def resolved_known_at(self) -> datetime | None:
        """T itself, or (when T was omitted) the recorded time of the latest event: the same
        request asked again with this instant gives the same answer."""
        moment = self.known_at if self.known_at is not None else self.last_recorded_at
        return moment.astimezone(CST) if moment is not None else None  # shown to people: +08:00


def cut(app: Application, known_at: datetime | None = None) -> Cut:
    """Scan the notification log once and rebuild every recipient and the policy ledger at their
    last versions recorded by ``known_at`` (R-TIME-3)."""
    out = Cut(known_at=known_at, position=0, last_recorded_at=None)
    stopped: set[uuid.UUID] = set()
    for n in app.notifications(page=BATCH):  # LedgerApp.notifications
        event = app.mapper.to_domain_event(n)
        oid = event.originator_id
        if known_at is not None and event.timestamp > known_at:
            stopped.add(oid)
            continue
        if oid in stopped:
            continue  # an earlier event of it was recorded after T: keep the prefix only
        out.position = max(out.position, n.id)
        if out.last_recorded_at is None or event.timestamp > out.last_recorded_at:
            out.last_recorded_at = event.timestamp
        out.versions[oid] = event.originator_version
        if n.topic.startswith(_RECIPIENT_TOPIC):
            out.recipients[oid] = event.mutate(out.recipients.get(oid))
        elif n.topic.startswith(_POLICY_TOPIC):
            out.policy = event.mutate(out.policy)
    return out


def policy_versions(policy: PolicyLedger | None) -> dict[str, Any]:
    """What policy a cut knew: the pack hashes and the amendments published by then."""
    if policy is None:
        return {"policy_ledger_version": None, "book_hash": None, "packs": [], "amendments": []}
    return {
        "policy_ledger_version": policy.version,
        "book_hash": policy.book.content_hash(),
        "packs": [
            {"scheme": p["scheme"], "version": p["version"], "hash": p["hash"], "published_at": p["at"].isoformat()}
            for p in policy.packs
        ],
        "amendments": [
            {**{k: a.get(k) for k in ("name", "effective_from", "effective_to", "reference", "published_at")}, "value": _plain(a.get("value"))}
            for a in policy.amendments
        ],
    }


def _plain(value: Any) -> Any:
    """An amendment's stored value as plain JSON (decimals as their exact text)."""
    if isinstance(value, dict) and set(value) == {"decimal"}:
        return value["decimal"]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
