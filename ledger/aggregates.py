"""Aggregates and their events (RULES.md §10).

Boundaries (ADR 0003): the **Recipient** is the consistency boundary for money: annual caps,
monthly limits, the mutual-aid year, duplicate receipts and clearing offsets all span a person's
expenses, so the person's expenses, decisions, payouts and clearing cases are entities inside
it, and optimistic concurrency on it stops two claims from spending the same cap room. A
**Claim** has its own three-signature lifecycle; the **PolicyLedger** holds every published
parameter version; a **CommandRecord** makes a client-supplied command id apply once.

Events carry resolved values only: dates as ISO strings, money as Decimal, decisions as their
full summaries. Applying an event never looks anything up, so replay cannot rewrite history.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from eventsourcing.domain import Aggregate

from ledger.facts import (
    CategoryFact,
    DecisionRef,
    ExpenseFacts,
    InsuranceFact,
    Knowledge,
    Lift,
    MutualAidYear,
    Settlement,
)
from ledger import clearing, traces
from ledger.money import ZERO
from ledger.snapshots import StateSnapshot
from ledger.policy.params import ParameterVersion, PolicyBook
from ledger.values import Facility, VisitType, same_identity

NAMESPACE = uuid.UUID("6f1c7a52-3e0b-4d3e-9d55-0c1f3b2a9e11")


def _d(value: str | None) -> date | None:
    return date.fromisoformat(value) if value else None


def _money_map(d: dict[str, Any] | None) -> dict[str, Decimal]:
    return {k: Decimal(v) for k, v in (d or {}).items()}


@dataclass
class CaseState:
    id: str
    expense_id: str
    trigger: str
    amount: Decimal
    by_fund: dict[str, Decimal]
    by_scheme: dict[str, Decimal]
    opened_at: datetime
    balance_by_fund: dict[str, Decimal]
    history: list[dict[str, Any]] = field(default_factory=list)
    written_off: bool = False

    @property
    def balance(self) -> Decimal:
        return sum(self.balance_by_fund.values(), ZERO)

    @property
    def status(self) -> str:
        if self.balance > 0:
            return "open"
        return "written_off" if self.written_off else "settled"


@dataclass
class SupplementaryState:
    id: str
    expense_id: str
    trigger: str
    amount: Decimal
    by_fund: dict[str, Decimal]
    by_scheme: dict[str, Decimal]
    created_at: datetime
    paid_at: datetime | None = None

    @property
    def status(self) -> str:
        return "paid" if self.paid_at else "pending"


@dataclass
class ExpenseAccount:
    """An expense's money inside the recipient: decision, due now, paid."""

    facts: ExpenseFacts
    handle: str | None = None
    claim_id: str | None = None  # the open or approved claim that lists it
    decision: DecisionRef | None = None
    decided: dict[str, Any] | None = None  # the first decision's summary, without its trace (kept_summary)
    due: dict[str, Any] | None = None  # the latest assessment's summary, without its trace
    paid_total: Decimal = ZERO
    paid_by_scheme: dict[str, Decimal] = field(default_factory=dict)
    paid_by_fund: dict[str, Decimal] = field(default_factory=dict)
    channels: list[str] = field(default_factory=list)
    attempted_duplicates: list[dict[str, Any]] = field(default_factory=list)


def kept_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """What a recipient's state keeps of a decision summary (``ExpenseAccount.decided``/``due``):
    all of it but the ``trace``. The trace (which parameter versions, rates and clauses gave the
    amounts: R-TIME-1) stays in the event that recorded the decision, where every explanation and
    replay reads it (``commands.explain``, ``commands.replay``); the state keeps the outcome, the
    amounts and the parts that later decisions, reassessments, clearing (R-CLR-2, R-CLR-3) and
    reads use. The traces were three quarters of a recipient's state, so of every snapshot taken
    and read (issue 16, ADR 0017)."""
    if "trace" not in summary:
        return summary
    return {k: v for k, v in summary.items() if k != "trace"}


