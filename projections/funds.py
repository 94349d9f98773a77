"""Fund books, double-entry (R-CLR-2, R-CLR-3 [000 第六条, 第七条]; R-MA-3 [003 四(一)]; R-INS-2;
R-4L-5).

Every movement of money is one balanced entry of debit and credit lines in ``proj_fund_line``;
``proj_fund_account`` holds each account's totals. Accounts, per fund (``city``, ``district``,
``mutual_aid``, ``social``):

- ``cash``: the fund's money; a credit is money leaving the fund;
- ``aid``: aid paid out (incl. the part of a payout offset against a clearing case);
- ``receivable``: what a recipient owes from clearing (one account per recipient and fund);
- ``written_off``: receivables written off (a write-off recovers nothing);
- ``social_help`` and ``subsidy``: social-organisation help (R-4L-5) and enrolment subsidies
  (R-INS-2).

Movements:

| movement | debit | credit |
|---|---|---|
| ``payout`` (``AidPaid``, per expense and fund) | aid | cash |
| ``offset`` (the part of a payout kept against a case, R-CLR-3) | cash | receivable |
| ``case_opened`` (``ClearingCaseOpened``: an overpayment becomes owed, R-CLR-2) | receivable | aid |
| ``repayment`` (``RepaymentReceived``) | cash | receivable |
| ``write_off`` (``WriteOffApproved``) | written_off | receivable |
| ``social_help`` (``SocialHelpGranted``) | social_help | cash |
| ``subsidy`` (enrolment subsidy, ``InsuranceEnrolmentStarted``, ``EnrolmentSubsidised``) | subsidy | cash |

A supplementary payout moves money only when it is paid (an ``AidPaid`` of channel
``supplementary``). A fund's net outflow (SCENARIOS.md ``funds``) is the credit balance of its
``cash`` account: aid paid + social help + subsidies − repayments − offsets.
``proj_fund_case`` follows each clearing case's balance per fund, so that :func:`check` can prove
that the receivables equal what the cases say is owed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Integer, String, Table, func, select
from sqlalchemy.engine import Connection

from ledger.aggregates import Recipient
from ledger.values import FUNDS
from projections.common import Item, Projection, Store, add_sums, insert_rows, fen, metadata, utc, yuan_str

fund_line = Table(
    "proj_fund_line",
    metadata,
    Column("position", BigInteger, primary_key=True),
    Column("entry", Integer, primary_key=True),  # movements of one event: 1, 2, …
    Column("line", Integer, primary_key=True),
    Column("movement", String(20), nullable=False),
    Column("account", String(20), nullable=False),
    Column("fund", String(16), nullable=False),
    Column("party", String(36), nullable=False),  # the recipient for receivables, else ''
    Column("recipient", String(36), nullable=False),  # whom the movement concerns
    Column("reference", String(120), nullable=True),  # expense, case or claim
    Column("debit_fen", BigInteger, nullable=False),
    Column("credit_fen", BigInteger, nullable=False),
    Column("recorded_at", String(40), nullable=False),
)

fund_account = Table(
    "proj_fund_account",
    metadata,
    Column("account", String(20), primary_key=True),
    Column("fund", String(16), primary_key=True),
    Column("party", String(36), primary_key=True),
    Column("debit_fen", BigInteger, nullable=False),
    Column("credit_fen", BigInteger, nullable=False),
)

fund_case = Table(
    "proj_fund_case",
    metadata,
    Column("case_id", String(120), primary_key=True),
    Column("fund", String(16), primary_key=True),
    Column("recipient", String(36), nullable=False, index=True),
    Column("expense_id", String(80), nullable=False),
    Column("trigger", String(24), nullable=False),
    Column("opened_fen", BigInteger, nullable=False),
    Column("balance_fen", BigInteger, nullable=False),
    Column("written_off", Boolean, nullable=False),
)

PER_RECIPIENT = {"receivable"}


def _by_fund(d: dict[str, Any] | None) -> list[tuple[str, Decimal]]:
    order = {f: i for i, f in enumerate(FUNDS)}
    return sorted(((f, Decimal(v)) for f, v in (d or {}).items() if Decimal(v) != 0), key=lambda fv: (order.get(fv[0], 99), fv[0]))


class FundBooks(Projection):
    name = "funds"
    version = 1
    tables = (fund_line, fund_account, fund_case)
    events = (
        Recipient.AidPaid,
        Recipient.ClearingCaseOpened,
        Recipient.RepaymentReceived,
        Recipient.WriteOffApproved,
        Recipient.SocialHelpGranted,
        Recipient.InsuranceEnrolmentStarted,
        Recipient.EnrolmentSubsidised,
    )

    def apply(self, conn: Connection, items: Sequence[Item]) -> None:
        cases = Store(conn, fund_case)
        case_ids: set[str] = set()
        for _, e in items:
            for a in getattr(e, "offsets", None) or getattr(e, "allocations", None) or []:
                case_ids.add(a["case"])
        cases.fetch("case_id", case_ids)
        lines: list[dict[str, Any]] = []
        for position, e in items:
            book = _Entries(position, str(e.originator_id), utc(e.timestamp), lines)
            rid = book.recipient
            if isinstance(e, Recipient.AidPaid):
                for p in e.payments:
                    book.post("payout", p["expense"], [("aid", "cash", f, v) for f, v in _by_fund(p["by_fund"])])
                for o in e.offsets:
                    book.post("offset", o["case"], [("cash", "receivable", f, v) for f, v in _by_fund(o["by_fund"])])
                    _recover(cases, o)
            elif isinstance(e, Recipient.ClearingCaseOpened):
                # The case's balance per fund is the signed difference (R-CLR-2): when a
                # recomputation moved funds in opposite directions, one fund's part is negative
                # and its lines swap sides; the case as a whole is owed the net amount.
                owed = _by_fund(e.by_fund)
                book.post("case_opened", e.case_id, [("receivable", "aid", f, v) for f, v in owed])
                for f, v in owed:
                    cases.put(
                        {
                            "case_id": e.case_id,
                            "fund": f,
                            "recipient": rid,
                            "expense_id": e.expense_id,
                            "trigger": e.trigger,
                            "opened_fen": fen(v),
                            "balance_fen": fen(v),
                            "written_off": False,
                        }
                    )
            elif isinstance(e, Recipient.RepaymentReceived):
                for a in e.allocations:
                    book.post("repayment", a["case"], [("cash", "receivable", f, v) for f, v in _by_fund(a["by_fund"])])
                    _recover(cases, a)
            elif isinstance(e, Recipient.WriteOffApproved):
                for a in e.allocations:
                    book.post("write_off", a["case"], [("written_off", "receivable", f, v) for f, v in _by_fund(a["by_fund"])])
                    _recover(cases, a, written_off=True)
            elif isinstance(e, Recipient.SocialHelpGranted):
                book.post("social_help", e.organisation, [("social_help", "cash", "social", Decimal(e.amount))])
            elif isinstance(e, (Recipient.InsuranceEnrolmentStarted, Recipient.EnrolmentSubsidised)):
                s = e.subsidy or {}
                amount = Decimal(s.get("amount") or "0")
                if amount:
                    book.post("subsidy", s.get("kind"), [("subsidy", "cash", s.get("fund", "city"), amount)])
        # An account's totals are a sum of its lines: added set-based, never read back (ADR 0008).
        totals: dict[tuple[str, str, str], list[int]] = {}
        for line in lines:
            t = totals.setdefault((line["account"], line["fund"], line["party"]), [0, 0])
            t[0] += line["debit_fen"]
            t[1] += line["credit_fen"]
        add_sums(conn, fund_account, [{"account": a, "fund": f, "party": p, "debit_fen": d, "credit_fen": c}
                                      for (a, f, p), (d, c) in sorted(totals.items())], ("debit_fen", "credit_fen"))
        cases.flush()
        insert_rows(conn, fund_line, lines)


def _recover(cases: Store, allocation: dict[str, Any], *, written_off: bool = False) -> None:
    for f, v in _by_fund(allocation["by_fund"]):
        row = cases.get(allocation["case"], f)
        if row is None:  # cannot happen (a recovery is allocated over the case's funds); check() would show it
            continue
        row["balance_fen"] -= fen(v)
        row["written_off"] = row["written_off"] or written_off


class _Entries:
    """The balanced entries of one event: each (debit account, credit account, fund, amount)
    gives one debit and one credit line of the same amount (a negative amount swaps them)."""

    def __init__(self, position: int, recipient: str, at: str, lines: list[dict[str, Any]]):
        self.position, self.recipient, self.at, self.lines = position, recipient, at, lines
        self.entry = 0

    def post(self, movement: str, reference: str | None, pairs: list[tuple[str, str, str, Decimal]]) -> None:
        if not pairs:
            return
        self.entry += 1
        n = 0
        for debit, credit, fund, amount in pairs:
            if amount < 0:
                debit, credit, amount = credit, debit, -amount
            for account, side in ((debit, "debit_fen"), (credit, "credit_fen")):
                n += 1
                self.lines.append(
                    {
                        "position": self.position,
                        "entry": self.entry,
                        "line": n,
                        "movement": movement,
                        "account": account,
                        "fund": fund,
                        "party": self.recipient if account in PER_RECIPIENT else "",
                        "recipient": self.recipient,
                        "reference": reference,
                        "debit_fen": fen(amount) if side == "debit_fen" else 0,
                        "credit_fen": fen(amount) if side == "credit_fen" else 0,
                        "recorded_at": self.at,
                    }
                )


# --------------------------------------------------------------------------- reading


def outflow(conn: Connection) -> dict[str, str]:
    """SCENARIOS.md ``funds``: each fund's net outflow (the credit balance of its cash account)."""
    totals = {f: 0 for f in FUNDS}
    q = select(fund_account.c.fund, fund_account.c.debit_fen, fund_account.c.credit_fen).where(fund_account.c.account == "cash")
    for fund, debit, credit in conn.execute(q):
        totals[fund] = totals.get(fund, 0) + credit - debit
    return {f: yuan_str(v) for f, v in totals.items()}


