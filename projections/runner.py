"""The projection runner: follows the notification log and keeps the read models current (ADR 0008).

One batch = one page of the log (``batch_size`` notifications, filtered to the topics the views
read, up to the log's head as seen when the page was read). Each view applies the page in its own
transaction on the read-model database, which also moves the view's row in ``proj_tracking``:

1. lock the tracking row (PostgreSQL ``SELECT … FOR UPDATE``; SQLite ``BEGIN IMMEDIATE``) and read
   the position under the lock;
2. apply only the notifications after that position;
3. move the position with a compare-and-set (``WHERE position = <read>``) and commit.

A crash anywhere before the commit loses the rows and the position together; after it, both are
kept. Two runners on the same view serialise on the lock and the second finds the position moved,
so nothing is applied twice. The write path never waits for any of this: the command handlers
compute caps and limits from the recipient's own events (ADR 0008).

A poison event (one a view cannot apply: text the database refuses, a value the view cannot read,
an event that cannot be decoded) never stalls a view for good. When a page fails for a reason
other than a lost connection, the view applies that page again one notification per transaction;
the first one that fails is recorded in ``proj_failures`` (view, position, event type, error;
committed) and the view stops just before it, with a message naming all four, while the other views
go on. ``ledger projections status`` shows it and exits non-zero. The view moves on only when an
operator decides: ``ledger projections skip VIEW POSITION --reason …`` records the decision and the
view leaves that notification out from then on (rebuilds included). A new runner (a restart, after
a fix) tries a failed position once more before stopping at it again.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventsourcing.persistence import OperationalError as StoreOperationalError
from eventsourcing.persistence import InterfaceError as StoreInterfaceError
from eventsourcing.persistence import PersistenceError
from sqlalchemy import Engine, delete, inspect, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ledger.values import CST
from projections.common import SHARED_PREFIX, Projection, failures, is_postgres, metadata, partition_of, reading, tracking, WorkerOpened

log = logging.getLogger(__name__)

DEFAULT_BATCH = 1000
#: Notifications per page when rebuilding from zero (bench/rebuild.py: larger pages load and
#: rewrite each recipient's working state fewer times; the cuts view takes a recipient's cut once
#: per period (day) whatever the pages, carrying it over in ``proj_cut_owed``, ADR 0022).
#: Measured on the district-year (962k events, two processes, bench/rebuild.py, 2026-12-06):
#: pages of 20,000 263.7 s (321 s of CPU), 50,000 238.6 s (271 s). Again, with the reset a
#: TRUNCATE (22:50, same machine, database CPU in brackets): 50,000 148.9 s (86 s), 200,000
#: 115.1 s (43 s), 250,000 107.1 s (38 s; 2.8 GB peak per process), 500,000 98.8 s (30 s; 4.1 GB).
REBUILD_BATCH = 250_000

#: From this many notifications a rebuild uses one process per core by default (bench/rebuild.py:
#: on a 19k-notification log the start-up of the worker processes outweighs what they share out).
PARALLEL_FROM = 50_000


def default_jobs(head: int) -> int:
    """Processes for rebuilding a log of ``head`` notifications: one per core from
    ``PARALLEL_FROM`` on (each spawned worker costs ~1.5 s of start-up), else one."""
    import os

    return (os.cpu_count() or 1) if head >= PARALLEL_FROM else 1


def all_projections() -> list[Projection]:
    """Every read model, in the order the runner applies a batch."""
    from projections.caps import Caps
    from projections.clearing import ClearingCases
    from projections.community import CommunityMonths
    from projections.duplicates import Duplicates
    from projections.funds import FundBooks
    from projections.cuts import Cuts
    from projections.statement import Statement

    return [Caps(), CommunityMonths(), Duplicates(), FundBooks(), Statement(), ClearingCases(), Cuts()]


def select_projections(names: Sequence[str] | None) -> list[Projection]:
    every = all_projections()
    if not names:
        return every
    known = {p.name: p for p in every}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown projection(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


class PositionMoved(RuntimeError):
    """The tracking row changed under us (cannot happen while the lock is held; a safety net)."""


class NoSuchFailure(LookupError):
    """``skip`` names a position that has no recorded failure of that view."""


@dataclass
class Failure:
    """A notification a view could not apply (a row of ``proj_failures``)."""

    name: str
    position: int
    topic: str
    originator_id: str | None
    originator_version: int | None
    error: str
    attempts: int
    first_failed_at: str
    last_failed_at: str
    #: "failed": the view stops before it; "skipped": left out by an operator's decision;
    #: "resolved": a later try (a new runner, after a fix) applied it after all
    status: str
    skipped_at: str | None = None
    skipped_by: str | None = None
    reason: str | None = None

    @property
    def event_type(self) -> str:
        """``ledger.aggregates:Recipient.ExpenseRecorded`` → ``Recipient.ExpenseRecorded``."""
        return self.topic.rsplit(":", 1)[-1]

    @property
    def open(self) -> bool:
        return self.status == "failed"

    def message(self) -> str:
        """The alert: view, position, event type and error, and what the operator can do."""
        of = f" of {self.originator_id} v{self.originator_version}" if self.originator_id else ""
        return (
            f"projection {self.name!r} stopped at position {self.position}: event {self.event_type}{of} "
            f"cannot be applied: {self.error} (attempt {self.attempts}). The other views go on; this one "
            f"stays before position {self.position} until an operator decides: "
            f"`ledger projections skip {self.name} {self.position} --reason …` leaves the event out of this view"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "position": self.position, "event_type": self.event_type, "topic": self.topic,
            "originator_id": self.originator_id, "originator_version": self.originator_version, "error": self.error,
            "attempts": self.attempts, "first_failed_at": self.first_failed_at, "last_failed_at": self.last_failed_at,
            "status": self.status, "skipped_at": self.skipped_at, "skipped_by": self.skipped_by, "reason": self.reason,
        }


@dataclass
class Status:
    name: str
    version: int
    stored_version: int | None
    position: int
    head: int
    updated_at: str | None
    failures: list[Failure] = field(default_factory=list)  # every recorded failure of the view

    @property
    def lag(self) -> int:
        """How far behind the head, in notification ids (ids can have gaps: an upper bound)."""
        return max(0, self.head - self.position)

    @property
    def stale(self) -> bool:
        return self.stored_version is not None and self.stored_version != self.version

    @property
    def failed(self) -> Failure | None:
        """The open failure this view is stopped at, if any."""
        return next((f for f in self.failures if f.open and f.position > self.position), None)


class _Undecodable:
    """A notification the mapper could not turn into a domain event (poison for every view that
    reads its topic)."""

    def __init__(self, error: Exception):
        self.error = error


@dataclass
class _Note:
    id: int
    topic: str
    originator_id: str
    originator_version: int
    event: Any  # the domain event, or _Undecodable


def transient(exc: BaseException) -> bool:
    """A lost connection, a restart, a lock or pool timeout: worth retrying as it is. Anything else
    a view raises (a value the database refuses, a bug the event triggers) would fail again."""
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc, (OperationalError, InterfaceError))
    return isinstance(exc, (DisconnectionError, PoolTimeoutError, StoreOperationalError, StoreInterfaceError, PositionMoved))


def _describe(exc: BaseException) -> str:
    """The error as stored and shown: its type and first line, NUL made visible, bounded."""
    orig = getattr(exc, "orig", None)  # a DBAPIError: the driver's own message says it best
    shown = orig if isinstance(orig, BaseException) else exc
    if isinstance(shown, _Undecodable):
        shown = shown.error
    first = (str(shown).strip().splitlines() or [""])[0]
    return f"{type(shown).__name__}: {first}".replace("\x00", "\\x00")[:2000]


class Runner:
    """Keeps ``projections`` current from ``recorder`` (an eventsourcing application recorder),
    decoding with ``mapper``; rows go to ``engine`` (the read-model database)."""

    def __init__(
        self,
        engine: Engine,
        recorder: Any,
        mapper: Any,
        projections: Sequence[Projection] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH,
        pause_in_batch: float = 0.0,
        on_failure: Callable[[Failure], None] | None = None,
    ):
        self.engine = engine
        self.recorder = recorder
        self.mapper = mapper
        self.projections = list(projections) if projections is not None else all_projections()
        for p in self.projections:  # a view that reads aggregates from the store (projections.cuts)
            if hasattr(p, "bind"):
                p.bind(recorder, mapper)
        self.batch_size = batch_size
        # Test hook (LEDGER_PROJECTIONS_PAUSE_IN_BATCH): sleep after applying a batch, before the
        # commit, so that a kill can be made to land inside a transaction.
        self.pause_in_batch = pause_in_batch
        self.topics = sorted(set().union(*(p.topics() for p in self.projections)))
        #: Called with each failure as it is recorded (the alert); it is logged either way.
        self.on_failure = on_failure
        # (view, position) of recorded failures this runner has tried once more already.
        self._retried: set[tuple[str, int]] = set()
        self._analysed_at = float("-inf")

    # ------------------------------------------------------------------ schema and tracking
    def setup(self) -> None:
        """Create the tables and tracking rows; a view whose stored version differs is rebuilt
        from zero (its tables dropped and created again)."""
        with self.engine.begin() as conn:
            if is_postgres(conn):
                # Two processes starting at once must not race on CREATE TABLE.
                conn.execute(text("SELECT pg_advisory_xact_lock(7308262501)"))
            metadata.create_all(conn, tables=[tracking, failures, *{t for p in self.projections for t in p.tables}])
            stored = dict(conn.execute(select(tracking.c.name, tracking.c.version)).all())
            for p in self.projections:
                if p.tracking_name not in stored:
                    conn.execute(tracking.insert().values(name=p.tracking_name, position=0, version=p.version, updated_at=None))
        for p in self.projections:
            if p.part is None and p.name in stored and stored[p.name] != p.version:
                self.reset(p, recreate=True)

    def reset(self, projection: Projection, *, recreate: bool = False) -> None:
        """Empty a view and move it back to position 0, in one transaction. Open failures go too
        (the rebuild meets a poison event again); skip decisions stay and hold for the rebuild."""
        with self.engine.begin() as conn:
            self._lock(conn, projection.name)
            # a partitioned rebuild left unfinished (ADR 0008) is abandoned with the rows
            conn.execute(delete(tracking).where(tracking.c.name.like(f"{projection.name}@%")))
            if recreate:
                metadata.drop_all(conn, tables=list(projection.tables))
                metadata.create_all(conn, tables=list(projection.tables))
            elif is_postgres(conn):
                # One TRUNCATE of the view's tables, in this transaction: a DELETE of a district's
                # rows cost a third of the rebuild's database time and left them all dead for
                # VACUUM (ADR 0008). It waits for readers of these tables, and a reader in a
                # snapshot taken before it sees the tables empty afterwards, as at a recreate.
                conn.execute(text("TRUNCATE " + ", ".join(conn.dialect.identifier_preparer.format_table(t) for t in projection.tables)))
            else:
                for t in reversed(projection.tables):
                    conn.execute(t.delete())
            conn.execute(delete(failures).where(failures.c.name == projection.name, failures.c.status == "failed"))
            conn.execute(
                update(tracking)
                .where(tracking.c.name == projection.name)
                .values(position=0, version=projection.version, updated_at=_now())
            )

    def _lock(self, conn: Connection, name: str) -> int:
        stmt = select(tracking.c.position).where(tracking.c.name == name)
        if is_postgres(conn):
            stmt = stmt.with_for_update()
        position = conn.execute(stmt).scalar_one_or_none()
        if position is None:
            raise RuntimeError(f"projection {name!r} has no tracking row: run setup() first")
        return int(position)

    def positions(self) -> dict[str, int]:
        """Each view's position (by view name; a partition's own row in a partition runner)."""
        return self._positions()[0]

    def _positions(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """The positions, and the partition rows a partitioned rebuild left for each whole view."""
        with reading(self.engine) as conn:
            rows = dict(conn.execute(select(tracking.c.name, tracking.c.position)).all())
        parts: dict[str, dict[str, int]] = {}
        for p in self.projections:
            if p.part is None:
                mine = {n: int(v) for n, v in rows.items() if n.startswith(f"{p.name}@")}
                if mine:
                    parts[p.name] = mine
        return {p.name: int(rows.get(p.tracking_name, 0)) for p in self.projections}, parts

    def head(self) -> int:
        return int(self.recorder.max_notification_id() or 0)

    def status(self) -> list[Status]:
        head = self.head()
        with reading(self.engine) as conn:
            rows = {r.name: r for r in conn.execute(select(tracking))}
        recorded = self.failures()
        out = []
        for p in self.projections:
            r = rows.get(p.name)
            mine = [f for f in recorded if f.name == p.name]
            out.append(Status(p.name, p.version, r.version if r else None, int(r.position) if r else 0, head, r.updated_at if r else None, mine))
        return out

    # ------------------------------------------------------------------ failures
    def failures(self, *, open_only: bool = False) -> list[Failure]:
        """Recorded failures of this runner's views, by view and position (none before setup)."""
        names = [p.name for p in self.projections]
        with reading(self.engine) as conn:
            if not inspect(conn).has_table(failures.name):
                return []
            q = select(failures).where(failures.c.name.in_(names))
            if open_only:
                q = q.where(failures.c.status == "failed")
            rows = conn.execute(q.order_by(failures.c.name, failures.c.position)).mappings().all()
        return [
            Failure(**{**r, "position": int(r["position"]), "attempts": int(r["attempts"]),
                       "originator_version": None if r["originator_version"] is None else int(r["originator_version"])})
            for r in rows
        ]

    def _record_failure(self, p: Projection, note: _Note, exc: BaseException) -> Failure:
        """Keep the failure (its own committed transaction: the view's rolled back), then alert."""
        now, error = _now(), _describe(exc)
        with self.engine.begin() as conn:
            key = (failures.c.name == p.name) & (failures.c.position == note.id)
            stmt = select(failures.c.attempts, failures.c.first_failed_at).where(key)
            if is_postgres(conn):
                stmt = stmt.with_for_update()
            row = conn.execute(stmt).first()
            values = {
                "topic": note.topic, "originator_id": note.originator_id, "originator_version": note.originator_version,
                "error": error, "last_failed_at": now, "status": "failed", "skipped_at": None, "skipped_by": None, "reason": None,
            }
            if row is None:
                conn.execute(failures.insert().values(name=p.name, position=note.id, attempts=1, first_failed_at=now, **values))
                attempts, first = 1, now
            else:
                attempts, first = int(row.attempts) + 1, row.first_failed_at
                conn.execute(update(failures).where(key).values(attempts=attempts, **values))
        self._retried.add((p.name, note.id))
        failure = Failure(p.name, note.id, note.topic, note.originator_id, note.originator_version, error, attempts, first, now, "failed")
        log.error("%s", failure.message())
        if self.on_failure:
            self.on_failure(failure)
        return failure

    def skip(self, name: str, position: int, *, reason: str, by: str) -> Failure:
        """An operator's decision: view ``name`` leaves out the failed notification at ``position``
        from now on (rebuilds included). Only a recorded failure can be skipped; the decision, its
        reason and who made it are kept with the failure."""
        if not reason.strip():
            raise ValueError("a skip needs a reason")
        if name not in {p.name for p in self.projections}:
            raise KeyError(name)
        with self.engine.begin() as conn:
            if not inspect(conn).has_table(failures.name):
                raise NoSuchFailure(f"projection {name!r} has no recorded failure at position {position}")
            key = (failures.c.name == name) & (failures.c.position == position)
            stmt = select(failures.c.status).where(key)
            if is_postgres(conn):
                stmt = stmt.with_for_update()
            status = conn.execute(stmt).scalar_one_or_none()
            if status is None:
                raise NoSuchFailure(f"projection {name!r} has no recorded failure at position {position}")
            if status == "resolved":
                raise NoSuchFailure(f"projection {name!r} applied position {position} on a later try: nothing to skip")
            if status == "failed":
                conn.execute(update(failures).where(key).values(status="skipped", skipped_at=_now(), skipped_by=by, reason=reason.strip()))
        [done] = [f for f in self.failures() if f.name == name and f.position == position]
        return done

    def _stopped(self, positions: dict[str, int], recorded: list[Failure]) -> dict[str, Failure]:
        """Views stopped at an open failure (each tried once more by a new runner first). A
        failure the view has since got past (a later try succeeded) is marked ``resolved``."""
        out: dict[str, Failure] = {}
        views = {p.name: p for p in self.projections}
        for f in recorded:
            if not f.open:
                continue
            view = views.get(f.name)
            if view is not None and view.part is not None:
                # A partition stops only at its own events (and the shared policy ones); only
                # the partition that owns the event can tell it has since been applied.
                if not view.reads(f.topic, f.originator_id or ""):
                    continue
                if f.position <= positions.get(f.name, 0) and not view.owns(f.originator_id or ""):
                    continue
            if f.position <= positions.get(f.name, 0):
                with self.engine.begin() as conn:
                    conn.execute(
                        update(failures)
                        .where(failures.c.name == f.name, failures.c.position == f.position, failures.c.status == "failed")
                        .values(status="resolved")
                    )
                continue
            if f.name in out:
                continue
            if (f.name, f.position) in self._retried:
                out[f.name] = f
            else:
                self._retried.add((f.name, f.position))  # this runner's one more try
        return out

    # ------------------------------------------------------------------ following the log
    def step(self, head: int | None = None) -> tuple[int, int]:
        """Apply one page of the log to every view that needs it (a view stopped at a failure
        waits for the operator and holds no other view back). Returns (notifications read, the
        position the page covers up to)."""
        positions, leftover = self._positions()
        head = self.head() if head is None else head
        if leftover:  # a partitioned rebuild was cut short: its partitions finish first, then merge
            self._finish_partitions(leftover, head)
            positions, leftover = self._positions()
        recorded = self.failures()
        stopped = self._stopped(positions, recorded)
        # a view whose partitions could not all finish (one stopped at a failure) waits for them
        active = [p for p in self.projections if p.name not in stopped and p.name not in leftover]
        if not active:
            return 0, head
        low = min(positions[p.name] for p in active)
        if low >= head:
            return 0, low
        notes = self.recorder.select_notifications(low + 1, self.batch_size, stop=head, topics=self.topics)
        upto = head if len(notes) < self.batch_size else notes[-1].id
        # Decode once for every view, and only what some view will fold: in a partition, the
        # notifications of its own aggregates (and the shared policy ones).
        todo = [p for p in active if positions[p.name] < upto]
        counts = sorted({p.part[1] for p in todo if p.part is not None})
        wanted = {p.name: p.topics() for p in todo}
        owner: dict[int, dict[int, int]] = {}  # note id → parts → partition

        def given(p: Projection, n: Any) -> bool:
            if n.topic not in wanted[p.name]:
                return False
            if p.part is None or n.topic.startswith(SHARED_PREFIX):
                return True
            return owner[n.id][p.part[1]] == p.part[0]

        if counts:
            for n in notes:
                owner[n.id] = {c: partition_of(n.originator_id, c) for c in counts}
        readers: dict[str, list[Projection]] = {}  # topic → the views that read it
        for p in todo:
            for t in wanted[p.name]:
                readers.setdefault(t, []).append(p)
        decoded = [self._decode(n) for n in notes if any(given(p, n) for p in readers.get(n.topic, ()))]
        skipped: dict[str, set[int]] = {}
        for f in recorded:
            if f.status == "skipped":
                skipped.setdefault(f.name, set()).add(f.position)
        for p in todo:
            leave_out = skipped.get(p.name, set())
            page = [n for n in decoded if n.id not in leave_out and given(p, n)]
            if not any(isinstance(n.event, _Undecodable) for n in page):
                try:
                    self._apply(p, page, low, upto, last=upto >= head)
                    continue
                except Exception as exc:  # noqa: BLE001 - sorted below: retry, or find the poison
                    if transient(exc):
                        raise
                    log.warning("projection %r: page %s..%s failed (%s); applying it one event at a time", p.name, low, upto, _describe(exc))
            self._apply_one_by_one(p, page, low, upto, last=upto >= head)
        return len(notes), upto

    def _decode(self, n: Any) -> _Note:
        try:
            event: Any = self.mapper.to_domain_event(n)
        except Exception as exc:  # noqa: BLE001 - a store error is retried; anything else is poison
            if isinstance(exc, (DBAPIError, PersistenceError)) and not isinstance(exc, ValueError):
                raise
            event = _Undecodable(exc)
        return _Note(int(n.id), n.topic, str(n.originator_id), int(n.originator_version), event)

    def _apply(self, p: Projection, page: Sequence[_Note], low: int, upto: int, *, last: bool = True) -> bool:
        """One transaction: apply the page's notifications after the view's position and move it
        to ``upto``. False when another runner got there first (or a reset happened under us).
        ``last``: whether ``upto`` is the head this catch-up goes to (``Projection.last_page``)."""
        with self.engine.begin() as conn:
            if is_postgres(conn):
                # Derived data: an asynchronous commit may lose the last pages after a crash, rows
                # and tracking position together (one transaction), and the runner applies them
                # again; never a half. Like synchronous=NORMAL on SQLite (common.make_engine).
                conn.execute(text("SET LOCAL synchronous_commit = off"))
            position = self._lock(conn, p.tracking_name)
            if position >= upto or position < low:
                # Done by another runner, or reset under us: nothing safe to apply from this page.
                return False
            items = [(n.id, n.event) for n in page if n.id > position]
            for _, e in items:
                if isinstance(e, _Undecodable):
                    raise e.error
            p.last_page = last
            p.apply(conn, items)
            if self.pause_in_batch:
                sys.stderr.write(f"projections: {p.name} applied {position}..{upto}, pausing before commit\n")
                sys.stderr.flush()
                time.sleep(self.pause_in_batch)
            moved = conn.execute(
                update(tracking)
                .where(tracking.c.name == p.tracking_name, tracking.c.position == position)
                .values(position=upto, updated_at=_now())
            ).rowcount
            if moved != 1:
                raise PositionMoved(f"projection {p.name!r}: the tracking position moved during the batch")
        return True

    def _apply_one_by_one(self, p: Projection, page: Sequence[_Note], low: int, upto: int, *, last: bool = True) -> None:
        """The page again, one notification per transaction: the first that fails on its own is
        recorded and the view stops before it; if none does, the view reaches ``upto``."""
        for n in page:
            try:
                self._apply(p, [n], low, n.id, last=False)
            except Exception as exc:  # noqa: BLE001
                if transient(exc):
                    raise
                self._record_failure(p, n, exc)
                return
        self._apply(p, [], low, upto, last=last)

    def catch_up(
        self,
        progress: Callable[[int, int, int], None] | None = None,
        stop: threading.Event | None = None,
        *,
        head: int | None = None,
    ) -> int:
        """Apply pages until every view is at the head as seen at the start (or ``head``).
        ``progress`` gets (position reached, head, notifications read in this page). Returns
        notifications read."""
        head = self.head() if head is None else head
        total = 0
        while stop is None or not stop.is_set():
            read, upto = self.step(head)
            total += read
            if read:
                self.analyse_grown()
            if progress:
                progress(upto, head, read)
            if upto >= head:
                break
        return total

    #: PostgreSQL: at most this often (seconds) a runner that applied something checks whether
    #: its views' tables changed enough since they were last analysed and analyses those.
    ANALYSE_EVERY = 30.0

    def analyse_grown(self, *, now: float | None = None) -> list[str]:
        """On PostgreSQL, ``ANALYZE`` the views' tables whose rows changed by more than 50 + 10%
        since their statistics were last gathered (autovacuum's own rule), checked at most every
        ``ANALYSE_EVERY`` seconds. The planner needs them: a table never analysed is planned from
        its size alone, and the cuts view's reads by recipient then scanned an index on the
        period over most of the table for every 500 recipients (the district-year's rebuild took
        404 s on a server with autovacuum off, against 123 s where autovacuum analysed the tables
        as they grew). A server whose autovacuum analyses them finds nothing to do here. Two
        processes analysing one table at once may see PostgreSQL refuse one: that one is left to
        the other. Returns the tables analysed."""
        if self.engine.dialect.name != "postgresql":
            return []
        now = time.monotonic() if now is None else now
        if now - self._analysed_at < self.ANALYSE_EVERY:
            return []
        self._analysed_at = now
        names = sorted({t.name for p in self.projections for t in p.tables} | {tracking.name})
        with reading(self.engine) as conn:
            rows = conn.execute(
                text("SELECT relname, n_live_tup, n_mod_since_analyze FROM pg_stat_user_tables "
                     "WHERE schemaname = current_schema() AND relname = ANY(:names)"),
                {"names": names},
            ).all()
        done = []
        for name, live, changed in rows:
            if int(changed or 0) > 50 + 0.1 * int(live or 0):
                try:
                    # not a read (it writes the table's statistics): a connection of its own in
                    # autocommit, outside any transaction block, rather than ``reading``
                    with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                        conn.execute(text(f'ANALYZE "{name}"'))
                    done.append(name)
                except DBAPIError as exc:  # "tuple concurrently updated": another process analysed it
                    log.info("projections: ANALYZE %s left to another process (%s)", name, exc.orig)
        return done

    def rebuild(self, progress: Callable[[int, int, int], None] | None = None) -> int:
        """Every view of this runner from zero: reset, then catch up in pages of ``batch_size``."""
        self.setup()
        for p in self.projections:
            self.reset(p)
        return _rebuilding(self, progress)

    def rebuild_parallel(
        self,
        engine_url: str,
        source: Callable[[], Any],
        *,
        jobs: int = 2,
        progress: Callable[[str, int, float], None] | None = None,
    ) -> int:
        """Every view of this runner from zero, split by aggregate over ``jobs`` processes (ADR
        0008). The views are reset here; then process k keeps partition k of ``jobs`` of every
        partitionable view (``Projection.partitionable``): the recipients, claims and other
        aggregates whose id falls in it (``common.partition_of``), plus the shared policy
        notifications. It reads each page once, decodes only its partition's notifications, and
        every view folds them, each (view, partition) in exactly the transactions of
        :meth:`catch_up` on a tracking row of its own (``caps@0/2``: rows and position commit
        together; failures recorded and skips honoured as ever). A view that matches across
        aggregates (duplicates) is rebuilt whole in a process of its own (``jobs`` + 1
        processes). When every partition of a view has reached the head (as seen at the start),
        one transaction replaces its partition rows by the view's own position. A rebuild cut short leaves the partition rows: the next
        :meth:`step` (``ledger projections run``, ``catch_up``) finishes each partition and merges
        before the view goes on. On SQLite the processes take turns at the write lock (``BEGIN
        IMMEDIATE``, busy timeout) and decode in parallel.

        ``source`` is a picklable zero-argument callable that opens the application (its
        ``recorder`` and ``mapper``; ``close()`` when it has one) in the worker process;
        ``engine_url`` is the read models' SQLAlchemy URL. ``progress`` gets (views, notifications
        read, seconds) as each process finishes. Returns notifications read, summed over
        processes."""
        self.setup()
        for p in self.projections:
            self.reset(p)
        head = self.head()
        names = [p.name for p in self.projections]
        if not any(p.partitionable for p in self.projections):
            jobs = 1  # nothing to split
        if jobs <= 1:  # one process: the views share each page (read and decoded once)
            started = time.perf_counter()
            total = _rebuilding(self, head=head)
            if progress:
                progress(", ".join(names), total, time.perf_counter() - started)
            return total
        split = [p for p in self.projections if p.partitionable]
        whole = [p.name for p in self.projections if not p.partitionable]
        with self.engine.begin() as conn:
            for p in split:
                self._lock(conn, p.name)
                for k in range(jobs):
                    conn.execute(tracking.insert().values(name=f"{p.name}@{k}/{jobs}", position=0, version=p.version, updated_at=_now()))
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: a worker opens its own connections (nothing inherited from this process's pools
        # and their threads)
        ctx = multiprocessing.get_context("spawn")
        total = 0
        # The views that cannot be split (duplicates) in a process of their own: with them in
        # partition 0's process, that process finished 25 s after the other on the district-year
        # (114 s against 89 s); on their own they share the cores with both partitions.
        tasks = [([p.name for p in split], [], (k, jobs)) for k in range(jobs)]
        if whole:
            tasks.append(([], whole, (0, jobs)))
        with ProcessPoolExecutor(max_workers=len(tasks), mp_context=ctx) as pool:
            futures = [pool.submit(_rebuild_views, engine_url, source, parted, whole_, self.batch_size, head, part, self.pause_in_batch)
                       for parted, whole_, part in tasks]
            for f in as_completed(futures):
                done, read, seconds = f.result()
                total += read
                if progress:
                    progress(done, read, seconds)
        # Merge: every partition at the head (or, if something moved them on meanwhile, each
        # brought to a common position here first). A partition stopped at a failure was tried
        # in its process already: it stays stopped, its view unmerged, until the operator decides.
        self._retried.update((f.name, f.position) for f in self.failures(open_only=True))
        leftover = self._positions()[1]
        if leftover:
            self._finish_partitions(leftover, head)
        return total

    def _finish_partitions(self, leftover: dict[str, dict[str, int]], head: int) -> None:
        """The partitions a partitioned rebuild left behind, each caught up in this process (the
        views of one partition share its pages) to a common position, then merged per view."""
        views = {p.name: p for p in self.projections}
        target = max([head, *(v for rows in leftover.values() for v in rows.values())])
        by_part: dict[tuple[int, int], list[Projection]] = {}
        for name, rows in leftover.items():
            for row in rows:
                k, parts = (int(x) for x in row.split("@", 1)[1].split("/"))
                view = type(views[name])()
                view.part = (k, parts)
                by_part.setdefault((k, parts), []).append(view)
        for part in sorted(by_part):
            sub = Runner(self.engine, self.recorder, self.mapper, by_part[part], batch_size=self.batch_size,
                         pause_in_batch=self.pause_in_batch, on_failure=self.on_failure)
            sub._retried = self._retried  # noqa: SLF001 - one more try per failure, for the whole runner
            sub.catch_up(head=target)
        for name in leftover:
            self._merge(views[name], target)

    def _merge(self, p: Projection, head: int) -> bool:
        """One transaction: when every partition row of ``p`` is at ``head``, they give way to the
        view's own row at ``head``. False (nothing changed) while one is behind (stopped at a
        failure: the view waits for the operator's decision as ever)."""
        with self.engine.begin() as conn:
            self._lock(conn, p.name)
            stmt = select(tracking.c.name, tracking.c.position).where(tracking.c.name.like(f"{p.name}@%"))
            if is_postgres(conn):
                stmt = stmt.with_for_update()
            rows = conn.execute(stmt).all()
            if not rows or any(int(pos) != head for _, pos in rows):
                return False
            conn.execute(delete(tracking).where(tracking.c.name.in_([n for n, _ in rows])))
            conn.execute(update(tracking).where(tracking.c.name == p.name).values(position=head, updated_at=_now()))
        return True

    def run(
        self,
        stop: threading.Event,
        *,
        interval: float = 1.0,
        on_error: Callable[[Exception], None] | None = None,
        exit_when_idle: bool = False,
    ) -> None:
        """Keep the views current, polling the log every ``interval`` seconds, until ``stop`` is
        set (a SIGTERM handler sets it; the transaction in progress completes or rolls back as a
        whole). A lost database connection is reported and retried with a back-off; a view that
        meets an event it cannot apply stops before it (recorded, alerted) and the others go on."""
        backoff = interval
        while not stop.is_set():
            try:
                self.catch_up(stop=stop)
                backoff = interval
                if exit_when_idle:
                    return
                stop.wait(interval)
            except (DBAPIError, PersistenceError) as exc:  # a lost connection, a restart: resume from tracking
                if on_error:
                    on_error(exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)


def _rebuild_views(
    engine_url: str,
    source: Callable[[], Any],
    parted: list[str],
    whole: list[str],
    batch_size: int,
    head: int,
    part: tuple[int, int],
    pause_in_batch: float = 0.0,
) -> tuple[str, int, float]:
    """A worker of :meth:`Runner.rebuild_parallel`: partition ``part`` of the views ``parted``
    and the whole of ``whole``, caught up to ``head`` from their tracking rows, sharing each page."""
    from projections.common import make_engine

    started = time.perf_counter()
    # a worker process opens the store and the engine once, whatever number of tasks it runs
    app, engine = _WORKER.get((repr(source), engine_url), lambda: (source(), make_engine(engine_url)))
    views = select_projections(parted) if parted else []
    for v in views:
        v.part = part
    views += select_projections(whole) if whole else []
    runner = Runner(engine, app.recorder, app.mapper, views, batch_size=batch_size, pause_in_batch=pause_in_batch,
                    on_failure=lambda f: sys.stderr.write(f"projections: {f.message()}\n"))
    read = _rebuilding(runner, head=head)
    return ", ".join(v.tracking_name for v in views), read, time.perf_counter() - started


def _rebuilding(runner: Runner, progress: Callable[[int, int, int], None] | None = None, *, head: int | None = None) -> int:
    """``runner.catch_up`` for a rebuild from zero without the cyclic garbage collector walking
    the views' caches (the recipients, their working states and assessment passes: most of a
    process that rebuilds a district) again and again as they grow: it is off during the rebuild
    and what is alive after each page is frozen out of it (``gc.freeze``). Without this, half the
    CPU of a rebuild at 1,000 recipients, and seconds-long pauses at a district.
    Reference counting frees garbage as ever; the few cycles that die during a rebuild (about
    2,000 objects a page) wait for the first collection after it, when the collector is back as
    it was."""
    import gc

    enabled = gc.isenabled()

    def page(upto: int, head_: int, read: int) -> None:
        gc.freeze()
        if progress:
            progress(upto, head_, read)

    gc.disable()
    try:
        return runner.catch_up(page, head=head)
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


#: In a worker process of :meth:`Runner.rebuild_parallel`: the store and engine it opened.
_WORKER = WorkerOpened()


def _now() -> str:
    return datetime.now(CST).isoformat(timespec="seconds")  # people's clock, +08:00
