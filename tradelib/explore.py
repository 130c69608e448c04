"""What 01_data_cleaning shows: raw value ranges against cleaned features, as tables and one figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tradelib.features import FeatureSet

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
    """Rows dropped or changed per rule and symbol, with the totals line a reader checks first."""
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


def plot_raw_vs_features(raw: pd.DataFrame, fs: FeatureSet, save_to: Path | None = None,
                         features: tuple[str, ...] = ("ret_1", "log_volume_rel")):
    """Raw close and volume per symbol on a log scale (where the 1e-8 prices and 1e15 volumes show) next to
    the cleaned features per symbol (where they are gone)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(2, 2, figsize=(13, 7))
    finite = raw[np.isfinite(raw["close"]) & np.isfinite(raw["volume"])]
    for ax, col in zip(axes[0], ("close", "volume")):
        vals = finite[finite[col] > 0]
        sns.boxplot(data=vals, x="symbol", y=col, ax=ax, log_scale=True, fliersize=1)
        ax.set_title(f"raw {col} (log scale): spans {vals[col].min():.1e} to {vals[col].max():.1e}")
        ax.tick_params(axis="x", rotation=45)
    frame = fs.frame()
    frame = frame[frame["split"] == 0]
    for ax, col in zip(axes[1], features):
        sns.boxplot(data=frame, x="symbol", y=col, ax=ax, fliersize=1)
        ax.set_title(f"feature {col}, scaled (train split): one scale for all")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    if save_to is not None:
        fig.savefig(save_to, dpi=110)
    return fig
