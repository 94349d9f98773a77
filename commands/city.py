"""The city view as a district's decisions read it (R-CAP-4, R-CLR-1(b), R-PH-7 [001; 002 4.5;
000 第七条]; ADR 0020).

Each district decides in its own store; the city scheme's limits and the rule that a receipt is
aided once are the person's, city-wide. Where the process runs as a district and the city view is
configured, the wiring gives ``LedgerCore`` a :class:`CityIndex` (``infra.city.DistrictCityIndex``)
and a decision reads two answers from it, each true at the positions ``{district: stream
position}`` it carries:

- ``receipt``: was this receipt aided (paid) in another district? Then the expense is refused
  exactly as a duplicate inside the ledger (code ``DUPLICATE``), and the refusal names the
  district, its expense and the positions ("as of the city view at changning 412, xuhui 380");
- ``usage``: the person's city-scheme aid due per (invoice year, kind) and district. What the other
  districts used counts against the annual cap of the expenses decided now (R-CAP-2, R-CAP-4),
  per district the larger of the city view's figure and what a move carried in from it
  (``Knowledge.carried_caps``, already in the running usage), so nothing is counted twice.

Decide in the command, record in the event: what was read goes into the decision's
``AidDecided.knowledge["city"]`` (:func:`usage_block`), and a replay or a later reassessment of
the same expense uses that record (``ledger.facts.city_read``), never the view as it is by then.
Without a city index (the single-district ledger, ``make demo``) nothing is read or recorded.

Commands never import infra: the index is this port, the adapter lives in ``infra.city``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from ledger import errors
from ledger.money import ZERO, fmt

RULE_RECEIPT = "R-CAP-4, R-CLR-1(b)"
CLAUSE_RECEIPT = "[002 4.5; 000 第七条]"


class CityUnavailable(Exception):
    """The city view could not be read now (its database is unreachable). The decision goes on
    without it and records that (eventual consistency, ADR 0020: the city view's conflicts and
    the clearing run catch a receipt paid in two districts afterwards)."""


class ReceiptRead(Protocol):
    """Whether a receipt was aided in a district other than the asking one, as of ``positions``."""

    @property
    def district(self) -> str | None: ...

    @property
    def expense_id(self) -> str | None: ...

    @property
    def positions(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class UsageRead:
    """A person's city-scheme aid due per (invoice year, cap kind) and district (R-CAP-2,
    R-CAP-4), as of ``positions``."""

    used: Mapping[tuple[int, str], Mapping[str, Decimal]] = field(default_factory=dict)
    positions: Mapping[str, int] = field(default_factory=dict)


class CityIndex(Protocol):
    """The two reads a district's decision makes in the city view, each with its positions."""

    #: The district this ledger is (its own usage and payments are the ledger's own business).
    district: str

    def receipt(self, facility_code: str | None, invoice_no: str) -> ReceiptRead: ...

    def usage(self, recipient_key: str, years: Iterable[int]) -> UsageRead: ...


def as_of(positions: Mapping[str, int]) -> str:
    """``changning 412, xuhui 380``: the city view's positions, by district code."""
    return ", ".join(f"{d} {p}" for d, p in sorted(positions.items())) or "nothing applied yet"


class AidedInAnotherDistrict(errors.Duplicate):
    """R-CAP-4, R-CLR-1(b), R-PH-7: the receipt was aided in another district, as the city view
    knows it: a duplicate, refused as one inside the ledger is."""

    def __init__(self, expense_id: str, answer: ReceiptRead):
        self.aided_as = f"{answer.district}:{answer.expense_id}"
        self.city = {"district": answer.district, "expense": answer.expense_id, "positions": dict(answer.positions)}
        super().__init__(
            f"expense {expense_id}: the receipt was already aided in {answer.district} (expense {answer.expense_id}) "
            f"as of the city view at {as_of(answer.positions)}; a receipt is aided once in the city "
            f"({RULE_RECEIPT}, R-PH-7 {CLAUSE_RECEIPT})",
            rule=RULE_RECEIPT,
            field="expenses",
        )


