"""Histories for the time-travel tests (ADR 0010), told through the command handlers.

``Ledger`` drives a :class:`LedgerApp` (in memory or on a real store) with the scenario
contract's commands at given recorded times and keeps the handles. ``grid_story`` is the history
of the (V, T) grid: a retroactive grant, a back-dated revocation and a retroactive amendment, each
recorded in its own month. ``generated`` builds a seeded random history for the determinism audit.
"""

from __future__ import annotations

import random
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from commands import models as m
from commands.app import LedgerApp, Result
from infra.settings import Settings
from infra.wiring import APP_NAME, ensure_policy, memory_app
from ledger.values import CST

START = datetime(2026, 1, 5, 9, 0, tzinfo=CST)
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True}
HOSPITAL_2 = {"kind": "hospital", "level": 2, "district_designated": True}
HOSPITAL_3 = {"kind": "hospital", "level": 3, "district_designated": False}
PHARMACY = {"kind": "pharmacy", "level": 1}


def moment(day: str, clock: str = "10:00:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{clock}+08:00")


def end_of(day: str) -> datetime:
    return moment(day, "23:59:59")


def id_number(seq: int, born: str = "19580312", area: str = "310105") -> str:
    """A valid resident id number (GB 11643 check digit) for test person ``seq``."""
    body = f"{area}{born}{seq % 1000:03d}"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return body + "10X98765432"[sum(int(c) * w for c, w in zip(body, weights)) % 11]


def ledger_app(database_url: str | None, jurisdiction: str = "shanghai.changning") -> LedgerApp:
    """A ledger on that store (in memory when None), packs published just before START."""
    published = START - timedelta(seconds=1)
    if database_url is None:
        return memory_app(jurisdiction, published_at=published)
    app = LedgerApp(Settings(database_url=database_url).eventsourcing_env(APP_NAME), jurisdiction=jurisdiction)
    ensure_policy(app, published)
    return app


class Ledger:
    def __init__(self, app: LedgerApp):
        self.app = app
        self.recipients: dict[str, str] = {}
        self.expenses: dict[str, str] = {}

    def run(self, cmd: m.Command) -> Result:
        res = self.app.run(cmd)
        assert res.status in ("accepted", "rejected"), res
        return res

    def person(self, handle: str, seq: int, category: str, since: str, at: datetime, street: str = "华阳路街道") -> None:
        res = self.run(m.Enrol(id_number=id_number(seq), name=f"person {handle}", street=street, at=at))
        self.recipients[handle] = res.ids["recipient"]
        self.run(m.GrantCategory.model_validate({"recipient": self.recipients[handle], "category": category, "from": since, "at": at}))
        self.run(m.Insure.model_validate({"recipient": self.recipients[handle], "scheme": "resident", "from": "2019-01-01", "at": at}))

    def expense(self, handle: str, recipient: str, at: datetime, *, service: str, in_scope: str, insurance: str = "0.00",
                visit: str = "outpatient", facility: dict | None = None, invoice: str | None = None, **extra: Any) -> str:
        res = self.run(
            m.RecordExpense(
                recipient=self.recipients[recipient], handle=handle, visit_type=visit, facility=facility or CHC,
                service_date=service, invoice_date=invoice or service, invoice_no=f"INV-{handle}",
                total=in_scope, in_scope=in_scope, basic_insurance_paid=insurance, at=at, **extra,
            )
        )
        self.expenses[handle] = res.ids["expense"]
        return self.expenses[handle]

    def aid(self, recipient: str, expenses: list[str], at: datetime) -> Result:
        return self.app.aid(self.recipients[recipient], [self.expenses[e] for e in expenses], at)

    def r(self, handle: str):
        return self.app.recipient(self.recipients[handle])


# --------------------------------------------------------------------------- the (V, T) grid

#: Recorded times of the grid story's back-dated facts, one per month.
GRANT_RECORDED = moment("2026-04-10")  # R2 granted special_relief back to 2026-01-01
REVOKE_RECORDED = moment("2026-05-10")  # R1's dibao revoked back to 2026-02-01
AMEND_RECORDED = moment("2026-06-01")  # expenditure-poor I inpatient rate 0.70 -> 0.60 from 2026-01-01
GRID_V = date(2026, 3, 31)
GRID_T = {
    "decided": end_of("2026-03-31"),  # every decision recorded, no back-dated fact yet
    "granted": end_of("2026-04-30"),  # + the retroactive grant
    "revoked": end_of("2026-05-31"),  # + the back-dated revocation
    "amended": end_of("2026-06-30"),  # + the retroactive amendment
}


def grid_story(ledger: Ledger) -> Ledger:
    """The whole grid story: the decisions, then the back-dated facts."""
    return grid_back_dated(grid_decided(ledger))


