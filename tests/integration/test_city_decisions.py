"""A district's decisions read the city view (ADR 0020; R-CAP-4, R-CLR-1(b), R-PH-7 [001; 002 4.5;
000 第七条]): a receipt aided in another district is refused as a duplicate, naming the district,
its expense and the city view's positions; the person's city-scheme usage in the other districts
counts against the annual cap, per district the larger of the view's figure and what a move
carried in; the decision records what it read, so a replay and a later reassessment use that and
never the view as it is by then. Without a city index nothing is read or recorded.

Two district stores side by side (changning on ``database_url``, xuhui on a store of its own), the
city view in a database of its own, fed through ``CityView.process`` with each district's public
stream (what its relay publishes); the last test runs the relay and the view on NATS JetStream."""

from __future__ import annotations

import asyncio
import secrets
from contextlib import ExitStack
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterator

import pytest

from commands.handlers.transfer import transfer
from commands.replay import audit
from infra.city import CityView, DistrictCityIndex, run_city_view
from infra.cli.ops import execute
from infra.districts import District
from infra.settings import Settings
from infra.wiring import build_app, city_index
from ledger.aggregates import Recipient
from ledger.values import CST
from relay_support import BackgroundLoop, wait_until
from test_city_view import stream_of
from district_support import district_app
from aggregate_support import recorded_decision

ID_NUMBER = "310105195803122013"
TERTIARY = {"kind": "hospital", "level": 3, "district_designated": False, "code": "SH-H3-RUIJIN"}
CITY = "shanghai.medical_aid"
D = Decimal



@pytest.fixture
def city(database_url: str, tmp_path, another_pg_database) -> Iterator[dict[str, Any]]:
    """changning and xuhui ledgers, and the city view's database (PostgreSQL beside PostgreSQL)."""
    with ExitStack() as stack:
        if database_url.startswith("sqlite"):
            urls = [database_url, f"sqlite:///{tmp_path / 'xuhui.db'}", f"sqlite:///{tmp_path / 'city.db'}"]
        else:
            urls = [database_url, stack.enter_context(another_pg_database()), stack.enter_context(another_pg_database())]
        apps = {"changning": district_app(urls[0]), "xuhui": district_app(urls[1])}
        view = CityView(urls[2])
        index = DistrictCityIndex(urls[2], "xuhui")
        try:
            yield {**apps, "view": view, "index": index, "city_url": urls[2]}
        finally:
            index.close()
            view.close()
            for a in apps.values():
                a.close()


def feed(view: CityView, code: str, app: Any) -> int:
    """District ``code``'s stream into the view (what was applied before is a repeat); its position."""
    for msg in stream_of(app):
        view.process(code, msg.model_dump(mode="json"))
    return view.positions()[code]


def ok(app: Any, command: str, **payload: Any) -> dict[str, Any]:
    code, answer = execute(app, command, payload)
    assert code == 0, answer
    return answer


def person(app: Any, street: str, at: str) -> str:
    """The same person (one resident id number: one recipient key in every district), dibao, insured."""
    rid = ok(app, "enrol", id_number=ID_NUMBER, name="王秀英", street=street, at=f"{at}T09:00:00+08:00")["ids"]["recipient"]
    ok(app, "grant_category", recipient=rid, category="dibao", **{"from": "2025-01-01"}, at=f"{at}T09:01:00+08:00")
    ok(app, "insure", recipient=rid, scheme="resident", **{"from": "2020-01-01"}, at=f"{at}T09:02:00+08:00")
    return rid


def expense(app: Any, rid: str, day: str, invoice_no: str, in_scope: str, at: str) -> str:
    return ok(app, "record_expense", recipient=rid, visit_type="outpatient", facility=dict(TERTIARY), service_date=day, invoice_date=day,
              invoice_no=invoice_no, total=in_scope, in_scope=in_scope, basic_insurance_paid="0.00", at=at)["ids"]["expense"]


def city_trace(app: Any, rid: str, eid: str) -> dict[str, Any]:
    decided = recorded_decision(app, rid, eid)
    return next(s for s in decided["trace"]["schemes"] if s["scheme"] == CITY)


def decision_event(app: Any, rid: str, eid: str) -> Any:
    return next(e for e in app.events.get(app.recipient(rid).id) if isinstance(e, Recipient.AidDecided) and any(s["expense"] == eid for s in e.decisions))


