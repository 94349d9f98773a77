"""A small generated dataset for the projection tests, told through the command handlers.

Six recipients over 2026 in Changning: one-stop community-centre visits until the monthly visit
count suspends 四医联动 (then a district review lifts it) and a social-organisation grant; a
tertiary-hospital stay aided, then 居保大病 paying late (a clearing case), a repayment, an offset
on the next payout and a write-off; a receipt recorded twice and claimed twice (DUPLICATE), and the
same receipt under another recipient; an outpatient cap that binds, raised retroactively (a
supplementary payout) and an inpatient cap amended without changing any amount; a 免申即享
batch; a mutual-aid participant. ``extend`` adds more of the same for ``more`` extra people.

The steps are in the scenario format (SCENARIOS.md) and run through the scenario runner's adapter
against any application (in memory or on a real store).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from stdnum.cn import ric

from commands.app import LedgerApp
from infra.scenario import Runner, _parse_at, _stringify_dates
from infra.settings import Settings
from infra.wiring import build_app, ensure_policy, memory_app

START = "2026-01-05T09:00:00+08:00"
CHC = {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "CHC-HY"}
TERTIARY = {"kind": "hospital", "level": 3, "district_designated": False, "code": "H3-RJ"}


def id_number(n: int) -> str:
    body = f"31010519{60 + n % 40:02d}0{1 + n % 9}1{n % 10}{n % 1000:03d}"[:17]
    return body + ric.calc_check_digit(body + "0")


def app_on(settings: Settings | None) -> LedgerApp:
    """A Changning ledger (in memory when ``settings`` is None) whose policy was published just
    before the story starts."""
    published = _parse_at(START) - timedelta(seconds=1)
    if settings is None:
        return memory_app("shanghai.changning", published_at=published)
    app = build_app(settings, jurisdiction="shanghai.changning", publish_policy=False)
    ensure_policy(app, published)
    return app


def _at(day: int, minute: int = 0) -> str:
    moment = _parse_at(START) + timedelta(days=day, minutes=minute)
    return moment.isoformat()


def _expense(e: str, r: str, day: int, facility: dict, invoice: str, total: str, in_scope: str, insurance: str, visit: str = "outpatient", **extra: Any) -> dict:
    d = (_parse_at(START) + timedelta(days=day)).date().isoformat()
    return {
        "at": _at(day, 1),
        "do": "record_expense",
        "expense": e,
        "recipient": r,
        "visit_type": visit,
        "facility": facility,
        "service_date": d,
        "invoice_date": d,
        "invoice_no": invoice,
        "total": total,
        "in_scope": in_scope,
        "basic_insurance_paid": insurance,
        **extra,
    }


def steps(more: int = 0) -> list[dict[str, Any]]:
    s: list[dict[str, Any]] = []

    def person(r: str, n: int, category: str, insured: bool = True) -> None:
        s.append({"at": _at(0, n * 3), "do": "enrol", "recipient": r, "id_number": id_number(n), "name": f"测试{n}", "street": "华阳路街道"})
        s.append({"at": _at(0, n * 3 + 1), "do": "grant_category", "recipient": r, "category": category, "from": "2025-01-01"})
        if insured:
            s.append({"at": _at(0, n * 3 + 2), "do": "insure", "recipient": r, "scheme": "resident", "from": "2020-01-01"})

    person("R1", 1, "dibao")
    person("R2", 2, "low_income")
    person("R3", 3, "dibao")
    person("R4", 4, "dibao")
    person("R5", 5, "dibao")
    person("R6", 6, "mutual_aid_participant", insured=False)
    s.append({"at": _at(0, 30), "do": "join_mutual_aid", "recipient": "R6", "year": 2026, "has_home_insurance": False})
    # R1: nine community-centre visits in January, one-stop; the ninth passes the visit count.
    for i in range(9):
        s.append(_expense(f"E1-{i}", "R1", 10 + i, CHC, f"R1-{i}", "120.00", "100.00", "0.00"))
        s.append({"at": _at(10 + i, 2), "do": "one_stop", "expense": f"E1-{i}"})
    s.append({"at": _at(30), "do": "lift_suspension", "recipient": "R1", "reviewer": "district-review"})
    s.append({"at": _at(31), "do": "social_help", "recipient": "R1", "amount": "500.00", "organisation": "长宁慈善"})
    # R2: a tertiary stay aided post hoc, 居保大病 pays late, repayment, offset, write-off.
    s.append(_expense("E2", "R2", 15, TERTIARY, "R2-1", "50000.00", "40000.00", "25000.00", visit="inpatient", critical_illness_related=True, critical_illness_evidence="receipt_marking"))
    s.append({"at": _at(40), "do": "aid", "claim": "C2", "recipient": "R2", "expenses": ["E2"]})
    s.append({"at": _at(60), "do": "settle_insurance", "expense": "E2", "scheme": "critical_illness", "amount": "9750.00"})
    s.append({"at": _at(70), "do": "repay", "recipient": "R2", "amount": "2000.00"})
    s.append(_expense("E2b", "R2", 75, CHC, "R2-2", "320.00", "300.00", "200.00"))
    s.append({"at": _at(80), "do": "aid", "claim": "C2b", "recipient": "R2", "expenses": ["E2b"]})
    s.append({"at": _at(90), "do": "write_off", "recipient": "R2", "officer": "clearing-1", "approver": "head-1"})
    # R3: a receipt recorded twice; the copy is claimed and refused; R4 brings the same receipt.
    s.append(_expense("E3", "R3", 20, TERTIARY, "DUP-7", "900.00", "800.00", "500.00"))
    s.append(_expense("E3b", "R3", 21, TERTIARY, "DUP-7", "900.00", "800.00", "500.00"))
    s.append({"at": _at(25), "do": "aid", "claim": "C3", "recipient": "R3", "expenses": ["E3"]})
    s.append({"at": _at(26), "do": "claim", "claim": "C3b", "recipient": "R3", "expenses": ["E3b"], "handler": "h-2"})
    s.append({"at": _at(26, 5), "do": "one_stop", "expense": "E3b"})
    s.append(_expense("E4", "R4", 22, TERTIARY, "DUP-7", "900.00", "800.00", "500.00"))
    s.append({"at": _at(27), "do": "aid", "claim": "C4", "recipient": "R4", "expenses": ["E4"]})
    # R5: the outpatient cap binds, then is raised back to January (a supplementary payout);
    # the inpatient cap is amended without changing any amount.
    s.append(_expense("E5", "R5", 12, TERTIARY, "R5-1", "30000.00", "25000.00", "5000.00"))
    s.append(_expense("E5i", "R5", 13, TERTIARY, "R5-2", "6000.00", "5000.00", "3000.00", visit="inpatient"))
    s.append({"at": _at(35), "do": "aid", "claim": "C5", "recipient": "R5", "expenses": ["E5", "E5i"]})
    s.append({"at": _at(100), "do": "set_parameter", "name": "shanghai.medical_aid.annual_cap.outpatient.dibao", "value": "15000.00", "effective_from": "2026-01-01"})
    s.append({"at": _at(101), "do": "pay_supplementary", "recipient": "R5"})
    s.append({"at": _at(102), "do": "set_parameter", "name": "shanghai.medical_aid.annual_cap.inpatient.dibao", "value": "90000.00", "effective_from": "2026-01-01"})
    # R4 signs 免申即享; the March batch claims its new expense.
    s.append({"at": _at(50), "do": "consent_auto_claim", "recipient": "R4", "signed": True})
    s.append(_expense("E4m", "R4", 55, CHC, "R4-2", "200.00", "180.00", "100.00"))
    s.append({"at": _at(65), "do": "auto_claims", "month": "2026-03"})
    # R6: mutual aid, outpatient, no basic insurance.
    for i, amount in enumerate(("100.00", "200.00", "400.00")):
        s.append(_expense(f"E6-{i}", "R6", 14 + i, CHC, f"R6-{i}", amount, amount, "0.00"))
    s.append({"at": _at(45), "do": "aid", "claim": "C6", "recipient": "R6", "expenses": ["E6-0", "E6-1", "E6-2"]})
    for k in range(more):
        r, n = f"X{k}", 100 + k
        s.append({"at": _at(0, 200 + k * 3), "do": "enrol", "recipient": r, "id_number": id_number(n), "name": f"测试{n}", "street": "江苏路街道"})
        s.append({"at": _at(0, 201 + k * 3), "do": "grant_category", "recipient": r, "category": ("dibao", "low_income")[k % 2], "from": "2025-01-01"})
        s.append({"at": _at(0, 202 + k * 3), "do": "insure", "recipient": r, "scheme": "resident", "from": "2020-01-01"})
        for i in range(3):
            day = 110 + i * 7 + k % 5
            s.append(_expense(f"{r}-{i}", r, day, CHC if i % 2 == 0 else TERTIARY, f"{r}-{i}", "500.00", "400.00", "150.00"))
        s.append({"at": _at(140 + k % 5), "do": "aid", "claim": f"C{r}", "recipient": r, "expenses": [f"{r}-{i}" for i in range(3)]})
        if k % 3 == 0:
            s.append({"at": _at(150 + k % 5), "do": "settle_insurance", "expense": f"{r}-1", "scheme": "union_mutual_aid", "amount": "100.00"})
        if k % 6 == 0:
            s.append({"at": _at(160 + k % 5), "do": "repay", "recipient": r, "amount": "10.00"})
    s.sort(key=lambda st: _parse_at(st["at"]))
    return s


class Told:
    """The dataset told to ``app``: handles → ledger ids, and each step's status."""

    def __init__(self, app: LedgerApp):
        runner = Runner.__new__(Runner)
        runner.app, runner.recipients, runner.expenses, runner.claims, runner.steps = app, {}, {}, {}, []
        self.runner = runner
        self.app = app

    def tell(self, story: list[dict[str, Any]]) -> "Told":
        for i, step in enumerate(story, start=1):
            self.runner.step(i, _stringify_dates(dict(step)))
        return self

    @property
    def recipients(self) -> dict[str, str]:
        return self.runner.recipients

    @property
    def expenses(self) -> dict[str, str]:
        return self.runner.expenses

    @property
    def statuses(self) -> list[dict[str, Any]]:
        return self.runner.steps


def build(app: LedgerApp, more: int = 0) -> Told:
    return Told(app).tell(steps(more))


def when(day: int) -> datetime:
    return _parse_at(START) + timedelta(days=day)
