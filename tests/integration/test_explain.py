"""``ledger explain``: the stored decision trace of an expense, rendered (issue 3).

Expected figures are worked out here from RULES.md, not read back from the ledger:
dibao at a Changning community health centre, self-pay 100.00 →
city part 60% = 60.00 [001 二(二)4]; 四医联动 total 95% = 95.00 [000 第四条(二)2];
district top-up 95.00 − 60.00 = 35.00 (R-4L-3).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from commands import models as m
from infra.cli import _register, app as cli
from infra.settings import Settings
from infra.wiring import build_app
from ledger.aggregates import Recipient
from ledger.values import CST

_register()

SCENARIO = """name: explain-four-linkage
jurisdiction: shanghai.changning
steps:
  - {at: "2026-05-01T09:00:00+08:00", do: enrol, recipient: R1, id_number: "310105195803122013", name: 王秀英, street: 华阳路街道}
  - {at: "2026-05-01T09:01:00+08:00", do: grant_category, recipient: R1, category: low_income, from: "2025-01-01"}
  - {at: "2026-05-01T09:02:00+08:00", do: grant_category, recipient: R1, category: dibao, from: "2026-01-01"}
  - {at: "2026-05-01T09:03:00+08:00", do: insure, recipient: R1, scheme: resident, from: "2020-01-01"}
  - {at: "2026-05-05T10:00:00+08:00", do: record_expense, expense: E1, recipient: R1, visit_type: outpatient, facility: {kind: community_health_centre, level: 1, district_designated: true}, service_date: "2026-05-05", invoice_date: "2026-05-05", invoice_no: "X-1", total: "130.00", in_scope: "120.00", basic_insurance_paid: "20.00"}
  - {at: "2026-05-10T10:00:00+08:00", do: aid, claim: C1, recipient: R1, expenses: [E1]}
  - {at: "2026-05-12T10:00:00+08:00", do: settle_insurance, expense: E1, scheme: union_mutual_aid, amount: "20.00"}
