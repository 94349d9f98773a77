"""The read access log (ADR 0014) keeps one row per read, however many recipients it named: a list
read naming a district's worth of recipients is one row with the list in one column, found again
under each recipient it named; a log made before the list column gets it on open, its old rows
(one per recipient) read back as before.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func, insert, inspect, select

from infra.http.store import HttpStore, access_log, make_engine
from infra.settings import Settings


def test_a_long_list_and_a_short_one_are_logged_alike(database_url):
    store = HttpStore.for_settings(Settings(database_url=database_url))
    try:
        before = datetime.now(timezone.utc) - timedelta(seconds=1)
        many = [f"r-{i:03d}" for i in range(250)]
        store.record_access(officer="c-1", role="clearing_officer", street="天山路街道", recipients=many + many[:3],
                            operation="clearing_cases", target="/clearing/cases?status=open")
        store.record_access(officer="d-2", role="district_officer", street=None, recipients=["r-007", "r-900"],
                            operation="recipient", target="/recipients/r-007")
        store.record_access(officer="a-3", role="auditor", street=None, recipients=None, operation="snapshot", target="/snapshots")
        store.record_access(officer="e-4", role="auditor", street=None, recipients=["r-900"], operation="recipient", target="/recipients/r-900")
        store.record_access(officer="e-4", role="auditor", street=None, recipients=[], operation="duplicates", target="/duplicates")

        with store.engine.connect() as conn:  # one row a read; a read that named nobody leaves none
            assert conn.execute(select(func.count()).select_from(access_log)).scalar_one() == 4

        seven = store.accesses("r-007", include_population=False)
        assert [(a["officer"], a["operation"], a["scope"], a["recipient"]) for a in seven] == [
            ("c-1", "clearing_cases", "recipient", "r-007"), ("d-2", "recipient", "recipient", "r-007")]
        assert seven[0]["street"] == "天山路街道" and seven[0]["target"] == "/clearing/cases?status=open"
        assert seven[0]["id"] < seven[1]["id"] and all(before <= a["at"] <= datetime.now(timezone.utc) for a in seven)
        assert all(a["at"].tzinfo is not None for a in seven) and all("recipients" not in a for a in seven)
        counts = [len(store.accesses(r, include_population=False)) for r in many]
        assert counts == [2 if r == "r-007" else 1 for r in many]  # r-000…r-002 named twice in one read: logged once
        assert [a["officer"] for a in store.accesses("r-900", include_population=False)] == ["d-2", "e-4"]
        assert store.accesses("r-25", include_population=False) == []  # a prefix of r-250… is not a recipient named
        with_population = store.accesses("r-249")
        assert [(a["scope"], a["recipient"]) for a in with_population] == [("recipient", "r-249"), ("population", None)]
        since = store.accesses("r-900", include_population=False, since=datetime.now(timezone.utc) + timedelta(seconds=5))
        assert since == []
    finally:
        store.close()


def test_a_log_made_before_the_list_column_gets_it_on_open(database_url):
    settings = Settings(database_url=database_url)
    engine = make_engine(settings)
    old = Table("http_access_log", MetaData(),
                Column("id", Integer, primary_key=True, autoincrement=True), Column("at", DateTime(timezone=True), nullable=False),
                Column("officer", String(64), nullable=False), Column("role", String(32), nullable=False), Column("street", String(200)),
                Column("recipient", String(64), index=True), Column("scope", String(16), nullable=False),
                Column("operation", String(100), nullable=False), Column("target", String(500), nullable=False))
    old.create(engine)
    at = datetime(2026, 11, 30, 2, 0, tzinfo=timezone.utc)
    with engine.begin() as conn:  # the old way: one row per recipient of a list read
        conn.execute(insert(old), [{"at": at, "officer": "c-1", "role": "clearing_officer", "recipient": r, "scope": "recipient",
                                    "operation": "clearing_cases", "target": "/clearing/cases"} for r in ("r-1", "r-2")])
    engine.dispose()
    store = HttpStore.for_settings(settings)
    try:
        store.record_access(officer="c-2", role="clearing_officer", street=None, recipients=["r-2", "r-3"],
                            operation="clearing_cases", target="/clearing/cases")
        assert [(a["officer"], a["at"]) for a in store.accesses("r-2")] == [("c-1", at), ("c-2", store.accesses("r-3")[0]["at"])]
        assert [a["officer"] for a in store.accesses("r-1")] == ["c-1"]
        HttpStore.for_settings(settings).close()  # opened again: nothing to add
        # the indexes "who read this person" reads, also on an old table: the population-wide
        # reads' (partial), and on PostgreSQL the list column's (GIN)
        indexes = {i["name"] for i in inspect(store.engine).get_indexes("http_access_log")}
        assert "ix_http_access_log_population" in indexes
        assert ("ix_http_access_log_recipients" in indexes) == (store.engine.dialect.name == "postgresql")
    finally:
        store.close()
