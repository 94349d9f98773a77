"""Concurrent commands and command ids through every adapter (``LedgerApp.run`` is the one write
path): a lost optimistic-concurrency race is retried with back-off until it succeeds, or answered
as a retryable conflict (HTTP 409 ``CONFLICT``, ``ledger do`` exit 3), never a 500 or a crash; a
``command_id`` (HTTP: the Idempotency-Key) is bound to the first command sent under it, so a retry
gets the first result and a different command under it is refused (IDEMPOTENCY_MISMATCH; HTTP:
IDEMPOTENCY_KEY_REUSED), even when the requests race.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError
from typer.testing import CliRunner

import infra.cli.ops  # noqa: F401 - registers `ledger do`
from commands import models as m
from commands.app import LedgerApp
from http_helpers import Api, api_on
from infra.cli import app as cli_app
from infra.cli.ops import EXIT_CONFLICT, execute
from infra.ops import event_count
from infra.settings import Settings
from infra.wiring import build_app, memory_app
from integrity_story import id_number
from ledger import errors

THREADS = 20
HOSPITAL = {"kind": "hospital", "level": 3, "district_designated": False, "code": "SH-H3-RUIJIN"}


def _body(invoice_no: str, in_scope: str = "100.00") -> dict[str, Any]:
    day = (date.today() - timedelta(days=10)).isoformat()
    return {
        "visit_type": "outpatient", "facility": HOSPITAL, "service_date": day, "invoice_date": day,
        "invoice_no": invoice_no, "total": in_scope, "in_scope": in_scope, "basic_insurance_paid": "0.00",
    }


def _recorded(api: Api, rid: str) -> list[str]:
    return list(api.client.app.state.service.ledger.recipient(rid).expenses)


def _all_at_once(n: int, fn) -> list[Any]:  # noqa: ANN001
    """``fn(i)`` in n threads released together."""
    gate = threading.Barrier(n)

    def go(i: int) -> Any:
        gate.wait(timeout=60)
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


# ------------------------------------------------------------------ concurrency on PostgreSQL


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_twenty_requests_on_one_recipient_get_2xx_or_409_never_500(database_url: str) -> None:
    """20 street systems at once, each recording an expense and lodging a claim for it, all for
    one recipient: every response is 2xx or a coded 409, and everything accepted is there once."""
    with api_on(database_url) as api:
        rid = api.recipient(1)
        push, handler = api.auth("push", "system"), api.auth("h-1", "street_handler", "华阳路街道")

        def one(i: int) -> list[Any]:
            made = api.post(f"/recipients/{rid}/expenses", push, _body(f"RACE-{i}"))
            out = [made]
            if made.status_code == 201:
                out.append(api.post(f"/recipients/{rid}/claims", handler, {"expenses": [made.json()["ids"]["expense"]]}))
            return out

        responses = [r for batch in _all_at_once(THREADS, one) for r in batch]
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 201, 409}, [(r.status_code, r.text[:300]) for r in responses if r.status_code not in (200, 201, 409)]
        for r in responses:
            if r.status_code == 409:
                assert r.json()["code"], r.text
        expenses = [r.json()["ids"]["expense"] for r in responses if r.status_code == 201 and "expense" in r.json()["ids"]]
        assert sorted(expenses) == sorted(_recorded(api, rid))  # each accepted one recorded, once
        assert len(expenses) == THREADS, statuses  # with a 30 s budget every one gets its turn
        claims = [r.json()["ids"]["claim"] for r in responses if r.status_code == 201 and "claim" in r.json()["ids"]]
        assert len(set(claims)) == len(claims) == THREADS


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_one_key_racing_with_different_bodies_succeeds_once(database_url: str) -> None:
    with api_on(database_url) as api:
        rid = api.recipient(2)
        push = api.auth("push", "system")
        before = _recorded(api, rid)

        different = _all_at_once(THREADS, lambda i: api.post(f"/recipients/{rid}/expenses", push, _body(f"KEY-{i}"), key="push-0001"))
        won = [r for r in different if r.status_code == 201]
        assert len(won) == 1, Counter(r.status_code for r in different)
        assert all((r.status_code, r.json()["code"]) == (422, "IDEMPOTENCY_KEY_REUSED") for r in different if r.status_code != 201), [r.text for r in different]
        assert _recorded(api, rid) == [*before, won[0].json()["ids"]["expense"]]

        same = _all_at_once(THREADS, lambda i: api.post(f"/recipients/{rid}/expenses", push, _body("SAME-1"), key="push-0002"))
        assert {r.status_code for r in same} == {201}
        assert len({json.dumps(r.json(), sort_keys=True) for r in same}) == 1  # the same first result
        assert len(_recorded(api, rid)) == len(before) + 2


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_twenty_writers_through_the_app_directly_all_succeed(database_url: str) -> None:
    settings = Settings(database_url=database_url)
    app = build_app(settings)
    try:
        rid = app.run(m.Enrol(id_number=id_number("31010519600101301"), name="并发")).ids["recipient"]
        results = _all_at_once(THREADS, lambda i: app.run(m.RecordExpense.model_validate({"recipient": rid, **_body(f"APP-{i}")})))
        assert [r.status for r in results] == ["accepted"] * THREADS
        assert len(app.recipient(rid).expenses) == THREADS
    finally:
        app.close()


# ------------------------------------------------------------------ a conflict that outlasts the retries


def _always_conflicting(app: LedgerApp, budget: float = 0.2) -> dict[str, int]:
    """Every save loses the race (as if other writers always got there first)."""
    seen = {"saves": 0}
    app.conflict_seconds = budget

    def save(*objs: Any, **kw: Any) -> Any:
        seen["saves"] += 1
        raise IntegrityError("duplicate key value violates unique constraint (a concurrent writer)")

    app.save = save  # type: ignore[method-assign]
    return seen


def test_a_conflict_that_outlasts_the_retries_is_retryable_and_records_nothing(database_url: str) -> None:
    with api_on(database_url) as api:
        rid = api.recipient(3)
        ledger = api.client.app.state.service.ledger
        push = api.auth("push", "system")
        count = event_count(ledger)
        real = ledger.save
        seen = _always_conflicting(ledger)

        # HTTP: 409 CONFLICT, retryable, not kept under the key
        r = api.post(f"/recipients/{rid}/expenses", push, _body("BUSY-1"), key="busy-1")
        assert (r.status_code, r.json()["code"]) == (409, "CONFLICT"), r.text
        assert r.headers.get("retry-after") and r.json()["status"] == "error"
        assert seen["saves"] > 5  # retried for the time budget, not a handful of times

        # CLI: exit 3 (a rule's rejection is 1, invalid input 2)
        code, answer = execute(ledger, "record_expense", {"recipient": rid, **_body("BUSY-2")})
        assert (code, answer["code"], answer["status"]) == (EXIT_CONFLICT, "CONFLICT", "conflict")

        ledger.save = real  # type: ignore[method-assign]
        assert event_count(ledger) == count  # nothing recorded
        again = api.post(f"/recipients/{rid}/expenses", push, _body("BUSY-1"), key="busy-1")
        assert again.status_code == 201 and "idempotent-replayed" not in again.headers


def test_cli_do_exits_3_on_a_conflict(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    app = build_app(Settings(database_url=database_url))
    try:
        rid = app.run(m.Enrol(id_number=id_number("31010519600101302"), name="忙")).ids["recipient"]
        _always_conflicting(app, budget=0.05)
        monkeypatch.setattr(infra.cli.ops, "_build", lambda: app)
        monkeypatch.setattr(app, "close", lambda: None)
        result = CliRunner().invoke(cli_app, ["do", "record_expense", "--json", json.dumps({"recipient": rid, **_body("BUSY-3")})])
        assert result.exit_code == 3, result.output
        assert '"CONFLICT"' in result.output
    finally:
        app.__class__.close(app)


# ------------------------------------------------------------------ one command per command id, each adapter


def test_ledger_do_refuses_a_command_id_reused_for_another_command(database_url: str) -> None:
    cli = CliRunner()
    env = {"LEDGER_DATABASE_URL": database_url}

    def do(*args: str) -> Any:
        return cli.invoke(cli_app, ["do", *args], env=env)

    enrolled = do("enrol", f"id_number={id_number('31010519600101303')}", "name=王秀英", "street=华阳路街道")
    assert enrolled.exit_code == 0, enrolled.output
    rid = json.loads(enrolled.stdout)["ids"]["recipient"]
    assert do("grant_category", f"recipient={rid}", "category=dibao", "from=2020-01-01").exit_code == 0
    assert do("insure", f"recipient={rid}", "scheme=resident", "from=2019-01-01").exit_code == 0
    first = do("record_expense", "--json", json.dumps({"recipient": rid, **_body("CLI-1")}), "command_id=push-7")
    assert first.exit_code == 0, first.output
    again = do("record_expense", "--json", json.dumps({"recipient": rid, **_body("CLI-1")}), "command_id=push-7")
    assert (again.exit_code, again.stdout) == (0, first.stdout)  # a retry: the first result

    other = do("record_expense", "--json", json.dumps({"recipient": rid, **_body("CLI-2")}), "command_id=push-7")
    assert other.exit_code == 2, other.output
    [problem] = json.loads(other.stdout)["errors"]
    assert (problem["field"], problem["code"]) == ("command_id", "IDEMPOTENCY_MISMATCH")

    # a rule's rejection is bound to its id too: its retry gets the same answer, another command is refused
    claim = json.loads(do("claim", f"recipient={rid}", f'expenses=["{rid}:1"]', "handler=h-1").stdout)["ids"]["claim"]
    refused = do("review", f"claim={claim}", "reviewer=h-1", "command_id=rv-1")  # the handler cannot review (R-PH-4)
    assert refused.exit_code == 1 and json.loads(refused.stdout)["code"] == "SAME_OFFICER"
    assert do("review", f"claim={claim}", "reviewer=h-1", "command_id=rv-1").stdout == refused.stdout
    assert do("review", f"claim={claim}", "reviewer=r-1", "command_id=rv-1").exit_code == 2
    assert do("review", f"claim={claim}", "reviewer=r-1", "command_id=rv-2").exit_code == 0

    app = build_app(Settings(database_url=database_url), publish_policy=False)
    try:
        assert len(app.recipient(rid).expenses) == 1
    finally:
        app.close()


def test_http_refuses_a_key_reused_for_another_body_even_without_its_record(database_url: str) -> None:
    """The HTTP record of a key gone (or not yet written by a racing request), the ledger still
    knows the key as the command's id and refuses another body."""
    from sqlalchemy import delete

    from infra.http.store import idempotency

    with api_on(database_url) as api:
        rid = api.recipient(4)
        push = api.auth("push", "system")
        first = api.post(f"/recipients/{rid}/expenses", push, _body("H-1"), key="h-1")
        assert first.status_code == 201
        with api.client.app.state.service.store.engine.begin() as conn:
            conn.execute(delete(idempotency))
        other = api.post(f"/recipients/{rid}/expenses", push, _body("H-2"), key="h-1")
        assert (other.status_code, other.json()["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
        same = api.post(f"/recipients/{rid}/expenses", push, _body("H-1"), key="h-1")
        assert (same.status_code, same.json()) == (201, first.json())
        assert len(_recorded(api, rid)) == 1


def test_the_scenario_runners_ledger_binds_a_command_id_to_its_command() -> None:
    from datetime import datetime

    from ledger.values import CST

    app = memory_app("shanghai.changning", published_at=datetime(2024, 1, 1, tzinfo=CST))
    enrol = m.Enrol(id_number=id_number("31010519600101304"), name="王秀英", command_id="s-1")
    first = app.run(enrol)
    assert first.status == "accepted"
    assert app.run(enrol) == first
    assert app.run(m.Enrol(id_number=id_number("31010519600101304"), name="王秀英", street="", command_id="s-1")) == first  # a default sent explicitly
    with pytest.raises(errors.InvalidInput) as refused:
        app.run(m.Enrol(id_number=id_number("31010519600101305"), name="陈美华", command_id="s-1"))
    assert (refused.value.code, refused.value.field) == ("IDEMPOTENCY_MISMATCH", "command_id")
    with pytest.raises(errors.InvalidInput) as other_kind:
        app.run(m.ConsentAutoClaim(recipient=first.ids["recipient"], signed=True, command_id="s-1"))
    assert other_kind.value.code == "IDEMPOTENCY_MISMATCH"
    assert len(list(app.recipient_ids())) == 1

