"""The cuts view over many pages (ADR 0010, issue 16): a recipient's cut is taken once per period (a day, ADR 0022)
it has events in (owed from page to page in ``proj_cut_owed``, committed with the position), and
a cut resumes the recipient's previous assessment pass; the rows are exactly those of one page,
whatever the page size, in one runner or in a fresh one per page (a restart between any two pages),
and nothing is left owed at the head."""

from __future__ import annotations

from sqlalchemy import func, select

import projections_dataset as ds
from infra.settings import Settings
from ledger.aggregates import PolicyLedger
from projections.cuts import Cuts, cut_table, owed, summarise
from projections.runner import Runner
from projections_support import engine_for


def _cuts(engine) -> dict[str, list[tuple]]:  # noqa: ANN001
    with engine.connect().execution_options(sqlite_deferred=True) as conn:
        rows = [tuple(r) for r in conn.execute(select(cut_table).order_by(cut_table.c.recipient, cut_table.c.period))]
        left = conn.execute(select(func.count()).select_from(owed)).scalar()
    return {"cuts": rows, "owed": left}


def test_cuts_are_the_same_for_any_page_size_and_any_restart(database_url: str) -> None:
    app = ds.app_on(Settings(database_url=database_url))
    ds.build(app, more=2)
    engine = engine_for(database_url)
    try:
        one = Runner(engine, app.recorder, app.mapper, [Cuts()], batch_size=100_000)
        one.rebuild()
        expected = _cuts(engine)
        assert expected["cuts"] and expected["owed"] == 0

        small = Runner(engine, app.recorder, app.mapper, [Cuts()], batch_size=7)
        small.rebuild()
        assert _cuts(engine) == expected

        # a fresh runner and view for every page: what a page left owed is picked up from the table
        first = Runner(engine, app.recorder, app.mapper, [Cuts()], batch_size=5)
        first.setup()
        first.reset(first.projections[0])
        head = first.head()
        seen_owed = False
        while True:
            r = Runner(engine, app.recorder, app.mapper, [Cuts()], batch_size=5)
            _, upto = r.step(head)
            seen_owed = seen_owed or _cuts(engine)["owed"] > 0
            if upto >= head:
                break
        assert seen_owed
        assert _cuts(engine) == expected
    finally:
        engine.dispose()
        app.close()


def test_a_resumed_summary_equals_a_fresh_one(database_url: str) -> None:
    """summarise with the memos of earlier cuts gives what it gives without them."""
    app = ds.app_on(Settings(database_url=database_url))
    ds.build(app)
    try:
        policy = app.policy()
        from ledger.policy import packs

        schemes = tuple(packs.JURISDICTIONS.get(policy.jurisdiction, ()))
        for rid in app.recipient_ids():
            memos: dict = {}
            head = app.recipient(rid).version
            for version in range(1, head + 1):
                r = app.repository.get(rid, version=version)
                t = r.modified_on
                assert summarise(r, policy.book, schemes, t, memos) == summarise(r, policy.book, schemes, t)
    finally:
        app.close()


def test_two_followers_taking_turns_bring_their_recipients_forward(database_url: str) -> None:
    """Two runners of the cuts view taking turns at the pages (the workers of a service, each
    catching up when it holds the view's lock): each finds the recipients it folded behind by
    what the other applied, and reads only the events since (never the whole stream a second
    time); the cuts are those of one runner."""
    app = ds.app_on(Settings(database_url=database_url))
    ds.build(app, more=2)
    engine = engine_for(database_url)
    try:
        Runner(engine, app.recorder, app.mapper, [Cuts()], batch_size=100_000).rebuild()
        expected = _cuts(engine)

        views = [Cuts(), Cuts()]
        whole: list[list[str]] = [[], []]
        for k, view in enumerate(views):
            real = view._load

            def counted(originator, version, real=real, k=k):  # noqa: ANN001
                whole[k].append(str(originator))
                return real(originator, version)

            view._load = counted  # type: ignore[method-assign]
        runners = [Runner(engine, app.recorder, app.mapper, [v], batch_size=5) for v in views]
        runners[0].setup()
        runners[0].reset(views[0])
        head = runners[0].head()
        turn = 0
        while True:
            _, upto = runners[turn % 2].step(head)
            turn += 1
            if upto >= head:
                break
        assert turn > 4
        assert _cuts(engine) == expected
        policy = str(PolicyLedger.ID)
        for loaded in whole:  # each recipient read from its first event at most once per runner
            people = [o for o in loaded if o != policy]
            assert people and len(people) == len(set(people))
            assert loaded.count(policy) <= 2  # the policy ledger: per version the runner needs, not per page
    finally:
        engine.dispose()
        app.close()
