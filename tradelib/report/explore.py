"""What 01_data_cleaning shows as tables: raw value ranges, rows per cleaning rule, features per split (its
figure is plots.plot_raw_vs_features)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tradelib.data.features import FeatureSet

PRICE_COLS = ("open", "high", "low", "close", "volume")


def ranges_table(quality: dict) -> pd.DataFrame:
    """Per raw column: min, max, NaN, inf, zero and negative counts, before and after cleaning."""
    rows = []
    for stage in ("before", "after"):
        for col, r in quality.get(f"ranges_{stage}", {}).items():
            if col in PRICE_COLS:
                rows.append({"stage": stage, "column": col, **{k: r.get(k) for k in
                                                              ("min", "max", "nan", "inf", "zero", "negative")}})
    return pd.DataFrame(rows)


def counts_table(quality: dict) -> pd.DataFrame:
    """Rows dropped, changed, masked or flagged per rule and symbol (01 prints rows in, kept and dropped above it)."""
    df = pd.DataFrame(quality.get("counts", []), columns=["rule", "symbol", "action", "rows"])
    return df.sort_values(["action", "rule", "symbol"]).reset_index(drop=True)


def feature_table(fs: FeatureSet) -> pd.DataFrame:
    """Per feature and split: the range before scaling (all rows) and after (this split), median, spread,
    non-finite count and the share sitting at the clip."""
    clip = fs.meta["feature_config"]["clip"]
    before = fs.meta.get("raw_ranges", {})
    rows = []
    for s, name in ((0, "train"), (1, "val"), (2, "test")):
        X = fs.X[fs.split == s]
        for j, f in enumerate(fs.feature_names):
            x = X[:, j]
            b = before.get(f, {})
            rows.append({"split": name, "feature": f, "raw_min": b.get("min", np.nan), "raw_max": b.get("max", np.nan),
                         "no_history": b.get("unknown", np.nan),
                         "min": float(x.min()) if len(x) else np.nan, "max": float(x.max()) if len(x) else np.nan,
                         "median": float(np.median(x)) if len(x) else np.nan,
                         "std": float(x.std()) if len(x) else np.nan,
                         "non_finite": int((~np.isfinite(x)).sum()),
                         "at_clip": float((np.abs(x) >= clip).mean()) if len(x) else np.nan})
    return pd.DataFrame(rows)


def constant_features(fs: FeatureSet, block: int = 1_000_000) -> list[str]:
    """The features holding one value over the training rows, which scaling turns into a column of zeros: an input
    the model cannot use (tod_sin and tod_cos on daily bars, every bar at the same time of day). Read in blocks of
    rows, so that a memory-mapped cache is read once and never whole."""
    lo = np.full(fs.X.shape[1], np.inf)
    hi = -lo
    for a in range(0, len(fs.X), block):
        rows = np.asarray(fs.X[a : a + block])[np.asarray(fs.split[a : a + block]) == 0]
        if len(rows):
            lo, hi = np.fmin(lo, np.fmin.reduce(rows, axis=0)), np.fmax(hi, np.fmax.reduce(rows, axis=0))
    return [name for name, a, b in zip(fs.feature_names, lo, hi) if a == b]