class Recipient(Aggregate):
    """A person in the programme and their aid account."""

    #: Snapshots that carry the dataclasses, enums, dates, tuples and tuple-keyed maps of this
    #: state exactly (ledger.snapshots; ADR 0017).
    Snapshot = StateSnapshot

    @staticmethod
    def id_for(id_number: str) -> uuid.UUID:
        """One recipient per resident id number."""
        return uuid.uuid5(NAMESPACE, f"recipient:{id_number}")

    class Enrolled(Aggregate.Created):
        """Recipient enrolled. v2 added ``street`` (the street office 街镇 that handles claims, [002 4.1])."""

        class_version = 2
        id_number: str
        name: str
        street: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["street"] = state.get("street") or ""

    def __init__(self, id_number: str, name: str, street: str):
        self.id_number = id_number
        self.name = name
        self.street = street
        self.category_facts: list[CategoryFact] = []
        self.insurance_facts: list[InsuranceFact] = []
        self.mutual_aid_years: list[MutualAidYear] = []
        self.lifts: list[Lift] = []
        self.consent: bool = False
        self.consent_history: list[tuple[datetime, bool]] = []
        self.expenses: dict[str, ExpenseAccount] = {}
        self.receipts: dict[tuple[str, str], list[str]] = {}
        self.decision_seq = 0
        self.cases: dict[str, CaseState] = {}
        self.supplementary: dict[str, SupplementaryState] = {}
        self.suspensions: list[dict[str, Any]] = []
        self.social_help: list[dict[str, Any]] = []
        self.subsidies: list[dict[str, Any]] = []
        self.payouts: list[dict[str, Any]] = []
        self.recoveries: list[dict[str, Any]] = []

    def __deepcopy__(self, memo: dict[int, Any]) -> "Recipient":
        """An independent copy, made in a time that does not grow with the history (issue 16): its
        own top-level lists, maps and sets, sharing everything inside them. That is a deep copy
        because no apply changes a nested object in place: an expense's account, a case, a
        supplementary payout, a suspension, a write-off proposal or a receipt's expense list is
        replaced by a changed copy (``_own``), never edited, and the facts, decision refs and
        summaries are never changed at all. So the copy the aggregate cache hands each command
        (``infra.wiring``) takes new events without touching the cached recipient, for a few dict
        copies instead of a walk of every expense's decision (tests/unit/test_recipient_copy.py).
        Code outside the applies must not change a recipient's nested state either."""
        twin = object.__new__(type(self))
        state = twin.__dict__
        for name, value in self.__dict__.items():
            kind = type(value)
            state[name] = value.copy() if kind is dict or kind is list or kind is set else value
        memo[id(self)] = twin
        return twin

    # ------------------------------------------------------------------ knowledge for the engine
    def knowledge(self) -> Knowledge:
        return Knowledge(
            recipient_id=str(self.id),
            id_number=self.id_number,
            street=self.street,
            categories=list(self.category_facts),
            insurance=list(self.insurance_facts),
            mutual_aid=list(self.mutual_aid_years),
            lifts=list(self.lifts),
            carried_caps=dict(getattr(self, "carried_caps", {})),
            city_usage=dict(getattr(self, "city_usage", {})),
            city_corrections=tuple(getattr(self, "city_corrections", ())),
            suspensions_recorded=tuple(
                (x["expense"], datetime.fromisoformat(x["started_at"]))
                for x in self.suspensions if x.get("scheme") == "changning.four_linkage" and x.get("started_at")
            ),
        )

    def expense_facts(self) -> dict[str, ExpenseFacts]:
        return {eid: acc.facts for eid, acc in self.expenses.items()}

    def decided_refs(self) -> list[DecisionRef]:
        return [acc.decision for acc in self.expenses.values() if acc.decision is not None]

    def open_cases(self) -> list[CaseState]:
        return sorted((c for c in self.cases.values() if c.balance > 0), key=lambda c: (c.opened_at, c.id))

    def open_balance(self) -> Decimal:
        return sum((c.balance for c in self.open_cases()), ZERO)

    def forgivable(self) -> list[tuple[CaseState, Decimal]]:
        """The open cases, oldest first, each with what a write-off may forgive of it (R-CLR-3
        [000 第七条]): its balance less what the recipient's pending supplementary payouts will
        offset when paid (payouts offset the open cases oldest first). Forgiving that part too
        would pay the person twice for one cost (R-CLR-2, R-4L-6 [000 第七条])."""
        cases = self.open_cases()
        pending = sum((s.amount for s in self.supplementary.values() if s.paid_at is None), ZERO)
        covered = dict(clearing.oldest_first(pending, [(c.id, c.balance) for c in cases]))
        return [(c, c.balance - covered.get(c.id, ZERO)) for c in cases if c.balance - covered.get(c.id, ZERO) > 0]

    def write_off_proposals(self) -> dict[str, dict[str, Any]]:
        """Write-off proposals by id (R-CLR-3), pending, approved or refused; a state restored
        from a snapshot taken before proposals were events has none."""
        return self.__dict__.setdefault("_write_off_proposals", {})

    def active_suspension(self, scheme: str) -> dict[str, Any] | None:
        for s in reversed(self.suspensions):
            if s["scheme"] == scheme and s["lifted"] is None:
                return s
        return None

    def subsidies_of_year(self, year: int) -> list[dict[str, Any]]:
        """The enrolment subsidies (R-INS-2 [001 二(二)1; 004 四(一)]) already carried by this
        recipient's resident-insurance enrolments that start in ``year``: a year's contribution is
        paid once, however often its enrolment is recorded. A subsidy belongs to the enrolment
        recorded with it (the same event, so the same recorded time), or found due for it later
        (``EnrolmentSubsidised``, which names it by that time)."""
        starts = {f.recorded_at.isoformat() for f in self.insurance_facts if f.kind == "start" and f.scheme == "resident" and f.valid_from.year == year}
        return [s for s in self.subsidies if s.get("enrolment_at", s.get("at")) in starts]

    def expenses_named(self, handle: str) -> list[str]:
        """The person's expenses recorded under ``handle``, compared as people type it (NFKC, case
        folding, trimming; ADR 0019): a claim names its expenses by id or by these handles."""
        wanted = same_identity(handle)
        return [eid for eid, acc in self.expenses.items() if acc.handle and same_identity(acc.handle) == wanted]

    def receipt_aided_by(self, facts: ExpenseFacts) -> str | None:
        """R-PH-7: which expense (if any) already got aid on this receipt."""
        key = facts.receipt_key
        carried = getattr(self, "carried_receipts", {}).get(key) if key else None
        if carried is not None:
            return carried  # R-CAP-4: aided in the district the person moved from
        others = self.receipts.get(key, [facts.id]) if key else [facts.id]
        for eid in others:
            if self.expenses[eid].decision is not None:
                return eid
        return None

    def expected(self, expense_id: str, *, held: bool = False) -> dict[str, dict[str, Decimal] | Decimal]:
        """What the ledger has settled on for an expense: decided + supplementary − cleared.

        ``held``: what the person holds of it, the amounts written off (R-CLR-3) counted back in.
        A write-off forgives a debt: the person keeps that money, so a later recomputation that
        finds the expense due more pays only what lies above what they hold ("no aid twice for
        the same cost", R-4L-6, R-CLR-2 [000 第七条]); one that finds it due less opens a case only
        for what lies below the settled figure, never again for what was forgiven."""
        acc = self.expenses[expense_id]
        by_scheme = _money_map((acc.decided or {}).get("by_scheme"))
        by_fund = _money_map((acc.decided or {}).get("by_fund"))
        for s in self.supplementary.values():
            if s.expense_id == expense_id:
                by_scheme = _add(by_scheme, s.by_scheme)
                by_fund = _add(by_fund, s.by_fund)
        for c in self.cases.values():
            if c.expense_id == expense_id:
                by_scheme = _add(by_scheme, c.by_scheme, -1)
                by_fund = _add(by_fund, c.by_fund, -1)
                if held and c.written_off:
                    forgiven = _written_off(self, c)
                    by_fund = _add(by_fund, forgiven)
                    by_scheme = _add(by_scheme, clearing.allocate(sum(forgiven.values(), ZERO), c.by_scheme))
        total = sum(by_fund.values(), ZERO)
        return {"total": total, "by_scheme": by_scheme, "by_fund": by_fund}

    # ------------------------------------------------------------------ events
    class CategoryGranted(Aggregate.Event):
        category: str
        valid_from: str
        valid_to: str | None
        subtype: str | None
        determined_on: str | None
        means_test_expenses_from: str | None
        means_test: dict[str, Any] | None

        def apply(self, r: "Recipient") -> None:
            r.category_facts.append(
                CategoryFact(
                    "grant",
                    self.category,
                    _d(self.valid_from),
                    _d(self.valid_to),
                    self.timestamp,
                    self.subtype,
                    _d(self.determined_on),
                    _d(self.means_test_expenses_from),
                )
            )

    class CategoryRevoked(Aggregate.Event):
        category: str
        valid_from: str
        reason: str | None

        def apply(self, r: "Recipient") -> None:
            r.category_facts.append(CategoryFact("revoke", self.category, _d(self.valid_from), None, self.timestamp))

    class InsuranceEnrolmentStarted(Aggregate.Event):
        scheme: str
        valid_from: str
        valid_to: str | None
        subsidy: dict[str, Any] | None

        def apply(self, r: "Recipient") -> None:
            r.insurance_facts.append(
                InsuranceFact("start", self.scheme, _d(self.valid_from), _d(self.valid_to), self.timestamp)
            )
            if self.subsidy:
                r.subsidies.append(dict(self.subsidy, at=self.timestamp.isoformat()))

    class InsuranceEnrolmentEnded(Aggregate.Event):
        scheme: str
        valid_to: str

        def apply(self, r: "Recipient") -> None:
            r.insurance_facts.append(InsuranceFact("end", self.scheme, _d(self.valid_to), None, self.timestamp))

    class EnrolmentSubsidised(Aggregate.Event):
        """R-INS-2 [001 二(二)1; 004 四(一)]: the subsidy of a resident-insurance enrolment found due
        after the enrolment was recorded: a category granted since, held on the enrolment's start
        date. ``enrolment_at`` names the enrolment (its recorded time); the subsidy is paid now."""

        scheme: str
        valid_from: str
        enrolment_at: str
        subsidy: dict[str, Any]

        def apply(self, r: "Recipient") -> None:
            r.subsidies.append(dict(self.subsidy, at=self.timestamp.isoformat(), enrolment_at=self.enrolment_at))

    class MutualAidContributionPaid(Aggregate.Event):
        year: int
        has_home_insurance: bool
        home_insurance_deductible: Decimal

        def apply(self, r: "Recipient") -> None:
            r.mutual_aid_years.append(
                MutualAidYear(self.year, self.has_home_insurance, self.home_insurance_deductible, self.timestamp)
            )

    class AutoClaimConsentChanged(Aggregate.Event):
        signed: bool

        def apply(self, r: "Recipient") -> None:
            r.consent = self.signed
            r.consent_history.append((self.timestamp, self.signed))

    class ExpenseRecorded(Aggregate.Event):
        expense_id: str
        handle: str | None
        visit_type: str
        facility: dict[str, Any]
        service_date: str
        invoice_date: str
        invoice_no: str
        total: Decimal
        in_scope: Decimal
        basic_insurance_paid: Decimal
        referred: bool
        dispensing_only: bool
        critical_illness_related: bool
        critical_illness_evidence: str
        basic_insurance_settled: bool
        duplicate_of: str | None
        source: str

        def apply(self, r: "Recipient") -> None:
            facts = ExpenseFacts(
                id=self.expense_id,
                visit_type=VisitType(self.visit_type),
                facility=Facility.from_dict(self.facility),
                service_date=_d(self.service_date),
                invoice_date=_d(self.invoice_date),
                invoice_no=self.invoice_no,
                total=self.total,
                in_scope=self.in_scope,
                basic_insurance_paid=self.basic_insurance_paid,
                recorded_at=self.timestamp,
                referred=self.referred,
                dispensing_only=self.dispensing_only,
                critical_illness_related=self.critical_illness_related,
                critical_illness_evidence=self.critical_illness_evidence,
                basic_insurance_settled=self.basic_insurance_settled,
                duplicate_of=self.duplicate_of,
            )
            if self.expense_id in r.expenses:
                _facts_changed(r)
            r.expenses[self.expense_id] = ExpenseAccount(facts, handle=self.handle)
            if facts.receipt_key:
                r.receipts[facts.receipt_key] = [*r.receipts.get(facts.receipt_key, ()), self.expense_id]

    class InsuranceSettled(Aggregate.Event):
        expense_id: str
        scheme: str
        amount: Decimal

        def apply(self, r: "Recipient") -> None:
            acc = _own(r.expenses, self.expense_id)
            from dataclasses import replace

            _facts_changed(r)
            acc.facts = replace(
                acc.facts, settlements=acc.facts.settlements + (Settlement(self.scheme, self.amount, self.timestamp),)
            )

    class ClaimAttached(Aggregate.Event):
        """Expenses listed on a lodged claim are reserved for it until it is decided or rejected.
        ``attached`` False releases them when the claim is rejected; on a claim refused as it was
        lodged it releases nothing (nothing was reserved) and is recorded so that the person's own
        stream names every claim on their expenses."""

        claim_id: str
        expense_ids: list[str]
        attached: bool

        def apply(self, r: "Recipient") -> None:
            for eid in self.expense_ids:
                if self.attached:
                    _own(r.expenses, eid).claim_id = self.claim_id
                elif r.expenses[eid].claim_id == self.claim_id and r.expenses[eid].decision is None:
                    _own(r.expenses, eid).claim_id = None

    class DuplicateAttempted(Aggregate.Event):
        """R-PH-7 [002 4.5]: an attempt to claim an already aided receipt, kept for clearing officers.
        v2 (ADR 0020): ``city``, when the receipt was found aided in another district by the city
        view: that district, its expense and the view's positions ``{district: stream position}``
        the refusal was read at (R-CAP-4, R-CLR-1(b)); None otherwise and on v1 events."""

        class_version = 2
        expense_id: str
        channel: str
        claim_id: str | None
        aided_as: str | None
        reason: str
        city: dict[str, Any] | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("city", None)

        def apply(self, r: "Recipient") -> None:
            acc = _own(r.expenses, self.expense_id)
            attempt = {
                "channel": self.channel,
                "claim": self.claim_id,
                "aided_as": self.aided_as,
                "reason": self.reason,
                "at": self.timestamp.isoformat(),
            }
            if self.city is not None:
                attempt["city"] = self.city
            acc.attempted_duplicates = [*acc.attempted_duplicates, attempt]

    class AidDecided(Aggregate.Event):
        """Aid assessed for the expenses of one claim or one-stop settlement, with the full
        explanation, the policy version and the knowledge it was computed from (R-TIME-1).
        In a district that reads the city view (ADR 0020), ``knowledge["city"]`` is what the
        decision read there: the positions and, per cap bucket of its expenses, the city scheme's
        usage in the other districts and the amount counted (R-CAP-4); without it, nothing.

        v2 (ADR 0017): the traces name each parameter version by its key with the value applied
        (``ledger.traces``), and the knowledge block no longer copies every parameter version the
        pass used; v1 events are read in that shape (their ``knowledge.parameters`` become keys)."""

        class_version = 2
        claim_id: str | None
        channel: str
        decisions: list[dict[str, Any]]
        knowledge: dict[str, Any]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["decisions"] = traces.slim(state.get("decisions") or [])
            _upcast_knowledge(state)

        def apply(self, r: "Recipient") -> None:
            r.decision_seq += 1
            for position, summary in enumerate(self.decisions):
                acc = _own(r.expenses, summary["expense"])
                acc.decision = DecisionRef(
                    summary["expense"], self.channel, self.claim_id, self.timestamp, r.decision_seq, position
                )
                acc.decided = acc.due = kept_summary(summary)  # the trace stays in this event
                acc.claim_id = self.claim_id
            city = self.knowledge.get("city")
            if city and "caps" in city:
                # R-CAP-4: the city view as this decision read it, kept for its expenses'
                # reassessments (never re-read: ``ledger.facts.city_read``).
                reads = dict(getattr(r, "city_usage", {}))
                for summary in self.decisions:
                    reads[summary["expense"]] = city
                r.city_usage = reads

    class AidReassessed(Aggregate.Event):
        """R-TIME-2, R-CLR-2: the same expenses recomputed with today's knowledge; both decisions kept.
        v2: traces with parameter keys, as ``AidDecided`` v2."""

        class_version = 2
        trigger: str
        cause: dict[str, Any]
        results: list[dict[str, Any]]
        knowledge: dict[str, Any]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["results"] = traces.slim(state.get("results") or [])
            _upcast_knowledge(state)

        def apply(self, r: "Recipient") -> None:
            for item in self.results:
                _own(r.expenses, item["expense"]).due = kept_summary(item["due"])  # the trace stays in this event
            # How many reassessments changed ``due``: with decisions, cases and supplementary
            # payouts, what tells a pass kept in memory that ``due`` is as it left it (ADR 0017).
            r.reassessments = getattr(r, "reassessments", 0) + 1

    class CityUsageCorrected(Aggregate.Event):
        """R-CAP-4, R-CLR-1(e) [001; 000 第七条]: decisions that counted less of the person's
        city-wide cap usage than the other districts had decided before them (the city view lagged
        behind, or could not be read), with the read each should have made. ``results``: per
        expense, ``city`` (a decision's city block, as ``AidDecided.knowledge["city"]``, with
        ``corrected``: why, and what the decision had counted) and ``previous`` (the read it made,
        or None). Recorded by a clearing run, which then reassesses with it (R-CLR-2); the
        decisions' own records are kept as they were."""

        results: list[dict[str, Any]]
        positions: dict[str, int]

        def apply(self, r: "Recipient") -> None:
            r.city_corrections = tuple(getattr(r, "city_corrections", ())) + tuple(
                (self.timestamp, item["expense"], item["city"]) for item in self.results
            )

    class SuspensionStarted(Aggregate.Event):
        """R-4L-4 [000 第四条(三)]: 四医联动 suspended from an expense on."""

        scheme: str
        valid_from: str
        expense_id: str
        reason: str

        def apply(self, r: "Recipient") -> None:
            r.suspensions.append(
                {
                    "scheme": self.scheme,
                    "from": self.valid_from,
                    "expense": self.expense_id,
                    "reason": self.reason,
                    "started_at": self.timestamp.isoformat(),
                    "lifted": None,
                }
            )

    class SuspensionLifted(Aggregate.Event):
        scheme: str
        reviewer: str
        lifted_on: str

        def apply(self, r: "Recipient") -> None:
            r.suspensions = [
                {**s, "lifted": self.lifted_on, "reviewer": self.reviewer}
                if s["scheme"] == self.scheme and s["lifted"] is None else s
                for s in r.suspensions
            ]
            r.lifts.append(Lift(self.scheme, self.reviewer, _d(self.lifted_on), self.timestamp))

    class SuspensionEnded(Aggregate.Event):
        """R-4L-4 with R-TIME-2, R-CLR-2: a recomputation after a retroactive change no longer
        supports a recorded suspension (the expense that started it no longer passes the month's
        ceiling or visit count); it ends on ``ended_on``. Not a district review: nothing reopens
        that the pass does not reopen by itself, so no ``Lift`` is recorded."""

        scheme: str
        expense_id: str
        ended_on: str
        reason: str

        def apply(self, r: "Recipient") -> None:
            r.suspensions = [
                {**s, "lifted": self.ended_on, "ended_by": "recomputation", "end_reason": self.reason}
                if s["scheme"] == self.scheme and s["expense"] == self.expense_id and s["lifted"] is None else s
                for s in r.suspensions
            ]

    class SocialHelpGranted(Aggregate.Event):
        """R-4L-5 [000 第四条(四)]: one-time social-organisation help."""

        amount: Decimal
        organisation: str | None
        period: str

        def apply(self, r: "Recipient") -> None:
            r.social_help.append(
                {"amount": self.amount, "organisation": self.organisation, "period": self.period, "at": self.timestamp}
            )

    class AidPaid(Aggregate.Event):
        """A payout: per expense amounts; the part owed on clearing cases is offset first (R-CLR-3)."""

        claim_id: str | None
        channel: str
        payments: list[dict[str, Any]]
        offsets: list[dict[str, Any]]
        to_person: Decimal

        def apply(self, r: "Recipient") -> None:
            for p in self.payments:
                acc = _own(r.expenses, p["expense"])
                acc.paid_total += Decimal(p["total"])
                acc.paid_by_scheme = _add(acc.paid_by_scheme, _money_map(p["by_scheme"]))
                acc.paid_by_fund = _add(acc.paid_by_fund, _money_map(p["by_fund"]))
                if p.get("channel") and p["channel"] not in acc.channels:
                    acc.channels = [*acc.channels, p["channel"]]
                for sid in p.get("supplementary", []):
                    _own(r.supplementary, sid).paid_at = self.timestamp
            _apply_recoveries(r, self.offsets, "offset", self.timestamp)
            r.payouts.append(
                {
                    "claim": self.claim_id,
                    "channel": self.channel,
                    "payments": self.payments,
                    "offsets": self.offsets,
                    "to_person": self.to_person,
                    "at": self.timestamp,
                }
            )

    class ClearingCaseOpened(Aggregate.Event):
        """R-CLR-2: a receivable from the recipient, per fund, citing the trigger and both decisions."""

        case_id: str
        expense_id: str
        trigger: str
        amount: Decimal
        by_fund: dict[str, Any]
        by_scheme: dict[str, Any]
        previous: dict[str, Any]
        current: dict[str, Any]

        def apply(self, r: "Recipient") -> None:
            by_fund = _money_map(self.by_fund)
            r.cases[self.case_id] = CaseState(
                self.case_id,
                self.expense_id,
                self.trigger,
                self.amount,
                by_fund,
                _money_map(self.by_scheme),
                self.timestamp,
                # R-CLR-3: the balance is the whole per-fund difference, signed, so that it sums
                # to the amount owed even when funds moved in opposite directions.
                {k: v for k, v in by_fund.items() if v != 0},
                history=[{"kind": "opened", "amount": self.amount, "at": self.timestamp.isoformat()}],
            )

    class SupplementaryPayoutDue(Aggregate.Event):
        supplementary_id: str
        expense_id: str
        trigger: str
        amount: Decimal
        by_fund: dict[str, Any]
        by_scheme: dict[str, Any]
        previous: dict[str, Any]
        current: dict[str, Any]

        def apply(self, r: "Recipient") -> None:
            r.supplementary[self.supplementary_id] = SupplementaryState(
                self.supplementary_id,
                self.expense_id,
                self.trigger,
                self.amount,
                _money_map(self.by_fund),
                _money_map(self.by_scheme),
                self.timestamp,
            )

    class RepaymentReceived(Aggregate.Event):
        """R-CLR-3: money received toward open cases. v2 records who took it and how: the officer,
        the date received, the receipt or voucher number and the method (cash, bank_transfer,
        offset); repayments recorded before have none."""

        class_version = 2
        amount: Decimal
        allocations: list[dict[str, Any]]
        officer: str | None
        received_on: str | None
        voucher: str | None
        method: str | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            for name in ("officer", "received_on", "voucher", "method"):
                state.setdefault(name, None)

        def apply(self, r: "Recipient") -> None:
            _apply_recoveries(r, self.allocations, "repayment", self.timestamp)

    class WriteOffProposed(Aggregate.Event):
        """R-CLR-3: a clearing officer proposes writing off open cases, the amount per case as it
        stood; another officer approves (``WriteOffApproved``) or refuses (``WriteOffRefused``)."""

        proposal_id: str
        officer: str
        reason: str | None
        amount: Decimal
        cases: list[dict[str, Any]]  # [{"case": id, "amount": "12.30"}]

        def apply(self, r: "Recipient") -> None:
            r.write_off_proposals()[self.proposal_id] = {
                "id": self.proposal_id, "officer": self.officer, "reason": self.reason, "amount": self.amount,
                "cases": [dict(c) for c in self.cases], "proposed_at": self.timestamp, "status": "pending",
                "decided_by": None, "decided_at": None, "refusal": None, "written_off": None,
            }

    class WriteOffRefused(Aggregate.Event):
        """R-CLR-3: a second officer refuses a proposed write-off, with the reason."""

        proposal_id: str
        officer: str
        reason: str | None

        def apply(self, r: "Recipient") -> None:
            proposals = r.write_off_proposals()
            proposals[self.proposal_id] = dict(
                proposals[self.proposal_id], status="refused", decided_by=self.officer, decided_at=self.timestamp, refusal=self.reason
            )

    class WriteOffApproved(Aggregate.Event):
        """R-CLR-3: a write-off signed by two distinct officers. v2 names the proposal approved
        (``proposal_id``; None for a write-off signed by both at once, and before v2)."""

        class_version = 2
        officer: str
        approver: str
        reason: str | None
        allocations: list[dict[str, Any]]
        proposal_id: str | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("proposal_id", None)

        def apply(self, r: "Recipient") -> None:
            _apply_recoveries(r, self.allocations, "write_off", self.timestamp)
            for a in self.allocations:
                _own(r.cases, a["case"]).written_off = True
            if self.proposal_id is not None:
                proposals = r.write_off_proposals()
                written = sum((Decimal(a["amount"]) for a in self.allocations), ZERO)
                proposals[self.proposal_id] = dict(
                    proposals[self.proposal_id], status="approved", decided_by=self.approver, decided_at=self.timestamp, written_off=written
                )


    class TransferredOut(Aggregate.Event):
        """R-CAP-4 [001; 000 第七条]: the person moved to another district. Recorded in the district
        they leave, with what goes with them: the city scheme's cap usage per (scheme, year, kind)
        as decided here (money as text; the expenses of claims in flight, ``in_flight``, counted as
        if decided at the move), the receipts aided here (facility code, invoice number) and this
        store's position just before the move. Claims lodged here before the move are
        finished here; nothing new is claimed here afterwards."""

        to_district: str
        from_district: str | None
        position: int
        carried_caps: list[dict[str, Any]]
        aided_receipts: list[list[str]]
        in_flight: list[str]

        def apply(self, r: "Recipient") -> None:
            r.transferred_out = {
                "in_flight": list(self.in_flight),
                "to_district": self.to_district,
                "from_district": self.from_district,
                "position": self.position,
                "carried_caps": [dict(c) for c in self.carried_caps],
                "aided_receipts": [list(k) for k in self.aided_receipts],
                "at": self.timestamp,
            }

    class TransferredIn(Aggregate.Event):
        """R-CAP-4 [001; 000 第七条]: the person arrived from another district (recorded after their
        ``Enrolled`` here, which carries the id number, name and street under this store's
        encryption, ADR 0015). It carries their categories and insurance as recorded there, the
        city scheme's cap usage of the year(s) that counts against the caps here, the receipts
        aided there (a duplicate here) and the source district's store position. The district
        top-up (四医联动) and its monthly count are not carried: they belong to the district that
        pays them."""

        from_district: str
        source_recipient: str
        source_position: int
        categories: list[dict[str, Any]]
        insurance: list[dict[str, Any]]
        carried_caps: list[dict[str, Any]]
        aided_receipts: list[list[str]]

        def apply(self, r: "Recipient") -> None:
            for c in self.categories:
                r.category_facts.append(CategoryFact(
                    c["kind"], c["category"], _d(c["valid_from"]), _d(c.get("valid_to")), self.timestamp,
                    c.get("subtype"), _d(c.get("determined_on")), _d(c.get("means_test_expenses_from")),
                ))
            for i in self.insurance:
                r.insurance_facts.append(InsuranceFact(i["kind"], i["scheme"], _d(i["valid_from"]), _d(i.get("valid_to")), self.timestamp))
            caps = dict(getattr(r, "carried_caps", {}))
            for c in self.carried_caps:
                caps[(c["scheme"], int(c["year"]), c["kind"])] = Decimal(c["used"])
            r.carried_caps = caps
            receipts = dict(getattr(r, "carried_receipts", {}))
            for code, invoice in self.aided_receipts:
                receipts[(code, invoice)] = f"{self.from_district}:{self.source_recipient}"
            r.carried_receipts = receipts
            r.transferred_in = {"from_district": self.from_district, "source_position": self.source_position, "at": self.timestamp}


