"""sessions.py: the calendar a data set trades on (annualisation) and bar numbers (horizons in bars)."""

import numpy as np
import pandas as pd
import pytest

from tradelib.data.sessions import bar_positions, calendar

MIN5 = 300 * 10**9
DAY = 86_400 * 10**9


def ns(stamps) -> np.ndarray:
    return pd.DatetimeIndex(pd.to_datetime(stamps, utc=True)).as_unit("ns").asi8


def us_session_bars(days: pd.DatetimeIndex) -> np.ndarray:
    """5-minute bars of a US regular session (14:30-21:00 UTC: 78 bars) on each of `days`."""
    one = pd.timedelta_range("14:30:00", periods=78, freq="5min")
    return np.concatenate([ns(day + one) for day in days])


def test_calendar_of_each_kind_of_market():
    weekdays = pd.bdate_range("2023-01-02", "2024-12-31", tz="UTC")  # no holidays: 260.9 a year
    daily = calendar(ns(weekdays), 86_400)
    assert not daily.continuous and daily.bars_per_session == 1 and daily.long_gaps == 0
    assert daily.periods_per_year == pytest.approx(520 / 728 * 365.25)  # the marks in 104 whole weeks
    intraday = calendar(us_session_bars(weekdays[:60]), 300)  # 12 weeks, Monday to Friday: 11 whole weeks
    assert not intraday.continuous and intraday.bars_per_session == 78
    assert intraday.periods_per_year == pytest.approx(365.25 * 5 / 7 * 78)
    crypto = calendar(ns(pd.date_range("2024-01-01", periods=288 * 40, freq="5min")), 300)
    assert crypto.continuous and crypto.periods_per_year == pytest.approx(365.25 * 288)
    assert "continuous" in crypto.describe() and "exchange calendar" in daily.describe()
    assert calendar(ns(pd.date_range("2024-01-01", periods=400, freq="D")), 86_400).periods_per_year == 365.25


def week_hours(start: str, end: str, first: str, length: str, days: str = "B") -> np.ndarray:
    """5-minute bars of a session that opens at `first` (UTC, the day before when negative) for `length`, on the
    days of `days` between start and end."""
    opens = pd.date_range(start, end, freq=days, tz="UTC") + pd.Timedelta(first)
    bars = pd.timedelta_range(0, pd.Timedelta(length), freq="5min", closed="left")
    return np.concatenate([ns(o + bars) for o in opens])


def test_a_market_that_crosses_utc_midnight_counts_its_marks_not_its_dates():
    """Sessions that cross UTC midnight fill six dates a week: the count of dates once made them 24/7 (105,192 marks
    a year of 5-minute bars, the Sharpe sqrt(105,192 / true) too high). The marks a year are counted: FX from
    Sunday 22:00 to Friday 22:00 UTC, 5 x 288 a week; Sydney's 23:00-05:00 UTC session, 261 x 72 a year."""
    fx = week_hours("2024-01-07", "2024-12-22", "22h", "5D", days="W-SUN")
    cal = calendar(fx, 300)
    assert not cal.continuous and cal.periods_per_year == pytest.approx(365.25 / 7 * 5 * 288, rel=0.01)
    asx = week_hours("2024-01-01", "2024-12-31", "-1h", "6h")  # opens 23:00 UTC the day before
    cal = calendar(asx, 300)
    assert not cal.continuous and cal.periods_per_year == pytest.approx(365.25 * 5 / 7 * 72, rel=0.01)


def test_a_long_gap_is_missing_data_not_time_a_year_of_marks_spans():
    """A stray placeholder row in 1970, two downloads eleven years apart, the purge between walk-forward folds of
    daily bars: a gap over ten days is left out of the time (as one typical step), so it neither divides the
    marks a year by 165 nor by 4; a holiday weekend stays inside it."""
    days = ns(pd.date_range("2024-01-01", periods=120, freq="D", tz="UTC"))
    stray = days.copy()
    stray[0] = 0
    assert calendar(stray, 86_400).periods_per_year == pytest.approx(365.25)
    assert calendar(stray, 86_400).long_gaps == 1
    assert "1 gap(s) over 10 days left out" in calendar(stray, 86_400).describe()
    pulls = np.r_[ns(pd.bdate_range("2000-01-03", "2001-12-31", tz="UTC")),
                  ns(pd.bdate_range("2012-01-02", "2013-12-31", tz="UTC"))]
    assert calendar(pulls, 86_400).periods_per_year == pytest.approx(365.25 * 5 / 7, rel=0.002)
    folds = ns(pd.bdate_range("2020-01-01", "2023-12-31", tz="UTC"))
    folds = np.r_[folds[:300], folds[345:600], folds[645:]]  # two purges of 45 sessions (9 weeks)
    assert calendar(folds, 86_400).periods_per_year == pytest.approx(365.25 * 5 / 7, rel=0.002)
    easter = ns(pd.bdate_range("2024-01-01", "2024-12-31", tz="UTC").drop(pd.to_datetime(
        ["2024-03-29", "2024-04-01"]).tz_localize("UTC")))  # Friday and Monday off: a four-day gap is time
    assert calendar(easter, 86_400).long_gaps == 0
    assert calendar(easter, 86_400).periods_per_year == pytest.approx(len(easter), rel=0.01)


def test_bar_positions_count_missing_bars_but_not_session_breaks():
    # daily exchange bars: a weekend is one bar; a day the other symbol traded is a missing bar
    days = pd.bdate_range("2024-01-01", periods=10, tz="UTC")
    a, b = ns(days), ns(days.delete(6))  # B lacks the 7th session
    ts = np.r_[a, b]
    codes = np.r_[np.zeros(len(a)), np.ones(len(b))].astype(int)
    pos = bar_positions(ts, codes, np.full(len(ts), DAY), continuous=False)
    np.testing.assert_array_equal(np.diff(pos[: len(a)]), np.ones(9))  # Friday -> Monday: one bar
    np.testing.assert_array_equal(np.diff(pos[len(a):]), [1, 1, 1, 1, 1, 2, 1, 1])
    # a continuous market: every step is counted by the clock
    t = ns(pd.date_range("2024-01-01", periods=6, freq="5min").delete([2, 3]))
    np.testing.assert_array_equal(bar_positions(t, np.zeros(4, int), np.full(4, MIN5), True), [0, 1, 4, 5])


def test_intraday_holes_inside_a_session_count_but_overnight_does_not():
    us = us_session_bars(pd.bdate_range("2024-01-01", periods=2, tz="UTC"))
    us = np.delete(us, [10, 11])  # two bars missing inside the first session
    eu = np.concatenate([ns(d + pd.timedelta_range("08:00:00", periods=102, freq="5min"))
                         for d in pd.bdate_range("2024-01-01", periods=2, tz="UTC")])  # a European session
    ts, codes = np.r_[eu, us], np.r_[np.zeros(len(eu)), np.ones(len(us))].astype(int)
    pos = bar_positions(ts, codes, np.full(len(ts), MIN5), continuous=False)
    steps = np.diff(pos[len(eu):])
    assert steps[9] == 3 and steps[76] == 1  # the hole counts; the night does not, whatever Europe traded
    assert (np.delete(steps, 9) == 1).all()
