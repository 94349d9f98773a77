"""R-INS-2: whose insurance contribution the aid fund pays, given / when / then over the
``InsuranceEnrolmentStarted`` event's ``subsidy`` (Shanghai [001 二(二)1, 001 二(四)2];
Lianyungang [004 四(一)])."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from commands import models as m
from commands.app import LedgerApp
from infra.wiring import memory_app
from ledger.aggregates import Recipient
from ledger.values import CST

#: GB 11643 check digits worked out by hand (ISO 7064 MOD 11-2 over the first 17 digits).
CHILD_2015 = "310105201503150010"  # born 2015-03-15
ADULT_1958 = "310105195803122013"  # born 1958-03-12
ADULT_1962 = "310105196207154427"  # born 1962-07-15


def t(day: str) -> datetime:
    return datetime.fromisoformat(f"{day}T10:00:00+08:00")


def subsidy_on_insure(app: LedgerApp, id_number: str, category: str, *, subtype: str | None = None, scheme: str = "resident") -> dict | None:
    rid = app.run(m.Enrol(id_number=id_number, name="测试", street="华阳路街道", at=t("2026-01-05"))).ids["recipient"]
    grant = {"recipient": rid, "category": category, "from": "2025-01-01", "at": t("2026-01-05")}
    if subtype:
        grant["subtype"] = subtype
    app.run(m.GrantCategory.model_validate(grant))
    before = app.recorder.max_notification_id()
    assert app.run(m.Insure.model_validate({"recipient": rid, "scheme": scheme, "from": "2026-01-01", "at": t("2026-01-06")})).status == "accepted"
    [started] = [e for e in (app.mapper.to_domain_event(n) for n in app.recorder.select_notifications(start=before + 1, limit=50))
                 if isinstance(e, Recipient.InsuranceEnrolmentStarted)]
    return started.subsidy


@pytest.fixture
def shanghai() -> LedgerApp:
    return memory_app("shanghai.changning", published_at=datetime(2025, 12, 31, 8, tzinfo=CST))


@pytest.fixture
def lianyungang() -> LedgerApp:
    return memory_app("lianyungang", published_at=datetime(2025, 12, 31, 8, tzinfo=CST))


def test_check_digits_used_here_are_valid() -> None:
    weights = [pow(2, 17 - i, 11) for i in range(17)]
    for number in (CHILD_2015, ADULT_1958, ADULT_1962):
        assert "10X98765432"[sum(int(d) * w for d, w in zip(number[:17], weights)) % 11] == number[17]


@pytest.mark.parametrize("category", ["dibao", "orphan", "child_in_distress"])
def test_a_child_of_those_categories_also_has_the_childrens_fund_contribution_paid(shanghai: LedgerApp, category: str) -> None:
    s = subsidy_on_insure(shanghai, CHILD_2015, category)
    assert (s["kind"], s["rule"], s["clause"]) == ("contribution_paid_in_full", "R-INS-2", "[001 二(二)1]")
    assert s["children_fund"]["kind"] == "contribution_paid_in_full"
    assert (s["children_fund"]["rule"], s["children_fund"]["clause"]) == ("R-INS-2", "[001 二(四)2]")


def test_an_adult_on_dibao_has_the_resident_contribution_paid_but_no_childrens_fund(shanghai: LedgerApp) -> None:
    s = subsidy_on_insure(shanghai, ADULT_1958, "dibao")
    assert s["kind"] == "contribution_paid_in_full" and "children_fund" not in s


def test_a_special_relief_child_has_no_childrens_fund_subsidy(shanghai: LedgerApp) -> None:
    """[001 二(四)2] names dibao children, scattered orphans and children in distress only."""
    s = subsidy_on_insure(shanghai, CHILD_2015, "special_relief")
    assert s["kind"] == "contribution_paid_in_full" and "children_fund" not in s


def test_employee_insurance_gets_no_subsidy(shanghai: LedgerApp) -> None:
    assert subsidy_on_insure(shanghai, CHILD_2015, "dibao", scheme="employee") is None


@pytest.mark.parametrize("subtype", ["dibao", "低保", "特困供养", "destitute", "孤儿", " Orphan ", "低保对象（城市）", "农村特困供养人员", "社会散居孤儿"])
def test_lianyungang_dibao_destitute_and_orphans_are_paid_in_full(lianyungang: LedgerApp, subtype: str) -> None:
    s = subsidy_on_insure(lianyungang, ADULT_1962, "lyg_key", subtype=subtype)
    assert (s["kind"], s["clause"]) == ("contribution_paid_in_full", "[004 四(一)]")


@pytest.mark.parametrize("subtype", ["60年代老职工", "特困职工"])  # a distressed worker is not 特困供养
def test_lianyungang_other_recipients_get_the_local_setting_zero_until_set(lianyungang: LedgerApp, subtype: str) -> None:
    s = subsidy_on_insure(lianyungang, ADULT_1962, "lyg_key", subtype=subtype)
    assert (s["kind"], s["amount"], s["clause"], s.get("local_setting")) == ("fixed_subsidy", "0.00", "[004 四(一)]", True)


def test_lianyungang_other_recipients_get_the_countys_amount_once_set(lianyungang: LedgerApp) -> None:
    assert lianyungang.run(m.SetParameter(name="lianyungang.medical_aid.enrolment_subsidy.other", value="120.00",
                                          effective_from=date(2026, 1, 1), at=t("2026-01-02"))).status == "accepted"
    s = subsidy_on_insure(lianyungang, ADULT_1962, "lyg_extended")
    assert (s["kind"], s["amount"], s["category"]) == ("fixed_subsidy", "120.00", "lyg_extended")


def _insure_again(app: LedgerApp, rid: str, day: str, valid_from: str = "2026-01-01") -> dict | None:
    before = app.recorder.max_notification_id()
    assert app.run(m.Insure.model_validate({"recipient": rid, "scheme": "resident", "from": valid_from, "at": t(day)})).status == "accepted"
    [started] = [e for e in (app.mapper.to_domain_event(n) for n in app.recorder.select_notifications(start=before + 1, limit=50))
                 if isinstance(e, Recipient.InsuranceEnrolmentStarted)]
    return started.subsidy


def test_a_years_contribution_is_subsidised_once_however_often_its_enrolment_is_recorded(shanghai: LedgerApp) -> None:
    # given a low-income recipient aged 60+ whose 2026 enrolment carried the fixed subsidy
    assert shanghai.run(m.SetParameter(name="shanghai.medical_aid.enrolment_subsidy.low_income_60plus", value="300.00",
                                       effective_from=date(2026, 1, 1), at=t("2026-01-02"))).status == "accepted"
    s = subsidy_on_insure(shanghai, ADULT_1958, "low_income")
    assert (s["kind"], s["amount"]) == ("fixed_subsidy", "300.00")
    rid = str(shanghai.recipient_id_for(ADULT_1958))
    # when the same year's enrolment is recorded again, or another from March of that year
    assert _insure_again(shanghai, rid, "2026-01-07") is None
    assert _insure_again(shanghai, rid, "2026-03-02", valid_from="2026-03-01") is None
    # then the next year's enrolment is a year of its own
    assert _insure_again(shanghai, rid, "2026-12-20", valid_from="2027-01-01")["amount"] == "300.00"


def test_a_fixed_subsidy_raised_since_pays_only_the_rest_on_a_new_enrolment_of_the_year(lianyungang: LedgerApp) -> None:
    # given an enrolment of 2026 recorded while the county's amount was 0 until set
    s = subsidy_on_insure(lianyungang, ADULT_1962, "lyg_extended")
    assert s["amount"] == "0.00"
    assert lianyungang.run(m.SetParameter(name="lianyungang.medical_aid.enrolment_subsidy.other", value="120.00",
                                          effective_from=date(2026, 1, 1), at=t("2026-01-10"))).status == "accepted"
    # when the enrolment is recorded again, then it carries what the year has not been paid
    again = _insure_again(lianyungang, str(lianyungang.recipient_id_for(ADULT_1962)), "2026-01-11")
    assert (again["amount"], again["already_paid"]) == ("120.00", "0.00")
    assert _insure_again(lianyungang, str(lianyungang.recipient_id_for(ADULT_1962)), "2026-01-12") is None
    # a dibao adult's contribution paid in full is not paid in full twice
    s = subsidy_on_insure(lianyungang, ADULT_1958, "lyg_key", subtype="低保")
    assert s["kind"] == "contribution_paid_in_full"
    assert _insure_again(lianyungang, str(lianyungang.recipient_id_for(ADULT_1958)), "2026-01-13") is None
