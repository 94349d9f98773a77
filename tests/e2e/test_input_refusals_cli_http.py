"""Refused input through the adapters, on SQLite and PostgreSQL: ``ledger do`` (exit 2, each
problem naming its field and rule) and the HTTP API (422 ``INVALID_INPUT`` naming the field), and
in both cases nothing recorded. The same cases as ``tests/unit/test_input_refusals.py``: control
and invisible characters in any text field, receipts dated after the day they are recorded
(R-TIME-1), dates before 1900, amounts not written as plain decimals, blank names, and resident
id numbers with a wrong check digit or an impossible birth date (GB 11643) - while people whose
region code is younger than them (浦东新区 310115 born 1950, 连云区 320703 born 1960) enrol.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from infra.cli import _register, app
from infra.http import create_app
from infra.http.auth import issue
from infra.settings import Settings
from ledger.values import CST

_register()

_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]  # GB 11643 (ISO 7064 MOD 11-2), written out


def gb11643(first17: str) -> str:
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, _WEIGHTS)) % 11]


PUDONG_1950 = gb11643("31011519500101123")
LIANYUN_1960 = gb11643("32070319600505001")
WRONG_CHECK = PUDONG_1950[:17] + ("0" if PUDONG_1950[-1] != "0" else "1")
FEB_30 = gb11643("31010519500230123")
BEFORE_1900 = gb11643("31010518991231123")
STREET = "华阳路街道"


def _today() -> str:
    return datetime.now(CST).date().isoformat()


def _tomorrow() -> str:
    return (datetime.now(CST).date() + timedelta(days=1)).isoformat()


def _future_born() -> str:
    return gb11643(f"310105{datetime.now(CST).date() + timedelta(days=1):%Y%m%d}123")


def _receipt(**changes: Any) -> dict[str, Any]:
    today = _today()
    return {"visit_type": "outpatient", "facility": {"kind": "hospital", "level": 3, "code": "SH-H3"},
            "service_date": today, "invoice_date": today, "invoice_no": "INV-1",
            "total": "150.00", "in_scope": "120.00", "basic_insurance_paid": "30.00", **changes}


# (what, command, fields without the recipient, the field refused, words of its rule)
CASES: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("NUL in a name", "enrol", {"id_number": LIANYUN_1960, "name": "张\x00建国"}, "name", "printable"),
    ("blank name", "enrol", {"id_number": LIANYUN_1960, "name": " \u3000 "}, "name", "SCENARIOS.md enrol"),
    ("wrong check digit", "enrol", {"id_number": WRONG_CHECK, "name": "张建国"}, "id_number", "GB 11643"),
    ("30 February", "enrol", {"id_number": FEB_30, "name": "张建国"}, "id_number", "GB 11643"),
    ("born before 1900", "enrol", {"id_number": BEFORE_1900, "name": "张建国"}, "id_number", "GB 11643"),
    ("born tomorrow", "enrol", {"id_number": "FUTURE_BORN", "name": "张建国"}, "id_number", "GB 11643"),
    ("escape in a facility code", "record_expense", {"facility": {"kind": "hospital", "level": 3, "code": "SH\x1bH3"}}, "facility.code", "printable"),
    ("zero-width space in an invoice number", "record_expense", {"invoice_no": "INV\u200b1"}, "invoice_no", "printable"),
    ("right-to-left override in an organisation", "social_help", {"amount": "10.00", "organisation": "基金\u202e会"}, "organisation", "printable"),
    ("newline in a reason", "revoke_category", {"category": "dibao", "from": "2025-06-01", "reason": "a\nb"}, "reason", "printable"),
    ("service tomorrow", "record_expense", {"service_date": "TOMORROW", "invoice_date": "TOMORROW"}, "service_date", "R-TIME-1"),
    ("invoice tomorrow", "record_expense", {"invoice_date": "TOMORROW"}, "invoice_date", "R-TIME-1"),
    ("service before 1900", "record_expense", {"service_date": "1899-12-31", "invoice_date": "1899-12-31"}, "service_date", "1900-01-01"),
    ("grant before 1900", "grant_category", {"category": "low_income", "from": "1899-01-01"}, "from", "1900-01-01"),
    ("parameter from before 1900", "set_parameter", {"name": "shanghai.medical_aid.annual_cap.inpatient.dibao", "value": "80000.00", "effective_from": "1899-01-01"}, "effective_from", "1900-01-01"),
    ("amount with an underscore", "record_expense", {"total": "1_000"}, "total", "RULES.md preamble"),
    ("amount in full-width digits", "record_expense", {"total": "１５０"}, "total", "RULES.md preamble"),
    ("amount with an exponent", "record_expense", {"total": "1e3"}, "total", "RULES.md preamble"),
    ("amount with a plus sign", "social_help", {"amount": "+10"}, "amount", "RULES.md preamble"),
    ("amount as a float with an exponent", "social_help", {"amount": 1e-05}, "amount", "RULES.md preamble"),
]


def _fields(command: str, fields: dict[str, Any], rid: str) -> dict[str, Any]:
    out = {k: (_tomorrow() if v == "TOMORROW" else _future_born() if v == "FUTURE_BORN" else v) for k, v in fields.items()}
    if command == "record_expense":
        out = _receipt(**out)
    if command in ("record_expense", "social_help", "revoke_category", "grant_category"):
        out["recipient"] = rid
    return out


# ----------------------------------------------------------------------------- the CLI


def test_ledger_do_enrols_older_people_and_refuses_bad_input_recording_nothing(ledger) -> None:
    rids = []
    for number in (PUDONG_1950, LIANYUN_1960.lower()):
        enrolled = ledger("do", "enrol", f"id_number={number}", "name= 王秀英 ", f"street={STREET}")
        assert enrolled.exit_code == 0, enrolled.output
        rids.append(json.loads(enrolled.stdout)["ids"]["recipient"])
    rid = rids[0]
    assert ledger("do", "grant_category", f"recipient={rid}", "category=dibao", "from=2025-01-01").exit_code == 0
    assert ledger("do", "insure", f"recipient={rid}", "scheme=resident", "from=2020-01-01").exit_code == 0
    before = json.loads(ledger("status", "--json").stdout)["events"]

    for what, command, fields, field, rule in CASES:
        if command == "enrol" and field == "name":
            fields = {**fields, "id_number": gb11643("32070319600505002")}  # a new person, so only the name is wrong
        result = ledger("do", command, "--json", json.dumps(_fields(command, fields, rid)))
        assert result.exit_code == 2, (what, result.output)
        problems = json.loads(result.stdout)["errors"]
        assert [p["field"] for p in problems][:1] == [field], (what, problems)
        assert rule in problems[0]["rule"], (what, problems)
        assert f"invalid {field}: " in result.stderr and rule in result.stderr, (what, result.stderr)
        assert json.loads(ledger("status", "--json").stdout)["events"] == before, what

    # the same receipt dated today, written plainly, is recorded
    recorded = ledger("do", "record_expense", "--json", json.dumps({**_receipt(), "recipient": rid}))
    assert recorded.exit_code == 0, recorded.output
    assert json.loads(ledger("status", "--json").stdout)["recipients"] == 2


def _ledger_executable() -> str:
    local = Path(sys.executable).with_name("ledger")
    return str(local) if local.exists() else (shutil.which("ledger") or "ledger")


def test_a_real_ledger_process_refuses_a_nul_read_from_stdin(database_url: str) -> None:
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url, "LEDGER_DATA_KEY": "cli-test-key"}
    payload = json.dumps({"id_number": PUDONG_1950, "name": "王\x00秀英"})  # JSON writes the NUL as \u0000
    run = subprocess.run([_ledger_executable(), "do", "enrol", "--json", "-"], input=payload, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2, run.stderr
    [problem] = json.loads(run.stdout)["errors"]
    assert problem["field"] == "name" and "U+0000" in problem["message"] and "printable" in problem["rule"]
    status = subprocess.run([_ledger_executable(), "status", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert json.loads(status.stdout)["recipients"] == 0


# ----------------------------------------------------------------------------- the HTTP API

SECRET = "input-refusals-secret"
ROUTES = {  # command → (role, path)
    "enrol": ("district_officer", "/recipients"),
    "grant_category": ("district_officer", "/recipients/{rid}/categories"),
    "revoke_category": ("district_officer", "/recipients/{rid}/categories/revocations"),
    "record_expense": ("system", "/recipients/{rid}/expenses"),
    "social_help": ("district_officer", "/recipients/{rid}/social-help"),
    "set_parameter": ("district_officer", "/policy/parameters"),
}


def test_the_http_api_enrols_older_people_and_refuses_bad_input_with_422_recording_nothing(database_url: str) -> None:
    settings = Settings(database_url=database_url, token_secret=SECRET)
    with TestClient(create_app(settings)) as client:
        def post(command: str, body: dict[str, Any], rid: str = ""):
            role, path = ROUTES[command]
            headers = {"Authorization": "Bearer " + issue(SECRET, f"{role}-1", role)}
            return client.post(path.format(rid=rid), headers=headers, json={k: v for k, v in body.items() if k != "recipient"})

        recorder = client.app.state.service.ledger.recorder
        rids = []
        for number in (PUDONG_1950, LIANYUN_1960):
            enrolled = post("enrol", {"id_number": number, "name": " 王秀英 ", "street": STREET})
            assert enrolled.status_code == 201, enrolled.text
            rids.append(enrolled.json()["ids"]["recipient"])
        rid = rids[0]
        assert post("grant_category", {"category": "dibao", "from": "2025-01-01"}, rid).status_code == 200
        before = recorder.max_notification_id()

        for what, command, fields, field, rule in CASES:
            if command == "enrol" and field == "name":
                fields = {**fields, "id_number": gb11643("32070319600505002")}
            response = post(command, _fields(command, fields, rid), rid)
            assert response.status_code == 422, (what, response.text)
            problem = response.json()
            assert (problem["status"], problem["code"], problem["field"]) == ("error", "INVALID_INPUT", field), (what, problem)
            assert problem["message"].startswith(f"{field}: ") and rule in problem["message"], (what, problem)
            assert problem["rule"], (what, problem)  # the rule is named in its own field too
            assert recorder.max_notification_id() == before, what

        recorded = post("record_expense", _receipt(), rid)
        assert recorded.status_code == 201, recorded.text
        assert recorder.max_notification_id() > before