def _own(mapping: dict[str, Any], key: str) -> Any:
    """The entry ``key`` of one of a recipient's maps (accounts, cases, supplementary payouts),
    replaced by a shallow copy of itself that the caller may change (``Recipient.__deepcopy__``:
    a copy of the recipient shares the entries until one is changed). The entries are plain
    dataclasses (no slots, no ``__copy__``): their attribute dict is copied, a quarter of what
    ``copy.copy`` takes, once per apply that touches an entry."""
    old = mapping[key]
    entry = object.__new__(type(old))
    entry.__dict__.update(old.__dict__)
    mapping[key] = entry
    return entry


def _facts_changed(r: Recipient) -> None:
    """Count changes to the facts of an expense already recorded: with the decisions, what tells a
    pass kept in memory that the expenses it assessed are as it saw them (ADR 0017)."""
    r.facts_changes = getattr(r, "facts_changes", 0) + 1


def _upcast_knowledge(state: dict[str, Any]) -> None:
    """A v1 decision's knowledge block copied every parameter version the pass used: keep keys."""
    knowledge = state.get("knowledge")
    if isinstance(knowledge, dict) and isinstance(knowledge.get("parameters"), list):
        knowledge["parameters"] = sorted(
            traces.key_of(p) if isinstance(p, dict) else str(p) for p in knowledge["parameters"]
        )


