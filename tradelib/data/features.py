"""Feature engineering: scale-free inputs, a forward-return target, chronological splits, robust scaling.

Every input is a log ratio or a ratio of like quantities, so a token priced 1e-8 with volumes of 1e15 gives
the same features as a large-cap stock (the seed's 1e15 inputs came from raw prices and volumes). Scaling
is Qlib's RobustZScoreNorm, (x - median) / (1.4826 * MAD), fitted on the training period only, then
clipped. Nothing at row t uses data after t: rolling statistics restart at every segment. Horizons and
purges are counted in bars (of the market calendar, and of each symbol), never in clock time.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tradelib.data import sessions
from tradelib.data.clean import CleanShard, bar_sizes_ns, run_bounds, run_starts, spike_rows, symbol_shards
from tradelib.data.load import freed_memory_reused, ns_since_epoch, prefault, symbol_codes

RETURN_LAGS = (1, 4, 16, 64)
VOL_WINDOWS = (8, 32)
VOLUME_WINDOW = 64
MAD_SCALE = 1.4826
FEATURE_NAMES = [f"ret_{k}" for k in RETURN_LAGS] + [f"rvol_{w}" for w in VOL_WINDOWS] + [
    "log_range", "close_loc", "body", "log_volume_rel", "tod_sin", "tod_cos"]
LOOKBACK = max(*RETURN_LAGS, *VOL_WINDOWS, VOLUME_WINDOW)  # the rows before t a feature at t may read


@dataclass
class FeatureSet:
    """Row-aligned arrays over all symbols in (symbol, timestamp) order; see docs/design.md."""

    X: np.ndarray
    y: np.ndarray
    fwd_return: np.ndarray
    ret_next: np.ndarray
    last_return: np.ndarray
    oracle: np.ndarray
    timestamp: np.ndarray
    symbol_id: np.ndarray
    segment: np.ndarray
    split: np.ndarray
    symbols: list[str]
    feature_names: list[str]
    meta: dict = field(default_factory=dict)

    ARRAYS = (
        "X", "y", "fwd_return", "ret_next", "last_return", "oracle", "timestamp", "symbol_id", "segment", "split",
    )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    def frame(self) -> pd.DataFrame:
        """The features as a DataFrame, for looking at them."""
        df = pd.DataFrame(self.X, columns=self.feature_names)
        df.insert(0, "timestamp", pd.to_datetime(self.timestamp, utc=True))
        df.insert(1, "symbol", np.asarray(self.symbols, dtype=object)[self.symbol_id])
        df["split"] = self.split
        df["target"] = self.y
        return df


def segment_ids(symbol_codes: np.ndarray, ts_ns: np.ndarray, bar_of_code: np.ndarray, max_gap_bars: int,
                out: np.ndarray | None = None, restart: np.ndarray | None = None) -> np.ndarray:
    """Contiguous runs: a new segment at every symbol change or gap longer than max_gap_bars bars, and at the
    `restart` rows (cleaning's corporate actions) (int32, into `out` when given). `bar_of_code`: the bar size
    (ns) of each symbol code."""
    new = run_starts(symbol_codes)
    starts, ends, few = run_bounds(new)
    if not few:
        new[1:] |= np.diff(ts_ns) > max_gap_bars * bar_of_code[symbol_codes[1:]]
    for a, b in zip(starts, ends) if few else ():  # a symbol's steps against its own bar size
        np.greater(np.diff(ts_ns[a:b]), max_gap_bars * bar_of_code[symbol_codes[a]], out=new[a + 1 : b])
    if restart is not None:
        new |= restart
    return _run_ids(new, out)


def _run_ids(new: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """0, 1, ... numbering the runs that start where `new` is True (new[0] True), as int32 (`np.cumsum(new) - 1`)."""
    out = np.empty(len(new), dtype=np.int32) if out is None else out
    starts, ends, few = run_bounds(new)
    if not few:
        out[:] = np.repeat(np.arange(len(starts), dtype=np.int32), np.subtract(ends, starts))
    for i, (a, b) in enumerate(zip(starts, ends) if few else ()):
        out[a:b] = i
    return out


def _run_rank(new: np.ndarray, dtype=np.int32) -> np.ndarray:
    """Each row's number within its run (0 where `new` is True; new[0] True)."""
    starts, ends, few = run_bounds(new)
    if not few:
        return np.arange(len(new), dtype=dtype) - np.repeat(np.asarray(starts, dtype=dtype), np.subtract(ends, starts))
    out = np.empty(len(new), dtype=dtype)
    count = np.arange(max((b - a for a, b in zip(starts, ends)), default=0), dtype=dtype)
    for a, b in zip(starts, ends):
        out[a:b] = count[: b - a]
    return out


def _shift(x: np.ndarray, k: int, seg: np.ndarray, same: np.ndarray | None = None) -> np.ndarray:
    """x[t-k] within the same segment (k > 0 looks back, k < 0 forward), else NaN. `same`: seg[|k|:] ==
    seg[:-|k|], when known. A copy, then NaN where the segments differ (few rows): a third of the time of a
    `np.where`."""
    out = np.empty(len(x), dtype=np.float64)
    n = len(x)
    if abs(k) >= n:
        out[:] = np.nan
        return out
    same = (seg[abs(k):] == seg[: -abs(k)]) if same is None else same
    if k > 0:
        out[:k] = np.nan
        out[k:] = x[:-k]
        out[k:][~same] = np.nan
    else:
        k = -k
        out[n - k :] = np.nan
        out[:-k] = x[k:]
        out[:-k][~same] = np.nan
    return out


def _ahead(flag: np.ndarray, k: int, seg: np.ndarray, same: np.ndarray | None = None) -> np.ndarray:
    """flag[t+k] within the same segment, else False (k > 0). `same`: seg[k:] == seg[:-k], when known."""
    out = np.zeros(len(flag), dtype=bool)
    if k < len(flag):
        out[:-k] = flag[k:] & (seg[k:] == seg[:-k] if same is None else same)
    return out


def segment_rank(seg: np.ndarray) -> np.ndarray:
    """Each row's number within its segment (0 at the segment's first row), as int32."""
    return _run_rank(run_starts(seg))


def _outside(rank: np.ndarray, m: int, cache: dict | None) -> np.ndarray:
    """The rows t >= m whose row t - m lies before t's segment (rank[t] < m): a segment's first m rows, so few.
    Sums and differences of rows m apart are taken over all rows and then put right at these. Where the segments
    are few, only the m rows from each one's first row (rank 0; a segment begun before these rows has none
    t >= m) are looked at, not every row once per m. `cache` keeps them per m, and the first rows, for the next
    call on the same rows."""
    cache = {} if cache is None else cache
    if m not in cache:
        if "first" not in cache:
            cache["first"] = np.flatnonzero(rank == 0)
        first = cache["first"]
        if not len(first):
            cache[m] = first
        elif len(first) * m <= len(rank) // 16:
            near = (first[:, None] + np.arange(m)).ravel()
            near = near[(near >= m) & (near < len(rank))]
            near = near[rank[near] < m]
            short = len(first) > 1 and bool((np.diff(first) < m).any())  # a segment shorter than m rows: its
            cache[m] = np.unique(near) if short else near  # successor's rows twice, out of order
        else:
            cache[m] = np.flatnonzero(rank[m:] < m) + m
    return cache[m]


def _lag_diff(x: np.ndarray, k: int, rank: np.ndarray, cache: dict | None = None) -> np.ndarray:
    """x[t] - x[t-k] where row t-k is in t's segment, else NaN (k > 0): `x - _shift(x, k, seg)` in one pass."""
    out = np.empty(len(x), dtype=np.float64)
    if k >= len(x):
        out[:] = np.nan
        return out
    out[:k] = np.nan
    np.subtract(x[k:], x[:-k], out=out[k:])
    out[_outside(rank, k, cache)] = np.nan
    return out


def _trailing_sums(x: np.ndarray, lengths: tuple[int, ...], rank: np.ndarray, cache: dict | None = None
                   ) -> list[np.ndarray]:
    """Per length L: the sum of x over rows max(t - L + 1, segment start)..t, by doubling. Sums over the last
    1, 2, 4, ... rows are each made of two halves where the earlier half is still in t's segment (log2(L)
    passes, shared by all lengths); L is then the sum of the parts its bits name. Every sum holds rows of one
    segment only and at most L of them, so no digit of another symbol's total (a 1e15-volume token's) can
    cancel it, as one running sum over all rows would, and the value at t depends on rows up to t alone.
    `cache`: `_outside`'s, for the next call on the same rows."""
    cache = {} if cache is None else cache
    levels, m = {1: x}, 1
    while 2 * m <= max(lengths):
        half, cut = levels[m], _outside(rank, m, cache)
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
            cut = _outside(rank, covered, cache)
            kept = total[cut]
            np.add(total[covered:], levels[b][:-covered], out=total[covered:])
            total[cut] = kept
            covered += b
        out.append(total)
    return out


def _rolling_means(x: np.ndarray, lengths: tuple[int, ...], rank: np.ndarray, cache: dict | None = None
                   ) -> list[np.ndarray]:
    """Per length: the trailing mean over up to that many rows (t included) of the same segment, ignoring NaN;
    `rank` is `segment_rank(seg)`. The counts of finite rows are exact integers."""
    ok = np.isfinite(x)
    if ok.all():  # every row counts: the window's rows
        totals = _trailing_sums(x, lengths, rank, cache)
        return [total / np.minimum(rank + 1, length) for length, total in zip(lengths, totals)]
    totals = _trailing_sums(np.where(ok, x, 0.0), lengths, rank, cache)
    count_type = np.int8 if max(lengths) < 2**7 else np.int16 if max(lengths) < 2**15 else np.int64
    counts = _trailing_sums(ok.astype(count_type), lengths, rank, cache)
    means = []
    for total, count in zip(totals, counts):
        mean = np.full(len(x), np.nan)
        means.append(np.divide(total, count, out=mean, where=count > 0))
    return means


def _ns(t) -> np.ndarray:
    """Timestamps as int64 ns since the epoch (a clean frame's column, or int64 ns already)."""
    t = np.asarray(t) if not isinstance(t, pd.Series) else t
    return t if isinstance(t, np.ndarray) and t.dtype == np.int64 else ns_since_epoch(t)


def _minute_of_day(ts_ns: np.ndarray) -> np.ndarray:
    """The UTC minute of the day, `(ts // 1 minute) % 1440` exactly, with the remainder as m - (m // 1440) * 1440:
    numpy's int64 `%` takes a fifth longer than a division by a constant and a multiply."""
    m = ts_ns // 60_000_000_000
    q = m // 1440
    q *= 1440
    return np.subtract(m, q, out=q)


def feature_makers(clean: pd.DataFrame | dict, seg: np.ndarray, rank: np.ndarray | None = None
                   ) -> dict[str, Callable[[], np.ndarray]]:
    """Name -> a function computing that unscaled, scale-free float64 column (NaN where history is too short).

    Columns are made one at a time, so no [n, F] float64 matrix is ever held. A value at t reads rows t - LOOKBACK
    .. t only, so a block of rows is made from itself and the LOOKBACK rows before it, given their true `rank`
    in the segment (`segment_rank` of all rows; default: of these).
    """
    col = {k: np.asarray(clean[k], dtype=np.float64) for k in ("open", "high", "low", "close", "volume")}
    rank, cache = segment_rank(seg) if rank is None else rank, {}
    lc = np.log(col["close"])
    r1 = _lag_diff(lc, 1, rank, cache)
    rvol = functools.cache(lambda: dict(zip(VOL_WINDOWS, _rolling_means(r1**2, VOL_WINDOWS, rank, cache))))
    minute = functools.cache(lambda: _minute_of_day(_ns(clean["timestamp"])))

    def close_loc() -> np.ndarray:
        span = col["high"] - col["low"]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(span > 0, (col["close"] - col["low"]) / span, 0.5)

    def log_volume_rel() -> np.ndarray:
        v = col["volume"]
        level = _rolling_means(v, (VOLUME_WINDOW,), rank, cache)[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            # the floor is relative to the level, so multiplying volume by any constant changes nothing
            return np.where(level > 0, np.log((v + 1e-3 * level) / level), 0.0)

    def time_of_day(fn: Callable) -> Callable[[], np.ndarray]:
        return lambda: fn(2 * np.pi * np.arange(1440) / 1440)[minute()]  # one value per minute of the day

    makers: dict[str, Callable[[], np.ndarray]] = {"ret_1": lambda: r1}
    makers |= {f"ret_{k}": (lambda k=k: _lag_diff(lc, k, rank, cache)) for k in RETURN_LAGS if k != 1}
    makers |= {f"rvol_{w}": (lambda w=w: np.sqrt(rvol()[w])) for w in VOL_WINDOWS}
    makers |= {
        "log_range": lambda: np.log(col["high"] / col["low"]),
        "close_loc": close_loc,
        "body": lambda: lc - np.log(col["open"]),
        "log_volume_rel": log_volume_rel,
        "tod_sin": time_of_day(np.sin),
        "tod_cos": time_of_day(np.cos),
    }
    assert list(makers) == FEATURE_NAMES
    return makers


def fit_robust(x: np.ndarray, max_rows: int = 2_000_000, scratch: bool = False) -> tuple[float, float]:
    """Median and 1.4826*MAD of one column's finite values; a constant or empty column gets scale 1.

    Beyond `max_rows` values the statistics come from an evenly spaced sample of that many (deterministic;
    the sampling error of a median of 2M values is far below the features' own noise). float32 values give the
    statistics of their float64 copies, without making them: a median depends on the values' order alone and
    the MAD is taken in float64. `scratch`: x may be reordered (it is partitioned in place, not copied).
    """
    if len(x) > max_rows:
        x, scratch = x[:: -(-len(x) // max_rows)], False
    finite = np.isfinite(x)
    x = (x if scratch else x.copy()) if finite.all() else x[finite]
    if len(x) == 0:
        return 0.0, 1.0
    med = _median_inplace(x)
    dev = np.subtract(x, med, dtype=np.float64)
    mad = MAD_SCALE * _median_inplace(np.abs(dev, out=dev))
    return med, (mad if mad > 1e-12 else 1.0)


def _median_inplace(x: np.ndarray) -> float:
    """np.median of x's float64 values (x finite, not empty), partitioning x in place: the middle value, or the
    mean of the middle two taken as np.median takes it. One partition at the upper middle, the lower one being
    the largest value before it (numpy's partition at two places took five times as long)."""
    half = len(x) // 2
    x.partition(half)
    middle = [x[half]] if len(x) % 2 else [x[:half].max(), x[half]]
    return float(np.median(np.asarray(middle, dtype=np.float64)))


def apply_robust(x: np.ndarray, med: float, mad: float, clip: float, out: np.ndarray | None = None) -> np.ndarray:
    """Scale, clip, and fill what is still unknown with 0 (the training median), as float32."""
    z = (x - med) / mad
    np.clip(z, -clip, clip, out=z)
    z[np.isnan(z)] = 0.0
    if out is None:
        return z.astype(np.float32)
    out[...] = z
    return out


def split_time(text: str) -> int:
    """A split boundary (`train_end`, `val_end`) as int ns UTC, inclusive. A date alone means the whole day
    (`2022-12-31` keeps every bar of that day); a naive time is UTC."""
    ts = pd.Timestamp(str(text).strip())
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if ":" not in str(text) and ts == ts.normalize():
        return int((ts + pd.Timedelta(days=1)).as_unit("ns").value) - 1
    return int(ts.as_unit("ns").value)


def split_bounds(ts_ns: np.ndarray, cfg, counts: np.ndarray | None = None) -> tuple[int, int, str]:
    """(last train time, last validation time, how they were set): `train_end`/`val_end` when given, else the
    times of the rows at the `train_frac` and `train_frac + val_frac` quantiles (rows in time order; the row at
    rank floor(q * (n - 1))). `ts_ns` may be the distinct times with their row `counts`."""
    if cfg.train_end or cfg.val_end:
        return split_time(cfg.train_end), split_time(cfg.val_end), "dates"
    if counts is None:
        ts_ns, counts = np.unique(ts_ns, return_counts=True)
    cum = np.cumsum(counts)
    at = lambda q: int(ts_ns[np.searchsorted(cum, math.floor(q * (int(cum[-1]) - 1)), side="right")])
    return at(cfg.train_frac), at(cfg.train_frac + cfg.val_frac), "fractions"


def fold_bounds(ts_ns: np.ndarray, cfg, counts: np.ndarray | None = None) -> list[dict]:
    """The boundary times of every walk-forward fold (one fold when `folds` <= 1: today's single split).

    Fold 0 is the single split (`split_bounds`). The rows after its validation end, the out-of-sample span, are
    cut into `folds` test periods of equal row counts (time quantiles over all rows); each later fold moves its
    validation and training ends forward by one test period, so fold k's test period follows its validation
    period and the test periods tile the out-of-sample span. The training window starts at the beginning
    (`fold_window` expanding) or moves forward with the rest, keeping the first fold's share of the rows
    (rolling). Times are inclusive ends: fold k trains on (train_start, train_end], validates on (train_end,
    val_end], tests on (val_end, test_end]; train_start is None for "from the first row". `ts_ns` may be the
    distinct times with their row `counts` (what the shards of a build know of all rows): the same bounds."""
    if counts is None:
        ts_ns, counts = np.unique(ts_ns, return_counts=True)
    t_train, t_val, how = split_bounds(ts_ns, cfg, counts)
    k_folds = max(int(cfg.folds), 1)
    if len(ts_ns) == 0:
        return [{"method": how, "train_start": None, "train_end": t_train, "val_end": t_val, "test_end": None}]
    cum = np.cumsum(counts)
    n = int(cum[-1])
    share = lambda t: int(np.r_[0, cum][np.searchsorted(ts_ns, t, side="right")]) / n  # noqa: E731 - rows <= t
    at = lambda q: _time_at(ts_ns, cum, q)  # noqa: E731 - a row's time
    q_train, q_val = share(t_train), share(t_val)
    step = (1.0 - q_val) / k_folds
    folds = []
    for k in range(k_folds):
        rolling = cfg.fold_window == "rolling" and k > 0
        folds.append({
            "method": how if k_folds == 1 else f"walk-forward over {how}",
            "train_start": at(k * step) if rolling else None,
            "train_end": t_train if k == 0 else at(q_train + k * step),
            "val_end": t_val if k == 0 else at(q_val + k * step),
            "test_end": int(ts_ns[-1]) if k == k_folds - 1 else at(q_val + (k + 1) * step),
        })
    return folds


def _time_at(times: np.ndarray, cum: np.ndarray, q: float) -> int:
    """np.quantile(the rows' times, q, method="inverted_cdf") from the distinct `times` and their cumulative
    row counts: the row numpy picks (its float arithmetic, exactly), found among the distinct times."""
    idx = int(cum[-1]) * min(max(q, 0.0), 1.0) - 1
    row = max(math.ceil(idx), 0)  # numpy: floor(idx), or the next row when idx is not a whole number
    return int(times[np.searchsorted(cum, row, side="right")])


def fold_bound(bounds: list[dict], fold: int, cfg) -> dict:
    """Fold `fold`'s bounds of `fold_bounds` with its number, or an error naming the folds there are."""
    if not 0 <= fold < len(bounds):
        raise ValueError(f"fold {fold} does not exist: folds={cfg.folds} gives folds 0..{len(bounds) - 1}")
    return {**bounds[fold], "fold": fold}


def split_rows(ts_ns: np.ndarray, codes: np.ndarray, cfg, fold: int = 0, bound: dict | None = None
               ) -> tuple[np.ndarray, dict]:
    """Chronological split by time across all symbols, then a purge of the first (horizon + window) rows of
    every symbol after each boundary, counted in that symbol's own bars (not in clock time, which a weekend or
    a hole would shorten). With targets that never span a missing bar (`targets`), no training target or
    window reaches a validation or test target. Rows are sorted by (symbol, time).

    With `folds` > 1 this is walk-forward fold `fold` (`fold_bounds`): rows outside its training, validation
    and test periods (before a rolling window, after its test period) are -1, like purged rows. `bound` (the
    fold's bounds of all the rows) when these are some symbols of them; the cut then covers these rows only
    (`merge_cuts`) and is checked once merged (`check_cut`); `fold` is then the bound's."""
    b = bound if bound is not None else fold_bound(fold_bounds(ts_ns, cfg), fold, cfg)
    t_train, t_val = b["train_end"], b["val_end"]
    if t_train <= t_val:  # 0, 1, 2 as two comparisons summed: no int64 temporaries
        part = np.greater(ts_ns, t_train).view(np.int8)
        part += ts_ns > t_val
    else:
        part = np.where(ts_ns <= t_train, 0, np.where(ts_ns <= t_val, 1, 2)).astype(np.int8)
    if b["train_start"] is not None:
        part[ts_ns <= b["train_start"]] = -1
    if b["test_end"] is not None:
        part[ts_ns > b["test_end"]] = -1
    n = len(part)
    block = np.ones(n, dtype=bool)
    block[1:] = (codes[1:] != codes[:-1]) | (part[1:] != part[:-1])
    rank = _run_rank(block, np.int32 if n < 2**31 else np.int64)  # number in its (symbol, part) run
    purge = cfg.horizon + cfg.window
    split = part.copy()
    split[(part > 0) & (rank < purge)] = -1

    def first_time(s: int) -> int | None:
        t = ts_ns[split == s]
        return int(t.min()) if len(t) else None

    cut = {"method": b["method"], "train_end": t_train, "val_start": first_time(1), "val_end": t_val,
           "test_start": first_time(2), "test_end": b["test_end"], "purge_bars": purge}
    if cfg.folds > 1:
        windowed = lambda s: int(np.count_nonzero((part == s) & (rank >= purge + cfg.window - 1)))  # noqa: E731
        cut.update(fold=b["fold"], folds=int(cfg.folds), fold_window=cfg.fold_window, train_start=b["train_start"],
                   outside_rows=int((part == -1).sum()), window_rows=[windowed(1), windowed(2)])
    if bound is None:
        check_cut(cut, cfg)
    return split, cut


def merge_cuts(cuts: list[dict]) -> dict:
    """The cut of all rows from the cuts of parts of them (split_rows with the same bounds)."""
    pick = lambda fn, k: fn([c[k] for c in cuts if c[k] is not None], default=None)
    out = {**cuts[0], "val_start": pick(min, "val_start"), "test_start": pick(min, "test_start"),
           "test_end": pick(max, "test_end")}
    if "outside_rows" in out:  # walk-forward folds
        out["outside_rows"] = sum(c["outside_rows"] for c in cuts)
        out["window_rows"] = [sum(c["window_rows"][i] for c in cuts) for i in (0, 1)]
    return out


def check_cut(cut: dict, cfg) -> None:
    """A walk-forward fold whose validation or test split holds no whole window, and split dates that leave
    the validation or the test split empty, are an error naming them."""
    for i, (key, name) in enumerate((("val_start", "validation"), ("test_start", "test"))):
        if "window_rows" in cut and cut["window_rows"][i] == 0:
            raise ValueError(f"walk-forward fold {cut['fold']} of {cut['folds']}: the {name} split holds no window "
                             f"of {cfg.window} bars after the purge of {cut['purge_bars']} bars per symbol: use fewer "
                             f"folds, or more data")
        if cut[key] is None and cut["method"] == "dates":
            raise ValueError(f"train_end={cfg.train_end!r}, val_end={cfg.val_end!r}: the {name} split is "
                             f"empty (the data runs to {pd.Timestamp(int(cut['test_end']), tz='UTC')})")


@dataclass
class Layout:
    """Where each row of some whole symbols sits: its symbol, time, contiguous segment, split and bar number.
    The arrays are the shard's rows of the FeatureSet's own (written once, read in place)."""

    codes: np.ndarray  # int32 symbol id per row (an index into the FeatureSet's symbols)
    ts: np.ndarray  # int64 ns since the epoch, UTC
    bar_of_code: np.ndarray  # int64 bar size of each symbol id (0 for the symbols of other shards)
    seg: np.ndarray  # int32 segment id: breaks at a symbol change or a gap longer than max_gap_bars
    split: np.ndarray | None = None  # int8: 0 train, 1 val, 2 test, -1 purged
    cut: dict | None = None  # split_rows' cut of these rows
    pos: np.ndarray | None = None  # int64 bar number within the symbol, missing bars counted (while made)
    names: list[str] = field(default_factory=list)  # the shard's symbols, in order

    @property
    def bar_ns(self) -> np.ndarray:
        """The bar size of each row's symbol (repeated over the symbols' runs: faster than gathering per row)."""
        starts, ends, _ = run_bounds(run_starts(self.codes))
        return np.repeat(self.bar_of_code[self.codes[starts]], np.subtract(ends, starts))


@dataclass
class Facts:
    """What only all the rows together know and every shard's features need: the distinct timestamps and their
    row counts (the split quantiles, the calendar), each symbol's bar size, and the days each bar size traded
    (bar numbers across a missing day). Facts of parts of the rows merge into the whole's exactly."""

    times: np.ndarray  # int64 distinct timestamps, sorted
    counts: np.ndarray  # int64 rows at each
    bars: np.ndarray  # int64 bar size of each symbol, in symbol order
    days: dict[int, np.ndarray]  # bar size (ns) -> sorted distinct UTC days (ns // DAY_NS) with a row of that size
    names: list[str]  # the symbols, in order
    segments: int  # contiguous segments

    @staticmethod
    def of(lay: Layout) -> Facts:
        times, counts = _distinct(lay.ts)
        first = run_starts(lay.codes)
        day = lay.ts // sessions.DAY_NS
        new = first.copy()
        new[1:] |= day[1:] != day[:-1]  # (symbol, day) pairs: rows are in time order within a symbol
        pair_day, pair_bar = day[new], lay.bar_of_code[lay.codes[new]]
        days = {int(b): np.unique(pair_day[pair_bar == b]) for b in np.unique(pair_bar)}
        return Facts(times, counts, lay.bar_of_code[lay.codes[first]], days, list(lay.names),
                     int(lay.seg[-1]) + 1 if len(lay.seg) else 0)

    @staticmethod
    def merge(parts: list[Facts]) -> Facts:
        first = parts[0].times
        if all(len(p.times) == len(first) and np.array_equal(p.times, first) for p in parts[1:]):
            times, counts = first.copy(), np.sum([p.counts for p in parts], axis=0, dtype=np.int64)  # one time grid
        else:
            times, counts = _distinct(np.concatenate([p.times for p in parts]),
                                      np.concatenate([p.counts for p in parts]))
        days: dict[int, list] = {}
        for p in parts:
            for b, d in p.days.items():
                days.setdefault(b, []).append(d)
        return Facts(times, counts, np.concatenate([p.bars for p in parts]),
                     {b: np.unique(np.concatenate(d)) for b, d in sorted(days.items())},
                     [n for p in parts for n in p.names], sum(p.segments for p in parts))

    def calendar(self) -> sessions.Calendar:
        return sessions.calendar(self.times, float(np.median(self.bars)) / 1e9)


def _distinct(t: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values of t, rows (or summed weights) at each). A stable sort merges the sorted runs of
    rows in (symbol, time) order quickly."""
    if not len(t):
        return t.astype(np.int64), np.zeros(0, dtype=np.int64)
    if weights is None:
        t = np.sort(t, kind="stable")
    else:
        order = np.argsort(t, kind="stable")
        t, weights = t[order], weights[order]
    new = np.r_[True, t[1:] != t[:-1]]
    at = np.flatnonzero(new)
    counts = np.diff(np.r_[at, len(t)]) if weights is None else np.add.reduceat(weights, at)
    return t[at], counts.astype(np.int64)


def shard_layout(shard: CleanShard, max_gap_bars: int, out: dict[str, np.ndarray]) -> Layout:
    """The layout of a shard's rows as far as they alone tell it (symbol ids and segments numbered from 0 within
    the shard, bar sizes), written into `out`, the shard's rows of the FeatureSet's arrays. The shard's timestamps
    and codes are taken over (released from the shard)."""
    ts, codes = out["timestamp"], out["symbol_id"]
    ts[:] = shard.a.pop("ts")
    raw_codes = shard.a.pop("code")
    first = run_starts(raw_codes)
    _run_ids(first, codes)
    present = raw_codes[first]
    if shard.bar is not None:  # cleaning found them on these very rows
        bar_of_code = shard.bar[present].astype(np.int64)
    else:
        bar_of_code = bar_sizes_ns(codes, ts, len(present))
    names = [str(shard.symbols[c]) for c in present]
    if (bar_of_code <= 0).any():
        short = [names[i] for i in np.flatnonzero(bar_of_code <= 0)]
        raise ValueError(f"symbol(s) {', '.join(short)}: fewer than two timestamps, no bar size")
    segment_ids(codes, ts, bar_of_code, max_gap_bars, out["segment"], shard.restart)
    return Layout(codes, ts, bar_of_code, out["segment"], names=names)


def place(lay: Layout, bound: dict, seg_offset: int, sym_offset: int, out: dict[str, np.ndarray], cfg) -> None:
    """Complete a shard's layout with what needs all rows: its splits (`bound`: the fold's bounds of all rows,
    `fold_bounds`), and segment and symbol ids counted from the offsets (the segments and symbols of the shards
    before)."""
    split, lay.cut = split_rows(lay.ts, lay.codes, cfg, bound=bound)
    out["split"][:] = split
    lay.split = out["split"]
    lay.seg += np.int32(seg_offset)
    lay.codes += np.int32(sym_offset)
    lay.bar_of_code = np.r_[np.zeros(sym_offset, dtype=np.int64), lay.bar_of_code]


def shard_features(shard: CleanShard, lay: Layout, facts: Facts, continuous: bool, cfg,
                   out: dict[str, np.ndarray], block: int = 1 << 16, sample: tuple[Sample, int] | None = None
                   ) -> dict:
    """Fill `out` (this shard's rows of the FeatureSet's arrays; X unscaled) and return what the meta needs:
    each feature's range before scaling, the masked-target counts, the rows per split. Features are made a block
    of rows at a time (with the LOOKBACK rows before it), so that every temporary stays in the cache and no fresh
    memory is touched but X's own. `sample`: (the normalisation's Sample, this shard's number), whose rows'
    features are put there as they are made. The shard is released afterwards."""
    rank = segment_rank(lay.seg)
    X, n = out["X"], len(lay.ts)
    ranges: list[dict] = []
    cols_t = np.empty((X.shape[1], min(block, n)), dtype=np.float32)  # the block's columns, each contiguous
    for b0 in range(0, n, block):
        lo, b1 = max(b0 - LOOKBACK, 0), min(b0 + block, n)
        cols = {k: shard.a[k][lo:b1] for k in ("open", "high", "low", "close", "volume")} | {"timestamp": lay.ts[lo:b1]}
        makers = feature_makers(cols, lay.seg[lo:b1], rank[lo:b1])
        for j, make in enumerate(makers.values()):
            col = make()[b0 - lo :]
            ranges.append(_finite_range(col))
            cols_t[j, : b1 - b0] = col
        if sample is not None:  # (the fit's rows of these, while they are in the cache)
            sample[0].put(sample[1], cols_t[:, : b1 - b0], b0)
        for c0 in range(b0, b1, 1 << 13):  # transposing copies, each within the cache: a third of the time of one
            #   copy of the block (whose rows of X span more than the cache) and of a strided write per column
            c1 = min(c0 + (1 << 13), b1)
            X[c0:c1] = cols_t[:, c0 - b0 : c1 - b0].T
    lay.pos = sessions.bar_positions(lay.ts, lay.codes, lay.bar_ns, continuous, days=facts.days)
    t = targets({"close": shard.a["close"], **{k: shard.a[k] for k in ("open", "high", "low", "volume")},
                 "timestamp": lay.ts}, lay, cfg, _cleaning_spikes(shard, lay, cfg))
    lay.pos = None
    y = out["y"]
    y[:] = t["target"]
    y[~np.isfinite(y)] = np.nan  # also a target too large for float32
    for k in ("fwd_return", "ret_next", "last_return"):
        out[k][:] = t[k]
    oracle = shard.keep.get("oracle")
    out["oracle"][:] = oracle if oracle is not None and cfg.horizon == 1 else np.nan  # planted: one bar ahead only
    shard.a.clear()
    shard.keep.clear()
    shard.spike = None
    per = len(FEATURE_NAMES)
    return {"ranges": {name: _merge_range(ranges[j::per]) for j, name in enumerate(FEATURE_NAMES)},
            "spike_rows": int(t["spike"].sum()), "spans_missing_bar": int(t["spans_missing_bar"].sum()),
            "rows_per_split": [int(np.count_nonzero(lay.split == i)) for i in (-1, 0, 1, 2)]}


def _cleaning_spikes(shard: CleanShard, lay: Layout, cfg) -> np.ndarray | None:
    """The price_spike rows cleaning found on these very rows, where they are what `targets` would find again: the
    same spike_sigmas, and returns broken where the segments break (a symbol change or a gap of more than
    max_gap_bars > 0 bars, a limit float64 holds exactly). None otherwise: targets then finds them."""
    if shard.spike is None:
        return None
    rows, sigmas, gap_bars = shard.spike
    if rows is None or len(rows) != len(lay.ts) or sigmas != cfg.spike_sigmas or gap_bars != cfg.max_gap_bars:
        return None
    if gap_bars <= 0 or int(lay.bar_of_code.max(initial=0)) * gap_bars >= 2**53:
        return None
    return rows


def _merge_range(parts: list[dict]) -> dict:
    return {"min": min(p["min"] for p in parts), "max": max(p["max"] for p in parts),
            "unknown": sum(p["unknown"] for p in parts)}


def _finite_range(col: np.ndarray) -> dict:
    """min and max over the finite values, and how many are not finite."""
    if not len(col):
        return {"min": np.inf, "max": -np.inf, "unknown": 0}
    lo = float(col.min())  # NaN propagates: a NaN (most blocks have none) is known from one pass
    hi = float(col.max()) if not math.isnan(lo) else lo
    if math.isfinite(lo) and math.isfinite(hi):
        return {"min": lo, "max": hi, "unknown": 0}
    lo, hi = float(np.fmin.reduce(col)), float(np.fmax.reduce(col))
    if math.isfinite(lo) and math.isfinite(hi):  # no inf: only NaN can be unknown
        return {"min": lo, "max": hi, "unknown": int(np.count_nonzero(np.isnan(col)))}
    finite = np.isfinite(col)
    return {"min": float(np.min(col, where=finite, initial=np.inf)),
            "max": float(np.max(col, where=finite, initial=-np.inf)), "unknown": int(len(col) - finite.sum())}


def scale_rows(X: np.ndarray, norm: dict, clip: float, block: int = 1 << 14) -> None:
    """Robust-scale X in place, a block of rows at a time: (x - median) / scale, clipped, and what is still
    unknown filled with 0 (the training median)."""
    med = np.asarray(norm["median"], dtype=np.float32)
    scale = np.asarray(norm["scale"], dtype=np.float32)
    for i in range(0, len(X), block):
        z = X[i : i + block]
        np.subtract(z, med, out=z)
        np.divide(z, scale, out=z)
        np.clip(z, -clip, clip, out=z)
        np.copyto(z, 0.0, where=np.isnan(z))


def targets(clean: pd.DataFrame | dict, lay: Layout, cfg, spike: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The forward log return over `horizon` bars (the target, optionally over trailing volatility), the next
    one-bar return (backtest PnL) and the last one (the momentum baseline); NaN where unknown.

    The horizon is in bars (`sessions.bar_positions`: missing bars counted, session breaks not): a target that
    would span a missing bar is masked, not stretched over more time. A target or return that starts or ends at a
    confirmed price spike (`spike_rows`, which needs the next bar) is masked too: the label side is the
    one place where information from after t may act. `ret_next` runs to the symbol's next row (a position is
    held across a missing bar) and is masked only at spikes. `spike`: those rows when cleaning found them already
    (`_cleaning_spikes`).
    """
    seg, h = lay.seg, cfg.horizon
    close = np.asarray(clean["close"], dtype=np.float64)
    lc = np.log(close)
    same = functools.cache(lambda k: seg[k:] == seg[:-k])  # rows t and t + k in one segment: made once per k
    if spike is None:
        spike = spike_rows(close, lay.codes, np.r_[True, ~same(1)], cfg.spike_sigmas)
    clear = ~spike & ~_ahead(spike, h, seg, same(h))  # neither the start nor the end of the target is a spike
    pos = lay.pos
    whole = np.zeros(len(pos), dtype=bool)  # the target spans `horizon` bars: no bar missing in between
    if h < len(pos):
        whole[:-h] = (pos[h:] - pos[:-h] == h) & same(h)
    ahead = functools.cache(lambda k: _shift(lc, -k, seg, same(k)))  # lc k rows later, in the segment
    lc_h = ahead(h)
    fwd = lc_h - lc
    fwd[~(whole & clear)] = np.nan
    target = fwd
    if cfg.vol_scaled_target:
        rvol = feature_makers(clean, seg)[f"rvol_{VOL_WINDOWS[-1]}"]() * np.sqrt(h)
        with np.errstate(invalid="ignore", divide="ignore"):
            target = np.where(rvol > 0, fwd / rvol, np.nan)
    ret_next = ahead(1) - lc
    ret_next[spike | _ahead(spike, 1, seg, same(1))] = np.nan
    return {"target": target, "fwd_return": fwd, "ret_next": ret_next,
            "last_return": lc - _shift(lc, 1, seg, same(1)),
            "spike": spike, "spans_missing_bar": np.isfinite(lc_h) & ~whole}


def build_features(clean: pd.DataFrame, cfg, quality: dict | None = None, shard_rows: int = 1_000_000,
                   workers: int = 0, fold: int = 0) -> FeatureSet:
    """Clean frame (sorted by symbol, timestamp) -> FeatureSet, normalised on the training split only (of
    walk-forward fold `fold` when `folds` > 1). `cfg` is a Config: its "features" group (window, horizon, clip,
    splits, folds, ...) is what matters. Built in shards of whole symbols (`build_from_shards`); the result does
    not depend on how it was cut."""
    if clean.empty:
        raise ValueError("no rows left after cleaning: nothing to build features from")
    _, codes, symbols = symbol_codes(clean["symbol"])
    ts = ns_since_epoch(clean["timestamp"])
    cols = {k: clean[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume")}
    keep = {"oracle": clean["oracle"].to_numpy(np.float32)} if "oracle" in clean else {}
    restart = clean["restart"].to_numpy(bool) if "restart" in clean else None
    shards = []
    for rows, _ in symbol_shards(codes, len(symbols), shard_rows):
        a = {"ts": ts[rows], "code": codes[rows]} | {k: v[rows] for k, v in cols.items()}
        shards.append(CleanShard(a, symbols, {k: v[rows] for k, v in keep.items()},
                                 restart=None if restart is None else restart[rows]))
    return build_from_shards(shards, cfg, quality, workers, fold)


def build_from_shards(shards: list[CleanShard], cfg, quality: dict | None = None, workers: int = 0,
                      fold: int = 0) -> FeatureSet:
    """Clean shards of whole symbols (in symbol order) -> one FeatureSet, each stage on `workers` threads
    (0: every core): the layout of each shard, the facts of all, each shard's features and targets written
    into the FeatureSet's arrays, one normalisation fitted on the training rows of all, then scaling. Every
    row's values depend on its own symbol's rows and on the facts alone, so any cut gives the same result
    (the on-disk build of shards.py runs the same stages). The shards are consumed: each one's arrays are
    released as soon as they are used."""
    shards = [s for s in shards if len(s)]
    if not shards:
        raise ValueError("no rows left after cleaning: nothing to build features from")
    rows = np.cumsum([0] + [len(s) for s in shards])
    fs = empty_feature_set(int(rows[-1]), [])
    view = lambda i: {k: getattr(fs, k)[rows[i] : rows[i + 1]] for k in FeatureSet.ARRAYS}
    each = range(len(shards))
    with freed_memory_reused(), ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        def layout(i: int) -> tuple[Layout, Facts]:
            prefault(view(i).values())  # this thread writes these rows: its core takes their page faults
            lay = shard_layout(shards[i], cfg.max_gap_bars, view(i))
            return lay, Facts.of(lay)

        lays, parts = map(list, zip(*pool.map(layout, each)))
        facts = Facts.merge(parts)
        bound = fold_bound(fold_bounds(facts.times, cfg, facts.counts), fold, cfg)
        calendar = pool.submit(facts.calendar)  # made beside the placing, not before it
        segs, syms = offsets(parts)
        list(pool.map(lambda i: place(lays[i], bound, segs[i], syms[i], view(i), cfg), each))
        cut = merge_cuts([lay.cut for lay in lays])
        check_cut(cut, cfg)
        cal = calendar.result()
        views = [view(i) for i in each]
        sample = Sample.of([v["split"] for v in views], cut, len(FEATURE_NAMES), pool.map)
        made = list(pool.map(lambda i: shard_features(shards[i], lays[i], facts, cal.continuous, cfg, view(i),
                                                      sample=(sample, i)), each))
        norm, target_scale = fit_shards([v["X"] for v in views], [v["y"] for v in views],
                                        [v["split"] for v in views], cut, pool, sample=sample)
        list(pool.map(lambda v: scale_rows(v["X"], norm, cfg.clip), views))
    fs.symbols = facts.names
    fs.meta = feature_meta(cfg, facts, cal, cut, made, norm, target_scale, quality, fold)
    return fs


def offsets(parts: list[Facts]) -> tuple[list[int], list[int]]:
    """Per shard: the segments and the symbols of the shards before it."""
    segs = np.cumsum([0] + [p.segments for p in parts])[:-1]
    syms = np.cumsum([0] + [len(p.names) for p in parts])[:-1]
    return [int(x) for x in segs], [int(x) for x in syms]


@dataclass
class Sample:
    """The training rows the normalisation is fitted on: at most `max_rows` evenly spaced, every step-th training
    row of all shards from the first (as fit_robust takes of one array), and their unscaled features, one
    contiguous float32 row per feature (`X`, filled a shard at a time: `put`)."""

    rows: list[np.ndarray]  # per shard: its sampled rows
    at: np.ndarray  # where each shard's rows begin in X's columns
    X: np.ndarray
    step: int = 1  # the sampled rows are every step-th training row: at least `step` rows apart

    @staticmethod
    def of(splits: list[np.ndarray], cut: dict, n_features: int, run=map, max_rows: int = 2_000_000) -> Sample:
        trains = list(run(lambda sp: np.flatnonzero(sp == 0), splits))
        if not any(len(t) for t in trains):
            raise ValueError(f"the training split is empty: too little data before the train end "
                             f"({pd.Timestamp(cut['train_end'], tz='UTC')}, set by {cut['method']})")
        total = sum(len(t) for t in trains)
        step, before, rows = (-(-total // max_rows) if total > max_rows else 1), 0, []
        for t in trains:
            rows.append(t[(-before) % step :: step])
            before += len(t)
        at = np.cumsum([0] + [len(r) for r in rows])
        return Sample(rows, at, np.empty((n_features, int(at[-1])), dtype=np.float32), step)

    def put(self, i: int, cols: np.ndarray, b0: int) -> None:
        """Shard i's sampled rows among rows b0.. of its features `cols` ([feature, row], unscaled float32)."""
        rows, at = self.rows[i], int(self.at[i])
        if b0 == 0:  # the shard's first block: the pages of its part of X asked for at once (prefault)
            prefault([x[at : int(self.at[i + 1])] for x in self.X])
        j0, j1 = np.searchsorted(rows, (b0, b0 + cols.shape[1]))
        if j1 > j0 and rows[j1 - 1] - rows[j0] == (j1 - j0 - 1) * self.step:  # evenly spaced (training rows
            #   in a row): a strided copy, twice as fast as gathering them
            self.X[:, at + j0 : at + j1] = cols[:, rows[j0] - b0 : rows[j1 - 1] - b0 + 1 : self.step]
        else:
            self.X[:, at + j0 : at + j1] = cols[:, rows[j0:j1] - b0]


def fit_shards(xs: list[np.ndarray], ys: list[np.ndarray], splits: list[np.ndarray], cut: dict,
               pool: ThreadPoolExecutor | None = None, max_rows: int = 2_000_000, sample: Sample | None = None
               ) -> tuple[dict, float]:
    """(normalisation {median, scale} per feature, target scale) fitted on the training rows of all shards,
    whose unscaled X, targets and splits these are (in row order): the rows of `Sample.of`, their features
    taken from `xs` unless `sample` holds them already (`shard_features` fills it as it makes them)."""
    run = pool.map if pool is not None else map
    if sample is None:
        sample = Sample.of(splits, cut, xs[0].shape[1], run, max_rows)

        def gather(i: int, block: int = 4096) -> None:  # a block of rows at a time: its transpose stays in the cache
            for b0 in range(0, len(xs[i]), block):
                sample.put(i, xs[i][b0 : b0 + block].T, b0)

        list(run(gather, range(len(xs))))
    rows = sample.rows
    y_fit = lambda: fit_robust(np.concatenate([a[r] for a, r in zip(ys, rows)]), scratch=True)  # noqa: E731
    # the target's fit is one more task beside the features', not a serial step after them
    fits = list(run(lambda j: y_fit() if j < 0 else fit_robust(sample.X[j], scratch=True), range(-1, len(sample.X))))
    norm = {"median": [f[0] for f in fits[1:]], "scale": [f[1] for f in fits[1:]]}
    return norm, fits[0][1]


def feature_meta(cfg, facts: Facts, cal: sessions.Calendar, cut: dict, made: list[dict], norm: dict,
                 target_scale: float, quality: dict | None, fold: int = 0) -> dict:
    """The FeatureSet's meta from what the stages found (see docs/design.md)."""
    per_split = np.sum([m["rows_per_split"] for m in made], axis=0)
    return {
        "feature_config": feature_params(cfg, fold),
        "norm": norm,
        "raw_ranges": {name: _merge_range([m["ranges"][name] for m in made]) for name in FEATURE_NAMES},
        "target_scale": target_scale,
        "bar_seconds": {name: int(b) / 1e9 for name, b in zip(facts.names, facts.bars)},
        "calendar": cal.to_dict(),  # sessions a year, bars a session: the data's own annualisation
        "splits": cut,
        "rows_per_split": {name: int(per_split[i + 1]) for i, name in ((0, "train"), (1, "val"), (2, "test"))},
        "purged_rows": int(per_split[0]) - cut.get("outside_rows", 0),  # not the rows outside a fold
        "masked_targets": {k: sum(m[k] for m in made) for k in ("spike_rows", "spans_missing_bar")},
        "n_segments": int(facts.segments),
        "quality": quality or {},
    }


def empty_feature_set(n: int, symbols: list[str]) -> FeatureSet:
    """A FeatureSet of n rows to fill in."""
    f32 = lambda: np.empty(n, dtype=np.float32)
    return FeatureSet(X=np.empty((n, len(FEATURE_NAMES)), dtype=np.float32), y=f32(), fwd_return=f32(),
                      ret_next=f32(), last_return=f32(), oracle=f32(), timestamp=np.empty(n, dtype=np.int64),
                      symbol_id=np.empty(n, dtype=np.int32), segment=np.empty(n, dtype=np.int32),
                      split=np.empty(n, dtype=np.int8), symbols=symbols, feature_names=list(FEATURE_NAMES))


def feature_params(cfg, fold: int = 0) -> dict:
    """The parameters that shape the features: the cache key hashes them, the FeatureSet records them. The
    walk-forward knobs count only with `folds` > 1, and then with the fold (each fold scales on its own rows)."""
    params = cfg.group("features")
    if params["folds"] <= 1:
        return {k: v for k, v in params.items() if k not in ("folds", "fold_window")}
    return {**params, "fold": fold}
