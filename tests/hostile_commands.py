"""Hostile input for the property tests: commands with random and adversarial fields, a small
world for them to land in, and the checks every outcome must pass.

Strategies produce plain dicts (what an adapter hands to ``Model.model_validate``) in which
references to the world's entities are symbolic (:class:`Ref`), resolved once the world exists,
so every example is reproducible from its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any, Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from commands import models as m
from commands import queries
from commands.app import LedgerApp, Result
from infra import wiring
from infra.policy_files import load_packs
from ledger import errors
from ledger.aggregates import Claim, CommandRecord, Recipient
from ledger.values import FUNDS
from integrity_story import id_number

#: A fixed seed (derandomize) and a realistic example count, the same on every run and in CI;
#: no example database, so a run never depends on an earlier one.
PROFILE = "ledger-hostile"
settings.register_profile(
    PROFILE,
    derandomize=True,
    database=None,
    max_examples=250,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=CST)
JURISDICTION = "shanghai.changning"

# ---------------------------------------------------------------------------------------------
# The world


@dataclass(frozen=True)
class Ref:
    """A symbolic reference to one of the world's entities."""

    kind: str  # recipient | expense | claim
    index: int


@dataclass
class World:
    app: LedgerApp
    refs: dict[str, list[str]] = field(default_factory=dict)
    id_numbers: list[str] = field(default_factory=list)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, Ref):
            pool = self.refs[value.kind]
            return pool[value.index % len(pool)]
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value


@lru_cache(maxsize=None)
def _packs(jurisdiction: str, at: datetime):
    return load_packs(jurisdiction, at)


def _ok(result: Result) -> Result:
    assert result.status == "accepted", result
    return result


def build_world() -> World:
    """Two recipients, a few expenses (one a duplicate receipt), a pending claim, a paid one, an
    open clearing case: enough for hostile commands to reach deep into the handlers."""
    published = T0 - timedelta(days=1)
    original = wiring.load_packs
    wiring.load_packs = _packs  # the YAML packs are parsed once per run, not once per example
    try:
        app = wiring.memory_app(JURISDICTION, published_at=published)
    finally:
        wiring.load_packs = original
    world = World(app, {"recipient": [], "expense": [], "claim": []})
    at = iter(T0 + timedelta(minutes=i) for i in range(1000))
    for first17, category in (("31010519580312201", "dibao"), ("31010519520101432", "low_income")):
        number = id_number(first17)
        world.id_numbers.append(number)
        rid = _ok(app.run(m.Enrol(id_number=number, name="测试", street="华阳路街道", at=next(at)))).ids["recipient"]
        world.refs["recipient"].append(rid)
        _ok(app.run(m.GrantCategory.model_validate({"recipient": rid, "category": category, "from": "2025-01-01", "at": next(at)})))
        _ok(app.run(m.Insure.model_validate({"recipient": rid, "scheme": "resident", "from": "2020-01-01", "at": next(at)})))
    r1, r2 = world.refs["recipient"]
    _ok(app.run(m.ConsentAutoClaim(recipient=r1, signed=True, at=next(at))))
    for rid, kind, facility, invoice, amounts in (
        (r1, "outpatient", {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "C1"}, "A-1", ("150.00", "120.00", "30.00")),
        (r1, "inpatient", {"kind": "hospital", "level": 2, "district_designated": True, "code": "H2"}, "B-1", ("20000.00", "16000.00", "12000.00")),
        (r1, "outpatient", {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "C1"}, "A-1", ("150.00", "120.00", "30.00")),
        (r2, "outpatient", {"kind": "hospital", "level": 3, "code": "H3"}, "D-1", ("900.00", "800.00", "100.00")),
        (r2, "inpatient", {"kind": "hospital", "level": 3, "code": "H3"}, "D-2", ("3000.00", "2500.00", "1000.00")),
        (r1, "outpatient", {"kind": "community_health_centre", "level": 1, "district_designated": True, "code": "C1"}, "A-2", ("80.00", "80.00", "20.00")),
    ):
        res = app.run(
            m.RecordExpense.model_validate(
                {
                    "recipient": rid,
                    "visit_type": kind,
                    "facility": facility,
                    "referred": True,
                    "service_date": "2026-01-02",
                    "invoice_date": "2026-01-03",
                    "invoice_no": invoice,
                    "total": amounts[0],
                    "in_scope": amounts[1],
                    "basic_insurance_paid": amounts[2],
                    "at": next(at),
                }
            )
        )
        world.refs["expense"].append(_ok(res).ids["expense"])
    e1, e2, _e3, e4, e5, _e6 = world.refs["expense"]  # e6: recorded, not yet claimed
    paid = _ok(app.aid(r1, [e2], next(at))).ids["claim"]
    pending = _ok(app.run(m.LodgeClaim(recipient=r2, expenses=[e4], handler="handler-1", at=next(at)))).ids["claim"]
    _ok(app.run(m.Review(claim=pending, reviewer="reviewer-1", at=next(at))))
    approved = _ok(app.run(m.LodgeClaim(recipient=r2, expenses=[e5], handler="handler-2", at=next(at)))).ids["claim"]
    _ok(app.run(m.Review(claim=approved, reviewer="reviewer-1", at=next(at))))
    _ok(app.run(m.Approve(claim=approved, approver="approver-1", at=next(at))))
    lodged = _ok(app.run(m.LodgeClaim(recipient=r1, expenses=[e1], handler="handler-2", at=next(at)))).ids["claim"]
    # a claim at each stage; the reviewed one first (shrinking goes to index 0)
    world.refs["claim"] += [pending, approved, lodged, paid]
    _ok(app.run(m.SettleInsurance(expense=e2, scheme="critical_illness", amount=Decimal("500.00"), at=next(at))))
    assert app.recipient(r1).open_balance() > 0
    return world


