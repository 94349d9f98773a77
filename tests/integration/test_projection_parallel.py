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
from projections_support import dump, engine_for, pauses_before_commit, runner


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
    # two processes, each a partition of every view but the duplicates index, and a third for that index whole
    assert len(finished) == 3
    assert "duplicates" in finished
    done = sorted(n for group in finished for n in group.split(", "))
    assert done == sorted([f"{p.name}@{k}/2" for p in parallel.projections if p.name != "duplicates" for k in (0, 1)] + ["duplicates"])
    assert read > 0
    assert dump(engine) == expected
    assert not parallel.failures()

    # the command line (views already at the head: reset, rebuilt again): `ledger projections rebuild --jobs 2`
    from typer.testing import CliRunner

    import infra.cli.projections  # noqa: F401 - registers `ledger projections`
    from infra.cli import app as cli_app

    rebuilt = CliRunner().invoke(cli_app, ["projections", "rebuild", "--jobs", "2", "--batch", "30"], env={"LEDGER_DATABASE_URL": database_url})
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "in 3 processes (2 partitions of the recipients; duplicates whole)" in rebuilt.stdout
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


def test_serve_workers_use_an_importable_factory(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Each ``ledger serve --workers N`` process builds its app from the factory, on the
    environment's settings, as a worker: its app manages the process's collector (ADR 0023)."""
    import gc

    from fastapi.testclient import TestClient
    from uvicorn.importer import import_from_string

    from infra.cli.serve import FACTORY
    from infra.http import worker_app

    assert import_from_string(FACTORY) is worker_app
    monkeypatch.setenv("LEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'worker.db'}")
    monkeypatch.setenv("LEDGER_TOKEN_SECRET", "test-secret-for-http")
    gc.unfreeze()
    app = import_from_string(FACTORY)()
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() > 0  # the worker's collector froze its heap
    assert gc.get_freeze_count() == 0


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


def test_a_partitioned_rebuild_killed_half_way_resumes_to_the_rows_of_a_sequential_one(told, database_url: str) -> None:
    """Given a log, when `ledger projections rebuild --jobs 2` is killed (every process) in the
    middle of a page, each (view, partition) keeps the rows of its committed pages with its
    position; then `ledger projections run --once` finishes the partitions, merges them and
    leaves exactly the rows and positions of a sequential rebuild (ADR 0008)."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    from pathlib import Path

    app, engine = told
    head = int(app.recorder.max_notification_id())
    sequential = runner(engine, app, batch_size=1000)
    sequential.rebuild()
    expected = dump(engine)

    ledger = shutil.which("ledger", path=str(Path(sys.executable).parent)) or "ledger"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_DATABASE_URL"] = database_url
    proc = subprocess.Popen([ledger, "projections", "rebuild", "--jobs", "2", "--batch", "9"],
                            env={**env, "LEDGER_PROJECTIONS_PAUSE_IN_BATCH": "0.1"}, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        pauses = pauses_before_commit(proc, 40, 120)  # both processes well into their partitions
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the rebuild and its worker processes
        proc.wait(30)
    assert pauses == 40, f"the rebuild was not killed mid-way (pauses seen: {pauses})"

    killed = dict(dump(engine)["positions"])
    parts = {n: v for n, v in killed.items() if "@" in n}
    assert parts and min(parts.values()) < head and max(parts.values()) > 0, killed
    assert killed["caps"] == 0  # the view's own row waits for its partitions
    assert dump(engine) != expected

    resumed = subprocess.run([ledger, "projections", "run", "--once", "--batch", "50"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert dump(engine) == expected  # the same rows; positions at the head, partition rows merged away


def test_a_poison_event_stops_only_its_partition_until_an_operator_skips_it(database_url: str) -> None:
    """Given a log with an event a partitioned view cannot store (a NUL in an expense handle, which
    the clearing view keeps), when the views are rebuilt in two partitions, the partition that owns
    the event stops before it (recorded) and the view keeps its partition rows (nothing merged,
    its own row at 0) while the other views finish; after the operator's skip, the next catch-up
    finishes the partitions and merges them into the rows of a sequential rebuild that leaves the
    same event out (ADR 0008)."""
    from datetime import datetime

    from test_projection_poison import ID_NUMBER, _expense

    from commands import models as m
    from commands.app import expense_ref
    from infra.wiring import build_app, ensure_policy
    from ledger.aggregates import Recipient
    from ledger.values import CST

    def inject_poison(app, rid: str, handle: str) -> int:  # noqa: ANN001 - as test_projection_poison, on the handle
        r = app.recipient(rid)
        [last] = [e for e in app.repository.event_store.get(r.id) if isinstance(e, Recipient.ExpenseRecorded)][-1:]
        fields = {k: v for k, v in vars(last).items() if k not in ("originator_id", "originator_version", "timestamp")}
        fields.update(expense_id=expense_ref(r.id, len(r.expenses) + 1), invoice_no="CHC-0002", handle=handle)
        r.trigger_event(Recipient.ExpenseRecorded, timestamp=datetime(2026, 2, 11, 9, tzinfo=CST), **fields)
        app.save(r)
        return int(app.recorder.max_notification_id())

    app = build_app(Settings(database_url=database_url), publish_policy=False)
    ensure_policy(app, published_at=datetime(2023, 12, 31, 8, tzinfo=CST))
    rid = app.run(m.Enrol(id_number=ID_NUMBER, name="王秀英", street="华阳路街道", at="2026-01-05T09:00:00+08:00")).ids["recipient"]
    other = app.run(m.Enrol(id_number="11010519491231002X", name="李建国", street="华阳路街道", at="2026-01-05T10:00:00+08:00")).ids["recipient"]
    assert app.run(_expense(rid, "CHC-0001")).status == "accepted"
    poison = inject_poison(app, rid, "E\x00-0002")
    assert app.run(_expense(rid, "CHC-0003")).status == "accepted"
    assert app.run(_expense(other, "CHC-0004")).status == "accepted"
    head = int(app.recorder.max_notification_id())
    engine = engine_for(database_url)
    url = projection_url(Settings(database_url=database_url).sqlalchemy_url())
    try:
        parallel = runner(engine, app, batch_size=3)
        parallel.rebuild_parallel(url, store_source(database_url, "shanghai.changning"), jobs=2)
        stopped = {f.name for f in parallel.failures(open_only=True)}
        assert "clearing_cases" in stopped and all(f.position == poison for f in parallel.failures())
        positions = dict(dump(engine)["positions"])
        assert positions["clearing_cases"] == 0
        assert any(n.startswith("clearing_cases@") and v < head for n, v in positions.items())
        assert positions["community"] == head and not any(n.startswith("community@") for n in positions)

        for name in sorted(stopped):
            parallel.skip(name, poison, reason="invoice number garbled by the hospital feed", by="ops-1")
        parallel.catch_up()
        resumed = dump(engine)
        assert set(dict(resumed["positions"]).values()) == {head} and not any("@" in n for n, _ in resumed["positions"])

        sequential = runner(engine, app, batch_size=1000)
        sequential.rebuild()  # skips hold for rebuilds
        assert dump(engine) == resumed
    finally:
        engine.dispose()
        app.close()
