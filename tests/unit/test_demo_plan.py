"""The demo's timeline, before anything is run: seeded, sorted, within its period, with valid
people and receipts; and the CLI's ``key=value`` parsing."""

from __future__ import annotations

import random
from datetime import date, timedelta
from decimal import Decimal

import pytest
from stdnum.cn import ric

from infra import demo
from infra.cli.ops import parse_pairs

UNTIL = date(2026, 11, 24)


def test_the_check_digit_is_gb_11643s() -> None:
    rng = random.Random(5)
    for _ in range(300):
        born = date(1930, 1, 1) + timedelta(days=rng.randrange(33000))
        body = f"310105{born:%Y%m%d}{rng.randrange(1000):03d}"
        good = body + demo.id_check_digit(body)
        assert ric.is_valid(good), good
        wrong = next(c for c in "0123456789X" if c != good[-1])
        assert not ric.is_valid(body + wrong)


def test_resident_ids_carry_birth_date_and_sex() -> None:
    man = demo.resident_id("310105", date(1958, 3, 12), 200, male=True)
    woman = demo.resident_id("310105", date(1962, 7, 15), 441, male=False)
    assert ric.is_valid(man) and ric.is_valid(woman)
    assert ric.get_birth_date(man) == date(1958, 3, 12)
    assert int(man[16]) % 2 == 1 and int(woman[16]) % 2 == 0


def test_the_same_seed_gives_the_same_timeline_and_another_seed_another() -> None:
    first = demo.plan(recipients=25, seed=3, until=UNTIL)
    again = demo.plan(recipients=25, seed=3, until=UNTIL)
    other = demo.plan(recipients=25, seed=4, until=UNTIL)
    shape = lambda p: [(s.at, s.kind) for s in p.steps]  # noqa: E731
    assert shape(first) == shape(again)
    assert [p.id_number for p in first.people] == [p.id_number for p in again.people]
    assert shape(first) != shape(other)


def test_the_timeline_is_sorted_within_its_period_with_valid_people_and_receipts() -> None:
    the_plan = demo.plan(recipients=40, seed=8, until=UNTIL)
    ats = [s.at for s in the_plan.steps]
    assert ats == sorted(ats)
    assert the_plan.published_at < ats[0]
    assert date(2024, 1, 1) <= ats[0].date() and ats[-1].date() <= UNTIL
    assert {p.category for p in the_plan.people} == {c for c, _ in demo.CATEGORY_SHARES}
    assert len({p.id_number for p in the_plan.people}) == 40
    kinds = {s.kind for s in the_plan.steps}
    assert {"enrol", "record_expense", "one_stop", "aid", "claim", "review", "approve", "pay", "auto_claims",
            "set_parameter", "consent_auto_claim", "join_mutual_aid", "revoke_category"} <= kinds
    for p in the_plan.people:
        assert ric.is_valid(p.id_number)
        for e in p.expenses:
            assert p.enrol_at < e.at
            assert 0 <= e.basic_insurance_paid <= e.in_scope <= e.total
            assert all(x == x.quantize(Decimal("0.01")) for x in (e.total, e.in_scope, e.basic_insurance_paid))
            assert e.service_date <= e.invoice_date <= UNTIL
            assert e.at.date() >= e.invoice_date or e.source == "claimant"


def test_the_plan_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        demo.plan(recipients=0, until=UNTIL)
    with pytest.raises(ValueError):
        demo.plan(recipients=5, years=(2024,), until=date(2024, 1, 20))


def test_key_value_pairs_nest_and_keep_money_and_ids_as_text() -> None:
    parsed = parse_pairs([
        "id_number=310105195803122013", "total=12.50", "facility.kind=hospital", "facility.level=3",
        "referred=true", "expenses=[\"a:1\",\"a:2\"]", "at=2026-01-05T09:00:00+08:00",
    ])
    assert parsed == {
        "id_number": "310105195803122013", "total": "12.50", "facility": {"kind": "hospital", "level": "3"},
        "referred": True, "expenses": ["a:1", "a:2"], "at": "2026-01-05T09:00:00+08:00",
    }
    with pytest.raises(ValueError):
        parse_pairs(["no-equals-sign"])
    with pytest.raises(ValueError):
        parse_pairs(["expenses=[not json"])
