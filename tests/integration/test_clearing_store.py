"""Clearing on a real store, SQLite and PostgreSQL (ADR 0002): a whole recovery lifecycle survives
a restart, a clearing run twice records nothing new, and ``--since`` picks its recipients from the
notification log (R-CLR-2, R-CLR-3).

Figures (low_income, inpatient 80%, inpatient cap 80000, city aid only, split 1:1):
E1 self-pay 90000 → 72000; E2 self-pay 20000 → 16000 but 8000 of cap left → 8000.
居保大病 40000 on E1: E1 → 40000 (case 32000), E2 → 16000 (supplementary 8000).
"""

from __future__ import annotations

from decimal import Decimal

from clearing_story import HOSPITAL_3, Story, app_on, at, id_number, parse
from commands.clearing_runs import recipients_since, run
from commands.models import ClearingRun
from infra.settings import Settings

D = Decimal
MARKED = {"critical_illness_related": True, "critical_illness_evidence": "receipt_marking"}


def lifecycle(story: Story) -> None:
    story.person("R1", id_number(11), "low_income")
    story.expense("E1", "R1", at("2026-02-01"), visit="inpatient", facility=HOSPITAL_3, service="2026-02-01", in_scope="90000.00", **MARKED)
    story.expense("E2", "R1", at("2026-03-01"), visit="inpatient", facility=HOSPITAL_3, service="2026-03-01", in_scope="20000.00", **MARKED)
    story("aid", at("2026-03-10"), claim="C1", recipient="R1", expenses=["E1"])
    story("aid", at("2026-03-20"), claim="C2", recipient="R1", expenses=["E2"])
    story("settle_insurance", at("2026-04-02"), expense="E1", scheme="critical_illness", amount="40000.00")


def test_a_recovery_lifecycle_survives_a_restart(settings_for: Settings) -> None:
    story = Story(app_on(settings_for))
    lifecycle(story)
    [case] = story.cases("R1")
    [supp] = story.supplementary("R1")
    assert (case["amount"], supp["amount"], supp["status"]) == ("32000.00", "8000.00", "pending")
    story("pay_supplementary", at("2026-04-25"), recipient="R1")  # offsets 8000: balance 24000
    assert story("repay", at("2026-05-01"), recipient="R1", amount="30000.00")["code"] == "EXCEEDS_BALANCE"
    story("repay", at("2026-05-02"), recipient="R1", amount="20000.00")  # balance 4000
    assert story("write_off", at("2026-05-03"), recipient="R1", officer="CLR-1", approver="CLR-1")["code"] == "SAME_OFFICER"
    story("write_off", at("2026-05-04"), recipient="R1", officer="CLR-1", approver="APR-1")
    before = story.report()

    # a new application on the same store reads the same books
    again = Story(app_on(settings_for))
    again.runner.recipients, again.runner.expenses = story.runner.recipients, story.runner.expenses
    after = again.report()
    assert after["clearing_cases"] == before["clearing_cases"]
    assert after["supplementary"] == before["supplementary"]
    assert after["funds"] == before["funds"]
    [case] = after["clearing_cases"]
    assert (case["balance"], case["status"]) == ("0.00", "written_off")
    assert after["supplementary"][0]["status"] == "paid"
    # city: 36000 + 4000 + 4000 paid; recovered 4000 (offset) + 10000 (repayment); 2000 written off
    assert after["funds"]["city"] == after["funds"]["district"] == "30000.00"
    books = again.books("R1")
    books.assert_balanced()
    assert books.written_off == {"city": D("2000.00"), "district": D("2000.00")}

    # clearing twice records nothing new, on this store too
    version = again.recipient("R1").version
    for day in ("2026-06-01", "2026-06-02"):
        assert again.app.run(ClearingRun(at=parse(at(day)))).ids["recipients_changed"] == 0
    assert again.recipient("R1").version == version


