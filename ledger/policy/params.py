"""Policy parameters as dated data (valid time) with a publication time (knowledge).

A *parameter version* says: from ``effective_from`` to ``effective_to`` (inclusive; ``None`` is
open), the parameter ``name`` has ``value``, by ``reference`` (seed file and clause), as published
at ``published_at``. Policy packs publish versions; ``set_parameter`` publishes amendments, which
may be retroactive. Nothing is ever edited: a later publication covering a date wins on that date.

The value in force on a date *as known at T* is the latest-published version, among those
published at or before T, whose period covers the date (R-TIME-1, R-TIME-3).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Iterable


class PolicyError(ValueError):
    """A policy pack or amendment that cannot be accepted.

    ``code`` is the rejection code (``POLICY_FLOOR`` for a broken floor, R-LYG-1), ``rule`` the
    R-id, ``field`` the parameter name.
    """

    def __init__(self, message: str, *, code: str = "INVALID_POLICY", rule: str = "", field: str = ""):
        super().__init__(message)
        self.code = code
        self.rule = rule
        self.field = field


class UnknownParameter(PolicyError):
    def __init__(self, name: str):
        super().__init__(f"unknown policy parameter {name!r}", code="UNKNOWN_PARAMETER", field=name)


@dataclass(frozen=True)
class ParameterVersion:
    name: str  # full dotted name, e.g. "shanghai.medical_aid.rate.inpatient.dibao"
    value: Any  # Decimal, bool, int, str, list of bands, or None (rule ended / unset)
    effective_from: date
    effective_to: date | None
    reference: str  # seed file and clause, e.g. "[001 二(二)4]"
    local_setting: bool  # a RULES.md PARAMETER default: a local setting, not policy
    published_at: datetime
    source: str  # "pack:<scheme>@<version>" or "amendment"

    def covers(self, on: date) -> bool:
        return self.effective_from <= on and (self.effective_to is None or on <= self.effective_to)

    def as_trace(self) -> dict[str, Any]:
        """The form stored in a decision's explanation."""
        return {
            "name": self.name,
            "value": _jsonable(self.value),
            "effective_from": self.effective_from.isoformat(),
            "effective_to": self.effective_to.isoformat() if self.effective_to else None,
            "reference": self.reference,
            "local_setting": self.local_setting,
            "source": self.source,
            "published_at": self.published_at.isoformat(),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, date):
        return value.isoformat()
    return value


@dataclass
class PolicyBook:
    """Every parameter version the ledger has been told, in publication order."""

    versions: list[ParameterVersion] = field(default_factory=list)
    _by_name: dict[str, list[ParameterVersion]] | None = field(default=None, init=False, repr=False, compare=False)
    _hash: str | None = field(default=None, init=False, repr=False, compare=False)

    def add(self, version: ParameterVersion) -> None:
        self.versions.append(version)
        self._by_name = self._hash = None

    def extend(self, versions: Iterable[ParameterVersion]) -> None:
        self.versions.extend(versions)
        self._by_name = self._hash = None

    def _index(self) -> dict[str, list[ParameterVersion]]:
        if self._by_name is None:
            index: dict[str, list[ParameterVersion]] = {}
            for v in self.versions:
                index.setdefault(v.name, []).append(v)
            self._by_name = index
        return self._by_name

    def known_at(self, t: datetime | None) -> "PolicyBook":
        if t is None:
            return self
        # The latest publication, remembered with the index (``add``/``extend`` drop both): a
        # cut or a pass asks this of the same book for every recipient, issue 16.
        index = self._index()
        latest = self.__dict__.get("_latest")
        if latest is None or latest[0] is not index:
            latest = self.__dict__["_latest"] = (index, max((v.published_at for v in self.versions), default=None))
        if latest[1] is None or latest[1] <= t:
            return self
        return PolicyBook([v for v in self.versions if v.published_at <= t])

    #: Answers ``lookup`` remembers per book (then it starts again).
    LOOKUPS_MAX = 20_000

    def lookup(self, name: str, on: date) -> ParameterVersion | None:
        """The version of ``name`` in force on ``on`` (latest publication wins).

        Remembered with the index it was found in (a pass asks the same few names on the same few
        dates for every expense it assesses, issue 16): ``add``/``extend`` drop both. Kept beside
        the dataclass's fields, so a book's snapshot, equality and repr are as before."""
        index = self._index()
        memo = self.__dict__.get("_lookups")
        if memo is None or memo[0] is not index or len(memo[1]) >= self.LOOKUPS_MAX:
            memo = self.__dict__["_lookups"] = (index, {})
        answers = memo[1]
        key = (name, on)
        if key in answers:
            return answers[key]
        found: ParameterVersion | None = None
        for v in index.get(name, ()):  # publication order: later entries win
            if v.covers(on):
                found = v
        answers[key] = found
        return found

    def names(self) -> set[str]:
        return {v.name for v in self.versions}

    def content_hash(self) -> str:
        """The policy version: a hash of every version known (what the decision could see)."""
        if self._hash is None:
            h = hashlib.sha256()
            for v in self.versions:
                h.update(json.dumps(v.as_trace(), sort_keys=True, ensure_ascii=False).encode())
            self._hash = h.hexdigest()[:16]
        return self._hash
