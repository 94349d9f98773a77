"""R-PH-6 [002 3.5]: the 20th and the 25th, moved to the next working day over weekends and public
holidays, with China's make-up working days; weekends only, flagged, past the calendar's years
(ADR 0012). Dates below are the State Council's published holiday schedules for 2025 and 2026."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from infra import working_days as wd


@pytest.mark.parametrize(
    "month, submission, payment",
    [
        # 2026 Spring Festival: 15–23 February off; the 20th moves to Tuesday the 24th.
        ("2026-02", date(2026, 2, 24), date(2026, 2, 25)),
        # Sunday 20 September 2026 is a make-up working day (National Day): it stays.
        # Friday 25 September 2026 is the Mid-Autumn Festival: the 28th (Monday).
        ("2026-09", date(2026, 9, 20), date(2026, 9, 28)),
        # Plain weekends: Sunday 20 April 2025 → Monday 21st; Sunday 25 May 2025 → Monday 26th.
        ("2025-04", date(2025, 4, 21), date(2025, 4, 25)),
        ("2025-05", date(2025, 5, 20), date(2025, 5, 26)),
        # 2025 National Day holiday runs to 8 October; the 20th and 25th: Monday 20th, Saturday 25th → 27th.
        ("2025-10", date(2025, 10, 20), date(2025, 10, 27)),
    ],
)
def test_deadlines_move_to_the_next_working_day(month, submission, payment):
    s = wd.schedule(month)
    assert s.submission.due == submission
    assert s.payment.due == payment
    assert s.submission.nominal.day == 20 and s.payment.nominal.day == 25
    assert s.warning is None
    assert s.submission.basis == s.payment.basis == wd.OFFICIAL


def test_a_make_up_saturday_is_a_working_day_and_a_holiday_weekday_is_not():
    assert wd.is_working_day(date(2026, 2, 14)) == (True, wd.OFFICIAL)  # Saturday, make-up day
    assert wd.is_working_day(date(2026, 2, 20)) == (False, wd.OFFICIAL)  # Friday, Spring Festival
    assert wd.next_working_day(date(2026, 10, 1)) == (date(2026, 10, 8), wd.OFFICIAL)


def test_past_the_calendars_years_weekends_only_with_a_warning():
    # 20 March 2027 is a Saturday: the fallback moves it to Monday the 22nd and says it guessed.
    s = wd.schedule("2027-03")
    assert s.submission.due == date(2027, 3, 22)
    assert s.submission.basis == wd.WEEKENDS_ONLY
    assert s.payment.due == date(2027, 3, 25)  # a Thursday
    assert s.warning is not None and "2027" in s.warning and "ADR 0012" in s.warning
    # The month straddling the boundary: December 2026 is known, January 2027 is not.
    assert wd.schedule("2026-12").warning is None
    assert wd.schedule("2027-01").warning is not None
    assert wd.is_working_day(date(2003, 6, 2)) == (True, wd.WEEKENDS_ONLY)


def test_settlement_periods_follow_the_submission_deadlines():
    assert wd.settlement_month(date(2026, 2, 24)) == "2026-02"  # on the moved deadline
    assert wd.settlement_month(date(2026, 2, 25)) == "2026-03"
    assert wd.settlement_month(date(2026, 9, 20)) == "2026-09"
    assert wd.settlement_month(date(2026, 9, 21)) == "2026-10"
    assert wd.settlement_month(date(2026, 12, 31)) == "2027-01"
    s = wd.schedule("2026-03")
    assert (s.period_start, s.period_end) == (date(2026, 2, 25), date(2026, 3, 20))


def test_periods_tile_the_calendar_without_gap_or_overlap():
    month = "2024-01"
    previous = wd.schedule(month)
    for _ in range(12 * 4):
        month = wd.shift_month(month, 1)
        current = wd.schedule(month)
        assert current.period_start == previous.period_end + timedelta(days=1)
        day = current.period_start
        while day <= current.period_end:
            assert wd.settlement_month(day) == month
            day += timedelta(days=1)
        previous = current


def test_shift_month_and_bad_months():
    assert wd.shift_month("2026-12", 1) == "2027-01"
    assert wd.shift_month("2026-01", -1) == "2025-12"
    with pytest.raises(ValueError):
        wd.schedule("2026-13")
