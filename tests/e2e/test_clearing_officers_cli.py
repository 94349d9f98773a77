"""``ledger clearing`` for the money officers handle, on SQLite and PostgreSQL (R-CLR-1..3): repay
with officer, voucher, method and date; propose, refuse and approve a write-off; ``clearing show``
tells who did what and why; ``clearing run`` picks its triggers from what changed."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

import infra.cli.clearing  # noqa: F401  (registers the commands)
from clearing_story import HOSPITAL_3, Story, app_on, at, id_number
from infra.cli import app as cli
from infra.settings import Settings

runner = CliRunner()
MARKED = {"critical_illness_related": True, "critical_illness_evidence": "receipt_marking"}


def test_officers_repay_and_write_off_from_the_cli(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    story = Story(app_on(Settings(database_url=database_url)))
    story.person("R1", id_number(91), "low_income")
    story.expense("E1", "R1", at("2026-02-01"), visit="inpatient", facility=HOSPITAL_3, service="2026-02-01", in_scope="90000.00", **MARKED)
    story("aid", at("2026-03-10"), claim="C1", recipient="R1", expenses=["E1"])
    story("settle_insurance", at("2026-04-02"), expense="E1", scheme="critical_illness", amount="40000.00")
    monkeypatch.setenv("LEDGER_DATABASE_URL", database_url)
    who = id_number(91)  # officers name the person by resident id number

    bad = runner.invoke(cli, ["clearing", "repay", who, "100.00", "--officer", "clr-1", "--voucher", "V1", "--method", "cheque"])
    assert bad.exit_code == 2 and "--method" in bad.output
    ok = runner.invoke(cli, ["clearing", "repay", who, "100.00", "--officer", "clr-1", "--voucher", "RCPT-1", "--method", "bank-transfer", "--date", "2026-04-20"])
    assert ok.exit_code == 0, ok.output
    assert "31900.00" in ok.output

    proposed = runner.invoke(cli, ["clearing", "propose-write-off", who, "--officer", "clr-1", "--reason", "无力偿还"])
    assert proposed.exit_code == 0, proposed.output
    pid = re.search(r"write-off proposal ([0-9a-f-]{36})", proposed.output).group(1)
    listed = json.loads(runner.invoke(cli, ["clearing", "write-offs", "--status", "pending", "--json"]).output)
    assert [(p["id"], p["name"], p["amount"]) for p in listed] == [(pid, "person R1", "31900.00")]
    same = runner.invoke(cli, ["clearing", "approve-write-off", pid, "--approver", "CLR-1"])
    assert same.exit_code == 1 and "SAME_OFFICER" in same.output and "R-CLR-3" in same.output
    refused = runner.invoke(cli, ["clearing", "refuse-write-off", pid, "--officer", "apr-1", "--reason", "再核实"])
    assert refused.exit_code == 0, refused.output
    pid2 = re.search(r"write-off proposal ([0-9a-f-]{36})", runner.invoke(cli, ["clearing", "propose-write-off", who, "--officer", "clr-1", "--reason", "家庭困难"]).output).group(1)
    approved = runner.invoke(cli, ["clearing", "approve-write-off", pid2, "--approver", "apr-1"])
    assert approved.exit_code == 0 and "now 0.00" in approved.output, approved.output

    case = f"{story.recipient('R1').id}:case:1"
    shown = runner.invoke(cli, ["clearing", "show", case])
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert "received 2026-04-20 by clr-1, bank_transfer, voucher RCPT-1" in text
    assert "write_off_proposed" in text and "reason: 无力偿还" in text
    assert "write_off_refused" in text and "reason: 再核实" in text
    assert "write_off_signed officer clr-1, approver apr-1, reason: 家庭困难" in text

    first = json.loads(runner.invoke(cli, ["clearing", "run", "--json"]).output)
    assert first["trigger"] == "auto" and first["position"] > 0
    again = json.loads(runner.invoke(cli, ["clearing", "run", "--json"]).output)
    assert again["recipients_seen"] == 0
    told = runner.invoke(cli, ["clearing", "run", "--all", "--since", "2026-01-01"])
    assert told.exit_code == 2
