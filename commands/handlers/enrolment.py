"""Enrolment: a person enters the ledger, holds categories, is insured, joins mutual aid, consents
to 免申即享 (RULES §2, §3; R-CAT-*, R-INS-1, R-INS-2, R-MA-*, R-PH-3).

Each handler takes the ledger (the unit of work, ``commands.core.LedgerCore``) and one
command, and returns its ``Result``; ``commands.handlers.HANDLERS`` registers them."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from eventsourcing.application import AggregateNotFoundError

from commands import models as m
from commands.core import LedgerCore, Result
from ledger import errors
from ledger.aggregates import Recipient
from ledger.eligibility import categories_on, lyg_contribution_paid_in_full
from ledger.money import ZERO, fmt, money
from ledger.values import ERASED, Scheme, Trigger, age_on




def enrol(app: LedgerCore, cmd: m.Enrol) -> Result:
    moment = app._now(cmd.at)
    rid = app.recipient_id_for(cmd.id_number)
    try:
        app.repository.get(rid)
        raise errors.InvalidInput(
            "id_number: a recipient with this resident id number is already enrolled",
            code="ALREADY_ENROLLED", field="id_number",  # HTTP answers 409 (ADR 0019); the CLI exits 2 as before
        )
    except AggregateNotFoundError:
        pass
    r = Recipient._create(  # noqa: SLF001
        Recipient.Enrolled, id=rid, timestamp=moment, id_number=cmd.id_number, name=cmd.name, street=cmd.street
    )
    return app._commit(cmd, Result(ids={"recipient": str(rid)}), r)


def grant_category(app: LedgerCore, cmd: m.GrantCategory) -> Result:
    """A category held over [from, to] (RULES §2). R-CAT-4: class II needs household medical
    spending ≥ 40% of annual disposable income [001 四], checked when the figures are given."""
    r = app.recipient(cmd.recipient)
    if cmd.category.value == "expenditure_poor_2":
        spend, income = cmd.household_medical_spending_12m, cmd.household_annual_disposable_income
        if spend is not None and income is not None and spend < income * Decimal("0.40"):
            raise errors.NotEligible(
                f"expenditure-poor class II needs household medical spending ≥ 40% of annual disposable "
                f"income; {spend} < 40% of {income} [001 四]",
                rule="R-CAT-4",
                field="household_medical_spending_12m",
            )
    moment = app._now(cmd.at)
    means = None
    if cmd.household_medical_spending_12m is not None or cmd.household_annual_disposable_income is not None:
        means = {
            "household_medical_spending_12m": fmt(cmd.household_medical_spending_12m),
            "household_annual_disposable_income": fmt(cmd.household_annual_disposable_income),
            "rule": "R-CAT-4",
        }
    r.trigger_event(
        Recipient.CategoryGranted,
        timestamp=moment,
        category=cmd.category.value,
        valid_from=cmd.valid_from.isoformat(),
        valid_to=cmd.valid_to.isoformat() if cmd.valid_to else None,
        subtype=cmd.subtype,
        determined_on=cmd.determined_on.isoformat() if cmd.determined_on else None,
        means_test_expenses_from=cmd.means_test_expenses_from.isoformat() if cmd.means_test_expenses_from else None,
        means_test=means,
    )
    _subsidies_now_due(app, r, moment, cmd.valid_from, cmd.valid_to)
    app._reconcile(r, Trigger.CATEGORY_CHANGE.value, moment, {"category": cmd.category.value, "granted_from": cmd.valid_from.isoformat()})
    return app._commit(cmd, Result(), r)


def _subsidies_now_due(app: LedgerCore, r: Recipient, moment: Any, granted_from: date, granted_to: date | None) -> None:
    """R-INS-2 [001 二(二)1; 004 四(一)] for enrolments recorded before the category that pays
    their subsidy: a category granted now over [granted_from, granted_to], held on a
    resident-insurance enrolment's start date, pays what that year's contribution has not had yet
    (in full, or the fixed subsidy less what was paid), whatever order the two were recorded in.
    A category revoked later takes nothing back: the contribution was paid (ADR 0007)."""
    for f in sorted(r.insurance_facts, key=lambda f: (f.valid_from, f.recorded_at)):
        if f.kind != "start" or f.scheme != "resident" or f.valid_from < granted_from or (granted_to is not None and f.valid_from > granted_to):
            continue
        try:
            subsidy = _enrolment_subsidy(app, r, f.scheme, f.valid_from)
        except errors.PersonalDataErased:  # the age it needs is gone (ADR 0015): the grant stands alone
            continue
        if subsidy is None or (subsidy["kind"] == "fixed_subsidy" and not Decimal(subsidy["amount"])):
            continue
        r.trigger_event(
            Recipient.EnrolmentSubsidised,
            timestamp=moment,
            scheme=f.scheme,
            valid_from=f.valid_from.isoformat(),
            enrolment_at=f.recorded_at.isoformat(),
            subsidy=subsidy,
        )


def revoke_category(app: LedgerCore, cmd: m.RevokeCategory) -> Result:
    """No longer held from a date, possibly in the past (R-TIME-2, R-CLR-1(c))."""
    r = app.recipient(cmd.recipient)
    moment = app._now(cmd.at)
    r.trigger_event(
        Recipient.CategoryRevoked,
        timestamp=moment,
        category=cmd.category.value,
        valid_from=cmd.valid_from.isoformat(),
        reason=cmd.reason,
    )
    app._reconcile(r, Trigger.CATEGORY_CHANGE.value, moment, {"category": cmd.category.value, "revoked_from": cmd.valid_from.isoformat()})
    return app._commit(cmd, Result(), r)


def insure(app: LedgerCore, cmd: m.Insure) -> Result:
    """Shanghai basic insurance enrolment (R-INS-1) and its subsidy (R-INS-2 [001 二(二)1])."""
    r = app.recipient(cmd.recipient)
    moment = app._now(cmd.at)
    subsidy = _enrolment_subsidy(app, r, cmd.scheme.value, cmd.valid_from)
    r.trigger_event(
        Recipient.InsuranceEnrolmentStarted,
        timestamp=moment,
        scheme=cmd.scheme.value,
        valid_from=cmd.valid_from.isoformat(),
        valid_to=cmd.valid_to.isoformat() if cmd.valid_to else None,
        subsidy=subsidy,
    )
    app._reconcile(r, Trigger.CATEGORY_CHANGE.value, moment, {"insurance": cmd.scheme.value})
    return app._commit(cmd, Result(), r)


def _enrolment_subsidy(app: LedgerCore, r: Recipient, scheme: str, valid_from: date) -> dict[str, Any] | None:
    """R-INS-2: who has their resident-insurance contribution paid, and how much. Paid by the
    city aid fund; held categories are those on the enrolment's start date.

    - Shanghai [001 二(二)1]: dibao, special relief, orphans and children in distress in full;
      low-income members aged 60+ a fixed subsidy (PARAMETER ``enrolment_subsidy.low_income_60plus``,
      a local setting). Dibao children, scattered orphans and children in distress also have
      their contribution to the children's inpatient mutual fund 少儿住院互助基金 paid in full
      [001 二(四)2] (``children_fund`` in the subsidy).
    - Lianyungang [004 四(一)]: key recipients who are dibao, destitute (特困供养) or orphans in
      full; every other recipient the county's setting (PARAMETER
      ``lianyungang.medical_aid.enrolment_subsidy.other``, a local setting, 0 until set)."""
    if scheme != "resident":
        return None
    held = categories_on(r.knowledge(), valid_from)
    subsidy = None
    if Scheme.SHANGHAI_MEDICAL_AID.value in app.schemes:
        subsidy = _shanghai_subsidy(app, r, valid_from, {h.category for h in held})
    elif Scheme.LIANYUNGANG.value in app.schemes:
        subsidy = _lianyungang_subsidy(app, valid_from, held)
    return _less_already_paid(subsidy, r.subsidies_of_year(valid_from.year))


def _less_already_paid(subsidy: dict[str, Any] | None, earlier: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A year's contribution is subsidised once (R-INS-2 [001 二(二)1; 004 四(一)]): an enrolment recorded again for a year
    whose contribution was already paid in full carries nothing more, and a fixed subsidy only
    what the year's earlier enrolments did not already pay (a subsidy set since, say)."""
    if subsidy is None or not earlier:
        return subsidy
    if any(s.get("kind") == "contribution_paid_in_full" for s in earlier):
        return None  # the year's whole contribution is paid already: a fixed subsidy would pay it twice
    if subsidy["kind"] == "contribution_paid_in_full":
        return subsidy
    paid = sum((Decimal(s.get("amount") or "0") for s in earlier), ZERO)
    rest = money(Decimal(subsidy["amount"]) - paid)
    if rest <= 0:
        return None
    return dict(subsidy, amount=fmt(rest), already_paid=fmt(paid))


