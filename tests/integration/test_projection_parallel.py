"""Rebuilds that use the machine, and district-wide reads from read models (ADR 0008), on both
backends: a rebuild in parallel processes (one view each) gives exactly the rows and positions of
a rebuild in one process; the ``clearing_cases`` read model answers what the recipients'
aggregates say, status by status; ``ledger serve --workers`` builds its app from a factory string."""

from __future__ import annotations

import json

import pytest

import projections_dataset as ds
from commands import clearing_views
from commands import models as m
from infra.http import views
from infra.projection_source import store_source
from infra.settings import Settings
from projections.common import projection_url
from projections_support import dump, engine_for, runner


@pytest.fixture
def told(database_url: str):
    """The projection dataset (cases opened, repaid, offset and written off) with extra people."""
    app = ds.app_on(Settings(database_url=database_url))
    ds.build(app, more=1)
    engine = engine_for(database_url)
    yield app, engine
    engine.dispose()
    app.close()


def test_a_parallel_rebuild_gives_the_rows_of_a_sequential_one(told, database_url: str) -> None:
    app, engine = told
    head = int(app.recorder.max_notification_id())
    sequential = runner(engine, app, batch_size=50)
    sequential.rebuild()
    expected = dump(engine)
    assert expected["proj_caps"] and expected["proj_statement"] and expected["proj_clearing_case"]
    assert set(dict(expected["positions"]).values()) == {head}

    parallel = runner(engine, app, batch_size=40)
    finished: list[str] = []
    url = projection_url(Settings(database_url=database_url).sqlalchemy_url())
    read = parallel.rebuild_parallel(url, store_source(database_url, "shanghai.changning"), jobs=2,
                                     progress=lambda name, n, _s: finished.append(name))
    assert sorted(n for group in finished for n in group.split(", ")) == sorted(p.name for p in parallel.projections)
    assert len(finished) == 2  # two processes, each a group of views sharing its pages
    assert read > 0
    assert dump(engine) == expected
    assert not parallel.failures()

    # the command line (views already at the head: reset, rebuilt again): `ledger projections rebuild --jobs 2`
    from typer.testing import CliRunner

    import infra.cli.projections  # noqa: F401 - registers `ledger projections`
    from infra.cli import app as cli_app

    rebuilt = CliRunner().invoke(cli_app, ["projections", "rebuild", "--jobs", "2", "--batch", "30"], env={"LEDGER_DATABASE_URL": database_url})
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "in 2 processes" in rebuilt.stdout
    assert dump(engine) == expected


def _canonical(rows: list[dict]) -> list[str]:
    return [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows]


def test_the_clearing_cases_read_model_answers_what_the_aggregates_say(told) -> None:
    app, engine = told
    ready: set[str] = set()
    state = views.caught_up(engine, app, "clearing_cases", ready)
    assert state.lag == 0 and ready == {"clearing_cases"}
    every = views.clearing_cases(engine, app, None)
    old = list(clearing_views.clearing_cases(app))
    assert len(every) > 1
    assert every == old  # same rows, same order (enrolment order, each person's oldest first)
    assert _canonical(every) == _canonical(old)
    seen = {r["status"] for r in every}
    assert {"open", "written_off"} <= seen, seen
    for status in clearing_views.STATUSES:
        assert views.clearing_cases(engine, app, status) == list(clearing_views.clearing_cases(app, status=status))

    # more events: a repayment settles part of an open case; the view follows on the next read
    [case] = [r for r in every if r["status"] == "open"][:1]
    result = app.run(m.Repay(recipient=case["recipient"], amount="1.00", at=ds.when(400)))
    assert result.status == "accepted", result
    views.caught_up(engine, app, "clearing_cases", ready)
    assert views.clearing_cases(engine, app, None) == list(clearing_views.clearing_cases(app))
    [after] = [r for r in views.clearing_cases(engine, app, None) if r["case"] == case["case"]]
    assert after["recovered"] != case["recovered"]


def test_serve_workers_use_an_importable_factory() -> None:
    from uvicorn.importer import import_from_string

    from infra.cli.serve import FACTORY
    from infra.http import create_app

    assert import_from_string(FACTORY) is create_app


def test_get_clearing_cases_answers_from_the_read_model_not_a_replay(database_url: str, monkeypatch) -> None:
    from http_helpers import STREET, api_on

    with api_on(database_url) as api:
        rid = api.recipient(81)
        api.recipient(82)  # a second person with no case: never loaded
        eid = api.expense(rid, "C-1", in_scope="200.00", insurance="50.00")
        claim = api.post(f"/recipients/{rid}/claims", api.auth("h-1", "street_handler", STREET), {"expenses": [eid]}).json()["ids"]["claim"]
        api.post(f"/claims/{claim}/review", api.auth("r-1", "reviewer"))
        api.post(f"/claims/{claim}/approve", api.auth("a-1", "approver"))
        assert api.post(f"/claims/{claim}/pay", api.auth("d-1", "district_officer")).status_code == 200
        auditor = api.auth("aud-1", "auditor")
        assert api.get("/clearing/cases", auditor).json() == []
        # a late insurance payment opens a clearing case (R-CLR-1(a)); the next read sees it
        settled = api.post(f"/expenses/{eid}/insurance-settlements", api.auth("push", "system"), {"scheme": "burden_reduction", "amount": "50.00"})
        assert settled.status_code == 200, settled.text
        ledger = api.client.app.state.service.ledger
        expected = list(clearing_views.clearing_cases(ledger, status="open"))
        assert len(expected) == 1

        def no_replay(*_a, **_k):
            raise AssertionError("GET /clearing/cases must not rebuild recipients from the log")

        monkeypatch.setattr(ledger, "recipient", no_replay)
        got = api.get("/clearing/cases", auditor, status="open")
        assert got.status_code == 200, got.text
        assert got.json() == expected
        assert got.headers["X-Read-Model-Lag"] == "0" and int(got.headers["X-Read-Model-Position"]) > 0
        assert api.get("/clearing/cases", auditor, status="settled").json() == []
        assert [c["case"] for c in api.get("/clearing/cases", auditor).json()] == [expected[0]["case"]]
