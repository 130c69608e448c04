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
    weekdays = pd.bdate_range("2023-01-02", "2024-12-31", tz="UTC")  # no holidays: 261 a year
    daily = calendar(ns(weekdays), 86_400)
    assert not daily.continuous and daily.bars_per_session == 1
    span = (weekdays[-1] - weekdays[0]).days + 1  # first to last session, both included
    assert daily.periods_per_year == pytest.approx(len(weekdays) / span * 365.25)
    intraday = calendar(us_session_bars(weekdays[:60]), 300)
    assert not intraday.continuous and intraday.bars_per_session == 78
    assert intraday.periods_per_year == pytest.approx(intraday.sessions_per_year * 78)
    crypto = calendar(ns(pd.date_range("2024-01-01", periods=288 * 40, freq="5min")), 300)
    assert crypto.continuous and crypto.periods_per_year == pytest.approx(365.25 * 288)
    assert "continuous" in crypto.describe() and "sessions a year" in daily.describe()
    assert calendar(ns(pd.date_range("2024-01-01", periods=400, freq="D")), 86_400).periods_per_year == 365.25


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