def used_in_changning(app: Any, amount: str = "15000.00") -> tuple[str, str]:
    """9,000 of the person's 10,000 outpatient city cap for 2026 decided and paid in changning
    (60% of 15,000 self-pay at a tertiary hospital)."""
    rid = person(app, "华阳路街道", "2026-01-05")
    eid = expense(app, rid, "2026-02-10", "RJ-0001", amount, "2026-02-10T16:00:00+08:00")
    ok(app, "aid", recipient=rid, expenses=[eid], at="2026-02-11T10:00:00+08:00")
    assert app.recipient(rid).expenses[eid].decided["by_scheme"][CITY] == "9000.00"
    return rid, eid


def test_a_receipt_aided_in_changning_is_refused_in_xuhui_with_the_positions(city):
    changning, xuhui, view = city["changning"], city["xuhui"], city["view"]
    _, paid = used_in_changning(changning)
    at_changning = feed(view, "changning", changning)
    rid = person(xuhui, "徐家汇街道", "2026-03-01")
    again = expense(xuhui, rid, "2026-02-10", "RJ-0001", "15000.00", "2026-03-02T10:00:00+08:00")

    xuhui.city = city["index"]
    code, answer = execute(xuhui, "claim", {"recipient": rid, "expenses": [again], "handler": "H1", "at": "2026-03-02T11:00:00+08:00"})
    assert (code, answer["code"], answer["rule"]) == (1, "DUPLICATE", "R-CAP-4, R-CLR-1(b)"), answer
    assert f"aided in changning (expense {paid})" in answer["message"]
    assert f"as of the city view at changning {at_changning}" in answer["message"]
    # recorded: the claim's rejection and the attempted duplicate, both naming where and when
    attempt = next(e for e in xuhui.events.get(xuhui.recipient(rid).id) if isinstance(e, Recipient.DuplicateAttempted))
    assert attempt.aided_as == f"changning:{paid}" and f"changning {at_changning}" in attempt.reason
    assert attempt.city == {"district": "changning", "expense": paid, "positions": {"changning": at_changning}}
    code, answer = execute(xuhui, "one_stop", {"expense": again, "at": "2026-03-02T11:30:00+08:00"})
    assert (code, answer["code"]) == (1, "DUPLICATE"), answer

    # a receipt the view does not know as aided elsewhere goes through, and so does this one
    # without a city index: the refusal came from the city view
    other = expense(xuhui, rid, "2026-03-01", "RJ-0100", "100.00", "2026-03-02T12:00:00+08:00")
    assert ok(xuhui, "aid", recipient=rid, expenses=[other], at="2026-03-02T12:30:00+08:00")
    xuhui.city = None
    assert ok(xuhui, "aid", recipient=rid, expenses=[again], at="2026-03-02T13:00:00+08:00")
    assert "city" not in decision_event(xuhui, rid, again).knowledge, "no city index: nothing read, nothing recorded"


