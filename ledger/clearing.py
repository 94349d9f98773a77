"""Individual clearing 个人清算 (RULES.md §7, [000 第七条; 002 4.4, 4.5]): the arithmetic.

R-CLR-2: recompute with today's knowledge, compare with what the ledger already settled on; a
shortfall is a supplementary payout, an excess a clearing case (a receivable per fund).
R-CLR-3: recoveries (repayment, offset, write-off) reduce a case's balance, never below zero.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

from ledger.money import FEN, ZERO
from ledger.values import FUNDS


def sub(a: dict[str, Decimal], b: dict[str, Decimal]) -> dict[str, Decimal]:
    return {k: a.get(k, ZERO) - b.get(k, ZERO) for k in sorted(set(a) | set(b)) if a.get(k, ZERO) != b.get(k, ZERO)}


def add(a: dict[str, Decimal], b: dict[str, Decimal], sign: int = 1) -> dict[str, Decimal]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, ZERO) + sign * v
    return out


def allocate(amount: Decimal, balances: dict[str, Decimal]) -> dict[str, Decimal]:
    """Split a recovery over a case's per-fund balances in proportion; fen rounded down, the last
    fund with a balance (the district, by FUNDS order) takes the rest. No fund goes below zero."""
    positive = {f: b for f, b in balances.items() if b > 0}
    total = sum(positive.values(), ZERO)
    if amount <= 0 or total <= 0:
        return {}
    amount = min(amount, total)
    order = sorted(positive, key=lambda f: (f == "district", FUNDS.index(f) if f in FUNDS else 99))
    out: dict[str, Decimal] = {}
    left = amount
    for f in order[:-1]:
        share = min(positive[f], (amount * positive[f] / total).quantize(FEN, rounding=ROUND_DOWN))
        out[f] = share
        left -= share
    last = order[-1]
    if left > positive[last]:  # rounding pushed too much to the last fund: spread the excess back
        extra = left - positive[last]
        left = positive[last]
        for f in order[:-1]:
            room = positive[f] - out[f]
            step = min(room, extra)
            out[f] += step
            extra -= step
    out[last] = left
    return {f: v for f, v in out.items() if v}


def oldest_first(amount: Decimal, open_cases: list[tuple[str, Decimal]]) -> list[tuple[str, Decimal]]:
    """R-CLR-3: apply an amount to open cases, oldest first, never past a case's balance."""
    applied = []
    left = amount
    for case_id, balance in open_cases:
        if left <= 0:
            break
        take = min(left, balance)
        if take > 0:
            applied.append((case_id, take))
            left -= take
    return applied
