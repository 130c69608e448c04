"""Feature engineering: scale-free inputs, a forward-return target, chronological splits, robust scaling.

Every input is a log ratio or a ratio of like quantities, so a token priced 1e-8 with volumes of 1e15 gives
the same features as a large-cap stock (the seed's 1e15 inputs came from raw prices and volumes). Scaling
is Qlib's RobustZScoreNorm, (x - median) / (1.4826 * MAD), fitted on the training period only, then
clipped. Nothing at row t uses data after t: rolling statistics restart at every segment. Horizons and
purges are counted in bars (of the market calendar, and of each symbol), never in clock time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tradelib import data, sessions
from tradelib.data import bar_sizes_ns, ns_since_epoch

RETURN_LAGS = (1, 4, 16, 64)
VOL_WINDOWS = (8, 32)
VOLUME_WINDOW = 64
MAD_SCALE = 1.4826
FEATURE_NAMES = [f"ret_{k}" for k in RETURN_LAGS] + [f"rvol_{w}" for w in VOL_WINDOWS] + [
    "log_range", "close_loc", "body", "log_volume_rel", "tod_sin", "tod_cos"]


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


def segment_ids(symbol_codes: np.ndarray, ts_ns: np.ndarray, bar_ns: np.ndarray, max_gap_bars: int) -> np.ndarray:
    """Contiguous runs: a new segment at every symbol change or gap longer than max_gap_bars bars."""
    new = np.ones(len(ts_ns), dtype=bool)
    if len(ts_ns) > 1:
        gap = np.diff(ts_ns) > max_gap_bars * bar_ns[1:]
        new[1:] = (symbol_codes[1:] != symbol_codes[:-1]) | gap
    return (np.cumsum(new) - 1).astype(np.int32)


def _shift(x: np.ndarray, k: int, seg: np.ndarray) -> np.ndarray:
    """x[t-k] within the same segment (k > 0 looks back, k < 0 forward), else NaN."""
    out = np.full_like(x, np.nan, dtype=np.float64)
    n = len(x)
    if abs(k) >= n:
        return out
    if k > 0:
        ok = seg[k:] == seg[:-k]
        out[k:] = np.where(ok, x[:-k], np.nan)
    else:
        k = -k
        ok = seg[:-k] == seg[k:]
        out[:-k] = np.where(ok, x[k:], np.nan)
    return out


def _rolling_mean(x: np.ndarray, length: int, seg: np.ndarray) -> np.ndarray:
    """Trailing mean over up to `length` rows (t included) of the same segment, ignoring NaN.

    The running sums restart at every segment: one cumulative sum over all symbols would carry a 1e15-volume
    token's total into the next symbol's sums and cancel its digits away.
    """
    ok = np.isfinite(x)
    cs = pd.Series(np.where(ok, x, 0.0)).groupby(seg).cumsum().to_numpy()
    cc = pd.Series(ok.astype(np.float64)).groupby(seg).cumsum().to_numpy()
    # window (t-length, t] = cs[t] - cs[t-length], or cs[t] alone where t-length is before the segment
    total = cs - np.nan_to_num(_shift(cs, length, seg), nan=0.0)
    count = cc - np.nan_to_num(_shift(cc, length, seg), nan=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def feature_makers(clean: pd.DataFrame, seg: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    """Name -> a function computing that unscaled, scale-free float64 column (NaN where history is too short).

    Columns are made one at a time, so no [n, F] float64 matrix is ever held, and independently, so that
    build_features can make them on several cores (numpy and pandas release the GIL in these loops).
    """
    col = {k: clean[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume")}
    lc = np.log(col["close"])
    r1 = lc - _shift(lc, 1, seg)

    def close_loc() -> np.ndarray:
        span = col["high"] - col["low"]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(span > 0, (col["close"] - col["low"]) / span, 0.5)

    def log_volume_rel() -> np.ndarray:
        v = col["volume"]
        level = _rolling_mean(v, VOLUME_WINDOW, seg)
        with np.errstate(invalid="ignore", divide="ignore"):
            # the floor is relative to the level, so multiplying volume by any constant changes nothing
            return np.where(level > 0, np.log((v + 1e-3 * level) / level), 0.0)

    def time_of_day(fn: Callable) -> Callable[[], np.ndarray]:
        ts = ns_since_epoch(clean["timestamp"])
        return lambda: fn(2 * np.pi * ((ts // 60_000_000_000) % 1440) / 1440)

    makers: dict[str, Callable[[], np.ndarray]] = {"ret_1": lambda: r1}
    makers |= {f"ret_{k}": (lambda k=k: lc - _shift(lc, k, seg)) for k in RETURN_LAGS if k != 1}
    makers |= {f"rvol_{w}": (lambda w=w: np.sqrt(_rolling_mean(r1**2, w, seg))) for w in VOL_WINDOWS}
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


def fit_robust(x: np.ndarray, max_rows: int = 2_000_000) -> tuple[float, float]:
    """Median and 1.4826*MAD of one column's finite values; a constant or empty column gets scale 1.

    Beyond `max_rows` values the statistics come from an evenly spaced sample of that many (deterministic;
    the sampling error of a median of 2M values is far below the features' own noise).
    """
    if len(x) > max_rows:
        x = x[:: -(-len(x) // max_rows)]
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return 0.0, 1.0
    med = float(np.median(x))
    mad = MAD_SCALE * float(np.median(np.abs(x - med)))
    return med, (mad if mad > 1e-12 else 1.0)


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


def split_bounds(ts_ns: np.ndarray, cfg) -> tuple[int, int, str]:
    """(last train time, last validation time, how they were set): `train_end`/`val_end` when given, else
    the `train_frac` / `train_frac + val_frac` quantiles of the rows' timestamps."""
    if cfg.train_end or cfg.val_end:
        return split_time(cfg.train_end), split_time(cfg.val_end), "dates"
    t_train, t_val = np.quantile(ts_ns, [cfg.train_frac, cfg.train_frac + cfg.val_frac]).astype(np.int64)
    return int(t_train), int(t_val), "fractions"


def fold_bounds(ts_ns: np.ndarray, cfg) -> list[dict]:
    """The boundary times of every walk-forward fold (one fold when `folds` <= 1: today's single split).

    Fold 0 is the single split (`split_bounds`). The rows after its validation end, the out-of-sample span, are
    cut into `folds` test periods of equal row counts (time quantiles over all rows); each later fold moves its
    validation and training ends forward by one test period, so fold k's test period follows its validation
    period and the test periods tile the out-of-sample span. The training window starts at the beginning
    (`fold_window` expanding) or moves forward with the rest, keeping the first fold's share of the rows
    (rolling). Times are inclusive ends: fold k trains on (train_start, train_end], validates on (train_end,
    val_end], tests on (val_end, test_end]; train_start is None for "from the first row"."""
    t_train, t_val, how = split_bounds(ts_ns, cfg)
    k_folds = max(int(cfg.folds), 1)
    if len(ts_ns) == 0:
        return [{"method": how, "train_start": None, "train_end": t_train, "val_end": t_val, "test_end": None}]
    share = lambda t: float(np.mean(ts_ns <= t))  # noqa: E731 - the empirical CDF of the rows' times
    at = lambda q: int(np.quantile(ts_ns, min(max(q, 0.0), 1.0), method="inverted_cdf"))  # noqa: E731 - a row's time
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
            "test_end": int(ts_ns.max()) if k == k_folds - 1 else at(q_val + (k + 1) * step),
        })
    return folds