def test_usage_in_changning_makes_a_smaller_award_in_xuhui_and_replays_after_the_view_changes(city):
    changning, xuhui, view = city["changning"], city["xuhui"], city["view"]
    crid, _ = used_in_changning(changning)
    at_changning = feed(view, "changning", changning)
    rid = person(xuhui, "徐家汇街道", "2026-03-01")
    assert rid == crid, "one person, one recipient key in every district"
    xuhui.city = city["index"]

    # R-CAP-3 with R-CAP-4: 60% of 5,000 is 3,000, but changning used 9,000 of the 10,000
    eid = expense(xuhui, rid, "2026-03-10", "XH-0001", "5000.00", "2026-03-10T10:00:00+08:00")
    ok(xuhui, "aid", recipient=rid, expenses=[eid], at="2026-03-10T11:00:00+08:00")
    trace = city_trace(xuhui, rid, eid)
    assert (trace["computed"], trace["amount"]) == ("3000.00", "1000.00")
    assert trace["cap"]["used_before"] == "9000.00" and trace["cap"]["bound"] is True
    assert trace["cap"]["city_view"]["used_elsewhere"] == {"changning": "9000.00"}
    assert trace["cap"]["city_view"]["as_of"] == f"as of the city view at changning {at_changning}"
    assert {"R-CAP-3", "R-CAP-4"} <= set(trace["rules"])
    from commands.explain import explain_expense
    from infra.cli.explain import render

    text = "\n".join(render(explain_expense(xuhui, eid)))
    assert f"used in other districts: changning 9000.00; counted 9000.00 as of the city view at changning {at_changning}" in text
    recorded = decision_event(xuhui, rid, eid).knowledge["city"]
    assert recorded["positions"] == {"changning": at_changning}
    assert recorded["caps"] == [{"scheme": CITY, "year": 2026, "kind": "outpatient", "elsewhere": {"changning": "9000.00"}, "counted": "9000.00"}]

    # the view moves on: changning decides 600 more of the person's city cap
    more = expense(changning, crid, "2026-03-15", "RJ-0002", "1000.00", "2026-03-15T10:00:00+08:00")
    ok(changning, "aid", recipient=crid, expenses=[more], at="2026-03-15T11:00:00+08:00")
    assert feed(view, "changning", changning) > at_changning
    # ... which the xuhui decision made before never re-reads: a replay finds 0 differences and a
    # clearing run (every decided expense recomputed, R-CLR-2) changes nothing
    report = audit(xuhui)
    assert report.decisions >= 1 and report.different == []
    assert xuhui.clearing_run(at=datetime(2026, 3, 16, 9, tzinfo=CST)) == 0
    assert xuhui.recipient(rid).expenses[eid].due["total"] == "1000.00"
    # a new decision reads the view as it is now: 9,600 used in changning, 1,000 here, nothing left
    later = expense(xuhui, rid, "2026-03-20", "XH-0002", "1000.00", "2026-03-20T10:00:00+08:00")
    ok(xuhui, "aid", recipient=rid, expenses=[later], at="2026-03-20T11:00:00+08:00")
    assert city_trace(xuhui, rid, later)["cap"]["city_view"]["used_elsewhere"] == {"changning": "9600.00"}
    assert city_trace(xuhui, rid, later)["amount"] == "0.00"
    assert audit(xuhui).different == []


def test_what_a_move_carried_and_the_city_view_show_of_one_district_count_once(city):
    changning, xuhui, view = city["changning"], city["xuhui"], city["view"]
    crid, _ = used_in_changning(changning)
    feed(view, "changning", changning)
    moved = transfer(changning, xuhui, crid, from_district="changning", to_district="xuhui", at=datetime(2026, 3, 5, 9, tzinfo=CST))
    assert moved.status == "accepted", moved.as_dict()
    rid = moved.ids["recipient"]
    xuhui.city = city["index"]
    eid = expense(xuhui, rid, "2026-03-10", "XH-0001", "5000.00", "2026-03-10T10:00:00+08:00")
    ok(xuhui, "aid", recipient=rid, expenses=[eid], at="2026-03-10T11:00:00+08:00")
    trace = city_trace(xuhui, rid, eid)
    # 9,000 carried in and 9,000 in the city view for changning: the larger, once (not 18,000)
    assert trace["cap"]["used_before"] == "9000.00" and trace["cap"]["carried_in"] == "9000.00"
    assert trace["cap"]["city_view"]["counted"] == "0.00" and trace["amount"] == "1000.00"
    [entry] = decision_event(xuhui, rid, eid).knowledge["city"]["caps"]
    assert entry["carried_from"] == {"district": "changning", "carried_in": "9000.00", "city_view": "9000.00", "larger": "carried_in"}
    assert audit(xuhui).different == []


def test_the_wiring_attaches_the_city_view_only_to_a_district_process(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'city.db'}"
    assert city_index({"LEDGER_CITY_DATABASE_URL": url}) is None
    assert city_index({"LEDGER_DISTRICT": "xuhui"}) is None
    found = city_index({"LEDGER_DISTRICT": "xuhui", "LEDGER_CITY_DATABASE_URL": url})
    assert isinstance(found, DistrictCityIndex) and found.district == "xuhui"
    monkeypatch.setenv("LEDGER_DISTRICT", "xuhui")
    monkeypatch.setenv("LEDGER_CITY_DATABASE_URL", url)
    app = build_app(Settings(database_url=f"sqlite:///{tmp_path / 'xuhui.db'}"))
    try:
        assert isinstance(app.city, DistrictCityIndex)
    finally:
        app.city.close()
        app.close()
    monkeypatch.delenv("LEDGER_DISTRICT")
    app = build_app(Settings(database_url=f"sqlite:///{tmp_path / 'single.db'}"))
    try:
        assert app.city is None
    finally:
        app.close()


