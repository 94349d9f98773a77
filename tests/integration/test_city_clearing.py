"""A receipt paid in two districts within the same seconds, found late (R-CAP-4, R-CLR-1(b)
[002 4.5; 000 第七条]; ADR 0020): neither district could see the other's payment when it paid;
the city view records the conflict once both payments are applied, and the clearing run of the
district that paid second opens an overpayment case there for the aid it paid, explained by the
other district, its expense and the city view's positions. Run again, it opens nothing.

Real PostgreSQL for the two district stores and the city view, the districts' relays publishing to
JetStream (NATS at 127.0.0.1:4222), the view following both streams, the clearing run through the
CLI (``ledger --district X clearing run``) as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import secrets
from decimal import Decimal
from typing import Any

import pytest

from commands import models as m
from commands.app import LedgerApp
from infra.city import CityView, DistrictCityIndex, run_city_view
from infra.cli.ops import execute
from infra.districts import District
from relay_support import BackgroundLoop, wait_until
from test_city_brokers import NATS_URL, _create_streams, _delete_streams, publish
from test_city_view import stream_of
from district_support import district_app

ID_NUMBER = "310105195803122013"
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "SH-CHC-TS"}
CLI_KEYS = ("LEDGER_DISTRICTS", "LEDGER_DATABASE_URL", "LEDGER_DISTRICT", "LEDGER_RELAY_EXCHANGE", "LEDGER_RELAY_STREAM",
            "LEDGER_CITY_BASE_URL", "LEDGER_CITY_DATABASE_URL")



def ok(app: LedgerApp, command: str, **payload: Any) -> dict[str, Any]:
    code, answer = execute(app, command, payload)
    assert code == 0, answer
    return answer


def paid_once_in_each(app: LedgerApp, street: str, aid_at: str) -> tuple[str, str]:
    """The same person, the same receipt (facility code and invoice number), aided in this district."""
    rid = ok(app, "enrol", id_number=ID_NUMBER, name="王秀英", street=street, at="2026-01-05T09:00:00+08:00")["ids"]["recipient"]
    ok(app, "grant_category", recipient=rid, category="dibao", **{"from": "2025-01-01"}, at="2026-01-05T09:01:00+08:00")
    ok(app, "insure", recipient=rid, scheme="resident", **{"from": "2020-01-01"}, at="2026-01-05T09:02:00+08:00")
    eid = ok(app, "record_expense", recipient=rid, visit_type="outpatient", facility=dict(CHC), service_date="2026-03-02",
             invoice_date="2026-03-02", invoice_no="TS-0042", total="400.00", in_scope="400.00", basic_insurance_paid="100.00",
             at="2026-03-02T10:00:00+08:00")["ids"]["expense"]
    ok(app, "aid", recipient=rid, expenses=[eid], at=aid_at)
    return rid, eid


@pytest.fixture
def city(another_pg_database, monkeypatch):
    """Two district stores and the city view's database, each a fresh PostgreSQL database; the
    district codes are unique to the test (they name its JetStream streams)."""
    for key in CLI_KEYS:
        monkeypatch.delenv(key, raising=False)  # restored after the test, whatever --district set
    monkeypatch.setenv("LEDGER_DATA_KEY", "city-clearing-test-key")
    tag = "c" + secrets.token_hex(3)
    with another_pg_database() as cn_url, another_pg_database() as xh_url, another_pg_database() as city_url:
        districts = {"changning": District(f"{tag}cn", cn_url), "xuhui": District(f"{tag}xh", xh_url)}
        monkeypatch.setenv("LEDGER_DISTRICTS", ",".join(d.code for d in districts.values()))
        for d in districts.values():
            monkeypatch.setenv(f"LEDGER_DISTRICT_{d.code.upper()}_DATABASE_URL", d.database_url)
        apps = {name: district_app(d.database_url) for name, d in districts.items()}
        try:
            yield districts, apps, city_url
        finally:
            for app in apps.values():
                app.close()
            asyncio.run(_delete_streams([d.stream for d in districts.values()]))


def ledger_cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from infra.cli import _register, app

    _register()
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def clearing_run(code: str, *extra: str) -> dict[str, Any]:
    done = ledger_cli("--district", code, "clearing", "run", "--json", *extra)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout[done.stdout.index("{"):])


@pytest.mark.parametrize("first_run", ["auto", "duplicate", "command"])
def test_the_district_that_paid_second_opens_one_case_from_the_city_view_and_a_second_run_none(city, monkeypatch, first_run):
    districts, apps, city_url = city
    cn, xh = districts["changning"], districts["xuhui"]
    # given: the same receipt aided in Changning, then in Xuhui five seconds later
    cn_rid, cn_eid = paid_once_in_each(apps["changning"], "华阳路街道", "2026-03-03T10:00:00+08:00")
    xh_rid, xh_eid = paid_once_in_each(apps["xuhui"], "徐家汇街道", "2026-03-03T10:00:05+08:00")
    paid_here = sum(apps["xuhui"].recipient(xh_rid).expenses[xh_eid].paid_by_fund.values(), Decimal("0.00"))
    assert paid_here > 0

    # the districts' own clearing finds nothing: each store holds one payment of the receipt
    assert clearing_run(xh.code, "--trigger", "duplicate")["cases_opened"] == 0

    # when: both relays publish to JetStream and the city view follows both streams
    view = CityView(city_url)
    try:
        asyncio.run(_create_streams(list(districts.values())))
        loop = BackgroundLoop(lambda stop: run_city_view(view, NATS_URL, districts.values(), stop=stop, name=f"city_{cn.code}"))
        heads = {}
        for name, d in districts.items():
            assert publish(apps[name], d) > 0
            heads[d.code] = stream_of(apps[name])[-1].position  # the last public message
        wait_until(lambda: view.positions() == heads, 30, "the city view to apply both districts' streams")
        loop.join()
        (conflict,) = view.conflicts()
        assert (conflict["district"], conflict["expense_id"]) == (xh.code, xh_eid)
        assert (conflict["first_district"], conflict["first_expense_id"]) == (cn.code, cn_eid)
        positions = view.positions()
    finally:
        view.close()

    # then: with the city view configured, Xuhui's clearing run opens one case for the aid it paid
    monkeypatch.setenv("LEDGER_CITY_DATABASE_URL", city_url)
    if first_run == "command":  # the ClearingRun command (HTTP, ``ledger do``) through the ledger's city port
        apps["xuhui"].city = DistrictCityIndex(city_url, xh.code)  # as the wiring gives a district's ledger
        try:
            result = apps["xuhui"].run(m.ClearingRun(trigger="duplicate"))
        finally:
            apps["xuhui"].city.close()
            apps["xuhui"].city = None
        summary = result.ids
    else:
        summary = clearing_run(xh.code, *(() if first_run == "auto" else ("--trigger", "duplicate")))
    assert (summary["cases_opened"], summary["city_conflicts"]) == (1, 1), summary
    r = apps["xuhui"].recipient(xh_rid)
    (case,) = r.cases.values()
    assert (case.expense_id, case.trigger, case.amount) == (xh_eid, "duplicate", paid_here)
    assert case.balance == paid_here  # an overpayment to recover (R-CLR-3)
    decision = r.expenses[xh_eid].due
    assert (decision["granted"], decision["code"], decision["total"]) == (False, "DUPLICATE", "0.00")
    at = f"{cn.code} {positions[cn.code]}, {xh.code} {positions[xh.code]}"
    for words in (f"district {cn.code}", f"expense {cn_eid}", f"as of the city view at {at}", "R-CLR-1(b)"):
        assert words in decision["message"], decision["message"]
    from commands.clearing_views import case_detail

    cause = case_detail(apps["xuhui"], case.id)["cause"]
    assert cause["city_view"]["positions"] == positions

    # Changning paid first: its run opens nothing; a second run in Xuhui opens nothing either
    assert clearing_run(cn.code, "--trigger", "duplicate")["cases_opened"] == 0
    assert apps["changning"].recipient(cn_rid).cases == {}
    for again in (("--trigger", "duplicate"), ()):
        assert clearing_run(xh.code, *again)["cases_opened"] == 0
    assert len(apps["xuhui"].recipient(xh_rid).cases) == 1