def split_rows(ts_ns: np.ndarray, codes: np.ndarray, cfg, fold: int = 0) -> tuple[np.ndarray, dict]:
    """Chronological split by time across all symbols, then a purge of the first (horizon + window) rows of
    every symbol after each boundary, counted in that symbol's own bars (not in clock time, which a weekend or
    a hole would shorten). With targets that never span a missing bar (`targets`), no training target or
    window reaches a validation or test target. Rows are sorted by (symbol, time).

    With `folds` > 1 this is walk-forward fold `fold` (`fold_bounds`): rows outside its training, validation
    and test periods (before a rolling window, after its test period) are -1, like purged rows."""
    bounds = fold_bounds(ts_ns, cfg)
    if not 0 <= fold < len(bounds):
        raise ValueError(f"fold {fold} does not exist: folds={cfg.folds} gives folds 0..{len(bounds) - 1}")
    b = bounds[fold]
    t_train, t_val = b["train_end"], b["val_end"]
    part = np.where(ts_ns <= t_train, 0, np.where(ts_ns <= t_val, 1, 2)).astype(np.int8)
    if b["train_start"] is not None:
        part[ts_ns <= b["train_start"]] = -1
    if b["test_end"] is not None:
        part[ts_ns > b["test_end"]] = -1
    n = len(part)
    block = np.ones(n, dtype=bool)
    block[1:] = (codes[1:] != codes[:-1]) | (part[1:] != part[:-1])
    first = np.flatnonzero(block)
    rank = np.arange(n) - first[np.cumsum(block) - 1]  # row number within its (symbol, part) run
    purge = cfg.horizon + cfg.window
    split = part.copy()
    split[(part > 0) & (rank < purge)] = -1

    def first_time(s: int) -> int | None:
        return int(ts_ns[split == s].min()) if (split == s).any() else None

    cut = {"method": b["method"], "train_end": t_train, "val_start": first_time(1), "val_end": t_val,
           "test_start": first_time(2), "test_end": b["test_end"], "purge_bars": purge}
    if len(bounds) > 1:
        cut.update(fold=fold, folds=len(bounds), fold_window=cfg.fold_window, train_start=b["train_start"],
                   outside_rows=int((part == -1).sum()))
    for s, name in ((1, "validation"), (2, "test")):
        if len(bounds) > 1 and not ((part == s) & (rank >= purge + cfg.window - 1)).any():
            raise ValueError(f"walk-forward fold {fold} of {len(bounds)}: the {name} split holds no window of "
                             f"{cfg.window} bars after the purge of {purge} bars per symbol: use fewer folds, or more "
                             f"data")
        if cut[("val_start", "test_start")[s - 1]] is None and b["method"] == "dates":
            raise ValueError(f"train_end={cfg.train_end!r}, val_end={cfg.val_end!r}: the {name} split is empty (the "
                             f"data runs to {pd.Timestamp(int(ts_ns.max()), tz='UTC')})")
    return split, cut


