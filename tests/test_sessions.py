"""sessions.py: the calendar a data set trades on (annualisation) and bar numbers (horizons in bars)."""

import numpy as np
import pandas as pd
import pytest

from tradelib.data.sessions import bar_positions, calendar, day_start, long_gap_rows, session_days

MIN5 = 300 * 10**9
DAY = 86_400 * 10**9


def ns(stamps) -> np.ndarray:
    return pd.DatetimeIndex(pd.to_datetime(stamps, utc=True)).as_unit("ns").asi8


def us_session_bars(days: pd.DatetimeIndex) -> np.ndarray:
    """5-minute bars of a US regular session (14:30-21:00 UTC: 78 bars) on each of `days`."""
    one = pd.timedelta_range("14:30:00", periods=78, freq="5min")
    return np.concatenate([ns(day + one) for day in days])


def test_weekly_bars_name_the_long_gap_they_leave_out():
    """On weekly bars a gap is missing data beyond ten bars (70 days), not ten days: a 6-week hole stays in the
    time, a 13-week one is left out, and the description names the 70 days, not the ten of finer bars."""
    weeks = pd.date_range("2004-01-05", "2023-12-25", freq="W-MON", tz="UTC")
    kept = calendar(ns(weeks[(weeks < "2010-01-01") | (weeks >= "2010-02-08")]), 604_800)
    left = calendar(ns(weeks[(weeks < "2010-01-01") | (weeks >= "2010-04-01")]), 604_800)
    assert kept.long_gaps == 0 and "gap(s)" not in kept.describe()
    assert left.long_gaps == 1 and left.periods_per_year == pytest.approx(365.25 / 7)
    assert "1 gap(s) over 70 days left out as missing data" in left.describe()
    daily = calendar(ns(pd.bdate_range("2020-01-01", "2021-12-31").delete(slice(100, 120))), 86_400)
    assert daily.long_gaps == 1 and "1 gap(s) over 10 days left out" in daily.describe()


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


# ---------------------------------------------------------------------------------------------------------
# long gaps: counted in the calendar's bars, as the horizon counts them


def us_frame(n_days: int = 20, symbols=("AAA", "BBB", "CCC"), seed: int = 0, tz: str = "America/New_York",
             first: str = "09:30:00", bars: int = 78) -> pd.DataFrame:
    """5-minute bars of the US regular session (09:30-16:00 New York time, 78 a day; or another session) on
    weekdays, as a raw frame."""
    rng = np.random.default_rng(seed)
    one = pd.timedelta_range(first, periods=bars, freq="5min")
    stamps = pd.DatetimeIndex(np.concatenate([
        (pd.Timestamp(d.date()).tz_localize(tz) + one).tz_convert("UTC")
        for d in pd.bdate_range("2024-03-04", periods=n_days)]))
    frames = []
    for sym in symbols:
        c = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, len(stamps))))
        o = np.r_[c[0], c[:-1]]
        frames.append(pd.DataFrame({"timestamp": stamps, "symbol": sym, "open": o, "high": np.maximum(o, c) * 1.001,
                                    "low": np.minimum(o, c) * 0.999, "close": c,
                                    "volume": rng.integers(1000, 5000, len(c)).astype(float)}))
    return pd.concat(frames, ignore_index=True)


