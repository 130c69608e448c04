"""The trading calendar found in the data: periods a year, sessions, bars per session, bar numbers.

The report annualises by the marks the book is traded at: the distinct timestamps of all symbols together,
counted per year of the time they span (`Calendar.periods_per_year`). Weekends, nights and holidays are inside
that time, so an exchange's daily bars give about 252 a year, 5-minute US equity bars about 252 x 78, a market
open Sunday 22:00 to Friday 22:00 UTC about 260 x 288, a 24/7 market 365.25 x 288, whatever UTC dates its
sessions cross. A gap longer than `long_gap_ns` (ten days, or ten bars of a coarser bar) is no weekend or
holiday but missing data (a stray placeholder row, two downloads years apart, the purge between walk-forward
folds): it is left out of the time, as one typical step.

A session is a UTC calendar date with at least one bar. A market is continuous when it trades on every day of the
week; an exchange has days it never trades (a weekend). The horizon of the targets (`bar_positions`: a target
spans `horizon` bars, not rows) counts bars by the clock on a continuous market and inside a UTC date, and a step
to the next session as one bar, so a researcher's data is measured on its own calendar, never an assumed one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY_NS = 86_400 * 10**9
DAYS_PER_YEAR = 365.25
YEAR_NS = DAYS_PER_YEAR * DAY_NS
LONG_GAP_DAYS = 10  # a longer gap between marks is missing data, not a weekend or a holiday
CONTINUOUS_SESSIONS = 300  # under two weeks of data: more dates a year than this reads as a 24/7 market


@dataclass(frozen=True)
class Calendar:
    """What the distinct timestamps of a data set say about its market."""

    bar_seconds: float
    periods_per_year: float  # distinct timestamps per year of the time they span (long gaps left out)
    n_timestamps: int
    n_sessions: int
    span_days: float  # the time from the first to the last timestamp, long gaps left out
    long_gaps: int  # gaps left out of span_days
    sessions_per_year: float
    bars_per_session: float  # median number of distinct timestamps per session
    continuous: bool

    def describe(self) -> str:
        weeks = int(self.span_days // 7)
        over = (f"the distinct timestamps in the {weeks} whole week(s) from the first" if weeks else
                f"{self.n_timestamps:,} distinct timestamps over {self.span_days:.2f} days (under a week)")
        gaps = f", {self.long_gaps} gap(s) over {LONG_GAP_DAYS} days left out as missing data" if self.long_gaps else ""
        kind = ("a continuous market (trades every day of the week)" if self.continuous else
                f"an exchange calendar (days of the week it never trades; {self.sessions_per_year:.1f} UTC dates a "
                f"year traded, a median {self.bars_per_session:g} bar(s) on each)")
        return f"{self.periods_per_year:,.1f} a year, {over}{gaps}: {kind}"

    def to_dict(self) -> dict:
        return {"periods_per_year": self.periods_per_year, "method": "continuous" if self.continuous else "sessions",
                "description": self.describe(), "bar_seconds": self.bar_seconds, "n_timestamps": self.n_timestamps,
                "n_sessions": self.n_sessions, "span_days": self.span_days, "long_gaps": self.long_gaps,
                "sessions_per_year": self.sessions_per_year, "bars_per_session": self.bars_per_session}


def long_gap_ns(step_ns: float) -> float:
    """The gap beyond which marks `step_ns` apart (the median step) are missing data: ten days, or ten steps."""
    return max(LONG_GAP_DAYS * DAY_NS, 10 * step_ns)


def _time(points: np.ndarray) -> tuple[np.ndarray, int]:
    """(each of the sorted distinct `points` as the time since the first, with every gap longer than
    `long_gap_ns` counted as one median step; how many such gaps)."""
    steps = np.diff(points).astype(np.float64)
    if steps.size == 0:
        return np.zeros(points.size), 0
    typical = float(np.median(steps))
    long = steps > long_gap_ns(typical)
    return np.r_[0.0, np.cumsum(np.where(long, typical, steps))], int(long.sum())


def calendar(ts_ns: np.ndarray, bar_seconds: float) -> Calendar:
    """The calendar of these timestamps (all symbols together: the periods a portfolio is marked at).

    Periods a year are the marks in the whole weeks from the first (a span that ends on a Friday would count no
    last weekend), over a shorter span the marks per time between the first and the last: there an exchange looks
    continuous, and its marks a year count no weekend.
    """
    u = np.unique(np.asarray(ts_ns, dtype=np.int64))
    if u.size == 0:
        raise ValueError("no timestamps: cannot measure the calendar")
    t, gaps = _time(u)
    week = 7 * DAY_NS
    if t[-1] >= week:
        whole = np.floor(t[-1] / week) * week
        ppy = np.count_nonzero(t < whole) / whole * YEAR_NS
    elif t[-1] > 0:
        ppy = (u.size - 1) / t[-1] * YEAR_NS
    else:  # one timestamp: a bar's worth of time per mark
        ppy = YEAR_NS / (float(bar_seconds) * 1e9)
    days, per_day = np.unique(u // DAY_NS, return_counts=True)
    day_span = _time(days * DAY_NS)[0][-1] / DAY_NS + 1  # first to last session, both included
    spy = days.size / day_span * DAYS_PER_YEAR
    if day_span >= 14:  # two weeks: each day of the week seen twice
        weekdays = np.bincount((days + 3) % 7, minlength=7)  # 1970-01-01 was a Thursday (Monday = 0)
        continuous = bool(weekdays.min() >= 0.5 * weekdays.max())
    else:
        continuous = bool(spy > CONTINUOUS_SESSIONS)
    return Calendar(bar_seconds=float(bar_seconds), periods_per_year=float(ppy), n_timestamps=int(u.size),
                    n_sessions=int(days.size), span_days=float(t[-1]) / DAY_NS, long_gaps=gaps,
                    sessions_per_year=float(spy), bars_per_session=float(np.median(per_day)),
                    continuous=continuous)


def bar_positions(ts_ns: np.ndarray, codes: np.ndarray, bar_ns: np.ndarray, continuous: bool,
                  days: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Each row's bar number within its symbol, so that `horizon` bars can be counted in bars, not rows.

    Rows sorted by (symbol, time). A step to the symbol's next row counts the bars it spans by the clock
    (round(step / bar)) on a continuous market or inside a UTC date (bars missing inside a session). A step
    across dates on an exchange calendar counts as one bar (overnight, a weekend, a holiday: nothing is
    missing there) plus one for every session in between that other symbols of the same bar size traded
    and this one lacks (a missing day). `days` (bar size -> the sorted UTC days it traded) when these rows are
    some symbols of the data: the sessions are counted over all of them.
    """
    ts_ns, bar_ns = np.asarray(ts_ns, dtype=np.int64), np.asarray(bar_ns, dtype=np.int64)
    n = len(ts_ns)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    d = np.diff(ts_ns)
    step = np.ones(n - 1, dtype=np.int64)  # one bar, except where the step is not the bar size
    odd = np.flatnonzero(d != bar_ns[1:])
    step[odd] = np.maximum(1, np.rint(d[odd] / np.maximum(bar_ns[1:][odd], 1)))
    if not continuous:
        day = ts_ns // DAY_NS
        session = np.zeros(n, dtype=np.int64)  # the row's session number among its bar size's sessions
        for bar in np.unique(bar_ns):
            rows = bar_ns == bar
            traded = days[int(bar)] if days is not None else np.unique(day[rows])
            session[rows] = np.searchsorted(traded, day[rows])
        step = np.where(day[1:] == day[:-1], step, np.diff(session))
    step[codes[1:] != codes[:-1]] = 0
    pos = np.empty(n, dtype=np.int64)
    pos[0] = 0
    np.cumsum(step, out=pos[1:])
    return pos