def usage_block(
    district: str,
    read: UsageRead,
    buckets: Iterable[tuple[str, int, str]],
    carried: Mapping[tuple[str, int, str], Decimal],
    carried_from: str | None,
) -> dict[str, Any]:
    """What a decision records of the city view's usage (``AidDecided.knowledge["city"]``): per
    cap bucket (scheme, invoice year, kind) of the expenses it decides, the city-scheme aid due in
    every other district and the amount counted against the cap here (R-CAP-2, R-CAP-4).

    The running usage here already starts from what a move carried in (``carried``, from district
    ``carried_from``); that district counts only what the city view shows beyond it (per district
    the larger of the two), every other district counts in full. (A person who moved twice carries
    the first district's usage inside the second's: the first then counts twice. Conservative:
    never paid twice; ADR 0020.)"""
    caps = []
    for scheme, year, kind in sorted(set(buckets)):
        elsewhere = {d: a for d, a in sorted(read.used.get((year, kind), {}).items()) if d != district and a}
        brought = carried.get((scheme, year, kind), ZERO)
        counted = ZERO
        for d, amount in elsewhere.items():
            counted += max(ZERO, amount - brought) if d == carried_from else amount
        entry: dict[str, Any] = {
            "scheme": scheme,
            "year": year,
            "kind": kind,
            "elsewhere": {d: fmt(a) for d, a in elsewhere.items()},
            "counted": fmt(counted),
        }
        if brought and carried_from:
            seen = elsewhere.get(carried_from, ZERO)
            entry["carried_from"] = {
                "district": carried_from,
                "carried_in": fmt(brought),
                "city_view": fmt(seen),
                "larger": "city_view" if seen > brought else "carried_in",
            }
        caps.append(entry)
    return {"district": district, "positions": dict(read.positions), "caps": caps}


RULE_CAP = "R-CAP-4, R-CLR-1(e)"
CLAUSE_CAP = "[001; 000 第七条]"
#: The citation a clearing run's cause records for the cap check.
CITATION_CAP = f"{RULE_CAP} {CLAUSE_CAP}"


@dataclass(frozen=True)
class UsageOverlap:
    """The city view's rows of the persons aided in ``district`` and in another district
    (``infra.city.CityView.usage_overlaps_for``), per recipient, as of ``positions``: what a
    clearing run of ``district`` checks its decisions' city reads against (R-CAP-4, R-CLR-1(e))."""

    district: str
    positions: Mapping[str, int]
    by_recipient: Mapping[Any, list[Mapping[str, Any]]]

    def __len__(self) -> int:
        return len(self.by_recipient)


def used_by_bucket(rows: Iterable[Mapping[str, Any]], *, excluding: str | None = None, before_us: int | None = None) -> dict[tuple[int, str], dict[str, Decimal]]:
    """R-CAP-2, R-CAP-4 [001; 000 第七条]: the city-scheme aid due of the city view's rows (each:
    ``district``, ``year``, ``cap_year``, ``kind``, ``city_due``, ``decided_us``) per cap bucket
    (invoice year, kind) and district. A row kept before the cap bucket was counts under both kinds
    of its service year (never paid twice). ``excluding``: a district left out (the asking one);
    ``before_us`` (µs since 1970 UTC): only the expenses first decided before it, a row from before
    the view kept decision times counting (conservative, as above)."""
    used: dict[tuple[int, str], dict[str, Decimal]] = {}
    for row in rows:
        if row["district"] == excluding:
            continue
        if before_us is not None and row.get("decided_us") is not None and row["decided_us"] >= before_us:
            continue
        year = row["cap_year"] or row["year"]
        for kind in (row["kind"],) if row["kind"] else ("outpatient", "inpatient"):
            by_district = used.setdefault((year, kind), {})
            by_district[row["district"]] = by_district.get(row["district"], ZERO) + Decimal(row["city_due"])
    return used


def usage_known_before(rows: Iterable[Mapping[str, Any]], district: str, before_us: int, positions: Mapping[str, int]) -> UsageRead:
    """R-CAP-4, R-CLR-1(e) [001; 000 第七条]: the person's city-scheme aid due per cap bucket in the
    districts other than ``district``, counting only the expenses first decided there before
    ``before_us``: what a decision recorded at that time would have read from a view that did not
    lag. ``rows``: the city view's rows of one person (``usage_overlaps_for``). Each counts at its
    aid due as now known (a later reassessment there included)."""
    return UsageRead(used_by_bucket(rows, excluding=district, before_us=before_us), dict(positions))


def unavailable_block(district: str, reason: str) -> dict[str, Any]:
    """What a decision records when the city view could not be read: nothing counted."""
    return {"district": district, "unavailable": reason}