@dataclass
class Layout:
    """Where each row of a clean frame sits: its symbol, time, bar size and contiguous segment."""

    codes: np.ndarray  # int32 symbol code per row, in the frame's (sorted) symbol order
    symbols: list[str]
    ts: np.ndarray  # int64 ns since the epoch, UTC
    bar_ns: np.ndarray  # int64 bar size of the row's symbol
    seg: np.ndarray  # int32 segment id: breaks at a symbol change or a gap longer than max_gap_bars
    bar_seconds: dict[str, float]
    pos: np.ndarray  # int64 bar number within the symbol, missing bars counted (sessions.bar_positions)
    calendar: sessions.Calendar


def row_layout(clean: pd.DataFrame, max_gap_bars: int) -> Layout:
    codes, symbols = pd.factorize(clean["symbol"].to_numpy())  # first-appearance order == sorted order
    ts = ns_since_epoch(clean["timestamp"])
    bar_of_code = bar_sizes_ns(codes, ts, len(symbols))
    if (bar_of_code <= 0).any():
        short = [str(symbols[i]) for i in np.flatnonzero(bar_of_code <= 0)]
        raise ValueError(f"symbol(s) {', '.join(short)}: fewer than two timestamps, no bar size")
    bar_ns = bar_of_code[codes]
    cal = sessions.calendar(ts, float(np.median(bar_of_code)) / 1e9)
    return Layout(codes.astype(np.int32), [str(s) for s in symbols], ts, bar_ns,
                  segment_ids(codes, ts, bar_ns, max_gap_bars),
                  {str(s): int(b) / 1e9 for s, b in zip(symbols, bar_of_code)},
                  sessions.bar_positions(ts, codes, bar_ns, cal.continuous), cal)


def scaled_features(clean: pd.DataFrame, seg: np.ndarray, train: np.ndarray, clip: float
                    ) -> tuple[np.ndarray, dict, dict]:
    """(X float32 [n, F] robust-scaled on the training rows and clipped, {median, scale} per feature, the
    raw range of each feature before scaling). Columns are made and scaled on several cores."""
    X = np.empty((len(clean), len(FEATURE_NAMES)), dtype=np.float32)
    makers = feature_makers(clean, seg)

    def make_and_scale(j: int, name: str) -> tuple[float, float, dict]:
        col = makers[name]()
        m, scale = fit_robust(col[train])
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(col)
            before = {"min": float(np.min(col, where=finite, initial=np.inf)),
                      "max": float(np.max(col, where=finite, initial=-np.inf)), "unknown": int((~finite).sum())}
        apply_robust(col, m, scale, clip, out=X[:, j])
        return m, scale, before

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        done = list(pool.map(make_and_scale, range(len(makers)), makers))
    norm = {"median": [d[0] for d in done], "scale": [d[1] for d in done]}
    return X, norm, {name: d[2] for name, d in zip(makers, done)}