def test_an_unreachable_city_view_is_recorded_and_the_district_decides_alone(city, tmp_path):
    xuhui = city["xuhui"]
    xuhui.city = DistrictCityIndex("postgresql://postgres@127.0.0.1:1/nowhere", "xuhui")
    rid = person(xuhui, "徐家汇街道", "2026-03-01")
    eid = expense(xuhui, rid, "2026-03-10", "XH-0001", "5000.00", "2026-03-10T10:00:00+08:00")
    ok(xuhui, "aid", recipient=rid, expenses=[eid], at="2026-03-10T11:00:00+08:00")
    assert city_trace(xuhui, rid, eid)["amount"] == "3000.00" and "city_view" not in city_trace(xuhui, rid, eid)["cap"]
    recorded = decision_event(xuhui, rid, eid).knowledge["city"]
    assert recorded["district"] == "xuhui" and "cannot be read" in recorded["unavailable"]
    assert recorded["receipts_unread"] == [eid]
    assert audit(xuhui).different == []


NATS_URL = "nats://127.0.0.1:4222"


def test_through_jetstream_a_changning_payment_refuses_the_receipt_and_bounds_the_cap_in_xuhui(tmp_path):
    from test_city_brokers import _create_streams, _delete_streams, publish

    tag = "d" + secrets.token_hex(3)
    stores = {name: f"sqlite:///{tmp_path / f'{name}.db'}" for name in ("changning", "xuhui")}
    districts = {name: District(f"{tag}{name[:2]}", url) for name, url in stores.items()}
    changning, xuhui = district_app(stores["changning"]), district_app(stores["xuhui"])
    city_url = f"sqlite:///{tmp_path / 'city.db'}"
    view = CityView(city_url)
    xuhui.city = DistrictCityIndex(city_url, districts["xuhui"].code)
    try:
        asyncio.run(_create_streams(list(districts.values())))
        loop = BackgroundLoop(lambda stop: run_city_view(view, NATS_URL, districts.values(), stop=stop, name=f"city_{tag}"))
        try:
            _, paid = used_in_changning(changning)
            head = stream_of(changning)[-1].position
            assert publish(changning, districts["changning"]) > 0
            code = districts["changning"].code
            wait_until(lambda: view.positions().get(code) == head, 30, "the city view to reach changning's head")
        finally:
            loop.join()
        rid = person(xuhui, "徐家汇街道", "2026-03-01")
        again = expense(xuhui, rid, "2026-02-10", "RJ-0001", "15000.00", "2026-03-02T10:00:00+08:00")
        status, answer = execute(xuhui, "claim", {"recipient": rid, "expenses": [again], "handler": "H1", "at": "2026-03-02T11:00:00+08:00"})
        assert (status, answer["code"]) == (1, "DUPLICATE") and f"{code} {head}" in answer["message"] and paid in answer["message"], answer
        eid = expense(xuhui, rid, "2026-03-10", "XH-0001", "5000.00", "2026-03-10T10:00:00+08:00")
        ok(xuhui, "aid", recipient=rid, expenses=[eid], at="2026-03-10T11:00:00+08:00")
        assert city_trace(xuhui, rid, eid)["amount"] == "1000.00"
        assert decision_event(xuhui, rid, eid).knowledge["city"]["positions"] == {code: head}
    finally:
        xuhui.city.close()
        view.close()
        changning.close()
        xuhui.close()
        asyncio.run(_delete_streams([d.stream for d in districts.values()]))


def test_per_district_the_larger_of_carried_and_the_city_view_counts_and_other_districts_in_full():
    from commands.city import UsageRead, usage_block

    bucket = (CITY, 2026, "outpatient")
    read = UsageRead({(2026, "outpatient"): {"changning": D("9500.00"), "jingan": D("300.00"), "xuhui": D("800.00")},
                      (2026, "inpatient"): {"jingan": D("50.00")}}, {"changning": 412, "jingan": 7, "xuhui": 380})
    # given 9,000 carried in from changning and the view at 9,500 there (a later decision there)
    block = usage_block("xuhui", read, [bucket], {bucket: D("9000.00")}, "changning")
    # then 500 beyond the carried amount for changning, jingan's 300 in full, xuhui's own not at all
    [entry] = block["caps"]
    assert entry["elsewhere"] == {"changning": "9500.00", "jingan": "300.00"} and entry["counted"] == "800.00"
    assert entry["carried_from"]["larger"] == "city_view"
    assert block["positions"] == {"changning": 412, "jingan": 7, "xuhui": 380}
    # no move: every other district counts in full, bucket by bucket (the inpatient one apart)
    [entry] = usage_block("xuhui", read, [bucket], {}, None)["caps"]
    assert entry["counted"] == "9800.00" and "carried_from" not in entry


