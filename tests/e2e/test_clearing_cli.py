"""``ledger clearing run / list / show / repay / write-off`` end to end on a real store (SQLite and
PostgreSQL), the way a clearing officer uses them.

The history: the public late-insurance numbers (low_income, inpatient, city aid only): 12000 paid,
居保大病 9750 afterwards, due 4200, case 7800 (3900 / 3900); and a second person whose outpatient
aid the cap bound at 10000 (50% of 30000), so that a cap raised back to January gives 500 more.
"""

from __future__ import annotations

import json
from datetime import date

import pytest
from typer.testing import CliRunner

import infra.cli.clearing  # noqa: F401 - registers ``ledger clearing``
from clearing_story import HOSPITAL_3, Story, app_on, at, id_number, parse
from infra.cli import app
from infra.settings import Settings
from ledger.aggregates import PolicyLedger, version_to_event
from ledger.policy.packs import make_amendment

MARKED = {"critical_illness_related": True, "critical_illness_evidence": "receipt_marking"}


@pytest.fixture
def officer(database_url: str, settings_for: Settings):
    story = Story(app_on(settings_for))
    story.person("R3", id_number(33), "low_income")
    story.expense("E1", "R3", at("2026-01-20"), visit="inpatient", facility=HOSPITAL_3, service="2026-01-20",
                  total="50000.00", in_scope="40000.00", insurance="25000.00", **MARKED)
    story("aid", at("2026-04-10"), claim="C1", recipient="R3", expenses=["E1"])
    story("settle_insurance", at("2026-05-02"), expense="E1", scheme="critical_illness", amount="9750.00")
    story.person("R4", id_number(34), "low_income", at=at("2026-05-03"))
    story.expense("E2", "R4", at("2026-05-03"), facility=HOSPITAL_3, service="2026-02-10", in_scope="30000.00")
    story("aid", at("2026-05-04"), claim="C2", recipient="R4", expenses=["E2"])
    runner = CliRunner()

    def ledger(*args: str):
        return runner.invoke(app, list(args), env={"LEDGER_DATABASE_URL": database_url}, catch_exceptions=False)

    ledger.story = story
    return ledger


def test_an_officer_lists_shows_and_settles_a_case(officer) -> None:
    listed = officer("clearing", "list", "--status", "open", "--json")
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)["cases"]
    assert (row["handle"], row["trigger"], row["amount"], row["balance"]) == ("E1", "late_insurance", "7800.00", "7800.00")
    assert json.loads(officer("clearing", "list", "--status", "settled", "--json").stdout)["cases"] == []

    shown = officer("clearing", "show", row["case"], "--json")
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.stdout)
    assert (detail["trigger"], detail["rule"]) == ("late_insurance", "R-CLR-1(a)")
    assert detail["cause"]["scheme"] == "critical_illness" and detail["cause"]["amount"] == "9750.00"
    previous, current = detail["decisions"]["previous"], detail["decisions"]["current"]
    assert (previous["self_pay"], previous["total"], previous["by_fund"]) == ("15000.00", "12000.00", {"city": "6000.00", "district": "6000.00"})
    assert (current["self_pay"], current["total"], current["by_fund"]) == ("5250.00", "4200.00", {"city": "2100.00", "district": "2100.00"})
    assert previous["category"] == current["category"] == "low_income"
    changes = {r["item"]: r["change"] for r in detail["side_by_side"]}
    assert changes["total"] == "-7800.00" and changes["fund city"] == "-3900.00"
    text = officer("clearing", "show", row["case"])
    assert "previous decision" in text.stdout and "5250.00" in text.stdout

    recipient = id_number(33)
    receipt = ("--officer", "CLR-1", "--voucher", "RCPT-1", "--method", "cash")  # R-CLR-3: who, which voucher, how
    too_much = officer("clearing", "repay", recipient, "9000", *receipt)
    assert too_much.exit_code == 1 and "EXCEEDS_BALANCE" in too_much.output
    assert officer("clearing", "repay", recipient, "800", *receipt).exit_code == 0
    same = officer("clearing", "write-off", recipient, "--officer", "CLR-1", "--approver", "CLR-1")
    assert same.exit_code == 1 and "SAME_OFFICER" in same.output
    done = officer("clearing", "write-off", recipient, "--officer", "CLR-1", "--approver", "APR-2", "--reason", "deceased")
    assert done.exit_code == 0, done.output
    [row] = json.loads(officer("clearing", "list", "--status", "written_off", "--json").stdout)["cases"]
    assert (row["recovered"], row["written_off"], row["balance"]) == ("800.00", "7000.00", "0.00")
    history = json.loads(officer("clearing", "show", row["case"], "--json").stdout)["history"]
    assert [h["kind"] for h in history] == ["opened", "repayment", "write_off", "write_off_signed"]


def test_a_run_after_a_bulk_change_opens_what_is_due_once(officer) -> None:
    # A back-dated cap recorded without its own clearing (as a bulk import of amendments would
    # arrive): the officer's run finds the 500 the cap now allows.
    app_, moment = officer.story.app, parse(at("2026-05-05"))
    policy = app_.policy()
    version = make_amendment("shanghai.medical_aid.annual_cap.outpatient.low_income", "10500.00", date(2026, 1, 1), None, moment, "bulk")
    policy.trigger_event(PolicyLedger.ParameterAmended, timestamp=moment, version=version_to_event(version))
    app_.save(policy)

    first = officer("clearing", "run", "--since", "2026-05-01T00:00:00+08:00", "--json")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert (summary["recipients_seen"], summary["recipients_changed"], summary["supplementary_opened"], summary["cases_opened"]) == (2, 1, 1, 0)
    again = json.loads(officer("clearing", "run", "--json").stdout)
    assert (again["recipients_changed"], again["supplementary_opened"], again["cases_opened"]) == (0, 0, 0)
    [supp] = json.loads(officer("clearing", "list", "--supplementary", "--json").stdout)
    assert (supp["handle"], supp["amount"], supp["status"], supp["trigger"]) == ("E2", "500.00", "pending", "parameter_change")
    words = officer("clearing", "run", "--trigger", "cap_overrun")
    assert words.exit_code == 0 and "0 clearing cases and 0 supplementary payouts opened" in words.stdout
    assert officer("clearing", "run", "--trigger", "whatever").exit_code == 2
    assert officer("clearing", "run", "--since", "yesterday").exit_code == 2
