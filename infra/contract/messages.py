"""The public event contract, schema version 1 (ADR 0011).

These pydantic models are what downstream subscribers see on the broker. They are deliberately
separate from the aggregates' internal events (``ledger.aggregates``): the mapping in
:mod:`infra.contract.mapping` is the only place that knows both, so an internal event can change
shape without breaking a subscriber.

Every message has the same envelope:

- ``event_id``: stable, uuid5 of the originator id and version; the broker message id, so a
  consumer drops repeats by it (delivery is at least once, ADR 0011);
- ``position``: the event's notification id in the ledger's log (a position, never a count: ids
  have gaps); strictly increasing along one ledger store's log, so on an ordered destination a
  message at or below the last position processed is a repeat (:mod:`infra.contract.consumer`);
- ``recipient_key``: the recipient aggregate's id (never an id number or a name), ``null`` for
  events that belong to no recipient (policy);
- ``recorded_at``: transaction time; ``effective_date``: valid time where the event has one;
- ``type``, ``schema_version`` and the ``payload``.

Money is a string with exactly two decimals (yuan, fen). No message carries personal data: no
resident id number, no name, no proxy id number, no free-text reason written by an officer.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal, Union
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1

Amount = Annotated[str, Field(pattern=r"^-?\d+\.\d{2}$", examples=["85.50"], description="yuan, two decimals")]
Amounts = dict[str, Amount]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Envelope(_Model):
    """Fields every public message carries."""

    event_id: UUID = Field(description="uuid5(originator id, version): stable; the broker message id and the deduplication key (delivery is at least once: a repeat carries the same event_id and position)")
    position: int = Field(ge=0, description="notification id in the ledger's log (gaps are normal): strictly increasing along one ledger store's log, so a message at or below the last position processed from that store is a repeat")
    recipient_key: str | None = Field(description="the recipient aggregate id; null for policy events")
    recorded_at: datetime = Field(description="transaction time (when the ledger learned it)")
    effective_date: date | None = Field(default=None, description="valid-time date, where the event has one")
    schema_version: Literal[1] = SCHEMA_VERSION


# ---------------------------------------------------------------------------------- payloads
class RecipientEnrolledPayload(_Model):
    street: str = Field(description="the street office 街镇 that handles the recipient's claims [002 4.1]")


class CategoryGrantedPayload(_Model):
    category: str
    valid_from: date
    valid_to: date | None
    subtype: str | None
    determined_on: date | None
    means_test_expenses_from: date | None


class CategoryRevokedPayload(_Model):
    category: str
    valid_from: date


class Subsidy(_Model):
    kind: str
    category: str | None
    amount: Amount
    fund: str
    rule: str


class InsuranceEnrolledPayload(_Model):
    scheme: str
    valid_from: date
    valid_to: date | None
    subsidy: Subsidy | None


class InsuranceSubsidisedPayload(_Model):
    scheme: str
    valid_from: date = Field(description="start of the enrolment the subsidy belongs to")
    subsidy: Subsidy


class InsuranceEndedPayload(_Model):
    scheme: str
    valid_to: date


class MutualAidContributionPaidPayload(_Model):
    year: int
    has_home_insurance: bool
    home_insurance_deductible: Amount


class Facility(_Model):
    kind: str
    level: int
    district_designated: bool
    out_of_province: bool
    code: str | None


class ExpenseRecordedPayload(_Model):
    expense_id: str
    visit_type: str
    facility: Facility
    service_date: date
    invoice_date: date
    invoice_no: str
    total: Amount
    in_scope: Amount
    basic_insurance_paid: Amount
    duplicate_of: str | None
    source: str


class InsuranceSettledPayload(_Model):
    expense_id: str
    scheme: str
    amount: Amount


class ClaimLodgedPayload(_Model):
    claim_id: str
    recipient_id: str
    expense_ids: list[str]
    channel: str
    lodged_on: date
    handler: str
    by_proxy: bool


class ClaimReviewedPayload(_Model):
    claim_id: str
    recipient_id: str
    reviewer: str


class ClaimApprovedPayload(_Model):
    claim_id: str
    recipient_id: str
    approver: str


class ClaimRejectedPayload(_Model):
    claim_id: str
    recipient_id: str
    code: str
    rule: str
    message: str
    expense_id: str | None


class ClaimPaidPayload(_Model):
    claim_id: str
    recipient_id: str
    total: Amount
    to_person: Amount


class Decision(_Model):
    expense_id: str
    granted: bool
    total: Amount
    self_pay: Amount | None
    by_scheme: Amounts
    by_fund: Amounts
    category: str | None
    code: str | None
    rule_ids: list[str] = Field(description="every R-id the decision's explanation cites")


class AidDecidedPayload(_Model):
    claim_id: str | None
    channel: str
    decisions: list[Decision]
    policy_hash: str | None


class Reassessment(_Model):
    expense_id: str
    previous_total: Amount | None
    total: Amount
    by_scheme: Amounts
    by_fund: Amounts


class AidReassessedPayload(_Model):
    trigger: str
    results: list[Reassessment]


class Payment(_Model):
    expense_id: str
    total: Amount
    by_scheme: Amounts
    by_fund: Amounts
    channel: str | None


class Allocation(_Model):
    case_id: str
    amount: Amount
    by_fund: Amounts


class AidPaidPayload(_Model):
    claim_id: str | None
    channel: str
    payments: list[Payment]
    offsets: list[Allocation]
    to_person: Amount


class ClearingCaseOpenedPayload(_Model):
    case_id: str
    expense_id: str
    trigger: str
    amount: Amount
    by_fund: Amounts
    by_scheme: Amounts


class RepaymentReceivedPayload(_Model):
    amount: Amount
    allocations: list[Allocation]


class WrittenOffPayload(_Model):
    officer: str
    approver: str
    allocations: list[Allocation]


class SupplementaryDuePayload(_Model):
    supplementary_id: str
    expense_id: str
    trigger: str
    amount: Amount
    by_fund: Amounts
    by_scheme: Amounts


class SuspensionStartedPayload(_Model):
    scheme: str
    valid_from: date
    expense_id: str


class SuspensionLiftedPayload(_Model):
    scheme: str
    lifted_on: date
    reviewer: str


class SuspensionEndedPayload(_Model):
    scheme: str
    expense_id: str
    ended_on: date
    reason: str


class SocialHelpGrantedPayload(_Model):
    amount: Amount
    organisation: str | None
    period: str


class ParameterAmendedPayload(_Model):
    name: str
    value: Any = Field(description="JSON value; decimals as strings")
    effective_from: date
    effective_to: date | None
    reference: str
    local_setting: bool


class ChainCheckpointSealedPayload(_Model):
    number: int = Field(ge=1, description="the checkpoint's number: 1, 2, 3, … without gaps along one ledger store (ADR 0016)")
    hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="the chain link (SHA-256, hex) of the event at the envelope's position")
    kind: str = Field(description="periodic (every 1000 events, inside the save), on_demand (ledger chain) or upgrade")
    signature: str = Field(pattern=r"^[0-9a-f]{64}$", description="HMAC-SHA256 under a key derived from the ledger's data key, over the number, position, hash, time, kind and the previous signature")
    previous_signature: str = Field(description="the signature of the checkpoint before it (empty for the first)")


class ReplayCompletedPayload(_Model):
    up_to_position: int = Field(ge=0, description="the replay covered every event up to this position")


# ---------------------------------------------------------------------------------- messages
class RecipientEnrolled(Envelope):
    """A person entered the ledger; the payload is the street office only (no id number, no name)."""

    type: Literal["recipient.enrolled"] = "recipient.enrolled"
    payload: RecipientEnrolledPayload


class CategoryGranted(Envelope):
    """A recipient category held over [valid_from, valid_to] (RULES §2); effective_date = valid_from."""

    type: Literal["category.granted"] = "category.granted"
    payload: CategoryGrantedPayload


class CategoryRevoked(Envelope):
    """A category no longer held from valid_from, possibly in the past (R-TIME-2)."""

    type: Literal["category.revoked"] = "category.revoked"
    payload: CategoryRevokedPayload


class InsuranceEnrolled(Envelope):
    """Shanghai basic medical insurance enrolment (R-INS-1), with its subsidy (R-INS-2) if any."""

    type: Literal["insurance.enrolled"] = "insurance.enrolled"
    payload: InsuranceEnrolledPayload


class InsuranceEnded(Envelope):
    """Basic insurance enrolment ended on valid_to."""

    type: Literal["insurance.ended"] = "insurance.ended"
    payload: InsuranceEndedPayload


class MutualAidContributionPaid(Envelope):
    """Community mutual-aid contribution paid for a year (R-MA)."""

    type: Literal["mutual_aid.contribution_paid"] = "mutual_aid.contribution_paid"
    payload: MutualAidContributionPaidPayload


class ExpenseRecorded(Envelope):
    """One receipt / settlement record; effective_date = service date."""

    type: Literal["expense.recorded"] = "expense.recorded"
    payload: ExpenseRecordedPayload


class InsuranceSettled(Envelope):
    """An insurance payment on an expense; after aid it leads to clearing (R-INS-4)."""

    type: Literal["insurance.settled"] = "insurance.settled"
    payload: InsuranceSettledPayload


class ClaimLodged(Envelope):
    """A post-hoc or auto claim lodged at the street office (R-PH-1, R-PH-2)."""

    type: Literal["claim.lodged"] = "claim.lodged"
    payload: ClaimLodgedPayload


class ClaimReviewed(Envelope):
    """The reviewer signed the claim (R-PH-4)."""

    type: Literal["claim.reviewed"] = "claim.reviewed"
    payload: ClaimReviewedPayload


class ClaimApproved(Envelope):
    """The approver signed the claim: its aid is decided (aid.decided follows) (R-PH-4)."""

    type: Literal["claim.approved"] = "claim.approved"
    payload: ClaimApprovedPayload


class ClaimRejected(Envelope):
    """The claim was rejected as a whole, with the code and rule of the first rejection."""

    type: Literal["claim.rejected"] = "claim.rejected"
    payload: ClaimRejectedPayload


class ClaimPaid(Envelope):
    """District disbursement of an approved claim [002 3.5]; to_person is after clearing offsets."""

    type: Literal["claim.paid"] = "claim.paid"
    payload: ClaimPaidPayload


class AidDecided(Envelope):
    """Aid decided per expense (claim approval or one-stop): total, per scheme and fund, category, rule ids."""

    type: Literal["aid.decided"] = "aid.decided"
    payload: AidDecidedPayload


class AidReassessed(Envelope):
    """Expenses recomputed with today's knowledge (R-TIME-2, R-CLR-2); the first decision stands."""

    type: Literal["aid.reassessed"] = "aid.reassessed"
    payload: AidReassessedPayload


