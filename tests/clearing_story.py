"""Given/when/then for clearing tests: a story told to a ledger application step by step.

The steps are the scenario contract's (SCENARIOS.md), driven through the scenario runner's own
adapter so handles (R1, E1, C1) read as in the YAML files; the application under test can be the
in-memory one or one on a real store (``database_url``). ``books()`` recomputes the fund books
from the recipients' events, independently of the report, so tests can check that they balance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from commands.app import LedgerApp
from infra.scenario import Runner, _parse_at, _stringify_dates
from infra.settings import Settings
from infra.wiring import build_app, ensure_policy, memory_app
from ledger.aggregates import Recipient
from ledger.money import ZERO

START = "2026-01-05T09:00:00+08:00"
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True}
HOSPITAL_3 = {"kind": "hospital", "level": 3, "district_designated": False}
D = Decimal


def app_on(settings: Settings | None, jurisdiction: str = "shanghai.changning", start: str = START) -> LedgerApp:
    """A ledger on ``settings``' store (in memory when None), its packs published just before
    ``start`` so that the story's recorded times are kept as given."""
    published = _parse_at(start) - timedelta(seconds=1)
    if settings is None:
        return memory_app(jurisdiction, published_at=published)
    app = build_app(settings, jurisdiction=jurisdiction, publish_policy=False)
    ensure_policy(app, published)
    return app


class Story:
    def __init__(self, app: LedgerApp):
        runner = Runner.__new__(Runner)
        runner.app, runner.recipients, runner.expenses, runner.claims, runner.steps = app, {}, {}, {}, []
        self.runner = runner
        self.app = app
        self._n = 0

    def __call__(self, do: str, at: str, **fields: Any) -> dict[str, Any]:
        """One step; returns its report line (status, code, rule)."""
        self._n += 1
        self.runner.step(self._n, _stringify_dates({"at": at, "do": do, **fields}))
        return self.runner.steps[-1]

    # -- short forms for the usual first steps --------------------------------------------------
    def person(self, handle: str, id_number: str, category: str, since: str = "2025-01-01", at: str = START) -> None:
        self("enrol", at, recipient=handle, id_number=id_number, name=f"person {handle}")
        self("grant_category", at, recipient=handle, category=category, **{"from": since})
        self("insure", at, recipient=handle, scheme="resident", **{"from": "2019-01-01"})

    def expense(self, handle: str, recipient: str, at: str, *, visit: str = "outpatient", facility: dict | None = None,
                service: str, invoice: str | None = None, no: str | None = None, in_scope: str, insurance: str = "0.00",
                total: str | None = None, **extra: Any) -> dict[str, Any]:
        return self(
            "record_expense", at, expense=handle, recipient=recipient, visit_type=visit, facility=facility or CHC,
            service_date=service, invoice_date=invoice or service, invoice_no=no or f"INV-{handle}",
            total=total or in_scope, in_scope=in_scope, basic_insurance_paid=insurance, **extra,
        )

    # -- reading -------------------------------------------------------------------------------
    def recipient(self, handle: str) -> Recipient:
        return self.app.recipient(self.runner.recipients[handle])

    def expense_id(self, handle: str) -> str:
        return self.runner.expenses[handle]

    def report(self) -> dict[str, Any]:
        return self.runner.report("story")

    def cases(self, handle: str) -> list[dict[str, Any]]:
        return [c for c in self.report()["clearing_cases"] if c["recipient"] == handle]

    def supplementary(self, handle: str) -> list[dict[str, Any]]:
        return [s for s in self.report()["supplementary"] if s["recipient"] == handle]

    def books(self, handle: str) -> "Books":
        return Books.of(self.recipient(handle))


@dataclass
class Books:
    """A recipient's money as the events tell it, fund by fund."""

    paid: dict[str, Decimal] = field(default_factory=dict)  # every payout, offsets included
    recovered: dict[str, Decimal] = field(default_factory=dict)  # repayments and offsets
    written_off: dict[str, Decimal] = field(default_factory=dict)
    case_amounts: dict[str, Decimal] = field(default_factory=dict)
    case_balances: dict[str, Decimal] = field(default_factory=dict)
    cash_out: Decimal = ZERO  # what reached the person or the facility
    cash_in: Decimal = ZERO  # repayments received

    @classmethod
    def of(cls, r: Recipient) -> "Books":
        b = cls()
        for p in r.payouts:
            for pay in p["payments"]:
                _add(b.paid, pay["by_fund"])
            b.cash_out += Decimal(p["to_person"])
        for rec in r.recoveries:
            _add(b.written_off if rec["kind"] == "write_off" else b.recovered, rec["by_fund"])
            if rec["kind"] == "repayment":
                b.cash_in += Decimal(rec["amount"])
        for c in r.cases.values():
            _add(b.case_amounts, c.by_fund)
            _add(b.case_balances, c.balance_by_fund)
        return b

    def net(self) -> dict[str, Decimal]:
        """Net outflow per fund: aid paid − recoveries (a write-off recovers nothing)."""
        return {f: self.paid.get(f, ZERO) - self.recovered.get(f, ZERO) for f in sorted(set(self.paid) | set(self.recovered))}

    def assert_balanced(self) -> None:
        """R-CLR-3: every fund's books balance."""
        funds = set(self.case_amounts) | set(self.recovered) | set(self.written_off) | set(self.case_balances)
        for f in funds:
            assert self.case_amounts.get(f, ZERO) == (
                self.recovered.get(f, ZERO) + self.written_off.get(f, ZERO) + self.case_balances.get(f, ZERO)
            ), f"fund {f}: case amounts ≠ recovered + written off + open balance"
        # the fund view and the cash view of the same money agree
        assert sum(self.net().values(), ZERO) == self.cash_out - self.cash_in


def _add(into: dict[str, Decimal], amounts: dict[str, Any]) -> None:
    for k, v in amounts.items():
        into[k] = into.get(k, ZERO) + Decimal(v)


def at(day: str, time: str = "10:00:00") -> str:
    """``at("2026-03-01")`` → an ISO time on that day, Shanghai time."""
    return f"{day}T{time}+08:00"


def parse(moment: str) -> datetime:
    return _parse_at(moment)


def id_number(seq: int, born: str = "19580312", area: str = "310105") -> str:
    """A valid 18-character resident id number (GB 11643 check digit) for test person ``seq``."""
    body = f"{area}{born}{seq % 1000:03d}"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    check = "10X98765432"[sum(int(c) * w for c, w in zip(body, weights)) % 11]
    return body + check
