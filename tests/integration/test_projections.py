"""Read models (ADR 0008) on both backends: incremental = rebuilt from zero, two runners do not
double-count, the views agree with the aggregates, the fund books balance and the check can fail."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

import projections_dataset as ds
from infra.settings import Settings
from infra.wiring import build_app, ensure_policy
from projections import caps, community, duplicates, funds, statement
from projections_support import canonical, dump, engine_for, reference, runner


@pytest.fixture
def story(database_url: str):
    """The dataset told to an application on a fresh store, with the read-model engine."""
    app = ds.app_on(Settings(database_url=database_url))
    engine = engine_for(database_url)
    yield app, engine
    engine.dispose()


def test_incremental_equals_rebuilt_from_zero_on_the_demo_dataset(database_url: str) -> None:
    """The demo dataset (infra.demo) generated while a runner follows the log in small batches;
    then a rebuild from zero gives the same rows, and the views equal what the aggregates say."""
    from infra import demo

    settings = Settings(database_url=database_url)
    plan = demo.plan(recipients=4, seed=11)
    app = build_app(settings, jurisdiction="shanghai.changning", publish_policy=False)
    ensure_policy(app, published_at=plan.steps[0].at - timedelta(hours=1))
    engine = engine_for(database_url)
    try:
        follower = runner(engine, app, batch_size=7)
        calls = [0]

        def follow(done: int, total: int) -> None:
            calls[0] += 1
            if calls[0] % 10 == 0:  # the log grows while the views follow it
                follower.catch_up()

        demo.generate(app, recipients=4, seed=11, progress=follow)
        follower.catch_up()
        incremental = dump(engine)
        for table in ("proj_caps", "proj_community_month", "proj_fund_line", "proj_statement"):
            assert incremental[table], table
        head = app.recorder.max_notification_id()
        assert incremental["positions"] == [(p.name, head) for p in sorted(follower.projections, key=lambda p: p.name)]

        runner(engine, app, batch_size=1000).rebuild()
        assert dump(engine) == incremental

        ref = reference(app)
        with engine.connect() as conn:
            assert canonical(caps.annual(conn)) == canonical(ref["annual"])
            assert canonical(community.suspensions(conn)) == canonical(ref["suspensions"])
            assert canonical(duplicates.receipt_duplicates(conn)) == canonical(ref["duplicates"])
            assert funds.outflow(conn) == ref["funds"]
            assert funds.check(conn).ok
    finally:
        engine.dispose()


def test_incremental_equals_rebuilt_from_zero_on_the_story(story) -> None:
    app, engine = story
    follower = runner(engine, app, batch_size=7)
    told = ds.Told(app)
    plan = ds.steps(more=2)
    for i in range(0, len(plan), 11):  # the log grows while the views follow it in small batches
        told.tell(plan[i : i + 11])
        follower.catch_up()
    incremental = dump(engine)
    assert all(incremental[t] for t in ("proj_caps", "proj_community_month", "proj_suspension", "proj_duplicate", "proj_fund_line", "proj_statement"))
    runner(engine, app, batch_size=1000).rebuild()
    assert dump(engine) == incremental


def test_two_runners_do_not_double_count(story, database_url: str) -> None:
    app, engine = story
    ds.build(app)
    # First, deterministically: b reads its page from where the views were before a's commits;
    # under the lock it finds the positions moved and applies only what follows them.
    a = runner(engine, app, batch_size=10)
    b = runner(engine, app, batch_size=25)
    stale = b.positions()
    a.step()
    a.step()
    moved = a.positions()
    assert min(moved.values()) > 0
    b.positions = lambda: stale
    read, upto = b.step()
    del b.positions
    assert read > 0 and upto > min(moved.values())
    # Then two runners with their own connections race to the head in small batches.
    engines = [engine_for(database_url) for _ in range(2)]
    runners = [runner(e, app, batch_size=4) for e in engines]
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def follow(r) -> None:
        try:
            start.wait()
            r.catch_up()
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=follow, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for e in engines:
        e.dispose()
    assert not failures, failures
    together = dump(engine)
    runner(engine, app).rebuild()
    assert dump(engine) == together
    with engine.connect() as conn:
        assert funds.check(conn).ok


def test_views_agree_with_the_aggregates(story) -> None:
    app, engine = story
    told = ds.build(app, more=1)
    runner(engine, app, batch_size=50).catch_up()
    ref = reference(app)
    rid = told.recipients
    eid = told.expenses
    with engine.connect() as conn:
        assert canonical(caps.annual(conn)) == canonical(ref["annual"])
        assert canonical(community.suspensions(conn)) == canonical(ref["suspensions"])
        assert canonical(duplicates.receipt_duplicates(conn)) == canonical(ref["duplicates"])
        assert funds.outflow(conn) == ref["funds"]

        # R-CAP-2: the inpatient cap amended without any amount changing is read as known now.
        r5 = {(a["kind"]): a for a in caps.annual(conn, rid["R5"]) if a["scheme"] == "shanghai.medical_aid"}
        assert r5["inpatient"]["cap"] == "90000.00" and r5["outpatient"]["cap"] == "15000.00"
        # R-4L-4: nine community-centre visits in January; the ninth suspended 四医联动 until the review.
        [jan] = [m for m in community.months(conn, rid["R1"]) if m["month"] == "2026-01"]
        assert jan["visits"] == 9 and jan["visits_allowed"] == 8
        assert community.suspensions(conn, current_only=True) == []

        found = {(d["kind"], d["subject"], d["matched"]) for d in duplicates.index(conn)}
        assert ("receipt", eid["E3b"], eid["E3"]) in found
        assert ("receipt_other_recipient", eid["E4"], eid["E3"]) in found
        # a receipt is paid once in the whole ledger (R-CLR-1(b)): E4's claim was refused, so the
        # index holds the attempt, not a second payment
        assert ("aided_twice", eid["E4"], eid["E3"]) not in found
        assert ("attempted", eid["E4"], eid["E3"]) in found
        assert ("attempted", eid["E3b"], eid["E3"]) in found
        assert any(k == "claim_rejected" and m == eid["E3b"] for k, _, m in found)
        for d in duplicates.index(conn):
            assert d["evidence"] and d["reason"]

        books = funds.check(conn)
        assert books.ok, books.problems
        assert books.debits == books.credits > 0

        kinds = [row["kind"] for row in statement.for_recipient(conn, rid["R2"])]
        for kind in ("expense_recorded", "claim_lodged", "aid_decided", "aid_paid", "insurance_settled", "aid_reassessed", "case_opened", "repayment", "offset", "write_off"):
            assert kind in kinds, kind
        assert kinds.index("aid_paid") < kinds.index("case_opened") < kinds.index("repayment") < kinds.index("offset") < kinds.index("write_off")

    # The check can fail: one fen more on one line unbalances its entry and every later position.
    with engine.begin() as conn:
        line = funds.fund_line
        first = conn.execute(line.select().where(line.c.debit_fen > 0).order_by(line.c.position).limit(1)).first()
        conn.execute(update(line).where(line.c.position == first.position, line.c.entry == first.entry, line.c.line == first.line).values(debit_fen=first.debit_fen + 1))
    with engine.connect() as conn:
        result = funds.check(conn)
    assert not result.ok
    assert any(f"entry {first.position}/{first.entry} does not balance" in p for p in result.problems)
    assert any("do not balance after position" in p for p in result.problems)
