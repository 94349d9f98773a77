"""Commands: the one write path's input, validated by pydantic before anything is touched.

Every command may carry ``command_id`` (a client-supplied id: a retry with the same id is
applied once) and ``at`` (the recorded time; the clock's now when absent). Field validation
errors name the field and the rule; nothing is recorded for an invalid command.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, NoReturn

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ledger.money import MoneyError, parse_money
from ledger.values import (
    CST,
    EARLIEST_DATE,
    Category,
    Channel,
    Evidence,
    FacilityKind,
    InsuranceScheme,
    SettlementScheme,
    VisitType,
    birth_date,
    local_date,
    same_identity,
    street_name,
    validate_id_number,
)


def _money(value: Any) -> Decimal:
    try:
        return parse_money(value)
    except MoneyError as exc:
        raise ValueError(str(exc).split(": ", 1)[-1]) from None


Money = Annotated[Decimal, BeforeValidator(_money)]


def _id_number(value: Any) -> str:
    """The number's form, birth date and check digit. Whether the birth date is past is judged
    against the day the command is recorded (its ``at``), not the clock's: a command replays the
    same whenever it is run (``Enrol._born_by_enrolment``)."""
    if not isinstance(value, str):
        raise ValueError("must be a string of 18 characters")
    return validate_id_number(value, today=None)


IdNumber = Annotated[str, BeforeValidator(_id_number)]


def _name(value: Any) -> Any:
    """A person's name, trimmed; nothing but whitespace is no name (SCENARIOS.md ``enrol``)."""
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise PydanticCustomError("empty_name", "must not be empty or only whitespace (SCENARIOS.md enrol: a person's name)")
    return value


Name = Annotated[str, BeforeValidator(_name), Field(min_length=1, max_length=200)]

#: The rule a blank identity breaks (named in messages and by the adapters).
BLANK_RULE = ("SCENARIOS.md: handles, officers, receipt numbers and facility codes are compared after NFKC, "
              "case folding and trimming, so one that is empty once trimmed names no one")


def _not_blank(value: Any) -> Any:
    """A handle, an officer or a receipt's number or code: nothing but whitespace (U+3000 included)
    or characters that show nothing would be the empty identity once compared
    (``ledger.values.same_identity``), the same for every blank one typed."""
    if isinstance(value, str) and value and not same_identity(value):
        raise PydanticCustomError("blank_identity", "must not be empty, only whitespace or only characters that show nothing")
    return value


Ref = Annotated[str, BeforeValidator(_not_blank), Field(min_length=1, max_length=200)]