def _age(app: LedgerCore, r: Recipient, on: date, rule: str) -> int:
    if r.id_number == ERASED:
        raise errors.PersonalDataErased(f"{rule} needs the recipient's age, but their personal data was erased (ADR 0015)", rule=rule, field="recipient")
    return age_on(r.id_number, on)


def _shanghai_subsidy(app: LedgerCore, r: Recipient, valid_from: date, held: set[str]) -> dict[str, Any] | None:
    full = held & {"dibao", "special_relief", "orphan", "child_in_distress"}
    if full:
        subsidy: dict[str, Any] = {"kind": "contribution_paid_in_full", "category": sorted(full)[0], "amount": "0.00", "fund": "city", "rule": "R-INS-2", "clause": "[001 二(二)1]"}
        children = held & {"dibao", "orphan", "child_in_distress"}
        if children and _age(app, r, valid_from, "R-INS-2") < 18:
            # [001 二(四)2] 低保家庭儿童及社会散居孤儿、困境儿童基本生活保障对象参加少儿住院互助基金的个人缴费部分给予全额资助
            subsidy["children_fund"] = {"kind": "contribution_paid_in_full", "category": sorted(children)[0], "amount": "0.00", "fund": "city", "rule": "R-INS-2", "clause": "[001 二(四)2]"}
        return subsidy
    if "low_income" in held and _age(app, r, valid_from, "R-INS-2") >= 60:
        v = app.policy().book.lookup(f"{Scheme.SHANGHAI_MEDICAL_AID.value}.enrolment_subsidy.low_income_60plus", valid_from)
        amount = money(v.value) if v and v.value is not None else ZERO
        return {"kind": "fixed_subsidy", "category": "low_income", "amount": fmt(amount), "fund": "city", "rule": "R-INS-2", "clause": "[001 二(二)1]", "local_setting": True}
    return None