# ---------------------------------------------------------------------------------------------
# Adversarial values

UNICODE_EDGES = [
    "",
    " ",
    "\x00",
    "\ud800",  # a lone surrogate: not encodable as UTF-8
    "\u202etxt.exe",  # right-to-left override
    "e\u0301",  # combining accent
    "\ufeff",  # byte order mark
    "👨‍👩‍👧‍👦",
    "𠜎𠜱𠝹",  # outside the BMP
    "ＡＢＣ１２３",  # full width
    "'; DROP TABLE ledger_events; --",
    "{\"_pd_\": \"aesgcm1\", \"ct\": \"AAAA\"}",
    "[erased]",
    "\n\r\t",
]

weird_text = st.one_of(
    st.sampled_from(UNICODE_EDGES),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=190, max_size=260),  # around the length limits
    st.just("x" * 100_000),  # oversized
)

money_hostile = st.one_of(
    st.sampled_from(
        ["NaN", "nan", "sNaN", "-NaN", "Infinity", "-Infinity", "inf", "1e12", "1e400", "-1e400", "999999999999.99", "-0.00", "-1.00", "0.001",
         "1.005", "1e-7", "１２３", "1_000", "", " ", "12,000.00", "0x10", "1e2", "+5", "00012.30", "١٢٣"]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(min_value=-1000, max_value=1000, places=6),
    st.none(),
    st.booleans(),
    weird_text,
    st.lists(st.integers(), max_size=2),
)
money_valid = st.decimals(min_value=Decimal("0.00"), max_value=Decimal("50000.00"), places=2).map(str)
money = st.one_of(money_valid, money_valid, money_hostile)

_ancient, _future = date(1, 1, 1), date(9999, 12, 31)
date_hostile = st.one_of(
    st.dates(min_value=_ancient, max_value=_future).map(date.isoformat),
    st.dates(min_value=_ancient, max_value=_future),
    st.sampled_from(["2026-02-30", "2026-13-01", "0000-01-01", "9999-12-31", "0001-01-01", "2026-1-5", "", "yesterday", "2026-01-05T00:00:00"]),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.datetimes(),
    weird_text,
)
date_valid = st.dates(min_value=date(2024, 6, 1), max_value=date(2026, 3, 1)).map(date.isoformat)
a_date = st.one_of(date_valid, date_valid, date_hostile)

recorded_at = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=400 * 24 * 3600).map(lambda s: T0 + timedelta(seconds=s)),  # in and out of order
    st.integers(min_value=-3 * 365 * 24 * 3600, max_value=0).map(lambda s: T0 + timedelta(seconds=s)),  # before the world
    st.datetimes(timezones=st.sampled_from([timezone.utc, CST, timezone(timedelta(hours=-12)), timezone(timedelta(hours=14))])),
    st.sampled_from([datetime(1, 1, 1, tzinfo=timezone.utc), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), datetime(2026, 1, 5, 9, 0)]),
    st.datetimes(),  # naive
    st.sampled_from(["2026-01-05T09:00:00+08:00", "2026-01-05 09:00", "now", "", "9999-12-31T23:59:59.999999+00:00", "0001-01-01T00:00:00-12:00"]),
)