def build_csv(frame: pd.DataFrame, tmp_path, **knobs):
    """dataset.build of the frame written as a CSV (the normal path: load, clean, features), and the report."""
    from tradelib.config import Config
    from tradelib.data import dataset

    path = tmp_path / "bars.csv"
    frame.assign(timestamp=frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(path, index=False)
    return dataset.build(Config(data_path=str(path), **knobs))


def long_gaps(report) -> dict[str, int]:
    return {c["symbol"]: c["rows"] for c in report.counts if c["rule"] == "long_gap"}


def assert_gaps_are_the_segment_breaks(fs, report):
    """Every long_gap row counted is a segment break, and every break past a symbol's start is one."""
    breaks = int(np.count_nonzero(fs.segment[1:] != fs.segment[:-1]) - np.count_nonzero(np.diff(fs.symbol_id)))
    assert sum(long_gaps(report).values()) == breaks == fs.meta["n_segments"] - len(fs.symbols)
    assert report.gaps == long_gaps(report)


def test_us_session_nights_are_no_long_gap_and_windows_cross_them(tmp_path):
    """The night (17.5 h, 210 bars by the clock) and the weekend are one bar on an exchange: no long gap, one
    segment per symbol, and a window of 32 bars ends at 09:30 of every session but the first (12:05 there)."""
    from tradelib.data import clean
    from tradelib.train.sources import window_ends

    raw = us_frame()
    fs, report = build_csv(raw, tmp_path, window=32)
    assert long_gaps(report) == {} and report.gaps == {}
    assert fs.meta["n_segments"] == 3
    assert_gaps_are_the_segment_breaks(fs, report)
    assert "long_gap" not in clean.clean_ohlcv(raw)[1].totals()  # cleaning alone counts as the build does
    t = window_ends(fs, 0, 32)
    ny = pd.DatetimeIndex(fs.timestamp[t].view("datetime64[ns]")).tz_localize("UTC").tz_convert("America/New_York")
    first = pd.Series(ny).groupby(ny.date).min().dt.strftime("%H:%M")
    assert first.iloc[0] == "12:05"  # 09:30 + 31 bars: the data's first session only
    assert (first.iloc[1:] == "09:30").all() and len(first) >= 10


def test_a_session_across_utc_midnight_is_one_session_and_its_night_no_gap(tmp_path):
    """Sydney's 10:00-16:00 session is 23:00-05:00 UTC in March: by UTC dates each night fell inside one date,
    counted by the clock (216 bars, a long gap each night, a segment each session) and each session was two days
    of the per-day IC. Counted from the market's start of day (23:00 UTC) a session is one day, its night one bar."""
    from tradelib.data import clean
    from tradelib.report.metrics import ic_by_day
    from tradelib.train.sources import window_ends

    raw = us_frame(tz="Australia/Sydney", first="10:00:00", bars=72)
    ts = ns(raw["timestamp"])
    assert day_start(ts, MIN5) == 23 * 3600 * 10**9
    cal = calendar(ts, 300)
    assert not cal.continuous and cal.n_sessions == 20 and cal.bars_per_session == 72
    assert "long_gap" not in clean.clean_ohlcv(raw)[1].totals()
    fs, report = build_csv(raw, tmp_path, window=32)
    assert long_gaps(report) == {} and fs.meta["n_segments"] == 3
    t = window_ends(fs, 0, 32)
    syd = pd.DatetimeIndex(fs.timestamp[t].view("datetime64[ns]")).tz_localize("UTC").tz_convert("Australia/Sydney")
    first = pd.Series(syd).groupby(syd.date).min().dt.strftime("%H:%M")
    assert first.iloc[0] == "12:35" and (first.iloc[1:] == "10:00").all()  # 10:00 + 31 bars on the first only
    preds = raw.assign(prediction=np.random.default_rng(1).normal(size=len(raw)), target=raw["close"])
    assert len(ic_by_day(preds)) == 20  # a session a day, not two halves


def test_the_start_of_day_is_the_hour_after_the_longest_quiet_stretch():
    """UTC midnight where no quiet stretch of the day is longer than a bar (24/7, 4-hour bars, daily bars, daily
    bars of two vendors' labels, 00:00 and 21:00); else the hour the session opens in: the same session number
    for every bar of a session, whichever symbols are counted."""
    hour = 3600 * 10**9
    assert day_start(ns(pd.date_range("2024-01-01", periods=288 * 3, freq="5min")), MIN5) == 0
    assert day_start(ns(pd.date_range("2024-01-01", periods=60, freq="4h")), 4 * hour) == 0
    days = pd.bdate_range("2024-01-01", periods=30, tz="UTC")
    assert day_start(ns(days), DAY) == 0 and day_start(ns(days.append(days + pd.Timedelta("21h"))), DAY) == 0
    us = us_frame(n_days=5)
    ts, codes = ns(us["timestamp"]), us["symbol"].astype("category").cat.codes.to_numpy()
    assert day_start(ts, MIN5) == 14 * hour  # 14:30 UTC before daylight saving time
    sessions = session_days(ts, codes, np.full(len(ts), MIN5))
    assert np.unique(sessions).size == 5 and (np.diff(sessions) < 0).sum() == 2  # back to day 1 at B and C


def test_two_weeks_of_an_exchange_see_its_weekend_and_no_night_is_a_long_gap(tmp_path):
    """Ten sessions Monday to Friday span 12 days (304 dates a year): the weekend inside them shows the exchange.
    Read by the count of dates it was 24/7, and all 9 nights of each symbol were long gaps (27 segment breaks)."""
    from tradelib.data import clean

    raw = us_frame(n_days=10)
    assert not calendar(ns(raw["timestamp"]), 300).continuous
    assert "long_gap" not in clean.clean_ohlcv(raw)[1].totals()
    fs, report = build_csv(raw, tmp_path, window=16)
    assert long_gaps(report) == {} and fs.meta["n_segments"] == 3
    crypto = ns(pd.date_range("2024-03-04", periods=288 * 10, freq="5min"))  # ten days of a 24/7 market: still one
    assert calendar(crypto, 300).continuous


def test_a_folder_mixing_a_24_7_market_with_an_exchange_says_what_its_calendar_does(tmp_path):
    """US stocks beside one 24/7 crypto pair make the calendar continuous: every night of the stocks became a long
    gap (19 per symbol, their series restarted every session) and the report said only 'long_gap 57'. The calendar
    is still one for all, and the summary now says why: which symbols trade every day, which an exchange's week."""
    from tradelib.data import clean

    raw = us_frame(n_days=20)
    assert clean.clean_ohlcv(raw)[1].every_day == {"AAA": False, "BBB": False, "CCC": False}
    assert "calendar: mixed markets" not in clean.clean_ohlcv(raw)[1].summary()
    btc = pd.date_range(raw["timestamp"].min(), raw["timestamp"].max(), freq="5min", unit="ns")
    c = 60_000 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.002, len(btc))))
    crypto = pd.DataFrame({"timestamp": btc, "symbol": "BTC", "open": c, "high": c, "low": c, "close": c,
                           "volume": 1.0})
    _, report = clean.clean_ohlcv(pd.concat([raw, crypto], ignore_index=True))
    assert report.every_day == {"AAA": False, "BBB": False, "BTC": True, "CCC": False}
    assert report.gaps == {"AAA": 19, "BBB": 19, "CCC": 19}
    assert ("calendar: mixed markets (BTC: every day of the week; AAA, BBB, CCC: an exchange's week): one calendar "
            "for all symbols, 24/7 where the former fill the week, and on it each night and weekend of the latter "
            "counts as missing bars (57 long gaps theirs") in report.summary()