"""


@pytest.fixture()
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "explain.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


def _invoke(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(cli, ["explain", *args], env=env)
    return result


def _four_linkage(decision: dict) -> dict:
    [entry] = [s for s in decision["schemes"] if s["scheme"] == "changning.four_linkage"]
    return entry


def test_four_linkage_expense_shows_city_part_top_up_both_rates_and_policy_version(scenario_file: Path):
    result = _invoke("--scenario", str(scenario_file), "--expense", "E1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    d = data["decision"]
    assert data["handle"] == "E1"
    assert (d["self_pay"], d["total"]) == ("100.00", "95.00")
    fl = _four_linkage(d)
    assert fl["total_four_linkage"] == "95.00"
    assert fl["city_part"]["amount"] == "60.00"
    assert fl["top_up"]["amount"] == "35.00"
    assert (fl["city_part"]["rate"]["value"], fl["city_part"]["rate"]["reference"]) == ("0.60", "[001 二(二)4]")
    assert (fl["coverage"]["value"], fl["coverage"]["reference"]) == ("0.95", "[000 第四条(二)2]")
    assert fl["by_fund"]["district"]["amount"] == "35.00"
    # R-CAT-2: both categories were weighed, dibao (60% city + top-up) against low income (50% + top-up):
    # both come to 95.00 in total; the tie goes to dibao by the fixed precedence (ADR 0007)
    considered = {c["category"]: c.get("total") for c in d["category"]["considered"]}
    assert considered == {"dibao": "95.00", "low_income": "95.00"}
    assert d["category"]["chosen"] == "dibao"
    # the monthly ceiling and visit count are local settings, and say so
    assert "changning.four_linkage.monthly_cap.community_outpatient" in d["local_settings"]
    assert fl["monthly"]["ceiling"]["local_setting"] is True
    assert fl["coverage"]["local_setting"] is False
    # a later union mutual-aid payment: self-pay 80.00 → city 48.00, total 76.00, top-up 28.00
    [again] = data["reassessments"]
    assert again["trigger"] == "late_insurance"
    assert (again["previous_total"], again["total"]) == ("95.00", "76.00")
    assert again["by_scheme"] == {"shanghai.medical_aid": "48.00", "changning.four_linkage": "28.00"}
    [case] = data["clearing_cases"]
    assert (case["trigger"], case["amount"]) == ("late_insurance", "19.00")


def test_policy_version_is_the_hash_of_the_policy_known_at_the_decision(scenario_file: Path):
    from infra.scenario import replay

    _, runner = replay(SCENARIO)
    eid = runner.expenses["E1"]
    from commands.explain import explain_expense

    policy = explain_expense(runner.app, eid)["decision"]["policy"]
    book = runner.app.policy(version=policy["policy_version"]).book
    assert policy["hash"] == book.content_hash()
    decided = [e for e in runner.app.events.get(uuid.UUID(eid.split(":")[0])) if isinstance(e, Recipient.AidDecided)]
    assert policy["recipient_version"] == decided[0].knowledge["recipient_version"]
    text = _invoke("--scenario", str(scenario_file), "--expense", "E1")
    assert text.exit_code == 0, text.output
    assert policy["hash"] in text.stdout


def test_text_rendering_names_both_parts_with_chinese_terms(scenario_file: Path):
    result = _invoke("--scenario", str(scenario_file), "E1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for needle in (
        "市级医疗救助部分 60.00",
        "区级补足",
        "= 95.00 − 60.00 = 35.00",
        "shanghai.medical_aid.rate.outpatient.dibao = 0.60 [001 二(二)4]",
        "changning.four_linkage.coverage.community_health_centre = 0.95 [000 第四条(二)2]",
        "就高不重复",
        "自负医疗费用",
        "本地设定",
        "Reassessments 重新核定",
        "late_insurance",
    ):
        assert needle in out, f"{needle!r} not in:\n{out}"


def test_usage_errors(scenario_file: Path):
    assert _invoke("--scenario", str(scenario_file)).exit_code == 2
    assert _invoke("--scenario", str(scenario_file), "--expense", "E9").exit_code == 1
    assert _invoke().exit_code == 2


def test_explain_over_the_configured_store(database_url: str):
    """The store named by LEDGER_DATABASE_URL, on SQLite and PostgreSQL."""
    settings = Settings(database_url=database_url)
    ledger = build_app(settings)  # publishes the packs now: the commands below are recorded now too
    served = (datetime.now(CST) - timedelta(days=20)).date().isoformat()
    rid = ledger.run(m.Enrol(id_number="310105196207154427", name="陈美华", street="江苏路街道")).ids["recipient"]
    ledger.run(m.GrantCategory(recipient=rid, category="low_income", valid_from="2019-06-01"))
    ledger.run(m.Insure(recipient=rid, scheme="resident", valid_from="2019-01-01"))
    eid = ledger.run(
        m.RecordExpense(
            recipient=rid, visit_type="inpatient", facility={"kind": "hospital", "level": 3}, service_date=served,
            invoice_date=served, invoice_no="T3-1", total="50000.00", in_scope="40000.00", basic_insurance_paid="25000.00",
        )
    ).ids["expense"]
    decided = ledger.aid(rid, [eid], None)
    assert decided.status == "accepted", decided
    # 居保大病 pays 9750.00 afterwards: self-pay 15000.00 → 5250.00; 80% → 4200.00 (was 12000.00)
    ledger.run(m.SettleInsurance(expense=eid, scheme="critical_illness", amount="9750.00"))

    result = _invoke(eid, "--json", env={"LEDGER_DATABASE_URL": database_url, "LEDGER_JURISDICTION": "shanghai.changning"})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    d = data["decision"]
    assert (d["self_pay"], d["total"], d["category"]["chosen"]) == ("15000.00", "12000.00", "low_income")
    [city] = [s for s in d["schemes"] if s["scheme"] == "shanghai.medical_aid"]
    assert (city["rate"]["value"], city["rate"]["reference"], city["rate"]["local_setting"]) == ("0.80", "[001 二(二)4]", False)
    assert city["cap"]["parameter"]["value"] == "80000.00" and city["cap"]["parameter"]["local_setting"] is True
    [fl] = [s for s in d["schemes"] if s["scheme"] == "changning.four_linkage"]
    assert fl["applied"] is False and "district-designated" in fl["why_not"]
    [again] = data["reassessments"]
    assert (again["trigger"], again["total"], again["self_pay"]) == ("late_insurance", "4200.00", "5250.00")
    assert Decimal(data["clearing_cases"][0]["amount"]) == Decimal("7800.00")
    assert data["paid"]["total"] == "12000.00" and data["due"]["total"] == "4200.00"
    # the receipt's insurance payments and the self-pay they leave now, beside the first decision's
    [paid_by] = data["facts"]["settlements"]
    assert (paid_by["scheme"], paid_by["amount"], paid_by["rule"]) == ("critical_illness", "9750.00", "R-INS-4")
    assert paid_by["recorded_at"].endswith("+08:00") and data["facts"]["self_pay_now"] == "5250.00"
    waterfall = {row["step"]: row["amount"] for row in d["waterfall"]}
    assert waterfall == {
        "total": "50000.00", "out_of_scope": "10000.00", "in_scope": "40000.00", "basic_insurance": "25000.00",
        "critical_illness": "0.00", "supplements": "0.00", "self_pay": "15000.00", "aid": "12000.00",
    }


def test_a_recorded_policy_version_is_read_from_the_store_once():
    """``policy(version=…)``: a version of the policy ledger never changes once recorded, so a
    process reads it once (explanations and snapshots ask for it on every call)."""
    from infra.scenario import replay

    _, runner = replay(SCENARIO)
    app = runner.app
    head = app.policy().version
    reads: list[int | None] = []
    real = app.repository.get

    def get(aggregate_id, version=None, **kw):  # noqa: ANN001
        reads.append(version)
        return real(aggregate_id, version=version, **kw)

    app.repository.get = get
    first = app.policy(version=head)
    assert app.policy(version=head) is first and reads == [head]
    earlier = app.policy(version=1)
    assert earlier.version == 1 and earlier is not first and reads == [head, 1]
    assert first.version == head and first.book.content_hash() == app.policy().book.content_hash()


REFUSED = """name: explain-refused
jurisdiction: shanghai
steps:
  - {at: "2026-01-05T09:00:00+08:00", do: enrol, recipient: R1, id_number: "310105195803122013", name: 王秀英, street: 华阳路街道}
  - {at: "2026-01-05T09:01:00+08:00", do: grant_category, recipient: R1, category: dibao, from: "2025-01-01"}
  - {at: "2026-01-10T10:00:00+08:00", do: record_expense, expense: E1, recipient: R1, visit_type: outpatient, facility: {kind: hospital, level: 3}, service_date: "2026-01-10", invoice_date: "2026-01-10", invoice_no: "N-1", total: "100.00", in_scope: "100.00", basic_insurance_paid: "0.00"}
  - {at: "2026-01-20T10:00:00+08:00", do: aid, claim: C1, recipient: R1, expenses: [E1]}
  - {at: "2026-01-21T09:00:00+08:00", do: insure, recipient: R1, scheme: resident, from: "2020-01-01"}
  - {at: "2026-01-22T10:00:00+08:00", do: claim, claim: C2, recipient: R1, expenses: [E1], handler: Li.Hua}
  - {at: "2026-01-23T10:00:00+08:00", do: review, claim: C2, reviewer: Zhao.Min}
  - {at: "2026-01-24T10:00:00+08:00", do: approve, claim: C2, approver: Liu.Yang}
  - {at: "2026-01-25T10:00:00+08:00", do: pay, claim: C2, payer: Chen.Fei}
