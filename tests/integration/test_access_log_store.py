"""The read access log (ADR 0014) keeps one row per recipient a read named, however many: a list
read naming a district's worth of recipients goes in as one stream on PostgreSQL (``COPY``), a
short one as an insert; the rows read back the same either way, in order, each under its own id.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from infra.http.store import HttpStore
from infra.settings import Settings


def test_a_long_list_and_a_short_one_are_logged_alike(database_url):
    store = HttpStore.for_settings(Settings(database_url=database_url))
    try:
        before = datetime.now(timezone.utc) - timedelta(seconds=1)
        many = [f"r-{i:03d}" for i in range(250)]  # past the COPY threshold
        store.record_access(officer="c-1", role="clearing_officer", street="天山路街道", recipients=many + many[:3],
                            operation="clearing_cases", target="/clearing/cases?status=open")
        store.record_access(officer="d-2", role="district_officer", street=None, recipients=["r-007", "r-900"],
                            operation="recipient", target="/recipients/r-007")
        store.record_access(officer="a-3", role="auditor", street=None, recipients=None, operation="snapshot", target="/snapshots")

        seven = store.accesses("r-007", include_population=False)
        assert [(a["officer"], a["operation"], a["scope"]) for a in seven] == [
            ("c-1", "clearing_cases", "recipient"), ("d-2", "recipient", "recipient")]
        assert seven[0]["street"] == "天山路街道" and seven[0]["target"] == "/clearing/cases?status=open"
        assert seven[0]["id"] < seven[1]["id"] and all(before <= a["at"] <= datetime.now(timezone.utc) for a in seven)
        assert all(a["at"].tzinfo is not None for a in seven)
        counts = [len(store.accesses(r, include_population=False)) for r in many]
        assert counts == [2 if r == "r-007" else 1 for r in many]  # r-000…r-002 named twice in one read: logged once
        with_population = store.accesses("r-249")
        assert [a["scope"] for a in with_population] == ["recipient", "population"]
    finally:
        store.close()
