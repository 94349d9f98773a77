"""What-if: the decided expenses recomputed under a proposed parameter change, recording nothing.

A proposed amendment is built exactly as ``set_parameter`` builds one
(:func:`ledger.policy.packs.make_amendment`, then :func:`~ledger.policy.packs.validate`, so a
proposal that breaks a floor is refused with ``POLICY_FLOOR`` as the real command would be,
R-LYG-1) and added to a *copy* of the policy book. Every decided expense in scope is then assessed
twice with today's knowledge, under the book as it is and under the copy, the same pass clearing
runs after a real amendment (R-CLR-1(d), R-CLR-2); the difference per scheme, fund, category,
street and service month is what the change would move. Nothing is saved.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Callable

import yaml

from commands.app import LedgerApp
from ledger import engine, errors
from ledger.aggregates import Recipient
from ledger.money import ZERO, fmt
from ledger.policy import packs
from ledger.policy.params import ParameterVersion, PolicyBook, PolicyError

SCOPES = ("scheme", "street", "recipient")
DIMENSIONS = ("scheme", "fund", "category", "street", "month")


@dataclass
class Scope:
    """``--scope kind=value`` filters: values of one kind are alternatives, kinds combine."""

    schemes: set[str] = field(default_factory=set)
    streets: set[str] = field(default_factory=set)
    recipients: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, items: list[str] | None, id_for: Any = None) -> "Scope":
        """``id_for`` maps a resident id number to its recipient id (``LedgerApp.recipient_id_for``:
        keyed when personal data is protected, ADR 0015)."""
        id_for = id_for or Recipient.id_for
        scope = cls()
        for item in items or []:
            kind, sep, value = item.partition("=")
            if not sep:
                kind, sep, value = item.partition(":")
            kind, value = kind.strip(), value.strip()
            if not sep or kind not in SCOPES or not value:
                raise errors.InvalidInput(f"scope {item!r}: expected KIND=VALUE with KIND one of {', '.join(SCOPES)}", field="scope")
            if kind == "scheme":
                scope.schemes.add(value)
            elif kind == "street":
                scope.streets.add(value)
            else:
                scope.recipients.add(str(id_for(value.upper())) if len(value) == 18 else value)
        return scope

    def as_dict(self) -> dict[str, list[str]]:
        return {"scheme": sorted(self.schemes), "street": sorted(self.streets), "recipient": sorted(self.recipients)}


@dataclass
class _Sum:
    before: Decimal = ZERO
    after: Decimal = ZERO

    def add(self, before: Decimal, after: Decimal) -> None:
        self.before += before
        self.after += after

    def as_dict(self) -> dict[str, str]:
        return {"before": fmt(self.before), "after": fmt(self.after), "change": fmt(self.after - self.before)}


@dataclass
class WhatIf:
    amendments: list[dict[str, Any]]
    scope: Scope
    recipients_considered: int = 0
    expenses_considered: int = 0
    expenses: list[dict[str, Any]] = field(default_factory=list)  # the decided expenses that change
    total: _Sum = field(default_factory=_Sum)
    by: dict[str, dict[str, _Sum]] = field(default_factory=lambda: {d: {} for d in DIMENSIONS})

    @property
    def recipients_affected(self) -> int:
        return len({e["recipient"] for e in self.expenses})

    def as_dict(self) -> dict[str, Any]:
        return {
            "amendments": self.amendments,
            "scope": self.scope.as_dict(),
            "recorded": False,
            "recipients_considered": self.recipients_considered,
            "expenses_considered": self.expenses_considered,
            "recipients_affected": self.recipients_affected,
            "expenses_affected": len(self.expenses),
            "total": self.total.as_dict(),
            **{f"by_{d}": {k: v.as_dict() for k, v in sorted(self.by[d].items())} for d in DIMENSIONS},
            "expenses": self.expenses,
        }


def proposed_book(book: PolicyBook, settings: list[tuple[str, Any]], effective_from: date, effective_to: date | None, at: datetime | None = None) -> tuple[PolicyBook, list[ParameterVersion]]:
    """A copy of ``book`` with the proposed versions added last (so they win on their dates),
    checked as ``set_parameter`` checks an amendment; raises :class:`PolicyError`."""
    moment = at or datetime.now(timezone.utc)
    versions = [packs.make_amendment(name, value, effective_from, effective_to, moment, "what-if proposal") for name, value in settings]
    packs.validate(book, versions)
    return PolicyBook(list(book.versions) + versions), versions


def _parts(a: engine.Assessment | None) -> dict[tuple[str, str], Decimal]:
    out: dict[tuple[str, str], Decimal] = {}
    if a is None or not a.granted:
        return out
    for p in a.parts:
        for f, amount in p.by_fund.items():
            out[(p.scheme, f)] = out.get((p.scheme, f), ZERO) + amount
    return out


def what_if(
    app: LedgerApp,
    settings: list[tuple[str, Any]],
    effective_from: date,
    effective_to: date | None = None,
    scope: Scope | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> WhatIf:
    """Recompute the decided expenses in scope under the proposal; record nothing.

    Raises :class:`PolicyError` (``UNKNOWN_PARAMETER``, ``INVALID_VALUE``, ``POLICY_FLOOR``) for a
    proposal the ledger would refuse."""
    scope = scope or Scope()
    current = app.policy().book
    book, versions = proposed_book(current, settings, effective_from, effective_to)
    report = WhatIf(
        amendments=[
            {"name": v.name, "value": _plain(v.value), "effective_from": v.effective_from.isoformat(), "effective_to": v.effective_to.isoformat() if v.effective_to else None}
            for v in versions
        ],
        scope=scope,
    )
    rids = [uuid.UUID(r) for r in sorted(scope.recipients)] if scope.recipients else list(app.recipient_ids())
    for rid in rids:
        if progress is not None:
            progress(1)
        r = app.recipient(rid)
        if scope.streets and r.street not in scope.streets:
            continue
        refs = r.decided_refs()
        facts = r.expense_facts()
        report.recipients_considered += 1
        report.expenses_considered += len(refs)
        # Values are looked up on service dates, so only an expense served from the amendment's
        # first day on can change directly; the ones after it in canonical order follow through
        # the caps (R-CAP-2); a recipient with none such cannot change at all.
        if not any(facts[d.expense_id].service_date >= effective_from for d in refs):
            continue
        k = r.knowledge()
        before = engine.assess(k, facts, refs, current, app.schemes)
        after = engine.assess(k, facts, refs, book, app.schemes)
        for d in engine.canonical_order(refs, facts):
            eid = d.expense_id
            a0, a1 = before.assessments.get(eid), after.assessments.get(eid)
            p0, p1 = _parts(a0), _parts(a1)
            keys = sorted(k2 for k2 in set(p0) | set(p1) if not scope.schemes or k2[0] in scope.schemes)
            if all(p0.get(key, ZERO) == p1.get(key, ZERO) for key in keys):
                continue
            e = facts[eid]
            category = (a1.category if a1 is not None and a1.category else None) or (a0.category if a0 is not None else None) or ""
            month = f"{e.service_date.year:04d}-{e.service_date.month:02d}"
            t0 = sum((p0.get(key, ZERO) for key in keys), ZERO)
            t1 = sum((p1.get(key, ZERO) for key in keys), ZERO)
            report.total.add(t0, t1)
            for key in keys:
                scheme, fund = key
                b, c = p0.get(key, ZERO), p1.get(key, ZERO)
                report.by["scheme"].setdefault(scheme, _Sum()).add(b, c)
                report.by["fund"].setdefault(fund, _Sum()).add(b, c)
            report.by["category"].setdefault(category, _Sum()).add(t0, t1)
            report.by["street"].setdefault(r.street, _Sum()).add(t0, t1)
            report.by["month"].setdefault(month, _Sum()).add(t0, t1)
            report.expenses.append(
                {
                    "expense": eid,
                    "handle": r.expenses[eid].handle,
                    "recipient": str(r.id),
                    "street": r.street,
                    "category": category,
                    "service_month": month,
                    "before": fmt(t0),
                    "after": fmt(t1),
                    "change": fmt(t1 - t0),
                }
            )
    return report


def parse_setting(text: str) -> tuple[str, Any]:
    """``NAME=VALUE``; a VALUE starting with ``[`` or ``{`` is read as YAML (categories, bands)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise errors.InvalidInput(f"--set {text!r}: expected NAME=VALUE", field="set")
    raw: Any = value.strip()
    if raw[:1] in ("[", "{"):
        raw = yaml.safe_load(raw)
    elif raw.lower() == "null":
        raw = None
    return name.strip(), raw


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


__all__ = ["PolicyError", "Scope", "WhatIf", "parse_setting", "proposed_book", "what_if"]