def _id_number_hostile(draw: Callable) -> Any:
    region = draw(st.sampled_from(["310105", "310104", "320703", "110101", "999999", "000000"]))
    born = draw(st.dates(min_value=date(1800, 1, 1), max_value=date(2100, 12, 31)))
    seq = draw(st.integers(min_value=0, max_value=999))
    first17 = f"{region}{born:%Y%m%d}{seq:03d}"
    good = id_number(first17)
    kind = draw(st.integers(min_value=0, max_value=6))
    if kind == 0:
        return good
    if kind == 1:  # wrong check digit
        wrong = "0123456789X".replace(good[-1], "")
        return first17 + draw(st.sampled_from(list(wrong)))
    if kind == 2:
        return good.lower()
    if kind == 3:
        return draw(st.text(min_size=18, max_size=18))
    if kind == 4:
        return draw(st.integers(min_value=10**17, max_value=10**18 - 1))
    if kind == 5:
        return " " + good + " "
    return draw(weird_text)


id_numbers = st.composite(lambda draw: _id_number_hostile(draw))()
good_id_numbers = st.builds(
    lambda region, born, seq: id_number(f"{region}{born:%Y%m%d}{seq:03d}"),
    st.sampled_from(["310105", "310104", "320703", "110101"]),
    st.dates(min_value=date(1920, 1, 1), max_value=date(2025, 12, 31)),
    st.integers(min_value=0, max_value=999),
)


def refs(kind: str) -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(range(6)).map(lambda i: Ref(kind, i)),
        st.sampled_from(range(6)).map(lambda i: Ref(kind, i)),
        st.uuids().map(str),  # unknown ids
        st.sampled_from(["R1", "E1", "C1", "not-a-uuid:1", "00000000-0000-0000-0000-000000000000:1", ":", "x:y:z"]),
        weird_text,
        st.none(),
        st.integers(),
    )


def expense_refs() -> st.SearchStrategy:
    bad_n = st.one_of(st.integers(min_value=-5, max_value=10**20).map(str), weird_text)
    return st.one_of(refs("expense"), st.tuples(st.integers(0, 3), bad_n).map(lambda t: _ExpenseOf(Ref("recipient", t[0]), t[1])))


@dataclass(frozen=True)
class _ExpenseOf:
    """``<a real recipient>:<a made-up number>``."""

    recipient: Ref
    number: str


def officer() -> st.SearchStrategy:
    return st.one_of(st.sampled_from(["handler-1", "reviewer-1", "approver-1", "handler-2", "officer-9"]), weird_text, st.none())


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