def targets(clean: pd.DataFrame, lay: Layout, cfg) -> dict[str, np.ndarray]:
    """The forward log return over `horizon` bars (the target, optionally over trailing volatility), the next
    one-bar return (backtest PnL) and the last one (the momentum baseline); NaN where unknown.

    The horizon is in bars (`sessions.bar_positions`: missing bars counted, session breaks not): a target that
    would span a missing bar is masked, not stretched over more time. A target or return that starts or ends at a
    confirmed price spike (`data.spike_rows`, which needs the next bar) is masked too: the label side is the
    one place where information from after t may act. `ret_next` runs to the symbol's next row (a position is
    held across a missing bar) and is masked only at spikes.
    """
    seg = lay.seg
    lc = np.log(clean["close"].to_numpy(np.float64))
    spike = data.spike_rows(clean["close"].to_numpy(np.float64), lay.codes, np.r_[True, seg[1:] != seg[:-1]],
                            cfg.spike_sigmas).astype(np.float64)
    bad_end = _shift(spike, -cfg.horizon, seg) > 0  # the target ends at a spike
    bad_next = _shift(spike, -1, seg) > 0
    whole = (_shift(lay.pos.astype(np.float64), -cfg.horizon, seg) - lay.pos) == cfg.horizon
    fwd = np.where(whole & ~bad_end & (spike == 0), _shift(lc, -cfg.horizon, seg) - lc, np.nan)
    target = fwd
    if cfg.vol_scaled_target:
        rvol = feature_makers(clean, seg)[f"rvol_{VOL_WINDOWS[-1]}"]() * np.sqrt(cfg.horizon)
        with np.errstate(invalid="ignore", divide="ignore"):
            target = np.where(rvol > 0, fwd / rvol, np.nan)
    ret_next = np.where(~bad_next & (spike == 0), _shift(lc, -1, seg) - lc, np.nan)
    return {"target": target, "fwd_return": fwd, "ret_next": ret_next, "last_return": lc - _shift(lc, 1, seg),
            "spike": spike > 0, "spans_missing_bar": np.isfinite(_shift(lc, -cfg.horizon, seg)) & ~whole}


def build_features(clean: pd.DataFrame, cfg, quality: dict | None = None, fold: int = 0) -> FeatureSet:
    """Clean frame (sorted by symbol, timestamp) -> FeatureSet, normalised on the training split only (of
    walk-forward fold `fold` when `folds` > 1). `cfg` is a Config: its "features" group (window, horizon, clip,
    splits, folds, ...) is what matters."""
    if clean.empty:
        raise ValueError("no rows left after cleaning: nothing to build features from")
    lay = row_layout(clean, cfg.max_gap_bars)
    seg = lay.seg
    split, cuts = split_rows(lay.ts, lay.codes, cfg, fold)
    train = split == 0
    if not train.any():
        raise ValueError(f"the training split is empty: too little data before the train end "
                         f"({pd.Timestamp(cuts['train_end'], tz='UTC')}, set by {cuts['method']})")
    X, norm, raw_ranges = scaled_features(clean, seg, train, cfg.clip)
    t = targets(clean, lay, cfg)
    y = t["target"].astype(np.float32)
    y[~np.isfinite(y)] = np.nan
    oracle = clean["oracle"].to_numpy(np.float32) if "oracle" in clean else np.full(len(y), np.nan, np.float32)
    if "oracle" in clean and cfg.horizon != 1:
        oracle = np.full(len(y), np.nan, np.float32)  # the planted component is known for one bar ahead only
    meta = {
        "feature_config": feature_params(cfg, fold),
        "norm": norm,
        "raw_ranges": raw_ranges,  # each feature before scaling: min, max, rows without history (filled with 0)
        "target_scale": fit_robust(t["target"][train])[1],
        "bar_seconds": lay.bar_seconds,
        "calendar": lay.calendar.to_dict(),  # sessions a year, bars a session: the data's own annualisation
        "splits": cuts,
        "rows_per_split": {name: int((split == i).sum()) for i, name in ((0, "train"), (1, "val"), (2, "test"))},
        "purged_rows": int((split == -1).sum()) - cuts.get("outside_rows", 0),
        "masked_targets": {"spike_rows": int(t["spike"].sum()),  # targets masked at a spike or a missing bar
                           "spans_missing_bar": int(t["spans_missing_bar"].sum())},
        "n_segments": int(seg.max() + 1),
        "quality": quality or {},
    }
    return FeatureSet(
        X=X, y=y, fwd_return=t["fwd_return"].astype(np.float32), ret_next=t["ret_next"].astype(np.float32),
        last_return=t["last_return"].astype(np.float32), oracle=oracle, timestamp=lay.ts, symbol_id=lay.codes,
        segment=seg, split=split, symbols=lay.symbols, feature_names=list(FEATURE_NAMES), meta=meta,
    )


def feature_params(cfg, fold: int = 0) -> dict:
    """The parameters that shape the features: the cache key hashes them, the FeatureSet records them. The
    walk-forward knobs count only with `folds` > 1, and then with the fold (each fold scales on its own rows)."""
    params = cfg.group("features")
    if params["folds"] <= 1:
        return {k: v for k, v in params.items() if k not in ("folds", "fold_window")}
    return {**params, "fold": fold}
