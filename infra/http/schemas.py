"""Request and response models of the HTTP service.

Request bodies are derived from the command models in ``commands.models`` (same fields, same
types, same constraints), minus what the server supplies itself: the recorded time ``at`` (the
server's clock: transaction time is never a client's to choose), ``command_id`` (from the
``Idempotency-Key`` header), the officer ids (from the bearer token) and the entity named in the
path. The command model then validates the assembled command, model validators included, so the
HTTP layer never re-states a rule.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from commands import models as m

_SERVER_SUPPLIED = {"command_id", "at"}


def body_model(command: type[m.Command], name: str, *, exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    fields = {
        k: (info.annotation, info)
        for k, info in command.model_fields.items()
        if k not in _SERVER_SUPPLIED and k not in exclude
    }
    model = create_model(  # type: ignore[call-overload]
        name,
        __config__=ConfigDict(extra="forbid", populate_by_name=True),
        __doc__=(command.__doc__ or f"Body of the {command.__name__} command.").strip(),
        **fields,
    )
    return model


EnrolBody = body_model(m.Enrol, "EnrolBody")
GrantCategoryBody = body_model(m.GrantCategory, "GrantCategoryBody", exclude=("recipient",))
RevokeCategoryBody = body_model(m.RevokeCategory, "RevokeCategoryBody", exclude=("recipient",))
InsureBody = body_model(m.Insure, "InsureBody", exclude=("recipient",))
EndInsuranceBody = body_model(m.EndInsurance, "EndInsuranceBody", exclude=("recipient",))
JoinMutualAidBody = body_model(m.JoinMutualAid, "JoinMutualAidBody", exclude=("recipient",))
ConsentBody = body_model(m.ConsentAutoClaim, "ConsentBody", exclude=("recipient",))
RecordExpenseBody = body_model(m.RecordExpense, "RecordExpenseBody", exclude=("recipient", "source"))
SettleInsuranceBody = body_model(m.SettleInsurance, "SettleInsuranceBody", exclude=("expense",))
LodgeClaimBody = body_model(m.LodgeClaim, "LodgeClaimBody", exclude=("recipient", "handler"))
AutoClaimsBody = body_model(m.AutoClaims, "AutoClaimsBody", exclude=("handler",))
SetParameterBody = body_model(m.SetParameter, "SetParameterBody")
LiftSuspensionBody = body_model(m.LiftSuspension, "LiftSuspensionBody", exclude=("recipient", "reviewer"))
SocialHelpBody = body_model(m.SocialHelp, "SocialHelpBody", exclude=("recipient",))
RepayBody = body_model(m.Repay, "RepayBody", exclude=("recipient", "officer"))  # the officer is the caller
ClearingRunBody = body_model(m.ClearingRun, "ClearingRunBody")


class WriteOffRefusalBody(BaseModel):
    """Why a second officer refuses a proposed write-off (R-CLR-3)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=500)