def _add(a: dict[str, Decimal], b: dict[str, Decimal], sign: int = 1) -> dict[str, Decimal]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, ZERO) + sign * v
    return out


def _written_off(r: Recipient, case: CaseState) -> dict[str, Decimal]:
    """The amounts of ``case`` written off (R-CLR-3), by fund."""
    out: dict[str, Decimal] = {}
    for rec in r.recoveries:
        if rec["kind"] == "write_off" and rec["case"] == case.id:
            out = _add(out, _money_map(rec["by_fund"]))
    return out


def _apply_recoveries(r: Recipient, allocations: list[dict[str, Any]], kind: str, at: datetime) -> None:
    for a in allocations:
        case = _own(r.cases, a["case"])
        case.balance_by_fund = {
            k: v for k, v in _add(case.balance_by_fund, _money_map(a["by_fund"]), -1).items() if v != 0
        }
        case.history = [*case.history, {"kind": kind, "amount": Decimal(a["amount"]), "at": at.isoformat()}]
        r.recoveries.append({"kind": kind, "case": a["case"], "amount": Decimal(a["amount"]), "by_fund": a["by_fund"], "at": at})


#: Values a copy may share with what it was copied from: immutable, so sharing one is copying it.
_IMMUTABLE = frozenset({str, int, bool, float, type(None), Decimal, date, datetime, uuid.UUID})


