"""Time travel without a server: what-if, the snapshot's exports, the scenario runner's snapshot,
and the pieces replay is made of (ADR 0010)."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from commands import models as m
from commands.replay import audit, compare
from commands.snapshot import take_snapshot
from commands.timeline import parse_known_at
from commands.whatif import Scope, parse_setting, what_if
from ledger.policy.params import PolicyError
from ledger.values import CST
from timetravel_history import GRID_T, GRID_V, Ledger, generated, grid_decided, ledger_app

D = Decimal

#: Decided before a late 居保大病 settlement (R-INS-4): low_income inpatient, self-pay 15,000.00.
LATE_INSURANCE = """
name: late-insurance
jurisdiction: shanghai.changning
steps:
  - {at: "2026-01-06T09:00:00+08:00", do: enrol, recipient: R3, id_number: "310105196207154427", name: 陈美华, street: 江苏路街道}
  - {at: "2026-01-06T09:01:00+08:00", do: grant_category, recipient: R3, category: low_income, from: "2025-06-01"}
  - {at: "2026-01-06T09:02:00+08:00", do: insure, recipient: R3, scheme: resident, from: "2019-01-01"}
  - at: "2026-01-20T15:00:00+08:00"
    do: record_expense
    expense: E1
    recipient: R3
    visit_type: inpatient
    facility: {kind: hospital, level: 3, district_designated: false}
    service_date: "2026-01-20"
    invoice_date: "2026-01-20"
    invoice_no: "T3-7781"
    total: "50000.00"
    in_scope: "40000.00"
    basic_insurance_paid: "25000.00"
    critical_illness_related: true
    critical_illness_evidence: receipt_marking
  - {at: "2026-04-10T10:00:00+08:00", do: aid, claim: C1, recipient: R3, expenses: [E1]}
  - {at: "2026-05-02T10:00:00+08:00", do: settle_insurance, expense: E1, scheme: critical_illness, amount: "9750.00"}
