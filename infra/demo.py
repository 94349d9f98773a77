"""A seeded, realistic Changning dataset, built through the command handlers (``ledger demo``).

:func:`plan` lays out a timeline of the programme (people enrolled and recognised, insured,
visiting community health centres, district and tertiary hospitals and pharmacies, settling
one-stop or claiming at their street office, 居保大病 paying late, repayments, a policy
amendment, …) and :func:`generate` replays it, sorted by recorded time, through ``app.run`` and
``app.aid``: every figure in the result is the handlers' own. Nothing here decides aid.

The same seed, scale and period give the same timeline, so a benchmark can reuse it at a larger
``recipients`` count. Measured on a 2-core machine: the default scale (300 people, ~5,000
receipts, ~22,000 events) takes ~27 s of CPU on the embedded SQLite store; see :func:`demo_env`
for the two store settings that make that possible.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Callable, Iterable

import chinese_calendar

from commands import group as group_commit
from commands import models as m
from commands.app import LedgerApp, Result
from infra import integrity
from infra.ops import event_count, topic_of
from infra.settings import Settings, get_settings
from infra.sqlite_bulk import bulk_env
from infra.wiring import APP_NAME, build_app, ensure_policy
from ledger.aggregates import Claim, Recipient
from ledger.errors import UnknownEntity
from ledger.money import ZERO, fmt, money
from ledger.values import CST, FUNDS

Progress = Callable[[int, int], None]

#: The default scale: several hundred recipients, a few thousand expenses over three years.
DEFAULT_RECIPIENTS = 300
#: Commands per transaction while the demo replays its plan (group commit, ``LedgerApp.group``).
GROUP_SIZE = 100

# --------------------------------------------------------------------------------------- places

#: Changning's ten street offices 街镇 and their community health centres (one each).
STREETS: list[tuple[str, str]] = [
    ("华阳路街道", "HY"),
    ("江苏路街道", "JS"),
    ("新华路街道", "XH"),
    ("周家桥街道", "ZJQ"),
    ("天山路街道", "TS"),
    ("仙霞新村街道", "XX"),
    ("虹桥街道", "HQ"),
    ("程家桥街道", "CJQ"),
    ("北新泾街道", "BXJ"),
    ("新泾镇", "XJ"),
]


def _facility(kind: str, level: int, code: str, designated: bool = False, out_of_province: bool = False) -> dict[str, Any]:
    return {"kind": kind, "level": level, "district_designated": designated, "out_of_province": out_of_province, "code": code}


CHC = {street: _facility("community_health_centre", 1, f"CN-CHC-{street}", True) for _, street in STREETS}
#: District-designated hospitals of Changning's own network (R-4L-1 with a referral).
DISTRICT_HOSPITALS = [
    _facility("hospital", 2, "CN-H2-GUANGHUA", True),  # 光华中西医结合医院
    _facility("hospital", 2, "CN-H2-TIANSHAN", True),  # 天山中医医院
    _facility("hospital", 3, "CN-H3-TONGREN", True),  # 同仁医院 (district-run, tertiary)
]
#: City tertiary hospitals outside the district network: city aid only.
TERTIARY = [
    _facility("hospital", 3, "SH-H3-HUASHAN"),
    _facility("hospital", 3, "SH-H3-RUIJIN"),
    _facility("hospital", 3, "SH-H3-ZHONGSHAN"),
    _facility("hospital", 3, "SH-H3-SIXTH"),
    _facility("hospital", 3, "SH-H3-RENJI"),
]
CHILDREN_HOSPITALS = [_facility("hospital", 3, "SH-H3-CHILDRENS"), _facility("hospital", 3, "SH-H3-PAEDIATRICS")]
PHARMACIES = [_facility("pharmacy", 1, "SH-PH-LEIYUNSHANG"), _facility("pharmacy", 1, "SH-PH-HUASHI")]
#: Where 支疆 returnees are also treated (R-INS-6 applies; the home insurance settled it).
OUT_OF_PROVINCE = _facility("hospital", 3, "XJ-H3-URUMQI-1", out_of_province=True)

DISTRICT_APPROVERS = ["区医保局-审批-01", "区医保局-审批-02"]
#: The district's disbursing officer: the fourth signature on every claim (R-PH-4 [002 3.4, 3.5]).
DISTRICT_PAYER = "区医保局-拨付-01"
#: Who lodges and signs the 免申即享 batches (R-PH-3): the service lodges, district officers sign.
BATCH_OFFICERS = ("免申即享-批处理", "区医保局-审核-01", "区医保局-审批-01", DISTRICT_PAYER)
CLEARING_OFFICER = "区医保局-清算-01"
DISTRICT_REVIEWER = "区医保局-复核-01"
SOCIAL_ORGANISATIONS = ["长宁区慈善基金会", "上海市慈善基金会长宁区代表处"]

#: Category mix of the register (RULES.md §2, the Changning categories plus mutual aid).
CATEGORY_SHARES: list[tuple[str, float]] = [
    ("dibao", 0.28),
    ("low_income", 0.22),
    ("special_relief", 0.04),
    ("expenditure_poor_1", 0.07),
    ("expenditure_poor_2", 0.08),
    ("orphan", 0.02),
    ("child_in_distress", 0.04),
    ("other_hardship", 0.06),
    ("mutual_aid_participant", 0.05),
]

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦方邹孟熊秦邱江尹薛顾毛龚邵钱严戴汤"
GIVEN = "秀英桂兰玉珍凤华建国志强文明丽娟美玲海燕国平卫东金宝小红春梅德明永康晓峰慧敏佳怡子涵浩然欣悦雅琴根发林生素芳宝珠惠民伟杰"


# --------------------------------------------------------------------------------------- dates


def _workday(day: date) -> bool:
    try:
        return chinese_calendar.is_workday(day)
    except NotImplementedError:  # outside the calendar's years
        return day.weekday() < 5


def next_workday(day: date) -> date:
    while not _workday(day):
        day += timedelta(days=1)
    return day


def _at(day: date, minutes: int) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=CST) + timedelta(minutes=minutes)


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _add_months(day: date, months: int) -> date:
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    last = (date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)).day
    return date(year, month, min(day.day, last))


def id_check_digit(body17: str) -> str:
    """GB 11643: weights 2^(17-i) mod 11; the check character is ``10X98765432``[sum mod 11]."""
    total = sum(int(c) * pow(2, 17 - i, 11) for i, c in enumerate(body17))
    return "10X98765432"[total % 11]


def resident_id(area: str, born: date, sequence: int, male: bool) -> str:
    """An 18-character resident id number: area code, birth date, a 3-digit sequence whose last
    digit is odd for men and even for women, and the GB 11643 check character."""
    seq = (sequence % 1000) - (sequence % 2) + (1 if male else 0)
    body = f"{area}{born:%Y%m%d}{seq:03d}"
    return body + id_check_digit(body)


# --------------------------------------------------------------------------------------- the plan


@dataclass(order=True)
class Step:
    """One recorded moment of the timeline: ``action`` runs the command(s) at ``at``."""

    at: datetime
    seq: int
    kind: str = field(compare=False)
    action: Callable[["Replay", datetime], None] = field(compare=False, repr=False)


@dataclass
class PlannedExpense:
    handle: str
    person: "Person"
    facility: dict[str, Any]
    visit_type: str
    service_date: date
    invoice_date: date
    invoice_no: str
    total: Decimal
    in_scope: Decimal
    basic_insurance_paid: Decimal
    at: datetime
    channel: str  # one_stop | post_hoc
    referred: bool = False
    critical: bool = False
    evidence: str = "none"
    source: str = "settlement_system"
    settlements: list[tuple[str, Decimal, str]] = field(default_factory=list)  # scheme, amount, when: before|late
    claimed_at: datetime | None = None
    paid_at: datetime | None = None

    def command(self, rid: str, at: datetime) -> m.RecordExpense:
        return m.RecordExpense(
            recipient=rid,
            handle=self.handle,
            visit_type=self.visit_type,
            facility=self.facility,
            service_date=self.service_date,
            invoice_date=self.invoice_date,
            invoice_no=self.invoice_no,
            total=self.total,
            in_scope=self.in_scope,
            basic_insurance_paid=self.basic_insurance_paid,
            referred=self.referred,
            critical_illness_related=self.critical,
            critical_illness_evidence=self.evidence,
            source=self.source,
            at=at,
        )


@dataclass
class Person:
    handle: str
    id_number: str
    name: str
    street: str
    street_code: str
    born: date
    category: str
    insurance: str | None
    intensity: float
    chronic: bool
    since: date  # first day aided
    until: date  # last day aided
    enrol_at: datetime
    new: bool
    has_home_insurance: bool = False
    consent_at: datetime | None = None
    expenses: list[PlannedExpense] = field(default_factory=list)
    #: The ledger's id for this person (``LedgerApp.recipient_id_for``: a keyed hash when the
    #: wiring installed one, ADR 0015); None: the plain uuid5 of the number.
    recipient_id: str | None = None

    @property
    def rid(self) -> str:
        return self.recipient_id or str(Recipient.id_for(self.id_number))

    @property
    def child(self) -> bool:
        return self.category in ("orphan", "child_in_distress")


@dataclass
class Plan:
    start: date
    end: date
    published_at: datetime
    people: list[Person]
    steps: list[Step]


class Planner:
    def __init__(self, recipients: int, seed: int, years: tuple[int, ...], until: date | None, id_for: Callable[[str], Any] | None = None,
                 visits: float | dict[str, float] = 1.0):
        if recipients < 1:
            raise ValueError("recipients must be at least 1")
        self.rng = random.Random(seed)
        self.n = recipients
        self.id_for = id_for
        #: Multiplier of every monthly visit rate, overall or per category (missing: 1.0).
        self.visits = visits
        self.start = date(min(years), 1, 1)
        last = date(max(years), 12, 31)
        self.end = min(last, until or (datetime.now(CST).date() - timedelta(days=1)))
        if self.end <= self.start + timedelta(days=60):
            raise ValueError(f"the demo period {self.start}..{self.end} is too short")
        self.years = tuple(range(self.start.year, self.end.year + 1))
        self.steps: list[Step] = []
        self._seq = 0
        self._invoice: Counter[str] = Counter()
        self._ids: set[str] = set()
        self.people: list[Person] = []
        self._expense_no = 0
        self._claim_no = 0
        #: 免申即享 needs the post-hoc procedure, in force from 2026-04-01 (R-PH-3 [002 3.3]).
        self.procedure_from = date(2026, 4, 1)

    # -- helpers ---------------------------------------------------------------------------
    def add(self, at: datetime, kind: str, action: Callable[["Replay", datetime], None]) -> None:
        if at.date() > self.end or at.date() < self.start:
            return
        self._seq += 1
        self.steps.append(Step(at, self._seq, kind, action))

    def office(self, day: date, early: int = 9 * 60, late: int = 16 * 60 + 30) -> datetime:
        """A moment in office hours on the first working day from ``day``."""
        return _at(next_workday(day), self.rng.randint(early, late))

    def visit_time(self, day: date) -> datetime:
        return _at(day, self.rng.randint(8 * 60, 16 * 60 + 30))

    def amount(self, low: float, typical: float, high: float) -> Decimal:
        value = self.rng.lognormvariate(math.log(typical), 0.55)
        return money(Decimal(str(round(min(max(value, low), high), 2))))

    def share(self, base: Decimal, low: float, high: float) -> Decimal:
        return money(base * Decimal(str(round(self.rng.uniform(low, high), 4))))

    def invoice_no(self, facility: dict[str, Any], day: date) -> str:
        code = facility["code"]
        self._invoice[code] += self.rng.randint(1, 40)
        return f"{code.rsplit('-', 1)[-1][:4]}{day:%y}{self._invoice[code]:07d}"

    def random_day(self, lo: date, hi: date) -> date:
        return lo + timedelta(days=self.rng.randint(0, max(0, (hi - lo).days)))

    # -- people ----------------------------------------------------------------------------
    def categories(self) -> list[str]:
        counts = {c: max(1, round(self.n * w)) if self.n >= 12 else 0 for c, w in CATEGORY_SHARES}
        cats = [c for c, k in counts.items() for _ in range(k)]
        fill = ["dibao", "low_income"]
        while len(cats) < self.n:
            cats.append(fill[len(cats) % 2])
        self.rng.shuffle(cats)
        return cats[: self.n]

    def person(self, index: int, category: str) -> Person:
        rng = self.rng
        if category in ("orphan", "child_in_distress"):
            born = self.random_day(date(2008, 1, 1), date(2019, 12, 31))
        elif category == "mutual_aid_participant":
            born = self.random_day(date(1944, 1, 1), date(1958, 12, 31))
        else:
            born = self.random_day(date(1938, 1, 1), date(1995, 12, 31))
        male = rng.random() < 0.48
        while True:
            number = resident_id("310105", born, rng.randint(1, 999), male)
            if number not in self._ids:
                self._ids.add(number)
                break
        street, code = STREETS[rng.randrange(len(STREETS))]
        name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2))))
        age = (self.start - born).days // 365
        if category == "mutual_aid_participant":
            insurance = None
        elif 18 <= age < 60 and category not in ("dibao", "special_relief") and rng.random() < 0.4:
            insurance = "employee"
        else:
            insurance = "resident"
        new = category != "mutual_aid_participant" and rng.random() < 0.28
        if new:
            recognised = self.random_day(self.start + timedelta(days=45), self.end - timedelta(days=75))
            since = recognised.replace(day=1)
            enrol_at = self.office(recognised)
        else:
            since = self.random_day(date(2012, 1, 1), date(self.start.year - 1, 12, 31))
            enrol_at = self.office(self.start + timedelta(days=rng.randint(1, 24)), 8 * 60 + 30)
            recognised = since
        until = self.end
        leave_from = max(enrol_at.date(), self.start) + timedelta(days=90)
        if rng.random() < 0.04 and leave_from < self.end - timedelta(days=30):  # moved away or died
            until = self.random_day(leave_from, self.end - timedelta(days=30))
        elder = age >= 60
        intensity = rng.lognormvariate(math.log(0.3 if elder else 0.16), 0.6)
        return Person(
            handle=f"P{index:05d}",
            id_number=number,
            name=name,
            street=street,
            street_code=code,
            born=born,
            category=category,
            insurance=insurance,
            intensity=min(intensity, 2.6),
            chronic=rng.random() < (0.07 if elder else 0.03),
            since=since,
            until=until,
            enrol_at=enrol_at,
            new=new,
            has_home_insurance=category == "mutual_aid_participant" and rng.random() < 0.6,
            recipient_id=str(self.id_for(number)) if self.id_for is not None else None,
        )

    def plan_person(self, p: Person) -> None:
        rng = self.rng
        rid = p.rid
        self.add(p.enrol_at, "enrol", lambda x, at, p=p: x.run("enrol", m.Enrol(id_number=p.id_number, name=p.name, street=p.street, at=at)))
        grant_at = p.enrol_at + timedelta(minutes=2)
        grant: dict[str, Any] = {"recipient": rid, "category": p.category, "from": p.since}
        means_from = None
        if p.new and p.since.month > 2 and rng.random() < 0.5:
            means_from = date(p.since.year, 1, 1)  # R-CAT-3: expenses counted in the means test
            grant["means_test_expenses_from"] = means_from
        if p.category == "expenditure_poor_2":
            income = Decimal(rng.randrange(36000, 90000, 600))
            grant["household_annual_disposable_income"] = str(income)
            grant["household_medical_spending_12m"] = str(money(income * Decimal(str(round(rng.uniform(0.42, 0.9), 2)))))
        if p.category == "mutual_aid_participant":
            grant["subtype"] = rng.choice(["支内", "支疆", "知青", "易地安置离退休干部"])
        self.add(grant_at, "grant_category", lambda x, at, g=grant: x.run("grant_category", m.GrantCategory.model_validate({**g, "at": at})))
        if p.until < self.end:
            leave_at = self.office(p.until + timedelta(days=rng.randint(3, 20)))
            self.add(leave_at, "revoke_category", lambda x, at, c=p.category, d=p.until + timedelta(days=1): x.run(
                "revoke_category", m.RevokeCategory(recipient=rid, category=c, valid_from=d, reason="moved out of the district", at=at)))
        if p.insurance:
            insured_from = max(date(2010, 1, 1), p.born)
            self.add(grant_at + timedelta(minutes=1), "insure", lambda x, at, s=p.insurance, d=insured_from: x.run(
                "insure", m.Insure(recipient=rid, scheme=s, valid_from=d, at=at)))
        else:
            for year in self.years:
                when = max(self.office(date(year, 1, 6)), grant_at + timedelta(minutes=1))
                deductible = str(rng.choice([1200, 1500, 1800])) if p.has_home_insurance else "0"
                self.add(when, "join_mutual_aid", lambda x, at, y=year, d=deductible: x.run(
                    "join_mutual_aid", m.JoinMutualAid(recipient=rid, year=y, has_home_insurance=p.has_home_insurance, home_insurance_deductible=d, at=at)))
        self.plan_expenses(p, means_from)

    # -- expenses ---------------------------------------------------------------------------
    def new_expense(self, p: Person, kind: str, day: date) -> PlannedExpense:
        rng = self.rng
        resident = p.insurance == "resident"
        no_insurance = p.insurance is None
        referred = False
        visit = "outpatient"
        if kind == "chc":
            facility = CHC[p.street_code]
            total = self.amount(25, 160, 900)
            rate = (0.62, 0.72) if resident else (0.72, 0.86)
        elif kind == "district":
            facility = rng.choice(DISTRICT_HOSPITALS)
            referred = rng.random() < 0.8
            total = self.amount(80, 380, 2500)
            rate = (0.55, 0.65) if resident else (0.65, 0.78)
        elif kind == "tertiary":
            facility = rng.choice(CHILDREN_HOSPITALS if p.child else TERTIARY)
            total = self.amount(120, 650, 6000)
            rate = (0.45, 0.55) if resident else (0.55, 0.7)
        elif kind == "critical":
            facility = rng.choice(TERTIARY)
            visit = "outpatient_critical"
            total = self.amount(1500, 5200, 18000)
            rate = (0.8, 0.88)
        elif kind == "pharmacy":
            facility = rng.choice(PHARMACIES)
            total = self.amount(30, 140, 600)
            rate = (0.45, 0.6)
        else:  # inpatient
            visit = "inpatient"
            district = rng.random() < 0.35 and not p.child
            facility = rng.choice(DISTRICT_HOSPITALS) if district else rng.choice(CHILDREN_HOSPITALS if p.child else TERTIARY)
            referred = district and rng.random() < 0.85
            total = self.amount(6000, 26000 if district else 42000, 220000)
            rate = (0.62, 0.75) if resident else (0.72, 0.85)
        if p.category == "mutual_aid_participant" and kind in ("tertiary", "inpatient") and p.has_home_insurance and rng.random() < 0.25:
            facility = OUT_OF_PROVINCE
        in_scope = self.share(total, 0.82, 1.0)
        if no_insurance:
            # outside Shanghai basic insurance: only the home insurance pays, on inpatient care
            insured = self.share(in_scope, 0.4, 0.6) if (visit == "inpatient" and p.has_home_insurance) else ZERO
        else:
            insured = self.share(in_scope, *rate)
        self._expense_no += 1
        at = self.visit_time(day)
        invoice = day if visit != "inpatient" else day + timedelta(days=rng.choice((0, 0, 1)))
        return PlannedExpense(
            handle=f"E{self._expense_no:06d}",
            person=p,
            facility=facility,
            visit_type=visit,
            service_date=day,
            invoice_date=invoice,
            invoice_no=self.invoice_no(facility, invoice),
            total=total,
            in_scope=in_scope,
            basic_insurance_paid=insured,
            at=at if visit != "inpatient" else _at(invoice, rng.randint(10 * 60, 15 * 60)),
            # real-time settlement in the district's own network (R-4L-1); elsewhere a claim
            channel="one_stop" if facility["district_designated"] and p.category != "mutual_aid_participant" else "post_hoc",
            referred=referred,
        )

    def plan_expenses(self, p: Person, means_from: date | None) -> None:
        rng = self.rng
        first = max(p.since, self.start, p.enrol_at.date() + timedelta(days=1))
        months: list[date] = []
        cursor = _month_start(first)
        while cursor <= p.until:
            months.append(cursor)
            cursor = _add_months(cursor, 1)
        bad_month = rng.choice(months) if months and rng.random() < 0.012 and p.category != "mutual_aid_participant" else None
        planned: list[PlannedExpense] = []
        for month in months:
            lo = max(month, first)
            hi = min(_add_months(month, 1) - timedelta(days=1), p.until)
            if hi < lo:
                continue
            k = self.visits if isinstance(self.visits, (int, float)) else self.visits.get(p.category, 1.0)
            visits = [("chc", _poisson(rng, p.intensity * k)), ("district", _poisson(rng, 0.06 * k)), ("tertiary", _poisson(rng, 0.11 * k)),
                      ("pharmacy", _poisson(rng, 0.05 * k)), ("inpatient", 1 if rng.random() < 0.018 * k else 0)]
            if p.chronic:
                visits.append(("critical", 1 if rng.random() < 0.5 else 0))
            if month == bad_month:
                visits[0] = ("chc", 10)  # a frequent attender's month: R-4L-4 suspends four-linkage
            for kind, count in visits:
                for _ in range(count):
                    planned.append(self.new_expense(p, kind, self.random_day(lo, hi)))
        if means_from is not None:
            # R-CAT-3: expenses of the recognition year before the grant, brought by the claimant
            for _ in range(rng.randint(1, 3)):
                day = self.random_day(means_from, p.since - timedelta(days=1))
                e = self.new_expense(p, rng.choice(["tertiary", "inpatient", "tertiary"]), day)
                e.channel, e.source = "post_hoc", "claimant"
                e.at = p.enrol_at + timedelta(days=rng.randint(2, 9), minutes=rng.randint(0, 60))
                planned.append(e)
        planned.sort(key=lambda e: e.at)
        # at most 48 receipts a person: every stream stays short (ADR 0003)
        p.expenses = planned[:48]
        for e in p.expenses:
            if e.visit_type == "inpatient" and not e.facility["district_designated"]:
                self.plan_critical_illness(p, e)
            elif e.visit_type == "inpatient" and p.child and rng.random() < 0.5:
                e.settlements.append(("children_fund", self.share(e.in_scope - e.basic_insurance_paid, 0.3, 0.5), "before"))
            elif e.visit_type == "inpatient" and p.insurance == "employee" and rng.random() < 0.4:
                when = "late" if e.channel == "one_stop" else rng.choice(["before", "late"])
                e.settlements.append(("union_mutual_aid", self.share(e.in_scope - e.basic_insurance_paid, 0.2, 0.4), when))

    def plan_critical_illness(self, p: Person, e: PlannedExpense) -> None:
        """居保大病 on a resident's inpatient stay: evidence by service date (R-INS-5 [002 3.6]); the
        critical-illness insurance often pays after aid (R-INS-4: a clearing case)."""
        if p.insurance != "resident" or self.rng.random() < 0.45:
            return
        e.critical = True
        self_pay = e.in_scope - e.basic_insurance_paid
        amount = money(self_pay * Decimal("0.65"))
        if e.service_date < date(2026, 1, 1):
            e.evidence = "settlement_slip"
            e.settlements.append(("critical_illness", amount, "before"))
        else:
            e.evidence = "receipt_marking"
            e.settlements.append(("critical_illness", amount, "late" if self.rng.random() < 0.7 else "before"))

    # -- recording, settling, claiming -----------------------------------------------------
    def plan_recording(self, p: Person) -> None:
        rid = p.rid
        for e in p.expenses:
            self.add(e.at, "record_expense", lambda x, at, e=e: x.record(e, at))
            if e.channel == "one_stop":
                e.claimed_at = e.paid_at = e.at + timedelta(minutes=self.rng.randint(1, 4))
                self.add(e.paid_at, "one_stop", lambda x, at, e=e: x.one_stop(e, at))
        self.plan_claims(p, rid)

    def first_batch_after(self, moment: datetime) -> datetime | None:
        month = _add_months(_month_start(moment.date()), -1)
        for _ in range(60):
            run = self.batch_time(month)
            if run > moment:
                return run
            month = _add_months(month, 1)
        return None

    def batch_time(self, month: date) -> datetime:
        """R-PH-3 [002 3.3]: the month's batch runs before the 15th of the next month."""
        return _at(next_workday(_add_months(month, 1).replace(day=10)), 10 * 60)

    def plan_claims(self, p: Person, rid: str) -> None:
        rng = self.rng
        # other_hardship is a four-linkage category only: nothing to claim outside the network
        pending = [e for e in p.expenses if e.channel == "post_hoc" and p.category != "other_hardship"]
        first_auto = self.first_batch_after(p.consent_at) if p.consent_at else None
        while pending:
            head = pending[0]
            lodge = self.office(head.at.date() + timedelta(days=rng.randint(8, 48)))
            group = [e for e in pending if e.at < lodge - timedelta(hours=20) or e is head]
            pending = [e for e in pending if e not in group]
            if first_auto is not None and lodge >= first_auto:
                for e in group:  # left to the 免申即享 batch (R-PH-3)
                    e.claimed_at = e.paid_at = self.first_batch_after(max(e.at, p.consent_at))
                    for scheme, amount, when in e.settlements:
                        if when == "before":
                            self.add(e.at + timedelta(days=rng.randint(1, 5)), "settle_insurance", lambda x, at, e=e, s=scheme, a=amount: x.settle(e, s, a, at))
                continue
            self._claim_no += 1
            handle = f"C{self._claim_no:06d}"
            for e in group:
                for scheme, amount, when in e.settlements:
                    if when == "before":
                        self.add(lodge - timedelta(minutes=rng.randint(45, 120)), "settle_insurance", lambda x, at, e=e, s=scheme, a=amount: x.settle(e, s, a, at))
            if rng.random() < 0.65:
                self.add(lodge, "aid", lambda x, at, h=handle, g=group: x.aid(h, rid, g, at))
                paid = lodge
            else:
                paid = self.plan_signed_claim(p, rid, handle, group, lodge)
            for e in group:
                e.claimed_at, e.paid_at = lodge, paid
        for e in p.expenses:
            for scheme, amount, when in e.settlements:
                if when == "late" and e.paid_at is not None:
                    late = self.office(e.paid_at.date() + timedelta(days=rng.randint(12, 70)))
                    self.add(late, "settle_insurance", lambda x, at, e=e, s=scheme, a=amount: x.settle(e, s, a, at))
                    if rng.random() < 0.4:
                        share = rng.choice((Decimal("1"), Decimal("0.5")))
                        self.add(self.office(late.date() + timedelta(days=rng.randint(10, 45))), "repay",
                                 lambda x, at, s=share: x.repay(rid, s, at))

    def plan_signed_claim(self, p: Person, rid: str, handle: str, group: list[PlannedExpense], lodge: datetime) -> datetime:
        """The three signatures (R-PH-4 [002 3.4]) on different days, paid by the 25th (R-PH-6)."""
        rng = self.rng
        handler = f"{p.street_code}-经办-0{rng.randint(1, 3)}"
        reviewer = f"{p.street_code}-审核-01"
        approver = rng.choice(DISTRICT_APPROVERS)
        reviewed = self.office(lodge.date() + timedelta(days=rng.randint(1, 4)))
        approved = self.office(reviewed.date() + timedelta(days=rng.randint(1, 6)))
        pay_day = approved.date().replace(day=25)
        if approved.date().day > 20:
            pay_day = _add_months(pay_day, 1)
        paid = _at(next_workday(pay_day), 9 * 60 + rng.randint(0, 120))
        self.add(lodge, "claim", lambda x, at: x.lodge(handle, rid, group, handler, at))
        self.add(reviewed, "review", lambda x, at: x.signed(handle, lambda cid: m.Review(claim=cid, reviewer=reviewer, at=at)))
        self.add(approved, "approve", lambda x, at: x.signed(handle, lambda cid: m.Approve(claim=cid, approver=approver, at=at)))
        self.add(paid, "pay", lambda x, at: x.signed(handle, lambda cid: m.Pay(claim=cid, payer=DISTRICT_PAYER, at=at)))
        return paid

    # -- the district's events ------------------------------------------------------------
    def plan_consents(self) -> None:
        if self.end < self.procedure_from + timedelta(days=40):
            return
        for p in self.people:
            if p.category == "mutual_aid_participant" or p.until < self.end or self.rng.random() > 0.18:
                continue
            earliest = max(self.procedure_from, p.enrol_at.date() + timedelta(days=1))
            p.consent_at = self.office(self.random_day(earliest, min(earliest + timedelta(days=90), self.end)))
            self.add(p.consent_at, "consent_auto_claim", lambda x, at, rid=p.rid: x.run("consent_auto_claim", m.ConsentAutoClaim(recipient=rid, signed=True, at=at)))

    def plan_batches(self) -> None:
        month = _month_start(self.procedure_from)
        while True:
            run = self.batch_time(month)
            if run.date() > self.end:
                break
            self.add(run, "auto_claims", lambda x, at, mo=f"{month:%Y-%m}": x.auto_batch(mo, at))
            month = _add_months(month, 1)

    def plan_retroactive(self) -> None:
        """A few retroactive category changes (R-TIME-2, R-CLR-1(c)): upgrades found late
        (supplementary payouts) and downgrades found at the annual review (clearing cases)."""
        rng = self.rng
        settled = [p for p in self.people if not p.new and p.until == self.end]
        ups = [p for p in settled if p.category == "low_income"]
        downs = [p for p in settled if p.category == "dibao"]
        for group, upgrade in ((ups, True), (downs, False)):
            rng.shuffle(group)
            for p in group[: max(1, self.n // 120)]:
                when = self.office(self.random_day(self.start + timedelta(days=200), self.end - timedelta(days=40)))
                valid_from = _month_start(_add_months(when.date(), -rng.randint(2, 5)))
                rid = p.rid
                if upgrade:
                    self.add(when, "grant_category", lambda x, at, rid=rid, f=valid_from: x.run(
                        "grant_category", m.GrantCategory(recipient=rid, category="dibao", valid_from=f, at=at)))
                    self.add(self.office(when.date() + timedelta(days=rng.randint(8, 25))), "pay_supplementary",
                             lambda x, at, rid=rid: x.pay_supplementary([rid], at))
                else:
                    self.add(when, "grant_category", lambda x, at, rid=rid, f=valid_from: x.run(
                        "grant_category", m.GrantCategory(recipient=rid, category="low_income", valid_from=f, at=at)))
                    self.add(when + timedelta(minutes=3), "revoke_category", lambda x, at, rid=rid, f=valid_from: x.run(
                        "revoke_category", m.RevokeCategory(recipient=rid, category="dibao", valid_from=f,
                                                            reason="annual review: household income above the dibao line", at=at)))
                    if rng.random() < 0.5:
                        self.add(self.office(when.date() + timedelta(days=rng.randint(15, 35))), "repay",
                                 lambda x, at, rid=rid: x.repay(rid, Decimal("1"), at))

    def plan_amendment(self) -> None:
        """One parameter amendment, retroactive to January (R-CLR-1(d)): the district raises the
        expenditure-poor II inpatient rate within the 50–70% range [001 二(二)4]."""
        year = self.end.year if self.end >= date(self.end.year, 7, 31) else self.end.year - 1
        if year < self.start.year:
            return
        when = self.office(date(year, 7, 15))
        name = "shanghai.medical_aid.rate.inpatient.expenditure_poor_2"
        self.add(when, "set_parameter", lambda x, at: x.run("set_parameter", m.SetParameter(
            name=name, value="0.60", effective_from=date(year, 1, 1), reference="demo amendment within [001 二(二)4] 50%–70%", at=at)))
        ep2 = [p.rid for p in self.people if p.category == "expenditure_poor_2"]
        self.add(self.office(when.date() + timedelta(days=12)), "pay_supplementary", lambda x, at: x.pay_supplementary(ep2, at))
        # make sure the amendment has something to act on: an inpatient stay early that year
        for p in [p for p in self.people if p.category == "expenditure_poor_2" and p.insurance and p.since < date(year, 1, 1)][:3]:
            day = self.random_day(date(year, 2, 1), date(year, 5, 31))
            if day > p.until:
                continue
            e = self.new_expense(p, "inpatient", day)
            e.facility = self.rng.choice(TERTIARY)
            e.invoice_no = self.invoice_no(e.facility, e.invoice_date)
            e.referred = False
            p.expenses.append(e)
            p.expenses.sort(key=lambda x: x.at)

    def plan_duplicates(self) -> None:
        """The same receipt brought again by the claimant after it was settled one-stop: kept and
        flagged (SCENARIOS.md); the claim on it is rejected DUPLICATE (R-PH-7 [002 4.5])."""
        candidates = [(p, e) for p in self.people for e in p.expenses if e.channel == "one_stop" and e.at.date() < self.end - timedelta(days=60)]
        self.rng.shuffle(candidates)
        for k, (p, e) in enumerate(candidates[: 2 if self.n >= 20 else 1]):
            when = self.office(e.at.date() + timedelta(days=self.rng.randint(15, 40)))
            self._expense_no += 1
            copy = PlannedExpense(**{**e.__dict__, "handle": f"E{self._expense_no:06d}", "channel": "post_hoc", "source": "claimant", "at": when, "settlements": []})
            self._claim_no += 1
            handle = f"C{self._claim_no:06d}"
            self.add(when, "record_expense", lambda x, at, c=copy: x.record(c, at))
            self.add(when + timedelta(minutes=2), "aid", lambda x, at, c=copy, h=handle, rid=p.rid: x.aid(h, rid, [c], at))

    def plan_suspension_reviews(self) -> None:
        """R-4L-4: after a frequent attender's month, the district reviews and reopens four-linkage."""
        for p in self.people:
            months = Counter((e.service_date.year, e.service_date.month) for e in p.expenses if e.facility["kind"] == "community_health_centre")
            for (y, mo), count in months.items():
                if count > 8:
                    when = self.office(_add_months(date(y, mo, 1), 1) + timedelta(days=self.rng.randint(3, 12)))
                    self.add(when, "lift_suspension", lambda x, at, rid=p.rid: x.lift(rid, at))

    def plan_social_help(self) -> None:
        """R-4L-5: one-time help from a social organisation for a heavy own share."""
        heavy = [(e.total - e.basic_insurance_paid, p, e) for p in self.people for e in p.expenses
                 if e.visit_type == "inpatient" and e.paid_at is not None and p.category not in ("mutual_aid_participant",)]
        heavy.sort(key=lambda t: t[0], reverse=True)
        seen: set[str] = set()
        for _, p, e in heavy:
            if len(seen) >= max(1, self.n // 100) or p.handle in seen:
                continue
            seen.add(p.handle)
            when = self.office(e.paid_at.date() + timedelta(days=self.rng.randint(20, 50)))
            if when.date() > p.until:
                continue
            amount = str(self.rng.choice([2000, 3000, 5000, 8000]))
            org = self.rng.choice(SOCIAL_ORGANISATIONS)
            self.add(when, "social_help", lambda x, at, rid=p.rid, a=amount, o=org: x.run(
                "social_help", m.SocialHelp(recipient=rid, amount=a, organisation=o, at=at)))

    def plan_write_off(self) -> None:
        """Near the period's end, the smallest open clearing balance is written off, officer and
        approver distinct (R-CLR-3)."""
        late = sorted({p.rid for p in self.people for e in p.expenses if any(w == "late" for _, _, w in e.settlements)})
        if late:
            self.add(self.office(self.end - timedelta(days=14)), "write_off", lambda x, at: x.write_off(late, at))

    def build(self) -> Plan:
        for index, category in enumerate(self.categories(), start=1):
            person = self.person(index, category)
            self.people.append(person)
            self.plan_person(person)
        self.plan_consents()
        self.plan_amendment()
        for p in self.people:
            self.plan_recording(p)
        self.plan_batches()
        self.plan_retroactive()
        self.plan_duplicates()
        self.plan_suspension_reviews()
        self.plan_social_help()
        self.plan_write_off()
        self.steps.sort()
        published = _at(self.start, 0) - timedelta(hours=16)
        return Plan(self.start, self.end, published, self.people, self.steps)


def _poisson(rng: random.Random, lam: float) -> int:
    threshold, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= threshold:
            return k
        k += 1


def plan(*, recipients: int = DEFAULT_RECIPIENTS, seed: int = 2026, years: Iterable[int] = (2024, 2025, 2026), until: date | None = None,
         id_for: Callable[[str], Any] | None = None, visits: float | dict[str, float] = 1.0) -> Plan:
    """The timeline, sorted by recorded time (nothing is run). ``id_for`` maps a resident id
    number to the ledger's recipient id (``LedgerApp.recipient_id_for``; default: plain uuid5);
    ``visits`` multiplies every monthly visit rate, overall or per category (the benchmark's
    denser district year)."""
    return Planner(recipients, seed, tuple(years), until, id_for, visits).build()


# --------------------------------------------------------------------------------------- replay


class Replay:
    """Runs the steps through the handlers and keeps the ledger's ids for the plan's handles."""

    def __init__(self, app: LedgerApp):
        self.app = app
        self.expenses: dict[str, str] = {}
        self.claims: dict[str, str] = {}
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.rejections: Counter[tuple[str, str]] = Counter()
        self.auto_claims = 0

    def _tally(self, kind: str, result: Result) -> Result:
        self.outcomes[(kind, result.status)] += 1
        if result.status != "accepted":
            self.rejections[(kind, result.code or "?")] += 1
        return result

    def run(self, kind: str, cmd: m.Command) -> Result:
        result = self._tally(kind, self.app.run(cmd))
        if isinstance(cmd, m.AutoClaims):
            self.auto_claims += len(result.ids.get("claims", []))
        return result

    def auto_batch(self, month: str, at: datetime) -> None:
        """The 免申即享 batch lodged by the service and signed by three district officers (R-PH-3, R-PH-4)."""
        handler, reviewer, approver, payer = BATCH_OFFICERS
        batch = self.run("auto_claims", m.AutoClaims(month=month, handler=handler, at=at)).ids.get("batch")
        if batch:
            for role, officer in (("reviewer", reviewer), ("approver", approver), ("payer", payer)):
                self.run("sign_batch", m.SignBatch(batch=batch, role=role, officer=officer, at=at))

    def signed(self, handle: str, build: Callable[[str], m.Command]) -> None:
        """A signature (or the payment) on a claim lodged earlier, if it was lodged."""
        if handle in self.claims:
            cmd = build(self.claims[handle])
            self.run(type(cmd).__name__.lower(), cmd)

    def record(self, e: PlannedExpense, at: datetime) -> None:
        res = self.run("record_expense", e.command(e.person.rid, at))
        if res.status == "accepted":
            self.expenses[e.handle] = res.ids["expense"]
            if res.ids.get("duplicate_of"):
                self.outcomes[("duplicate_receipt", "flagged")] += 1

    def one_stop(self, e: PlannedExpense, at: datetime) -> None:
        if e.handle in self.expenses:
            self.run("one_stop", m.OneStop(expense=self.expenses[e.handle], at=at))

    def settle(self, e: PlannedExpense, scheme: str, amount: Decimal, at: datetime) -> None:
        if e.handle in self.expenses:
            self.run("settle_insurance", m.SettleInsurance(expense=self.expenses[e.handle], scheme=scheme, amount=amount, at=at))

    def aid(self, handle: str, rid: str, group: list[PlannedExpense], at: datetime) -> None:
        ids = [self.expenses[e.handle] for e in group if e.handle in self.expenses]
        if not ids:
            return
        res = self._tally("aid", self.app.aid(rid, ids, at))
        if "claim" in res.ids:
            self.claims[handle] = res.ids["claim"]

    def lodge(self, handle: str, rid: str, group: list[PlannedExpense], handler: str, at: datetime) -> None:
        ids = [self.expenses[e.handle] for e in group if e.handle in self.expenses]
        if not ids:
            return
        res = self.run("claim", m.LodgeClaim(recipient=rid, expenses=ids, handler=handler, at=at))
        if res.status == "accepted":
            self.claims[handle] = res.ids["claim"]

    def repay(self, rid: str, share: Decimal, at: datetime) -> None:
        owed = self.app.recipient(rid).open_balance()
        amount = money(owed * share)
        if amount > 0:
            self.run("repay", m.Repay(recipient=rid, amount=amount, at=at))

    def write_off(self, candidates: list[str], at: datetime) -> None:
        owed = [(b, rid) for rid in candidates if (b := self.app.recipient(rid).open_balance()) > 0]
        if owed:
            rid = min(owed)[1]
            self.run("write_off", m.WriteOff(recipient=rid, officer=CLEARING_OFFICER, approver=DISTRICT_APPROVERS[1],
                                             reason="small balance, recovery not economical", at=at))

    def pay_supplementary(self, rids: list[str], at: datetime) -> None:
        for rid in rids:
            try:
                pending = any(s.paid_at is None for s in self.app.recipient(rid).supplementary.values())
            except UnknownEntity:  # recognised later in the year: not enrolled yet
                continue
            if pending:
                self.run("pay_supplementary", m.PaySupplementary(recipient=rid, at=at))

    def lift(self, rid: str, at: datetime) -> None:
        if self.app.recipient(rid).active_suspension("changning.four_linkage") is not None:
            self.run("lift_suspension", m.LiftSuspension(recipient=rid, reviewer=DISTRICT_REVIEWER, at=at))


# --------------------------------------------------------------------------------------- summary


@dataclass
class Summary:
    recipients: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    expenses: int = 0
    duplicates: int = 0
    one_stop: int = 0
    claims: dict[str, int] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    paid_total: Decimal = ZERO
    paid_by_scheme: dict[str, Decimal] = field(default_factory=dict)
    paid_by_fund: dict[str, Decimal] = field(default_factory=dict)
    recovered: Decimal = ZERO
    written_off: Decimal = ZERO
    social_help: Decimal = ZERO
    cases_opened: int = 0
    cases_open: int = 0
    open_balance: Decimal = ZERO
    supplementary: int = 0
    supplementary_pending: int = 0
    suspensions: int = 0
    events: int = 0
    steps: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if isinstance(v, Decimal):
                v = fmt(v)
            elif isinstance(v, dict):
                v = {kk: fmt(vv) if isinstance(vv, Decimal) else vv for kk, vv in v.items()}
            elif isinstance(v, datetime):
                v = v.isoformat()
            out[k] = v
        out["elapsed_s"] = round(self.elapsed_s, 1)
        return out


def summarise(app: LedgerApp, replay: Replay | None = None) -> Summary:
    """What the ledger now holds (read from the aggregates, not from the plan)."""
    s = Summary()
    cats: Counter[str] = Counter()
    for rid in app.recipient_ids():
        r = app.recipient(rid)
        s.recipients += 1
        for c in {f.category for f in r.category_facts if f.kind == "grant"}:
            cats[c] += 1
        for acc in r.expenses.values():
            s.expenses += 1
            s.duplicates += acc.facts.duplicate_of is not None
            s.one_stop += "one_stop" in acc.channels
            s.paid_total += acc.paid_total
            for k, v in acc.paid_by_scheme.items():
                s.paid_by_scheme[k] = s.paid_by_scheme.get(k, ZERO) + v
            for k, v in acc.paid_by_fund.items():
                s.paid_by_fund[k] = s.paid_by_fund.get(k, ZERO) + v
        for rec in r.recoveries:
            if rec["kind"] == "write_off":
                s.written_off += rec["amount"]
            else:
                s.recovered += rec["amount"]
        s.social_help += sum((Decimal(g["amount"]) for g in r.social_help), ZERO)
        s.cases_opened += len(r.cases)
        s.cases_open += sum(1 for c in r.cases.values() if c.status == "open")
        s.open_balance += r.open_balance()
        s.supplementary += len(r.supplementary)
        s.supplementary_pending += sum(1 for x in r.supplementary.values() if x.paid_at is None)
        s.suspensions += len(r.suspensions)
    s.by_category = dict(sorted(cats.items(), key=lambda kv: -kv[1]))
    s.paid_by_fund = {f: s.paid_by_fund.get(f, ZERO) for f in FUNDS if f in s.paid_by_fund}
    s.paid_by_scheme = dict(sorted(s.paid_by_scheme.items()))
    s.events = event_count(app)
    s.claims = {
        "lodged": event_count(app, [topic_of(Claim.Lodged)]),
        "paid": event_count(app, [topic_of(Claim.Paid)]),
        "rejected": event_count(app, [topic_of(Claim.Rejected)]),
    }
    if replay is not None:
        s.claims["auto"] = replay.auto_claims
        s.claims["auto_batches"] = replay.outcomes[("auto_claims", "accepted")]
        s.rejections = {f"{kind}:{code}": k for (kind, code), k in sorted(replay.rejections.items())}
    return s


# --------------------------------------------------------------------------------------- entry


def demo_env(store: Settings | dict[str, str]) -> dict[str, str]:
    """The store's env (from settings, or an eventsourcing env) for building the demo in one
    process.

    - The aggregate cache without deep copies: the demo is the store's only writer, and every
      handler refuses before it changes an aggregate, so a cached recipient never holds an unsaved
      change; a reload would replay its whole stream (ADR 0003), a deep copy costs as much.
    - No fast-forward of a cached aggregate: with one writer the cache is the store's latest
      state, so a cache hit needs no query for newer events (a third of the demo's reads).
      Group commit (``LedgerApp.group``) evicts what a rolled-back or failed command touched.
    - A SQLite file is written with ``synchronous=NORMAL`` (:mod:`infra.sqlite_bulk`).
    - The engine's last pass kept for every recipient (``LedgerCore.MEMOS_MAX``, as many as the
      cache holds aggregates, up to a million expenses in all): an online process keeps 512, but
      an import decides for every recipient in turn, so with fewer each decision late in the year
      would assess the recipient's whole year again rather than resume (ADR 0017).
    - The cyclic collector of an import process (``commands.group.GC_ENV``): what is alive after
      each group commit is frozen, and the whole heap collected only as the import grows
      fourfold, so the collector does not walk the ever larger cache a constant number of times
      per event.
    - PostgreSQL's idle-in-transaction timeout at 60 s instead of the library's 5 s: a group
      commit links a few hundred events between its two round trips, and on a starved machine
      (seen at load average 10 on two cores) that took longer than 5 s, the server cut the
      transaction and the group's commands ran again one by one.
    """
    env = store.eventsourcing_env(APP_NAME) if isinstance(store, Settings) else dict(store)
    env = bulk_env(env)
    env.update({"AGGREGATE_CACHE_MAXSIZE": "100000", "DEEPCOPY_FROM_AGGREGATE_CACHE": "n", "AGGREGATE_CACHE_FASTFORWARD": "n",
                "PASS_MEMOS_MAX": "100000", "PASS_MEMO_EXPENSES_MAX": "1000000", group_commit.GC_ENV: "freeze",
                "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "60"})
    return env


def demo_app(store: Settings | dict[str, str], *, start: date = date(2024, 1, 1)) -> LedgerApp:
    """The ledger on the given store (settings, or an eventsourcing env with the other settings
    from the environment), wired as always (personal data encrypted, keyed recipient ids, the
    integrity chain: ``infra.wiring.build_app``) with :func:`demo_env`, and its policy packs
    published before the demo's first day, so that recorded times can run through the demo's
    years (the app keeps them strictly increasing). The chain is extended once at the end of
    :func:`generate` rather than after every save."""
    settings = store if isinstance(store, Settings) else get_settings()
    app = build_app(settings, env=demo_env(store), publish_policy=False)
    ensure_policy(app, published_at=_at(start, 0) - timedelta(hours=16))
    return app


def generate(
    app: LedgerApp,
    *,
    recipients: int = DEFAULT_RECIPIENTS,
    seed: int = 2026,
    years: Iterable[int] = (2024, 2025, 2026),
    until: date | None = None,
    progress: Progress | None = None,
    visits: float | dict[str, float] = 1.0,
) -> Summary:
    """Plan the timeline and replay it through ``app``'s handlers; return what the ledger holds.

    ``app`` must be an empty Changning ledger whose policy was published before the first year
    (:func:`demo_app`); ``until`` ends the period (default: yesterday, or the last year's end).
    ``progress(done, total)`` is called as steps run.
    """
    began = time.perf_counter()
    the_plan = plan(recipients=recipients, seed=seed, years=years, until=until, id_for=app.recipient_id_for, visits=visits)
    if app.jurisdiction != "shanghai.changning":
        raise ValueError("the demo dataset is a Changning one: build the app for shanghai.changning")
    if next(iter(app.recipient_ids()), None) is not None:
        raise ValueError("the ledger already holds recipients: the demo needs an empty store")
    published = min(p["at"] for p in app.policy().packs)
    if published >= the_plan.steps[0].at:
        raise ValueError(
            f"the policy was published at {published.isoformat()}, after the demo's first step; "
            "build the app with infra.demo.demo_app so recorded times can start in the first year"
        )
    replay = Replay(app)
    total = len(the_plan.steps)
    every = max(1, total // 400)
    # Group commit (commands.group): GROUP_SIZE commands per transaction, each with its own
    # savepoint; the results the steps use are the handlers' own (the demo is the only writer, so
    # a group never meets a conflict that would re-run its commands).
    with app.group(GROUP_SIZE):
        for done, step in enumerate(the_plan.steps, start=1):
            step.action(replay, step.at)
            if progress is not None and (done % every == 0 or done == total):
                progress(done, total)
    try:
        integrity.chain_for(app).run()
    except RuntimeError:  # an application built without the chain (not through the wiring)
        pass
    summary = summarise(app, replay)
    summary.steps = total
    summary.first_at, summary.last_at = the_plan.steps[0].at, the_plan.steps[-1].at
    summary.elapsed_s = time.perf_counter() - began
    return summary