#: The rule a date given in another form breaks.
DATE_FORM_RULE = "SCENARIOS.md: dates are YYYY-MM-DD"
_DATE_FORM = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _day(value: Any) -> Any:
    """A calendar date written ``YYYY-MM-DD`` (or a date the YAML or JSON reader already made one):
    never a number of seconds since 1970, a time of day, or another order of the parts."""
    if isinstance(value, datetime):
        raise PydanticCustomError("date_form", "must be a date YYYY-MM-DD, not a date and time")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _DATE_FORM.fullmatch(value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise PydanticCustomError("date_form", "{value} is not a calendar date", {"value": value.strip()}) from None
    raise PydanticCustomError("date_form", "must be a date written YYYY-MM-DD, got {value}", {"value": repr(value)})


Day = Annotated[date, BeforeValidator(_day)]


# -- what every command refuses ------------------------------------------------------------------

#: The rule a text field with an unprintable character breaks (named in messages and by the adapters).
PRINTABLE_TEXT_RULE = "commands/models.py Command: text holds printable characters only, no control, invisible format or separator characters"
#: The rule an out-of-range date breaks.
DATE_RANGE_RULE = f"SCENARIOS.md dates: a date is {EARLIEST_DATE.isoformat()} or later"

# Refused anywhere in a command's text: control characters (Cc: NUL, ESC, tab, newline, …), lone
# surrogates (Cs: not storable as UTF-8), line/paragraph separators (Zl, Zp) and invisible format
# characters (Cf: zero-width space, byte-order mark, bidi overrides that make text read other than
# it is stored) - except the zero-width (non-)joiners some scripts need to spell a name.
_UNPRINTABLE = {"Cc": "a control character", "Cf": "an invisible format character", "Cs": "a lone surrogate",
                "Zl": "a line separator", "Zp": "a paragraph separator"}
_JOINERS = frozenset("\u200c\u200d")
_CONTROL_NAMES = {0x00: "NUL", 0x09: "TAB", 0x0A: "LINE FEED", 0x0D: "CARRIAGE RETURN", 0x1B: "ESCAPE", 0x7F: "DELETE"}


def _unprintable(text: str) -> str | None:
    """What is wrong with ``text``, or None when every character is printable."""
    if text.isprintable():  # the fast path: no Cc, Cf, Cs, Zl, Zp (nor Zs other than space, Co, Cn)
        return None
    for position, char in enumerate(text, start=1):
        kind = _UNPRINTABLE.get(unicodedata.category(char))
        if kind and char not in _JOINERS:
            name = _CONTROL_NAMES.get(ord(char)) or unicodedata.name(char, "")
            return f"contains {kind} (U+{ord(char):04X}{' ' + name if name else ''}) at character {position} ({PRINTABLE_TEXT_RULE})"
    return None


def _unprintable_in(value: Any, loc: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str, Any]]:
    """Every text in a command's raw input, nested mappings and lists included, keys too."""
    if isinstance(value, str):
        problem = _unprintable(value)
        if problem:
            yield loc, problem, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (problem := _unprintable(key)):
                yield loc + (key,), f"the key {problem}", key
            yield from _unprintable_in(item, loc + (key,))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _unprintable_in(item, loc + (i,))


def _early_dates(model: BaseModel, loc: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str, Any]]:
    """Every date (or time) of a validated command, nested models included, before 1900-01-01."""
    for name, info in type(model).model_fields.items():
        yield from _early(getattr(model, name), loc + (info.alias or name,))


def _early(value: Any, loc: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str, Any]]:
    if isinstance(value, BaseModel):
        yield from _early_dates(value, loc)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _early(item, loc + (i,))
    elif isinstance(value, date):
        day = value.date() if isinstance(value, datetime) else value
        if day < EARLIEST_DATE:
            yield loc, f"{value.isoformat()} is before {EARLIEST_DATE.isoformat()}, the earliest date the ledger takes ({DATE_RANGE_RULE})", value.isoformat()


def _refuse(title: str, kind: str, problems: list[tuple[tuple[Any, ...], str, Any]]) -> NoReturn:
    """Raise one ValidationError naming each problem's own field (so every adapter reports the
    field, not the command)."""
    raise ValidationError.from_exception_data(
        title,
        [{"type": PydanticCustomError(kind, "{message}", {"message": message}), "loc": loc, "input": value} for loc, message, value in problems[:20]],
    )


def recorded_day(at: datetime | None) -> date:
    """The calendar day a command is recorded on: its ``at``, else now (China Standard Time)."""
    return local_date(at) if at is not None else datetime.now(CST).date()


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: str | None = Field(default=None, max_length=200)
    at: datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _printable_text(cls, data: Any) -> Any:
        """No text anywhere in a command (nested fields, lists and free-text reasons included)
        carries a control or invisible format character: checked once here so that no field,
        present or future, is forgotten."""
        if isinstance(data, dict):
            problems = list(_unprintable_in(data, ()))
            if problems:
                _refuse(cls.__name__, "printable_text", problems)
        return data

    @model_validator(mode="after")
    def _dates_from_1900(self) -> "Command":
        """Every date field (from/to, effective dates, receipts' dates, …) is 1900-01-01 or later."""
        problems = list(_early_dates(self, ()))
        if problems:
            _refuse(type(self).__name__, "date_range", problems)
        return self

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


def _street(value: Any) -> Any:
    """The street office, as kept and compared (``ledger.values.street_name``): R-PH-1 [002 4.1]."""
    return street_name(value) if isinstance(value, str) else value