def test_one_week_of_an_exchange_reads_as_one_by_its_nights_and_five_days_of_a_24_7_market_as_continuous(tmp_path):
    """Five sessions Monday to Friday span 4.3 days: no weekend inside them. Read by the count of dates it was a
    24/7 market: each of the 4 nights of each symbol a long gap (15 segments), 33,295 marks a year. Its nights show
    the exchange: 78 bars a session, a five-day week's sessions. Five days of a 24/7 market have no night."""
    from tradelib.data import clean

    raw = us_frame(n_days=5)
    cal = calendar(ns(raw["timestamp"]), 300)
    assert not cal.continuous and cal.periods_per_year == pytest.approx(78 * 365.25 * 5 / 7)
    assert "five-day week" in cal.describe()
    assert "long_gap" not in clean.clean_ohlcv(raw)[1].totals()
    fs, report = build_csv(raw, tmp_path, window=16)
    assert long_gaps(report) == {} and fs.meta["n_segments"] == 3 and fs.meta["calendar"]["method"] == "sessions"
    crypto = pd.date_range("2024-03-04", periods=288 * 5, freq="5min", tz="UTC")  # Monday to Friday, every hour
    cal = calendar(ns(crypto), 300)
    assert cal.continuous and cal.periods_per_year == pytest.approx(288 * 365.25)
    close = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.002, len(crypto))))
    frame = pd.DataFrame({"timestamp": crypto, "symbol": "BTC", "open": close, "high": close * 1.001,
                          "low": close * 0.999, "close": close, "volume": 1.0})
    fs, report = build_csv(frame, tmp_path, window=16)
    assert fs.meta["calendar"]["method"] == "continuous" and fs.meta["n_segments"] == 1
    one_week_daily = calendar(ns(pd.bdate_range("2024-03-04", periods=5, tz="UTC")), 86_400)
    assert one_week_daily.continuous  # five dates, no night: nothing tells an exchange's week from 24/7


