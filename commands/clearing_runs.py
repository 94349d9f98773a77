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

Without ``--since`` or ``--all`` a run picks its scope and triggers itself (R-CLR-1 [000 第七条;
002 4.4, 4.5]): it reads the log after the position the last run recorded (``ClearingLog``), and
each recipient's changed facts name the trigger cited on what the run opens: a late insurance
payment ``late_insurance`` (R-CLR-1(a)), an attempted duplicate ``duplicate`` (R-CLR-1(b)), a
category, insurance or mutual-aid change ``category_change`` (R-CLR-1(c)), a new decision
``cap_overrun`` (R-CLR-1(e)); a policy change after the position is ``parameter_change``
(R-CLR-1(d)) for everyone (it ranks above a new decision, the weakest sign). The run then records the position it read up to. ``--trigger``
overrides the trigger cited; ``--since`` and ``--all`` override the scope (and do not move the
position, except ``--all``, which looks at everyone).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from commands.city import CITATION_CAP
from ledger.aggregates import ClearingLog, PolicyLedger, Recipient
from ledger.values import Trigger

if TYPE_CHECKING:  # pragma: no cover
    from commands.city import UsageOverlap
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


#: R-CLR-1: the trigger a changed fact names, in order of precedence when a recipient has several.
TRIGGER_OF_EVENT: dict[str, str] = {
    "InsuranceSettled": "late_insurance",  # R-CLR-1(a), R-INS-4
    "DuplicateAttempted": "duplicate",  # R-CLR-1(b), R-PH-7
    "CategoryGranted": "category_change",  # R-CLR-1(c), R-CAT-1
    "CategoryRevoked": "category_change",
    "InsuranceEnrolmentStarted": "category_change",
    "InsuranceEnrolmentEnded": "category_change",
    "MutualAidContributionPaid": "category_change",
    "AidDecided": "cap_overrun",  # R-CLR-1(e), R-CAP-2
}
PRECEDENCE = ("late_insurance", "duplicate", "category_change", "parameter_change", "cap_overrun")
_RECIPIENT_TOPIC = f"{Recipient.__module__}:{Recipient.__qualname__}."
_POLICY_TOPIC = f"{PolicyLedger.__module__}:{PolicyLedger.__qualname__}."


@dataclass
class Changes:
    """What changed after a log position: each recipient's trigger, and the last position read."""

    after: int
    position: int
    triggers: dict[uuid.UUID, str]
    policy_changed: bool


def changes_after(app: "LedgerApp", position: int) -> Changes:
    """R-CLR-1: the recipients whose facts changed after notification ``position`` and the trigger
    each one's changes name (by event type; nothing is decoded), every recipient with decided
    expenses getting ``parameter_change`` when the policy changed."""
    found: dict[uuid.UUID, set[str]] = {}
    policy_changed = False
    last = position
    start = position + 1
    while True:
        batch = app.recorder.select_notifications(start=start, limit=PAGE)
        if not batch:
            break
        for n in batch:
            last = n.id
            if n.topic.startswith(_POLICY_TOPIC):
                policy_changed = policy_changed or not n.topic.endswith(".Opened")
            elif n.topic.startswith(_RECIPIENT_TOPIC):
                trigger = TRIGGER_OF_EVENT.get(n.topic[len(_RECIPIENT_TOPIC):])
                if trigger is not None:
                    found.setdefault(n.originator_id, set()).add(trigger)
        start = batch[-1].id + 1
    if policy_changed:
        for rid in app.recipient_ids():
            found.setdefault(rid, set()).add("parameter_change")
    chosen = {rid: next(t for t in PRECEDENCE if t in ts) for rid, ts in found.items()}
    return Changes(position, last, chosen, policy_changed)


def clearing_log(app: "LedgerApp") -> ClearingLog | None:
    try:
        return app.repository.get(ClearingLog.ID)
    except AggregateNotFoundError:
        return None


def last_position(app: "LedgerApp") -> int:
    """The notification position the last recorded run read up to (0: no run recorded yet)."""
    log = clearing_log(app)
    return (log.last_position or 0) if log is not None else 0


def _record(app: "LedgerApp", summary: "RunSummary", position: int, triggers: dict[str, int], at: datetime | None) -> None:
    for _ in range(5):
        log = clearing_log(app)
        if log is None:
            log = ClearingLog._create(ClearingLog.Opened, id=ClearingLog.ID, timestamp=app._now(at))  # noqa: SLF001
        if log.last_position is not None and log.last_position >= position:
            return  # a concurrent run already recorded as far
        log.trigger_event(
            ClearingLog.RunRecorded, timestamp=app._now(at), position=position, scope=summary.scope, triggers=triggers,
            recipients_changed=summary.recipients_changed, cases_opened=summary.cases_opened,
            supplementary_opened=summary.supplementary_opened,
        )
        try:
            app.save(log)
            return
        except IntegrityError:
            continue


