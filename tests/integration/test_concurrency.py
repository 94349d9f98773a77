"""Concurrent writers on PostgreSQL: nothing is lost, no cap is spent twice.

Each writer is its own LedgerApp (its own connection pool) on the same database, in its own
thread. Optimistic concurrency on the Recipient (ADR 0003) plus the retry in ``LedgerApp.run``
is what keeps them apart; the tests force the race with a barrier so that both writers have read
the same version before either saves.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from commands import models as m
from commands import queries
from commands.app import LedgerApp
from infra import integrity
from infra.settings import Settings
from aggregate_support import count_conflicts
from infra.wiring import build_app
from integrity_story import CST, id_number, ok

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def _race_on_first_load(app: LedgerApp, barrier: threading.Barrier) -> None:
    """The first time this app loads a recipient, wait until the other writer has loaded it too."""
    load = app.recipient
    state = {"first": True}

    def recipient(rid, version=None):
        r = load(rid, version)
        if state["first"]:
            state["first"] = False
            barrier.wait(timeout=30)
        return r

    app.recipient = recipient  # type: ignore[method-assign]


def _expense(rid: str, invoice_no: str, total: str, in_scope: str, served: str, facility: dict | None = None) -> m.RecordExpense:
    return m.RecordExpense.model_validate(
        {
            "recipient": rid,
            "visit_type": "outpatient",
            "facility": facility or {"kind": "hospital", "level": 3, "code": "H-3"},
            "service_date": served,
            "invoice_date": served,
            "invoice_no": invoice_no,
            "total": total,
            "in_scope": in_scope,
            "basic_insurance_paid": "0.00",
        }
    )


@pytest.fixture
def apps(database_url: str):
    settings = Settings(database_url=database_url)
    first = build_app(settings)
    second = build_app(settings)  # the policy is there already: the second app only reads it
    yield first, second
    first.close()
    second.close()


def _enrolled(app: LedgerApp, first17: str) -> str:
    rid = ok(app.run(m.Enrol(id_number=id_number(first17), name="并发测试"))).ids["recipient"]
    ok(app.run(m.GrantCategory.model_validate({"recipient": rid, "category": "dibao", "from": "2025-01-01"})))
    ok(app.run(m.Insure.model_validate({"recipient": rid, "scheme": "resident", "from": "2020-01-01"})))
    return rid


def test_two_writers_on_one_recipient_lose_no_event(apps, database_url):
    a, b = apps
    rid = _enrolled(a, "31010519600101201")
    served = (datetime.now(CST) - timedelta(days=10)).date().isoformat()
    barrier = threading.Barrier(2)
    conflicts = [count_conflicts(a), count_conflicts(b)]
    for app in apps:
        _race_on_first_load(app, barrier)
    per_writer = 12

    def write(app: LedgerApp, tag: str) -> list[str]:
        return [ok(app.run(_expense(rid, f"{tag}-{i}", "10.00", "10.00", served))).ids["expense"] for i in range(per_writer)]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(write, apps, ["A", "B"]))

    assert sum(c["conflict"] for c in conflicts) >= 1, "the race did not happen"
    fresh = build_app(Settings(database_url=database_url), publish_policy=False)
    r = fresh.recipient(rid)
    fresh.close()
    recorded = sorted(acc.facts.invoice_no for acc in r.expenses.values())
    assert recorded == sorted(f"{t}-{i}" for t in "AB" for i in range(per_writer))  # every one, once
    assert sorted(results[0] + results[1]) == sorted(r.expenses)
    # the chain followed both writers: every event is chained, in notification order
    chain = integrity.chain_for(a)
    chain.run()
    report = integrity.verify(chain)
    assert report.ok and report.unchained == 0 and report.checked == len(a.recorder.select_notifications(start=1, limit=10_000))


def test_two_claims_racing_for_the_last_of_a_cap_never_both_get_it(apps, database_url):
    """R-CAP-1, R-CAP-3: dibao outpatient cap 10,000.00 a year (a local setting). Two claims of
    9,000.00 aid each are approved at the same moment by two writers: one gets 9,000.00, the
    other exactly what is left, 1,000.00."""
    a, b = apps
    rid = _enrolled(a, "31010519600101202")
    served = (datetime.now(CST) - timedelta(days=10)).date().isoformat()
    # non-designated hospitals: city aid only (R-4L-1), 60% of self-pay for dibao outpatient
    e1 = ok(a.run(_expense(rid, "CAP-1", "15000.00", "15000.00", served))).ids["expense"]
    e2 = ok(a.run(_expense(rid, "CAP-2", "15000.00", "15000.00", served))).ids["expense"]
    claims = []
    for eid in (e1, e2):
        cid = ok(a.run(m.LodgeClaim(recipient=rid, expenses=[eid], handler="handler-1"))).ids["claim"]
        ok(a.run(m.Review(claim=cid, reviewer="reviewer-1")))
        claims.append(cid)
    barrier = threading.Barrier(2)
    conflicts = [count_conflicts(a), count_conflicts(b)]
    for app in apps:
        _race_on_first_load(app, barrier)

    def approve(app: LedgerApp, cid: str):
        return app.run(m.Approve(claim=cid, approver="approver-1"))

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(approve, apps, claims))

    assert [r.status for r in results] == ["accepted", "accepted"]
    assert sum(c["conflict"] for c in conflicts) >= 1, "the race did not happen"
    granted = sorted(Decimal(r.ids["aid"]) for r in results)
    assert granted == [Decimal("1000.00"), Decimal("9000.00")]
    fresh = build_app(Settings(database_url=database_url), publish_policy=False)
    try:
        r = fresh.recipient(rid)
        year = int(served[:4])
        [row] = [x for x in queries.annual_rows(r, fresh.policy().book, fresh.schemes) if x["year"] == year and x["scheme"] == "shanghai.medical_aid" and x["kind"] == "outpatient"]
        assert Decimal(row["granted"]) == Decimal("10000.00") == Decimal(row["cap"])
        assert row["remaining"] == "0.00"
        assert not r.cases, "no overrun had to be cleared afterwards"
    finally:
        fresh.close()


def test_many_writers_many_recipients_lose_nothing(apps, database_url):
    """No barrier: four writers, two recipients, interleaving as it comes."""
    a, b = apps
    extra = [build_app(Settings(database_url=database_url)) for _ in range(2)]
    writers = [a, b, *extra]
    rids = [_enrolled(a, "31010519600101203"), _enrolled(a, "31010519600101204")]
    served = (datetime.now(CST) - timedelta(days=10)).date().isoformat()
    per_writer = 8

    def write(args):
        n, app = args
        done = []
        for i in range(per_writer):
            rid = rids[i % 2]
            res = app.run(m.ConsentAutoClaim(recipient=rid, signed=bool(i % 2)))
            ok(res)
            done.append(ok(app.run(_expense(rid, f"W{n}-{i}", "1.00", "1.00", served))).ids["expense"])
        return done

    try:
        with ThreadPoolExecutor(len(writers)) as pool:
            done = [e for batch in pool.map(write, enumerate(writers)) for e in batch]
        stored = [e for rid in rids for e in a.recipient(rid).expenses]
        assert sorted(stored) == sorted(done) and len(set(stored)) == len(writers) * per_writer
        totals = [queries.fund_movements(a.recipient(rid)) for rid in rids]
        assert all(v == 0 for t in totals for v in t.values())
    finally:
        for app in extra:
            app.close()