def test_a_missing_afternoon_inside_a_session_is_a_long_gap(tmp_path):
    raw = us_frame(n_days=15)  # three weeks: the calendar sees the weekends
    day3 = raw.index[raw["symbol"] == "AAA"][3 * 78 :]
    fs, report = build_csv(raw.drop(index=day3[10:70]), tmp_path, window=16)  # 60 bars missing: > 50
    assert long_gaps(report) == {"AAA": 1}
    assert_gaps_are_the_segment_breaks(fs, report)
    fs, report = build_csv(raw.drop(index=day3[10:50]), tmp_path, window=16)  # 40: not long
    assert long_gaps(report) == {} and fs.meta["n_segments"] == 3


def test_a_session_one_symbol_lacks_that_others_traded_is_a_long_gap(tmp_path):
    """A session the others traded counts its 78 bars: one is already more than max_gap_bars (50). A session no
    symbol traded (a holiday) is none."""
    from tradelib.data import clean

    raw = us_frame(n_days=15)  # three weeks: the calendar sees the weekends
    day = pd.DatetimeIndex(raw["timestamp"]).tz_convert("America/New_York").date
    lacks = raw.index[(raw["symbol"] == "BBB") & (day == day[4 * 78])]
    fs, report = build_csv(raw.drop(index=lacks), tmp_path, window=16)
    assert long_gaps(report) == {"BBB": 1}
    assert_gaps_are_the_segment_breaks(fs, report)
    assert clean.clean_ohlcv(raw.drop(index=lacks))[1].gaps == {"BBB": 1}
    holiday = raw.index[day == day[4 * 78]]
    fs, report = build_csv(raw.drop(index=holiday), tmp_path, window=16)
    assert long_gaps(report) == {} and fs.meta["n_segments"] == 3


def test_the_targets_over_a_long_gap_are_counted_masked(tmp_path):
    """The 12 targets of horizon 12 that would span the session BBB lacks (1 + 78 bars: a long gap, so a new
    segment) are masked and counted in masked_targets, as those over a shorter hole are: 01 said 0. A restart
    without a missing bar (a corporate action, mask) masks its targets without counting them."""
    raw = us_frame(n_days=15)
    day = pd.DatetimeIndex(raw["timestamp"]).tz_convert("America/New_York").date
    lacks = raw.index[(raw["symbol"] == "BBB") & (day == day[4 * 78])]
    fs, report = build_csv(raw.drop(index=lacks), tmp_path, window=16, horizon=12, target_delay=0)
    assert long_gaps(report) == {"BBB": 1}
    has_end = np.r_[fs.symbol_id[12:] == fs.symbol_id[:-12], np.zeros(12, bool)]  # a row 12 on, same symbol
    assert np.isnan(fs.fwd_return[has_end]).sum() == 12 == fs.meta["masked_targets"]["spans_missing_bar"]
    split = raw.copy()
    after = (split["symbol"] == "AAA") & (split.index >= 6 * 78)
    split.loc[after, ["open", "high", "low", "close"]] /= 2  # a 2:1 split at the open of AAA's 7th session
    fs, report = build_csv(split, tmp_path, window=16, horizon=12, target_delay=0)
    assert fs.meta["n_segments"] == 4 and fs.meta["masked_targets"]["spans_missing_bar"] == 0


