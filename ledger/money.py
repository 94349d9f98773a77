"""Money: yuan as ``Decimal`` with two places (fen).

Every amount in the ledger goes through :func:`money`. Rates stay exact decimals; a scheme's
computation for one expense rounds once, half-up to the fen, at its end (RULES.md, preamble).
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

FEN = Decimal("0.01")
ZERO = Decimal("0.00")


class MoneyError(ValueError):
    """An amount that is not a finite yuan figure with at most two decimals."""


#: What an amount written as text looks like: plain ASCII digits, an optional point and one or two
#: decimals, an optional leading minus. ``Decimal()`` alone also takes ``1_000``, ``１００``
#: (any Unicode digit), ``1e3``, ``+5``, ``.5`` and ``Infinity``: none of them is how an amount in
#: yuan is written, and each has let a wrong figure in.
_PLAIN_AMOUNT = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")
_LIMIT = Decimal("1e12")
MONEY_RULE_TEXT = "RULES.md preamble: an amount is yuan in plain digits 0-9, at most two decimals (fen)"


def parse_money(value: object, *, field: str = "amount", allow_negative: bool = False) -> Decimal:
    """Parse user input strictly: a plain decimal number of yuan with at most two decimals.

    Taken: a string of ASCII digits with an optional ``.`` and one or two decimals (``"1000"``,
    ``"1000.5"``, ``"1000.50"``), with a leading ``-`` where ``allow_negative``; a JSON/YAML
    integer; a float whose ``repr`` is such a plain number (``1000.5``, not ``1e+16`` or
    ``0.30000000000000004``); a finite ``Decimal`` (a number from code, not typed text) worth a
    whole number of fen. Anything else is refused, never rounded: ``"1.005"`` is not silently
    changed. (RULES.md preamble: money in yuan to the fen.)
    """
    if isinstance(value, bool) or value is None:
        raise MoneyError(f"{field}: expected an amount in yuan, got {value!r} ({MONEY_RULE_TEXT})")
    if isinstance(value, int):
        if abs(value) >= _LIMIT:
            raise MoneyError(f"{field}: {_short(value)} is out of range: amounts are under 1,000,000,000,000 yuan ({MONEY_RULE_TEXT})")
        text = str(value)
    elif isinstance(value, Decimal):  # a number already (from code, not typed text): judged by value
        if not value.is_finite():
            raise MoneyError(f"{field}: {_short(value)} is not a finite amount ({MONEY_RULE_TEXT})")
        if abs(value) >= _LIMIT:
            raise MoneyError(f"{field}: {_short(value)} is out of range: amounts are under 1,000,000,000,000 yuan ({MONEY_RULE_TEXT})")
        if value != value.quantize(FEN, rounding=ROUND_HALF_UP):
            raise MoneyError(f"{field}: {_short(value)} has more than two decimals; amounts are never rounded on input ({MONEY_RULE_TEXT})")
        text = f"{value.quantize(FEN):f}"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str):
        text = value.strip(" ")
    else:
        raise MoneyError(f"{field}: expected an amount in yuan, got a {type(value).__name__} ({MONEY_RULE_TEXT})")
    shape = _PLAIN_AMOUNT.fullmatch(text)
    if shape is None:
        raise MoneyError(f"{field}: {_short(value)} is not a plain amount in yuan such as 1000.00 ({MONEY_RULE_TEXT})")
    sign, _whole, decimals = shape.groups()
    if decimals is not None and len(decimals) > 2:
        raise MoneyError(f"{field}: {_short(value)} has more than two decimals; amounts are never rounded on input ({MONEY_RULE_TEXT})")
    amount = Decimal(text)
    if sign and not allow_negative:
        raise MoneyError(f"{field}: {_short(value)} is negative, and this amount never is ({MONEY_RULE_TEXT})")
    if abs(amount) >= _LIMIT:
        raise MoneyError(f"{field}: {_short(value)} is out of range: amounts are under 1,000,000,000,000 yuan ({MONEY_RULE_TEXT})")
    return abs(amount).quantize(FEN) if amount == 0 else amount.quantize(FEN)


def _short(value: object) -> str:
    """The refused input as the message shows it: its repr, cut to a readable length."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return "a number of more than 30 digits"
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "…"


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
