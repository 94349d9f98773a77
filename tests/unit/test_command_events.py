"""Given / when / then over events, on the in-memory ledger: for each command, the events it
records (or the rejection it returns, recording nothing)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent

from commands import models as m
from commands.app import LedgerApp, Result
from infra.wiring import memory_app
from ledger.aggregates import Claim, PolicyLedger, Recipient
from ledger.values import CST

DIBAO_ID = "310105195803122013"
LOW_INCOME_ID = "310105196207154427"
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "CN-CHC-HY"}
TERTIARY = {"kind": "hospital", "level": 3, "code": "SH-H3-RUIJIN"}


def t(day: str, hm: str = "10:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{hm}:00+08:00")


@pytest.fixture
def ledger() -> LedgerApp:
    return memory_app("shanghai.changning", published_at=datetime(2023, 12, 31, 8, tzinfo=CST))


def when(app: LedgerApp, cmd: m.Command) -> tuple[Result, list[Any]]:
    """Run one command; return its result and the events it recorded, in order."""
    before = app.recorder.max_notification_id() or 0
    result = app.run(cmd)
    new = app.recorder.select_notifications(start=before + 1, limit=10_000)
    return result, [app.mapper.to_domain_event(n) for n in new]


def names(events: list[Any]) -> list[str]:
    return [type(e).__qualname__ for e in events]


def given_recipient(app: LedgerApp, id_number: str = DIBAO_ID, category: str = "dibao", insured: bool = True) -> str:
    rid = app.run(m.Enrol(id_number=id_number, name="王秀英", street="华阳路街道", at=t("2024-01-05", "09:00"))).ids["recipient"]
    app.run(m.GrantCategory(recipient=rid, category=category, valid_from=date(2020, 1, 1), at=t("2024-01-05", "09:01")))
    if insured:
        app.run(m.Insure(recipient=rid, scheme="resident", valid_from=date(2015, 1, 1), at=t("2024-01-05", "09:02")))
    return rid


def expense(rid: str, day: str = "2024-03-04", facility: dict | None = None, invoice_no: str = "HY2400001", **extra: Any) -> m.RecordExpense:
    fields = dict(
        recipient=rid,
        visit_type="outpatient",
        facility=facility or CHC,
        service_date=day,
        invoice_date=day,
        invoice_no=invoice_no,
        total="150.00",
        in_scope="120.00",
        basic_insurance_paid="30.00",
        at=t(day, "15:00"),
    )
    fields.update(extra)
    return m.RecordExpense.model_validate(fields)


# --------------------------------------------------------------------------------------- recipients


def test_enrol_records_enrolled_with_the_person(ledger: LedgerApp) -> None:
    result, events = when(ledger, m.Enrol(id_number=DIBAO_ID, name="王秀英", street="华阳路街道", at=t("2024-01-05")))
    assert result.status == "accepted"
    assert names(events) == ["Recipient.Enrolled"]
    [e] = events
    assert e.originator_id == ledger.recipient_id_for(DIBAO_ID)
    assert (e.id_number, e.name, e.street) == (DIBAO_ID, "王秀英", "华阳路街道")
    assert e.timestamp == t("2024-01-05")


def test_enrolling_the_same_person_twice_is_refused_and_records_nothing(ledger: LedgerApp) -> None:
    given_recipient(ledger)
    before = ledger.recorder.max_notification_id()
    with pytest.raises(Exception) as refused:
        ledger.run(m.Enrol(id_number=DIBAO_ID, name="王秀英", at=t("2024-02-01")))
    assert getattr(refused.value, "field", None) == "id_number"
    assert ledger.recorder.max_notification_id() == before


def test_grant_and_revoke_category_carry_their_effective_dates(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    _, granted = when(ledger, m.GrantCategory(recipient=rid, category="low_income", valid_from=date(2025, 3, 1), valid_to=date(2025, 12, 31), at=t("2025-03-10")))
    assert names(granted) == ["Recipient.CategoryGranted"]
    assert (granted[0].category, granted[0].valid_from, granted[0].valid_to) == ("low_income", "2025-03-01", "2025-12-31")
    _, revoked = when(ledger, m.RevokeCategory(recipient=rid, category="dibao", valid_from=date(2025, 1, 1), at=t("2025-03-11")))
    assert names(revoked) == ["Recipient.CategoryRevoked"]
    assert (revoked[0].category, revoked[0].valid_from) == ("dibao", "2025-01-01")
    assert revoked[0].timestamp == t("2025-03-11")


def test_expenditure_poor_2_below_the_40_percent_threshold_is_rejected(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    result, events = when(ledger, m.GrantCategory.model_validate({
        "recipient": rid, "category": "expenditure_poor_2", "from": "2025-01-01",
        "household_medical_spending_12m": "10000.00", "household_annual_disposable_income": "60000.00", "at": t("2025-01-10")}))
    assert (result.status, result.code, result.rule) == ("rejected", "NOT_ELIGIBLE", "R-CAT-4")
    assert events == []


def test_insure_records_the_enrolment_with_its_subsidy(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger, insured=False)
    _, events = when(ledger, m.Insure(recipient=rid, scheme="resident", valid_from=date(2021, 1, 1), at=t("2024-01-06")))
    assert names(events) == ["Recipient.InsuranceEnrolmentStarted"]
    e = events[0]
    assert (e.scheme, e.valid_from, e.valid_to) == ("resident", "2021-01-01", None)
    assert e.subsidy["kind"] == "contribution_paid_in_full" and e.subsidy["rule"] == "R-INS-2"
    _, ended = when(ledger, m.EndInsurance.model_validate({"recipient": rid, "scheme": "resident", "to": "2025-06-30", "at": t("2025-07-01")}))
    assert names(ended) == ["Recipient.InsuranceEnrolmentEnded"] and ended[0].valid_to == "2025-06-30"


def test_a_category_granted_after_the_enrolment_pays_its_subsidy_once(ledger: LedgerApp) -> None:
    """R-INS-2 [001 二(二)1]: the enrolment was recorded before the category held on its start date;
    the grant pays the contribution then, once for the year, and only for enrolments it covers."""
    rid = ledger.run(m.Enrol(id_number=DIBAO_ID, name="王秀英", street="华阳路街道", at=t("2024-01-05", "09:00"))).ids["recipient"]
    ledger.run(m.Insure(recipient=rid, scheme="resident", valid_from=date(2024, 1, 1), at=t("2024-01-05", "09:01")))
    _, later = when(ledger, m.GrantCategory(recipient=rid, category="dibao", valid_from=date(2024, 2, 1), at=t("2024-01-06")))
    assert "Recipient.EnrolmentSubsidised" not in names(later)  # not held on 2024-01-01
    _, events = when(ledger, m.GrantCategory(recipient=rid, category="dibao", valid_from=date(2023, 1, 1), at=t("2024-01-07")))
    [e] = [x for x in events if isinstance(x, Recipient.EnrolmentSubsidised)]
    assert (e.scheme, e.valid_from, e.subsidy["kind"], e.subsidy["rule"]) == ("resident", "2024-01-01", "contribution_paid_in_full", "R-INS-2")
    assert names(events).index("Recipient.CategoryGranted") < names(events).index("Recipient.EnrolmentSubsidised")
    _, again = when(ledger, m.GrantCategory(recipient=rid, category="dibao", valid_from=date(2023, 1, 1), at=t("2024-01-08")))
    assert "Recipient.EnrolmentSubsidised" not in names(again)
    assert len(ledger.recipient(rid).subsidies_of_year(2024)) == 1


def test_join_mutual_aid_and_consent(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger, category="mutual_aid_participant", insured=False)
    _, joined = when(ledger, m.JoinMutualAid(recipient=rid, year=2025, has_home_insurance=True, home_insurance_deductible="1500", at=t("2025-01-08")))
    assert names(joined) == ["Recipient.MutualAidContributionPaid"]
    assert (joined[0].year, joined[0].has_home_insurance, joined[0].home_insurance_deductible) == (2025, True, Decimal("1500.00"))
    _, consent = when(ledger, m.ConsentAutoClaim(recipient=rid, signed=True, at=t("2026-04-02")))
    assert names(consent) == ["Recipient.AutoClaimConsentChanged"] and consent[0].signed is True


# --------------------------------------------------------------------------------------- expenses


def test_record_expense_records_the_resolved_fields(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    result, events = when(ledger, expense(rid, referred=False))
    # the ledger-wide receipt index opens with the receipt (R-CLR-1(b)), in the same transaction
    assert names(events) == ["Recipient.ExpenseRecorded", "Receipt.Opened", "Receipt.ExpenseNoted"]
    assert (events[1].facility_code, events[1].invoice_no) == ("cn-chc-hy", "hy2400001")  # compared normalised
    e = events[0]
    assert result.ids["expense"] == e.expense_id == f"{rid}:1"
    assert e.facility == {**CHC, "out_of_province": False}
    assert (e.service_date, e.invoice_date, e.invoice_no) == ("2024-03-04", "2024-03-04", "HY2400001")
    assert (e.total, e.in_scope, e.basic_insurance_paid) == (Decimal("150.00"), Decimal("120.00"), Decimal("30.00"))
    assert isinstance(e.total, Decimal)
    assert e.duplicate_of is None and e.visit_type == "outpatient" and e.critical_illness_evidence == "none"
    _, second = when(ledger, expense(rid, day="2024-03-05", invoice_no="HY2400002"))
    assert second[0].expense_id == f"{rid}:2"


def test_the_same_receipt_twice_is_kept_and_flagged_as_a_duplicate(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    first, _ = when(ledger, expense(rid))
    again, events = when(ledger, expense(rid, source="claimant", at=t("2024-03-20")))
    assert names(events) == ["Recipient.ExpenseRecorded", "Receipt.ExpenseNoted"]
    assert events[0].duplicate_of == first.ids["expense"] == again.ids["duplicate_of"]
    assert events[0].expense_id != first.ids["expense"]


def test_one_stop_decides_and_pays_at_once(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    eid = ledger.run(expense(rid)).ids["expense"]
    result, events = when(ledger, m.OneStop(expense=eid, at=t("2024-03-04", "15:01")))
    assert result.status == "accepted"
    assert names(events) == ["Recipient.AidDecided", "Recipient.AidPaid", "Receipt.Aided"]
    decided, paid, aided = events
    assert aided.expense_id == eid and aided.channel == "one_stop"
    assert decided.channel == "one_stop" and decided.decisions[0]["expense"] == eid
    assert decided.knowledge["recipient_version"] >= 1 and "policy_version" in decided.knowledge
    assert paid.payments[0]["total"] == decided.decisions[0]["total"] == result.ids["aid"]
    assert Decimal(result.ids["aid"]) > 0


def test_settle_insurance_after_aid_opens_a_clearing_case(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    eid = ledger.run(expense(rid, facility=TERTIARY, visit_type="inpatient", total="20000.00", in_scope="16000.00", basic_insurance_paid="10000.00")).ids["expense"]
    assert ledger.aid(rid, [eid], t("2024-04-01")).status == "accepted"
    _, events = when(ledger, m.SettleInsurance(expense=eid, scheme="critical_illness", amount="3900.00", at=t("2024-05-02")))
    assert names(events) == ["Recipient.InsuranceSettled", "Recipient.AidReassessed", "Recipient.ClearingCaseOpened"]
    settled, _, case = events
    assert (settled.scheme, settled.amount) == ("critical_illness", Decimal("3900.00"))
    assert case.trigger == "late_insurance" and case.expense_id == eid and case.amount > 0


def test_settlements_beyond_the_in_scope_amount_are_recorded_and_self_pay_stops_at_zero(ledger: LedgerApp) -> None:
    # given a receipt: in scope 120.00, basic insurance 30.00 (self-pay 90.00)
    rid = given_recipient(ledger)
    eid = ledger.run(expense(rid)).ids["expense"]
    # when supplements pay 95.00 (30.00 + 95.00 > 120.00), then the payment is recorded as made
    _, events = when(ledger, m.SettleInsurance(expense=eid, scheme="other", amount="95.00", at=t("2024-04-01")))
    assert names(events) == ["Recipient.InsuranceSettled"] and events[0].amount == Decimal("95.00")
    # and self-pay is 0.00, never below zero (R-INS-3 [001 四])
    assert ledger.recipient(rid).expenses[eid].facts.self_pay() == Decimal("0.00")


# --------------------------------------------------------------------------------------- claims


def test_claim_review_approve_pay(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    eid = ledger.run(expense(rid, facility=TERTIARY)).ids["expense"]
    lodged, events = when(ledger, m.LodgeClaim(recipient=rid, expenses=[eid], handler="HY-经办-01", at=t("2024-04-01")))
    assert set(names(events)) == {"Claim.Lodged", "Recipient.ClaimAttached"}
    cid = lodged.ids["claim"]
    claim_lodged = next(e for e in events if isinstance(e, Claim.Lodged))
    assert (claim_lodged.handler, claim_lodged.channel, claim_lodged.expense_ids, claim_lodged.street) == ("HY-经办-01", "post_hoc", [eid], "华阳路街道")

    _, reviewed = when(ledger, m.Review(claim=cid, reviewer="HY-审核-01", at=t("2024-04-02")))
    assert names(reviewed) == ["Claim.Reviewed"]
    _, approved = when(ledger, m.Approve(claim=cid, approver="区医保局-审批-01", at=t("2024-04-05")))
    assert names(approved) == ["Claim.Approved", "Recipient.AidDecided", "Receipt.Aided"]
    decision = approved[1].decisions[0]
    _, paid = when(ledger, m.Pay(claim=cid, at=t("2024-04-25")))
    assert set(names(paid)) == {"Claim.Paid", "Recipient.AidPaid"}
    claim_paid = next(e for e in paid if isinstance(e, Claim.Paid))
    assert claim_paid.total == Decimal(decision["total"]) > 0


def test_the_same_officer_twice_is_rejected_and_records_nothing(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    eid = ledger.run(expense(rid, facility=TERTIARY)).ids["expense"]
    cid = ledger.run(m.LodgeClaim(recipient=rid, expenses=[eid], handler="HY-01", at=t("2024-04-01"))).ids["claim"]
    result, events = when(ledger, m.Review(claim=cid, reviewer="HY-01", at=t("2024-04-02")))
    assert (result.status, result.code, result.rule) == ("rejected", "SAME_OFFICER", "R-PH-4")
    assert events == []


def test_pay_before_approve_is_rejected(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    eid = ledger.run(expense(rid, facility=TERTIARY)).ids["expense"]
    cid = ledger.run(m.LodgeClaim(recipient=rid, expenses=[eid], handler="HY-01", at=t("2024-04-01"))).ids["claim"]
    result, events = when(ledger, m.Pay(claim=cid, at=t("2024-04-02")))
    assert (result.status, result.code) == ("rejected", "NOT_APPROVED") and events == []


def test_a_claim_on_an_aided_receipt_is_rejected_and_the_attempt_recorded(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    eid = ledger.run(expense(rid)).ids["expense"]
    ledger.run(m.OneStop(expense=eid, at=t("2024-03-04", "15:01")))
    copy = ledger.run(expense(rid, source="claimant", at=t("2024-03-20"))).ids["expense"]
    result, events = when(ledger, m.LodgeClaim(recipient=rid, expenses=[copy], handler="HY-01", at=t("2024-03-21")))
    assert (result.status, result.code, result.rule) == ("rejected", "DUPLICATE", "R-PH-7")
    assert set(names(events)) == {"Claim.Lodged", "Claim.Rejected", "Recipient.ClaimAttached", "Recipient.DuplicateAttempted"}
    # the person's stream names the refused claim, reserving nothing (explain and the timeline read it)
    named = next(e for e in events if isinstance(e, Recipient.ClaimAttached))
    assert (named.claim_id, named.expense_ids, named.attached) == (result.ids["claim"], [copy], False)
    assert ledger.recipient(rid).expenses[copy].claim_id is None
    attempt = next(e for e in events if isinstance(e, Recipient.DuplicateAttempted))
    assert (attempt.expense_id, attempt.aided_as) == (copy, eid)
    rejected = next(e for e in events if isinstance(e, Claim.Rejected))
    assert rejected.code == "DUPLICATE" and rejected.expense_id == copy


def test_auto_claims_lodge_a_consenting_recipients_expenses_as_a_batch(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    other = given_recipient(ledger, id_number=LOW_INCOME_ID, category="low_income")
    ledger.run(m.ConsentAutoClaim(recipient=rid, signed=True, at=t("2026-04-02")))
    mine = ledger.run(expense(rid, day="2026-04-10", facility=TERTIARY)).ids["expense"]
    ledger.run(expense(other, day="2026-04-11", facility=TERTIARY, invoice_no="X2"))
    result, events = when(ledger, m.AutoClaims(month="2026-04", handler="auto-batch", at=t("2026-05-11")))
    assert len(result.ids["claims"]) == 1
    lodged = [e for e in events if isinstance(e, Claim.Lodged)]
    assert [(e.channel, e.expense_ids, e.recipient_id, e.handler) for e in lodged] == [("auto", [mine], rid, "auto-batch")]
    # R-PH-4: the batch lodges; review, approval and payment wait for their officers
    assert names(events)[-1] == "ClaimBatch.Opened" and not {"Claim.Reviewed", "Claim.Approved", "Claim.Paid"} & set(names(events))
    for role, officer in (("reviewer", "HY-审核-01"), ("approver", "区医保局-审批-01"), ("payer", "区医保局-拨付-01")):
        _, signed = when(ledger, m.SignBatch(batch=result.ids["batch"], role=role, officer=officer, at=t("2026-05-12")))
        assert names(signed)[-1] == "ClaimBatch.Signed"
    assert "Claim.Paid" in names(signed) and ledger.claim(result.ids["claims"][0]).payer == "区医保局-拨付-01"
    _, again = when(ledger, m.AutoClaims(month="2026-04", at=t("2026-05-12")))
    assert not any(isinstance(e, Claim.Lodged) for e in again)  # nothing left to claim


# --------------------------------------------------------------------------------------- policy, district, clearing


def test_set_parameter_records_an_amendment_and_reassesses(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger, id_number=LOW_INCOME_ID, category="expenditure_poor_2")
    eid = ledger.run(expense(rid, day="2025-02-03", facility=TERTIARY, visit_type="inpatient", total="20000.00", in_scope="16000.00", basic_insurance_paid="10000.00")).ids["expense"]
    ledger.aid(rid, [eid], t("2025-03-01"))
    result, events = when(ledger, m.SetParameter(name="shanghai.medical_aid.rate.inpatient.expenditure_poor_2", value="0.60", effective_from=date(2025, 1, 1), at=t("2025-07-15")))
    assert result.ids["recipients_changed"] == 1
    assert names(events) == ["PolicyLedger.ParameterAmended", "Recipient.AidReassessed", "Recipient.SupplementaryPayoutDue"]
    assert events[0].version["name"] == "shanghai.medical_aid.rate.inpatient.expenditure_poor_2"
    assert events[0].originator_id == PolicyLedger.ID
    supp = events[2]
    assert supp.trigger == "parameter_change" and supp.amount == Decimal("600.00")  # (0.60 − 0.50) × 6,000 self-pay
    _, paid = when(ledger, m.PaySupplementary(recipient=rid, at=t("2025-07-25")))
    assert names(paid) == ["Recipient.AidPaid"] and paid[0].channel == "supplementary"


def test_a_floor_breaking_amendment_is_rejected_and_records_nothing(ledger: LedgerApp) -> None:
    result, events = when(ledger, m.SetParameter(name="shanghai.medical_aid.rate.inpatient.expenditure_poor_2", value="0.40", effective_from=date(2025, 1, 1), at=t("2025-07-15")))
    assert (result.status, result.code) == ("rejected", "POLICY_FLOOR") and events == []


def test_suspension_and_its_lifting(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    started = []
    for day in range(1, 10):  # the ninth community-centre visit in a month (R-4L-4)
        eid = ledger.run(expense(rid, day=f"2024-05-{day:02d}", invoice_no=f"HY24{day:05d}")).ids["expense"]
        _, events = when(ledger, m.OneStop(expense=eid, at=t(f"2024-05-{day:02d}", "15:01")))
        started += [e for e in events if isinstance(e, Recipient.SuspensionStarted)]
    assert [(e.scheme, e.valid_from) for e in started] == [("changning.four_linkage", "2024-05-09")]
    _, lifted = when(ledger, m.LiftSuspension(recipient=rid, reviewer="区医保局-复核-01", at=t("2024-06-03")))
    assert names(lifted) == ["Recipient.SuspensionLifted"] and lifted[0].lifted_on == "2024-06-03"


def test_social_help_once_per_period(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    _, events = when(ledger, m.SocialHelp(recipient=rid, amount="3000", organisation="长宁区慈善基金会", at=t("2024-06-01")))
    assert names(events) == ["Recipient.SocialHelpGranted"] and events[0].amount == Decimal("3000.00")
    result, again = when(ledger, m.SocialHelp(recipient=rid, amount="1000", at=t("2024-07-01")))
    assert (result.code, again) == ("ALREADY_GRANTED", [])


def test_repayment_and_write_off_settle_clearing_cases(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    eid = ledger.run(expense(rid, facility=TERTIARY, visit_type="inpatient", total="20000.00", in_scope="16000.00", basic_insurance_paid="10000.00")).ids["expense"]
    ledger.aid(rid, [eid], t("2024-04-01"))
    ledger.run(m.SettleInsurance(expense=eid, scheme="critical_illness", amount="3900.00", at=t("2024-05-02")))
    owed = ledger.recipient(rid).open_balance()
    assert owed == Decimal("3510.00")  # 90% of the 3,900 that insurance now pays
    _, repaid = when(ledger, m.Repay(recipient=rid, amount="1000.00", at=t("2024-05-20")))
    assert names(repaid) == ["Recipient.RepaymentReceived"] and repaid[0].amount == Decimal("1000.00")
    result, refused = when(ledger, m.WriteOff(recipient=rid, officer="清算-01", approver="清算-01", at=t("2024-06-01")))
    assert (result.code, refused) == ("SAME_OFFICER", [])
    _, written = when(ledger, m.WriteOff(recipient=rid, officer="清算-01", approver="审批-02", at=t("2024-06-01")))
    assert names(written) == ["Recipient.WriteOffApproved"]
    assert sum(Decimal(a["amount"]) for a in written[0].allocations) == owed - Decimal("1000.00")
    assert ledger.recipient(rid).open_balance() == 0


def test_a_clearing_run_with_nothing_new_records_nothing(ledger: LedgerApp) -> None:
    rid = given_recipient(ledger)
    eid = ledger.run(expense(rid)).ids["expense"]
    ledger.run(m.OneStop(expense=eid, at=t("2024-03-04", "15:01")))
    result, events = when(ledger, m.ClearingRun(at=t("2024-04-01")))
    assert result.ids["recipients_changed"] == 0 and events == []


# --------------------------------------------------------------------------------------- upcasting


def test_a_version_1_enrolment_without_street_is_upcast_with_an_empty_street(ledger: LedgerApp) -> None:
    """Recipient.Enrolled is class_version 2; v1 events had no ``street``. Store a v1 event's state
    (written by the app's own mapper, personal fields sealed as usual), then load it."""
    assert Recipient.Enrolled.class_version == 2
    rid = ledger.recipient_id_for(DIBAO_ID)
    person = Recipient._create(Recipient.Enrolled, id=rid, timestamp=t("2019-05-06"), id_number=DIBAO_ID, name="王秀英", street="华阳路街道")
    [v2] = person.collect_events()
    stored = ledger.mapper.to_stored_event(v2)
    state = ledger.mapper.transcoder.decode(stored.state)
    assert state.pop("class_version") == 2 and state.pop("street") == "华阳路街道"
    v1 = StoredEvent(originator_id=rid, originator_version=1, topic=stored.topic, state=ledger.mapper.transcoder.encode(state))
    ledger.recorder.insert_events([v1])

    [event] = list(ledger.events.get(rid))
    assert isinstance(event, Recipient.Enrolled) and event.street == ""
    r = ledger.recipient(rid)
    assert (r.street, r.name, r.id_number) == ("", "王秀英", DIBAO_ID)
    # the upcast aggregate takes new events as usual
    ledger.run(m.GrantCategory(recipient=str(rid), category="dibao", valid_from=date(2020, 1, 1), at=t("2024-01-06")))
    assert ledger.recipient(rid).version == 2
