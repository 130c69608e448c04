"""Feature engineering: scale-free inputs, a forward-return target, chronological splits, robust scaling.

Every input is a log ratio or a ratio of like quantities, so a token priced 1e-8 with volumes of 1e15 gives
the same features as a large-cap stock (the seed's 1e15 inputs came from raw prices and volumes). Scaling
is Qlib's RobustZScoreNorm, (x - median) / (1.4826 * MAD), fitted on the training period only, then
clipped (where more than half the values sit at the median, as one-bar returns of a price on a tick grid do, the
MAD is 0 and the scale is 1.2533 * the mean absolute deviation from the median instead). Nothing at row t uses
data after t: a feature at t reads the rows of t's segment (a symbol's run without a gap longer than
max_gap_bars) up to t. Horizons and purges are counted in bars (of the market
calendar, and of each symbol), never in clock time.

The definitions below are written with a few segment-wise operations (`segments.Segments`: the value k rows back,
a trailing mean, ...), whose fast evaluation is that module's. shards.py runs them over shards of whole symbols.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tradelib.config import run_setting
from tradelib.data.detect import spike_rows
from tradelib.data.load import ns_since_epoch, wall_ns
from tradelib.data.segments import Segments, run_rank

RETURN_LAGS = (1, 4, 16, 64)
VOL_WINDOWS = (8, 32)
VOLUME_WINDOW = 64
MAD_SCALE = 1.4826
MEAN_AD_SCALE = 1.2533  # sqrt(pi / 2): sigma from the mean absolute deviation of a normal, where the MAD is 0
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

    @property
    def target_delay(self) -> int:
        """Rows between t and the start of y's return (a cache from before the setting: what it did)."""
        return int(run_setting(self.meta.get("feature_config", {}), "target_delay"))

    def target_from_t(self, rows: np.ndarray) -> np.ndarray:
        """These rows' target counted from t itself (the return from t to t+horizon): y holds it target_delay
        rows earlier. What the predictions keep, so that a report takes its own trade delay from it; NaN where
        that row is in another segment (a row with a whole window has it whenever target_delay < window)."""
        rows = np.asarray(rows)
        d = self.target_delay
        if d == 0:
            return self.y[rows]
        src = np.maximum(rows - d, 0)
        ok = (rows >= d) & (self.segment[src] == self.segment[rows])
        return np.where(ok, self.y[src], np.nan).astype(self.y.dtype)

    def frame(self) -> pd.DataFrame:
        """The features as a DataFrame, for looking at them."""
        df = pd.DataFrame(self.X, columns=self.feature_names)
        df.insert(0, "timestamp", pd.to_datetime(self.timestamp, utc=True))
        df.insert(1, "symbol", np.asarray(self.symbols, dtype=object)[self.symbol_id])
        df["split"] = self.split
        df["target"] = self.y
        return df

    @staticmethod
    def empty(n: int) -> FeatureSet:
        """A FeatureSet of n rows to fill in."""
        f32 = lambda: np.empty(n, dtype=np.float32)  # noqa: E731
        return FeatureSet(X=np.empty((n, len(FEATURE_NAMES)), dtype=np.float32), y=f32(), fwd_return=f32(),
                          ret_next=f32(), last_return=f32(), oracle=f32(), timestamp=np.empty(n, dtype=np.int64),
                          symbol_id=np.empty(n, dtype=np.int32), segment=np.empty(n, dtype=np.int32),
                          split=np.empty(n, dtype=np.int8), symbols=[], feature_names=list(FEATURE_NAMES))


