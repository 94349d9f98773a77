"""The settlement-file upload over HTTP (``POST /imports``) and in the console, on SQLite and
PostgreSQL: roles, a street handler's own street only (R-PH-1), nothing recorded from an invalid
file, ``skip_invalid`` with the rejects file returned, re-uploads that record nothing twice, and
the upload's own body limit (``LEDGER_MAX_UPLOAD_BYTES``) beside the service's."""

from __future__ import annotations

import base64
import csv
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from html import unescape

from fastapi.testclient import TestClient
from http_helpers import OTHER_STREET, STREET, id_number
from openpyxl import Workbook, load_workbook

from infra.http import create_app
from infra.http.auth import issue
from infra.settings import Settings

SECRET = "import-test-secret"
DAY = (date.today() - timedelta(days=8)).isoformat()
HEADER = ["身份证号", "就诊类型", "就诊日期", "票据开具日期", "票据号", "机构编码", "机构类型", "机构等级", "区属定点", "总医疗费用", "医保范围内费用", "基本医疗保险支付"]


def row(number: str, invoice: str, in_scope: str = "120.00") -> list[str]:
    return [number, "门诊", DAY, DAY, invoice, "CN-CHC-HY", "社区卫生服务中心", "1", "是", "150.00", in_scope, "30.00"]


def as_csv(rows: list[list[str]], header: list[str] = HEADER, tail: str = "") -> bytes:
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    w.writerows(rows)
    return (text.getvalue() + tail).encode("utf-8")


def as_xlsx(rows: list[list[str]]) -> bytes:
    book = Workbook()
    book.active.append(HEADER)
    for r in rows:
        book.active.append(r)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


class Service:
    def __init__(self, client: TestClient):
        self.client = client

    def who(self, officer: str, role: str, street: str | None = None) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue(SECRET, officer, role, street)}

    def upload(self, who: dict[str, str], name: str, data: bytes, skip_invalid: bool = False):
        return self.client.post("/imports", headers=who, files={"file": (name, data)}, data={"skip_invalid": str(skip_invalid).lower()})

    def enrol(self, n: int, street: str) -> str:
        r = self.client.post("/recipients", headers=self.who("district-1", "district_officer"),
                             json={"id_number": id_number(n), "name": f"person {n}", "street": street})
        assert r.status_code == 201, r.text
        return r.json()["ids"]["recipient"]

    def expenses(self, rid: str) -> list[str]:
        r = self.client.get(f"/recipients/{rid}", headers=self.who("aud", "auditor"))
        assert r.status_code == 200, r.text
        return sorted(e["invoice_no"] for e in r.json()["expenses"])


@contextmanager
def service_on(database_url: str, **limits: int) -> Iterator[Service]:
    settings = Settings(database_url=database_url, token_secret=SECRET, data_key="import-test-key", **limits)
    with TestClient(create_app(settings)) as client:
        yield Service(client)


def test_upload_by_role_own_street_only_and_nothing_twice(database_url) -> None:
    with service_on(database_url) as api:
        mine, theirs = api.enrol(1, STREET), api.enrol(2, OTHER_STREET)
        rows = [row(id_number(1), "HY-1"), row(id_number(2), "TS-1")]
        handler = api.who("hy-handler", "street_handler", STREET)

        # a street handler's file naming someone of another street: invalid, nothing recorded
        refused = api.upload(handler, "nov.csv", as_csv(rows))
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert (body["code"], body["status"], body["rule"]) == ("IMPORT_INVALID", "error", body["problems"][0]["rule"])
        assert [(p["line"], p["field"]) for p in body["problems"]] == [(3, "id_number")]
        assert "R-PH-1" in body["problems"][0]["rule"]
        assert api.expenses(mine) == [] and api.expenses(theirs) == []

        # skip_invalid: their own row goes in, the other comes back as a file to fix
        partial = api.upload(handler, "nov.csv", as_csv(rows), skip_invalid=True)
        assert partial.status_code == 200, partial.text
        out = partial.json()
        assert (out["status"], out["summary"]["recorded"], out["summary"]["invalid"]) == ("partial", 1, 1)
        assert out["rejects"]["filename"] == "nov.rejected.csv"
        rejected = list(csv.reader(io.StringIO(base64.b64decode(out["rejects"]["base64"]).decode("utf-8-sig"))))
        assert rejected[0][-1] == "错误 error" and [r[4] for r in rejected[1:]] == ["TS-1"] and "R-PH-1" in rejected[1][-1]
        assert api.expenses(mine) == ["HY-1"] and api.expenses(theirs) == []

        # the settlement system sends the whole month as XLSX: the row already in is not recorded twice
        system = api.upload(api.who("push", "system"), "nov.xlsx", as_xlsx(rows))
        assert system.status_code == 200, system.text
        s = system.json()["summary"]
        assert (s["recorded"], s["already_imported"], system.json()["status"]) == (1, 1, "recorded")
        assert api.expenses(mine) == ["HY-1"] and api.expenses(theirs) == ["TS-1"]

        assert api.upload(api.who("rev", "reviewer"), "nov.csv", as_csv(rows)).status_code == 403
        assert api.client.post("/imports", files={"file": ("nov.csv", as_csv(rows))}).status_code == 401
        broken = api.upload(api.who("d", "district_officer"), "nov.csv", as_csv(rows, HEADER[:-1]))
        assert broken.status_code == 422 and broken.json()["problems"][0]["field"] == "basic_insurance_paid"
        assert "/imports" in api.client.get("/openapi.json").json()["paths"]