class AidPaid(Envelope):
    """A payout per expense; the part owed on clearing cases is offset first (R-CLR-3)."""

    type: Literal["aid.paid"] = "aid.paid"
    payload: AidPaidPayload


class ClearingCaseOpened(Envelope):
    """A receivable from the recipient per fund, citing its trigger (R-CLR-2)."""

    type: Literal["clearing.case_opened"] = "clearing.case_opened"
    payload: ClearingCaseOpenedPayload


class ClearingRepaymentReceived(Envelope):
    """A repayment toward open clearing cases, oldest first (R-CLR-3)."""

    type: Literal["clearing.repayment_received"] = "clearing.repayment_received"
    payload: RepaymentReceivedPayload


class ClearingWrittenOff(Envelope):
    """Open clearing balances written off by a distinct approver (R-CLR-3)."""

    type: Literal["clearing.written_off"] = "clearing.written_off"
    payload: WrittenOffPayload


class SupplementaryDue(Envelope):
    """Aid now due above what was decided: a supplementary payout (R-CLR-2)."""

    type: Literal["supplementary.due"] = "supplementary.due"
    payload: SupplementaryDuePayload


class SuspensionStarted(Envelope):
    """四医联动 suspended from an expense on (R-4L-4)."""

    type: Literal["suspension.started"] = "suspension.started"
    payload: SuspensionStartedPayload


