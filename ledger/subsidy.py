"""Subsidised enrolment in resident insurance (R-INS-2 [001 二(二)1, 二(四)2; 004 四(一)]): who has
their personal contribution paid, and how much, from the city aid fund. Pure: the caller gives the
categories held on the enrolment's start date, the policy book, the person's age there (asked only
when a rule needs it) and the subsidies the year's enrolments already carry."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from ledger.eligibility import Holding, lyg_contribution_paid_in_full
from ledger.facts import InsuranceFact
from ledger.money import ZERO, fmt, money
from ledger.policy.params import PolicyBook
from ledger.values import Scheme

#: Shanghai [001 二(二)1]: the categories whose resident-insurance contribution is paid in full.
SHANGHAI_FULL = frozenset({"dibao", "special_relief", "orphan", "child_in_distress"})
#: [001 二(四)2]: the children whose contribution to the children's inpatient fund is paid in full.
SHANGHAI_CHILDREN_FUND = frozenset({"dibao", "orphan", "child_in_distress"})


def enrolment_subsidy(
    book: PolicyBook, schemes: Sequence[str], held: Sequence[Holding], valid_from: date, age: Callable[[], int],
    earlier: Sequence[dict[str, Any]],
) -> dict[str, Any] | None:
    """The subsidy of a resident-insurance enrolment starting ``valid_from``, less what the year's
    ``earlier`` enrolments already carry (:func:`less_already_paid`), or None.

    - Shanghai [001 二(二)1]: dibao, special relief, orphans and children in distress in full;
      low-income members aged 60+ a fixed subsidy (PARAMETER ``enrolment_subsidy.low_income_60plus``,
      a local setting). Dibao children, scattered orphans and children in distress also have
      their contribution to the children's inpatient mutual fund 少儿住院互助基金 paid in full
      [001 二(四)2] (``children_fund`` in the subsidy).
    - Lianyungang [004 四(一)]: key recipients who are dibao, destitute (特困供养) or orphans in
      full; every other recipient the county's setting (PARAMETER
      ``lianyungang.medical_aid.enrolment_subsidy.other``, a local setting, 0 until set)."""
    subsidy = None
    if Scheme.SHANGHAI_MEDICAL_AID.value in schemes:
        subsidy = _shanghai(book, {h.category for h in held}, valid_from, age)
    elif Scheme.LIANYUNGANG.value in schemes:
        subsidy = _lianyungang(book, held, valid_from)
    return less_already_paid(subsidy, earlier)


def _shanghai(book: PolicyBook, held: set[str], valid_from: date, age: Callable[[], int]) -> dict[str, Any] | None:
    full = held & SHANGHAI_FULL
    if full:
        subsidy: dict[str, Any] = {"kind": "contribution_paid_in_full", "category": sorted(full)[0], "amount": "0.00", "fund": "city", "rule": "R-INS-2", "clause": "[001 二(二)1]"}
        children = held & SHANGHAI_CHILDREN_FUND
        if children and age() < 18:
            # [001 二(四)2] 低保家庭儿童及社会散居孤儿、困境儿童基本生活保障对象参加少儿住院互助基金的个人缴费部分给予全额资助
            subsidy["children_fund"] = {"kind": "contribution_paid_in_full", "category": sorted(children)[0], "amount": "0.00", "fund": "city", "rule": "R-INS-2", "clause": "[001 二(四)2]"}
        return subsidy
    if "low_income" in held and age() >= 60:
        v = book.lookup(f"{Scheme.SHANGHAI_MEDICAL_AID.value}.enrolment_subsidy.low_income_60plus", valid_from)
        amount = money(v.value) if v and v.value is not None else ZERO
        return {"kind": "fixed_subsidy", "category": "low_income", "amount": fmt(amount), "fund": "city", "rule": "R-INS-2", "clause": "[001 二(二)1]", "local_setting": True}
    return None


def _lianyungang(book: PolicyBook, held: Sequence[Holding], valid_from: date) -> dict[str, Any] | None:
    for h in held:
        kind = lyg_contribution_paid_in_full(h.subtype) if h.category == "lyg_key" else None
        if kind is not None:
            return {"kind": "contribution_paid_in_full", "category": h.category, "subtype": kind, "amount": "0.00", "fund": "city", "rule": "R-INS-2", "clause": "[004 四(一)]"}
    if not any(h.category in ("lyg_key", "lyg_extended") for h in held):
        return None
    v = book.lookup(f"{Scheme.LIANYUNGANG.value}.enrolment_subsidy.other", valid_from)
    amount = money(v.value) if v and v.value is not None else ZERO
    category = next(h.category for h in held if h.category in ("lyg_key", "lyg_extended"))
    return {"kind": "fixed_subsidy", "category": category, "amount": fmt(amount), "fund": "city", "rule": "R-INS-2", "clause": "[004 四(一)]", "local_setting": True}


def less_already_paid(subsidy: dict[str, Any] | None, earlier: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """A year's contribution is subsidised once (R-INS-2 [001 二(二)1; 004 四(一)]): an enrolment
    recorded again for a year whose contribution was already paid in full carries nothing more, and
    a fixed subsidy only what the year's earlier enrolments did not already pay (a subsidy set
    since, say)."""
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


def pays_something(subsidy: dict[str, Any] | None) -> bool:
    """Whether a subsidy found after its enrolment is worth recording: a contribution paid in full
    (its amount is not given by the rules), or a fixed subsidy above zero."""
    return subsidy is not None and (subsidy["kind"] != "fixed_subsidy" or bool(Decimal(subsidy["amount"])))


def enrolments_a_grant_covers(facts: Iterable[InsuranceFact], granted_from: date, granted_to: date | None) -> list[InsuranceFact]:
    """The resident-insurance enrolments whose start date a category granted over [granted_from,
    granted_to] covers (R-INS-2 judges the categories held on that date), earliest first."""
    return sorted(
        (f for f in facts if f.kind == "start" and f.scheme == "resident" and granted_from <= f.valid_from
         and (granted_to is None or f.valid_from <= granted_to)),
        key=lambda f: (f.valid_from, f.recorded_at),
    )
