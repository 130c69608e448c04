"""Feature engineering: scale-free inputs, a forward-return target, chronological splits, robust scaling.

Every input is a log ratio or a ratio of like quantities, so a token priced 1e-8 with volumes of 1e15 gives
the same features as a large-cap stock (the seed's 1e15 inputs came from raw prices and volumes). Scaling
is Qlib's RobustZScoreNorm, (x - median) / (1.4826 * MAD), fitted on the training period only, then
clipped. Nothing at row t uses data after t: rolling statistics restart at every segment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

RETURN_LAGS = (1, 4, 16, 64)
VOL_WINDOWS = (8, 32)
VOLUME_WINDOW = 64
MAD_SCALE = 1.4826


@dataclass(frozen=True)
class FeatureConfig:
    window: int = 32
    horizon: int = 1
    vol_scaled_target: bool = False
    clip: float = 5.0
    max_gap_bars: int = 50
    train_frac: float = 0.7
    val_frac: float = 0.15

    @classmethod
    def from_config(cls, cfg) -> FeatureConfig:
        return cls(**{k: getattr(cfg, k) for k in cls.__dataclass_fields__})

    def __post_init__(self) -> None:
        if self.window < 1 or self.horizon < 1:
            raise ValueError(f"window and horizon must be >= 1, got {self.window} and {self.horizon}")
        if not (0 < self.train_frac and 0 <= self.val_frac and self.train_frac + self.val_frac < 1):
            raise ValueError(f"bad split fractions: train {self.train_frac}, val {self.val_frac}")
        if self.clip <= 0:
            raise ValueError(f"clip must be > 0, got {self.clip}")


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
    cc = pd.Series(ok.astype(np.int64)).groupby(seg).cumsum().to_numpy()
    idx = np.arange(len(x))
    seg_start = np.r_[0, np.flatnonzero(np.diff(seg)) + 1][seg]
    start = np.maximum(idx - length + 1, seg_start)
    before = start - 1
    inside = start > seg_start  # the window starts after the segment's first row: subtract the prefix
    total = cs - np.where(inside, cs[np.maximum(before, 0)], 0.0)
    count = cc - np.where(inside, cc[np.maximum(before, 0)], 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def raw_features(clean: pd.DataFrame, seg: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Unscaled, scale-free features, float64 [n, F]; NaN where history is too short."""
    o, h, lo, c, v = (clean[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume"))
    lc = np.log(c)
    cols, names = [], []
    r1 = lc - _shift(lc, 1, seg)
    for k in RETURN_LAGS:
        cols.append(lc - _shift(lc, k, seg))
        names.append(f"ret_{k}")
    for w in VOL_WINDOWS:
        cols.append(np.sqrt(_rolling_mean(r1**2, w, seg)))
        names.append(f"rvol_{w}")
    cols.append(np.log(h / lo))
    names.append("log_range")
    span = h - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        cols.append(np.where(span > 0, (c - lo) / span, 0.5))
    names.append("close_loc")
    cols.append(np.log(c / o))
    names.append("body")
    level = _rolling_mean(v, VOLUME_WINDOW, seg)
    with np.errstate(invalid="ignore", divide="ignore"):
        # the floor is relative to the level, so multiplying volume by any constant changes nothing
        cols.append(np.where(level > 0, np.log((v + 1e-3 * level) / level), 0.0))
    names.append("log_volume_rel")
    tod = clean["timestamp"].dt.hour.to_numpy() * 60 + clean["timestamp"].dt.minute.to_numpy()
    cols.append(np.sin(2 * np.pi * tod / 1440))
    cols.append(np.cos(2 * np.pi * tod / 1440))
    names += ["tod_sin", "tod_cos"]
    return np.column_stack(cols), names


def fit_robust(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column median and 1.4826*MAD, ignoring NaN; a constant column gets scale 1."""
    med = np.nanmedian(x, axis=0)
    mad = MAD_SCALE * np.nanmedian(np.abs(x - med), axis=0)
    med = np.where(np.isfinite(med), med, 0.0)
    mad = np.where(np.isfinite(mad) & (mad > 1e-12), mad, 1.0)
    return med, mad


def apply_robust(x: np.ndarray, med: np.ndarray, mad: np.ndarray, clip: float) -> np.ndarray:
    """Scale, clip, and fill what is still unknown with 0 (the training median), as float32."""
    z = (x - med) / mad
    z = np.clip(z, -clip, clip)
    return np.nan_to_num(z, nan=0.0, posinf=clip, neginf=-clip).astype(np.float32)


def split_rows(ts_ns: np.ndarray, bar_ns: np.ndarray, fcfg: FeatureConfig) -> tuple[np.ndarray, dict]:
    """Chronological split by time across all symbols, with a purge of (horizon + window) bars between
    parts, so no training window or target overlaps a validation or test target."""
    t_train, t_val = np.quantile(ts_ns, [fcfg.train_frac, fcfg.train_frac + fcfg.val_frac]).astype(np.int64)
    purge = int((fcfg.horizon + fcfg.window) * bar_ns.max())
    split = np.full(len(ts_ns), -1, dtype=np.int8)
    split[ts_ns <= t_train] = 0
    split[(ts_ns > t_train + purge) & (ts_ns <= t_val)] = 1
    split[ts_ns > t_val + purge] = 2
    cut = {"train_end": int(t_train), "val_start": int(t_train + purge), "val_end": int(t_val),
           "test_start": int(t_val + purge), "purge_ns": purge}
    return split, cut


def build_features(clean: pd.DataFrame, fcfg: FeatureConfig, quality: dict | None = None) -> FeatureSet:
    """Clean frame (sorted by symbol, timestamp) -> FeatureSet, normalised on the training split only."""
    from tradelib.data import infer_bar_size

    if clean.empty:
        raise ValueError("no rows left after cleaning: nothing to build features from")
    sym = clean["symbol"].to_numpy()
    codes, symbols = pd.factorize(sym)  # first-appearance order == sorted order
    ts = pd.DatetimeIndex(clean["timestamp"]).tz_convert("UTC").as_unit("ns").asi8
    bar_by_symbol = {s: infer_bar_size(g) for s, g in clean.groupby("symbol", sort=False)["timestamp"]}
    short = [s for s, b in bar_by_symbol.items() if pd.isna(b)]
    if short:
        raise ValueError(f"symbol(s) {', '.join(map(str, short))}: fewer than two timestamps, no bar size")
    bar_by_symbol = {s: int(b.value) for s, b in bar_by_symbol.items()}
    bar_ns = np.array([bar_by_symbol[s] for s in symbols], dtype=np.int64)[codes]
    seg = segment_ids(codes, ts, bar_ns, fcfg.max_gap_bars)

    raw, names = raw_features(clean, seg)
    lc = np.log(clean["close"].to_numpy(np.float64))
    fwd = _shift(lc, -fcfg.horizon, seg) - lc
    ret_next = _shift(lc, -1, seg) - lc
    last_ret = lc - _shift(lc, 1, seg)
    target = fwd.copy()
    if fcfg.vol_scaled_target:
        rvol = raw[:, names.index(f"rvol_{VOL_WINDOWS[-1]}")] * np.sqrt(fcfg.horizon)
        with np.errstate(invalid="ignore", divide="ignore"):
            target = np.where(rvol > 0, fwd / rvol, np.nan)

    split, cuts = split_rows(ts, bar_ns, fcfg)
    train = split == 0
    if not train.any():
        raise ValueError("the training split is empty: too little data for the split fractions")
    med, mad = fit_robust(raw[train])
    X = apply_robust(raw, med, mad, fcfg.clip)
    y = target.astype(np.float32)
    y[~np.isfinite(y)] = np.nan
    tmed, tmad = fit_robust(target[train & np.isfinite(target)][:, None])
    oracle = clean["oracle"].to_numpy(np.float32) if "oracle" in clean else np.full(len(y), np.nan, np.float32)
    if "oracle" in clean and fcfg.horizon != 1:
        oracle = np.full(len(y), np.nan, np.float32)  # the planted component is known for one bar ahead only

    meta = {
        "feature_config": asdict(fcfg),
        "norm": {"median": med.tolist(), "scale": mad.tolist()},
        "target_scale": float(tmad[0]),
        "bar_seconds": {s: b / 1e9 for s, b in bar_by_symbol.items()},
        "splits": cuts,
        "rows_per_split": {name: int((split == i).sum()) for i, name in ((0, "train"), (1, "val"), (2, "test"))},
        "purged_rows": int((split == -1).sum()),
        "n_segments": int(seg.max() + 1),
        "quality": quality or {},
    }
    return FeatureSet(
        X=X, y=y, fwd_return=fwd.astype(np.float32), ret_next=ret_next.astype(np.float32),
        last_return=last_ret.astype(np.float32), oracle=oracle, timestamp=ts, symbol_id=codes.astype(np.int32),
        segment=seg, split=split, symbols=list(symbols), feature_names=names, meta=meta,
    )