class SuspensionLifted(Envelope):
    """四医联动 reopened after the district's review (R-4L-4)."""

    type: Literal["suspension.lifted"] = "suspension.lifted"
    payload: SuspensionLiftedPayload


class SuspensionEnded(Envelope):
    """A suspension that a recomputation after a retroactive change no longer supports has ended
    (R-4L-4, R-CLR-2); not a district review."""

    type: Literal["suspension.ended"] = "suspension.ended"
    payload: SuspensionEndedPayload


class InsuranceSubsidised(Envelope):
    """The subsidy of a resident-insurance enrolment found due after the enrolment was recorded: a
    category granted since, held on its start date (R-INS-2)."""

    type: Literal["insurance.subsidised"] = "insurance.subsidised"
    payload: InsuranceSubsidisedPayload


class SocialHelpGranted(Envelope):
    """One-time social-organisation help (R-4L-5)."""

    type: Literal["social_help.granted"] = "social_help.granted"
    payload: SocialHelpGrantedPayload


class PolicyParameterAmended(Envelope):
    """A policy parameter published or amended, possibly retroactive (R-CLR-1(d))."""

    type: Literal["policy.parameter_amended"] = "policy.parameter_amended"
    payload: ParameterAmendedPayload


class ChainCheckpointSealed(Envelope):
    """The integrity chain's numbered checkpoint sealing the log up to ``position`` (ADR 0016);
    keep it: a copy outside the ledger's database is what shows a later rewrite. Published after
    the events it covers; its position is the last one sealed, so it repeats an event's position
    (drop repeats of it by event_id)."""

    type: Literal["chain.checkpoint_sealed"] = "chain.checkpoint_sealed"
    payload: ChainCheckpointSealedPayload