def grid_decided(ledger: Ledger) -> Ledger:
    """Three recipients, each to be touched by one back-dated fact in its own month.

    - R1 dibao (华阳路街道): community-centre outpatient, self-pay 90.00, served 2026-02-10.
    - R2 low_income (江苏路街道): tertiary inpatient, not district-designated, self-pay 10,000.00.
    - R3 expenditure_poor_1 (江苏路街道): tertiary inpatient, self-pay 5,000.00.
    """
    t0 = START
    ledger.person("R1", 1, "dibao", "2025-01-01", t0)
    ledger.person("R2", 2, "low_income", "2025-06-01", t0 + timedelta(minutes=1), street="江苏路街道")
    ledger.person("R3", 3, "expenditure_poor_1", "2025-06-01", t0 + timedelta(minutes=2), street="江苏路街道")
    ledger.expense("E1", "R1", moment("2026-02-10", "16:00:00"), service="2026-02-10", in_scope="120.00", insurance="30.00")
    ledger.expense("E2", "R2", moment("2026-02-20", "16:00:00"), service="2026-02-20", in_scope="30000.00",
                   insurance="20000.00", visit="inpatient", facility=HOSPITAL_3)
    ledger.expense("E3", "R3", moment("2026-02-25", "16:00:00"), service="2026-02-25", in_scope="15000.00",
                   insurance="10000.00", visit="inpatient", facility=HOSPITAL_3)
    assert ledger.aid("R1", ["E1"], moment("2026-03-02")).status == "accepted"
    assert ledger.aid("R2", ["E2"], moment("2026-03-05")).status == "accepted"
    assert ledger.aid("R3", ["E3"], moment("2026-03-09")).status == "accepted"
    return ledger


def grid_back_dated(ledger: Ledger) -> Ledger:
    """The grid story's three back-dated facts, recorded in April, May and June."""
    ledger.run(m.GrantCategory.model_validate({"recipient": ledger.recipients["R2"], "category": "special_relief", "from": "2026-01-01", "at": GRANT_RECORDED}))
    ledger.run(m.RevokeCategory.model_validate({"recipient": ledger.recipients["R1"], "category": "dibao", "from": "2026-02-01", "at": REVOKE_RECORDED}))
    ledger.run(m.SetParameter(name="shanghai.medical_aid.rate.inpatient.expenditure_poor_1", value="0.60", effective_from="2026-01-01", at=AMEND_RECORDED))
    return ledger


# --------------------------------------------------------------------------- a generated history