def test_since_looks_only_at_recipients_with_events_after_it(settings_for: Settings) -> None:
    story = Story(app_on(settings_for))
    for n, handle in enumerate(("R1", "R2"), start=1):
        story.person(handle, id_number(20 + n), "low_income")
        story.expense(f"E{n}", handle, at("2026-02-01"), facility=HOSPITAL_3, service="2026-02-01", in_scope="30000.00")
        story("aid", at("2026-02-10"), claim=f"C{n}", recipient=handle, expenses=[f"E{n}"])  # 10000 each, capped
    r1, r2 = (story.recipient(h).id for h in ("R1", "R2"))
    assert recipients_since(story.app, parse(at("2026-02-10", "09:00:00"))) == [r1, r2]
    story("settle_insurance", at("2026-03-01"), expense="E2", scheme="other", amount="100.00")  # still capped
    assert recipients_since(story.app, parse(at("2026-02-20"))) == [r2]
    assert recipients_since(story.app, parse(at("2026-03-02"))) == []
    summary = run(story.app, since=parse(at("2026-02-20")), at=parse(at("2026-03-03")))
    assert (summary.recipients_seen, summary.recipients_changed, summary.cases_opened) == (1, 0, 0)
    # a back-dated amendment touches everyone: a run since before it looks at both
    story("set_parameter", at("2026-04-01"), name="shanghai.medical_aid.annual_cap.outpatient.low_income",
          value="10200.00", effective_from="2026-01-01")
    assert [s["amount"] for s in story.report()["supplementary"]] == ["200.00", "200.00"]
    assert recipients_since(story.app, parse(at("2026-03-20"))) == [r1, r2]
    summary = run(story.app, since=parse(at("2026-03-20")), at=parse(at("2026-04-02")))
    assert (summary.recipients_seen, summary.recipients_changed, summary.supplementary_opened) == (2, 0, 0)


def test_insurance_named_on_one_recording_clears_the_recording_aided_under_another_recipient(settings_for: Settings) -> None:
    # given one receipt recorded under R1 (E1) and again under R2 (E1b), aided as E1b:
    # low_income inpatient, 80% of self-pay 1000.00 = 800.00, city and district 1:1
    story = Story(app_on(settings_for))
    story.person("R1", id_number(31), "low_income")
    story.person("R2", id_number(32), "low_income")
    for handle, person in (("E1", "R1"), ("E1b", "R2")):
        story.expense(handle, person, at("2026-02-01"), visit="inpatient", facility=HOSPITAL_3, service="2026-02-01",
                      no="SH-2026-0001", in_scope="1000.00")
    story("aid", at("2026-02-10"), claim="C1", recipient="R2", expenses=["E1b"])
    # when 500.00 of 综合减负 is recorded on R1's recording (R-CLR-1(a)(b), R-INS-4)
    story("settle_insurance", at("2026-03-01"), expense="E1", scheme="burden_reduction", amount="500.00")
    # then, in one transaction on this store, both recordings show one self-pay and R2 owes the difference
    rate = D("0.80")
    due = (D("1000.00") - D("500.00")) * rate
    excess = D("1000.00") * rate - due
    again = Story(app_on(settings_for))
    again.runner.recipients, again.runner.expenses = story.runner.recipients, story.runner.expenses
    report = again.report()
    assert {h: report["expenses"][h]["self_pay"] for h in ("E1", "E1b")} == {"E1": "500.00", "E1b": "500.00"}
    assert report["expenses"]["E1b"]["due"]["total"] == f"{due:.2f}"
    [case] = again.cases("R2")
    assert (case["expense"], case["trigger"], case["amount"], case["status"]) == ("E1b", "late_insurance", f"{excess:.2f}", "open")
    assert case["by_fund"] == {"city": f"{excess / 2:.2f}", "district": f"{excess / 2:.2f}"}
    assert again.cases("R1") == []
    again.books("R2").assert_balanced()
