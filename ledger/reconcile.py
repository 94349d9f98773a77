"""Why what was paid on an expense differs from what it is due now (R-CLR-2, R-CLR-3 [000 第七条;
002 4.4]), fund by fund, in three parts a snapshot shows beside ``aid_paid`` and ``aid_due``.

For a decided expense, with D the first decision, S the supplementary payouts (S_paid of them
paid), C the clearing cases' amounts and ``expected = D + S − C`` (``Recipient.expected``):

    aid_paid = (D − decided_unpaid) + S_paid
    aid_paid − aid_due = clearing_owed − supplementary_pending − decided_unpaid + uncleared

- ``clearing_owed`` = C: what clearing found was paid too much (recovered since or not: a
  repayment, offset or write-off settles the case, it does not undo the payout);
- ``supplementary_pending`` = S − S_paid: found too little and not paid yet;
- ``decided_unpaid`` = D − (aid_paid − S_paid): decided but not paid (a claim approved, not yet
  paid by the district);
- ``uncleared`` = expected − aid_due: a difference today's knowledge shows that no clearing run
  has turned into a case or a supplementary payout yet (zero once clearing has run, R-CLR-2,
  but for one thing: where a write-off forgave a case and today's knowledge raises what is due,
  the rise up to what the person holds is paid by nothing, ``Recipient.expected(held=True)``, and
  stays here as a negative amount).

Each term is per fund, so the identity holds per fund, per expense, and for any sum of them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ledger.money import ZERO

#: The columns this module adds to a snapshot row, in export order, with their Chinese labels.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("clearing_owed", "清算应退总额"),
    ("decided_unpaid", "已核定未支付"),
    ("uncleared", "待清算差额"),
)


def _money_map(d: dict[str, Any] | None) -> dict[str, Decimal]:
    return {k: Decimal(str(v)) for k, v in (d or {}).items()}


def _plus(a: dict[str, Decimal], b: dict[str, Decimal], sign: int = 1) -> dict[str, Decimal]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, ZERO) + sign * v
    return out


def explain(r: Any, expense_id: str, due_by_fund: dict[str, Any] | None) -> dict[str, dict[str, Decimal]]:
    """column → fund → amount for one decided expense of recipient ``r`` (a ``Recipient``),
    given what it is due now per fund (``{}`` when refused)."""
    acc = r.expenses[expense_id]
    owed: dict[str, Decimal] = {}
    for c in r.cases.values():
        if c.expense_id == expense_id:
            owed = _plus(owed, c.by_fund)
    supplementary_paid: dict[str, Decimal] = {}
    for s in r.supplementary.values():
        if s.expense_id == expense_id and s.paid_at is not None:
            supplementary_paid = _plus(supplementary_paid, s.by_fund)
    decided = _money_map((acc.decided or {}).get("by_fund"))
    decision_paid = _plus(acc.paid_by_fund, supplementary_paid, -1)
    expected = r.expected(expense_id)["by_fund"]
    return {
        "clearing_owed": owed,
        "decided_unpaid": _plus(decided, decision_paid, -1),
        "uncleared": _plus(expected, _money_map(due_by_fund), -1),
    }
