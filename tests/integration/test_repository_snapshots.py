"""``commands.repository.LedgerRepository`` (ADR 0017) returns what the library's repository
returns, on SQLite and PostgreSQL, while another process takes an aggregate past its snapshots.

Two applications on one store stand for two processes. A small aggregate snapshotted every 3
events makes a few commands cross several snapshots; the last test does the same with the
ledger's own Recipient (its snapshots transcode: ledger.snapshots)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import pytest
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event

from commands import models as m
from commands.app import LedgerApp
from commands.repository import LedgerRepository, upgrade
from infra.demo import resident_id
from infra.settings import Settings
from infra.wiring import ensure_policy
from ledger.aggregates import PolicyLedger, Recipient
from ledger.values import CST


class Tally(Aggregate):
    def __init__(self, name: str):
        self.name = name
        self.items: list[int] = []

    @event("Added")
    def add(self, n: int) -> None:
        self.items.append(n)


class Tallies(Application):
    name = "Tallies"
    snapshotting_intervals = {Tally: 3}

    def construct_repository(self) -> Any:
        return upgrade(super().construct_repository(), self.snapshotting_intervals)


def store_reads(app: Application) -> list[str]:
    """The statements a repository read sends: "snapshots" and "events" (one table each), or
    "latest" (both tables in one statement, PostgreSQL)."""
    reads: list[str] = []
    snapshots, events = app.repository.snapshot_store.recorder, app.repository.event_store.recorder

    def counted(recorder: Any, method: str, label: str) -> None:
        real = getattr(recorder, method)
        setattr(recorder, method, lambda *a, **k: reads.append(label) or real(*a, **k))

    counted(snapshots, "select_events", "snapshots")
    counted(events, "select_events", "events")
    if getattr(events, "select_latest", None) is not None:
        counted(events, "select_latest", "latest")
    return reads


def test_a_process_that_saw_a_short_stream_still_reads_the_latest_state(database_url: str) -> None:
    env = Settings(database_url=database_url).eventsourcing_env("Tallies")
    one, other = Tallies(env), Tallies(env)
    try:
        assert isinstance(one.repository, LedgerRepository)
        t = Tally(name="t")
        t.add(1)
        one.save(t)
        assert one.repository.get(t.id).version == 2  # seen here below the interval

        # the other process takes it past two snapshots (versions 3 and 6)
        for n in range(2, 7):
            x = other.repository.get(t.id)
            x.add(n)
            other.save(x)
        assert [s.originator_version for s in other.snapshots.get(t.id)] == [3, 6]

        reads = store_reads(one)
        one.repository.cache = None  # every get reads the store
        seen_short = one.repository.get(t.id)
        assert reads == ["events"]  # no snapshot query: the events only, from the start
        assert (seen_short.version, seen_short.items) == (7, [1, 2, 3, 4, 5, 6])
        reads.clear()
        again = one.repository.get(t.id)  # now known to be past the interval: from the snapshot
        # the snapshot, then the events after it (the library's recorders; the ledger's PostgreSQL
        # recorder reads both in one statement: tests/integration/test_recipient_snapshots.py)
        assert reads == ["snapshots", "events"]
        assert (again.version, again.items) == (7, [1, 2, 3, 4, 5, 6])
        assert one.repository.get(t.id, version=4).items == [1, 2, 3]
        with pytest.raises(AggregateNotFoundError):
            one.repository.get(uuid.uuid4())
    finally:
        one.close()
        other.close()


def test_the_ledger_uses_it_with_its_own_intervals() -> None:
    app = LedgerApp({"PERSISTENCE_MODULE": "eventsourcing.popo"})
    assert isinstance(app.repository, LedgerRepository)
    assert app.repository.snapshot_intervals == LedgerApp.snapshotting_intervals


def test_a_recipient_reaching_its_snapshot_interval_is_saved_and_snapshotted() -> None:
    class Often(LedgerApp):
        snapshotting_intervals = {Recipient: 3, PolicyLedger: 50}

    app = Often({"PERSISTENCE_MODULE": "eventsourcing.popo"})
    ensure_policy(app, published_at=datetime(2026, 1, 1, tzinfo=CST))
    at = datetime(2026, 3, 2, 9, tzinfo=CST)
    rid = app.run(m.Enrol(id_number=resident_id("310105", date(1950, 5, 6), 120, True), name="测试", street="华阳路街道", at=at)).ids["recipient"]
    app.run(m.GrantCategory(recipient=rid, category="dibao", valid_from=date(2020, 1, 1), at=at.replace(minute=1)))
    app.run(m.Insure(recipient=rid, scheme="resident", valid_from=date(2015, 1, 1), at=at.replace(minute=2)))  # version 3
    assert [s.originator_version for s in app.snapshots.get(uuid.UUID(rid))] == [3]
    assert app.recipient(rid).version == 3
