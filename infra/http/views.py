"""Response shaping for the HTTP service: aggregate state → the documented response models.

Amounts come from ``commands.queries`` (the narrow read interface); this module only arranges
what the aggregates already hold. No rule is decided here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from commands import queries
from commands.app import LedgerApp
from commands.repository import Kept
from ledger.aggregates import Claim, Recipient
from ledger.money import fmt


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def expense(r: Recipient, eid: str) -> dict[str, Any]:
    acc = r.expenses[eid]
    f = acc.facts
    view = queries.expense_view(r, eid)
    return {
        **view,
        "handle": acc.handle,
        "visit_type": f.visit_type.value,
        "service_date": f.service_date.isoformat(),
        "invoice_date": f.invoice_date.isoformat(),
        "invoice_no": f.invoice_no,
        "facility": f.facility.to_dict(),
        "total": fmt(f.total),
        "in_scope": fmt(f.in_scope),
        "basic_insurance_paid": fmt(f.basic_insurance_paid),
        "claim": acc.claim_id,
    }


def statement(app: LedgerApp, r: Recipient) -> dict[str, Any]:
    return {
        "recipient": str(r.id),
        "name": r.name,
        "id_number": r.id_number,
        "street": r.street,
        "consent": r.consent,
        "version": r.version,
        "categories": [
            {"kind": c.kind, "category": c.category, "valid_from": c.valid_from.isoformat(), "valid_to": _iso(c.valid_to),
             "subtype": c.subtype, "recorded_at": c.recorded_at.isoformat()}
            for c in r.category_facts
        ],
        "insurance": [
            {"kind": i.kind, "scheme": i.scheme, "valid_from": i.valid_from.isoformat(), "valid_to": _iso(i.valid_to),
             "recorded_at": i.recorded_at.isoformat()}
            for i in r.insurance_facts
        ],
        "mutual_aid_years": sorted({y.year for y in r.mutual_aid_years}),
        "expenses": [expense(r, eid) for eid in r.expenses],
        "clearing_cases": [queries.case_view(c) for c in r.cases.values()],
        "supplementary": [queries.supplementary_view(s) for s in r.supplementary.values()],
        "suspensions": [{"scheme": s["scheme"], "from": s["from"], "expense": s.get("expense"), "lifted": s["lifted"]} for s in r.suspensions],
        "open_balance": fmt(r.open_balance()),
        "funds": {k: fmt(v) for k, v in queries.fund_movements(r).items()},
    }


def caps(app: LedgerApp, r: Recipient) -> dict[str, Any]:
    return {"recipient": str(r.id), "annual": app.annual_caps(r)}  # R-CAP-2


def recipient_clearing(r: Recipient) -> dict[str, Any]:
    return {
        "recipient": str(r.id),
        "open_balance": fmt(r.open_balance()),
        "clearing_cases": [queries.case_view(c) for c in r.cases.values()],
        "supplementary": [queries.supplementary_view(s) for s in r.supplementary.values()],
    }


def claim(c: Claim) -> dict[str, Any]:
    return {
        "claim": str(c.id),
        "recipient": c.recipient_id,
        "street": c.street,
        "channel": c.channel,
        "status": c.status,
        "expenses": list(c.expense_ids),
        "handler": c.handler,
        "reviewer": c.reviewer,
        "approver": c.approver,
        "payer": getattr(c, "payer", None),  # the fourth signature, who disbursed it (R-PH-4 [002 3.5])
        "lodged_on": c.lodged_on,
        "rejection": c.rejection,
        "paid_at": _iso(c.paid_at),
        "version": c.version,
    }


def duplicates(r: Recipient) -> list[dict[str, Any]]:
    """R-PH-7 / R-CLR-1(b) from one recipient's aggregate: receipts recorded twice (``receipt``)
    and attempts to aid an aided receipt again (``attempted``); the read model finds more."""
    rows = []
    for eid, acc in r.expenses.items():
        if acc.facts.duplicate_of:
            rows.append({"kind": "receipt", "subject": eid, "matched": acc.facts.duplicate_of, "recipient": str(r.id),
                         "facility_code": acc.facts.facility.code, "invoice_no": acc.facts.invoice_no,
                         "recorded_at": acc.facts.recorded_at.isoformat()})
        for a in acc.attempted_duplicates:
            rows.append({"kind": "attempted", "subject": eid, "matched": a.get("aided_as") or "", "recipient": str(r.id),
                         "channel": a.get("channel"), "claim": a.get("claim"), "reason": a.get("reason"), "recorded_at": a.get("at")})
    return rows


def stored_explanation(app: LedgerApp, r: Recipient, eid: str) -> dict[str, Any]:
    """The decision summaries the events keep (R-TIME-1): first decision and latest assessment,
    with their traces, read from the recipient's events (its state keeps them without the trace:
    ``ledger.aggregates.kept_summary``)."""
    acc = r.expenses[eid]
    decided, due = queries.recorded_summaries(app.events.get(r.id, lte=r.version), eid) if acc.decision is not None else (None, None)
    return {
        "decided": decided,
        "due": due,
        "decision": None if acc.decision is None else {
            "channel": acc.decision.channel,
            "claim": acc.decision.claim_id,
            "decided_at": acc.decision.decided_at.isoformat(),
        },
    }


# ------------------------------------------------------------------ read models (ADR 0008)
_catch_up_locks: dict[str, threading.Lock] = {}  # one per view name: bounded by the views there are
_locks_guard = threading.Lock()


def erasure_generation(app: LedgerApp) -> int | None:
    """The store's erasure generation as this request reads it (ADR 0015: once per request scope,
    ``infra.privacy.fresh_keys``), or None for an application without a key store. What a process
    keeps decoded between requests is dropped when it moves."""
    keys = getattr(app.mapper, "keys", None)
    return None if keys is None else keys.generation_now()


class Followers:
    """The views a service process follows, one runner each, kept between requests.

    A runner keeps what its view holds in memory between pages (the cuts view: the recipients it
    folded, so a catch-up applies a new event to the recipient it has instead of reading the
    recipient's whole stream again). Used under the view's catch-up lock only. The runners are
    dropped when the store's erasure generation moves (what they hold is decoded)."""

    #: Recipients a followed cuts view keeps folded in this process (the view's own default is a
    #: district's worth, sized for a rebuild; a service worker keeps fewer).
    CUTS_CACHE = 1000

    def __init__(self) -> None:
        self._runners: dict[str, Any] = {}
        self._generation: int | None = None

    def runner(self, engine: Any, app: LedgerApp, name: str) -> Any:
        from projections.runner import Runner, select_projections

        generation = erasure_generation(app)
        if generation != self._generation:
            self._runners.clear()
            self._generation = generation
        runner = self._runners.get(name)
        if runner is None or runner.engine is not engine:
            [view] = select_projections([name])
            if hasattr(view, "CACHE"):
                view.CACHE = min(view.CACHE, self.CUTS_CACHE)
            runner = self._runners[name] = Runner(engine, app.recorder, app.mapper, [view])
        return runner


def caught_up(engine: Any, app: LedgerApp, name: str, ready: set[str], followers: Followers | None = None) -> Any:
    """The read model ``name`` brought to the log's head as seen now, then its status.

    A district-wide read answers from a read model, never from a replay of every recipient per
    request (ADR 0008): the view applies only the notifications recorded since its position (its
    own topics; one transaction per page that also moves its tracking row, so several workers
    catching up at once apply nothing twice), which gives each officer their own writes back.
    When the view is already at the head this costs two small reads (the head, the position).
    The view's tables are created on first use in this process (``ready``); a view never built
    before is built by that first request (``ledger projections rebuild`` builds it ahead).
    ``followers``: the service's runners, kept between requests (else one for this call)."""
    from projections.common import reading
    from projections.runner import Runner, Status, select_projections

    def position() -> int:
        with reading(engine) as conn:
            return int(conn.execute(_position_query(), {"name": name}).scalar_one_or_none() or 0)

    def status(at: int, head: int) -> Any:
        return Status(name, _version(name), _version(name), at, max(head, at), None)

    head = int(app.recorder.max_notification_id() or 0)
    if name in ready:
        at = position()
        if at >= head:
            return status(at, head)
    with _locks_guard:
        lock = _catch_up_locks.setdefault(name, threading.Lock())
    with lock:  # one thread of this process catches up; the others then find it done
        if name in ready:
            at = position()
            if at >= head:
                return status(at, head)
        if followers is not None:
            runner = followers.runner(engine, app, name)
        else:
            [view] = select_projections([name])
            runner = Runner(engine, app.recorder, app.mapper, [view])
        if name not in ready:
            runner.setup()
            ready.add(name)
        with _one_process_at_a_time(engine, name):
            at = position()
            if at < head:
                # Up to the head as it is now, past the one this request saw: the readers that
                # queued behind this catch-up (a burst of writes leaves many) then find their own
                # head reached, instead of each folding the next few notifications in turn.
                head = max(head, int(app.recorder.max_notification_id() or 0))
                runner.catch_up(head=head)
                at = position()
    return status(at, head)


@contextlib.contextmanager
def _one_process_at_a_time(engine: Any, name: str) -> Iterator[None]:
    """On PostgreSQL, a session advisory lock per view held while one process catches it up: the
    workers of a service would otherwise each select, decode and fold the same new notifications
    at once, all but one only to find the position moved when they come to commit (the runner's
    tracking row keeps that safe, not cheap). The lock is taken on a connection of its own outside
    any transaction; a worker that dies lets it go with its session. SQLite: one process writes
    at a time anyway."""
    if engine.dialect.name != "postgresql":
        yield
        return
    key = f"ledger.read_model.{name}"  # hashed by PostgreSQL (hashtext), as the key store's lock is
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(_lock_query(), {"key": key})
        try:
            yield
        finally:
            conn.execute(_unlock_query(), {"key": key})


_versions: dict[str, int] = {}
_queries: dict[str, Any] = {}


def _lock_query() -> Any:
    from sqlalchemy import text

    return _queries.setdefault("lock", text("SELECT pg_advisory_lock(hashtext(:key))"))


def _unlock_query() -> Any:
    from sqlalchemy import text

    return _queries.setdefault("unlock", text("SELECT pg_advisory_unlock(hashtext(:key))"))


def _position_query() -> Any:
    """A view's position, as plain SQL: asked once or twice by every read of a read model, and a
    Core ``select`` costs several times the round trip in building its cache key."""
    if "position" not in _queries:
        from sqlalchemy import text

        from projections.common import tracking

        _queries["position"] = text(f"SELECT position FROM {tracking.name} WHERE name = :name")
    return _queries["position"]


def _version(name: str) -> int:
    """A view's version (its class attribute), looked up once per process."""
    if name not in _versions:
        from projections.runner import select_projections

        [view] = select_projections([name])
        _versions[name] = view.version
    return _versions[name]


class EnrolledNames:
    """Each recipient's name and street as their ``Enrolled`` event records them (that event never
    changes), decoded once per process and kept for one erasure generation of the store: an
    erasure in any process drops them all, and the erased person then reads as erased (ADR 0015).
    Bounded: emptied when it reaches ``LIMIT`` people."""

    LIMIT = 50_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._people: dict[str, tuple[Any, Any]] = {}
        self._generation: int | None = None

    def lookup(self, app: LedgerApp, recipients: Any) -> dict[str, tuple[Any, Any]]:
        generation = erasure_generation(app)
        with self._lock:
            if generation != self._generation:
                self._people.clear()
                self._generation = generation
            known = dict(self._people)
        out: dict[str, tuple[Any, Any]] = {}
        found: dict[str, tuple[Any, Any]] = {}
        for rid in recipients:
            if rid in out:
                continue
            person = known.get(rid)
            if person is None:
                person = found[rid] = _enrolled(app, rid)
            out[rid] = person
        if found:
            with self._lock:
                if generation == self._generation:
                    if len(self._people) + len(found) > self.LIMIT:
                        self._people.clear()
                    self._people.update(found)
        return out


def _enrolled(app: LedgerApp, rid: str) -> tuple[Any, Any]:
    import uuid

    first = next(iter(app.repository.event_store.get(uuid.UUID(rid), lte=1)), None)
    return getattr(first, "name", None), getattr(first, "street", None)


def clearing_cases_answer(engine: Any, app: LedgerApp, status: str | None, names: EnrolledNames | None, kept: Kept | None,
                          render: Callable[[Any], bytes], kept_rows: Kept | None = None) -> tuple[bytes, list[str]]:
    """``GET /clearing/cases`` rendered (``render``: a JSON value's bytes) with the recipients it
    lists. A process keeps (1) in ``kept`` the whole answer while the case rows' stamp
    (``projections.clearing.stamp``) and the erasure generation stay where they were, and (2) in
    ``kept_rows`` each row's rendering under the row as stored with its recipient's name and
    street (and the erasure generation), so an answer
    after a change renders only the rows that changed. The stamp is read before the rows: an
    answer kept under a stamp is never older than that stamp (at worst newer, when a change
    commits in between), so a reader still gets at least what it saw written. A view without a
    stamp yet is never kept whole."""
    from projections import clearing
    from projections.common import reading

    generation = erasure_generation(app)
    with reading(engine) as conn:
        stamp = clearing.stamp(conn)
        key = ("clearing_cases", status, stamp, generation)
        if kept is not None and stamp is not None:
            answer = kept.get(key)
            if answer is not None:
                return answer
        stored = clearing.case_rows(conn, status)
    listed = list(dict.fromkeys(r.recipient for r in stored))
    people = _people(app, listed, names)
    parts = []
    for r in stored:
        name, street = people[r.recipient]
        row_key = ("clearing_case", tuple(r), name, street, generation)
        part = kept_rows.get(row_key) if kept_rows is not None else None
        if part is None:
            part = render(_case_answer(clearing.case_dict(r), name, street))
            if kept_rows is not None:
                kept_rows.put(row_key, part)
        parts.append(part)
    answer = (b"[" + b",".join(parts) + b"]", listed)
    if kept is not None and stamp is not None:
        kept.put(key, answer)
    return answer


def _case_answer(r: dict[str, Any], name: Any, street: Any) -> dict[str, Any]:
    from commands.clearing_views import TRIGGERS

    return {"case": r["case"], "recipient": r["recipient"], "name": name, "street": street, "expense": r["expense"],
            "handle": r["handle"], "trigger": r["trigger"], "rule": TRIGGERS.get(r["trigger"], {}).get("rule"),
            **{k: v for k, v in r.items() if k not in ("case", "recipient", "expense", "handle", "trigger")}}


def clearing_cases(engine: Any, app: LedgerApp, status: str | None, names: EnrolledNames | None = None) -> list[dict[str, Any]]:
    """``GET /clearing/cases`` from the ``clearing_cases`` read model (R-CLR-2, R-CLR-3), with each
    recipient's name and street from their ``Enrolled`` event (decoded by the application's mapper:
    an erased person shows as erased, ADR 0015): one small read per recipient listed, or none for
    those ``names`` already holds."""
    from projections import clearing
    from projections.common import reading

    with reading(engine) as conn:
        rows = clearing.cases(conn, status)
    people = _people(app, list(dict.fromkeys(r["recipient"] for r in rows)), names)
    return [_case_answer(r, *people[r["recipient"]]) for r in rows]


def _people(app: LedgerApp, recipients: list[str], names: EnrolledNames | None) -> dict[str, tuple[Any, Any]]:
    """recipient → (name, street) as enrolled: from ``names`` (decoded once a process) when given."""
    return names.lookup(app, recipients) if names is not None else {rid: _enrolled(app, rid) for rid in recipients}