RULE_CITY = "R-CAP-4, R-CLR-1(b) [002 4.5; 000 第七条]"
RULE_CITY_CAP = CITATION_CAP  # the cap check (commands.city)


@runtime_checkable
class CityConflictReads(Protocol):
    """The city view's conflicts as a district reads them (infra.city.CityView.conflicts_for):
    the rows of the receipts ``district`` paid second, and the positions they are true at."""

    def conflicts_for(self, district: str) -> tuple[list[dict[str, Any]], dict[str, int]]: ...


def city_conflicts_from(source: Any) -> "CityConflicts | None":
    """The conflicts a ledger's city port (``LedgerCore.city``, when the process is a district
    reading the city view) offers for its own district; None without one."""
    from commands.city import CityUnavailable

    district = getattr(source, "district", None)
    if not district or not isinstance(source, CityConflictReads):
        return None
    try:
        rows, positions = source.conflicts_for(district)
    except CityUnavailable as exc:  # the run goes on with this district's own duplicates; a later run finds them
        logging.getLogger("ledger.city").warning("city view not read for the clearing run: %s", exc)
        return None
    return city_conflicts(district, rows, positions)


@dataclass(frozen=True)
class CityConflicts:
    """The receipts this district paid second in the city (late discovery, R-CAP-4, R-CLR-1(b)
    [002 4.5; 000 第七条]): ``{recipient: {expense: AidedElsewhere}}``, read from the city view at
    ``positions`` (district -> stream position) by the adapter that runs the clearing run."""

    district: str
    positions: dict[str, int]
    by_recipient: dict[uuid.UUID, dict[str, Any]]

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_recipient.values())


def city_conflicts(district: str, rows: list[dict[str, Any]], positions: dict[str, int]) -> CityConflicts:
    """From the city view's conflict rows (each: ``district`` that paid second, its ``expense_id``,
    ``first_district``, ``first_expense_id``) the ones this ``district`` must clear, each with the
    explanation its recomputed decision records."""
    from commands.core import AidedElsewhere, recipient_of

    at = ", ".join(f"{d} {p}" for d, p in sorted(positions.items())) or "nothing applied yet"
    found: dict[uuid.UUID, dict[str, Any]] = {}
    for row in rows:
        if row["district"] != district:
            continue
        eid = row["expense_id"]
        message = (
            f"the same receipt was aided first in district {row['first_district']} (expense {row['first_expense_id']}), "
            f"as of the city view at {at}: a receipt is aided once in the city, and {district} paid it second, "
            f"so the aid paid here is cleared ({RULE_CITY})"
        )
        first = f"{row['first_district']}:{row['first_expense_id']}"
        found.setdefault(recipient_of(eid), {})[eid] = AidedElsewhere(first, message)
    return CityConflicts(district, dict(positions), found)


def and_also(recipients: list[Any], more: Iterable[Any]) -> list[Any]:
    """``recipients`` followed by those of ``more`` not already among them (a run's scope widened
    to the persons a city read names: R-CLR-1(b), R-CLR-1(e))."""
    known = set(recipients)
    return recipients + [rid for rid in more if rid not in known]


@runtime_checkable
class CityUsageReads(Protocol):
    """The city view's usage rows of the persons aided in ``district`` and in another district
    (infra.city.CityView.usage_overlaps_for), and the positions they are true at."""

    def usage_overlaps_for(self, district: str) -> tuple[list[dict[str, Any]], dict[str, int]]: ...


def city_usage_from(source: Any) -> "UsageOverlap | None":
    """What the clearing run checks this district's decisions' city reads against (R-CAP-4,
    R-CLR-1(e) [001; 000 第七条]), from the ledger's city port; None without one (a single
    district) or when the view cannot be read (a later run finds what this one could not)."""
    from commands.city import CityUnavailable

    district = getattr(source, "district", None)
    if not district or not isinstance(source, CityUsageReads):
        return None
    try:
        rows, positions = source.usage_overlaps_for(district)
    except CityUnavailable as exc:
        logging.getLogger("ledger.city").warning("city view not read for the clearing run's cap check: %s", exc)
        return None
    return usage_overlap(district, rows, positions)


def usage_overlap(district: str, rows: list[dict[str, Any]], positions: dict[str, int]) -> "UsageOverlap":
    """The view's rows (each naming its ``recipient_key``, the recipient's id in every district)
    grouped per recipient."""
    from commands.city import UsageOverlap

    by_recipient: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in rows:
        try:
            rid = uuid.UUID(row["recipient_key"])
        except (ValueError, TypeError):
            continue  # not a recipient of a ledger (a row without its key)
        by_recipient.setdefault(rid, []).append(row)
    return UsageOverlap(district, dict(positions), by_recipient)