def test_a_cap_overrun_decided_while_the_view_lagged_is_cleared_by_the_district_that_decided_later(city):
    """R-CAP-4, R-CLR-1(e), R-CLR-2 [001; 000 第七条]: changning decides 9,000 of the person's
    10,000 city cap; xuhui decides a month later while the city view has not applied changning's
    stream yet, and grants 3,000: 2,000 over the cap. Once the view has caught up, xuhui's
    clearing run finds that its decision counted nothing of what changning had decided before it,
    records the corrected read and opens a case for the 2,000; changning's run opens nothing (its
    decision came first). Run again, nothing more; a replay finds no difference."""
    changning, xuhui, view = city["changning"], city["xuhui"], city["view"]
    crid, _ = used_in_changning(changning)
    rid = person(xuhui, "徐家汇街道", "2026-03-01")
    xuhui.city = city["index"]
    eid = expense(xuhui, rid, "2026-03-10", "XH-0001", "5000.00", "2026-03-10T10:00:00+08:00")
    ok(xuhui, "aid", recipient=rid, expenses=[eid], at="2026-03-10T11:00:00+08:00")  # the view is behind: nothing elsewhere
    assert city_trace(xuhui, rid, eid)["amount"] == "3000.00"
    assert decision_event(xuhui, rid, eid).knowledge["city"]["caps"][0]["counted"] == "0.00"

    # a run before the view has caught up finds nothing to correct
    assert ok(xuhui, "clearing_run", trigger="cap_overrun", at="2026-03-11T09:00:00+08:00")["ids"]["cases_opened"] == 0
    at = {"changning": feed(view, "changning", changning), "xuhui": feed(view, "xuhui", xuhui)}
    ran = ok(xuhui, "clearing_run", trigger="cap_overrun", at="2026-03-12T09:00:00+08:00")["ids"]
    assert (ran["cases_opened"], ran["city_usage"]) == (1, 1), ran
    r = xuhui.recipient(rid)
    [case] = r.cases.values()
    assert case.expense_id == eid and case.amount == D("2000.00") and case.trigger == "cap_overrun"
    assert r.expenses[eid].due["by_scheme"][CITY] == "1000.00"
    corrected = next(e for e in xuhui.events.get(r.id) if isinstance(e, Recipient.CityUsageCorrected))
    [item] = corrected.results
    assert item["expense"] == eid and item["city"]["caps"][0]["elsewhere"] == {"changning": "9000.00"}
    assert item["city"]["corrected"]["counted_before"] == "0.00" and "R-CLR-1(e)" in item["city"]["corrected"]["reason"]
    assert corrected.positions == at
    reassessed = next(e for e in xuhui.events.get(r.id) if isinstance(e, Recipient.AidReassessed))
    assert reassessed.trigger == "cap_overrun" and reassessed.cause["city_view"]["positions"] == at
    trace = next(s for s in reassessed.results[0]["due"]["trace"]["schemes"] if s["scheme"] == CITY)
    assert trace["cap"]["city_view"]["corrected"]["counted_before"] == "0.00"
    assert trace["cap"]["city_view"]["used_elsewhere"] == {"changning": "9000.00"}

    # the corrected read is state a snapshot carries (a recipient restored from one reassesses the same)
    snapshot = xuhui.snapshots.mapper.to_stored_event(Recipient.Snapshot.take(r))
    assert xuhui.snapshots.mapper.to_domain_event(snapshot).mutate(None).knowledge() == r.knowledge()

    # idempotent, and the district that decided first owes nothing
    assert ok(xuhui, "clearing_run", trigger="cap_overrun", at="2026-03-13T09:00:00+08:00")["ids"]["cases_opened"] == 0
    changning.city = DistrictCityIndex(city["city_url"], "changning")
    try:
        assert ok(changning, "clearing_run", trigger="cap_overrun", at="2026-03-13T09:00:00+08:00")["ids"]["cases_opened"] == 0
        assert not changning.recipient(crid).cases
    finally:
        changning.city.close()
        changning.city = None
    assert audit(xuhui).different == []