facility = st.one_of(
    st.fixed_dictionaries(
        {
            "kind": st.one_of(st.sampled_from(["community_health_centre", "hospital", "pharmacy"]), weird_text),
            "level": st.one_of(st.integers(min_value=1, max_value=3), st.integers(), money_hostile),
        },
        optional={
            "district_designated": st.one_of(st.booleans(), weird_text, st.integers()),
            "out_of_province": st.booleans(),
            "code": st.one_of(st.sampled_from(["C1", "H2", "H3"]), weird_text, st.none()),
            "extra": st.just(1),
        },
    ),
    weird_text,
    st.none(),
    st.lists(st.integers(), max_size=2),
)

categories = st.one_of(
    st.sampled_from(["dibao", "low_income", "special_relief", "destitute", "expenditure_poor_1", "expenditure_poor_2", "orphan", "child_in_distress",
                     "other_hardship", "mutual_aid_participant", "lyg_key", "lyg_extended"]),
    weird_text,
)

parameter_names = st.one_of(
    st.sampled_from(
        [
            "shanghai.medical_aid.annual_cap.outpatient.dibao",
            "shanghai.medical_aid.annual_cap.inpatient.dibao",
            "shanghai.medical_aid.rate.inpatient.expenditure_poor_1",
            "changning.four_linkage.monthly_cap.community_outpatient",
            "changning.four_linkage.monthly_visits.community_outpatient",
            "shanghai.medical_aid.enrolment_subsidy.low_income_60plus",
            "lianyungang.medical_aid.rate.key",
            "shanghai.medical_aid.nope",
        ]
    ),
    weird_text,
)

# One entry per command: each field's valid values, its hostile values, and whether it is
# required. An example corrupts a few fields of an otherwise sensible command (so that it gets
# past validation often enough to reach the rules), or many at once.


@dataclass(frozen=True)
class F:
    valid: st.SearchStrategy
    hostile: st.SearchStrategy
    required: bool = True


def _opt(valid: st.SearchStrategy, hostile: st.SearchStrategy) -> F:
    return F(valid, hostile, required=False)


text_valid = st.sampled_from(["王秀英", "Zhang Wei", "华阳路街道", "reason given", "街道 3 号"])
recipient = F(refs_valid := st.sampled_from(range(6)).map(lambda i: Ref("recipient", i)), refs("recipient"))
expense = F(st.sampled_from(range(7)).map(lambda i: Ref("expense", i)), expense_refs())
claim = F(st.sampled_from(range(6)).map(lambda i: Ref("claim", i)), refs("claim"))
officer_f = F(st.sampled_from(["handler-1", "reviewer-1", "approver-1", "handler-2", "officer-9"]), officer())
money_f = F(money_valid, money_hostile)
small_money = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("120.00"), places=2).map(str)
date_f = F(date_valid, date_hostile)
category_f = F(st.sampled_from(["dibao", "low_income", "special_relief", "expenditure_poor_2", "orphan", "mutual_aid_participant", "lyg_key"]), categories)
bool_f = F(st.booleans(), st.one_of(weird_text, st.integers(min_value=2), st.none(), st.floats()))
facility_valid = st.fixed_dictionaries(
    {"kind": st.sampled_from(["community_health_centre", "hospital", "pharmacy"]), "level": st.integers(min_value=1, max_value=3)},
    optional={"district_designated": st.booleans(), "out_of_province": st.booleans(), "code": st.sampled_from(["C1", "H2", "H3"])},
)

