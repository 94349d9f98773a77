"""A person moves district (R-CAP-4 [001; 000 第七条], ADR 0020): two district stores side by side
(SQLite files derived by ``infra.districts``, or two PostgreSQL databases). The city scheme's annual
cap follows the person; the 四医联动 top-up and its monthly count restart in the new district; a
claim lodged before the move is finished in the old district, a new one there is refused; a
receipt aided in the old district is a duplicate in the new one."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Iterator

import pytest

from commands import models as m
from commands.app import LedgerApp
from commands.handlers.transfer import transfer
from commands.replay import audit
from infra.cli.ops import execute
from infra.districts import configured
from ledger.values import CST
from district_support import district_app
from aggregate_support import recorded_decision

ID_NUMBER = "310105195803122013"
TERTIARY = {"kind": "hospital", "level": 3, "district_designated": False, "code": "SH-H3-RUIJIN"}
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "CN-CHC-HY"}
CITY = "shanghai.medical_aid"
FOUR = "changning.four_linkage"



@pytest.fixture
def districts(database_url: str, tmp_path, another_pg_database) -> Iterator[tuple[LedgerApp, LedgerApp]]:
    """Changning on ``database_url``, Xuhui on a store of its own."""
    if database_url.startswith("sqlite"):
        found = configured({"LEDGER_DISTRICTS": "changning,xuhui", "LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'city.db'}"})
        urls = [found["changning"].database_url, found["xuhui"].database_url]
        assert urls[0] != urls[1]
        apps = [district_app(u) for u in urls]
        yield apps[0], apps[1]
        for a in apps:
            a.close()
        return
    with another_pg_database() as other:
        apps = [district_app(database_url), district_app(other)]
        yield apps[0], apps[1]
        for a in apps:
            a.close()


def ok(app: LedgerApp, command: str, **payload: Any) -> dict[str, Any]:
    code, answer = execute(app, command, payload)
    assert code == 0, answer
    return answer


def expense(app: LedgerApp, rid: str, facility: dict, day: str, invoice_no: str, in_scope: str, at: str) -> str:
    return ok(app, "record_expense", recipient=rid, visit_type="outpatient", facility=dict(facility), service_date=day,
              invoice_date=day, invoice_no=invoice_no, total=in_scope, in_scope=in_scope, basic_insurance_paid="0.00", at=at)["ids"]["expense"]


def scheme_trace(app: LedgerApp, rid: str, eid: str, scheme: str) -> dict[str, Any]:
    decided = recorded_decision(app, rid, eid)
    return next(s for s in decided["trace"]["schemes"] if s["scheme"] == scheme)


def test_the_city_cap_follows_the_person_and_the_district_top_up_restarts(districts):
    changning, xuhui = districts
    rid = ok(changning, "enrol", id_number=ID_NUMBER, name="王秀英", street="华阳路街道", at="2026-01-05T09:00:00+08:00")["ids"]["recipient"]
    ok(changning, "grant_category", recipient=rid, category="dibao", **{"from": "2025-01-01"}, at="2026-01-05T09:01:00+08:00")
    ok(changning, "insure", recipient=rid, scheme="resident", **{"from": "2020-01-01"}, at="2026-01-05T09:02:00+08:00")
    # 9,000 of the 10,000 outpatient cap used in Changning: 60% of 14,900 self-pay at a hospital,
    # and 60% of 100 at a community health centre in March (a 四医联动 visit of March there)
    big = expense(changning, rid, TERTIARY, "2026-02-10", "RJ-0001", "14900.00", "2026-02-10T16:00:00+08:00")
    ok(changning, "aid", recipient=rid, expenses=[big], at="2026-02-11T10:00:00+08:00")
    chc = expense(changning, rid, CHC, "2026-03-02", "CHC-0001", "100.00", "2026-03-02T10:00:00+08:00")
    ok(changning, "aid", recipient=rid, expenses=[chc], at="2026-03-02T11:00:00+08:00")
    assert scheme_trace(changning, rid, chc, FOUR)["monthly"]["visit"] == 1
    decided = changning.recipient(rid).expenses
    assert Decimal(decided[big].decided["by_scheme"][CITY]) + Decimal(decided[chc].decided["by_scheme"][CITY]) == Decimal("9000.00")
    # a hospital stay claimed before the move (in flight), and a receipt not yet claimed
    stay = ok(changning, "record_expense", recipient=rid, visit_type="inpatient", facility=dict(TERTIARY), service_date="2026-03-03",
              invoice_date="2026-03-03", invoice_no="RJ-STAY-1", total="2000.00", in_scope="2000.00", basic_insurance_paid="0.00",
              at="2026-03-03T10:00:00+08:00")["ids"]["expense"]
    late = expense(changning, rid, CHC, "2026-03-03", "CHC-0002", "100.00", "2026-03-03T10:30:00+08:00")
    in_flight = ok(changning, "claim", recipient=rid, expenses=[stay], handler="H1", at="2026-03-03T11:00:00+08:00")["ids"]["claim"]
    changning_head = int(changning.recorder.max_notification_id() or 0)

    moved = transfer(changning, xuhui, rid, from_district="changning", to_district="xuhui", at=datetime(2026, 3, 5, 9, tzinfo=CST))
    assert moved.status == "accepted", moved.as_dict()
    assert moved.ids["source_position"] == changning_head
    new_rid = moved.ids["recipient"]

    # the record, categories and insurance came with the person; the usage counts in Xuhui
    there = xuhui.recipient(new_rid)
    assert (there.id_number, there.name, there.street) == (ID_NUMBER, "王秀英", "华阳路街道")
    assert [c.category for c in there.category_facts] == ["dibao"]
    assert [i.scheme for i in there.insurance_facts] == ["resident"]
    carried = there.knowledge().carried_caps
    assert carried[(CITY, 2026, "outpatient")] == Decimal("9000.00")
    # the stay in flight counts as if decided at the move: its cap room is not spent twice
    assert carried[(CITY, 2026, "inpatient")] > 0

    # R-CAP-3 bound in Xuhui: 60% of 5,000 is 3,000, but only 1,000 of the city cap is left
    xh = expense(xuhui, new_rid, TERTIARY, "2026-03-10", "RJ-0002", "5000.00", "2026-03-10T10:00:00+08:00")
    ok(xuhui, "aid", recipient=new_rid, expenses=[xh], at="2026-03-10T11:00:00+08:00")
    city = scheme_trace(xuhui, new_rid, xh, CITY)
    assert (city["computed"], city["amount"]) == ("3000.00", "1000.00")
    assert city["cap"]["used_before"] == "9000.00" and city["cap"]["carried_in"] == "9000.00" and city["cap"]["bound"] is True
    assert {"R-CAP-3", "R-CAP-4"} <= set(city["rules"])

    # the 四医联动 monthly count starts at zero in Xuhui although March had a visit in Changning
    xchc = expense(xuhui, new_rid, CHC, "2026-03-12", "CHC-0003", "100.00", "2026-03-12T10:00:00+08:00")
    ok(xuhui, "aid", recipient=new_rid, expenses=[xchc], at="2026-03-12T11:00:00+08:00")
    four = scheme_trace(xuhui, new_rid, xchc, FOUR)
    assert four["applied"] is True
    assert (four["monthly"]["visit"], four["monthly"]["aid_before"]) == (1, "0.00")
    assert scheme_trace(xuhui, new_rid, xchc, CITY)["amount"] == "0.00"  # the city cap is used up

    # a receipt aided in Changning, or on the claim in flight there, is a duplicate in Xuhui
    again = expense(xuhui, new_rid, TERTIARY, "2026-02-10", "RJ-0001", "14900.00", "2026-03-13T10:00:00+08:00")
    code, answer = execute(xuhui, "claim", {"recipient": new_rid, "expenses": [again], "handler": "H1", "at": "2026-03-13T11:00:00+08:00"})
    assert (code, answer["code"]) == (1, "DUPLICATE"), answer
    stay_again = ok(xuhui, "record_expense", recipient=new_rid, visit_type="inpatient", facility=dict(TERTIARY), service_date="2026-03-03",
                    invoice_date="2026-03-03", invoice_no="RJ-STAY-1", total="2000.00", in_scope="2000.00", basic_insurance_paid="0.00",
                    at="2026-03-13T12:00:00+08:00")["ids"]["expense"]
    code, answer = execute(xuhui, "claim", {"recipient": new_rid, "expenses": [stay_again], "handler": "H1", "at": "2026-03-13T13:00:00+08:00"})
    assert (code, answer["code"]) == (1, "DUPLICATE"), answer

    # in Changning: the claim lodged before the move is finished there ...
    ok(changning, "review", claim=in_flight, reviewer="R1", at="2026-03-06T09:00:00+08:00")
    ok(changning, "approve", claim=in_flight, approver="A1", at="2026-03-06T09:10:00+08:00")
    paid = ok(changning, "pay", claim=in_flight, payer="P1", at="2026-03-06T09:20:00+08:00")
    assert Decimal(paid["ids"]["paid"]) > 0
    # what the stay got in Changning is what Xuhui counted against the inpatient cap
    assert Decimal(changning.recipient(rid).expenses[stay].decided["by_scheme"][CITY]) == carried[(CITY, 2026, "inpatient")]
    # ... and a new claim there is refused with a clear code
    code, answer = execute(changning, "claim", {"recipient": rid, "expenses": [late], "handler": "H1", "at": "2026-03-06T10:00:00+08:00"})
    assert (code, answer["code"], answer["rule"]) == (1, "TRANSFERRED_OUT", "R-CAP-4"), answer
    assert "xuhui" in answer["message"]

    # every decision in both districts replays to the fen with the knowledge it recorded (ADR 0007)
    for app in (changning, xuhui):
        report = audit(app)
        assert report.decisions >= 2 and report.different == []


def test_a_move_run_again_records_nothing_twice_and_a_second_move_out_is_refused(districts):
    changning, xuhui = districts
    rid = ok(changning, "enrol", id_number=ID_NUMBER, name="王秀英", street="华阳路街道", at="2026-01-05T09:00:00+08:00")["ids"]["recipient"]
    first = transfer(changning, xuhui, rid, from_district="changning", to_district="xuhui", at=datetime(2026, 3, 5, 9, tzinfo=CST))
    assert first.status == "accepted", first.as_dict()
    head = int(xuhui.recorder.max_notification_id() or 0)
    again = transfer(changning, xuhui, rid, from_district="changning", to_district="xuhui")
    assert again.status == "accepted" and again.ids["recipient"] == first.ids["recipient"]
    assert int(xuhui.recorder.max_notification_id() or 0) == head
    elsewhere = transfer(changning, xuhui, rid, from_district="changning", to_district="jingan")
    assert (elsewhere.status, elsewhere.code) == ("rejected", "TRANSFERRED_OUT")
    out = changning.run(m.TransferOut(recipient=rid, to_district="jingan"))
    assert (out.status, out.code) == ("rejected", "TRANSFERRED_OUT")


CLI_KEYS = ("LEDGER_DISTRICTS", "LEDGER_DATABASE_URL", "LEDGER_DISTRICT", "LEDGER_RELAY_EXCHANGE", "LEDGER_RELAY_STREAM", "LEDGER_CITY_BASE_URL")


def test_the_cli_moves_a_person_between_district_stores(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from infra.cli import _register, app

    for key in CLI_KEYS:
        monkeypatch.delenv(key, raising=False)  # restored after the test, whatever --district set
    monkeypatch.setenv("LEDGER_DATA_KEY", "transfer-test-key")
    monkeypatch.setenv("LEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("LEDGER_DISTRICTS", "changning,xuhui")
    _register()

    def ledger(*args: str):
        return CliRunner().invoke(app, list(args), catch_exceptions=False)

    made = ledger("--district", "changning", "do", "enrol", f"id_number={ID_NUMBER}", "name=王秀英", "street=华阳路街道", "--get", "ids.recipient")
    assert made.exit_code == 0, made.output
    rid = made.stdout.strip().splitlines()[-1]
    moved = ledger("--district", "changning", "transfer", "--to", "xuhui", ID_NUMBER)  # the person as the ledger shows them
    assert moved.exit_code == 0, moved.output
    assert '"source_recipient": "' + rid + '"' in moved.stdout
    assert (tmp_path / "ledger.xuhui.db").exists()
    again = ledger("transfer", "--from", "changning", "--to", "xuhui", rid)
    assert again.exit_code == 0, again.output  # finishing a finished move records nothing
    unknown = ledger("transfer", "--from", "changning", "--to", "pudong", rid)
    assert unknown.exit_code == 2 and "not a configured district" in unknown.output
    found = ledger("--district", "xuhui", "find", ID_NUMBER, "--json")
    assert found.exit_code == 0 and "华阳路街道" in found.stdout
