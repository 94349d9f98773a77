"""A small synthetic district, generated through the command handlers (never written directly).

Used by the relay benchmark and by the subscriber tests: recipients on several Changning streets,
categories and insurance, outpatient and inpatient expenses, post-hoc claims (some paid days after
approval, some approved after the 20th so that they fall into the next month's report), 免申即享
auto claims, one-stop settlements, and late insurance payments that open clearing cases which
later payouts offset. Deterministic for a given seed. Synthetic resident id numbers only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Callable

from stdnum.cn import ric

from commands import models as m
from ledger.values import CST

STREETS = ("华阳路街道", "江苏路街道", "新华路街道", "周家桥街道", "天山路街道", "仙霞新村街道", "虹桥街道", "程家桥街道", "北新泾街道", "新泾镇")
CATEGORIES = ("dibao", "low_income", "dibao", "special_relief", "expenditure_poor_1")
START = datetime(2026, 4, 1, 9, 0, tzinfo=CST)


def id_number(serial: int) -> str:
    """A synthetic resident id number of Changning (310105) with a valid check digit."""
    born = date(1940, 1, 1) + timedelta(days=(serial * 7919) % (60 * 365))
    body = f"310105{born:%Y%m%d}{serial % 1000:03d}"
    return body + ric.calc_check_digit(body + "0")  # the function ignores the last character


@dataclass
class Built:
    recipients: list[str] = field(default_factory=list)
    results: dict[str, int] = field(default_factory=dict)


def build(app: Any, recipients: int = 12, *, seed: int = 7, start: datetime = START, months: int = 5) -> Built:
    """Fill ``app`` (a LedgerApp with its policy published) with a small district, from ``start``
    (the first day of a month) over ``months`` months."""
    rnd = random.Random(seed)
    plan: list[tuple[datetime, int, Callable[[], Any]]] = []
    built = Built()
    order = iter(range(10**9))

    def at(t: datetime, action: Callable[[], Any]) -> None:
        plan.append((t, next(order), action))

    def run(cmd: m.Command) -> Any:
        res = app.run(cmd)
        built.results[res.status] = built.results.get(res.status, 0) + 1
        return res

    state: dict[str, Any] = {}
    for i in range(recipients):
        ident = id_number(1000 + i + seed * 100)
        street = STREETS[i % len(STREETS)]
        consent = i % 4 == 3
        t0 = start + timedelta(minutes=i)

        def enrol(i: int = i, ident: str = ident, street: str = street, t0: datetime = t0, consent: bool = consent) -> None:
            rid = run(m.Enrol(id_number=ident, name=f"测试{i:04d}", street=street, at=t0)).ids["recipient"]
            state[f"r{i}"] = rid
            built.recipients.append(rid)
            run(m.GrantCategory(recipient=rid, category=CATEGORIES[i % len(CATEGORIES)], valid_from=date(2025, 1, 1), at=t0 + timedelta(seconds=1)))
            run(m.Insure(recipient=rid, scheme="resident", valid_from=date(2020, 1, 1), at=t0 + timedelta(seconds=2)))
            if consent:
                run(m.ConsentAutoClaim(recipient=rid, signed=True, at=t0 + timedelta(seconds=3)))

        at(t0, enrol)
        for month in range(months):
            first = (start + timedelta(days=31 * month)).replace(day=1)
            for k in range(rnd.randint(1, 3)):
                service = first + timedelta(days=rnd.randint(1, 24), hours=rnd.randint(0, 6))
                inpatient = rnd.random() < 0.2
                in_scope = Decimal(rnd.randint(8000, 60000) if inpatient else rnd.randint(60, 900)).quantize(Decimal("1.00"))
                paid_by_insurance = (in_scope * Decimal("0.6" if inpatient else "0.3")).quantize(Decimal("0.01"))
                key = f"e{i}.{month}.{k}"
                facility = {"kind": "hospital", "level": 2, "district_designated": True, "code": "CN-H2"} if inpatient else {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": f"CN-C{i % 3}"}

                def record(i: int = i, key: str = key, service: datetime = service, inpatient: bool = inpatient, in_scope: Decimal = in_scope, paid: Decimal = paid_by_insurance, facility: dict = facility) -> None:
                    res = run(
                        m.RecordExpense(
                            recipient=state[f"r{i}"],
                            visit_type="inpatient" if inpatient else "outpatient",
                            facility=facility,
                            service_date=service.date(),
                            invoice_date=service.date(),
                            invoice_no=key,
                            total=in_scope + Decimal("20.00"),
                            in_scope=in_scope,
                            basic_insurance_paid=paid,
                            referred=inpatient,
                            at=service,
                        )
                    )
                    state[key] = res.ids["expense"]

                at(service, record)
                roll = rnd.random()
                if consent:
                    continue  # the monthly 免申即享 batch claims it
                if roll < 0.15:
                    at(service + timedelta(minutes=5), lambda key=key, service=service: run(m.OneStop(expense=state[key], at=service + timedelta(minutes=5))))
                    continue
                # a post-hoc claim 1-25 days later; approved the same day or up to a week later; paid 1-8 days after
                lodged = service + timedelta(days=rnd.randint(1, 25), hours=2)
                approved = lodged + timedelta(days=rnd.randint(0, 7), hours=1)
                paid = approved + timedelta(days=rnd.randint(1, 8), hours=1)

                def lodge(i: int = i, key: str = key, lodged: datetime = lodged) -> None:
                    res = run(m.LodgeClaim(recipient=state[f"r{i}"], expenses=[state[key]], handler=f"H-{i % 3}", at=lodged))
                    state[f"c.{key}"] = res.ids.get("claim") if res.status == "accepted" else None

                def approve(key: str = key, lodged: datetime = lodged, approved: datetime = approved) -> None:
                    cid = state.get(f"c.{key}")
                    if cid:
                        run(m.Review(claim=cid, reviewer="R-1", at=lodged + timedelta(minutes=30)))
                        run(m.Approve(claim=cid, approver="A-1", at=approved))

                def pay(key: str = key, paid: datetime = paid) -> None:
                    cid = state.get(f"c.{key}")
                    if cid:
                        run(m.Pay(claim=cid, payer="P-1", at=paid))

                at(lodged, lodge)
                at(approved, approve)
                at(paid, pay)
                if roll > 0.9:
                    # a late 居保大病 payment after the aid: a clearing case, offset by later payouts
                    late = paid + timedelta(days=3)
                    at(late, lambda key=key, late=late, amount=(in_scope - paid_by_insurance) / 4: run(
                        m.SettleInsurance(expense=state[key], scheme="critical_illness", amount=amount.quantize(Decimal("0.01")), at=late)
                    ))
    for month in range(months):
        first = (start + timedelta(days=31 * month)).replace(day=1)
        label = f"{first:%Y-%m}"
        at(first.replace(day=14, hour=18), lambda label=label, t=first.replace(day=14, hour=18): app.auto_claims_signed(label, t))
    for t, _, action in sorted(plan, key=lambda p: (p[0], p[1])):
        action()
    return built