def _immutable(value: Any) -> bool:
    kind = type(value)
    return kind in _IMMUTABLE or kind is tuple and all(type(v) in _IMMUTABLE for v in value)


def _deepcopy_small(self: Aggregate, memo: dict[int, Any]) -> Any:
    """``copy.deepcopy`` of a small aggregate (a claim, a claim batch, a receipt), made without the
    library's generic walk (issue 16: the aggregate cache copies one for nearly every online
    command). Exactly a deep copy, whatever the state: an immutable value is shared, a list or map
    holding only immutable values (or tuples of them) gets its own copy, and anything else is
    deep-copied as ``copy.deepcopy`` would (tests/unit/test_small_aggregate_copy.py)."""
    twin = object.__new__(type(self))
    memo[id(self)] = twin
    state = twin.__dict__
    for name, value in self.__dict__.items():
        kind = type(value)
        if kind in _IMMUTABLE:
            state[name] = value
        elif kind is list and all(_immutable(v) for v in value):
            state[name] = list(value)
        elif kind is dict and all(_immutable(k) and _immutable(v) for k, v in value.items()):
            state[name] = dict(value)
        else:
            state[name] = copy.deepcopy(value, memo)
    return twin


class Claim(Aggregate):
    """A post-hoc (or 免申即享 auto) claim and its three signatures (R-PH-1..5, [002 3])."""

    __deepcopy__ = _deepcopy_small

    class Lodged(Aggregate.Created):
        """v2 records the district officer's reason for lodging past the six-month window
        (R-PH-5 [002 4.3], ``deadline_override``); claims lodged before have none."""

        class_version = 2
        recipient_id: str
        expense_ids: list[str]
        handler: str
        channel: str
        proxy_id_number: str | None
        street: str
        lodged_on: str
        deadline_override: str | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("deadline_override", None)

    def __init__(self, recipient_id: str, expense_ids: list[str], handler: str, channel: str, proxy_id_number: str | None, street: str, lodged_on: str,
                 deadline_override: str | None = None):
        self.deadline_override = deadline_override
        self.recipient_id = recipient_id
        self.expense_ids = list(expense_ids)
        self.handler = handler
        self.channel = channel
        self.proxy_id_number = proxy_id_number
        self.street = street
        self.lodged_on = lodged_on
        self.reviewer: str | None = None
        self.approver: str | None = None
        self.status = "lodged"
        self.rejection: dict[str, Any] | None = None
        self.paid_at: datetime | None = None
        self.payer: str | None = None

    class Reviewed(Aggregate.Event):
        reviewer: str

        def apply(self, c: "Claim") -> None:
            c.reviewer = self.reviewer
            c.status = "reviewed"

    class Approved(Aggregate.Event):
        approver: str

        def apply(self, c: "Claim") -> None:
            c.approver = self.approver
            c.status = "approved"

    class Rejected(Aggregate.Event):
        code: str
        rule: str
        message: str
        expense_id: str | None

        def apply(self, c: "Claim") -> None:
            c.status = "rejected"
            c.rejection = {"code": self.code, "rule": self.rule, "message": self.message, "expense": self.expense_id}

    class Paid(Aggregate.Event):
        """District disbursement. v2 records the officer who paid (``payer``), the fourth signature
        (R-PH-4 [002 3.4, 3.5]); payments recorded before have none."""

        class_version = 2
        total: Decimal
        to_person: Decimal
        payer: str | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("payer", None)

        def apply(self, c: "Claim") -> None:
            c.status = "paid"
            c.paid_at = self.timestamp
            c.payer = self.payer