COMMANDS: dict[type[m.Command], dict[str, F]] = {
    m.Enrol: {"id_number": F(good_id_numbers, id_numbers), "name": F(text_valid, weird_text), "street": _opt(text_valid, weird_text)},
    m.GrantCategory: {
        "recipient": recipient,
        "category": category_f,
        "from": date_f,
        "to": _opt(date_valid, date_hostile),
        "subtype": _opt(st.sampled_from(["低保", "重点优抚"]), weird_text),
        "determined_on": _opt(date_valid, date_hostile),
        "means_test_expenses_from": _opt(date_valid, date_hostile),
        "household_medical_spending_12m": _opt(money_valid, money_hostile),
        "household_annual_disposable_income": _opt(money_valid, money_hostile),
    },
    m.RevokeCategory: {"recipient": recipient, "category": category_f, "from": date_f, "reason": _opt(text_valid, weird_text)},
    m.Insure: {"recipient": recipient, "scheme": F(st.sampled_from(["resident", "employee"]), weird_text), "from": date_f, "to": _opt(date_valid, date_hostile)},
    m.EndInsurance: {"recipient": recipient, "scheme": F(st.sampled_from(["resident", "employee"]), weird_text), "to": date_f},
    m.JoinMutualAid: {
        "recipient": recipient,
        "year": F(st.integers(min_value=2023, max_value=2027), st.one_of(st.integers(), weird_text)),
        "has_home_insurance": bool_f,
        "home_insurance_deductible": _opt(money_valid, money_hostile),
    },
    m.ConsentAutoClaim: {"recipient": recipient, "signed": bool_f},
    m.RecordExpense: {
        "recipient": recipient,
        "visit_type": F(st.sampled_from(["outpatient", "inpatient", "outpatient_critical"]), weird_text),
        "facility": F(facility_valid, facility),
        "service_date": date_f,
        "invoice_date": date_f,
        "invoice_no": F(st.sampled_from(["A-1", "B-1", "Z-9", "Z-10"]), weird_text),
        "total": money_f,
        "in_scope": money_f,
        "basic_insurance_paid": money_f,
        "referred": _opt(st.booleans(), bool_f.hostile),
        "dispensing_only": _opt(st.booleans(), bool_f.hostile),
        "critical_illness_related": _opt(st.booleans(), bool_f.hostile),
        "critical_illness_evidence": _opt(st.sampled_from(["none", "settlement_slip", "receipt_marking"]), weird_text),
        "basic_insurance_settled": _opt(st.booleans(), bool_f.hostile),
        "handle": _opt(st.sampled_from(["E9", "E10"]), weird_text),
        "source": _opt(st.sampled_from(["settlement_system", "claimant"]), st.sampled_from(["robot", ""])),
    },
    m.SettleInsurance: {
        "expense": expense,
        "scheme": F(st.sampled_from(["critical_illness", "union_mutual_aid", "burden_reduction", "children_fund", "other"]), weird_text),
        "amount": money_f,
    },
    m.OneStop: {"expense": expense},
    m.LodgeClaim: {
        "recipient": recipient,
        "expenses": F(st.lists(expense.valid, min_size=1, max_size=3), st.one_of(st.lists(expense_refs(), max_size=4), st.lists(st.just(Ref("expense", 0)), min_size=2, max_size=3), weird_text)),
        "handler": officer_f,
        "channel": _opt(st.sampled_from(["post_hoc", "auto"]), st.one_of(st.just("one_stop"), weird_text)),
        "proxy_id_number": _opt(good_id_numbers, id_numbers),
        "deadline_override": _opt(text_valid, weird_text),
    },
    m.Review: {"claim": claim, "reviewer": officer_f},
    m.Approve: {"claim": claim, "approver": officer_f},
    m.Pay: {"claim": claim},
    m.AutoClaims: {"month": F(st.sampled_from(["2026-01", "2026-02", "2025-12"]), st.one_of(st.sampled_from(["0000-01", "9999-12", "2026-13", "2026-1", "0001-01"]), weird_text))},
    m.SetParameter: {
        "name": F(parameter_names, weird_text),
        "value": F(st.one_of(money_valid, st.integers(min_value=0, max_value=20)), st.one_of(money_hostile, st.integers(), st.just({"decimal": "1"}))),
        "effective_from": date_f,
        "effective_to": _opt(date_valid, date_hostile),
        "reference": _opt(text_valid, weird_text),
    },
    m.LiftSuspension: {"recipient": recipient, "reviewer": officer_f, "scheme": _opt(st.just("changning.four_linkage"), weird_text)},
    m.SocialHelp: {"recipient": recipient, "amount": money_f, "organisation": _opt(text_valid, weird_text)},
    m.PaySupplementary: {"recipient": recipient},
    m.Repay: {"recipient": recipient, "amount": F(small_money, money_hostile)},  # mostly within what is owed
    m.WriteOff: {"recipient": recipient, "officer": officer_f, "approver": officer_f, "reason": _opt(text_valid, weird_text)},
    m.ClearingRun: {"trigger": _opt(st.sampled_from(["parameter_change", "late_insurance"]), st.just("nonsense"))},
}