def generated(ledger: Ledger, recipients: int = 12, seed: int = 7) -> Ledger:
    """A seeded random history through the command handlers: one-stop and post-hoc decisions,
    out-of-order invoices, late insurance, back-dated grants and revocations, a retroactive cap
    amendment, repayments and supplementary payouts."""
    rnd = random.Random(seed)
    clock = [START]

    def tick(hours: float = 1.0) -> datetime:
        clock[0] = clock[0] + timedelta(hours=hours)
        return clock[0]

    streets = ("华阳路街道", "江苏路街道", "新华路街道")
    categories = ("dibao", "low_income", "special_relief", "expenditure_poor_1", "orphan")
    facilities = (CHC, CHC, HOSPITAL_2, HOSPITAL_3, PHARMACY)
    n = 0
    for i in range(recipients):
        h = f"R{i + 1}"
        ledger.person(h, 100 + i, rnd.choice(categories), "2025-01-01", tick(0.1), street=rnd.choice(streets))
    for month in range(1, 6):
        for i in range(recipients):
            h = f"R{i + 1}"
            mine = []
            for _ in range(rnd.randint(0, 3)):
                n += 1
                e = f"E{n}"
                day = date(2026, month, rnd.randint(1, 27))
                invoice = day + timedelta(days=rnd.choice((0, 0, 0, 20)))  # some invoices later: out-of-order caps
                facility = rnd.choice(facilities)
                visit = "inpatient" if facility in (HOSPITAL_2, HOSPITAL_3) and rnd.random() < 0.5 else "outpatient"
                in_scope = Decimal(rnd.randint(50, 40000 if visit == "inpatient" else 900)).quantize(Decimal("0.01"))
                ins = (in_scope * Decimal(rnd.choice(("0", "0.3", "0.5")))).quantize(Decimal("0.01"))
                # a receipt is recorded on or after its dates (R-TIME-1: never dated in the future)
                clock[0] = max(clock[0], datetime.combine(invoice, time(18), CST))
                ledger.expense(e, h, tick(0.2), service=day.isoformat(), invoice=invoice.isoformat(), in_scope=str(in_scope),
                               insurance=str(ins), visit=visit, facility={**facility, "code": f"F{facilities.index(facility)}"},
                               referred=facility is HOSPITAL_2)
                mine.append(e)
            if mine and rnd.random() < 0.1:
                # The same receipt recorded again under another handle (R-PH-7, R-CLR-1(b)).
                n += 1
                first = ledger.app.recipient(ledger.recipients[h]).expenses[ledger.expenses[mine[0]]].facts
                dup = ledger.run(m.RecordExpense(
                    recipient=ledger.recipients[h], handle=f"E{n}", visit_type=first.visit_type.value, facility=first.facility.to_dict(),
                    service_date=first.service_date, invoice_date=first.invoice_date, invoice_no=first.invoice_no,
                    total=first.total, in_scope=first.in_scope, basic_insurance_paid=first.basic_insurance_paid, at=tick(0.1),
                ))
                ledger.expenses[f"E{n}"] = dup.ids["expense"]
                mine.append(f"E{n}")
            rnd.shuffle(mine)
            while mine:
                e = mine.pop()
                roll = rnd.random()
                if roll < 0.2:
                    continue  # left for the 免申即享 batch (if consenting) or never claimed
                if roll < 0.5:
                    ledger.run(m.OneStop(expense=ledger.expenses[e], at=tick(0.2)))
                else:
                    batch = [e] + [mine.pop() for _ in range(min(len(mine), rnd.randint(0, 2)))]
                    ledger.aid(h, batch, tick(0.5))
            if ledger.expenses and rnd.random() < 0.15:
                e = rnd.choice(list(ledger.expenses))
                r = ledger.app.recipient(ledger.expenses[e].split(":")[0])
                facts = r.expenses[ledger.expenses[e]].facts
                room = facts.self_pay()
                if room > Decimal("1.00"):
                    ledger.run(m.SettleInsurance(expense=ledger.expenses[e], scheme="critical_illness", amount=(room / 3).quantize(Decimal("0.01")), at=tick()))
            if rnd.random() < 0.05:
                ledger.run(m.GrantCategory.model_validate({"recipient": ledger.recipients[h], "category": "special_relief", "from": f"2026-0{month}-01", "at": tick()}))
            if rnd.random() < 0.04:
                ledger.run(m.RevokeCategory.model_validate({"recipient": ledger.recipients[h], "category": rnd.choice(categories), "from": f"2026-0{month}-01", "at": tick()}))
            r = ledger.r(h)
            if r.active_suspension("changning.four_linkage") is not None and rnd.random() < 0.5:
                ledger.run(m.LiftSuspension(recipient=ledger.recipients[h], reviewer="district-reviewer", at=tick()))
            if r.open_balance() > 0 and rnd.random() < 0.5:
                ledger.run(m.Repay(recipient=ledger.recipients[h], amount=min(r.open_balance(), Decimal("10.00")), at=tick()))
            if any(s.paid_at is None for s in r.supplementary.values()) and rnd.random() < 0.5:
                ledger.run(m.PaySupplementary(recipient=ledger.recipients[h], at=tick()))
        if month == 2:
            for i in range(0, recipients, 3):
                ledger.run(m.ConsentAutoClaim(recipient=ledger.recipients[f"R{i + 1}"], signed=True, at=tick(0.1)))
        ledger.app.auto_claims_signed(f"2026-0{month}", tick())  # lodged, then signed by three officers (R-PH-4)
        if month == 3:
            # A retroactive cut of the outpatient caps: later expenses hit them (R-CAP-3, R-CLR-1(d)).
            for cat in ("dibao", "low_income", "orphan"):
                ledger.run(m.SetParameter(name=f"shanghai.medical_aid.annual_cap.outpatient.{cat}", value="300.00", effective_from="2026-01-01", at=tick()))
    return ledger


# --------------------------------------------------------------------------- a forged decision


def forge_decision(app: LedgerApp, at: datetime, recipient: Any = None) -> str:
    """Record a new expense for ``recipient`` (the first recipient by default) and an
    ``AidDecided`` for it whose amount is 1.00 more than its own recorded knowledge gives: what a
    faulty handler or an edited store would leave behind. Returns the expense id."""
    from ledger import engine
    from ledger.aggregates import Recipient
    from ledger.facts import DecisionRef
    from ledger.money import fmt

    rid = recipient if recipient is not None else next(iter(app.recipient_ids()))
    day = (at - timedelta(days=1)).date()
    res = app.run(
        m.RecordExpense(
            recipient=str(rid), visit_type="inpatient", facility=HOSPITAL_3, service_date=day, invoice_date=day,
            invoice_no=f"FORGED-{at:%Y%m%d%H%M%S}", total="1000.00", in_scope="1000.00", basic_insurance_paid="0.00",
            at=at - timedelta(hours=1),
        )
    )
    eid = res.ids["expense"]
    r = app.recipient(rid)
    refs = r.decided_refs() + [DecisionRef(eid, "post_hoc", None, at, r.decision_seq + 1, 0)]
    result = engine.assess(r.knowledge(), r.expense_facts(), refs, app.policy().book, app.schemes)
    summary = result.assessments[eid].summary()
    forged = dict(summary, total=fmt(Decimal(summary["total"]) + Decimal("1.00")))
    r.trigger_event(
        Recipient.AidDecided, timestamp=at, claim_id=None, channel="post_hoc", decisions=[forged],
        knowledge={"recipient_version": r.version, "policy_version": app.policy().version,
                   "policy_hash": result.policy_version, "known_at": at.isoformat()},
    )
    app.save(r)
    return eid