def balances(conn: Connection) -> list[dict[str, Any]]:
    """The trial balance: every account with its debit and credit totals and balance (debit − credit)."""
    q = select(fund_account).order_by(fund_account.c.fund, fund_account.c.account, fund_account.c.party)
    return [
        {
            "account": r.account,
            "fund": r.fund,
            "party": r.party or None,
            "debit": yuan_str(r.debit_fen),
            "credit": yuan_str(r.credit_fen),
            "balance": yuan_str(r.debit_fen - r.credit_fen),
        }
        for r in conn.execute(q)
    ]


@dataclass
class CheckResult:
    positions: int = 0
    entries: int = 0
    lines: int = 0
    debits: int = 0
    credits: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(conn: Connection, *, limit: int = 50) -> CheckResult:
    """Prove the books: every entry balances, so the books balance after every position; the
    account totals equal their lines; what a recipient owes in all never goes below zero, nor does
    any case's balance (R-CLR-3); and each recipient's receivable per fund equals the balances of
    their clearing cases in that fund."""
    res = CheckResult()

    def problem(msg: str) -> None:
        if len(res.problems) < limit:
            res.problems.append(msg)
        elif len(res.problems) == limit:
            res.problems.append("… (more problems not shown)")

    running = 0
    current: int | None = None
    receivable: dict[tuple[str, str], int] = defaultdict(int)
    owes: dict[str, int] = defaultdict(int)
    entry_sums: dict[tuple[int, int], int] = defaultdict(int)
    account_sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    q = select(fund_line).order_by(fund_line.c.position, fund_line.c.entry, fund_line.c.line)
    for r in conn.execute(q).yield_per(5000):
        if current is not None and r.position != current:
            res.positions += 1
            if running != 0:
                problem(f"the books do not balance after position {current}: debits − credits = {yuan_str(running)}")
        current = r.position
        res.lines += 1
        res.debits += r.debit_fen
        res.credits += r.credit_fen
        running += r.debit_fen - r.credit_fen
        entry_sums[(r.position, r.entry)] += r.debit_fen - r.credit_fen
        sums = account_sums[(r.account, r.fund, r.party)]
        sums[0] += r.debit_fen
        sums[1] += r.credit_fen
        if r.debit_fen < 0 or r.credit_fen < 0:
            problem(f"position {r.position} entry {r.entry} line {r.line}: a negative amount")
        if r.account == "receivable":
            receivable[(r.party, r.fund)] += r.debit_fen - r.credit_fen
            owes[r.party] += r.debit_fen - r.credit_fen
            if owes[r.party] < 0:
                problem(f"position {r.position}: recipient {r.party} owes {yuan_str(owes[r.party])} in all (below zero, R-CLR-3)")
    if current is not None:
        res.positions += 1
        if running != 0:
            problem(f"the books do not balance after position {current}: debits − credits = {yuan_str(running)}")
    res.entries = len(entry_sums)
    for (position, entry), net in sorted(entry_sums.items()):
        if net != 0:
            problem(f"entry {position}/{entry} does not balance: debits − credits = {yuan_str(net)}")
    stored = {(r.account, r.fund, r.party): (r.debit_fen, r.credit_fen) for r in conn.execute(select(fund_account))}
    for key in sorted(set(stored) | set(account_sums)):
        if stored.get(key, (0, 0)) != tuple(account_sums.get(key, (0, 0))):
            problem(f"account {key[0]}/{key[1]}/{key[2] or '-'}: totals {stored.get(key)} differ from its lines {tuple(account_sums.get(key, (0, 0)))}")
    owed: dict[tuple[str, str], int] = defaultdict(int)
    case_balance: dict[str, int] = defaultdict(int)
    for r in conn.execute(select(fund_case)):
        case_balance[r.case_id] += r.balance_fen
        owed[(r.recipient, r.fund)] += r.balance_fen
    for case_id, balance in sorted(case_balance.items()):
        if balance < 0:
            problem(f"clearing case {case_id}: balance {yuan_str(balance)} below zero (R-CLR-3)")
    for key in sorted(set(owed) | set(receivable)):
        if owed.get(key, 0) != receivable.get(key, 0):
            problem(
                f"recipient {key[0]}, {key[1]} fund: receivable {yuan_str(receivable.get(key, 0))} ≠ open clearing cases {yuan_str(owed.get(key, 0))}"
            )
    if res.debits != res.credits:
        problem(f"trial balance: debits {yuan_str(res.debits)} ≠ credits {yuan_str(res.credits)}")
    return res


def line_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(fund_line)).scalar_one())
