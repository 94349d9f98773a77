"""Recoveries split over a case's funds (R-CLR-3; odd fen to the district as [000 第六条] splits)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.clearing import allocate, oldest_first

D = Decimal
FEN = st.integers(min_value=-500_000, max_value=500_000).map(lambda n: D(n) / 100)


def test_an_even_split_and_the_odd_fen_to_the_district() -> None:
    assert allocate(D("95.00"), {"city": D("2900.00"), "district": D("2900.00")}) == {"city": D("47.50"), "district": D("47.50")}
    assert allocate(D("0.03"), {"city": D("1.00"), "district": D("1.00")}) == {"city": D("0.01"), "district": D("0.02")}


def test_the_whole_balance_is_taken_exactly() -> None:
    balances = {"city": D("25.00"), "district": D("-20.00")}
    assert allocate(D("5.00"), balances) == balances
    assert allocate(D("9.00"), balances) == balances  # never more than the balance


def test_funds_that_moved_in_opposite_directions_move_in_proportion() -> None:
    assert allocate(D("1.00"), {"city": D("25.00"), "district": D("-20.00")}) == {"city": D("5.00"), "district": D("-4.00")}


def test_nothing_to_allocate() -> None:
    assert allocate(D("0.00"), {"city": D("1.00")}) == {}
    assert allocate(D("1.00"), {"city": D("-1.00"), "district": D("1.00")}) == {}


@settings(max_examples=300, deadline=None)
@given(
    balances=st.dictionaries(st.sampled_from(["city", "district", "mutual_aid", "social"]), FEN, min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=6),
)
def test_repeated_recoveries_never_cross_zero_and_end_exactly_at_zero(balances, cuts) -> None:
    total = sum(balances.values(), D(0))
    if total <= 0:
        assert allocate(D("1.00"), balances) == {}
        return
    left = dict(balances)
    for pct in cuts + [100]:
        owed = sum(left.values(), D(0))
        if owed == 0:
            break
        amount = max(D("0.01"), (owed * pct / 100).quantize(D("0.01")))
        shares = allocate(amount, left)
        assert sum(shares.values(), D(0)) == min(amount, owed)
        for f, share in shares.items():
            after = left[f] - share
            assert after == 0 or (after > 0) == (left[f] > 0), f"{f} crossed zero"
            assert abs(share) <= abs(left[f])
            left[f] = after
    assert all(v == 0 for v in left.values())


def test_oldest_first_never_passes_a_balance() -> None:
    assert oldest_first(D("250.00"), [("A", D("100.00")), ("B", D("200.00"))]) == [("A", D("100.00")), ("B", D("150.00"))]
    assert oldest_first(D("500.00"), [("A", D("100.00"))]) == [("A", D("100.00"))]