def test_uploads_take_their_own_body_limit(database_url) -> None:
    with service_on(database_url, max_body_bytes=4096, max_upload_bytes=64 * 1024) as api:
        rid = api.enrol(3, STREET)
        district = api.who("d", "district_officer")
        padded = as_csv([row(id_number(3), "HY-9")], tail="\n" * 5000 + ",,,\n" * 1000)  # blank lines: no receipts
        assert 4096 < len(padded) < 64 * 1024
        taken = api.upload(district, "big.csv", padded)
        assert taken.status_code == 200, taken.text
        assert taken.json()["summary"]["recorded"] == 1 and api.expenses(rid) == ["HY-9"]
        # every other route keeps LEDGER_MAX_BODY_BYTES
        other = api.client.post("/recipients", headers=district, json={"id_number": id_number(4), "name": "x" * 5000})
        assert other.status_code == 413
        too_big = api.upload(district, "huge.csv", padded + b"\n" * (64 * 1024))
        assert too_big.status_code == 413 and "LEDGER_MAX_UPLOAD_BYTES" in too_big.json()["message"]


def test_console_upload_page(database_url) -> None:
    with service_on(database_url) as api:
        rid = api.enrol(5, STREET)
        c = api.client
        assert c.post("/console/login", data={"token": issue(SECRET, "d-1", "district_officer")}, follow_redirects=False).status_code == 303
        form = c.get("/console/import")
        assert form.status_code == 200 and 'data-check="import-form"' in form.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)

        bad = c.post("/console/import", data={"csrf": csrf}, files={"file": ("dec.csv", as_csv([row(id_number(5), "HY-1", "999.00")]))})
        assert bad.status_code == 422
        assert 'data-check="import-invalid"' in bad.text and "R-INS-3" in unescape(bad.text) and api.expenses(rid) == []

        good = c.post("/console/import", data={"csrf": csrf}, files={"file": ("dec.xlsx", as_xlsx([row(id_number(5), "HY-1")]))})
        assert good.status_code == 200, good.text
        assert re.search(r'data-check="recorded">1<', good.text) and api.expenses(rid) == ["HY-1"]
        again = c.post("/console/import", data={"csrf": csrf}, files={"file": ("dec.xlsx", as_xlsx([row(id_number(5), "HY-1")]))})
        assert re.search(r'data-check="already">1<', again.text) and api.expenses(rid) == ["HY-1"]

        partial = c.post("/console/import", data={"csrf": csrf, "skip_invalid": "1"},
                         files={"file": ("dec.csv", as_csv([row(id_number(5), "HY-2"), row(id_number(5), "HY-3", "999.00")]))})
        assert partial.status_code == 200 and 'data-check="rejects"' in partial.text and api.expenses(rid) == ["HY-1", "HY-2"]

        assert c.post("/console/import", data={"csrf": "forged"}, files={"file": ("x.csv", as_csv([]))}).status_code == 403
        template = c.get("/console/import/template", params={"format": "xlsx"})
        assert template.status_code == 200
        assert [x.value for x in load_workbook(io.BytesIO(template.content)).worksheets[0][1]][0] == "身份证号"

        c.cookies.clear()
        assert c.post("/console/login", data={"token": issue(SECRET, "aud", "auditor")}, follow_redirects=False).status_code == 303
        assert c.get("/console/import").status_code == 403
