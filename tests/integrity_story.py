"""A small dataset for the integrity and privacy tests: two recipients, their expenses, a claim
lodged by a proxy, aid paid, late insurance opening a clearing case, a repayment."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from stdnum.cn import ric

from commands import models as m
from commands import queries
from commands.app import LedgerApp
from ledger.values import FUNDS

CST = timezone(timedelta(hours=8))


def id_number(first17: str) -> str:
    """A resident id number with its GB 11643 check digit."""
    return first17 + ric.calc_check_digit(first17 + "0")


@dataclass
class Person:
    id_number: str
    name: str
    street: str
    rid: str = ""
    expenses: list[str] = field(default_factory=list)


def people() -> list[Person]:
    return [
        Person(id_number("31010519580312201"), "王秀英", "华阳路街道"),
        Person(id_number("31010519920715432"), "Zhang Weiqiang", "江苏路街道"),
    ]


@dataclass
class Story:
    people: list[Person]
    proxy_id_number: str

    @property
    def secrets(self) -> list[str]:
        """Every personal value the dataset wrote: none may appear in a dump."""
        return [p.id_number for p in self.people] + [p.name for p in self.people] + [self.proxy_id_number]


def ok(result: Any) -> Any:
    assert result.status == "accepted", result
    return result


def tell(app: LedgerApp) -> Story:
    story = Story(people(), id_number("31010419700101123"))
    # Recorded times are the clock's (a store built by the wiring publishes its policy now);
    # the expenses are a few weeks old, well inside the claim window (R-PH-5).
    at = None
    served = (datetime.now(CST) - timedelta(days=20)).date().isoformat()
    for p in story.people:
        p.rid = ok(app.run(m.Enrol(id_number=p.id_number, name=p.name, street=p.street, at=at))).ids["recipient"]
        ok(app.run(m.GrantCategory.model_validate({"recipient": p.rid, "category": "dibao", "from": "2025-01-01", "at": at})))
        ok(app.run(m.Insure.model_validate({"recipient": p.rid, "scheme": "resident", "from": "2020-01-01", "at": at})))
        for n, (kind, total, in_scope, insured) in enumerate(
            [("outpatient", "150.00", "120.00", "30.00"), ("inpatient", "20000.00", "16000.00", "12000.00")]
        ):
            res = app.run(
                m.RecordExpense.model_validate(
                    {
                        "recipient": p.rid,
                        "visit_type": kind,
                        "facility": {"kind": "hospital", "level": 2, "district_designated": True, "code": "H1"},
                        "referred": True,
                        "service_date": served,
                        "invoice_date": served,
                        "invoice_no": f"{p.rid[:8]}-{n}",
                        "total": total,
                        "in_scope": in_scope,
                        "basic_insurance_paid": insured,
                        "at": at,
                    }
                )
            )
            p.expenses.append(ok(res).ids["expense"])
    first, second = story.people
    ok(app.aid(first.rid, first.expenses, at))
    claim = ok(
        app.run(
            m.LodgeClaim(
                recipient=second.rid,
                expenses=second.expenses,
                handler="handler-1",
                proxy_id_number=story.proxy_id_number,
                at=at,
            )
        )
    ).ids["claim"]
    for cmd in (
        m.Review(claim=claim, reviewer="reviewer-1", at=at),
        m.Approve(claim=claim, approver="approver-1", at=at),
        m.Pay(claim=claim, at=at),
    ):
        ok(app.run(cmd))
    # late insurance after aid: an overpayment, a clearing case, a repayment (R-INS-4, R-CLR-2/3)
    ok(app.run(m.SettleInsurance(expense=first.expenses[1], scheme="critical_illness", amount=Decimal("1000.00"), at=at)))
    r = app.recipient(first.rid)
    owed = r.open_balance()
    assert owed > 0
    ok(app.run(m.Repay(recipient=first.rid, amount=min(owed, Decimal("100.00")), at=at)))
    return story


def money_figures(app: LedgerApp, story: Story) -> dict[str, Any]:
    """Every money figure of the story's recipients, as the read interface gives them."""
    out: dict[str, Any] = {}
    for p in story.people:
        r = app.recipient(p.rid)
        out[p.rid] = {
            "funds": {f: str(v) for f, v in queries.fund_movements(r).items() if f in FUNDS or v},
            "expenses": {eid: queries.expense_view(r, eid) for eid in r.expenses},
            "cases": [queries.case_view(c) for c in r.cases.values()],
            "annual": queries.annual_rows(r, app.policy().book, app.schemes),
        }
    return out
