"""The recovery lifecycle of a clearing case (R-CLR-3 [000 第七条]): repayment, offset against the
next payouts (oldest case first, never below zero, not against one-stop settlements paid to a
facility), write-off with a distinct approver; a case's balance never negative; the books balance.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing_story import CHC, HOSPITAL_3, Story, app_on, at, id_number, parse
from commands.models import ClearingRun

D = Decimal


def marked():
    return {"critical_illness_related": True, "critical_illness_evidence": "receipt_marking"}


def with_case(story: Story, handle: str = "R1", seq: int = 1) -> None:
    """low_income, inpatient at a hospital outside Changning's network (city aid only, 1:1):
    E1 self-pay 15000 → 12000 paid; 居保大病 9750 later → due 4200: case 7800 (3900 / 3900)."""
    story.person(handle, id_number(seq), "low_income")
    story.expense(f"{handle}E1", handle, at("2026-01-20"), visit="inpatient", facility=HOSPITAL_3, service="2026-01-20",
                  total="50000.00", in_scope="40000.00", insurance="25000.00", **marked())
    story("aid", at("2026-04-10"), claim=f"{handle}C1", recipient=handle, expenses=[f"{handle}E1"])
    story("settle_insurance", at("2026-05-02"), expense=f"{handle}E1", scheme="critical_illness", amount="9750.00")


def inpatient(story: Story, handle: str, recipient: str, day: str, self_pay: str) -> None:
    story.expense(handle, recipient, at(day), visit="inpatient", facility=HOSPITAL_3, service=day, in_scope=self_pay, **marked())


@pytest.fixture
def story() -> Story:
    return Story(app_on(None))


def test_partial_repayment_lowers_the_balance_fund_by_fund(story: Story) -> None:
    with_case(story)
    assert story("repay", at("2026-05-20"), recipient="R1", amount="2000.00")["status"] == "accepted"
    [case] = story.cases("R1")
    assert (case["balance"], case["status"]) == ("5800.00", "open")
    c = next(iter(story.recipient("R1").cases.values()))
    assert c.balance_by_fund == {"city": D("2900.00"), "district": D("2900.00")}
    story.books("R1").assert_balanced()


def test_a_repayment_larger_than_owed_is_refused_and_changes_nothing(story: Story) -> None:
    with_case(story)
    version = story.recipient("R1").version
    step = story("repay", at("2026-05-20"), recipient="R1", amount="7800.01")
    assert (step["status"], step["code"], step["rule"]) == ("rejected", "EXCEEDS_BALANCE", "R-CLR-3")
    assert story.recipient("R1").version == version
    assert story.cases("R1")[0]["balance"] == "7800.00"


def test_a_repayment_with_nothing_owed_is_refused(story: Story) -> None:
    story.person("R1", id_number(1), "low_income")
    step = story("repay", at("2026-05-20"), recipient="R1", amount="1.00")
    assert (step["status"], step["code"], step["rule"]) == ("rejected", "NOTHING_OWED", "R-CLR-3")


def test_an_offset_that_exactly_empties_a_case(story: Story) -> None:
    with_case(story)
    story("repay", at("2026-05-20"), recipient="R1", amount="2000.00")  # balance 5800
    inpatient(story, "E2", "R1", "2026-05-25", "7250.00")  # 80% of 7250 = 5800
    story("aid", at("2026-06-01"), claim="C2", recipient="R1", expenses=["E2"])
    [case] = story.cases("R1")
    assert (case["balance"], case["status"]) == ("0.00", "settled")
    payout = story.recipient("R1").payouts[-1]
    assert (payout["to_person"], [o["amount"] for o in payout["offsets"]]) == (D("0.00"), ["5800.00"])
    # paid shows the whole payout, offset part included (SCENARIOS.md)
    assert story.report()["expenses"]["E2"]["paid"]["total"] == "5800.00"
    story.books("R1").assert_balanced()


def test_offsets_take_the_oldest_case_first_and_never_take_a_payout_below_zero(story: Story) -> None:
    story.person("R1", id_number(1), "low_income")
    inpatient(story, "E1", "R1", "2026-02-01", "1000.00")  # 800
    inpatient(story, "E2", "R1", "2026-02-02", "500.00")  # 400
    story("aid", at("2026-02-10"), claim="C1", recipient="R1", expenses=["E1", "E2"])
    story("settle_insurance", at("2026-03-01"), expense="E1", scheme="union_mutual_aid", amount="500.00")  # case A 400
    story("settle_insurance", at("2026-03-02"), expense="E2", scheme="burden_reduction", amount="250.00")  # case B 200
    inpatient(story, "E3", "R1", "2026-03-05", "625.00")  # 500: A 400 then B 100; nothing to the person
    story("aid", at("2026-03-10"), claim="C2", recipient="R1", expenses=["E3"])
    cases = {c["expense"]: c for c in story.cases("R1")}
    assert (cases["E1"]["balance"], cases["E1"]["status"]) == ("0.00", "settled")
    assert (cases["E2"]["balance"], cases["E2"]["status"]) == ("100.00", "open")
    payout = story.recipient("R1").payouts[-1]
    assert payout["to_person"] == D("0.00")
    assert [o["amount"] for o in payout["offsets"]] == ["400.00", "100.00"]
    # a payout larger than what is owed: the rest reaches the person
    inpatient(story, "E4", "R1", "2026-03-12", "250.00")  # 200
    story("aid", at("2026-03-20"), claim="C3", recipient="R1", expenses=["E4"])
    assert story.recipient("R1").payouts[-1]["to_person"] == D("100.00")
    assert all(c["status"] == "settled" for c in story.cases("R1"))
    story.books("R1").assert_balanced()


def test_a_one_stop_settlement_paid_to_the_facility_offsets_nothing(story: Story) -> None:
    with_case(story)
    story.expense("E2", "R1", at("2026-05-25"), service="2026-05-25", in_scope="300.00", insurance="200.00")  # CHC: 95
    assert story("one_stop", at("2026-05-25", "11:00:00"), expense="E2")["status"] == "accepted"
    assert story.cases("R1")[0]["balance"] == "7800.00"
    assert story.recipient("R1").payouts[-1]["to_person"] == D("95.00")


def test_a_write_off_by_the_clearing_officer_alone_is_refused(story: Story) -> None:
    with_case(story)
    step = story("write_off", at("2026-06-01"), recipient="R1", officer="CLR-1", approver="CLR-1")
    assert (step["status"], step["code"], step["rule"]) == ("rejected", "SAME_OFFICER", "R-CLR-3")
    assert story.cases("R1")[0]["status"] == "open"


def test_a_write_off_with_a_distinct_approver_closes_the_open_balance(story: Story) -> None:
    with_case(story)
    story("repay", at("2026-05-20"), recipient="R1", amount="800.00")
    step = story("write_off", at("2026-06-01"), recipient="R1", officer="CLR-1", approver="APR-9", reason="deceased")
    assert step["status"] == "accepted"
    [case] = story.cases("R1")
    assert (case["balance"], case["status"]) == ("0.00", "written_off")
    books = story.books("R1")
    books.assert_balanced()
    assert books.written_off == {"city": D("3500.00"), "district": D("3500.00")}
    # a write-off recovers nothing: the funds carry it
    assert books.net() == {"city": D("5600.00"), "district": D("5600.00")}
    assert story("write_off", at("2026-06-02"), recipient="R1", officer="CLR-1", approver="APR-9")["code"] == "NOTHING_OWED"


def test_pay_supplementary_pays_what_is_pending_once(story: Story) -> None:
    story.person("R1", id_number(1), "low_income")
    story.expense("E1", "R1", at("2026-02-10"), facility=HOSPITAL_3, service="2026-02-10", in_scope="30000.00")
    story("aid", at("2026-02-20"), claim="C1", recipient="R1", expenses=["E1"])  # 10000, capped
    story("set_parameter", at("2026-06-01"), name="shanghai.medical_aid.annual_cap.outpatient.low_income",
          value="10500.00", effective_from="2026-01-01")
    story("pay_supplementary", at("2026-06-02"), recipient="R1")
    payout = story.recipient("R1").payouts[-1]
    assert (payout["channel"], payout["to_person"]) == ("supplementary", D("500.00"))
    n = len(story.recipient("R1").payouts)
    story("pay_supplementary", at("2026-06-03"), recipient="R1")
    assert len(story.recipient("R1").payouts) == n
    assert story.report()["expenses"]["E1"]["paid"]["total"] == "10500.00"


def test_a_clearing_run_twice_records_nothing_new(story: Story) -> None:
    with_case(story, "R1", 1)
    story.person("R2", id_number(2), "low_income", at=at("2026-05-03"))
    story.expense("E9", "R2", at("2026-05-03"), facility=HOSPITAL_3, service="2026-02-10", in_scope="30000.00")
    story("aid", at("2026-05-04"), claim="C9", recipient="R2", expenses=["E9"])
    story("set_parameter", at("2026-06-01"), name="shanghai.medical_aid.annual_cap.outpatient.low_income",
          value="11000.00", effective_from="2026-01-01")
    versions = {h: story.recipient(h).version for h in ("R1", "R2")}
    for day in ("2026-06-02", "2026-06-03"):
        result = story.app.run(ClearingRun(at=parse(at(day))))
        assert result.ids == {"recipients_changed": 0, "cases_opened": 0, "supplementary_opened": 0}
    assert {h: story.recipient(h).version for h in ("R1", "R2")} == versions
    assert len(story.cases("R1")) == 1 and len(story.supplementary("R2")) == 1


# ---------------------------------------------------------------------------- any sequence

ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("repay"), st.integers(min_value=1, max_value=900_000)),
        st.tuples(st.just("aid"), st.integers(min_value=1, max_value=400_000)),
        st.tuples(st.just("one_stop"), st.integers(min_value=101, max_value=20_000)),
        st.tuples(st.just("insurance"), st.integers(min_value=1, max_value=100)),
        st.tuples(st.just("write_off"), st.booleans()),
    ),
    min_size=1,
    max_size=7,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS)
def test_after_any_sequence_no_balance_is_negative_and_the_books_balance(actions) -> None:
    story = Story(app_on(None))
    with_case(story)
    for n, (kind, x) in enumerate(actions):
        day = f"2026-06-{n + 1:02d}"
        r = story.recipient("R1")
        owed = r.open_balance()
        if kind == "repay":
            amount = D(x) / 100
            step = story("repay", at(day), recipient="R1", amount=str(amount))
            assert step["status"] == ("accepted" if 0 < amount <= owed else "rejected")
        elif kind == "aid":
            inpatient(story, f"E{n}", "R1", day, str(D(x) / 100))
            story("aid", at(day, "11:00:00"), claim=f"C{n}", recipient="R1", expenses=[f"E{n}"])
        elif kind == "one_stop":
            story.expense(f"E{n}", "R1", at(day), service=day, in_scope=str(D(x) / 100), insurance="1.00", facility=CHC)
            story("one_stop", at(day, "11:00:00"), expense=f"E{n}")
        elif kind == "insurance":
            # a late settlement on the first expense (self-pay 5250 left): clearing again
            story("settle_insurance", at(day), expense="R1E1", scheme="other", amount=str(D(x)))
        else:
            step = story("write_off", at(day), recipient="R1", officer="CLR-1", approver="APR-1" if x else "CLR-1")
            assert step["status"] == ("accepted" if x and owed > 0 else "rejected")
        r = story.recipient("R1")
        for c in r.cases.values():
            assert 0 <= c.balance <= c.amount
        for p in r.payouts:
            assert p["to_person"] >= 0
        story.books("R1").assert_balanced()
    report = story.report()
    books = story.books("R1")
    assert {f: D(v) for f, v in report["funds"].items() if D(v)} == {f: v for f, v in books.net().items() if v}