@dataclass
class RunSummary:
    """What one clearing run looked at and what it opened."""

    scope: str  # "all", "since <time>" or "changes after <position>"
    recipients_seen: int
    recipients_changed: int
    cases_opened: int
    supplementary_opened: int
    trigger: str  # the one trigger cited, or "auto"
    triggers: dict[str, int] | None = None  # auto: recipients looked at per trigger
    position: int | None = None  # the log position recorded for the next run
    city_conflicts: int = 0  # receipts this district paid second in the city, looked at (R-CLR-1(b))
    city_usage: int = 0  # persons aided here and in another district whose city reads were checked (R-CAP-4, R-CLR-1(e))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(
    app: "LedgerApp",
    *,
    since: datetime | None = None,
    trigger: str | None = None,
    everyone: bool = False,
    at: datetime | None = None,
    on_scope: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    city: CityConflicts | None = None,
    city_usage: "UsageOverlap | None" = None,
) -> RunSummary:
    """A clearing run (R-CLR-2). Scope: ``since`` (recipients touched after it), ``everyone``, or
    by default the changes after the last recorded run (``changes_after``). Trigger cited: the
    given ``trigger``; by default each recipient's own (``parameter_change`` with ``since`` or
    ``everyone``). ``on_scope`` is told how many recipients the run will visit; ``progress`` is
    called once per recipient. ``city``: the receipts this district paid second in the city
    (:func:`city_conflicts`): with the automatic choice or ``duplicate`` their recipients are
    looked at under ``duplicate`` (R-CLR-1(b)), whatever the scope; idempotent as the rest.
    ``city_usage``: the persons aided here and in another district (:func:`usage_overlap`): with
    the automatic choice or ``cap_overrun`` their decisions' city reads are checked (R-CAP-4,
    R-CLR-1(e)), those not looked at otherwise under ``cap_overrun``."""
    if since is not None or everyone:
        recipients = recipients_since(app, since) if since is not None else list(app.recipient_ids())
        position = (app.recorder.max_notification_id() or 0) if everyone else None
        groups = {trigger or Trigger.PARAMETER_CHANGE.value: recipients}
        scope = "all" if since is None else f"since {since.isoformat()}"
    else:
        changes = changes_after(app, last_position(app))
        position = changes.position
        groups = {}
        for rid, t in changes.triggers.items():
            groups.setdefault(trigger or t, []).append(rid)
        scope = f"changes after log position {changes.after}"
    cause_extra: dict[str, Any] = {}
    automatic = trigger is None and since is None and not everyone
    if city and (automatic or trigger == Trigger.DUPLICATE.value):
        dup = Trigger.DUPLICATE.value
        for t in list(groups):
            groups[t] = [rid for rid in groups[t] if rid not in city.by_recipient]
        groups[dup] = list(groups.get(dup, [])) + list(city.by_recipient)
        groups = {t: v for t, v in groups.items() if v}
        cause_extra = {"city_view": {"district": city.district, "positions": city.positions, "rule": RULE_CITY}}
    cap_extra: dict[str, Any] = {}
    if city_usage and (automatic or trigger == Trigger.CAP_OVERRUN.value):
        cap = Trigger.CAP_OVERRUN.value
        looked = {rid for v in groups.values() for rid in v}
        groups[cap] = list(groups.get(cap, [])) + [rid for rid in city_usage.by_recipient if rid not in looked]
        groups = {t: v for t, v in groups.items() if v}
        cap_extra = {"city_view": {"district": city_usage.district, "positions": dict(city_usage.positions), "rule": RULE_CITY_CAP}}
    else:
        city_usage = None
    seen = sum(len(v) for v in groups.values())
    if on_scope is not None:
        on_scope(seen)
    opened = {"cases": 0, "supplementary": 0}
    changed = 0
    for t in PRECEDENCE:
        if t in groups:
            changed += app.clearing_run(
                t, at=at, cause={"run": "clearing", "since": since.isoformat() if since else None, "scope": scope,
                                 **(cause_extra if t == Trigger.DUPLICATE.value else {}),
                                 **(cap_extra if t == Trigger.CAP_OVERRUN.value else {})},
                progress=progress, recipients=groups[t], opened=opened,
                city=city.by_recipient if city and t == Trigger.DUPLICATE.value else None,
                city_usage=city_usage,
            )
    summary = RunSummary(
        scope=scope,
        recipients_seen=seen,
        recipients_changed=changed,
        cases_opened=opened["cases"],
        supplementary_opened=opened["supplementary"],
        trigger=trigger or ("auto" if since is None and not everyone else Trigger.PARAMETER_CHANGE.value),
        triggers={t: len(v) for t, v in groups.items()},
        position=position,
        city_conflicts=len(city) if city and cause_extra else 0,
        city_usage=len(city_usage) if city_usage else 0,
    )
    if position is not None:
        _record(app, summary, position, summary.triggers or {}, at)
    return summary