"""


@pytest.fixture
def decided() -> Ledger:
    return grid_decided(Ledger(ledger_app(None)))


def test_known_at_parsing() -> None:
    assert parse_known_at("2026-05-02") == dt.datetime(2026, 5, 2, 23, 59, 59, 999999, tzinfo=CST)
    assert parse_known_at("2026-05-02T10:00:00") == dt.datetime(2026, 5, 2, 10, tzinfo=CST)
    assert parse_known_at("2026-05-02T02:00:00+00:00") == dt.datetime(2026, 5, 2, 10, tzinfo=CST)
    assert parse_known_at(None) is None
    with pytest.raises(ValueError):
        parse_known_at("yesterday")


def test_compare_tells_amounts_from_explanations() -> None:
    stored = {"total": "10.00", "by_fund": {"city": "5.00", "district": "5.00"}, "trace": {"schemes": [{"rate": "0.60"}]}}
    same = json.loads(json.dumps(stored))
    assert compare(stored, same) == []
    other = json.loads(json.dumps(stored))
    other["by_fund"]["district"] = "5.01"
    other["trace"]["schemes"][0]["rate"] = "0.61"
    assert compare(stored, other) == [
        {"path": "by_fund.district", "stored": "5.00", "replayed": "5.01", "amount": True},
        {"path": "trace.schemes[0].rate", "stored": "0.60", "replayed": "0.61", "amount": False},
    ]


def test_what_if_reports_the_change_and_records_nothing(decided: Ledger) -> None:
    app = decided.app
    position = app.recorder.max_notification_id()
    proposal = [parse_setting("shanghai.medical_aid.rate.inpatient.expenditure_poor_1=0.60")]
    report = what_if(app, proposal, dt.date(2026, 1, 1)).as_dict()
    assert app.recorder.max_notification_id() == position
    # R3: 70% → 60% of 5,000.00 self-pay; nobody else holds expenditure_poor_1.
    assert report["expenses_affected"] == 1 and report["recipients_affected"] == 1
    assert report["total"]["change"] == "-500.00"
    assert report["by_scheme"] == {"shanghai.medical_aid": {"before": "3500.00", "after": "3000.00", "change": "-500.00"}}
    assert report["by_fund"]["city"]["change"] == "-250.00" and report["by_fund"]["district"]["change"] == "-250.00"
    assert list(report["by_category"]) == ["expenditure_poor_1"]
    assert list(report["by_street"]) == ["江苏路街道"]
    assert list(report["by_month"]) == ["2026-02"]
    [row] = report["expenses"]
    assert row["expense"] == decided.expenses["E3"] and row["change"] == "-500.00"

    # Scopes and periods that leave the change out.
    assert what_if(app, proposal, dt.date(2026, 1, 1), scope=Scope.parse(["street=华阳路街道"])).as_dict()["expenses_affected"] == 0
    assert what_if(app, proposal, dt.date(2026, 1, 1), scope=Scope.parse(["scheme=changning.four_linkage"])).as_dict()["expenses_affected"] == 0
    assert what_if(app, proposal, dt.date(2026, 3, 1)).as_dict()["expenses_affected"] == 0
    assert what_if(app, proposal, dt.date(2026, 1, 1), dt.date(2026, 2, 24)).as_dict()["expenses_affected"] == 0
    assert what_if(app, proposal, dt.date(2026, 1, 1), scope=Scope.parse([f"recipient={decided.recipients['R3']}"])).as_dict()["expenses_affected"] == 1

    # The same amendment made for real opens a clearing case of exactly the predicted change.
    decided.run(m.SetParameter(name="shanghai.medical_aid.rate.inpatient.expenditure_poor_1", value="0.60", effective_from="2026-01-01", at=GRID_T["decided"]))
    [case] = decided.r("R3").cases.values()
    assert case.amount == D("500.00")


def test_what_if_refuses_what_the_ledger_would_refuse(decided: Ledger) -> None:
    with pytest.raises(PolicyError) as floor:
        what_if(decided.app, [("shanghai.medical_aid.rate.inpatient.expenditure_poor_1", "0.40")], dt.date(2026, 1, 1))
    assert floor.value.code == "POLICY_FLOOR"
    with pytest.raises(PolicyError) as unknown:
        what_if(decided.app, [("shanghai.medical_aid.rate.nothing", "0.40")], dt.date(2026, 1, 1))
    assert unknown.value.code == "UNKNOWN_PARAMETER"


def test_xlsx_bytes_do_not_depend_on_the_clock(decided: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """openpyxl stamps 'now' into docProps/core.xml and zip entry times; the export fixes both."""
    import openpyxl.writer.excel as excel

    first = take_snapshot(decided.app, GRID_V, GRID_T["decided"]).render("xlsx")

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001
            return dt.datetime(2031, 7, 1, 12, 0, tzinfo=tz)

    class FakeDatetimeModule:
        datetime = Later
        timezone = dt.timezone

    real_time = time.time
    monkeypatch.setattr(excel, "datetime", FakeDatetimeModule)
    monkeypatch.setattr(time, "time", lambda: real_time() + 5 * 86400)
    second = take_snapshot(decided.app, GRID_V, GRID_T["decided"]).render("xlsx")
    assert first == second
    with zipfile.ZipFile(io.BytesIO(first)) as z:
        core = z.read("docProps/core.xml").decode()
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert "2026-03-31T15:59:59Z" in core  # T (end of 2026-03-31 in Shanghai) in UTC, not the clock


def test_scenario_runner_adds_the_snapshot(tmp_path: Path) -> None:
    from infra.cli import app

    scenario = tmp_path / "late-insurance.yaml"
    scenario.write_text(LATE_INSURANCE, encoding="utf-8")
    runner = CliRunner()
    plain = runner.invoke(app, ["scenario", "run", str(scenario), "--json"])
    assert plain.exit_code == 0, plain.output
    assert "snapshot" not in json.loads(plain.stdout)
    # Known at the end of 2026-04-30: decided at 80% of 15,000.00, the late 居保大病 not yet known.
    early = runner.invoke(app, ["scenario", "run", str(scenario), "--json", "--snapshot-valid", "2026-06-30", "--snapshot-known-at", "2026-04-30"])
    assert early.exit_code == 0, early.output
    report = json.loads(early.stdout)
    assert {k: v for k, v in report.items() if k != "snapshot"} == json.loads(plain.stdout)
    snap = report["snapshot"]
    assert snap["snapshot"]["valid"] == "2026-06-30" and snap["row_count"] == 2
    assert [(r["fund"], r["aid_due"], r["aid_paid"], r["clearing_open"]) for r in snap["rows"]] == [
        ("city", "6000.00", "6000.00", "0.00"),
        ("district", "6000.00", "6000.00", "0.00"),
    ]
    assert set(snap["handles"].values()) == {"R3"}
    # Known the day after the settlement: 80% of 5,250.00, the overpayment open.
    later = json.loads(runner.invoke(app, ["scenario", "run", str(scenario), "--json", "--snapshot-valid", "2026-06-30", "--snapshot-known-at", "2026-05-03"]).stdout)
    assert [(r["aid_due"], r["clearing_open"]) for r in later["snapshot"]["rows"]] == [("2100.00", "3900.00"), ("2100.00", "3900.00")]
    # Known at the aid step's own time: its claim, review, approval and payment are all "at at"
    # (SCENARIOS.md), so a snapshot at that instant holds all of them, and one a microsecond before none.
    def at(t: str) -> list[tuple[str, str]]:
        out = json.loads(runner.invoke(app, ["scenario", "run", str(scenario), "--json", "--snapshot-valid", "2026-06-30", "--snapshot-known-at", t]).stdout)
        return [(r["aid_due"], r["aid_paid"]) for r in out["snapshot"]["rows"]]
    assert at("2026-04-10T10:00:00+08:00") == [("6000.00", "6000.00"), ("6000.00", "6000.00")]
    assert at("2026-04-10T09:59:59.999999+08:00") == []
    bad = runner.invoke(app, ["scenario", "run", str(scenario), "--json", "--snapshot-valid", "June"])
    assert bad.exit_code == 2


def test_a_generated_history_replays_and_its_snapshot_agrees_with_the_recorded_reassessments() -> None:
    """Duplicates, out-of-order invoices, late insurance, back-dated grants and revocations, a
    retroactive cap cut, lifted suspensions and 免申即享 batches: every decision and
    reassessment replays to the fen, and the snapshot's aid due (recomputed from the log) is what
    the last recorded assessment of each expense says."""
    ledger = generated(Ledger(ledger_app(None)), recipients=8, seed=4)
    report = audit(ledger.app)
    assert report.ok, [d.as_dict() for d in report.different[:3]]
    assert report.decisions > 20 and report.reassessments > 0
    snap = take_snapshot(ledger.app, dt.date(2026, 12, 31), None)
    assert snap.resolved_known_at is not None
    again = take_snapshot(ledger.app, dt.date(2026, 12, 31), snap.resolved_known_at)
    assert again.render("json") == snap.render("json") and again.position == ledger.app.recorder.max_notification_id()
    due: dict[tuple[str, str], Decimal] = {}
    for rid in ledger.recipients.values():
        for acc in ledger.app.recipient(rid).expenses.values():
            if acc.decision is not None and acc.due and acc.due["granted"]:
                for fund, amount in acc.due["by_fund"].items():
                    if D(amount):
                        due[(rid, fund)] = due.get((rid, fund), D("0")) + D(amount)
    assert {(r["recipient"], r["fund"]): r["aid_due"] for r in snap.rows if r["aid_due"]} == due