def feature_makers(bars: pd.DataFrame | dict, seg: np.ndarray | Segments, zone: str
                   ) -> dict[str, Callable[[], np.ndarray]]:
    """Name -> a function computing that unscaled, scale-free float64 column (NaN where history is too short).

    `bars`: open, high, low, close, volume and timestamp of rows in (symbol, time) order; `seg`: their segment ids,
    or their `Segments` (a block of rows given with the LOOKBACK rows before it and their true ranks in their
    segments makes the same values as all rows); `zone`: the market's clock (Config.market_zone), whose local time
    of day tod_sin/tod_cos read. Columns are made one at a time: no [n, F] matrix is held.
    """
    s = seg if isinstance(seg, Segments) else Segments.of(seg)
    close, high, low = (np.asarray(bars[k], dtype=np.float64) for k in ("close", "high", "low"))
    log_close = np.log(close)
    ret_1 = s.diff(log_close, 1)
    mean_sq = functools.cache(lambda: dict(zip(VOL_WINDOWS, s.trailing_means(ret_1**2, VOL_WINDOWS))))

    def close_loc() -> np.ndarray:  # where the close sits in the bar's range; 0.5 for a bar without range
        span = high - low
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(span > 0, (close - low) / span, 0.5)

    def log_volume_rel() -> np.ndarray:  # log of the volume over its trailing mean (the level), floored
        v = np.asarray(bars["volume"], dtype=np.float64)
        level = s.trailing_means(v, (VOLUME_WINDOW,))[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            # the floor is relative to the level, so multiplying volume by any constant changes nothing
            return np.where(level > 0, np.log((v + 1e-3 * level) / level), 0.0)

    minute = functools.cache(lambda: minute_of_day(bars["timestamp"], zone))

    def time_of_day(fn: Callable) -> Callable[[], np.ndarray]:  # the market's minute of the day on the unit circle
        return lambda: fn(2 * np.pi * np.arange(1440) / 1440)[minute()]

    makers: dict[str, Callable[[], np.ndarray]] = {
        # ret_k = log(close_t / close_{t-k}) within a segment (NaN across a break)
        "ret_1": lambda: ret_1,
        **{f"ret_{k}": (lambda k=k: s.diff(log_close, k)) for k in RETURN_LAGS if k != 1},
        # rvol_w = sqrt(mean of ret_1^2 over the segment's last w rows, t included)
        **{f"rvol_{w}": (lambda w=w: np.sqrt(mean_sq()[w])) for w in VOL_WINDOWS},
        "log_range": lambda: np.log(high / low),
        "close_loc": close_loc,
        "body": lambda: log_close - np.log(np.asarray(bars["open"], dtype=np.float64)),
        "log_volume_rel": log_volume_rel,
        "tod_sin": time_of_day(np.sin),
        "tod_cos": time_of_day(np.cos),
    }
    assert list(makers) == FEATURE_NAMES
    return makers


def minute_of_day(t, zone: str) -> np.ndarray:
    """The minute of the day of each timestamp (datetimes, or int64 ns since the epoch) on the wall clock of
    `zone` (an IANA name): a New York open is 09:30 on both sides of a DST change, where UTC's moves an hour."""
    t = np.asarray(t) if not isinstance(t, pd.Series) else t
    ns = t if isinstance(t, np.ndarray) and t.dtype == np.int64 else ns_since_epoch(t)
    return (wall_ns(ns, zone) // 60_000_000_000) % 1440


def targets(bars: dict, seg: Segments, codes: np.ndarray, pos: np.ndarray, cfg) -> dict[str, np.ndarray]:
    """The target: the forward log return over `horizon` bars that starts `target_delay` bars after t (the one
    a book trading that many bars after its signal earns), optionally over the trailing volatility at its start;
    `fwd_return`, the unscaled return over `horizon` bars from t itself; the next one-bar return (backtest PnL)
    and the last one (the momentum baseline); NaN where unknown.

    The horizon is in bars (`pos`: each row's bar number in its symbol, `sessions.bar_positions`: missing bars
    counted, session breaks not): a target that would span a missing bar is masked, not stretched over more time,
    and counted (`spans_missing_bar`), also over a long gap, where the segment ends before the target would.
    A target or return that starts or ends at a confirmed price spike (`spike_rows`, which needs the next bar) is
    masked too: the label side is the one place where information from after t may act. `ret_next` runs to the
    symbol's next row (a position is held across a missing bar) and is masked only at spikes. The delay is in
    the symbol's rows (the target of row t + target_delay, NaN where that row is in another segment).
    """
    h = cfg.horizon
    close = np.asarray(bars["close"], dtype=np.float64)
    log_close = np.log(close)
    spike = spike_rows(close, codes, seg.rank == 0, cfg.spike_sigmas)
    clear = ~spike & ~seg.ahead(spike, h)  # neither the start nor the end of the target is a spike
    whole = np.zeros(len(pos), dtype=bool)  # the target spans `horizon` bars: no bar missing in between
    spans = np.zeros(len(pos), dtype=bool)  # its symbol has a price h rows on, more than h bars on: counted masked
    if h < len(pos):
        full = pos[h:] - pos[:-h] == h
        whole[:-h] = full & seg.same(h)
        spans[:-h] = ~full & (codes[h:] == codes[:-h]) & np.isfinite(log_close[h:])  # across a long gap too
    lc_h = seg.lead(log_close, h)
    fwd = lc_h - log_close
    fwd[~(whole & clear)] = np.nan
    target = fwd
    if cfg.vol_scaled_target:
        rvol = feature_makers(bars, seg, cfg.market_zone)[f"rvol_{VOL_WINDOWS[-1]}"]() * np.sqrt(h)
        with np.errstate(invalid="ignore", divide="ignore"):
            target = np.where(rvol > 0, fwd / rvol, np.nan)
    if cfg.target_delay:
        target = seg.lead(target, cfg.target_delay)
    ret_next = seg.lead(log_close, 1) - log_close
    ret_next[spike | seg.ahead(spike, 1)] = np.nan
    return {"target": target, "fwd_return": fwd, "ret_next": ret_next, "last_return": seg.diff(log_close, 1),
            "spike": spike, "spans_missing_bar": spans}


def fit_robust(x: np.ndarray, max_rows: int = 2_000_000, scratch: bool = False) -> tuple[float, float]:
    """Median and 1.4826*MAD of one column's finite values; a constant or empty column gets scale 1. Where more
    than half the values equal the median (the MAD is 0: most one-bar returns of a price a few ticks in size),
    the scale is 1.2533 * their mean absolute deviation from it, not 1, which would leave such a column at its
    raw size (returns of 1e-3 beside features of 1) and the model without it.

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
    dev = np.abs(np.subtract(x, med, dtype=np.float64))
    mad = MAD_SCALE * _median_inplace(dev)
    if mad <= 1e-12:  # more than half the values at the median: their mean distance from it (0 if constant)
        mad = MEAN_AD_SCALE * float(dev.mean())
    return med, (mad if mad > 1e-12 else 1.0)


def _median_inplace(x: np.ndarray) -> float:
    """np.median of x's float64 values (x finite, not empty), partitioning x in place: the middle value, or the
    mean of the middle two taken as np.median takes it. One partition at the upper middle, the lower one being
    the largest value before it (numpy's partition at two places took five times as long)."""
    half = len(x) // 2
    x.partition(half)
    middle = [x[half]] if len(x) % 2 else [x[:half].max(), x[half]]
    return float(np.median(np.asarray(middle, dtype=np.float64)))


def split_time(text: str) -> int:
    """A split boundary (`train_end`, `val_end`) as int ns UTC, inclusive. A date alone means the whole day
    (`2022-12-31` keeps every bar of that day); a naive time is UTC."""
    ts = pd.Timestamp(str(text).strip())
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if ":" not in str(text) and ts == ts.normalize():
        return int((ts + pd.Timedelta(days=1)).as_unit("ns").value) - 1
    return int(ts.as_unit("ns").value)


def split_bounds(ts_ns: np.ndarray, cfg, counts: np.ndarray) -> tuple[int, int, str]:
    """(last train time, last validation time, how they were set): `train_end`/`val_end` when given, else the
    times of the rows at the `train_frac` and `train_frac + val_frac` quantiles (rows in time order; the row at
    rank floor(q * (n - 1))). `ts_ns`: the distinct times, with their row `counts`."""
    if cfg.train_end or cfg.val_end:
        return split_time(cfg.train_end), split_time(cfg.val_end), "dates"
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
    times_after = len(ts_ns) - int(np.searchsorted(ts_ns, t_val, side="right"))
    if k_folds > max(times_after, 1):  # a test period without a timestamp; and the loop below is k_folds long
        raise ValueError(f"folds={cfg.folds}: the out-of-sample span after the validation split holds {times_after:,} "
                         f"timestamps, fewer than the folds' test periods: use fewer folds, or more data")
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


def split_rows(ts_ns: np.ndarray, codes: np.ndarray, cfg, bound: dict) -> tuple[np.ndarray, dict]:
    """Chronological split by time across all symbols, then a purge of the first (target_delay + horizon +
    window) rows of every symbol after each boundary, counted in that symbol's own bars (not in clock time, which
    a weekend or a hole would shorten). With targets that never span a missing bar (`targets`), no training target or
    window reaches a validation or test target. Rows are sorted by (symbol, time).

    `bound` is a fold's bounds of all the rows (`fold_bound`); these rows may be some symbols of them, so the
    cut covers these rows only: the caller merges the parts' cuts (`merge_cuts`) and checks the whole
    (`check_cut`). With `folds` > 1 rows outside the fold's training, validation and test periods (before a
    rolling window, after its test period) are -1, like purged rows."""
    t_train, t_val = bound["train_end"], bound["val_end"]
    if t_train <= t_val:  # 0, 1, 2 as two comparisons summed: no int64 temporaries
        part = np.greater(ts_ns, t_train).view(np.int8)
        part += ts_ns > t_val
    else:
        part = np.where(ts_ns <= t_train, 0, np.where(ts_ns <= t_val, 1, 2)).astype(np.int8)
    if bound["train_start"] is not None:
        part[ts_ns <= bound["train_start"]] = -1
    if bound["test_end"] is not None:
        part[ts_ns > bound["test_end"]] = -1
    n = len(part)
    block = np.ones(n, dtype=bool)
    block[1:] = (codes[1:] != codes[:-1]) | (part[1:] != part[:-1])
    rank = run_rank(block)  # number in its (symbol, part) run
    purge = cfg.target_reach + cfg.window
    split = part.copy()
    split[(part > 0) & (rank < purge)] = -1

    def first_time(s: int) -> int | None:
        t = ts_ns[split == s]
        return int(t.min()) if len(t) else None

    cut = {"method": bound["method"], "train_end": t_train, "val_start": first_time(1), "val_end": t_val,
           "test_start": first_time(2), "test_end": bound["test_end"], "purge_bars": purge}
    if cfg.folds > 1:
        windowed = lambda s: int(np.count_nonzero((part == s) & (rank >= purge + cfg.window - 1)))  # noqa: E731
        cut.update(fold=bound["fold"], folds=int(cfg.folds), fold_window=cfg.fold_window,
                   train_start=bound["train_start"], outside_rows=int((part == -1).sum()),
                   window_rows=[windowed(1), windowed(2)])
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


def feature_params(cfg, fold: int = 0) -> dict:
    """The parameters that shape the features: the cache key hashes them, the FeatureSet records them. The
    walk-forward knobs count only with `folds` > 1, and then with the fold (each fold scales on its own rows)."""
    params = cfg.group("features")
    if params["folds"] <= 1:
        return {k: v for k, v in params.items() if k not in ("folds", "fold_window")}
    return {**params, "fold": fold}