class ReplayCompleted(Envelope):
    """Control message: the last message of a replay into one subscriber's replay destination
    (ADR 0011, catch-up). Never published on the live destination."""

    type: Literal["relay.replay_completed"] = "relay.replay_completed"
    payload: ReplayCompletedPayload


#: Every message class, in the order the AsyncAPI document lists them.
MESSAGE_CLASSES: tuple[type[Envelope], ...] = (
    RecipientEnrolled,
    CategoryGranted,
    CategoryRevoked,
    InsuranceEnrolled,
    InsuranceEnded,
    InsuranceSubsidised,
    MutualAidContributionPaid,
    ExpenseRecorded,
    InsuranceSettled,
    ClaimLodged,
    ClaimReviewed,
    ClaimApproved,
    ClaimRejected,
    ClaimPaid,
    AidDecided,
    AidReassessed,
    AidPaid,
    ClearingCaseOpened,
    ClearingRepaymentReceived,
    ClearingWrittenOff,
    SupplementaryDue,
    SuspensionStarted,
    SuspensionLifted,
    SuspensionEnded,
    SocialHelpGranted,
    PolicyParameterAmended,
    ChainCheckpointSealed,
    ReplayCompleted,
)

#: ``type`` → message class.
BY_TYPE: dict[str, type[Envelope]] = {c.model_fields["type"].default: c for c in MESSAGE_CLASSES}
#: The event types published on the live destination (every type but the replay marker).
EVENT_TYPES: tuple[str, ...] = tuple(t for t in BY_TYPE if t != "relay.replay_completed")

PublicMessage = Annotated[Union[MESSAGE_CLASSES], Field(discriminator="type")]  # type: ignore[valid-type]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(PublicMessage)


def parse_message(data: bytes | str | dict[str, Any]) -> Envelope:
    """A received message body → its model (raises ``pydantic.ValidationError`` on a bad one)."""
    if isinstance(data, dict):
        return _ADAPTER.validate_python(data)
    return _ADAPTER.validate_json(data)