at_valid = st.one_of(st.none(), st.integers(min_value=0, max_value=200 * 24 * 3600).map(lambda s: T0 + timedelta(seconds=s)))


@st.composite
def commands(draw: Callable) -> tuple[type[m.Command], dict[str, Any]]:
    model = draw(st.sampled_from(list(COMMANDS)))
    fields = COMMANDS[model]
    names = sorted(fields)
    # how many fields to corrupt: mostly none or one, sometimes several, sometimes all
    level = draw(st.integers(min_value=0, max_value=9))
    if not names or level < 5:
        hostile: set[str] = set()
    elif level < 8:
        hostile = {draw(st.sampled_from(names))}
    elif level < 9:
        hostile = set(draw(st.lists(st.sampled_from(names), min_size=2, max_size=3)))
    else:
        hostile = set(names)
    data: dict[str, Any] = {}
    for name in names:
        f = fields[name]
        if name in hostile:
            data[name] = draw(f.hostile)
        elif f.required or draw(st.booleans()):
            data[name] = draw(f.valid)
    if model is m.RecordExpense and not hostile & {"total", "in_scope", "basic_insurance_paid"}:
        # coherent amounts (R-INS-3): total ≥ in-scope ≥ insurance paid
        amounts = sorted((Decimal(data[k]) for k in ("total", "in_scope", "basic_insurance_paid")), reverse=True)
        data.update(zip(("total", "in_scope", "basic_insurance_paid"), (str(a) for a in amounts)))
    if model is m.RecordExpense and not hostile & {"service_date", "invoice_date"}:
        first, second = sorted([data["service_date"], data["invoice_date"]])
        data["service_date"], data["invoice_date"] = first, second
    data["at"] = draw(recorded_at if draw(st.integers(min_value=0, max_value=9)) >= 7 else at_valid)
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        data["command_id"] = draw(st.one_of(st.sampled_from(["cmd-1", "cmd-2"]), weird_text))
    if draw(st.integers(min_value=0, max_value=19)) == 0:
        data["unexpected_field"] = draw(weird_text)
    if data and draw(st.integers(min_value=0, max_value=19)) == 0:
        data.pop(draw(st.sampled_from(sorted(data))))
    return model, data


# ---------------------------------------------------------------------------------------------
# The checks

#: What a rule's refusal may still record (SCENARIOS.md, R-PH-7): the claim and its rejection, the
#: attempted duplicate, the expenses released, and the idempotency record.
RECORDED_REFUSALS = {
    f"{c.__module__}:{c.__qualname__}"
    for c in (Claim.Lodged, Claim.Rejected, Recipient.DuplicateAttempted, Recipient.ClaimAttached, CommandRecord.Recorded)
}


def _resolve_expense(world: World, value: Any) -> Any:
    if isinstance(value, _ExpenseOf):
        return f"{world.resolve(value.recipient)}:{value.number}"
    if isinstance(value, list):
        return [_resolve_expense(world, v) for v in value]
    return world.resolve(value)


@dataclass
class Outcome:
    kind: str  # invalid (pydantic) | refused (LedgerError raised) | rejected (Result) | accepted
    code: str | None = None


