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
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, select, text, update
from sqlalchemy.engine import Connection
from eventsourcing.persistence import PersistenceError
from sqlalchemy.exc import DBAPIError

from projections.common import Projection, is_postgres, metadata, tracking

DEFAULT_BATCH = 1000


def all_projections() -> list[Projection]:
    """Every read model, in the order the runner applies a batch."""
    from projections.caps import Caps
    from projections.community import CommunityMonths
    from projections.duplicates import Duplicates
    from projections.funds import FundBooks
    from projections.statement import Statement

    return [Caps(), CommunityMonths(), Duplicates(), FundBooks(), Statement()]


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


@dataclass
class Status:
    name: str
    version: int
    stored_version: int | None
    position: int
    head: int
    updated_at: str | None

    @property
    def lag(self) -> int:
        """How far behind the head, in notification ids (ids can have gaps: an upper bound)."""
        return max(0, self.head - self.position)

    @property
    def stale(self) -> bool:
        return self.stored_version is not None and self.stored_version != self.version


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
    ):
        self.engine = engine
        self.recorder = recorder
        self.mapper = mapper
        self.projections = list(projections) if projections is not None else all_projections()
        self.batch_size = batch_size
        # Test hook (LEDGER_PROJECTIONS_PAUSE_IN_BATCH): sleep after applying a batch, before the
        # commit, so that a kill can be made to land inside a transaction.
        self.pause_in_batch = pause_in_batch
        self.topics = sorted(set().union(*(p.topics() for p in self.projections)))

    # ------------------------------------------------------------------ schema and tracking
    def setup(self) -> None:
        """Create the tables and tracking rows; a view whose stored version differs is rebuilt
        from zero (its tables dropped and created again)."""
        with self.engine.begin() as conn:
            if is_postgres(conn):
                # Two processes starting at once must not race on CREATE TABLE.
                conn.execute(text("SELECT pg_advisory_xact_lock(7308262501)"))
            metadata.create_all(conn, tables=[tracking, *{t for p in self.projections for t in p.tables}])
            stored = dict(conn.execute(select(tracking.c.name, tracking.c.version)).all())
            for p in self.projections:
                if p.name not in stored:
                    conn.execute(tracking.insert().values(name=p.name, position=0, version=p.version, updated_at=None))
        for p in self.projections:
            if p.name in stored and stored[p.name] != p.version:
                self.reset(p, recreate=True)

    def reset(self, projection: Projection, *, recreate: bool = False) -> None:
        """Empty a view and move it back to position 0, in one transaction."""
        with self.engine.begin() as conn:
            self._lock(conn, projection.name)
            if recreate:
                metadata.drop_all(conn, tables=list(projection.tables))
                metadata.create_all(conn, tables=list(projection.tables))
            else:
                for t in reversed(projection.tables):
                    conn.execute(t.delete())
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
        with self.engine.connect().execution_options(sqlite_deferred=True) as conn:
            rows = dict(conn.execute(select(tracking.c.name, tracking.c.position)).all())
        return {p.name: int(rows.get(p.name, 0)) for p in self.projections}

    def head(self) -> int:
        return int(self.recorder.max_notification_id() or 0)

    def status(self) -> list[Status]:
        head = self.head()
        with self.engine.connect().execution_options(sqlite_deferred=True) as conn:
            rows = {r.name: r for r in conn.execute(select(tracking))}
        out = []
        for p in self.projections:
            r = rows.get(p.name)
            out.append(Status(p.name, p.version, r.version if r else None, int(r.position) if r else 0, head, r.updated_at if r else None))
        return out

    # ------------------------------------------------------------------ following the log
    def step(self, head: int | None = None) -> tuple[int, int]:
        """Apply one page of the log to every view that needs it. Returns (notifications read,
        the position the page covers up to)."""
        positions = self.positions()
        low = min(positions.values())
        head = self.head() if head is None else head
        if low >= head:
            return 0, low
        notes = self.recorder.select_notifications(low + 1, self.batch_size, stop=head, topics=self.topics)
        upto = head if len(notes) < self.batch_size else notes[-1].id
        decoded = [(n.id, n.topic, self.mapper.to_domain_event(n)) for n in notes]
        for p in self.projections:
            if positions[p.name] >= upto:
                continue
            wanted = p.topics()
            with self.engine.begin() as conn:
                position = self._lock(conn, p.name)
                if position >= upto or position < low:
                    # Done by another runner, or reset under us: nothing safe to apply from this page.
                    continue
                items = [(i, e) for i, t, e in decoded if i > position and t in wanted]
                p.apply(conn, items)
                if self.pause_in_batch:
                    sys.stderr.write(f"projections: {p.name} applied {position}..{upto}, pausing before commit\n")
                    sys.stderr.flush()
                    time.sleep(self.pause_in_batch)
                moved = conn.execute(
                    update(tracking)
                    .where(tracking.c.name == p.name, tracking.c.position == position)
                    .values(position=upto, updated_at=_now())
                ).rowcount
                if moved != 1:
                    raise PositionMoved(f"projection {p.name!r}: the tracking position moved during the batch")
        return len(notes), upto

    def catch_up(self, progress: Callable[[int, int, int], None] | None = None, stop: threading.Event | None = None) -> int:
        """Apply pages until every view is at the head as seen at the start. ``progress`` gets
        (position reached, head, notifications read in this page). Returns notifications read."""
        head = self.head()
        total = 0
        while stop is None or not stop.is_set():
            read, upto = self.step(head)
            total += read
            if progress:
                progress(upto, head, read)
            if upto >= head:
                break
        return total

    def rebuild(self, progress: Callable[[int, int, int], None] | None = None) -> int:
        """Every view of this runner from zero: reset, then catch up in pages of ``batch_size``."""
        self.setup()
        for p in self.projections:
            self.reset(p)
        return self.catch_up(progress)

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
        whole). A lost database connection is reported and retried with a back-off."""
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