class Enrol(Command):
    id_number: IdNumber
    name: Name
    street: Annotated[str, BeforeValidator(_street), Field(default="", max_length=200)] = ""

    @model_validator(mode="after")
    def _born_by_enrolment(self) -> "Enrol":
        """The birth date in the number is not after the day the enrolment is recorded."""
        recorded = recorded_day(self.at)
        born = birth_date(self.id_number)
        if born > recorded:
            _refuse("Enrol", "birth_date_after_recording", [(("id_number",), (
                f"carries the birth date {born.isoformat()}, after {recorded.isoformat()}, the day this enrolment "
                "is recorded (China Standard Time) (GB 11643: digits 7-14 are the birth date)"), self.id_number)])
        return self


class GrantCategory(Command):
    recipient: Ref
    category: Category
    valid_from: Day = Field(alias="from")
    valid_to: Day | None = Field(default=None, alias="to")
    subtype: str | None = Field(default=None, max_length=100)
    determined_on: Day | None = None
    means_test_expenses_from: Day | None = None
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
    valid_from: Day = Field(alias="from")
    reason: str | None = Field(default=None, max_length=500)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Insure(Command):
    recipient: Ref
    scheme: InsuranceScheme
    valid_from: Day = Field(alias="from")
    valid_to: Day | None = Field(default=None, alias="to")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _period(self) -> "Insure":
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError("to: the enrolment ends before it starts")
        return self


class EndInsurance(Command):
    recipient: Ref
    scheme: InsuranceScheme
    valid_to: Day = Field(alias="to")
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
    code: Annotated[str, BeforeValidator(_not_blank), Field(min_length=1, max_length=100)] | None = None


class RecordExpense(Command):
    recipient: Ref
    handle: str | None = Field(default=None, max_length=200)
    visit_type: VisitType
    facility: FacilityIn
    service_date: Day
    invoice_date: Day
    invoice_no: Annotated[str, BeforeValidator(_not_blank), Field(min_length=1, max_length=100)]
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

    @model_validator(mode="after")
    def _not_from_the_future(self) -> "RecordExpense":
        """A receipt's service and invoice dates are not after the day it is recorded (its ``at``,
        else now; China Standard Time): R-TIME-1 decides an expense with what was known when it
        was recorded, and nothing is known of a service still to come."""
        recorded = recorded_day(self.at)
        late = [
            ((name,), f"{day.isoformat()} is after {recorded.isoformat()}, the day this receipt is recorded (China Standard Time): "
                      "a receipt is not dated in the future (R-TIME-1, RULES.md §1: a receipt's service and invoice dates "
                      "are on or before the day the ledger learns of it)", day.isoformat())
            for name, day in (("service_date", self.service_date), ("invoice_date", self.invoice_date))
            if day > recorded
        ]
        if late:
            _refuse("RecordExpense", "date_after_recording", late)
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
    #: the disbursing officer, a fourth signature distinct from the other three (R-PH-4 [002 3.4, 3.5]);
    #: a distinct default officer when omitted (SCENARIOS.md ``pay``)
    payer: Ref | None = None


class AutoClaims(Command):
    """R-PH-3 [002 3.3]: lodge the month's 免申即享 claims as one batch. The batch's handler is the
    officer (or the service's own identity) that runs it; review, approval and payment follow R-PH-4
    like any other claim (``SignBatch``)."""

    month: str = Field(pattern=r"^(19|20|21)\d{2}-(0[1-9]|1[0-2])$")
    handler: Ref = "auto-batch"


class SignBatch(Command):
    """One officer signs a 免申即享 batch as a whole (R-PH-3, R-PH-4 [002 3.3, 3.4]): as reviewer,
    approver or payer of every claim in it; the signature is recorded on each claim."""

    batch: Ref
    role: Literal["reviewer", "approver", "payer"]
    officer: Ref


