"""Facts as the decision engine sees them: plain, immutable, each with its recorded time.

The aggregates keep these records; the engine reads them through :class:`Knowledge`, which can
cut them "as known at T" (R-TIME-1, R-TIME-3). Valid time is carried on the facts themselves
(``valid_from`` / ``valid_to``); recorded time is the store's transaction time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal

from ledger.money import ZERO, clamp0
from ledger.values import Facility, FacilityKind, VisitType, receipt_identity


@dataclass(frozen=True)
class CategoryFact:
    """One grant or revocation of a category, as recorded."""

    kind: str  # "grant" | "revoke"
    category: str
    valid_from: date
    valid_to: date | None
    recorded_at: datetime
    subtype: str | None = None
    determined_on: date | None = None
    means_test_expenses_from: date | None = None


@dataclass(frozen=True)
class InsuranceFact:
    kind: str  # "start" | "end"
    scheme: str
    valid_from: date
    valid_to: date | None
    recorded_at: datetime


@dataclass(frozen=True)
class MutualAidYear:
    year: int
    has_home_insurance: bool
    home_insurance_deductible: Decimal
    recorded_at: datetime


@dataclass(frozen=True)
class Settlement:
    scheme: str
    amount: Decimal
    recorded_at: datetime


@dataclass(frozen=True)
class Lift:
    scheme: str
    reviewer: str
    lifted_on: date
    recorded_at: datetime


@dataclass(frozen=True)
class ExpenseFacts:
    """A receipt / settlement record (SCENARIOS.md ``record_expense``) and what insurance paid."""

    id: str
    visit_type: VisitType
    facility: Facility
    service_date: date
    invoice_date: date
    invoice_no: str
    total: Decimal
    in_scope: Decimal
    basic_insurance_paid: Decimal
    recorded_at: datetime
    referred: bool = False
    dispensing_only: bool = False
    critical_illness_related: bool = False
    critical_illness_evidence: str = "none"
    basic_insurance_settled: bool = True
    duplicate_of: str | None = None
    settlements: tuple[Settlement, ...] = ()

    @property
    def receipt_key(self) -> tuple[str, str]:
        """R-CLR-1(b) [002 4.5; 000 第七条]: the same receipt is the same facility code and invoice
        number, compared after NFKC, case folding and trimming; a receipt without a facility code
        is identified by its invoice number alone (``ledger.values.receipt_identity``)."""
        return receipt_identity(self.facility.code, self.invoice_no)

    @property
    def cap_kind(self) -> str:
        return self.visit_type.cap_kind

    @property
    def at_community_centre(self) -> bool:
        return self.facility.kind is FacilityKind.COMMUNITY_HEALTH_CENTRE

    def settlements_known_at(self, t: datetime | None) -> tuple[Settlement, ...]:
        if t is None:
            return self.settlements
        return tuple(s for s in self.settlements if s.recorded_at <= t)

    def self_pay(self, t: datetime | None = None) -> Decimal:
        """R-INS-3: in-scope − basic insurance − 居保大病 − every other supplement, never below zero."""
        paid = self.basic_insurance_paid + sum((s.amount for s in self.settlements_known_at(t)), ZERO)
        return clamp0(self.in_scope - paid)

    def known_at(self, t: datetime | None) -> "ExpenseFacts":
        return self if t is None else replace(self, settlements=self.settlements_known_at(t))


@dataclass(frozen=True)
class DecisionRef:
    """An expense that has been decided (approved or settled one-stop): it takes part in due."""

    expense_id: str
    channel: str
    claim_id: str | None
    decided_at: datetime
    seq: int  # order of first decision within the recipient
    position: int = 0  # order listed within its claim


@dataclass
class Knowledge:
    """Everything about one recipient that a decision may use."""

    recipient_id: str
    id_number: str
    street: str
    categories: list[CategoryFact] = field(default_factory=list)
    insurance: list[InsuranceFact] = field(default_factory=list)
    mutual_aid: list[MutualAidYear] = field(default_factory=list)
    lifts: list[Lift] = field(default_factory=list)
    #: R-CAP-4 [001; 000 第七条]: city-scheme cap usage (scheme, year, kind) → amount that the
    #: person brought from the district they left; a year's bucket starts from it when first used.
    carried_caps: dict[tuple[str, int, str], Decimal] = field(default_factory=dict)
    #: R-CAP-4 [001; 000 第七条]: expense id → what the decision that first decided it read from
    #: the city view (``city_read`` below): the city scheme's usage in the other districts, counted
    #: against that expense's annual cap. Recorded once per expense, in its ``AidDecided``, and
    #: never re-read: left out of comparisons, so a pass kept in memory (ADR 0017) stays valid when
    #: a new decision adds its own expenses' reads (a read only ever concerns its own expense).
    city_usage: dict[str, dict] = field(default_factory=dict, compare=False)
    #: R-CAP-4, R-CLR-1(e) [001; 000 第七条]: reads of the city view corrected by a clearing run,
    #: (recorded time, expense id, the read as it should have been), in recorded order: a decision
    #: that counted less than the other districts had decided before it (the view lagged, or could
    #: not be read) is reassessed with this read instead (``city_block``). Compared, unlike
    #: ``city_usage``: a correction changes what a pass kept in memory assessed.
    city_corrections: tuple[tuple[datetime, str, dict], ...] = ()
    #: R-4L-4 [000 第四条(三)]: the 四医联动 suspensions recorded, (expense that started it, recorded
    #: time): a district review lifts a crossing only once the crossing was known, so a crossing a
    #: late claim or a retroactive change finds after a review is not lifted by it (ADR 0007).
    suspensions_recorded: tuple[tuple[str, datetime], ...] = ()

    def crossing_known_since(self, expense_id: str) -> datetime | None:
        """When the crossing at ``expense_id`` was first recorded, or None (not yet recorded: it is
        being found now, after every review there is)."""
        return next((t for eid, t in self.suspensions_recorded if eid == expense_id), None)

    def city_block(self, expense_id: str) -> dict | None:
        """The city read an expense's assessment counts (``city_read``): the latest correction of
        it, else what its first decision read."""
        for _, eid, block in reversed(self.city_corrections):
            if eid == expense_id:
                return block
        return self.city_usage.get(expense_id)

    def with_city(self, reads: dict[str, dict]) -> "Knowledge":
        """This knowledge with the city reads of expenses being decided now (not yet recorded)."""
        if not reads:
            return self
        return replace(self, city_usage={**self.city_usage, **reads})

    def known_at(self, t: datetime | None) -> "Knowledge":
        if t is None:
            return self
        return Knowledge(
            recipient_id=self.recipient_id,
            id_number=self.id_number,
            street=self.street,
            categories=[c for c in self.categories if c.recorded_at <= t],
            insurance=[i for i in self.insurance if i.recorded_at <= t],
            mutual_aid=[m for m in self.mutual_aid if m.recorded_at <= t],
            lifts=[lf for lf in self.lifts if lf.recorded_at <= t],
            carried_caps=self.carried_caps,  # carried in when the recipient was created here
            city_usage=self.city_usage,  # each read belongs to its expense's first decision
            city_corrections=tuple(c for c in self.city_corrections if c[0] <= t),  # corrections as known at t
            suspensions_recorded=tuple(x for x in self.suspensions_recorded if x[1] <= t),
        )


def city_read(block: dict | None, expense_id: str, bucket: tuple[str, int, str]) -> tuple[Decimal, dict] | None:
    """R-CAP-4 [001; 000 第七条]: what a decision's city read (``AidDecided.knowledge["city"]``)
    counts against ``bucket`` (scheme, invoice year, kind) for ``expense_id``, and its
    explanation; None when the decision read no city view. The command decided the amount (per
    other district, the larger of the city view's usage and what a move carried in from it); this
    only looks it up, so a replay or a reassessment uses what was recorded."""
    if not block or "caps" not in block:
        return None
    entry = next((c for c in block["caps"] if (c["scheme"], int(c["year"]), c["kind"]) == bucket), None)
    as_of = ", ".join(f"{d} {p}" for d, p in sorted((block.get("positions") or {}).items())) or "nothing applied yet"
    trace = {
        "used_elsewhere": dict(entry["elsewhere"]) if entry else {},
        "counted": entry["counted"] if entry else "0.00",
        "as_of": f"as of the city view at {as_of}",
        "rule": "R-CAP-4 [001; 000 第七条]: the city scheme's limit is the person's, city-wide: what other districts "
        "decided this year counts (per district the larger of the city view's figure and what a move carried in)",
    }
    if entry and entry.get("carried_from"):
        trace["carried_from"] = entry["carried_from"]
    if block.get("corrected"):  # R-CLR-1(e): a clearing run's corrected read (``Knowledge.city_corrections``)
        trace["corrected"] = block["corrected"]
    return (Decimal(entry["counted"]) if entry else ZERO), trace
