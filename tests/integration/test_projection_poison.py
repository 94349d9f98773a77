"""A poison event never stalls a read model for good (ADR 0008), on SQLite and PostgreSQL.

The poison is an ``ExpenseRecorded`` with a NUL character in its invoice number, saved through the
application below the command layer (a copy of a real event's fields, so no command validation
sees it): PostgreSQL refuses NUL in text and the SQLite read models refuse it too. The view that
stores the invoice number stops just before it, with the failure committed (view, position, event
type, error) and alerted; the other views go on; ``ledger projections status`` exits 1 until an
operator skips the event (recorded, with the reason), after which the view goes on and rebuilds
leave it out.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import pytest
from eventsourcing.persistence import MapperDeserialisationError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

import infra.cli.projections  # noqa: F401 - registers `ledger projections`
from commands import models as m
from commands.app import LedgerApp, expense_ref
from infra.cli import app as cli_app
from infra.settings import Settings
from infra.wiring import build_app, ensure_policy
from ledger.aggregates import Recipient
from ledger.values import CST
from projections import duplicates
from projections.common import failures, tracking
from projections_support import engine_for, runner

ID_NUMBER = "310105195803122013"
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "CN-CHC-HY"}
EXPENSE = "ledger.aggregates:Recipient.ExpenseRecorded"


def _expense(rid: str, invoice_no: str) -> m.RecordExpense:
    return m.RecordExpense.model_validate({
        "recipient": rid, "visit_type": "outpatient", "facility": CHC, "service_date": "2026-02-10",
        "invoice_date": "2026-02-10", "invoice_no": invoice_no, "total": "150.00", "in_scope": "120.00",
        "basic_insurance_paid": "30.00", "at": "2026-02-10T16:00:00+08:00",
    })


def inject_poison(app: LedgerApp, rid: str, invoice_no: str) -> int:
    """Save an ExpenseRecorded whose invoice number no command would accept, straight onto the
    Recipient (a copy of the fields of its last real one). Returns its notification id."""
    r = app.recipient(rid)
    [last] = [e for e in app.repository.event_store.get(r.id) if isinstance(e, Recipient.ExpenseRecorded)][-1:]
    fields = {k: v for k, v in vars(last).items() if k not in ("originator_id", "originator_version", "timestamp")}
    fields.update(expense_id=expense_ref(r.id, len(r.expenses) + 1), invoice_no=invoice_no)
    r.trigger_event(Recipient.ExpenseRecorded, timestamp=datetime(2026, 2, 11, 9, tzinfo=CST), **fields)
    app.save(r)
    return int(app.recorder.max_notification_id())


@pytest.fixture
def poisoned(database_url: str):
    """A store with a good expense, the poison, then another good expense after it."""
    app = build_app(Settings(database_url=database_url), publish_policy=False)
    ensure_policy(app, published_at=datetime(2023, 12, 31, 8, tzinfo=CST))
    rid = app.run(m.Enrol(id_number=ID_NUMBER, name="王秀英", street="华阳路街道", at="2026-01-05T09:00:00+08:00")).ids["recipient"]
    assert app.run(_expense(rid, "CHC-0001")).status == "accepted"
    poison = inject_poison(app, rid, "CHC-\x00-0002")
    after = app.run(_expense(rid, "CHC-0003"))
    assert after.status == "accepted"
    engine = engine_for(database_url)
    yield app, engine, rid, poison, after.ids["expense"]
    engine.dispose()
    app.close()


def _positions(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {n: int(p) for n, p in conn.execute(select(tracking.c.name, tracking.c.position))}


def _cli(database_url: str, *args: str) -> Any:
    return CliRunner().invoke(cli_app, ["projections", *args], env={"LEDGER_DATABASE_URL": database_url})


def test_a_poison_event_stops_its_view_only_and_is_recorded(poisoned, database_url: str) -> None:
    app, engine, rid, poison, after = poisoned
    head = int(app.recorder.max_notification_id())
    alerts: list[Any] = []
    first = runner(engine, app, batch_size=1000)
    first.on_failure = alerts.append

    started = time.monotonic()
    first.catch_up()
    assert time.monotonic() - started < 60, "catching up must not retry the poison for ever"

    [failure] = first.failures()
    assert (failure.name, failure.position, failure.topic, failure.status, failure.attempts) == ("duplicates", poison, EXPENSE, "failed", 1)
    assert "NUL" in failure.error or "0x00" in failure.error, failure.error
    assert failure.originator_id == rid
    assert [a.position for a in alerts] == [poison]
    message = alerts[0].message()
    for part in ("duplicates", str(poison), "Recipient.ExpenseRecorded", failure.error, "ledger projections skip duplicates"):
        assert part in message, message

    positions = _positions(engine)
    assert positions["duplicates"] < poison  # stopped just before it ...
    assert all(p == head for n, p in positions.items() if n != "duplicates")  # ... the others went on
    with engine.connect() as conn:  # what came before the poison was applied and committed
        stored = {r.expense_id for r in conn.execute(select(duplicates.dup_expense.c.expense_id))}
    assert stored == {f"{rid}:1"}

    # the same runner does not hammer it: still stopped, no new attempt
    first.catch_up()
    assert [(f.position, f.attempts) for f in first.failures()] == [(poison, 1)]
    # a new runner (a restart, perhaps after a fix) tries it once more, then stops again
    second = runner(engine, app)
    second.catch_up()
    second.catch_up()
    assert [(f.position, f.attempts, f.status) for f in second.failures()] == [(poison, 2, "failed")]
    [stopped] = [s for s in second.status() if s.failed]
    assert (stopped.name, stopped.failed.position) == ("duplicates", poison)


def test_the_cli_alerts_and_an_operator_skips_it(poisoned, database_url: str) -> None:
    app, engine, rid, poison, after = poisoned
    head = int(app.recorder.max_notification_id())

    ran = _cli(database_url, "run", "--once")
    assert ran.exit_code == 1, ran.output  # stops with a clear message
    for part in ("duplicates", f"position {poison}", "Recipient.ExpenseRecorded"):
        assert part in ran.output, ran.output

    status = _cli(database_url, "status", "--json")
    assert status.exit_code == 1, status.output
    rows = {s["name"]: s for s in json.loads(status.stdout)}
    assert rows["duplicates"]["stopped_at"] == poison
    [f] = rows["duplicates"]["failures"]
    assert (f["position"], f["event_type"], f["status"]) == (poison, "Recipient.ExpenseRecorded", "failed")
    assert all(s["stopped_at"] is None and s["position"] == head for n, s in rows.items() if n != "duplicates")
    table = _cli(database_url, "status")
    assert table.exit_code == 1 and "STOPPED" in table.output and "Recipient.ExpenseRecorded" in table.output

    # only a recorded failure can be skipped; a reason is required
    assert _cli(database_url, "skip", "duplicates", str(poison - 1), "--reason", "x").exit_code == 2
    assert _cli(database_url, "skip", "duplicates", str(poison)).exit_code == 2
    skipped = _cli(database_url, "skip", "duplicates", str(poison), "--reason", "invoice number garbled by the hospital feed", "--by", "ops-1")
    assert skipped.exit_code == 0, skipped.output
    with engine.connect() as conn:
        row = conn.execute(select(failures)).mappings().one()
    assert (row["status"], row["skipped_by"], row["reason"]) == ("skipped", "ops-1", "invoice number garbled by the hospital feed")
    assert row["skipped_at"]

    ran = _cli(database_url, "run", "--once")
    assert ran.exit_code == 0, ran.output
    assert set(_positions(engine).values()) == {head}
    with engine.connect() as conn:
        stored = {r.expense_id for r in conn.execute(select(duplicates.dup_expense.c.expense_id))}
    assert stored == {f"{rid}:1", after}  # the poison left out, what came after it applied
    status = _cli(database_url, "status", "--json")
    assert status.exit_code == 0, status.output

    # a rebuild from zero leaves it out too, and stops at nothing
    rebuilt = _cli(database_url, "rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert set(_positions(engine).values()) == {head}
    assert _cli(database_url, "status").exit_code == 0


def test_an_event_that_cannot_be_decoded_stops_the_views_that_read_it(poisoned) -> None:
    app, engine, rid, poison, after = poisoned

    class Mapper:
        def to_domain_event(self, n: Any) -> Any:
            if n.id == poison:
                raise MapperDeserialisationError("cannot decrypt the stored state")
            return app.mapper.to_domain_event(n)

    r = runner(engine, app)
    r.mapper = Mapper()
    r.catch_up()
    stopped = {f.name for f in r.failures()}
    readers = {p.name for p in r.projections if EXPENSE in p.topics()}
    assert stopped == readers and readers
    assert all("cannot decrypt" in f.error and f.position == poison for f in r.failures())


def test_a_lost_connection_is_retried_not_recorded(poisoned) -> None:
    app, engine, rid, poison, after = poisoned
    r = runner(engine, app, names=["statement"])
    real = r.projections[0].apply

    def lost(conn: Any, items: Any) -> None:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    r.projections[0].apply = lost  # type: ignore[method-assign]
    with pytest.raises(OperationalError):
        r.catch_up()
    assert r.failures() == []
    r.projections[0].apply = real  # type: ignore[method-assign]
    r.catch_up()
    assert _positions(engine)["statement"] == int(app.recorder.max_notification_id())


def test_a_failure_fixed_in_the_code_is_applied_on_the_next_runners_try(poisoned) -> None:
    """A view that failed because of its own bug (here: a patched apply) gets one more try from a
    new runner, e.g. after an upgrade; applied then, the failure is marked resolved."""
    app, engine, rid, poison, after = poisoned
    head = int(app.recorder.max_notification_id())
    buggy = runner(engine, app, names=["statement"])
    real = buggy.projections[0].apply

    def bug(conn: Any, items: Any) -> None:
        if any(i == poison for i, _ in items):
            raise KeyError("a field this version of the view did not expect")
        real(conn, items)

    buggy.projections[0].apply = bug  # type: ignore[method-assign]
    buggy.catch_up()
    [failed] = buggy.failures()
    assert (failed.name, failed.position, failed.status) == ("statement", poison, "failed")
    assert _positions(engine)["statement"] < poison

    fixed = runner(engine, app, names=["statement"])
    fixed.catch_up()
    fixed.catch_up()
    assert _positions(engine)["statement"] == head
    [resolved] = fixed.failures()
    assert (resolved.position, resolved.status) == (poison, "resolved")
    assert not [s for s in fixed.status() if s.failed]
