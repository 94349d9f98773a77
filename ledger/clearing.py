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
    """Split a recovery over a case's per-fund balances in proportion (R-CLR-3).

    A fund's balance may be negative when a recomputation moved funds in opposite directions
    (the city part fell, the district top-up rose): the case then owes the net, and recovering it
    moves each fund toward the new decision. Shares are cut toward zero to the fen; the fen left
    over go to the district first (odd fen to the district, as [000 第六条] splits are made), then
    to the other funds in FUNDS order. No share crosses zero or passes its fund's balance, and the
    whole balance is taken exactly when the amount equals it."""
    live = {f: b for f, b in balances.items() if b != 0}
    total = sum(live.values(), ZERO)
    if amount <= 0 or total <= 0:
        return {}
    amount = min(amount, total)
    if amount == total:
        return dict(live)
    out = {f: (amount * b / total).quantize(FEN, rounding=ROUND_DOWN) for f, b in live.items()}
    order = sorted(live, key=lambda f: (f != "district", FUNDS.index(f) if f in FUNDS else 99, f))
    left = amount - sum(out.values(), ZERO)
    step = FEN if left > 0 else -FEN
    while left != 0:
        for f in order:
            lo, hi = min(ZERO, live[f]), max(ZERO, live[f])
            if lo <= out[f] + step <= hi:
                out[f] += step
                left -= step
                break
        else:  # pragma: no cover - bounds always leave room (Σ lows ≤ amount ≤ Σ highs)
            raise ArithmeticError(f"cannot allocate {amount} over {balances}")
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
