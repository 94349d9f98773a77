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
from ledger import errors, subsidy
from ledger.aggregates import Recipient
from ledger.eligibility import categories_on
from ledger.money import fmt
from ledger.values import ERASED, Trigger, age_on




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
    their subsidy: a category granted now, held on a resident-insurance enrolment's start date,
    pays what that year's contribution has not had yet, whatever order the two were recorded in.
    A category revoked later takes nothing back: the contribution was paid (ADR 0007)."""
    for f in subsidy.enrolments_a_grant_covers(r.insurance_facts, granted_from, granted_to):
        try:
            found = _enrolment_subsidy(app, r, f.scheme, f.valid_from)
        except errors.PersonalDataErased:  # the age it needs is gone (ADR 0015): the grant stands alone
            continue
        if subsidy.pays_something(found):
            r.trigger_event(
                Recipient.EnrolmentSubsidised,
                timestamp=moment,
                scheme=f.scheme,
                valid_from=f.valid_from.isoformat(),
                enrolment_at=f.recorded_at.isoformat(),
                subsidy=found,
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
    """R-INS-2 (``ledger.subsidy``): the subsidy of a resident-insurance enrolment starting
    ``valid_from``, on the categories held that day and what the year already carries."""
    if scheme != "resident":
        return None
    return subsidy.enrolment_subsidy(
        app.policy().book, app.schemes, categories_on(r.knowledge(), valid_from), valid_from,
        lambda: _age(app, r, valid_from, "R-INS-2"), r.subsidies_of_year(valid_from.year),
    )


def _age(app: LedgerCore, r: Recipient, on: date, rule: str) -> int:
    if r.id_number == ERASED:
        raise errors.PersonalDataErased(f"{rule} needs the recipient's age, but their personal data was erased (ADR 0015)", rule=rule, field="recipient")
    return age_on(r.id_number, on)


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
