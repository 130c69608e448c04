"""The trading calendar found in the data: sessions, bars per session, periods per year, bar numbers.

A session is a UTC calendar date with at least one bar. Exchange-traded data skips weekends and holidays
(about 252 sessions a year, with 78 five-minute bars in a US equity session); a 24/7 market has every date
(365.25 a year) and every bar of it. Both the annualisation of the report (`Calendar.periods_per_year`) and
the horizon of the targets (`bar_positions`: a target spans `horizon` bars, not rows) come from here,
so a researcher's data is measured on its own calendar, never on an assumed one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY_NS = 86_400 * 10**9
DAYS_PER_YEAR = 365.25
CONTINUOUS_SESSIONS = 300  # more sessions a year than this: weekends trade too, the market is continuous (24/7)


@dataclass(frozen=True)
class Calendar:
    """What the distinct timestamps of a data set say about its market."""

    bar_seconds: float
    n_sessions: int
    span_days: float  # first to last session, both included
    sessions_per_year: float
    bars_per_session: float  # median number of distinct timestamps per session
    continuous: bool

    @property
    def periods_per_year(self) -> float:
        """Bars a year: 365.25 x 86400 / bar for a continuous market, else sessions/year x bars/session."""
        if self.continuous:
            return DAYS_PER_YEAR * 86_400.0 / self.bar_seconds
        return self.sessions_per_year * self.bars_per_session

    def describe(self) -> str:
        if self.continuous:
            return (f"continuous market (24/7: {self.sessions_per_year:.0f} sessions a year seen over "
                    f"{self.span_days:.0f} days): 365.25 x 86400 / {self.bar_seconds:g} s bars")
        return (f"exchange calendar: {self.sessions_per_year:.1f} sessions a year x {self.bars_per_session:g} bars "
                f"a session, counted over {self.n_sessions:,} sessions in {self.span_days:.0f} days")

    def to_dict(self) -> dict:
        return {"periods_per_year": self.periods_per_year, "method": "continuous" if self.continuous else "sessions",
                "description": self.describe(), "bar_seconds": self.bar_seconds, "n_sessions": self.n_sessions,
                "span_days": self.span_days, "sessions_per_year": self.sessions_per_year,
                "bars_per_session": self.bars_per_session}


def calendar(ts_ns: np.ndarray, bar_seconds: float) -> Calendar:
    """The calendar of these timestamps (all symbols together: the periods a portfolio is marked at).

    Needs a few weeks of data to see the weekends; over a shorter span an exchange looks continuous.
    """
    u = np.unique(np.asarray(ts_ns, dtype=np.int64))
    if u.size == 0:
        raise ValueError("no timestamps: cannot measure the calendar")
    days, per_day = np.unique(u // DAY_NS, return_counts=True)
    span = float(days[-1] - days[0] + 1)
    spy = days.size / span * DAYS_PER_YEAR
    return Calendar(bar_seconds=float(bar_seconds), n_sessions=int(days.size), span_days=span,
                    sessions_per_year=float(spy), bars_per_session=float(np.median(per_day)),
                    continuous=bool(spy > CONTINUOUS_SESSIONS))


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