def test_a_24_7_market_outage_across_utc_midnight_is_a_long_gap(tmp_path):
    """A continuous market counts every step by the clock: 5 hours (60 bars) missing across midnight is long."""
    stamps = pd.date_range("2024-03-01", "2024-03-22", freq="5min", tz="UTC", inclusive="left")
    frames = []
    for sym in ("BTC", "ETH"):
        c = 100 * np.exp(np.cumsum(np.random.default_rng(len(sym)).normal(0, 0.002, len(stamps))))
        frames.append(pd.DataFrame({"timestamp": stamps, "symbol": sym, "open": c, "high": c * 1.001,
                                    "low": c * 0.999, "close": c, "volume": 1000.0}))
    raw = pd.concat(frames, ignore_index=True)
    t = raw["timestamp"]
    out = (raw["symbol"] == "ETH") & (t >= "2024-03-10 22:00Z") & (t < "2024-03-11 03:00Z")
    fs, report = build_csv(raw[~out], tmp_path, window=16)
    assert fs.meta["calendar"]["method"] == "continuous"
    assert long_gaps(report) == {"ETH": 1}
    assert_gaps_are_the_segment_breaks(fs, report)


def test_long_gap_rows_count_the_calendars_bars():
    """Daily exchange bars: a weekend is one bar, never a gap; a hole of 60 days no symbol traded is counted by
    the clock (missing data, over ten days) and is one. By the clock a step is long beyond k bars exactly."""
    days = pd.bdate_range("2022-01-03", periods=400, tz="UTC")
    ts = ns(days.delete(range(200, 245)))  # 63 days without a session
    codes = np.zeros(len(ts), dtype=int)
    gap = long_gap_rows(ts, codes, np.full(len(ts), DAY), 50, continuous=False)
    assert np.flatnonzero(gap).tolist() == [200]
    assert not long_gap_rows(ns(days), np.zeros(400, int), np.full(400, DAY), 1, continuous=False).any()
    t = np.array([0, 50, 101, 151]) * MIN5  # steps of 50, 51 and 50 bars on a continuous market
    assert long_gap_rows(t, np.zeros(4, int), np.full(4, MIN5), 50).tolist() == [False, False, True, False]
    assert not long_gap_rows(t, np.zeros(4, int), np.full(4, MIN5), 0).any()


def test_a_missing_session_counts_its_bars_in_the_positions_and_the_gaps_alike():
    """US 5-minute bars, B lacking the third session A traded: B's step over it is 1 + 78 bars, for the horizon
    and for the long gaps; the night is one bar for both."""
    days = pd.bdate_range("2024-01-01", periods=5, tz="UTC")
    a, b = us_session_bars(days), us_session_bars(days.delete(2))
    ts, codes = np.r_[a, b], np.r_[np.zeros(len(a)), np.ones(len(b))].astype(int)
    bars = np.full(len(ts), MIN5)
    steps = np.diff(bar_positions(ts, codes, bars, continuous=False))
    assert set(steps[: len(a) - 1]) == {1} and steps[len(a) - 1] == 0
    b_steps = steps[len(a):]
    assert b_steps[2 * 78 - 1] == 79 and np.delete(b_steps, 2 * 78 - 1).tolist() == [1] * (len(b) - 2)
    gap = long_gap_rows(ts, codes, bars, 50, continuous=False)
    assert np.flatnonzero(gap).tolist() == [len(a) + 2 * 78]
    assert not long_gap_rows(ts, codes, bars, 79, continuous=False).any()


# ---------------------------------------------------------------------------------------------------------
# a lunch break inside the session: a break, as the night is


def tokyo_bars(days: pd.DatetimeIndex) -> np.ndarray:
    """5-minute bars of a Tokyo-style session with a lunch break (00:00-02:25 and 03:30-05:55 UTC: 60 bars)."""
    one = pd.timedelta_range("00:00:00", periods=72, freq="5min").delete(range(30, 42))
    return np.concatenate([ns(day + one) for day in days])


