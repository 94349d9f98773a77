"""Money: yuan as ``Decimal`` with two places (fen).

Every amount in the ledger goes through :func:`money`. Rates stay exact decimals; a scheme's
computation for one expense rounds once, half-up to the fen, at its end (RULES.md, preamble).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

FEN = Decimal("0.01")
ZERO = Decimal("0.00")


class MoneyError(ValueError):
    """An amount that is not a finite yuan figure with at most two decimals."""


def parse_money(value: object, *, field: str = "amount", allow_negative: bool = False) -> Decimal:
    """Parse user input strictly: a finite number with at most two decimals.

    Unlike :func:`money`, this never rounds: ``"1.005"`` is refused, not silently changed.
    """
    if isinstance(value, bool) or value is None:
        raise MoneyError(f"{field}: expected an amount in yuan, got {value!r}")
    if isinstance(value, float):
        value = repr(value)
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise MoneyError(f"{field}: {value!r} is not an amount in yuan") from None
    if not amount.is_finite():
        raise MoneyError(f"{field}: {value!r} is not a finite amount")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2 and amount != amount.quantize(FEN):
        raise MoneyError(f"{field}: {value!r} has more than two decimals (amounts are in fen)")
    if amount < 0 and not allow_negative:
        raise MoneyError(f"{field}: {value!r} is negative")
    if abs(amount) >= Decimal("1e12"):
        raise MoneyError(f"{field}: {value!r} is out of range")
    return amount.quantize(FEN)


def money(value: Decimal | int | str) -> Decimal:
    """Round once, half-up to the fen (the ledger's only rounding)."""
    return Decimal(value).quantize(FEN, rounding=ROUND_HALF_UP)


def fmt(value: Decimal | None) -> str | None:
    """The wire format: a string with exactly two decimals."""
    return None if value is None else str(money(value))


def clamp0(value: Decimal) -> Decimal:
    return value if value > 0 else ZERO


def split_city_district(amount: Decimal, city_share: Decimal = Decimal("0.5")) -> tuple[Decimal, Decimal]:
    """Split city-policy aid between city and district finance [000 第六条] (1:1 by default).

    The city gets its share rounded *down* to the fen, so an odd fen goes to the district.
    """
    amount = money(amount)
    from decimal import ROUND_DOWN

    city = (amount * city_share).quantize(FEN, rounding=ROUND_DOWN)
    return city, amount - city
