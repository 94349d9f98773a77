"""What officers read (commands.clearing_views): lists, and one case or supplementary payout with
both decisions side by side (RULES.md §7)."""

from __future__ import annotations

import pytest

from clearing_story import CHC, HOSPITAL_3, Story, app_on, at, id_number
from commands import clearing_views as views
from ledger import errors


@pytest.fixture
def story() -> Story:
    s = Story(app_on(None))
    s.person("R1", id_number(1), "destitute")
    s("grant_category", at("2026-01-05", "09:05:00"), recipient="R1", category="low_income", **{"from": "2025-01-01"})
    s.expense("E1", "R1", at("2026-02-10"), facility=CHC, service="2026-02-10", in_scope="200.00", insurance="100.00")
    s("aid", at("2026-03-01"), claim="C1", recipient="R1", expenses=["E1"])  # destitute 100.00, city only
    s("revoke_category", at("2026-03-05"), recipient="R1", category="destitute", **{"from": "2025-06-01"})
    s.person("R2", id_number(2), "low_income", at=at("2026-03-06"))
    s.expense("E2", "R2", at("2026-03-06"), facility=HOSPITAL_3, service="2026-02-10", in_scope="30000.00")
    s("aid", at("2026-03-07"), claim="C2", recipient="R2", expenses=["E2"])  # 10000, capped
    s("set_parameter", at("2026-03-08"), name="shanghai.medical_aid.annual_cap.outpatient.low_income",
      value="10400.00", effective_from="2026-01-01")
    return s


def test_lists_filter_by_status_and_person(story: Story) -> None:
    [case] = views.clearing_cases(story.app, status="open")
    assert (case["handle"], case["trigger"], case["rule"], case["amount"]) == ("E1", "category_change", "R-CLR-1(c)", "5.00")
    assert list(views.clearing_cases(story.app, status="settled")) == []
    assert list(views.clearing_cases(story.app, recipient=id_number(2))) == []
    [supp] = views.supplementary_payouts(story.app, status="pending")
    assert (supp["handle"], supp["amount"], supp["trigger"]) == ("E2", "400.00", "parameter_change")
    assert views.totals([case]) == {"open": {"cases": 1, "amount": "5.00", "balance": "5.00"}}
    with pytest.raises(errors.InvalidInput):
        list(views.clearing_cases(story.app, status="closed"))


def test_a_case_shows_both_decisions_fund_by_fund(story: Story) -> None:
    [row] = views.clearing_cases(story.app)
    d = views.case_detail(story.app, row["case"])
    prev, cur = d["decisions"]["previous"], d["decisions"]["current"]
    # destitute: 100% city policy (50 / 50); low_income: 50 city policy (25 / 25) + 45 district top-up
    assert (prev["category"], prev["total"], prev["by_fund"]) == ("destitute", "100.00", {"city": "50.00", "district": "50.00"})
    assert (cur["category"], cur["total"], cur["by_fund"]) == ("low_income", "95.00", {"city": "25.00", "district": "70.00"})
    assert cur["by_scheme"] == {"changning.four_linkage": "45.00", "shanghai.medical_aid": "50.00"}
    assert d["cause"] == {"category": "destitute", "revoked_from": "2025-06-01"}
    assert d["cause_text"] == "category destitute revoked from 2025-06-01"
    rows = {r["item"]: (r["previous"], r["current"], r["change"]) for r in d["side_by_side"]}
    assert rows["fund district"] == ("50.00", "70.00", "20.00")
    assert rows["scheme changning.four_linkage"] == ("0.00", "45.00", "45.00")
    assert (d["balance"], d["balance_by_fund"]) == ("5.00", {"city": "25.00", "district": "-20.00"})


def test_a_supplementary_payout_shows_both_decisions(story: Story) -> None:
    [supp] = views.supplementary_payouts(story.app)
    d = views.case_detail(story.app, supp["supplementary"])
    assert d["kind"] == "supplementary_payout" and d["status"] == "pending"
    assert (d["decisions"]["previous"]["total"], d["decisions"]["current"]["total"]) == ("10000.00", "10400.00")
    assert d["cause"] == {"parameter": "shanghai.medical_aid.annual_cap.outpatient.low_income"}
    assert d["cause_text"] == "parameter shanghai.medical_aid.annual_cap.outpatient.low_income amended"


def test_unknown_ids_are_named(story: Story) -> None:
    r2 = story.recipient("R2").id
    with pytest.raises(errors.UnknownEntity):
        views.case_detail(story.app, f"{r2}:case:9")
    with pytest.raises(errors.UnknownEntity):
        views.case_detail(story.app, "not-a-case")
    assert views.recipient_for(story.app, id_number(2)).id == r2
    assert views.recipient_for(story.app, str(r2)).id == r2


def test_a_shift_between_funds_shows_the_decision_it_replaced() -> None:
    """One recomputation opens a district case and a city payout on the same expense (R-CLR-2,
    ADR 0009): both show the decision as it was, city 25.00 + 四医联动 70.00 = 95.00, not one rebuilt
    from each item's own per-fund amount (clearing-funds-shift-same-total, E2)."""
    from pathlib import Path

    from infra.scenario import replay

    text = (Path(__file__).resolve().parents[1] / "scenarios" / "clearing-funds-shift-same-total.yaml").read_text(encoding="utf-8")
    _, runner = replay(text)
    eid = runner.expenses["E2"]
    r = runner.app.recipient(eid.split(":")[0])
    items = [i for i in [*r.cases, *r.supplementary] if (r.cases.get(i) or r.supplementary.get(i)).expense_id == eid]
    assert len(items) == 2
    for item in items:
        d = views.case_detail(runner.app, item)
        before, now = d["decisions"]["previous"], d["decisions"]["current"]
        assert before["by_scheme"] == {"changning.four_linkage": "70.00", "shanghai.medical_aid": "25.00"}, d["kind"]
        assert before["by_fund"] == {"city": "12.50", "district": "82.50"} and before["total"] == "95.00"
        assert now["by_fund"] == {"city": "25.00", "district": "70.00"} and now["total"] == "95.00"
