"""Recipient snapshots that transcode (issue 16, ADR 0017: ``ledger.snapshots``).

- Every state a recipient of the project's scenarios passes through, with every kind of recipient
  event among them, goes through a snapshot and the store's own mapper (personal fields sealed,
  JSON, compression) and comes back equal: same dataclasses, enums, dates, tuples, tuple-keyed
  maps, Decimals, times.
- On SQLite and PostgreSQL, with recipients that between them record every kind of event: a
  recipient snapshotted in the store loads from the snapshot (reading only the events after it),
  in another process too, to the same state as from its events; a version before the snapshot
  still loads (from events); the ledger takes snapshots by itself every
  ``snapshotting_intervals`` events.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from commands.app import LedgerApp
from infra.settings import Settings
from infra.wiring import build_app
from ledger.aggregates import Recipient
from ledger.snapshots import decode, encode
from aggregate_support import KINDS, extra_events, scenario_recipients, state_of
from scenario_store import play, runner_on, text_of

def _round_trip(app: LedgerApp, r: Recipient) -> Recipient:
    snapshot = Recipient.Snapshot.take(r)
    stored = app.mapper.to_stored_event(snapshot)
    return app.mapper.to_domain_event(stored).mutate(None)


def test_encoding_keeps_what_json_would_lose() -> None:
    from datetime import date

    from ledger.facts import DecisionRef
    from ledger.values import VisitType

    value = {
        ("a", "b"): [("x", 1)],
        "d": date(2026, 1, 2),
        "e": VisitType.INPATIENT,
        "__only": 1,
        "ref": DecisionRef("e1", "post_hoc", None, datetime(2026, 1, 1), 1, 0),
    }
    from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex

    transcoder = JSONTranscoder()
    for t in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(t)
    back = decode(transcoder.decode(transcoder.encode(encode(value))))
    assert back == value and type(back["e"]) is VisitType and isinstance(back[("a", "b")][0], tuple)
    with pytest.raises(TypeError):  # only the ledger's own classes are rebuilt from a stored name
        decode({"__dc": "os:PathLike", "f": {}})
    with pytest.raises(TypeError):
        encode(Path("/"))


def test_every_state_of_every_scenario_recipient_round_trips_through_a_snapshot() -> None:
    seen: set[str] = set()
    checked = 0
    for name, app, n, rid in scenario_recipients():
        events = list(app.events.get(rid))
        state = None
        for event in events:
            state = event.mutate(state)
            seen.add(type(event).__name__)
            back = _round_trip(app, state)
            assert (back.version, state_of(back)) == (state.version, state_of(state)), (name, event)
            checked += 1
        if n == 0:
            extra_events(state, events[-1].timestamp + timedelta(seconds=1))
            for event in state.collect_events():
                seen.add(type(event).__name__)
            back = _round_trip(app, state)
            assert state_of(back) == state_of(state)
            assert back.write_off_proposals()["p1"]["status"] == "refused"
    assert checked > 500
    assert KINDS - {"Created", "Event"} <= seen, sorted(KINDS - seen)


#: Between them, every kind of recipient event (with ``aggregate_support.extra_events``).
STORE_SCENARIOS = [
    "clearing-offsets-oldest-first",
    "four-linkage-retroactive-suspension",
    "mutual-aid-levels-and-inpatient",
    "post-hoc-duplicates",
    "four-linkage-social-help",
    "post-hoc-auto-claims",
    "clearing-category-revoked",
]
STORED_KINDS: dict[str, set[str]] = {}
STORED_RUNS: dict[str, int] = {}


@pytest.mark.parametrize("name", STORE_SCENARIOS)
def test_a_recipient_loads_from_its_snapshot_in_the_store(database_url: str, name: str) -> None:
    runner = play(runner_on(database_url, text_of(name)), text_of(name))
    app = runner.app
    backend = "postgres" if database_url.startswith("postgres") else "sqlite"
    try:
        rids = list(dict.fromkeys(app.recipient_ids()))
        for rid in rids:
            r = app.recipient(rid)
            extra_events(r, datetime.now().astimezone())
            app.save(r)
            app.take_snapshot(rid)
            STORED_KINDS.setdefault(backend, set()).update(type(e).__name__ for e in app.events.get(rid))
        STORED_RUNS[backend] = STORED_RUNS.get(backend, 0) + 1
        other = build_app(Settings(database_url=database_url), jurisdiction=app.jurisdiction)
        try:
            for rid in rids:
                [snap] = list(other.snapshots.get(rid))
                from_events = None
                for event in other.events.get(rid):
                    from_events = event.mutate(from_events)
                reads: list[dict] = []  # the statements sent to the event table
                recorder = other.repository.event_store.recorder
                real = recorder.select_events
                recorder.select_events = lambda *a, **k: reads.append(k) or real(*a, **k)
                real_latest = getattr(other.recorder, "select_latest", None)
                if real_latest is not None:  # PostgreSQL: the snapshot and the events after it in one statement

                    def latest(*a: object, **k: object) -> object:
                        found = real_latest(*a, **k)
                        if found is not None:
                            snapshot, events = found
                            assert all(e.originator_version > snapshot.originator_version for e in events)
                            reads.append({"gt": snapshot.originator_version})
                        return found

                    other.recorder.select_latest = latest
                loaded = other.recipient(rid)
                recorder.__dict__.pop("select_events", None)
                other.recorder.__dict__.pop("select_latest", None)
                # from the snapshot: only the events after it were asked for
                assert [r.get("gt") for r in reads] == [snap.originator_version]
                assert snap.originator_version == loaded.version == from_events.version
                assert state_of(loaded) == state_of(from_events)
                past = other.recipient(rid, version=loaded.version - 3)
                early = None
                for event in other.events.get(rid, lte=loaded.version - 3):
                    early = event.mutate(early)
                assert state_of(past) == state_of(early)
        finally:
            other.close()
    finally:
        app.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_every_kind_of_event_went_through_a_snapshot_in_each_store(backend: str) -> None:
    """(Runs after the stores above, in file order.)"""
    if STORED_RUNS.get(backend, 0) < len(STORE_SCENARIOS):
        pytest.skip("run with the store tests above")
    assert KINDS - {"Created", "Event"} <= STORED_KINDS[backend], sorted(KINDS - STORED_KINDS[backend])


def test_the_snapshot_is_of_the_saved_recipient_not_read_back(database_url: str) -> None:
    """The ledger snapshots a recipient by itself every ``snapshotting_intervals`` events: a save
    whose events cross the interval snapshots the recipient it saved, at its version after the
    save, without reading the recipient back from the store (``LedgerCore._snapshot_saved``)."""
    interval = LedgerApp.snapshotting_intervals[Recipient]
    runner = play(runner_on(database_url, text_of("four-linkage-visit-count")), text_of("four-linkage-visit-count"))
    app = runner.app
    try:
        rid = next(iter(app.recipient_ids()))
        r = app.recipient(rid)
        base = datetime.now().astimezone()
        reads: list[str] = []
        store = app.repository.event_store
        real_get = store.get
        store.get = lambda *a, **k: reads.append("events") or real_get(*a, **k)
        real_latest = getattr(app.recorder, "select_latest", None)
        if real_latest is not None:
            app.recorder.select_latest = lambda *a, **k: reads.append("latest") or real_latest(*a, **k)
        crossed = None
        try:
            i = 0
            while crossed is None:
                before = r.version
                for _ in range(3):  # three events a save: the interval is crossed inside a save
                    r.trigger_event(Recipient.AutoClaimConsentChanged, timestamp=base + timedelta(seconds=i), signed=bool(i % 2))
                    i += 1
                app.save(r)
                if before // interval != r.version // interval:
                    crossed = r.version
        finally:
            store.get = real_get
            app.recorder.__dict__.pop("select_latest", None)
        assert reads == []
        versions = [s.originator_version for s in app.snapshots.get(rid)]
        assert versions[-1] == crossed  # the save's version, not the multiple inside it
        fresh = build_app(Settings(database_url=database_url), jurisdiction=app.jurisdiction)
        try:
            [snap] = [s for s in fresh.snapshots.get(rid) if s.originator_version == crossed]
            assert state_of(snap.mutate(None)) == state_of(fresh.recipient(rid, version=crossed))
            assert state_of(fresh.recipient(rid)) == state_of(app.recipient(rid))
        finally:
            fresh.close()
    finally:
        app.close()