class WriteOffProposalBody(BaseModel):
    """A clearing officer proposes writing off the recipient's open clearing balance (R-CLR-3)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=500)


# ---------------------------------------------------------------------- responses
class Accepted(BaseModel):
    """The command was applied (or, under a repeated ``Idempotency-Key``, had been)."""

    status: Literal["accepted"] = "accepted"
    ids: dict[str, Any] = Field(default_factory=dict, description="ids the command created or touched")


class Problem(BaseModel):
    """Every refusal: a rule's rejection (409, ``status: rejected``) or an error (4xx/5xx).
    ``code`` is one of SCENARIOS.md's rejection codes or an HTTP-level code (``UNAUTHENTICATED``,
    ``FORBIDDEN``, ``OTHER_STREET``, ``INVALID_INPUT``, ``UNKNOWN_ENTITY``, ...); ``rule`` the R-id
    when a rule decided it."""

    status: Literal["rejected", "error"] = "error"
    code: str
    rule: str = ""
    message: str
    field: str = ""
    ids: dict[str, Any] = Field(default_factory=dict)


class MoneyView(BaseModel):
    total: str
    by_scheme: dict[str, str]
    by_fund: dict[str, str]


class DecisionCode(BaseModel):
    code: str | None = None
    rule: str | None = None


class ExpenseView(BaseModel):
    id: str
    handle: str | None = None
    visit_type: str
    service_date: str
    invoice_date: str
    invoice_no: str
    facility: dict[str, Any]
    total: str
    in_scope: str
    basic_insurance_paid: str
    self_pay: str
    paid: MoneyView
    due: MoneyView
    category: str | None = None
    channel: str | None = None
    claim: str | None = None
    duplicate_of: str | None = None
    decision: DecisionCode | None = None


class CaseView(BaseModel):
    case: str
    expense: str
    trigger: str
    amount: str
    balance: str
    status: str
    by_fund: dict[str, str]
    opened_at: str


class SupplementaryView(BaseModel):
    supplementary: str
    expense: str
    trigger: str
    amount: str
    status: str
    by_fund: dict[str, str]


class SuspensionView(BaseModel):
    scheme: str
    valid_from: str = Field(alias="from")
    expense: str | None = None
    lifted: str | None = None
    model_config = ConfigDict(populate_by_name=True)


class CategoryView(BaseModel):
    kind: str
    category: str
    valid_from: str
    valid_to: str | None = None
    subtype: str | None = None
    recorded_at: str


class InsuranceView(BaseModel):
    kind: str
    scheme: str
    valid_from: str
    valid_to: str | None = None
    recorded_at: str


class Statement(BaseModel):
    """One recipient's account as the ledger knows it now (from the aggregate)."""

    recipient: str
    name: str
    id_number: str
    street: str
    consent: bool
    version: int
    categories: list[CategoryView]
    insurance: list[InsuranceView]
    mutual_aid_years: list[int]
    expenses: list[ExpenseView]
    clearing_cases: list[CaseView]
    supplementary: list[SupplementaryView]
    suspensions: list[SuspensionView]
    open_balance: str
    funds: dict[str, str]


class AnnualRow(BaseModel):
    recipient: str
    year: int
    scheme: str
    kind: str
    granted: str
    cap: str | None = None
    remaining: str | None = None


class Caps(BaseModel):
    recipient: str
    annual: list[AnnualRow]


class RecipientClearing(BaseModel):
    recipient: str
    open_balance: str
    clearing_cases: list[CaseView]
    supplementary: list[SupplementaryView]


class ClaimView(BaseModel):
    claim: str
    recipient: str
    street: str
    channel: str
    status: str
    expenses: list[str]
    handler: str
    reviewer: str | None = None
    approver: str | None = None
    payer: str | None = None
    lodged_on: str
    rejection: dict[str, Any] | None = None
    paid_at: str | None = None
    version: int


class DuplicateIndex(BaseModel):
    """R-CLR-1(b), R-PH-7: receipts recorded twice and attempts to aid a receipt again."""

    source: Literal["projection", "aggregates"]
    position: int | None = None
    head: int | None = None
    lag: int | None = None
    findings: list[dict[str, Any]]


class Replay(BaseModel):
    """R-TIME-1: each stored decision of the expense re-made, and whether it came out the same."""

    expense: str
    known_at: datetime | None = None
    equal: bool
    results: list[dict[str, Any]]


class ProjectionState(BaseModel):
    name: str
    version: int
    built: bool
    stale: bool
    position: int
    head: int
    lag: int
    updated_at: str | None = None


class ProjectionsStatus(BaseModel):
    head: int | None = None
    projections: list[ProjectionState]


class Explanation(BaseModel):
    """Why an expense got what it got: from ``commands.explain`` when present, else the stored
    decision summaries (first decision and latest assessment, each with its trace)."""

    expense: str
    source: str
    explanation: dict[str, Any]


class AccessEntry(BaseModel):
    at: datetime
    officer: str
    role: str
    street: str | None = None
    recipient: str | None = None
    scope: Literal["recipient", "population"]
    operation: str
    target: str


class AccessLog(BaseModel):
    recipient: str
    entries: list[AccessEntry]


class WriteOffProposal(BaseModel):
    """A write-off proposal as the approver sees it (R-CLR-3): the person, the amount per case."""

    id: str
    recipient: str
    name: str | None = None
    id_number: str | None = Field(default=None, description="masked: region and last four characters")
    street: str | None = None
    officer: str
    reason: str | None = None
    amount: str | None = None
    cases: list[dict[str, Any]] = Field(default_factory=list)
    proposed_at: datetime
    status: Literal["pending", "approved", "refused"]
    decided_by: str | None = None
    decided_at: datetime | None = None
    refusal: str | None = None
    written_off: str | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]


class Me(BaseModel):
    officer: str
    role: str
    street: str | None = None
    expires: int