def _lianyungang_subsidy(app: LedgerCore, valid_from: date, held: list[Any]) -> dict[str, Any] | None:
    scheme = Scheme.LIANYUNGANG.value
    for h in held:
        kind = lyg_contribution_paid_in_full(h.subtype) if h.category == "lyg_key" else None
        if kind is not None:
            return {"kind": "contribution_paid_in_full", "category": h.category, "subtype": kind, "amount": "0.00", "fund": "city", "rule": "R-INS-2", "clause": "[004 四(一)]"}
    if not any(h.category in ("lyg_key", "lyg_extended") for h in held):
        return None
    v = app.policy().book.lookup(f"{scheme}.enrolment_subsidy.other", valid_from)
    amount = money(v.value) if v and v.value is not None else ZERO
    category = next(h.category for h in held if h.category in ("lyg_key", "lyg_extended"))
    return {"kind": "fixed_subsidy", "category": category, "amount": fmt(amount), "fund": "city", "rule": "R-INS-2", "clause": "[004 四(一)]", "local_setting": True}


def end_insurance(app: LedgerCore, cmd: m.EndInsurance) -> Result:
    r = app.recipient(cmd.recipient)
    moment = app._now(cmd.at)
    r.trigger_event(Recipient.InsuranceEnrolmentEnded, timestamp=moment, scheme=cmd.scheme.value, valid_to=cmd.valid_to.isoformat())
    app._reconcile(r, Trigger.CATEGORY_CHANGE.value, moment, {"insurance_ended": cmd.scheme.value})
    return app._commit(cmd, Result(), r)


def join_mutual_aid(app: LedgerCore, cmd: m.JoinMutualAid) -> Result:
    """R-MA [003 三]: the contribution paid for a year, with the home insurance the inpatient rule
    reads (R-MA-2 [003 五(三)]). The latest record of a year is the one in force: a correction, or a
    year's contribution recorded after its expenses were decided, changes what they are due, so
    they are recomputed at once (R-TIME-2, R-CLR-2), as a change of category or insurance is."""
    r = app.recipient(cmd.recipient)
    moment = app._now(cmd.at)
    r.trigger_event(
        Recipient.MutualAidContributionPaid,
        timestamp=moment,
        year=cmd.year,
        has_home_insurance=cmd.has_home_insurance,
        home_insurance_deductible=cmd.home_insurance_deductible,
    )
    app._reconcile(r, Trigger.CATEGORY_CHANGE.value, moment, {"mutual_aid_year": cmd.year})
    return app._commit(cmd, Result(), r)


def consent_auto_claim(app: LedgerCore, cmd: m.ConsentAutoClaim) -> Result:
    """R-PH-3 [002 3.3]: 免申即享 consent signed or withdrawn."""
    r = app.recipient(cmd.recipient)
    r.trigger_event(Recipient.AutoClaimConsentChanged, timestamp=app._now(cmd.at), signed=cmd.signed)
    return app._commit(cmd, Result(), r)