"""


def test_a_refused_claim_and_the_four_signatures_are_explained(tmp_path: Path):
    """An auditor sees why an expense was refused (code, rule and clause, when, on which claim) and,
    once it is aided, who lodged, reviewed, approved and paid it (R-PH-4 [002 3.4, 3.5]). The city
    scheme's insurance clause is its own, [001 二(二)1], not Changning's restatement."""
    path = tmp_path / "refused.yaml"
    path.write_text(REFUSED, encoding="utf-8")
    result = _invoke("--scenario", str(path), "--expense", "E1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    [refusal] = data["refusals"]
    assert (refusal["code"], refusal["rule"], refusal["recorded_at"]) == ("NOT_INSURED", "R-INS-1", "2026-01-20T10:00:00+08:00")
    assert refusal["message"].endswith("[001 二(二)1]"), refusal
    officers = data["decision"]["officers"]
    assert (officers["handler"], officers["reviewer"], officers["approver"], officers["payer"]) == ("Li.Hua", "Zhao.Min", "Liu.Yang", "Chen.Fei")
    text = _invoke("--scenario", str(path), "--expense", "E1").output
    assert "Refused 拒绝 2026-01-20T10:00:00+08:00" in text and "NOT_INSURED (R-INS-1)" in text
    assert "payer 拨付 Chen.Fei" in text


def test_an_explanation_reads_the_person_not_the_district(tmp_path: Path, monkeypatch):
    """Issue 16 (explain one payout, p99 < 50 ms): the refusals come from the person's own stream,
    where a claim refused as it was lodged is named too; the district's directory (a read of the
    whole log in a new process) is never built for an explanation."""
    import commands.lookup

    def whole_log(app):
        raise AssertionError("an explanation read the district's directory")

    monkeypatch.setattr(commands.lookup, "directory", whole_log)
    path = tmp_path / "refused.yaml"
    path.write_text(REFUSED, encoding="utf-8")
    result = _invoke("--scenario", str(path), "--expense", "E1", "--json")
    assert result.exit_code == 0, result.output
    [refusal] = json.loads(result.output)["refusals"]
    assert (refusal["code"], refusal["channel"], refusal["lodged_on"]) == ("NOT_INSURED", "post_hoc", "2026-01-20")


def test_each_rule_is_cited_with_its_own_clause_and_offsets_are_shown():
    """A city decision names R-CAP-2 with the clause that says it ([002 4.3] 按发票日期所在年度), not
    only the rates' [001 二(二)4]; a payout that went to a clearing case says so (R-CLR-3): in
    clearing-late-insurance-cap-room E2's supplementary 8000.00 all offsets E1's case."""
    path = Path(__file__).resolve().parents[1] / "scenarios" / "clearing-late-insurance-cap-room.yaml"
    data = json.loads(_invoke("--scenario", str(path), "--expense", "E2", "--json").output)
    [city] = [s for s in data["decision"]["schemes"] if s["scheme"] == "shanghai.medical_aid"]
    cited = {c["rule"]: c["clause"] for c in city["citations"]}
    assert cited["R-CAP-2"] == "[002 4.3]" and cited["R-INS-3"].startswith("[001 四")
    first, supplementary = data["payouts"]
    assert (first["amount"], first["offsets"], first["to_person"]) == ("8000.00", [], "8000.00")
    [offset] = supplementary["offsets"]
    assert (supplementary["amount"], offset["amount"], offset["expense"], supplementary["to_person"]) == ("8000.00", "8000.00", "E1", "0.00")
    text = _invoke("--scenario", str(path), "--expense", "E2").output
    assert "R-CAP-2 [002 4.3]" in text and "0.00 reached the person" in text


def test_an_amended_rate_is_shown_as_an_amendment_of_its_clause(tmp_path: Path):
    """A rate set by ``set_parameter`` is the office's amendment, not the text: the explanation
    says it amends [001 二(二)4] (which says 80% for low-income inpatients), not that it is policy."""
    path = tmp_path / "amended.yaml"
    path.write_text("""name: explain-amended
