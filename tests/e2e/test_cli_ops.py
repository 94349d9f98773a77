"""``ledger do``, ``ledger status`` and ``ledger demo`` end to end through the CLI, on SQLite and
PostgreSQL: exit codes 0 / 1 / 2, errors on stderr naming field and rule, and what the demo does
with a store that already holds data."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.cli import _register, app
from ledger.policy.packs import JURISDICTIONS
from ledger.values import CST

_register()

ID_NUMBER = "310105195803122013"


def test_do_accepts_rejects_and_refuses_with_exit_codes(ledger) -> None:
    enrolled = ledger("do", "enrol", f"id_number={ID_NUMBER}", "name=王秀英", "street=华阳路街道", "at=2026-01-05T09:00:00+08:00")
    assert enrolled.exit_code == 0, enrolled.output
    rid = json.loads(enrolled.stdout)["ids"]["recipient"]
    assert ledger("do", "grant_category", f"recipient={rid}", "category=dibao", "from=2025-01-01").exit_code == 0
    assert ledger("do", "insure", "--json", json.dumps({"recipient": rid, "scheme": "resident", "from": "2020-01-01"})).exit_code == 0

    # this store's clock is today's (its policy was published now): a receipt from last week
    last_week = (datetime.now(CST).date() - timedelta(days=7)).isoformat()
    receipt = {"recipient": rid, "visit_type": "outpatient", "service_date": last_week, "invoice_date": last_week,
               "invoice_no": "T3-0001", "total": "150.00", "in_scope": "120.00", "basic_insurance_paid": "30.00",
               "facility": {"kind": "hospital", "level": 3}}
    before = json.loads(ledger("status", "--json").stdout)["events"]
    refused = ledger("do", "record_expense", "--json", json.dumps(receipt), "facility.kind=spa")
    assert refused.exit_code == 2
    assert [e["field"] for e in json.loads(refused.stdout)["errors"]] == ["facility.kind"]
    assert "invalid facility.kind" in refused.stderr and "SCENARIOS.md" in refused.stderr
    assert json.loads(ledger("status", "--json").stdout)["events"] == before

    recorded = ledger("do", "record_expense", "--json", json.dumps(receipt))
    assert recorded.exit_code == 0, recorded.output
    eid = json.loads(recorded.stdout)["ids"]["expense"]
    lodged = ledger("do", "claim", f"recipient={rid}", f'expenses=["{eid}"]', "handler=HY-01")
    assert lodged.exit_code == 0, lodged.output
    cid = json.loads(lodged.stdout)["ids"]["claim"]
    same = ledger("do", "review", f"claim={cid}", "reviewer=HY-01")
    assert same.exit_code == 1
    assert {k: json.loads(same.stdout)[k] for k in ("status", "code", "rule")} == {"status": "rejected", "code": "SAME_OFFICER", "rule": "R-PH-4"}

    assert ledger("do", "no_such_command").exit_code == 2
    assert ledger("do", "enrol", "not-a-pair").exit_code == 2

    status = json.loads(ledger("status", "--json").stdout)
    assert (status["recipients"], status["claims"], status["packs"]) == (1, 1, len(JURISDICTIONS["shanghai.changning"]))


def test_demo_leaves_a_store_with_events_alone_unless_reset(ledger) -> None:
    assert ledger("do", "enrol", f"id_number={ID_NUMBER}", "name=王秀英").exit_code == 0
    events = json.loads(ledger("status", "--json").stdout)["events"]

    refused = ledger("demo", "-n", "3", "--until", "2026-11-24")
    assert refused.exit_code == 1
    assert "already holds events" in refused.output
    assert json.loads(ledger("status", "--json").stdout)["events"] == events

    built = ledger("demo", "-n", "3", "--until", "2026-11-24", "--reset", "--json")
    assert built.exit_code == 0, built.output
    summary = json.loads(built.stdout)
    status = json.loads(ledger("status", "--json").stdout)
    assert summary["recipients"] == status["recipients"] == 3
    assert summary["events"] == status["events"]
    assert status["last_recorded"] < "2026-11-25"


def test_demo_on_the_default_store_starts_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded default (./var/ledger.db) is the demo's own: rebuilt every time."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    env = {"LEDGER_DATABASE_URL": None, "LEDGER_DATA_KEY": "cli-test-key"}
    assert runner.invoke(app, ["status"], env=env).exit_code == 0  # no store yet: nothing created
    assert not (tmp_path / "var" / "ledger.db").exists()
    assert runner.invoke(app, ["do", "enrol", f"id_number={ID_NUMBER}", "name=王秀英"], env=env).exit_code == 0
    rebuilt = runner.invoke(app, ["demo", "-n", "2", "--until", "2026-11-24"], env=env)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "Starting afresh" in rebuilt.output
    status = json.loads(runner.invoke(app, ["status", "--json"], env=env).stdout)
    assert status["recipients"] == 2 and status["url"] == "sqlite:///./var/ledger.db"