def run_one(world: World, model: type[m.Command], data: dict[str, Any]) -> Outcome:
    """Through the command handlers as every adapter calls them; any exception other than a
    coded refusal propagates and fails the test."""
    app = world.app
    payload = {k: _resolve_expense(world, v) for k, v in data.items()}
    before = app.recorder.max_notification_id() or 0
    try:
        cmd = model.model_validate(payload)
    except ValidationError as exc:
        assert exc.errors(), "a validation error names its field"
        return Outcome("invalid")
    try:
        result = app.run(cmd)
    except errors.LedgerError as exc:
        assert exc.code and exc.code != "LEDGER_ERROR", exc
        after = app.recorder.max_notification_id() or 0
        assert after == before, f"refused with {exc.code} but the store changed ({before} → {after})"
        return Outcome("refused", exc.code)
    assert result.status in ("accepted", "rejected"), result
    if result.status == "rejected":
        assert result.code, result
        new = app.recorder.select_notifications(start=before + 1, limit=1000)
        unexpected = [n.topic for n in new if n.topic not in RECORDED_REFUSALS]
        assert not unexpected, f"rejected {result.code} but recorded {unexpected}"
        return Outcome("rejected", result.code)
    for kind, key in (("claim", "claim"), ("expense", "expense")):
        made = result.ids.get(key)
        if isinstance(made, str) and made not in world.refs[kind]:
            world.refs[kind].append(made)
    if model is m.Enrol:
        world.refs["recipient"].append(result.ids["recipient"])
    return Outcome("accepted")


def _fund_flows_from_events(app: LedgerApp) -> dict[str, dict[str, Decimal]]:
    """Per recipient and fund: payouts (offset parts included) − recoveries (repayments and
    offsets; a write-off recovers nothing) + social help + enrolment subsidies, summed from the
    stored events themselves (not from the aggregate)."""
    flows: dict[str, dict[str, Decimal]] = {}
    start = 1
    while True:
        batch = app.recorder.select_notifications(start=start, limit=1000)
        for n in batch:
            if not n.topic.startswith("ledger.aggregates:Recipient."):
                continue
            e = app.mapper.to_domain_event(n)
            funds = flows.setdefault(str(n.originator_id), {f: Decimal("0") for f in FUNDS})
            if isinstance(e, Recipient.AidPaid):
                for pay in e.payments:
                    for f, v in pay["by_fund"].items():
                        funds[f] = funds.get(f, Decimal(0)) + Decimal(v)
                for o in e.offsets:
                    for f, v in o["by_fund"].items():
                        funds[f] -= Decimal(v)
            elif isinstance(e, Recipient.RepaymentReceived):
                for a in e.allocations:
                    for f, v in a["by_fund"].items():
                        funds[f] -= Decimal(v)
            elif isinstance(e, Recipient.SocialHelpGranted):
                funds["social"] += Decimal(e.amount)
            elif isinstance(e, Recipient.InsuranceEnrolmentStarted) and e.subsidy:
                fund = e.subsidy.get("fund", "city")
                funds[fund] = funds.get(fund, Decimal(0)) + Decimal(e.subsidy.get("amount") or "0")
        if len(batch) < 1000:
            return flows
        start = batch[-1].id + 1


def check_books(world: World) -> None:
    """The fund books balance and no balance is negative."""
    app = world.app
    flows = _fund_flows_from_events(app)
    for rid in app.recipient_ids():
        r = app.recipient(rid)
        movements = queries.fund_movements(r)
        expected = flows.get(str(rid), {})
        for f in set(movements) | set(expected):
            assert movements.get(f, 0) == expected.get(f, 0), (str(rid), f, movements, expected)
        for c in r.cases.values():
            assert c.balance >= 0 and all(v >= 0 for v in c.balance_by_fund.values()), (c.id, c.balance_by_fund)
            assert c.balance <= c.amount, c
        for eid, acc in r.expenses.items():
            assert acc.paid_total >= 0, eid
            assert sum(acc.paid_by_fund.values(), Decimal(0)) == acc.paid_total, (eid, acc.paid_by_fund, acc.paid_total)
            for amount in (acc.due or {}).get("by_fund", {}).values():
                assert Decimal(amount) >= 0 and math.isfinite(Decimal(amount)), (eid, acc.due)
        for p in r.payouts:
            assert p["to_person"] >= 0, p
