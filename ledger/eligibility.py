"""Who is a recipient on a date, and insured on it (RULES.md §2, R-INS-1)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from ledger.facts import CategoryFact, Knowledge, MutualAidYear
from ledger.values import same_identity

#: Lianyungang sub-types aided only from the county's determination date (R-CAT-5, [004 三]).
#: Lianyungang's categories (R-CAT-5 [004 二, 三]): aided from the identity or its determination,
#: with no means-test back-dating (R-CAT-3 is Changning's [002 4.3]).
LIANYUNGANG_CATEGORIES = frozenset({"lyg_key", "lyg_extended"})

DETERMINATION_SUBTYPES = {"temporary_relief_major_illness", "temporary_relief", "临时救助重大病患者"}


#: R-INS-2 [004 四(一)] 低保对象、特困供养人员、孤儿: the Lianyungang key sub-types whose resident-insurance
#: contribution is paid in full.
_LYG_FULL = {"dibao": "dibao", "低保": "dibao", "低保对象": "dibao", "destitute": "destitute", "特困": "destitute",
             "特困供养": "destitute", "特困供养人员": "destitute", "orphan": "orphan", "孤儿": "orphan"}
#: The same sub-types written with a qualifier (``低保对象（城市）``, ``农村特困供养人员``): the words that
#: name them, never ``特困`` alone (``特困职工``, a distressed worker, is another key sub-type).
_LYG_FULL_WORDS = (("低保", "dibao"), ("特困供养", "destitute"), ("孤儿", "orphan"))


def lyg_contribution_paid_in_full(subtype: str | None) -> str | None:
    """R-INS-2 [004 四(一)]: the key sub-type whose resident-insurance contribution is paid in full
    (``dibao``, ``destitute``, ``orphan``), or None (the county's fixed subsidy applies)."""
    text = same_identity(subtype)
    return _LYG_FULL.get(text) or next((kind for word, kind in _LYG_FULL_WORDS if word in text), None)


def is_temporary_relief(subtype: str | None) -> bool:
    """R-CAT-5 [004 二(一), 三]: the key sub-type 临时救助重大病患者 (temporary relief for a major
    illness), however the sub-type is spelled: a listed name, or any name that says temporary /
    临时 (the other key sub-types are standing identities: 低保, 特困供养, 孤儿, ...)."""
    text = (subtype or "").strip().lower()
    return text in DETERMINATION_SUBTYPES or "temporary" in text or "临时" in text


@dataclass(frozen=True)
class Holding:
    """A category held on a date, and why (for the explanation)."""

    category: str
    valid_from: date
    valid_to: date | None
    subtype: str | None
    basis: str  # "held" | "means_test" (R-CAT-3)
    rule: str

    def as_trace(self) -> dict:
        return {
            "category": self.category,
            "from": self.valid_from.isoformat(),
            "to": self.valid_to.isoformat() if self.valid_to else None,
            "subtype": self.subtype,
            "basis": self.basis,
            "rule": self.rule,
        }


def _aided_from(fact: CategoryFact) -> date:
    """R-CAT-5 [004 三]: key recipients are aided from the day they hold the identity; temporary
    relief major-illness patients and extended recipients only from the determination date."""
    needs_determination = fact.category == "lyg_extended" or (
        fact.category == "lyg_key" and is_temporary_relief(fact.subtype)
    )
    if needs_determination and fact.determined_on and fact.determined_on > fact.valid_from:
        return fact.determined_on
    return fact.valid_from


def category_periods(knowledge: Knowledge) -> dict[str, list[tuple[date, date | None, CategoryFact]]]:
    """Apply grants and revocations in recorded order: the periods each category is held."""
    periods: dict[str, list[tuple[date, date | None, CategoryFact]]] = {}
    for fact in sorted(knowledge.categories, key=lambda f: f.recorded_at):
        spans = periods.setdefault(fact.category, [])
        if fact.kind == "grant":
            spans.append((_aided_from(fact), fact.valid_to, fact))
        else:  # revoke: not held from valid_from on (possibly in the past: R-TIME-2)
            cut = fact.valid_from
            kept = []
            for start, end, src in spans:
                if start >= cut:
                    continue
                if end is None or end >= cut:
                    end = cut - timedelta(days=1)
                kept.append((start, end, src))
            periods[fact.category] = kept
    return periods


def categories_on(knowledge: Knowledge, on: date) -> list[Holding]:
    """R-CAT-1: the categories held on the service date [002 3.2].

    R-CAT-3 [002 4.3]: a person recognised during a year is also aided for that year's expenses
    counted in the means test (from ``means_test_expenses_from``), though they predate the grant.
    That is Changning's procedure: Lianyungang's categories are aided only from the day the
    identity is held or, where the county must determine it, from the determination date
    (R-CAT-5 [004 三] "经县(区)级民政部门认定后…"), never before it.
    """
    held: list[Holding] = []
    for category, spans in category_periods(knowledge).items():
        for start, end, src in spans:
            if start <= on and (end is None or on <= end):
                held.append(Holding(category, start, end, src.subtype, "held", "R-CAT-1"))
                break
            mt = None if category in LIANYUNGANG_CATEGORIES else src.means_test_expenses_from
            if mt and mt <= on < start and on.year == start.year and (end is None or on <= end):
                held.append(Holding(category, start, end, src.subtype, "means_test", "R-CAT-3"))
                break
    return held


def insured_on(knowledge: Knowledge, on: date) -> str | None:
    """R-INS-1 [000 第二条(二)1]: the Shanghai basic insurance scheme the person is enrolled in on a
    date (employee or resident), or None."""
    spans: list[tuple[str, date, date | None]] = []
    for fact in sorted(knowledge.insurance, key=lambda f: f.recorded_at):
        if fact.kind == "start":
            spans.append((fact.scheme, fact.valid_from, fact.valid_to))
        else:
            spans = [
                (s, a, b if (b is not None and b <= fact.valid_from) else fact.valid_from)
                if s == fact.scheme and a <= fact.valid_from
                else (s, a, b)
                for s, a, b in spans
                if not (s == fact.scheme and a > fact.valid_from)
            ]
    for scheme, start, end in spans:
        if start <= on and (end is None or on <= end):
            return scheme
    return None


def mutual_aid_year(knowledge: Knowledge, year: int) -> MutualAidYear | None:
    """[003 三]: the plan covers participants in the years they paid the contribution."""
    found = None
    for m in sorted(knowledge.mutual_aid, key=lambda m: m.recorded_at):
        if m.year == year:
            found = m
    return found
