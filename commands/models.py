"""Commands: the one write path's input, validated by pydantic before anything is touched.

Every command may carry ``command_id`` (a client-supplied id: a retry with the same id is
applied once) and ``at`` (the recorded time; the clock's now when absent). Field validation
errors name the field and the rule; nothing is recorded for an invalid command.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ledger.money import MoneyError, parse_money
from ledger.values import (
    Category,
    Channel,
    Evidence,
    FacilityKind,
    InsuranceScheme,
    SettlementScheme,
    VisitType,
    validate_id_number,
)


def _money(value: Any) -> Decimal:
    try:
        return parse_money(value)
    except MoneyError as exc:
        raise ValueError(str(exc).split(": ", 1)[-1]) from None


Money = Annotated[Decimal, BeforeValidator(_money)]


def _id_number(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string of 18 characters")
    return validate_id_number(value)


IdNumber = Annotated[str, BeforeValidator(_id_number)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Ref = Annotated[str, Field(min_length=1, max_length=200)]


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: str | None = Field(default=None, max_length=200)
    at: datetime | None = None

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("recorded time needs a UTC offset, e.g. 2026-01-05T09:00:00+08:00")
        if value is not None and not 1900 <= value.year <= 2199:
            # the clock keeps recorded times strictly increasing: one at the end of the calendar
            # would leave no room for the next command
            raise ValueError("recorded time must fall in the years 1900–2199")
        return value


class Enrol(Command):
    id_number: IdNumber
    name: Name
    street: str = Field(default="", max_length=200)


class GrantCategory(Command):
    recipient: Ref
    category: Category
    valid_from: date = Field(alias="from")
    valid_to: date | None = Field(default=None, alias="to")
    subtype: str | None = Field(default=None, max_length=100)
    determined_on: date | None = None
    means_test_expenses_from: date | None = None
    household_medical_spending_12m: Money | None = None
    household_annual_disposable_income: Money | None = None
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _period(self) -> "GrantCategory":
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError("to: the period ends before it starts")
        if self.means_test_expenses_from and self.means_test_expenses_from > self.valid_from:
            raise ValueError("means_test_expenses_from: must not be after the grant's start (R-CAT-3)")
        return self


class RevokeCategory(Command):
    recipient: Ref
    category: Category
    valid_from: date = Field(alias="from")
    reason: str | None = Field(default=None, max_length=500)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Insure(Command):
    recipient: Ref
    scheme: InsuranceScheme
    valid_from: date = Field(alias="from")
    valid_to: date | None = Field(default=None, alias="to")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _period(self) -> "Insure":
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError("to: the enrolment ends before it starts")
        return self


class EndInsurance(Command):
    recipient: Ref
    scheme: InsuranceScheme
    valid_to: date = Field(alias="to")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class JoinMutualAid(Command):
    recipient: Ref
    year: int = Field(ge=1990, le=2100)
    has_home_insurance: bool
    home_insurance_deductible: Money = Decimal("0.00")


class ConsentAutoClaim(Command):
    recipient: Ref
    signed: bool


class FacilityIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: FacilityKind
    level: int = Field(ge=1, le=3)
    district_designated: bool = False
    out_of_province: bool = False
    code: str | None = Field(default=None, min_length=1, max_length=100)


class RecordExpense(Command):
    recipient: Ref
    handle: str | None = Field(default=None, max_length=200)
    visit_type: VisitType
    facility: FacilityIn
    service_date: date
    invoice_date: date
    invoice_no: str = Field(min_length=1, max_length=100)
    total: Money
    in_scope: Money
    basic_insurance_paid: Money
    referred: bool = False
    dispensing_only: bool = False
    critical_illness_related: bool = False
    critical_illness_evidence: Evidence = Evidence.NONE
    basic_insurance_settled: bool = True
    source: Literal["settlement_system", "claimant"] = "settlement_system"

    @model_validator(mode="after")
    def _amounts(self) -> "RecordExpense":
        if self.in_scope > self.total:
            raise ValueError("in_scope: the in-scope amount exceeds the total (R-INS-3)")
        if self.basic_insurance_paid > self.in_scope:
            raise ValueError("basic_insurance_paid: insurance paid exceeds the in-scope amount (R-INS-3)")
        if self.invoice_date < self.service_date:
            raise ValueError("invoice_date: the invoice predates the service (discharge) date")
        return self


class SettleInsurance(Command):
    expense: Ref
    scheme: SettlementScheme
    amount: Money

    @field_validator("amount")
    @classmethod
    def _positive(cls, value: Decimal) -> Decimal:
        if value <= 0:
            raise ValueError("an insurance settlement must be positive")
        return value


class OneStop(Command):
    expense: Ref


class LodgeClaim(Command):
    recipient: Ref
    expenses: list[Ref] = Field(min_length=1, max_length=500)
    handler: Ref
    channel: Channel = Channel.POST_HOC
    proxy_id_number: str | None = Field(default=None, max_length=40)
    deadline_override: str | None = Field(default=None, max_length=500)

    @field_validator("channel")
    @classmethod
    def _not_one_stop(cls, value: Channel) -> Channel:
        if value is Channel.ONE_STOP:
            raise ValueError("a claim is post_hoc or auto; one-stop settlement has its own command")
        return value


class Review(Command):
    claim: Ref
    reviewer: Ref


class Approve(Command):
    claim: Ref
    approver: Ref


class Pay(Command):
    claim: Ref


class AutoClaims(Command):
    month: str = Field(pattern=r"^(19|20|21)\d{2}-(0[1-9]|1[0-2])$")


class SetParameter(Command):
    name: str = Field(min_length=3, max_length=200)
    value: Any
    effective_from: date
    effective_to: date | None = None
    reference: str = Field(default="amendment", max_length=500)

    @model_validator(mode="after")
    def _period(self) -> "SetParameter":
        if self.effective_to is not None and self.effective_to < self.effective_from:
            raise ValueError("effective_to: the period ends before it starts")
        return self


class LiftSuspension(Command):
    recipient: Ref
    reviewer: Ref
    scheme: str = "changning.four_linkage"


class SocialHelp(Command):
    recipient: Ref
    amount: Money
    organisation: str | None = Field(default=None, max_length=200)

    @field_validator("amount")
    @classmethod
    def _positive(cls, value: Decimal) -> Decimal:
        if value <= 0:
            raise ValueError("social help must be a positive amount")
        return value


class PaySupplementary(Command):
    recipient: Ref


class Repay(Command):
    recipient: Ref
    amount: Money

    @field_validator("amount")
    @classmethod
    def _positive(cls, value: Decimal) -> Decimal:
        if value <= 0:
            raise ValueError("a repayment must be positive")
        return value


class WriteOff(Command):
    recipient: Ref
    officer: Ref
    approver: Ref
    reason: str | None = Field(default=None, max_length=500)


class ClearingRun(Command):
    """Recompute every decided expense with today's knowledge (R-CLR-2); idempotent."""

    trigger: Literal["parameter_change", "category_change", "late_insurance", "cap_overrun", "duplicate"] = "parameter_change"
    since: datetime | None = None
