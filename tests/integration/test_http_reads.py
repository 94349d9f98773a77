"""Reads over HTTP: snapshot downloads (R-TIME-3), replay (R-TIME-1), explain, clearing case
detail, the duplicate index from aggregates and from its read model, projections status."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from openpyxl import load_workbook

from http_helpers import STREET, Api, api_on


def _decided(api: Api, n: int, invoice: str) -> tuple[str, str, str]:
    rid = api.recipient(n)
    eid = api.expense(rid, invoice, in_scope="200.00", insurance="50.00")
    claim = api.post(f"/recipients/{rid}/claims", api.auth("h-1", "street_handler", STREET), {"expenses": [eid]}).json()["ids"]["claim"]
    api.post(f"/claims/{claim}/review", api.auth("r-1", "reviewer"))
    api.post(f"/claims/{claim}/approve", api.auth("a-1", "approver"))
    assert api.post(f"/claims/{claim}/pay", api.auth("d-1", "district_officer")).status_code == 200
    return rid, eid, claim


def test_snapshot_downloads_replay_explain_and_case_detail(database_url):
    with api_on(database_url) as api:
        rid, eid, _ = _decided(api, 61, "R-1")
        auditor = api.auth("aud-1", "auditor")
        paid = api.get(f"/recipients/{rid}", auditor).json()["expenses"][0]["paid"]["total"]
        before = datetime.now(timezone.utc) - timedelta(days=400)

        regulator = api.auth("reg-1", "regulator")
        today = date.today().isoformat()
        got = api.get("/snapshots", regulator, valid_on=today, format="csv")
        assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
        assert "attachment" in got.headers["content-disposition"]
        rows = list(csv.reader(io.StringIO(got.content.decode("utf-8-sig"))))
        col = next(i for i, h in enumerate(rows[0]) if h.split()[0] == "aid_paid")
        mine = [r for r in rows[1:] if r[0] == rid]
        assert sum(Decimal(r[col]) for r in mine) == Decimal(paid)  # the fund rows add up to what was paid
        xlsx = api.get("/snapshots", regulator, valid_on=today, format="xlsx")
        sheet = load_workbook(io.BytesIO(xlsx.content)).worksheets[0]
        # the XLSX holds the CSV's rows plus its 合计 totals row, amounts as numbers
        assert [c.value for c in sheet[1]] == rows[0] and sheet.max_row == len(rows) + 1
        assert str(sheet.cell(row=sheet.max_row, column=1).value).startswith("合计")
        assert isinstance(sheet.cell(row=2, column=col + 1).value, (int, float))
        # known at a time before anything was recorded: nobody in the books
        empty = api.get("/snapshots", regulator, valid_on=today, known_at=before.isoformat(), format="csv")
        assert len(list(csv.reader(io.StringIO(empty.content.decode("utf-8-sig"))))) == 1
        assert api.get("/snapshots", regulator, valid_on=today, known_at="2026-01-01T00:00:00").status_code == 422

        replay = api.get(f"/expenses/{eid}/replay", auditor).json()
        assert replay["equal"] is True and replay["results"][0]["kind"] == "decision"
        assert replay["results"][0]["stored"]["total"] == paid

        explained = api.get(f"/expenses/{eid}/explain", auditor).json()
        assert explained["expense"] == eid and explained["source"] == "commands.explain"
        assert explained["explanation"]["recipient"] == rid and paid in str(explained["explanation"])

        # a late insurance payment opens a clearing case; its detail shows both decisions
        api.post(f"/expenses/{eid}/insurance-settlements", api.auth("push", "system"), {"scheme": "burden_reduction", "amount": "50.00"})
        [case] = api.get("/clearing/cases", auditor, status="open").json()
        assert case["recipient"] == rid and case["trigger"] == "late_insurance"
        detail = api.get(f"/clearing/cases/{case['case']}", auditor).json()
        assert detail["decisions"]["previous"]["total"] == paid
        assert api.get(f"/clearing/cases/{rid}:case:9", auditor).status_code == 404


def test_duplicate_index_and_projection_status(database_url):
    with api_on(database_url) as api:
        rid, eid, _ = _decided(api, 71, "D-1")
        again = api.expense(rid, "D-1")  # the same receipt recorded again
        district = api.auth("d-1", "district_officer")
        refused = api.post(f"/recipients/{rid}/claims", api.auth("h-1", "street_handler", STREET), {"expenses": [again]})
        assert refused.json()["code"] == "DUPLICATE"

        status = api.get("/projections/status", district).json()
        assert status["projections"] and not any(p["built"] for p in status["projections"])
        index = api.get("/duplicates", district).json()
        assert index["source"] == "aggregates"
        assert {(f["kind"], f["subject"], f["matched"]) for f in index["findings"]} == {("receipt", again, eid), ("attempted", again, eid)}

        from projections.runner import Runner

        runner = api.client.app.state.service.projections().runner
        live = Runner(runner.engine, runner.recorder, runner.mapper)
        live.setup()
        live.catch_up()
        status = api.get("/projections/status", district).json()
        assert all(p["built"] and p["lag"] == 0 for p in status["projections"])
        index = api.get("/duplicates", district).json()
        assert index["source"] == "projection" and index["lag"] == 0
        assert ("receipt", again, eid) in {(f["kind"], f["subject"], f["matched"]) for f in index["findings"]}
        assert api.get("/duplicates", district, kind="receipt").json()["findings"] == [f for f in index["findings"] if f["kind"] == "receipt"]
