"""Finding anyone by what the ledger shows (ADR 0019), on SQLite and PostgreSQL: the expense
handle, the resident id number (through the keyed hash), a name, the uuid; in one place
(``commands.lookup``) and from the CLI, the HTTP lists and the console; lists are paginated by an
opaque cursor that walks every row once; a street handler sees their own street only (R-PH-1)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterator

import pytest
from clearing_story import CHC, app_on, at, id_number
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from commands import lookup
from commands import models as m
from infra.cli import _register
from infra.cli import app as cli
from infra.http import create_app
from infra.http.auth import issue
from infra.settings import Settings
from ledger import errors

_register()

HUAYANG, TIANSHAN = "华阳路街道", "天山路街道"
SECRET = "test-secret-for-finding"
NAMES = ["王秀英", "李建国", "王建华", "张伟", "刘芳", "陈静", "杨洋", "赵磊"]


@dataclass
class World:
    settings: Settings
    app: object
    rids: list[str] = field(default_factory=list)
    eids: dict[str, str] = field(default_factory=dict)  # handle -> id
    claims: list[str] = field(default_factory=list)

    def street(self, i: int) -> str:
        return HUAYANG if i % 2 == 0 else TIANSHAN


def _ok(result) -> dict:
    assert result.status == "accepted", result
    return result.ids


def build(database_url: str) -> World:
    settings = Settings(database_url=database_url, token_secret=SECRET)
    app = app_on(settings)
    w = World(settings, app)
    for i, name in enumerate(NAMES):
        day = at("2026-01-05", f"09:{i:02d}:00")
        rid = _ok(app.run(m.Enrol(id_number=id_number(100 + i), name=name, street=w.street(i), at=day)))["recipient"]
        app.run(m.GrantCategory.model_validate({"recipient": rid, "category": "dibao", "from": "2025-01-01", "at": day}))
        app.run(m.Insure.model_validate({"recipient": rid, "scheme": "resident", "from": "2019-01-01", "at": day}))
        w.rids.append(rid)
        for k in (1, 2):
            handle = f"E{100 * i + k:06d}"
            w.eids[handle] = _ok(app.run(m.RecordExpense(
                recipient=rid, handle=handle, visit_type="outpatient", facility={**CHC, "code": "CHC-1"},
                service_date=f"2026-01-0{k + 1}", invoice_date=f"2026-01-0{k + 1}", invoice_no=f"INV-{handle}",
                total=Decimal("150.00"), in_scope=Decimal("120.00"), basic_insurance_paid=Decimal("30.00"),
                source="claimant", at=at("2026-01-06", f"10:{i:02d}:{k:02d}"))))["expense"]
    for i in (0, 1, 2):  # claim, review, approve, pay the first expense of three people
        res = app.aid(w.rids[i], [w.eids[f"E{100 * i + 1:06d}"]], lookup_at(i))
        assert res.status == "accepted", res
        w.claims.append(res.ids["claim"])
    return w


def lookup_at(i: int):
    from clearing_story import parse

    return parse(at("2026-01-08", f"11:{i:02d}:00"))


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    w = build(database_url)
    yield w
    close = getattr(w.app, "close", None)
    if close:
        close()


# ------------------------------------------------------------------------------ one place
def test_every_way_of_naming_resolves_in_one_place(world: World):
    app, rids = world.app, world.rids
    # the handle the ledger shows (case and width as typed), and the expense id
    assert lookup.resolve_expense(app, "E000101") == world.eids["E000101"]
    assert lookup.resolve_expense(app, " e000101 ") == world.eids["E000101"]
    assert lookup.resolve_expense(app, world.eids["E000702"]) == world.eids["E000702"]
    with pytest.raises(errors.UnknownEntity):
        lookup.resolve_expense(app, "E999999")
    # the resident id number, through the keyed hash (ADR 0015); the uuid; a name (normalised)
    assert lookup.resolve_recipient(app, id_number(103)) == rids[3]
    assert app.recipient_id_for(id_number(103)) != app.recipient(rids[3]).id_for(id_number(103))
    assert lookup.resolve_recipient(app, rids[5].upper()) == rids[5]
    assert lookup.resolve_recipient(app, "李 建国") == rids[1]
    with pytest.raises(errors.InvalidInput) as many:
        lookup.resolve_recipient(app, "王")  # 王秀英 and 王建华
    assert many.value.code == "AMBIGUOUS" and "2" in many.value.message
    with pytest.raises(errors.UnknownEntity):
        lookup.resolve_recipient(app, "无此人")
    # a street handler's scope (R-PH-1): both 王 are in 华阳路, so 天山路 finds neither, and 李建国 only there
    assert lookup.match_recipients(app, "王", street=TIANSHAN)[1] == []
    assert lookup.resolve_recipient(app, "李建国", street=TIANSHAN) == rids[1]
    with pytest.raises(errors.UnknownEntity):
        lookup.resolve_recipient(app, "李建国", street=HUAYANG)
    # a claim by its id, or by an expense it lists; the command fields of `ledger do`
    assert lookup.resolve_claim(app, "E000001") == world.claims[0]
    fields = lookup.resolve_fields(app, {"recipient": "刘芳", "expenses": ["E000401", world.eids["E000402"]], "claim": "E000101"})
    assert fields == {"recipient": rids[4], "expenses": [world.eids["E000401"], world.eids["E000402"]], "claim": world.claims[1]}


def test_a_name_search_keeps_no_name_and_finds_no_erased_person(world: World):
    d = lookup.directory(world.app)
    blob = json.dumps([vars(r) for r in d.recipients.values()], ensure_ascii=False)
    assert not any(name in blob for name in NAMES) and id_number(100) not in blob
    read_as, people = lookup.search_people(world.app, "王")
    assert read_as == "name" and [p.name for p in people] == ["王秀英", "王建华"]
    assert people[0].masked_id == id_number(100)[:6] + "********" + id_number(100)[-4:]


# ------------------------------------------------------------------------------ pagination
def _walk(fetch) -> list[dict]:
    seen, cursor, pages = [], None, 0
    while True:
        page = fetch(cursor)
        seen += page.items
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            return seen
        assert pages < 100


def test_a_cursor_walks_every_row_once(world: World):
    app = world.app
    everything = lookup.list_expenses(app, limit=500).items
    assert len(everything) == 16
    for n in (1, 3, 7, 16):
        walked = _walk(lambda c, n=n: lookup.list_expenses(app, cursor=c, limit=n))
        assert [x["expense"] for x in walked] == [x["expense"] for x in everything]
    people = _walk(lambda c: lookup.list_recipients(app, cursor=c, limit=3))
    assert sorted(p["recipient"] for p in people) == sorted(world.rids)
    # a row recorded during the walk comes once, at the end
    first = lookup.list_recipients(app, limit=5)
    late = _ok(app.run(m.Enrol(id_number=id_number(150), name="孙丽", street=HUAYANG, at=at("2026-01-09"))))["recipient"]
    rest = _walk(lambda c: lookup.list_recipients(app, cursor=c or first.next_cursor, limit=2))
    assert [p["recipient"] for p in first.items + rest] == world.rids + [late]
    # filters: street, month, status, scheme
    assert {x["street"] for x in lookup.list_expenses(app, street=TIANSHAN, limit=500).items} == {TIANSHAN}
    paid = lookup.list_expenses(app, status="paid", limit=500).items
    assert sorted(x["handle"] for x in paid) == ["E000001", "E000101", "E000201"]
    assert all("shanghai.medical_aid" in x["schemes"] for x in paid)
    assert lookup.list_expenses(app, month="2025-12", limit=500).items == []
    assert len(lookup.list_claims(app, status="paid").items) == 3
    pays = lookup.list_payments(app, month="2026-01").items
    assert sorted(p["recipient"] for p in pays) == sorted(world.rids[:3]) and all(Decimal(p["total"]) > 0 for p in pays)
    assert lookup.list_payments(app, month="2026-02").items == []
    with pytest.raises(errors.InvalidInput):
        lookup.list_expenses(app, cursor=first.next_cursor)  # a recipients cursor is not an expenses cursor
    with pytest.raises(errors.InvalidInput):
        lookup.list_claims(app, cursor="not-a-cursor!")


# ------------------------------------------------------------------------------ CLI
def _cli(world: World, *args: str):
    env = {"LEDGER_DATABASE_URL": world.settings.database_url, "LEDGER_JURISDICTION": "shanghai.changning"}
    return CliRunner().invoke(cli, list(args), env=env)


def test_cli_find_explain_and_statement_take_what_the_ledger_shows(world: World):
    r = _cli(world, "find", "E000101", "--json")
    assert r.exit_code == 0, r.output
    found = json.loads(r.stdout)
    assert found["kind"] == "expense" and found["items"][0]["expense"] == world.eids["E000101"]
    r = _cli(world, "find", id_number(102), "--json")
    out = json.loads(r.stdout)
    assert out["read_as"] == "id_number" and out["items"][0]["recipient"] == world.rids[2]
    assert id_number(102) not in r.stdout  # shown masked
    r = _cli(world, "find", "--expenses", "--status", "paid", "--limit", "2", "--json")
    page = json.loads(r.stdout)
    assert len(page["items"]) == 2 and page["next_cursor"]
    r = _cli(world, "find", "--expenses", "--status", "paid", "--limit", "2", "--cursor", page["next_cursor"], "--json")
    assert len(json.loads(r.stdout)["items"]) == 1
    assert _cli(world, "find", "无此人").exit_code == 1
    assert _cli(world, "find", "--claims", "--month", "2026-13").exit_code == 2
    # explain by the handle it shows
    r = _cli(world, "explain", "E000001", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["expense"] == world.eids["E000001"]
    r = _cli(world, "explain", "E999999")
    assert r.exit_code != 0 and "E999999" in r.output and "Traceback" not in r.output
    # ledger do: recipient by name, expenses by handle
    r = _cli(world, "do", "claim", "recipient=张伟", 'expenses=["E000301"]', "handler=h-1", "at=2026-01-09T10:00:00+08:00")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ids"]["claim"]
    r = _cli(world, "do", "claim", "recipient=无此人", 'expenses=["E000301"]', "handler=h-1")
    assert r.exit_code == 2 and "无此人" in r.output
    # projections statement: a name nobody has is an error, not an empty table
    assert _cli(world, "projections", "rebuild").exit_code == 0
    r = _cli(world, "projections", "statement", "无此人")
    assert r.exit_code != 0 and "no recipient matches '无此人'" in r.output
    r = _cli(world, "projections", "statement", "王秀英", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)


# ------------------------------------------------------------------------------ HTTP
def _auth(officer: str, role: str, street: str | None = None) -> dict[str, str]:
    return {"Authorization": "Bearer " + issue(SECRET, officer, role, street)}


def test_http_lists_locations_conflicts_and_street_isolation(world: World):
    app = create_app(world.settings, ledger=world.app)
    with TestClient(app) as client:
        district, hy = _auth("d-1", "district_officer"), _auth("hy-1", "street_handler", HUAYANG)
        r = client.get("/recipients", headers=district, params={"q": id_number(101)})
        assert r.status_code == 200 and [x["recipient"] for x in r.json()["items"]] == [world.rids[1]]
        assert id_number(101) not in r.text
        assert [x["name"] for x in client.get("/recipients", headers=district, params={"q": "王"}).json()["items"]] == ["王秀英", "王建华"]
        # a street handler: their street only, their own street's name in the box is found as a street
        own = client.get("/recipients", headers=hy, params={"q": HUAYANG, "limit": 500}).json()["items"]
        assert sorted(x["recipient"] for x in own) == sorted(world.rids[0::2])
        assert client.get("/recipients", headers=hy, params={"q": "李建国"}).json()["items"] == []
        r = client.get("/recipients", headers=hy, params={"street": TIANSHAN})
        assert r.status_code == 403 and r.json()["code"] == "OTHER_STREET"
        assert {x["street"] for x in client.get("/expenses", headers=hy, params={"limit": 500}).json()["items"]} == {HUAYANG}
        r = client.get("/expenses", headers=hy, params={"recipient": id_number(101)})
        assert r.status_code == 403 and r.json()["code"] == "OTHER_STREET"
        # expenses by handle, claims by status, payouts by month; explain by handle
        r = client.get("/expenses", headers=district, params={"q": "E000201"})
        assert [x["expense"] for x in r.json()["items"]] == [world.eids["E000201"]]
        assert len(client.get("/claims", headers=district, params={"status": "paid"}).json()["items"]) == 3
        walked, cursor = [], None
        while True:
            page = client.get("/payments", headers=district, params={"month": "2026-01", "limit": 1, **({"cursor": cursor} if cursor else {})}).json()
            walked += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert sorted(x["recipient"] for x in walked) == sorted(world.rids[:3])
        r = client.get("/expenses/E000001/explain", headers=district)
        assert r.status_code == 200 and r.json()["expense"] == world.eids["E000001"]
        assert client.get("/expenses/E999999/explain", headers=district).status_code == 404
        assert client.get("/expenses", headers=district, params={"cursor": "%%%"}).status_code == 422
        # 201 carries Location; a duplicate enrolment is 409
        r = client.post("/recipients", headers=district, json={"id_number": id_number(160), "name": "周敏", "street": HUAYANG})
        assert r.status_code == 201 and r.headers["location"] == f"/recipients/{r.json()['ids']['recipient']}"
        assert client.get(r.headers["location"], headers=district).status_code == 200
        again = client.post("/recipients", headers=district, json={"id_number": id_number(160), "name": "周敏", "street": HUAYANG})
        assert again.status_code == 409 and again.json()["code"] == "ALREADY_ENROLLED"
        # the searched text never lands in the access log
        entries = client.get("/audit/access", headers=_auth("a-1", "auditor"), params={"recipient": world.rids[1]}).json()["entries"]
        listed = [e for e in entries if e["operation"] == "list_recipients"]
        assert listed and not any(id_number(101) in json.dumps(e, ensure_ascii=False) for e in entries)


# ------------------------------------------------------------------------------ console
def test_console_search_is_a_get_finds_the_own_street_and_logs_no_text(world: World, caplog):
    app = create_app(world.settings, ledger=world.app)
    with TestClient(app) as client:
        token = issue(SECRET, "hy-1", "street_handler", HUAYANG)
        client.post("/console/login", data={"token": token})
        page = client.get("/console/recipients")
        assert 'method="get"' in page.text
        with caplog.at_level(logging.INFO):
            r = client.get("/console/recipients", params={"q": HUAYANG})  # the default (auto) mode
            logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1", "GET",
                                                     f"/console/recipients?q={id_number(100)}&by=auto", "1.1", 200)
        assert r.status_code == 200
        assert 'data-check="result-count">4<' in r.text
        assert id_number(100) not in caplog.text and "[redacted]" in caplog.text
        r = client.get(f"/console/recipients/{world.rids[0]}")
        assert r.status_code == 200 and id_number(100) not in r.text and id_number(100)[-4:] in r.text
        # pages take what the ledger shows: an expense handle, a name or an id number
        r = client.get("/console/expenses/E000001")
        assert r.status_code == 200 and "E000001" in r.text
        assert client.get("/console/expenses/E000101").status_code == 403  # 天山路 (R-PH-1)
        assert client.get("/console/expenses/E999999").status_code == 404
        assert "王秀英" in client.get("/console/recipients/王秀英").text
        assert client.get("/console/recipients/李建国").status_code == 404  # not in this handler's street
        assert client.get(f"/console/recipients/{id_number(101)}").status_code == 403