def test_a_lunch_break_is_one_bar_and_a_halt_on_one_day_counts_its_bars():
    """The 65 minutes from 02:25 to 03:30 UTC, quiet on every session, are a break (one bar), as the night is;
    they were 13 bars by the clock, which masked every target over them and, with max_gap_bars under 13, split
    the series every day. A 30-minute halt on one day (six bars missing) still counts its bars."""
    days = pd.bdate_range("2024-01-08", periods=10, tz="UTC")
    a = tokyo_bars(days)
    halt = (a >= ns(["2024-01-10 01:00"])[0]) & (a < ns(["2024-01-10 01:30"])[0])
    ts, codes = np.r_[a, a[~halt]], np.r_[np.zeros(len(a)), np.ones(len(a) - halt.sum())].astype(int)
    bars = np.full(len(ts), MIN5)
    steps = np.diff(bar_positions(ts, codes, bars, continuous=False))
    assert set(steps[: len(a) - 1]) == {1}  # the lunch and the nights: one bar each
    b_steps = steps[len(a):]
    assert sorted(b_steps)[-1] == 7 and (np.sort(b_steps)[:-1] == 1).all()  # the halt: 7 bars, nothing else
    gap = long_gap_rows(ts, codes, bars, 5, continuous=False)
    assert np.flatnonzero(gap).tolist() == [len(a) + int(np.flatnonzero(halt)[0])]  # the halt alone is long
    # one day's quiet hour on a symbol of two sessions is a halt, not a lunch break; so is any on one session
    two = tokyo_bars(days[:2])
    hole = (two >= ns(["2024-01-09 01:00"])[0]) & (two < ns(["2024-01-09 01:30"])[0])
    assert np.diff(bar_positions(two[~hole], np.zeros(len(two) - 6, int), np.full(len(two) - 6, MIN5),
                                 continuous=False)).max() == 7
    one = tokyo_bars(days[:1])
    assert np.diff(bar_positions(one, np.zeros(60, int), np.full(60, MIN5), continuous=False)).max() == 13


