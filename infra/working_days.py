"""Working days and the monthly street schedule (R-PH-6 [002 3.5], ADR 0012).

[002 3.5]: 各街镇每月20日前将本月救助结算汇总表及发放清单上报区医保局 … 每月25日前将救助资金拨付到人到户。
双休日及法定节假日顺延。 A deadline on a weekend or a public holiday moves to the next working day;
China's make-up working days (调休上班, e.g. Sunday 2026-09-20) are working days.

The official calendar comes from ``chinese_calendar`` (package ``chinesecalendar``), which knows
the State Council's schedule only for the years it ships. Outside them (ADR 0012) the ledger falls
back to weekends only and says so: every date computed that way carries ``basis =
"weekends_only"`` and the report a warning, because a public holiday or a make-up working day of
that year may move the real deadline.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta

import chinese_calendar

from ledger.procedure import MONTHLY_DAYS

OFFICIAL = "chinese_calendar"
WEEKENDS_ONLY = "weekends_only"

SUBMISSION_DAY = MONTHLY_DAYS["summary_due_day"]  # 汇总表 and 发放清单 reach the district by the 20th
PAYMENT_DAY = MONTHLY_DAYS["payment_due_day"]  # the district pays to the person by the 25th
AUTO_CLAIM_DAY = MONTHLY_DAYS["auto_claim_day"]  # 免申即享 expenses ticked by the 15th [002 3.3]

#: The procedure's days of a month (``YYYY-MM``): ``ledger.procedure.monthly_days`` under the
#: policy in force (an amended ``summary_due_day`` moves the months it covers), or the text's.
DaysOf = Callable[[str], Mapping[str, int]]


def text_days(month: str) -> Mapping[str, int]:
    """The days as [002 3.3, 3.5] writes them, for a reader with no policy book."""
    return MONTHLY_DAYS


def is_working_day(day: date) -> tuple[bool, str]:
    """Whether ``day`` is a working day, and on what basis (official calendar or weekends only)."""
    try:
        return bool(chinese_calendar.is_workday(day)), OFFICIAL
    except NotImplementedError:
        return day.weekday() < 5, WEEKENDS_ONLY


def next_working_day(day: date) -> tuple[date, str]:
    """``day`` itself when it is a working day, else the first working day after it (顺延)."""
    basis = OFFICIAL
    while True:
        working, b = is_working_day(day)
        if b != OFFICIAL:
            basis = WEEKENDS_ONLY
        if working:
            return day, basis
        day += timedelta(days=1)


@dataclass(frozen=True)
class Deadline:
    nominal: date  # the 20th or the 25th (or the days the policy in force sets)
    due: date  # moved to the next working day where needed
    basis: str  # OFFICIAL or WEEKENDS_ONLY

    @property
    def moved(self) -> bool:
        return self.due != self.nominal


@dataclass(frozen=True)
class Schedule:
    """The month's two deadlines (R-PH-6) and the settlement period the street report covers."""

    month: str
    submission: Deadline
    payment: Deadline
    period_start: date  # first approval day the report covers (day after last month's cut-off)
    period_end: date  # the submission deadline: approvals up to it are reported this month
    #: R-PH-3 [002 3.3] "每月15日前": the day the month's 免申即享 claims are due (the text moves
    #: only 3.5's days to the next working day, so this one is not moved)
    auto_claims: date | None = None

    @property
    def warning(self) -> str | None:
        if OFFICIAL == self.submission.basis == self.payment.basis:
            return None
        return (
            f"chinese_calendar {chinese_calendar.__version__} has no official holiday schedule for "
            f"{self.month[:4]}: public holidays and make-up working days are not applied, only weekends "
            "(ADR 0012); check the deadlines by hand"
        )


def _month(month: str) -> tuple[int, int]:
    year, mon = (int(x) for x in month.split("-"))
    if not 1 <= mon <= 12:
        raise ValueError(f"not a month: {month!r} (YYYY-MM)")
    return year, mon


def shift_month(month: str, delta: int) -> str:
    year, mon = _month(month)
    index = year * 12 + (mon - 1) + delta
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _day_of(month: str, day: int) -> date:
    """``day`` of ``month``, or the month's last day where it has no such day (a 31 in April)."""
    year, mon = _month(month)
    return date(year, mon, min(day, calendar.monthrange(year, mon)[1]))


def deadline(month: str, day: int) -> Deadline:
    nominal = _day_of(month, day)
    due, basis = next_working_day(nominal)
    return Deadline(nominal, due, basis)


def schedule(month: str, days_of: DaysOf = text_days) -> Schedule:
    """R-PH-6 [002 3.5] for ``month`` (YYYY-MM), on the days ``days_of`` gives for each month
    (R-PH-3, R-PH-6: the policy's ``summary_due_day``, ``payment_due_day`` and ``auto_claim_day``).
    The report of a month covers the claims approved after the previous month's submission
    deadline, up to and including this month's (ADR 0012)."""
    days = days_of(month)
    submission = deadline(month, days["summary_due_day"])
    previous_month = shift_month(month, -1)
    previous = deadline(previous_month, days_of(previous_month)["summary_due_day"])
    return Schedule(
        month=month,
        submission=submission,
        payment=deadline(month, days["payment_due_day"]),
        period_start=previous.due + timedelta(days=1),
        period_end=submission.due,
        auto_claims=_day_of(month, days["auto_claim_day"]),
    )


def settlement_month(approved_on: date, days_of: DaysOf = text_days) -> str:
    """The report month an approval (on a China Standard Time date) belongs to."""
    month = f"{approved_on.year:04d}-{approved_on.month:02d}"
    if approved_on <= deadline(month, days_of(month)["summary_due_day"]).due:
        return month
    return shift_month(month, 1)