class ClaimBatch(Aggregate):
    """The 免申即享 monthly batch (R-PH-3 [002 3.3]): the claims one run lodged, and the officers who
    signed them as a whole. Automatic claims skip the applicant's paperwork, not the officers: the
    batch's handler lodged them, and a reviewer, an approver and a payer each sign the batch once,
    their signature recorded on each claim (R-PH-4 [002 3.4])."""

    __deepcopy__ = _deepcopy_small

    class Opened(Aggregate.Created):
        month: str
        handler: str
        claim_ids: list[str]

    def __init__(self, month: str, handler: str, claim_ids: list[str]):
        self.month = month
        self.handler = handler
        self.claim_ids = list(claim_ids)
        self.signatures: dict[str, str] = {}

    class Signed(Aggregate.Event):
        role: str  # reviewer | approver | payer
        officer: str
        outcomes: dict[str, str]  # claim id -> accepted | the rejection code

        def apply(self, b: "ClaimBatch") -> None:
            b.signatures[self.role] = self.officer


class PolicyLedger(Aggregate):
    """Every parameter version ever published, in publication order (packs and amendments)."""

    ID = uuid.uuid5(NAMESPACE, "policy-ledger")

    class Opened(Aggregate.Created):
        jurisdiction: str

    def __init__(self, jurisdiction: str):
        self.jurisdiction = jurisdiction
        self.book = PolicyBook()
        self.packs: list[dict[str, Any]] = []
        self.amendments: list[dict[str, Any]] = []

    class PackPublished(Aggregate.Event):
        """A policy pack's dated values, published as known from this moment."""

        scheme: str
        version: str
        content_hash: str
        versions: list[dict[str, Any]]

        def apply(self, p: "PolicyLedger") -> None:
            p.book.extend(_version_from(v, self.timestamp) for v in self.versions)
            p.packs.append({"scheme": self.scheme, "version": self.version, "hash": self.content_hash, "at": self.timestamp})

    class ParameterAmended(Aggregate.Event):
        """A parameter published or amended, possibly with an earlier effective date (R-CLR-1(d))."""

        version: dict[str, Any]

        def apply(self, p: "PolicyLedger") -> None:
            p.book.add(_version_from(self.version, self.timestamp))
            p.amendments.append(dict(self.version, published_at=self.timestamp.isoformat()))