def test_a_thin_symbol_missing_bars_at_random_keeps_them_missing():
    """Symbols with a bar in only 40% of their slots, at random: over 10 sessions no slot is quiet beyond chance,
    so every hole counts by the clock (half its median count alone made a slot of 60 of them quiet); over 60
    sessions a thin symbol's lunch is seen (12 slots never traded), and a step over it counts the rest."""
    rng = np.random.default_rng(3)
    full = us_session_bars(pd.bdate_range("2024-01-08", periods=10, tz="UTC"))
    keep = rng.random((60, len(full))) < 0.4
    ts, codes = np.concatenate([full[k] for k in keep]), np.repeat(np.arange(60), keep.sum(axis=1))
    same = (ts[1:] // DAY == ts[:-1] // DAY) & (codes[1:] == codes[:-1])
    steps = np.diff(bar_positions(ts, codes, np.full(len(ts), MIN5), continuous=False))
    np.testing.assert_array_equal(steps[same], np.diff(ts)[same] // MIN5)
    tokyo = tokyo_bars(pd.bdate_range("2024-01-08", periods=60, tz="UTC"))
    thin = tokyo[rng.random(len(tokyo)) < 0.4]
    d = np.diff(thin)
    steps = np.diff(bar_positions(thin, np.zeros(len(thin), int), np.full(len(thin), MIN5), continuous=False))
    three = 3 * 3600 * 10**9  # 03:00 UTC, inside the lunch
    lunch = (thin[1:] // DAY == thin[:-1] // DAY) & (thin[:-1] % DAY < three) & (thin[1:] % DAY > three)
    assert lunch.sum() > 50
    np.testing.assert_array_equal(steps[lunch], d[lunch] // MIN5 - 12)
    inside = (thin[1:] // DAY == thin[:-1] // DAY) & ~lunch
    np.testing.assert_array_equal(steps[inside], d[inside] // MIN5)


def test_an_hour_that_daylight_saving_time_moves_in_utc_is_no_break():
    """New York's session across the change to summer time (20 winter sessions, 37 summer): 20:00-21:00 UTC is
    traded in winter only, inside no summer session; a bar missing there in winter, or at 13:45 UTC in summer,
    still counts (the hour's bars on 20 of 57 sessions read it as a break)."""
    one = pd.timedelta_range("09:30:00", periods=78, freq="5min")
    stamps = pd.DatetimeIndex(np.concatenate([(pd.Timestamp(d.date()).tz_localize("America/New_York") + one)
                                              .tz_convert("UTC") for d in pd.bdate_range("2024-02-12", "2024-04-30")]))
    ts = ns(stamps[~stamps.isin(pd.to_datetime(["2024-02-20 20:40", "2024-04-16 13:45"], utc=True))])
    steps = np.diff(bar_positions(ts, np.zeros(len(ts), int), np.full(len(ts), MIN5), continuous=False))
    assert steps[np.diff(ts) == 2 * MIN5].tolist() == [2, 2] and (steps[np.diff(ts) == MIN5] == 1).all()


def test_a_lunch_break_splits_no_series_and_masks_no_target(tmp_path):
    """Tokyo's 11:30-12:30 lunch (02:30-03:30 UTC) in a build: with max_gap_bars 10 and a horizon of 12 bars no
    long gap (there were 45, one a session and symbol) and no target masked (there were 12 of 60 a session);
    an afternoon one symbol lacks on one day still is a gap."""
    raw = us_frame(n_days=15, tz="Asia/Tokyo", first="09:00:00", bars=72)
    local = pd.DatetimeIndex(raw["timestamp"]).tz_convert("Asia/Tokyo")
    raw = raw[~((local.hour == 11) & (local.minute >= 30) | (local.hour == 12) & (local.minute < 30))]
    fs, report = build_csv(raw, tmp_path, window=16, horizon=12, max_gap_bars=10)
    assert long_gaps(report) == {} and fs.meta["n_segments"] == 3
    assert fs.meta["masked_targets"]["spans_missing_bar"] == 0
    local = pd.DatetimeIndex(raw["timestamp"]).tz_convert("Asia/Tokyo")
    out = raw.index[(raw["symbol"] == "AAA") & (local.date == local.date[5 * 60]) & (local.hour == 13)]
    fs, report = build_csv(raw.drop(index=out), tmp_path, window=16, horizon=12, max_gap_bars=10)
    assert long_gaps(report) == {"AAA": 1}
    assert_gaps_are_the_segment_breaks(fs, report)


def globex_frame(bar: str = "30min", symbols=("ES", "NQ")) -> pd.DataFrame:
    """CME Globex-like bars, written in UTC: Sunday 18:00 to Friday 17:00 New York with a daily break 17:00-18:00,
    2024-01-07 to 2024-05-31, across the 2024-03-10 DST change (the open is 23:00 UTC in winter, 22:00 in summer)."""
    local = pd.date_range("2024-01-07 18:00", "2024-05-31 16:30", freq=bar)
    hour, wd = local.hour, local.day_of_week
    local = local[(hour != 17) & (wd != 5) & ~((wd == 6) & (hour < 18)) & ~((wd == 4) & (hour >= 17))]
    stamps = local.tz_localize("America/New_York").tz_convert("UTC")
    rng = np.random.default_rng(0)
    frames = []
    for sym in symbols:
        c = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, len(stamps))))
        frames.append(pd.DataFrame({"timestamp": stamps, "symbol": sym, "open": c, "high": c * 1.001,
                                    "low": c * 0.999, "close": c, "volume": 1000.0}))
    return pd.concat(frames, ignore_index=True)


def test_sessions_are_days_of_the_market_clock_across_a_dst_change(tmp_path):
    """Globex in UTC with market_timezone New York: a session is 18:00 to 17:00 New York all year. On the UTC
    clock the open moved from 23:00 to 22:00 at the DST change, so a summer session's first hour fell on the day
    before (315.2 sessions a year instead of 264.5) and the winter break (22:00-23:00 UTC), traded in summer, was
    counted as missing bars: 72 targets masked as spanning one."""
    raw = globex_frame()
    ny = pd.DatetimeIndex(raw["timestamp"]).tz_convert("America/New_York").tz_localize(None)
    days = (ny - pd.Timedelta(hours=18)).normalize().unique()  # a session is named by the evening it opens
    expect = len(days) / ((days.max() - days.min()).days + 1) * 365.25
    fs, report = build_csv(raw, tmp_path, window=16, market_timezone="America/New_York")
    cal = fs.meta["calendar"]
    assert len(days) == cal["n_sessions"] == 105 and cal["bars_per_session"] == 46
    assert cal["sessions_per_year"] == pytest.approx(expect) and round(cal["sessions_per_year"], 1) == 264.5
    assert fs.meta["masked_targets"]["spans_missing_bar"] == 0 and long_gaps(report) == {}
    assert fs.meta["n_segments"] == 2
    ts = ns(raw["timestamp"])
    assert day_start(ts, 1800e9, "America/New_York") == 18 * 3600 * 10**9
    assert calendar(ts, 1800, "America/New_York").n_sessions == 105
