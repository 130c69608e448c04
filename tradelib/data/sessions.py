"""The trading calendar found in the data: periods a year, sessions, bars per session, bar numbers.

The report annualises by the marks the book is traded at: the distinct timestamps of all symbols together,
counted per year of the time they span (`Calendar.periods_per_year`). Weekends, nights and holidays are inside
that time, so an exchange's daily bars give about 252 a year, 5-minute US equity bars about 252 x 78, a market
open Sunday 22:00 to Friday 22:00 UTC about 260 x 288, a 24/7 market 365.25 x 288, whatever UTC dates its
sessions cross. A gap longer than `long_gap_ns` (ten days, or ten bars of a coarser bar) is no weekend or
holiday but missing data (a stray placeholder row, two downloads years apart, the purge between walk-forward
folds): it is left out of the time, as one typical step.

A session is a day with at least one bar on the market's clock (Config.market_zone: UTC unless set, as in the
examples here), counted from the market's own start of day (`day_start`: the hour after its longest quiet stretch of
the day, midnight for a market with none), so that a session crossing midnight (Sydney's 23:00 to 05:00 UTC) is one
session, and its night no part of one; on the market's own clock a session and its night keep their hours across a
DST change (Globex's 18:00 New York open is 23:00 UTC in winter, 22:00 in summer). A market is continuous when it
trades on every day of the week; an exchange has days it never trades (a weekend). Data of under a week (one week
Monday to Friday) shows no weekend: there an exchange shows by its nights (a quiet stretch of the day longer than a
bar) or a day inside the span it did not trade, and its sessions a year are a five-day week's. Bars are counted on
that calendar (`bar_steps`): by the clock on a continuous market and inside a session, and a step to the next
session as one bar plus the sessions of a missing day, so that the horizon of the targets (`bar_positions`: a target
spans `horizon` bars, not rows) and the long gaps that break a series (`long_gap_rows`, max_gap_bars) read one
count, and a researcher's data is measured on its own calendar, never an assumed one: a night or a weekend on an
exchange is no missing data, nor is a lunch break (a quiet stretch inside the session that recurs on most of a
symbol's sessions at the same time of day: Tokyo's 02:30 to 03:30 UTC), which a step inside the session crosses as
one bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tradelib.data.load import UTC, wall_ns

DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9
DAYS_PER_YEAR = 365.25
YEAR_NS = DAYS_PER_YEAR * DAY_NS
LONG_GAP_DAYS = 10  # a longer gap between marks is missing data, not a weekend or a holiday
EXCHANGE_DAYS = DAYS_PER_YEAR * 5 / 7  # sessions a year of an exchange seen for under a week (no weekend seen)
QUIET_SIGMAS = 5  # a slot of the day this far below a symbol's usual rate of bars is a break (`_regular_between`)


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
    long_gap_days: float = LONG_GAP_DAYS  # a longer gap is left out (`long_gap_ns` of the median step: 70 for weeks)

    def describe(self) -> str:
        weeks = int(self.span_days // 7)
        over = (f"the distinct timestamps in the {weeks} whole week(s) from the first" if weeks else
                f"{self.n_timestamps:,} distinct timestamps over {self.span_days:.2f} days (under a week)")
        gaps = (f", {self.long_gaps} gap(s) over {self.long_gap_days:g} days left out as missing data"
                if self.long_gaps else "")
        seen = ("days of the week it never trades; " if weeks else
                "nights, or a day it did not trade; under a week: a five-day week's ")
        kind = ("a continuous market (trades every day of the week)" if self.continuous else
                f"an exchange calendar ({seen}{self.sessions_per_year:.1f} sessions a year traded, a median "
                f"{self.bars_per_session:g} bar(s) on each)")
        return f"{self.periods_per_year:,.1f} a year, {over}{gaps}: {kind}"

    def to_dict(self) -> dict:
        return {"periods_per_year": self.periods_per_year, "method": "continuous" if self.continuous else "sessions",
                "description": self.describe(), "bar_seconds": self.bar_seconds, "n_timestamps": self.n_timestamps,
                "n_sessions": self.n_sessions, "span_days": self.span_days, "long_gaps": self.long_gaps,
                "long_gap_days": self.long_gap_days,
                "sessions_per_year": self.sessions_per_year, "bars_per_session": self.bars_per_session}


def _quiet(occupied: np.ndarray) -> tuple[int, int]:
    """(the hour (0-23) after the longest run of hours of the day without a mark, the first such run; its length
    in hours); (0, 0) when every hour has a mark."""
    if occupied.all() or not occupied.any():
        return 0, 0
    best, run, start = -1, 0, 0
    for i in range(48):  # twice round the clock: a quiet stretch may span midnight
        if occupied[i % 24]:
            if run > best:
                best, start = run, i % 24
            run = 0
        else:
            run += 1
    return start, best


def _start(occupied: np.ndarray, bar_ns: float) -> int:
    """`day_start` of marks that fall in the hours `occupied` (24 bools)."""
    start, quiet = _quiet(occupied)
    return start * HOUR_NS if quiet * HOUR_NS > bar_ns else 0


def hours_traded(ts_ns: np.ndarray, zone: str = UTC) -> np.ndarray:
    """The hours of the day on the market's clock `zone` (24 bools) with a mark. Those of parts of the marks merge
    by `|`."""
    return np.bincount((wall_ns(ts_ns, zone) % DAY_NS) // HOUR_NS, minlength=24) > 0


def has_nights(occupied: np.ndarray, bar_ns: float) -> bool:
    """Whether marks in the hours `occupied` (`hours_traded`) leave a quiet stretch of the day longer than a bar of
    `bar_ns`: a night, as an exchange has and a 24/7 market has not (`day_start` begins the day after it)."""
    return _quiet(occupied)[1] * HOUR_NS > bar_ns


def day_start(ts_ns: np.ndarray, bar_ns: float, zone: str = UTC) -> int:
    """Where the day of these marks (bars of `bar_ns`) begins, in ns after midnight on the market's clock `zone`
    (UTC in these examples): the hour after their
    longest quiet stretch of the day (13:00 for US equities in summer, 23:00 for Sydney's 23:00 to 05:00 UTC
    session), so a session is one day however it sits across dates. Midnight where no stretch is longer
    than a bar: a 24/7 market, daily bars (the hours between two bars are no night)."""
    return _start(hours_traded(ts_ns, zone), bar_ns)


def _day_starts(wall: np.ndarray, codes: np.ndarray, bar_ns: np.ndarray) -> np.ndarray:
    """Each row's symbol's `day_start` (of that symbol's own rows; rows sorted by symbol, `bar_ns` per row; `wall`:
    their times on the market's clock, `wall_ns`)."""
    first = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    sym = np.repeat(np.arange(len(first)), np.diff(np.r_[first, len(codes)]))
    occupied = np.zeros((len(first), 24), dtype=bool)
    occupied[sym, (wall % DAY_NS) // HOUR_NS] = True
    start = np.array([_start(o, b) for o, b in zip(occupied, np.asarray(bar_ns)[first])], dtype=np.int64)
    return start[sym]


def session_days(ts_ns: np.ndarray, codes: np.ndarray, bar_ns: np.ndarray, zone: str = UTC) -> np.ndarray:
    """Each row's session: its day on the market's clock `zone`, counted from its own symbol's `day_start` (rows
    sorted by symbol, `bar_ns` per row). Symbols of one exchange share their quiet hours, so any start inside them
    numbers their sessions alike, whichever symbols a shard holds. On the market's clock a session keeps its day
    and its quiet hours across a DST change (Globex's 18:00 New York open is 22:00 or 23:00 UTC)."""
    wall, codes = wall_ns(ts_ns, zone), np.asarray(codes)
    if not len(wall):
        return wall // DAY_NS
    return (wall - _day_starts(wall, codes, bar_ns)) // DAY_NS


def _regular_between(since: np.ndarray, codes: np.ndarray, bar_ns: np.ndarray, at: np.ndarray) -> np.ndarray:
    """At the steps `at` (row i to row i + 1: one symbol, one session): how many of the bar slots of the day
    strictly between the two rows are the symbol's trading time; -1 where the symbol can have no quiet slot.
    `since`: each row's time since its symbol's `day_start` (rows sorted by (symbol, time), `bar_ns` per row).

    A slot (a time of the session's day, in bars) is quiet, a break as the night is, when the symbol misses it on
    two or more of the sessions that span it (from their first bar to their last) and has a bar there at under
    half the rate of its median slot, beyond chance (QUIET_SIGMAS binomial sigmas below that rate). So a lunch
    break (02:30 to 03:30 UTC in Tokyo), without a bar on most sessions, is a break; a halt or a hole on one
    session is not, nor a slot that a thin symbol, missing bars at random, happens to miss more often than its
    others, nor a winter session's last hour in UTC (summer sessions, an hour earlier, do not span it). A slot
    where the symbol never has a bar is quiet when the symbol has sessions enough to tell (`below` > 0)."""
    sym = np.r_[0, np.cumsum(codes[1:] != codes[:-1])]
    day, slot = since // DAY_NS, (since % DAY_NS) // np.maximum(bar_ns, 1)
    width = int(slot.max()) + 1
    key, base = sym * width + slot, np.arange(sym[-1] + 1) * width
    change = (sym[1:] != sym[:-1]) | (day[1:] != day[:-1])
    first, last = np.sort(key[np.r_[True, change]]), np.sort(key[np.r_[change, True]])  # per (symbol, session)
    sessions = np.bincount(sym[np.r_[True, change]])  # per symbol
    keys, fill = np.unique(key[np.r_[True, change | (slot[1:] != slot[:-1])]], return_counts=True)  # sessions a slot
    owner = keys // width
    span = (np.searchsorted(first, keys, side="right") - np.searchsorted(first, base[owner])
            - np.searchsorted(last, keys) + np.searchsorted(last, base[owner]))  # sessions spanning it
    rate = pd.Series(fill / span).groupby(owner).median().to_numpy()  # per symbol: each has a slot

    def below(n: np.ndarray, p: np.ndarray) -> np.ndarray:  # a slot of n sessions with a bar on fewer is quiet
        return np.minimum(np.minimum(p * n / 2, p * n - QUIET_SIGMAS * np.sqrt(n * p * (1 - p))), n - 1.5)

    trading = keys[fill >= below(span, rate[owner])]
    between = np.searchsorted(trading, key[at + 1]) - np.searchsorted(trading, key[at], side="right")
    return np.where(below(sessions, rate)[sym[at]] > 0, between, -1)  # where none is quiet, the clock's count stands


def bar_words(seconds: float) -> str:
    """A bar size as a reader says it: '1 day', '5 min', '1 hour', '30 s'."""
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return "unknown"
    for unit, size in (("week", 604_800), ("day", 86_400), ("hour", 3_600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            k = int(seconds // size)
            return f"{k} {unit}" + ("s" if k > 1 and unit != "min" else "")
    return f"{seconds:g} s"


def long_gap_ns(step_ns):
    """The gap beyond which marks `step_ns` apart (the median step, or each row's bar) are missing data: ten days,
    or ten steps."""
    return np.maximum(LONG_GAP_DAYS * DAY_NS, 10 * step_ns)


def _time(points: np.ndarray) -> tuple[np.ndarray, int, float]:
    """(each of the sorted distinct `points` as the time since the first, with every gap longer than
    `long_gap_ns` of the median step counted as one such step; how many such gaps; that length in ns, which the
    description names: ten days, or ten steps of weekly bars)."""
    steps = np.diff(points).astype(np.float64)
    if steps.size == 0:
        return np.zeros(points.size), 0, float(long_gap_ns(0.0))
    typical = float(np.median(steps))
    limit = float(long_gap_ns(typical))
    long = steps > limit
    return np.r_[0.0, np.cumsum(np.where(long, typical, steps))], int(long.sum()), limit


def calendar(ts_ns: np.ndarray, bar_seconds: float, zone: str = UTC) -> Calendar:
    """The calendar of these timestamps (all symbols together: the periods a portfolio is marked at).

    Periods a year are the marks in the whole weeks from the first (a span that ends on a Friday would count no
    last weekend). Over a shorter span, a continuous market's are the marks per time between the first and the
    last; an exchange's (`_sessions`: a night, or a day it did not trade) the marks per session times the sessions
    of a five-day week (EXCHANGE_DAYS a year): a week Monday to Friday shows no weekend to count. Sessions are
    days on the market's clock `zone`; the time they span is true elapsed time.
    """
    u = np.unique(np.asarray(ts_ns, dtype=np.int64))
    if u.size == 0:
        raise ValueError("no timestamps: cannot measure the calendar")
    t, gaps, limit = _time(u)
    bar_ns, occupied = float(bar_seconds) * 1e9, hours_traded(u, zone)
    days, per_day = np.unique((wall_ns(u, zone) - _start(occupied, bar_ns)) // DAY_NS, return_counts=True)
    spy, continuous = _sessions(days, has_nights(occupied, bar_ns))
    week = 7 * DAY_NS
    if t[-1] >= week:
        whole = np.floor(t[-1] / week) * week
        ppy = np.count_nonzero(t < whole) / whole * YEAR_NS
    elif not continuous:
        ppy = u.size / days.size * spy
    elif t[-1] > 0:
        ppy = (u.size - 1) / t[-1] * YEAR_NS
    else:  # one timestamp: a bar's worth of time per mark
        ppy = YEAR_NS / bar_ns
    return Calendar(bar_seconds=float(bar_seconds), periods_per_year=float(ppy), n_timestamps=int(u.size),
                    n_sessions=int(days.size), span_days=float(t[-1]) / DAY_NS, long_gaps=gaps,
                    sessions_per_year=float(spy), bars_per_session=float(np.median(per_day)),
                    continuous=continuous, long_gap_days=limit / DAY_NS)


def pair_starts(codes: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Where each (symbol, session) run of rows begins: rows sorted by (symbol, time), `day` each row's session
    (`session_days`)."""
    new = np.ones(len(day), dtype=bool)
    new[1:] = (codes[1:] != codes[:-1]) | (day[1:] != day[:-1])
    return new


def traded_days(ts_ns: np.ndarray, codes: np.ndarray, bar_ns: np.ndarray, zone: str = UTC) -> dict[int, np.ndarray]:
    """Bar size (ns) -> the sorted distinct sessions (`session_days`) with a row of that size. Rows sorted by
    (symbol, time); `bar_ns` per row. The days of parts of the rows merge into the whole's (`merge_days`)."""
    day = session_days(ts_ns, codes, bar_ns, zone)
    new = pair_starts(codes, day)
    pair_day, pair_bar = day[new], np.asarray(bar_ns)[new]
    return {int(b): np.unique(pair_day[pair_bar == b]) for b in np.unique(pair_bar)}


def merge_days(parts: list[dict[int, np.ndarray]]) -> dict[int, np.ndarray]:
    """The `traded_days` of all rows from those of parts of them."""
    days: dict[int, list] = {}
    for p in parts:
        for b, d in p.items():
            days.setdefault(b, []).append(d)
    return {b: np.unique(np.concatenate(d)) for b, d in sorted(days.items())}


def _bars_per_session(day: np.ndarray, codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """At each of `rows`: the median number of rows its symbol has in a session (rounded, at least 1). `day`: each
    row's session (`session_days`), rows sorted by (symbol, time)."""
    n = len(day)
    sym = np.ones(n, dtype=bool)
    sym[1:] = codes[1:] != codes[:-1]
    starts, sym_starts = np.flatnonzero(pair_starts(codes, day)), np.flatnonzero(sym)
    med = pd.Series(np.diff(np.r_[starts, n])).groupby(np.searchsorted(sym_starts, starts, side="right") - 1).median()
    return np.maximum(1, np.rint(med.to_numpy()[np.searchsorted(sym_starts, rows, side="right") - 1])).astype(np.int64)


def bar_steps(ts_ns: np.ndarray, codes: np.ndarray, bar_ns: np.ndarray, continuous: bool,
              days: dict[int, np.ndarray] | None = None, zone: str = UTC) -> tuple[np.ndarray, np.ndarray]:
    """The bars each step from a row to its symbol's next one spans (0 at a symbol change), and whether they were
    counted by the clock: the one count of bars that the targets' horizon (`bar_positions`) and the long gaps
    (`long_gap_rows`) read.

    Rows sorted by (symbol, time), `bar_ns` the bar size of each row's symbol. By the clock (round(step / bar),
    at least 1) on a continuous market, inside a session (bars missing inside it), and for a step longer than
    `long_gap_ns` (missing data, as the calendar reads it). Otherwise, on an exchange calendar, a step to a later
    session counts as one bar (overnight, a weekend, a holiday: nothing is missing there) plus, for every
    session in between that symbols of the same bar size traded and this one lacks (a missing day), the bars the
    symbol has in a session (its median). `days` (bar size -> the sorted sessions it traded, `traded_days`) when
    these rows are some symbols of the data: the sessions are counted over all of them. A step inside a session
    across a quiet stretch that recurs on most of the symbol's sessions (a lunch break, `_regular_between`) is a
    break as the night is: one bar plus the bars missing around it, not counted by the clock (a lunch of 13 bars
    read as missing masked every target over it and, with max_gap_bars under 13, split the series every day).
    Sessions and the time of day are read on the market's clock `zone` (`session_days`); steps are elapsed time.
    """
    ts_ns, bar_ns = np.asarray(ts_ns, dtype=np.int64), np.asarray(bar_ns, dtype=np.int64)
    codes = np.asarray(codes)
    n = len(ts_ns)
    if n < 2:
        return np.zeros(0, dtype=np.int64), np.ones(0, dtype=bool)
    d, bar = np.diff(ts_ns), bar_ns[1:]
    step = np.ones(n - 1, dtype=np.int64)  # one bar, except where the step is not the bar size
    odd = np.flatnonzero(d != bar)
    step[odd] = np.maximum(1, np.rint(d[odd] / np.maximum(bar[odd], 1)))
    clock = np.ones(n - 1, dtype=bool)
    same = codes[1:] == codes[:-1]
    if not continuous:
        wall = wall_ns(ts_ns, zone)
        since = wall - _day_starts(wall, codes, bar_ns)
        day = since // DAY_NS  # session_days
        clock = (day[1:] == day[:-1]) | (d > long_gap_ns(bar))
        cross = np.flatnonzero(~clock & same)  # steps to a later session (one a session and symbol: few)
        d0, d1, size = day[cross], day[cross + 1], bar[cross]
        missing = np.zeros(len(cross), dtype=np.int64)  # sessions of the bar size strictly between the two days
        for b in np.unique(size):
            at = size == b
            traded = days[int(b)] if days is not None else np.unique(day[bar_ns == b])
            missing[at] = np.searchsorted(traded, d1[at]) - np.searchsorted(traded, d0[at], side="right")
        lacks = np.flatnonzero(missing > 0)
        per = np.ones(len(cross), dtype=np.int64)
        if lacks.size:
            per[lacks] = _bars_per_session(day, codes, cross[lacks] + 1)
        step[cross] = 1 + missing * per
        inside = np.flatnonzero(clock & same & (d > bar) & (d <= long_gap_ns(bar)))  # bars missing in a session?
        if inside.size:
            regular = _regular_between(since, codes, bar_ns, inside)
            quiet = (regular >= 0) & (1 + regular < step[inside])  # a recurring quiet stretch between the two
            step[inside[quiet]] = 1 + regular[quiet]
            clock[inside[quiet]] = False
    step[~same] = 0
    return step, clock


def long_gap_rows(ts_ns: np.ndarray, codes: np.ndarray, bar_ns: np.ndarray, k: int, continuous: bool = True,
                  days: dict[int, np.ndarray] | None = None,
                  steps: tuple[np.ndarray, np.ndarray] | None = None, zone: str = UTC) -> np.ndarray:
    """Rows that follow a gap longer than `k` bars of their symbol (`bar_ns`: per row), none when k <= 0: a step
    of more than k bars as `bar_steps` counts them, so that overnight and a weekend on an exchange are no gap. A
    step counted by the clock is long when it is more than k bars long (step > k x bar). `steps`: these rows'
    `bar_steps`, when the caller has them (a build counts the positions with them too); `zone` as there."""
    n = len(ts_ns)
    gap = np.zeros(n, dtype=bool)
    if n < 2 or k <= 0:
        return gap
    ts_ns, bar_ns = np.asarray(ts_ns, dtype=np.int64), np.asarray(bar_ns, dtype=np.int64)
    step, clock = steps if steps is not None else bar_steps(ts_ns, codes, bar_ns, continuous, days, zone)
    bar = bar_ns[1:]
    long = np.where(clock, np.diff(ts_ns) > bar.astype(np.float64) * k, step > k)
    gap[1:] = (codes[1:] == codes[:-1]) & (bar > 0) & long
    return gap


def _sessions(days: np.ndarray, nights: bool) -> tuple[float, bool]:
    """(sessions a year, whether the market is continuous) of the sorted distinct days traded (`session_days`);
    `nights`: whether the marks leave a night each day (`has_nights`)."""
    day_span = _time(days * DAY_NS)[0][-1] / DAY_NS + 1  # first to last session, both included
    spy = days.size / day_span * DAYS_PER_YEAR
    if day_span >= 7:  # a week: each day of the week seen, so a weekend never traded shows (two weeks Monday to
        # Friday hold 10 dates in 12 days, 304 a year: read by the count, every night was a long gap)
        return float(spy), bool(every_weekday(np.bincount(_weekday(days), minlength=7)))
    # under a week no weekend need show (Monday to Friday): an exchange shows by a day inside the span it did not
    # trade or by its nights between sessions (read as 24/7, each night was a long gap); a 24/7 market has
    # neither, and a few hours of one no night between two sessions. Daily bars of every day in the span have no
    # night to show: 24/7 (nothing in five dates tells an exchange's week apart)
    continuous = days.size >= round(day_span) and not (nights and days.size > 1)
    return (float(spy) if continuous else EXCHANGE_DAYS), continuous


def _weekday(days: np.ndarray) -> np.ndarray:
    """Monday = 0 of days counted from the epoch (1970-01-01 was a Thursday)."""
    return (days + 3) % 7


def every_weekday(weekdays: np.ndarray) -> np.ndarray:
    """Whether sessions counted per day of the week (last axis) are a continuous market's, every day of the week
    traded (each at least half as often as the most traded), rather than an exchange's week."""
    return weekdays.min(axis=-1) >= 0.5 * weekdays.max(axis=-1)


def trades_every_day(ts_ns: np.ndarray, codes: np.ndarray, bar_ns: np.ndarray, zone: str = UTC
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(the codes of the symbols whose sessions span a week or more, whether each trades every day of the week):
    each symbol's own week, as `calendar` reads the market's. The calendar is one for all symbols: where some trade
    every day (a crypto pair) and others an exchange's week, it is continuous, and each night and weekend of the
    exchange's symbols counts as missing bars. Rows sorted by (symbol, time); `bar_ns` per row; `zone`: the
    market's clock."""
    codes = np.asarray(codes)
    if not len(codes):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    day = session_days(ts_ns, codes, bar_ns, zone)
    new = pair_starts(codes, day)
    pair_code, pair_day = codes[new], day[new]
    judged, at = np.unique(pair_code, return_inverse=True)
    weekdays = np.bincount(at * 7 + _weekday(pair_day), minlength=len(judged) * 7).reshape(-1, 7)
    first = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])  # (pairs sorted by symbol, then day)
    week = pair_day[np.r_[first[1:], len(at)] - 1] - pair_day[first] + 1 >= 7
    return judged[week], every_weekday(weekdays[week])


def continuous_market(days: dict[int, np.ndarray], occupied: np.ndarray, bar_ns: float) -> bool:
    """`calendar(ts, bar).continuous` of the rows whose `traded_days` these are, `occupied` their `hours_traded`
    and `bar_ns` the median bar size of their symbols: whether they trade on every day of the week and, over
    under a week, every hour of the day (True when there are none)."""
    traded = np.unique(np.concatenate(list(days.values()))) if days else np.zeros(0, dtype=np.int64)
    return _sessions(traded, has_nights(occupied, bar_ns))[1] if traded.size else True


def bar_positions(ts_ns: np.ndarray, codes: np.ndarray, bar_ns: np.ndarray, continuous: bool,
                  days: dict[int, np.ndarray] | None = None,
                  steps: tuple[np.ndarray, np.ndarray] | None = None, zone: str = UTC) -> np.ndarray:
    """Each row's bar number within its symbol, so that `horizon` bars can be counted in bars, not rows: the
    running sum of `bar_steps` (rows sorted by (symbol, time); `bar_ns` per row; `days`, `steps`, `zone` as there)."""
    n = len(ts_ns)
    pos = np.zeros(n, dtype=np.int64)
    if n > 1:
        step = steps[0] if steps is not None else bar_steps(ts_ns, codes, bar_ns, continuous, days, zone)[0]
        np.cumsum(step, out=pos[1:])
    return pos