def version_to_event(v: ParameterVersion) -> dict[str, Any]:
    return {
        "name": v.name,
        "value": _encode_value(v.value),
        "effective_from": v.effective_from.isoformat(),
        "effective_to": v.effective_to.isoformat() if v.effective_to else None,
        "reference": v.reference,
        "local_setting": v.local_setting,
        "source": v.source,
    }


def _encode_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    if isinstance(value, tuple):
        return [_encode_value(v) for v in value]
    if isinstance(value, list):
        return [_encode_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode_value(v) for k, v in value.items()}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"decimal"}:
        return Decimal(value["decimal"])
    if isinstance(value, list):
        return tuple(_decode_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _decode_value(v) for k, v in value.items()}
    return value


def _version_from(d: dict[str, Any], published_at: datetime) -> ParameterVersion:
    return ParameterVersion(
        name=d["name"],
        value=_decode_value(d["value"]),
        effective_from=date.fromisoformat(d["effective_from"]),
        effective_to=_d(d.get("effective_to")),
        reference=d.get("reference", ""),
        local_setting=bool(d.get("local_setting", False)),
        published_at=published_at,
        source=d.get("source", "amendment"),
    )


class Receipt(Aggregate):
    """One receipt in the whole ledger: R-CLR-1(b) [002 4.5; 000 第七条] and R-PH-7 — the same
    facility code and invoice number (compared after NFKC, case folding and trimming; the invoice
    number alone without a code, ``ledger.values.receipt_identity``) is the same receipt under
    whichever recipient it was recorded, and it is aided once. Its id is derived from the key, so
    two writers that record or aid the same receipt at once meet on this aggregate's version
    (optimistic concurrency) and the second is decided with the first's outcome in view. Saved in
    the same transaction as the recipient's events (ADR 0003, ADR 0007)."""

    __deepcopy__ = _deepcopy_small

    @staticmethod
    def id_for(key: tuple[str, str]) -> uuid.UUID:
        return uuid.uuid5(NAMESPACE, "receipt:" + "\x1f".join(key))

    class Opened(Aggregate.Created):
        facility_code: str
        invoice_no: str

    def __init__(self, facility_code: str, invoice_no: str):
        self.facility_code = facility_code
        self.invoice_no = invoice_no
        self.expenses: list[tuple[str, str]] = []  # (expense id, recipient id), in recording order
        self.aided_as: str | None = None  # the expense that got aid on this receipt first

    @property
    def key(self) -> tuple[str, str]:
        return (self.facility_code, self.invoice_no)

    @property
    def first_recorded(self) -> str | None:
        return self.expenses[0][0] if self.expenses else None

    class ExpenseNoted(Aggregate.Event):
        """An expense was recorded on this receipt (the first, or a duplicate of it)."""

        expense_id: str
        recipient_id: str

        def apply(self, rc: "Receipt") -> None:
            rc.expenses.append((self.expense_id, self.recipient_id))

    class Aided(Aggregate.Event):
        """Aid was decided on this receipt, as ``expense_id``, through ``channel``."""

        expense_id: str
        channel: str

        def apply(self, rc: "Receipt") -> None:
            if rc.aided_as is None:
                rc.aided_as = self.expense_id


