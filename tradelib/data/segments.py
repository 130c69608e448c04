"""Segment-wise operations: the layer the feature definitions (features.py) are written with, and their fast
evaluation.

A segment is a run of rows of one symbol without a gap longer than max_gap_bars bars (counted on the market's
calendar: `sessions.bar_steps`). Every operation reads the rows of t's own segment only, so no value crosses a
symbol change or a long gap; each is tested against its plain definition (tests/test_fastpaths.py).
"""

from __future__ import annotations

import numpy as np

from tradelib.data.detect import run_starts


def segment_ids(codes: np.ndarray, gap: np.ndarray, restart: np.ndarray | None = None) -> np.ndarray:
    """0, 1, ... numbering the segments of rows in (symbol, time) order, as int32: a new one at every symbol change,
    `gap` row (one that follows a step longer than max_gap_bars bars of the market's calendar:
    `sessions.long_gap_rows`, what cleaning's long_gap rule counts) and `restart` row (cleaning's bar size changes and
    masked corporate actions)."""
    new = run_starts(codes) | gap
    if restart is not None:
        new |= restart
    return run_ids(new)


def run_ids(new: np.ndarray) -> np.ndarray:
    """0, 1, ... numbering the runs that start where `new` is True (new[0] True), as int32."""
    return np.cumsum(new, dtype=np.int32) - 1


def run_rank(new: np.ndarray) -> np.ndarray:
    """Each row's number within its run (0 where `new` is True; new[0] True), as int64."""
    starts = np.flatnonzero(new)
    return np.arange(len(new)) - np.repeat(starts, np.diff(np.r_[starts, len(new)]))


def segment_rank(seg: np.ndarray) -> np.ndarray:
    """Each row's number within its segment (0 at the segment's first row)."""
    return run_rank(run_starts(seg))


class Segments:
    """Rows in (symbol, time) order told apart into segments by `rank`, each row's number within its segment
    (rows may begin inside a segment: a block of rows with the LOOKBACK rows before it, given their true ranks).

    A difference or sum over rows m apart is taken over all rows at once and then put right at the few rows whose
    row t - m lies in an earlier segment (`outside`)."""

    def __init__(self, rank: np.ndarray) -> None:
        self.rank = rank

    @staticmethod
    def of(seg: np.ndarray) -> Segments:
        return Segments(segment_rank(seg))

    def outside(self, m: int) -> np.ndarray:
        """The rows t >= m with rank[t] < m."""
        return np.flatnonzero(self.rank[m:] < m) + m

    def same(self, k: int) -> np.ndarray:
        """Whether rows t and t + k (k > 0) are in one segment, for t < n - k."""
        return self.rank[k:] >= k

    def diff(self, x: np.ndarray, k: int) -> np.ndarray:
        """x[t] - x[t-k] where row t - k is in t's segment, else NaN (k > 0)."""
        out = np.full(len(x), np.nan)
        if k < len(x):
            np.subtract(x[k:], x[:-k], out=out[k:])
            out[self.outside(k)] = np.nan
        return out

    def lead(self, x: np.ndarray, k: int) -> np.ndarray:
        """x[t+k] where row t + k is in t's segment, else NaN (k > 0)."""
        out = np.full(len(x), np.nan)
        if k < len(x):
            out[:-k] = np.where(self.same(k), x[k:], np.nan)
        return out

    def ahead(self, flag: np.ndarray, k: int) -> np.ndarray:
        """flag[t+k] where row t + k is in t's segment, else False (k > 0)."""
        out = np.zeros(len(flag), dtype=bool)
        if k < len(flag):
            out[:-k] = flag[k:] & self.same(k)
        return out

    def trailing_sums(self, x: np.ndarray, lengths: tuple[int, ...]) -> list[np.ndarray]:
        """Per length L: the sum of x over rows max(t - L + 1, segment start)..t, by doubling. Sums over the last
        1, 2, 4, ... rows are each made of two halves where the earlier half is still in t's segment (log2(L)
        passes, shared by all lengths); L is then the sum of the parts its bits name. Every sum holds rows of one
        segment only and at most L of them, so no digit of another symbol's total (a 1e15-volume token's) can
        cancel it, as one running sum over all rows would, and the value at t depends on rows up to t alone."""
        levels, m = {1: x}, 1
        while 2 * m <= max(lengths):
            half, cut = levels[m], self.outside(m)
            doubled = np.empty_like(half)
            doubled[:m] = half[:m]
            np.add(half[m:], half[:-m], out=doubled[m:])
            doubled[cut] = half[cut]  # t - m before the segment: the later half alone
            levels[2 * m] = doubled
            m *= 2
        out = []
        for length in lengths:
            bits = [b for b in sorted(levels, reverse=True) if length & b]
            total, covered = levels[bits[0]], bits[0]
            if len(bits) > 1:
                total = total.copy()
            for b in bits[1:]:  # the b rows just before the `covered` ones, where t - covered is in the segment
                cut = self.outside(covered)
                kept = total[cut]
                np.add(total[covered:], levels[b][:-covered], out=total[covered:])
                total[cut] = kept
                covered += b
            out.append(total)
        return out

    def trailing_means(self, x: np.ndarray, lengths: tuple[int, ...]) -> list[np.ndarray]:
        """Per length: the mean of x's finite values over the segment's last rows, up to that many (t included);
        NaN where there is none. The counts of finite rows are exact integers."""
        ok = np.isfinite(x)
        if ok.all():  # every row counts: the window's rows
            totals = self.trailing_sums(x, lengths)
            return [total / np.minimum(self.rank + 1, length) for length, total in zip(lengths, totals)]
        totals = self.trailing_sums(np.where(ok, x, 0.0), lengths)
        count_type = np.int8 if max(lengths) < 2**7 else np.int16 if max(lengths) < 2**15 else np.int64
        counts = self.trailing_sums(ok.astype(count_type), lengths)
        means = []
        for total, count in zip(totals, counts):
            mean = np.full(len(x), np.nan)
            means.append(np.divide(total, count, out=mean, where=count > 0))
        return means