def test_only_what_other_districts_decided_before_the_decision_counts_in_its_corrected_read():
    from commands.city import usage_known_before, usage_block

    def row(district: str, due: str, decided_us: int | None, kind: str | None = "outpatient", cap_year: int | None = 2026) -> dict[str, Any]:
        return {"district": district, "expense_id": f"{district}-{due}", "recipient_key": "k", "year": 2026, "cap_year": cap_year,
                "kind": kind, "city_due": due, "decided_us": decided_us}

    rows = [row("changning", "9000.00", 100), row("changning", "600.00", 300), row("jingan", "50.00", None),
            row("xuhui", "3000.00", 200), row("jingan", "70.00", 150, kind="inpatient"), row("jingan", "0.00", 10)]
    read = usage_known_before(rows, "xuhui", 200, {"changning": 4})
    # decided before 200 elsewhere: changning's 9,000 (not its 600 at 300), jingan's 50 from before
    # the view kept decision times; xuhui's own never; buckets apart
    assert read.used == {(2026, "outpatient"): {"changning": D("9000.00"), "jingan": D("50.00")}, (2026, "inpatient"): {"jingan": D("70.00")}}
    [entry] = usage_block("xuhui", read, [(CITY, 2026, "outpatient")], {}, None)["caps"]
    assert entry["counted"] == "9050.00"
    # a row kept before the cap bucket was: counted under both kinds of its year, as a decision reads it
    read = usage_known_before([row("jingan", "10.00", 1, kind=None, cap_year=None)], "xuhui", 200, {})
    assert read.used == {(2026, "outpatient"): {"jingan": D("10.00")}, (2026, "inpatient"): {"jingan": D("10.00")}}


def test_the_automatic_clearing_run_checks_the_city_reads_of_persons_aided_in_two_districts(city, monkeypatch):
    """``ledger --district xuhui clearing run`` (no trigger: the run picks its own, R-CLR-1) reads
    the city view's rows of the persons aided in xuhui and elsewhere, as the CLI's adapter reads
    them, and looks at them under ``cap_overrun`` (R-CAP-4, R-CLR-1(e))."""
    from commands import clearing_runs
    from infra.cli.clearing import _city_usage

    changning, xuhui, view = city["changning"], city["xuhui"], city["view"]
    used_in_changning(changning)
    rid = person(xuhui, "徐家汇街道", "2026-03-01")
    eid = expense(xuhui, rid, "2026-03-10", "XH-0001", "5000.00", "2026-03-10T10:00:00+08:00")
    ok(xuhui, "aid", recipient=rid, expenses=[eid], at="2026-03-10T11:00:00+08:00")  # no city index yet: nothing read
    assert "city" not in decision_event(xuhui, rid, eid).knowledge
    feed(view, "changning", changning)
    feed(view, "xuhui", xuhui)
    first = clearing_runs.run(xuhui, at=datetime(2026, 3, 11, 9, tzinfo=CST))  # a run before, without the view: nothing
    assert first.cases_opened == 0 and first.city_usage == 0
    monkeypatch.setenv("LEDGER_CITY_DATABASE_URL", city["city_url"])
    monkeypatch.setenv("LEDGER_DISTRICT", "xuhui")
    usage = _city_usage(xuhui)
    assert usage is not None and list(usage.by_recipient) == [xuhui.recipient(rid).id]
    summary = clearing_runs.run(xuhui, at=datetime(2026, 3, 12, 9, tzinfo=CST), city_usage=usage)
    assert (summary.cases_opened, summary.city_usage, summary.triggers) == (1, 1, {"cap_overrun": 1}), summary
    [case] = xuhui.recipient(rid).cases.values()
    assert case.amount == D("2000.00") and case.trigger == "cap_overrun"
    again = clearing_runs.run(xuhui, at=datetime(2026, 3, 13, 9, tzinfo=CST), city_usage=_city_usage(xuhui))
    assert again.cases_opened == 0 and again.recipients_changed == 0
