"""Individual clearing 个人清算, trigger by trigger (R-CLR-1 (a)–(e), R-CLR-2).

Given a recipient's history, when the triggering fact is recorded, then the ledger recomputes the
affected expenses with today's knowledge and records a clearing case (excess) or a supplementary
payout (shortfall) for each, citing the trigger. Amounts are worked out by hand in the comments
from RULES.md; none is copied from the ledger's output.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from clearing_story import CHC, HOSPITAL_3, Story, app_on, at, id_number, parse
from commands.models import ClearingRun

D = Decimal
CITY_ONLY = HOSPITAL_3  # not district-designated: city aid only (R-4L-1), split 1:1 (§4 funding)


@pytest.fixture
def story() -> Story:
    return Story(app_on(None))


def marked(**extra):
    """An inpatient receipt that carries the 居保大病 marking (R-INS-5, service date in 2026)."""
    return {"critical_illness_related": True, "critical_illness_evidence": "receipt_marking", **extra}


# ------------------------------------------------------------------ (a) late insurance


def test_late_insurance_after_aid_opens_a_case_for_the_excess(story: Story) -> None:
    # The public late-insurance-clearing numbers: low_income, inpatient, city aid only.
    story.person("R3", id_number(3), "low_income", since="2025-06-01")
    story.expense("E1", "R3", at("2026-01-20"), visit="inpatient", facility=CITY_ONLY, service="2026-01-20",
                  total="50000.00", in_scope="40000.00", insurance="25000.00", **marked())
    # self-pay 40000 − 25000 = 15000; 80% → 12000
    assert story("aid", at("2026-04-10"), claim="C1", recipient="R3", expenses=["E1"])["status"] == "accepted"
    # 居保大病 pays 9750 afterwards: self-pay 5250, due 80% = 4200, overpaid 12000 − 4200 = 7800
    story("settle_insurance", at("2026-05-02"), expense="E1", scheme="critical_illness", amount="9750.00")
    [case] = story.cases("R3")
    assert (case["expense"], case["trigger"], case["amount"], case["balance"], case["status"]) == (
        "E1", "late_insurance", "7800.00", "7800.00", "open")
    assert case["by_fund"] == {"city": "3900.00", "district": "3900.00"}
    e1 = story.report()["expenses"]["E1"]
    assert (e1["paid"]["total"], e1["due"]["total"], e1["self_pay"]) == ("12000.00", "4200.00", "5250.00")
    assert story.supplementary("R3") == []
    story.books("R3").assert_balanced()


def test_late_insurance_frees_cap_room_for_a_later_expense_of_the_same_cap_year(story: Story) -> None:
    # low_income inpatient: 80%, annual cap 80000 by invoice year (R-CAP-1, R-CAP-2).
    story.person("R1", id_number(1), "low_income")
    story.expense("E1", "R1", at("2026-02-01"), visit="inpatient", facility=CITY_ONLY, service="2026-02-01",
                  in_scope="90000.00", **marked())  # self-pay 90000 → 72000
    story.expense("E2", "R1", at("2026-03-01"), visit="inpatient", facility=CITY_ONLY, service="2026-03-01",
                  in_scope="20000.00", **marked())  # self-pay 20000 → 16000, cap left 8000 (R-CAP-3)
    story("aid", at("2026-03-10"), claim="C1", recipient="R1", expenses=["E1"])
    story("aid", at("2026-03-20"), claim="C2", recipient="R1", expenses=["E2"])
    e2 = story.report()["expenses"]["E2"]
    assert e2["paid"]["total"] == "8000.00"
    # 居保大病 pays 40000 on E1: self-pay 50000 → 40000 (case 32000), and E2 now fits: 16000 (+8000)
    story("settle_insurance", at("2026-04-02"), expense="E1", scheme="critical_illness", amount="40000.00")
    [case] = story.cases("R1")
    assert (case["expense"], case["trigger"], case["amount"]) == ("E1", "late_insurance", "32000.00")
    [supp] = story.supplementary("R1")
    assert (supp["expense"], supp["trigger"], supp["amount"], supp["status"]) == ("E2", "late_insurance", "8000.00", "pending")
    assert supp["by_fund"] == {"city": "4000.00", "district": "4000.00"}
    annual = [a for a in story.report()["annual"] if a["kind"] == "inpatient"]
    assert [(a["granted"], a["remaining"]) for a in annual] == [("56000.00", "24000.00")]
    # Paying the supplementary payout offsets the open case first (R-CLR-3): nothing reaches the person.
    story("pay_supplementary", at("2026-04-25"), recipient="R1")
    [case] = story.cases("R1")
    assert (case["balance"], case["status"]) == ("24000.00", "open")
    assert story.supplementary("R1")[0]["status"] == "paid"
    assert story.recipient("R1").payouts[-1]["to_person"] == D("0.00")
    story.books("R1").assert_balanced()


def test_insurance_recorded_before_any_decision_opens_nothing(story: Story) -> None:
    story.person("R1", id_number(1), "low_income")
    story.expense("E1", "R1", at("2026-02-01"), visit="inpatient", facility=CITY_ONLY, service="2026-02-01",
                  in_scope="1000.00", **marked())
    story("settle_insurance", at("2026-02-02"), expense="E1", scheme="critical_illness", amount="500.00")
    story("aid", at("2026-03-01"), claim="C1", recipient="R1", expenses=["E1"])
    assert story.report()["expenses"]["E1"]["paid"]["total"] == "400.00"  # 80% of 500
    assert story.cases("R1") == [] and story.supplementary("R1") == []


# ------------------------------------------------------------------ (b) the same receipt twice


def _two_records_of_one_receipt(story: Story) -> None:
    story.person("R1", id_number(1), "dibao")
    chc = {**CHC, "code": "CHC-310105-01"}
    # self-pay 100: city 60% = 60 + 四医联动 top-up to 95% = 35 (R-4L-3)
    story.expense("E1", "R1", at("2026-02-10"), facility=chc, service="2026-02-10", no="A-1", in_scope="130.00", insurance="30.00")
    story.expense("E1b", "R1", at("2026-02-11"), facility=chc, service="2026-02-10", no="A-1", in_scope="130.00", insurance="30.00")


def test_same_receipt_post_hoc_after_one_stop_is_refused_and_recorded(story: Story) -> None:
    _two_records_of_one_receipt(story)
    assert story.report()["duplicates"] == [{"expense": "E1b", "duplicate_of": "E1"}]
    assert story("one_stop", at("2026-02-10", "16:00:00"), expense="E1")["status"] == "accepted"
    step = story("aid", at("2026-03-01"), claim="C1", recipient="R1", expenses=["E1b"])
    assert (step["status"], step["code"], step["rule"]) == ("rejected", "DUPLICATE", "R-PH-7")
    r = story.recipient("R1")
    [attempt] = r.expenses[story.expense_id("E1b")].attempted_duplicates
    assert attempt["aided_as"] == story.expense_id("E1")
    assert story.cases("R1") == []
    assert story.report()["expenses"]["E1b"]["paid"]["total"] == "0.00"


def test_same_receipt_one_stop_after_post_hoc_is_refused(story: Story) -> None:
    _two_records_of_one_receipt(story)
    story("aid", at("2026-03-01"), claim="C1", recipient="R1", expenses=["E1"])
    step = story("one_stop", at("2026-03-02"), expense="E1b")
    assert (step["status"], step["code"]) == ("rejected", "DUPLICATE")
    assert story("one_stop", at("2026-03-02"), expense="E1")["code"] == "DUPLICATE"


def test_same_receipt_twice_on_one_claim_is_refused(story: Story) -> None:
    _two_records_of_one_receipt(story)
    step = story("aid", at("2026-03-01"), claim="C1", recipient="R1", expenses=["E1", "E1b"])
    assert (step["status"], step["code"]) == ("rejected", "DUPLICATE")


def test_auto_batch_claims_a_receipt_once_and_leaves_its_duplicate_out(story: Story) -> None:
    _two_records_of_one_receipt(story)
    story("consent_auto_claim", at("2026-02-12"), recipient="R1", signed=True)
    assert story("auto_claims", at("2026-03-05"), month="2026-02")["status"] == "accepted"
    expenses = story.report()["expenses"]
    assert (expenses["E1"]["paid"]["total"], expenses["E1"]["channel"]) == ("95.00", "auto")
    assert expenses["E1b"]["paid"]["total"] == "0.00"
    # and a post-hoc claim for the duplicate afterwards is refused
    assert story("aid", at("2026-03-20"), claim="C9", recipient="R1", expenses=["E1b"])["code"] == "DUPLICATE"


def test_a_receipt_aided_twice_in_history_is_cleared_as_a_duplicate(story: Story) -> None:
    """Where it could not be prevented (both aids already in the books, e.g. brought in from the
    channels' own records), the later aid on the receipt is cleared in full: R-CLR-1(b)."""
    _two_records_of_one_receipt(story)
    story("aid", at("2026-03-01"), claim="C1", recipient="R1", expenses=["E1"])
    _force_second_aid(story, "E1b", at("2026-03-02"))
    assert story.app.run(ClearingRun(at=parse(at("2026-03-03")))).ids["recipients_changed"] == 1
    [case] = story.cases("R1")
    assert (case["expense"], case["trigger"], case["amount"], case["status"]) == ("E1b", "duplicate", "95.00", "open")
    assert story.report()["expenses"]["E1b"]["due"]["total"] == "0.00"
    story.books("R1").assert_balanced()


def _force_second_aid(story: Story, handle: str, moment: str) -> None:
    """Record a decision and a payout on an expense without the handlers' checks, as history
    imported from another channel's books would arrive."""
    from ledger import engine
    from ledger.aggregates import Recipient
    from ledger.facts import DecisionRef
    from infra.scenario import _parse_at

    app = story.app
    r = story.recipient("R1")
    eid = story.expense_id(handle)
    t = _parse_at(moment)
    refs = [DecisionRef(eid, "one_stop", None, t, r.decision_seq + 1, 0)]
    result = engine.assess(r.knowledge(), {eid: r.expenses[eid].facts}, refs, app.policy().book, app.schemes)
    summary = result.assessments[eid].summary()
    r.trigger_event(Recipient.AidDecided, timestamp=t, claim_id=None, channel="one_stop", decisions=[summary],
                    knowledge={"imported": True})
    r.trigger_event(Recipient.AidPaid, timestamp=t, claim_id=None, channel="one_stop",
                    payments=[{"expense": eid, "total": summary["total"], "by_scheme": summary["by_scheme"],
                               "by_fund": summary["by_fund"], "channel": "one_stop"}],
                    offsets=[], to_person=D(summary["total"]))
    app.save(r)


# ------------------------------------------------------------------ (c) category change


def test_category_revoked_retroactively_clears_only_the_payout_after_the_revocation_date(story: Story) -> None:
    story.person("R1", id_number(1), "dibao")
    # outpatient at a tertiary hospital, not district-designated: dibao 60%, city aid only
    story.expense("E1", "R1", at("2026-02-10"), facility=CITY_ONLY, service="2026-02-10", in_scope="500.00", insurance="300.00")
    story.expense("E2", "R1", at("2026-04-10"), facility=CITY_ONLY, service="2026-04-10", in_scope="800.00", insurance="400.00")
    story("aid", at("2026-02-20"), claim="C1", recipient="R1", expenses=["E1"])  # 60% of 200 = 120
    story("aid", at("2026-04-20"), claim="C2", recipient="R1", expenses=["E2"])  # 60% of 400 = 240
    story("revoke_category", at("2026-05-06"), recipient="R1", category="dibao", **{"from": "2026-03-01"})
    [case] = story.cases("R1")
    assert (case["expense"], case["trigger"], case["amount"], case["status"]) == ("E2", "category_change", "240.00", "open")
    assert case["by_fund"] == {"city": "120.00", "district": "120.00"}
    expenses = story.report()["expenses"]
    assert expenses["E1"]["due"]["total"] == expenses["E1"]["paid"]["total"] == "120.00"
    assert expenses["E2"]["due"]["total"] == "0.00"
    story.books("R1").assert_balanced()


def test_better_category_granted_retroactively_gives_a_supplementary_payout(story: Story) -> None:
    story.person("R1", id_number(1), "low_income")
    story.expense("E1", "R1", at("2026-02-10"), facility=CITY_ONLY, service="2026-02-10", in_scope="500.00", insurance="300.00")
    story("aid", at("2026-02-20"), claim="C1", recipient="R1", expenses=["E1"])  # low_income 50% of 200 = 100
    # dibao recognised from January: 60% of 200 = 120, chosen as the better one (R-CAT-2)
    story("grant_category", at("2026-03-01"), recipient="R1", category="dibao", **{"from": "2026-01-01"})
    [supp] = story.supplementary("R1")
    assert (supp["expense"], supp["trigger"], supp["amount"], supp["status"]) == ("E1", "category_change", "20.00", "pending")
    assert story.report()["expenses"]["E1"]["category"] == "dibao"
    story("pay_supplementary", at("2026-03-05"), recipient="R1")
    e1 = story.report()["expenses"]["E1"]
    assert e1["paid"]["total"] == e1["due"]["total"] == "120.00"
    assert e1["paid"]["by_fund"] == e1["due"]["by_fund"] == {"city": "60.00", "district": "60.00"}
    assert story.supplementary("R1")[0]["status"] == "paid"
    assert story.cases("R1") == []


def test_category_change_moving_funds_in_opposite_directions_owes_only_the_net(story: Story) -> None:
    """destitute (100%, city aid only: not a 四医联动 category) → low_income (50% city + district
    top-up to 95%) on a community-centre visit: the city part falls by 25, the district part
    rises by 20; the recipient owes 5 and every fund ends where the new decision puts it."""
    story.person("R1", id_number(1), "destitute")
    story("grant_category", at("2026-01-05", "09:05:00"), recipient="R1", category="low_income", **{"from": "2025-01-01"})
    story.expense("E1", "R1", at("2026-02-10"), service="2026-02-10", in_scope="200.00", insurance="100.00")
    story("aid", at("2026-03-01"), claim="C1", recipient="R1", expenses=["E1"])  # destitute: 100 (50/50)
    story("revoke_category", at("2026-03-05"), recipient="R1", category="destitute", **{"from": "2025-06-01"})
    [case] = story.cases("R1")
    # now: city 50% = 50 (25/25) + top-up 45 (district) = 95 → city 25, district 70
    assert (case["amount"], case["balance"], case["trigger"]) == ("5.00", "5.00", "category_change")
    assert case["by_fund"] == {"city": "25.00", "district": "-20.00"}
    story("repay", at("2026-03-06"), recipient="R1", amount="1.00")
    assert story.cases("R1")[0]["balance"] == "4.00"
    story.books("R1").assert_balanced()
    story("repay", at("2026-03-07"), recipient="R1", amount="4.00")
    assert story.cases("R1")[0]["status"] == "settled"
    books = story.books("R1")
    books.assert_balanced()
    assert books.net() == {"city": D("25.00"), "district": D("70.00")}  # exactly the new decision
    assert story.report()["funds"]["city"] == "25.00"


# ------------------------------------------------------------------ (d) parameter amended retroactively


def test_cap_raised_retroactively_gives_a_supplementary_payout(story: Story) -> None:
    story.person("R1", id_number(1), "low_income")
    # outpatient 50%: self-pay 30000 → 15000, bound by the outpatient cap 10000 (R-CAP-3)
    story.expense("E1", "R1", at("2026-02-10"), facility=CITY_ONLY, service="2026-02-10", in_scope="30000.00")
    story("aid", at("2026-02-20"), claim="C1", recipient="R1", expenses=["E1"])
    assert story.report()["expenses"]["E1"]["paid"]["total"] == "10000.00"
    step = story("set_parameter", at("2026-06-01"), name="shanghai.medical_aid.annual_cap.outpatient.low_income",
                 value="12000.00", effective_from="2026-01-01")
    assert step["status"] == "accepted"
    [supp] = story.supplementary("R1")
    assert (supp["expense"], supp["trigger"], supp["amount"]) == ("E1", "parameter_change", "2000.00")
    [row] = story.report()["annual"]
    assert (row["granted"], row["cap"], row["remaining"]) == ("12000.00", "12000.00", "0.00")


def test_rate_lowered_retroactively_opens_a_case(story: Story) -> None:
    story.person("R1", id_number(1), "low_income")
    story.expense("E1", "R1", at("2026-02-10"), facility=CITY_ONLY, service="2026-02-10", in_scope="1000.00")
    story.expense("E2", "R1", at("2025-11-10"), facility=CITY_ONLY, service="2025-11-10", in_scope="1000.00")
    story("aid", at("2026-02-20"), claim="C1", recipient="R1", expenses=["E1", "E2"])  # 500 each
    story("set_parameter", at("2026-06-01"), name="shanghai.medical_aid.rate.outpatient.low_income",
          value="0.45", effective_from="2026-01-01")
    # E1 (served 2026) now 450: case 50; E2 (served 2025) is outside the amendment's period
    [case] = story.cases("R1")
    assert (case["expense"], case["trigger"], case["amount"]) == ("E1", "parameter_change", "50.00")
    assert case["by_fund"] == {"city": "25.00", "district": "25.00"}


def test_an_amendment_reaches_every_recipient_it_touches(story: Story) -> None:
    for n, handle in enumerate(("R1", "R2", "R3"), start=1):
        story.person(handle, id_number(n), "low_income")
    story.expense("E1", "R1", at("2026-02-10"), facility=CITY_ONLY, service="2026-02-10", in_scope="30000.00")
    story.expense("E2", "R2", at("2026-02-10"), facility=CITY_ONLY, service="2026-02-10", in_scope="100.00")
    story("aid", at("2026-02-20"), claim="C1", recipient="R1", expenses=["E1"])
    story("aid", at("2026-02-20"), claim="C2", recipient="R2", expenses=["E2"])
    story("set_parameter", at("2026-06-01"), name="shanghai.medical_aid.annual_cap.outpatient.low_income",
          value="11000.00", effective_from="2026-01-01")
    report = story.report()
    assert [(s["recipient"], s["amount"]) for s in report["supplementary"]] == [("R1", "1000.00")]
    assert report["clearing_cases"] == []


# ------------------------------------------------------------------ (e) cap overrun out of order


def test_expenses_decided_out_of_invoice_order_across_the_cap_open_a_cap_overrun_case(story: Story) -> None:
    story.person("R1", id_number(1), "low_income")
    # outpatient cap 10000; each expense: self-pay 12000 → 6000 at 50%
    story.expense("E1", "R1", at("2026-03-01"), facility=CITY_ONLY, service="2026-03-01", in_scope="12000.00")
    story.expense("E2", "R1", at("2026-03-02"), facility=CITY_ONLY, service="2026-02-01", in_scope="12000.00")
    story("aid", at("2026-03-10"), claim="C1", recipient="R1", expenses=["E1"])  # 6000, the cap has room
    story("aid", at("2026-04-01"), claim="C2", recipient="R1", expenses=["E2"])
    # canonical order is by invoice date: E2 (Feb) 6000 first, then E1 only the 4000 left (R-CAP-2, R-CAP-3)
    expenses = story.report()["expenses"]
    assert expenses["E2"]["paid"]["total"] == "6000.00"
    assert expenses["E1"]["due"]["total"] == "4000.00"
    [case] = story.cases("R1")
    assert (case["expense"], case["trigger"], case["amount"]) == ("E1", "cap_overrun", "2000.00")
    # the payout of E2 offset the new case at once (R-CLR-3): 6000 − 2000 reached the person
    assert (case["balance"], case["status"]) == ("0.00", "settled")
    assert story.recipient("R1").payouts[-1]["to_person"] == D("4000.00")
    story.books("R1").assert_balanced()
