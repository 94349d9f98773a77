"""R-INS-2 (``ledger.subsidy``): the subsidy rules alone, with the facts given."""

from __future__ import annotations

from datetime import date, datetime

from ledger.eligibility import Holding
from ledger.facts import InsuranceFact
from ledger.policy.params import PolicyBook
from ledger.subsidy import enrolment_subsidy, enrolments_a_grant_covers, less_already_paid, pays_something
from ledger.values import CST


def held(*categories: str) -> list[Holding]:
    return [Holding(c, date(2020, 1, 1), None, None, "held", "R-CAT-1") for c in categories]


def never() -> int:
    raise AssertionError("the age was asked for where no rule needs it")


def test_a_contribution_paid_in_full_needs_no_age_and_is_paid_once_a_year() -> None:
    full = enrolment_subsidy(PolicyBook(), ["shanghai.medical_aid"], held("special_relief"), date(2026, 1, 1), never, [])
    assert (full["kind"], full["category"], full["clause"]) == ("contribution_paid_in_full", "special_relief", "[001 二(二)1]")
    assert enrolment_subsidy(PolicyBook(), ["shanghai.medical_aid"], held("special_relief"), date(2026, 1, 1), never, [full]) is None


def test_a_fixed_subsidy_pays_only_what_the_year_has_not_had() -> None:
    fixed = {"kind": "fixed_subsidy", "category": "low_income", "amount": "300.00", "fund": "city", "rule": "R-INS-2"}
    assert less_already_paid(fixed, [dict(fixed, amount="120.00")])["amount"] == "180.00"
    assert less_already_paid(fixed, [fixed]) is None
    assert less_already_paid(fixed, [{"kind": "contribution_paid_in_full", "amount": "0.00"}]) is None
    assert not pays_something(dict(fixed, amount="0.00")) and pays_something(fixed)
    # 60+ low income with the parameter unset: a fixed subsidy of 0.00, nothing worth paying later
    unset = enrolment_subsidy(PolicyBook(), ["shanghai.medical_aid"], held("low_income"), date(2026, 1, 1), lambda: 67, [])
    assert unset["amount"] == "0.00" and not pays_something(unset)
    assert enrolment_subsidy(PolicyBook(), ["shanghai.medical_aid"], held("low_income"), date(2026, 1, 1), lambda: 59, []) is None


def test_a_grant_covers_the_resident_enrolments_starting_inside_it() -> None:
    at = datetime(2026, 1, 5, 9, tzinfo=CST)
    facts = [
        InsuranceFact("start", "resident", date(2026, 1, 1), None, at),
        InsuranceFact("start", "employee", date(2026, 1, 1), None, at),
        InsuranceFact("start", "resident", date(2024, 1, 1), None, at),
        InsuranceFact("end", "resident", date(2026, 6, 30), None, at),
    ]
    assert [f.valid_from for f in enrolments_a_grant_covers(facts, date(2025, 1, 1), None)] == [date(2026, 1, 1)]
    assert [f.valid_from for f in enrolments_a_grant_covers(facts, date(2020, 1, 1), date(2025, 12, 31))] == [date(2024, 1, 1)]
    assert enrolments_a_grant_covers(facts, date(2026, 1, 2), None) == []