jurisdiction: shanghai
steps:
  - {at: "2026-01-05T09:00:00+08:00", do: enrol, recipient: R1, id_number: "310105195803122013", name: 王秀英, street: 华阳路街道}
  - {at: "2026-01-05T09:01:00+08:00", do: grant_category, recipient: R1, category: low_income, from: "2025-01-01"}
  - {at: "2026-01-05T09:02:00+08:00", do: insure, recipient: R1, scheme: resident, from: "2020-01-01"}
  - {at: "2026-01-06T09:00:00+08:00", do: set_parameter, name: shanghai.medical_aid.rate.inpatient.low_income, value: "0.70", effective_from: "2026-01-01"}
  - {at: "2026-02-10T10:00:00+08:00", do: record_expense, expense: E1, recipient: R1, visit_type: inpatient, facility: {kind: hospital, level: 3}, service_date: "2026-02-10", invoice_date: "2026-02-10", invoice_no: "A-1", total: "1000.00", in_scope: "1000.00", basic_insurance_paid: "0.00"}
  - {at: "2026-02-20T10:00:00+08:00", do: aid, claim: C1, recipient: R1, expenses: [E1]}
""", encoding="utf-8")
    data = json.loads(_invoke("--scenario", str(path), "--expense", "E1", "--json").output)
    [city] = [s for s in data["decision"]["schemes"] if s["scheme"] == "shanghai.medical_aid"]
    rate = city["rate"]
    assert (rate["value"], rate["amended"], rate["amends_clause"], rate["setting_zh"]) == ("0.70", True, "[001 二(二)4]", "修订 amendment")
    assert "amendment 修订 of [001 二(二)4]" in _invoke("--scenario", str(path), "--expense", "E1").output


def test_a_deadline_override_and_its_reason_are_kept_for_the_auditor(tmp_path: Path):
    """R-PH-5 [002 4.3]: a claim lodged past the six-month window on the district's decision keeps
    the reason; the explanation shows it beside the signatures."""
    path = tmp_path / "override.yaml"
    path.write_text("""name: explain-override