class SetParameter(Command):
    name: str = Field(min_length=3, max_length=200)
    value: Any
    effective_from: Day
    effective_to: Day | None = None
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
    """A repayment toward open clearing cases (R-CLR-3): who took it, when, on which receipt or
    voucher and how (the CLI and HTTP ask for all four; the scenario format may leave them out)."""

    recipient: Ref
    amount: Money
    officer: Ref | None = None
    received_on: Day | None = None
    voucher: str | None = Field(default=None, min_length=1, max_length=100)
    method: Literal["cash", "bank_transfer", "offset"] | None = None

    @field_validator("amount")
    @classmethod
    def _positive(cls, value: Decimal) -> Decimal:
        if value <= 0:
            raise ValueError("a repayment must be positive")
        return value

    @model_validator(mode="after")
    def _received_by_now(self) -> "Repay":
        if self.received_on is not None and self.received_on > recorded_day(self.at):
            raise ValueError(
                f"received_on: {self.received_on} is after {recorded_day(self.at)}, the day this repayment is recorded "
                "(China Standard Time): money is recorded once received (R-CLR-3)"
            )
        return self


class WriteOff(Command):
    recipient: Ref
    officer: Ref
    approver: Ref
    reason: str | None = Field(default=None, max_length=500)


class ProposeWriteOff(Command):
    """A clearing officer proposes writing off the open clearing balance (R-CLR-3)."""

    recipient: Ref
    officer: Ref
    reason: str | None = Field(default=None, max_length=500)


class ApproveWriteOff(Command):
    """A second officer approves a proposed write-off (R-CLR-3): never the proposer."""

    proposal: Ref
    approver: Ref


class RefuseWriteOff(Command):
    """A second officer refuses a proposed write-off, with the reason (R-CLR-3)."""

    proposal: Ref
    officer: Ref
    reason: str | None = Field(default=None, max_length=500)


class ClearingRun(Command):
    """Recompute every decided expense with today's knowledge (R-CLR-2); idempotent."""

    trigger: Literal["parameter_change", "category_change", "late_insurance", "cap_overrun", "duplicate"] = "parameter_change"
    since: datetime | None = None

    @field_validator("since")
    @classmethod
    def _since_aware(cls, value: datetime | None) -> datetime | None:
        """A time without an offset is eight hours ambiguous: refused, as every recorded time is."""
        if value is not None and value.tzinfo is None:
            raise ValueError("a time needs a UTC offset, e.g. 2026-01-01T00:00:00+08:00 (RULES.md §1: one clock, +08:00)")
        return value


#: A district code (ADR 0020, ``infra.districts.CODE``): it names a store, a stream and a subject.
DistrictCode = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


class TransferOut(Command):
    """R-CAP-4 [001; 000 第七条]: the person moves to district ``to_district``; recorded in the
    district they leave (``commands.handlers.transfer``)."""

    recipient: Ref
    to_district: DistrictCode
    from_district: DistrictCode | None = None


class CarriedCap(BaseModel):
    """One city-scheme cap bucket's usage carried from the district the person left (R-CAP-4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Ref
    year: int = Field(ge=1900, le=2199)
    kind: Literal["inpatient", "outpatient"]
    used: Money

    @field_validator("used")
    @classmethod
    def _not_negative(cls, value: Decimal) -> Decimal:
        if value < 0:
            raise ValueError("carried cap usage is never negative (R-CAP-4)")
        return value


class TransferIn(Command):
    """R-CAP-4 [001; 000 第七条]: the person arrives from district ``from_district``, with their
    record, categories, insurance, the city scheme's cap usage and the receipts aided there, as
    the source district's ``TransferredOut`` recorded them at ``source_position``."""

    from_district: DistrictCode
    source_recipient: Ref
    source_position: int = Field(ge=0)
    id_number: IdNumber
    name: Name
    street: str = Field(default="", max_length=200)
    categories: list[dict[str, Any]] = Field(default_factory=list)
    insurance: list[dict[str, Any]] = Field(default_factory=list)
    carried_caps: list[CarriedCap] = Field(default_factory=list)
    aided_receipts: list[tuple[str, str]] = Field(default_factory=list)