class CommandRecord(Aggregate):
    """A client-supplied command id, recorded with the command's own events: a retry finds it."""

    @staticmethod
    def id_for(command_id: str) -> uuid.UUID:
        return uuid.uuid5(NAMESPACE, f"command:{command_id}")

    class Recorded(Aggregate.Created):
        command_id: str
        command: str
        result: dict[str, Any]

    def __init__(self, command_id: str, command: str, result: dict[str, Any]):
        self.command_id = command_id
        self.command = command
        self.result = result


class ClearingLog(Aggregate):
    """Population clearing runs (R-CLR-2 [000 第七条; 002 4.4]): each run's notification-log
    position, so that the next run looks only at what changed after it."""

    ID = uuid.uuid5(NAMESPACE, "clearing-log")

    class Opened(Aggregate.Created):
        pass

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []

    class RunRecorded(Aggregate.Event):
        position: int  # the last notification the run had seen
        scope: str
        triggers: dict[str, int]  # trigger -> recipients looked at for it
        recipients_changed: int
        cases_opened: int
        supplementary_opened: int

        def apply(self, log: "ClearingLog") -> None:
            log.runs.append({
                "position": self.position, "scope": self.scope, "triggers": dict(self.triggers), "at": self.timestamp,
                "recipients_changed": self.recipients_changed, "cases_opened": self.cases_opened,
                "supplementary_opened": self.supplementary_opened,
            })

    @property
    def last_position(self) -> int | None:
        return self.runs[-1]["position"] if self.runs else None