jurisdiction: shanghai.changning
steps:
  - {at: "2026-01-05T09:00:00+08:00", do: enrol, recipient: R1, id_number: "310105195803122013", name: 王秀英, street: 华阳路街道}
  - {at: "2026-01-05T09:01:00+08:00", do: grant_category, recipient: R1, category: dibao, from: "2025-01-01"}
  - {at: "2026-01-05T09:02:00+08:00", do: insure, recipient: R1, scheme: resident, from: "2020-01-01"}
  - {at: "2026-01-05T10:00:00+08:00", do: record_expense, expense: E1, recipient: R1, visit_type: outpatient, facility: {kind: hospital, level: 3}, service_date: "2025-08-01", invoice_date: "2025-08-01", invoice_no: "O-1", total: "100.00", in_scope: "100.00", basic_insurance_paid: "0.00"}
  - {at: "2026-04-10T10:00:00+08:00", do: claim, claim: C1, recipient: R1, expenses: [E1], handler: Li.Hua, deadline_override: "hospitalised abroad, memo 2026-17"}
  - {at: "2026-04-11T10:00:00+08:00", do: review, claim: C1, reviewer: Zhao.Min}
  - {at: "2026-04-12T10:00:00+08:00", do: approve, claim: C1, approver: Liu.Yang}
""", encoding="utf-8")
    data = json.loads(_invoke("--scenario", str(path), "--expense", "E1", "--json").output)
    assert data["decision"]["officers"]["deadline_override"] == "hospitalised abroad, memo 2026-17"
    assert "window overridden 逾期特批 (R-PH-5 [002 4.3]): hospitalised abroad" in _invoke("--scenario", str(path), "--expense", "E1").output


def test_a_suspended_part_names_its_suspension_and_the_review_that_lifted_it():
    """R-4L-4 [000 第四条(三)]: V10's 四医联动 part is not applied because V9 passed July's visit count;
    the explanation names V9, the day, and the district review that reopened it."""
    path = Path(__file__).resolve().parents[1] / "scenarios" / "four-linkage-visit-count.yaml"
    data = json.loads(_invoke("--scenario", str(path), "--expense", "V10", "--json").output)
    [s] = data["suspensions"]
    assert (s["expense"], s["from"], s["lifted"], s["reviewer"], s["clause"]) == ("V9", "2026-07-09", "2026-07-20", "D-cn-02", "[000 第四条(三)]")
    assert "started by expense V9 (R-4L-4 [000 第四条(三)]): lifted 再行开通 on 2026-07-20" in _invoke("--scenario", str(path), "--expense", "V10").output
