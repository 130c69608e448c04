"""Did the model learn anything real, would the signal survive costs, did the GPU work?

Metrics only: functions of a predictions frame (`runs.read_predictions`) that return plain pandas frames and
dicts; `report.py` assembles them, `plots.py` draws them, `runs.py` reads the files. docs/metrics.md says
which figure is which and how each is computed.

Conventions (the numbers in the report depend on them):
- Three ICs, each named for what it is. `cross_sectional`: the correlation across symbols at each timestamp
  (timestamps with >= 3 symbols), averaged over timestamps: what alphalens and Qlib call IC. `daily`: the
  correlation over every row of a UTC day (all symbols and bars pooled), averaged over days. `pooled`: one
  correlation over every test row. Each comes as Pearson (`ic`) and Spearman (`rank_ic`).
- t-statistics are overlap-robust: a target over h bars shares h-1 bars with the next one, so consecutive IC
  periods are correlated. `hac_t_stat` uses the Hansen-Hodrick HAC variance (equal weights on the lags the
  targets overlap, h-1 for per-timestamp ICs). "Significant" is said only of that figure.
- Annualisation comes from the data's own calendar (`sessions.calendar`): sessions a year x bars a session
  for exchange data (~252 for daily stock bars), 365.25 x 86400 / bar seconds for a 24/7 market; or a
  `periods_per_year` given by the researcher.
- Backtest: the signal at the close of t trades `trade_delay` bars later (default 1: at the close of t+1) and
  earns the simple return exp(ret_next) - 1 of the bar after that; costs on every change of weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

from tradelib.data.clean import bar_sizes_ns
from tradelib.data.load import ns_since_epoch
from tradelib.data.sessions import calendar

MIN_PERIOD_ROWS = 3  # a correlation over fewer rows is noise, and over 2 rows it is always +-1
IC_FAMILIES = ("cross_sectional", "daily", "pooled")
COST_GRID_BPS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0)


# ----------------------------------------------------------------------------------------------------
# small helpers


def _timestamps(col: pd.Series) -> pd.Series:
    """Timestamps as datetime64[UTC], whether stored as datetimes or as int64 ns (the FeatureSet layout)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
    return pd.to_datetime(col, utc=True)


def _ts_ns(col: pd.Series) -> np.ndarray:
    """int64 ns since epoch (sortable, fast to compare)."""
    return ns_since_epoch(_timestamps(col))


def _finite_rows(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for c in cols:
        mask &= np.isfinite(df[c].to_numpy(dtype=float))
    return df.loc[mask]


def infer_bar_seconds(df: pd.DataFrame) -> float:
    """The bar size: the median over symbols of each symbol's bar size (data.bar_sizes_ns, the rule cleaning
    uses: the most common step, robust to gaps and test windows)."""
    codes, uniques = pd.factorize(df["symbol"])
    ts = _ts_ns(df["timestamp"])
    order = np.lexsort((ts, codes))
    bars = bar_sizes_ns(codes[order], ts[order], len(uniques))
    bars = bars[bars > 0]
    if bars.size == 0:
        raise ValueError("cannot infer the bar size: no symbol has two rows at different times; pass bar_seconds")
    return float(np.median(bars)) / 1e9


def annualisation(df: pd.DataFrame, bar_seconds: float | None = None, periods_per_year: float = 0.0) -> dict:
    """Periods per year and how they were found: `periods_per_year` when given (> 0), else the calendar of
    the frame's timestamps (`sessions.calendar`; pass the longest span you have, e.g. every split)."""
    if periods_per_year and periods_per_year > 0:
        return {"periods_per_year": float(periods_per_year), "method": "given",
                "description": f"given: periods_per_year = {float(periods_per_year):g}"}
    bar = float(bar_seconds) if bar_seconds else infer_bar_seconds(df)
    return calendar(_ts_ns(df["timestamp"]), bar).to_dict()


def ic(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation over the finite pairs; NaN for fewer than 3 pairs or a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    m = np.isfinite(x) & np.isfinite(y)
    x, y = x[m], y[m]
    if x.size < MIN_PERIOD_ROWS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    return float(np.clip((dx @ dy) / math.sqrt((dx @ dx) * (dy @ dy)), -1.0, 1.0))


def rank_ic(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation: Pearson on average ranks (ties share their mean rank)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    m = np.isfinite(x) & np.isfinite(y)
    return ic(pd.Series(x[m]).rank().to_numpy(), pd.Series(y[m]).rank().to_numpy())


def _group_corr(codes: np.ndarray, n_groups: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r and n per group code 0..n_groups-1 from centred sums; n < 3 or a constant side -> NaN."""
    n = np.bincount(codes, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = x - (np.bincount(codes, x, n_groups) / n)[codes]
        dy = y - (np.bincount(codes, y, n_groups) / n)[codes]
        sxy, sxx, syy = (np.bincount(codes, v, n_groups) for v in (dx * dy, dx * dx, dy * dy))
        r = np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)
    g = pd.DataFrame({"x": x, "y": y}).groupby(codes)
    lo, hi = g.min().reindex(range(n_groups)), g.max().reindex(range(n_groups))
    varies = ((hi["x"] > lo["x"]) & (hi["y"] > lo["y"])).to_numpy()  # exact, unlike sxx > 0 after rounding
    return np.where(varies & (n >= MIN_PERIOD_ROWS), r, np.nan), n


# ----------------------------------------------------------------------------------------------------
# information coefficient: three families


def _ic_by_key(d: pd.DataFrame, key: pd.Series, pred_col: str, target_col: str) -> pd.DataFrame:
    """Pearson and Spearman IC per distinct key over the (finite) rows of d; periods with n < 3 or a
    constant side dropped."""
    cols = ["period", "ic", "rank_ic", "n"]
    if len(d) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    codes, periods = pd.factorize(key, sort=True)  # integer codes: grouping on them is fast
    x, y = d[pred_col].to_numpy(dtype=float), d[target_col].to_numpy(dtype=float)
    ic_, n = _group_corr(codes, len(periods), x, y)
    rx = pd.Series(x).groupby(codes).rank().to_numpy()
    ry = pd.Series(y).groupby(codes).rank().to_numpy()
    rank_ic_, _ = _group_corr(codes, len(periods), rx, ry)
    out = pd.DataFrame({"period": periods, "ic": ic_, "rank_ic": rank_ic_, "n": n})
    return out.dropna(subset=["ic", "rank_ic"]).reset_index(drop=True)[cols]


def ic_by_timestamp(df: pd.DataFrame, pred_col: str = "prediction", target_col: str = "target") -> pd.DataFrame:
    """The cross-sectional IC: one correlation across symbols per timestamp (>= 3 symbols with a finite
    prediction and target), as alphalens' `factor_information_coefficient` and Qlib compute it. Columns
    period (the timestamp), ic, rank_ic, n."""
    d = _finite_rows(df, [pred_col, target_col])
    return _ic_by_key(d, _timestamps(d["timestamp"]), pred_col, target_col)


def ic_by_day(df: pd.DataFrame, pred_col: str = "prediction", target_col: str = "target") -> pd.DataFrame:
    """The per-day IC: one correlation over every row of a UTC day, all symbols and bars pooled (for daily
    bars this is the cross-sectional IC). Columns period (the day), ic, rank_ic, n."""
    d = _finite_rows(df, [pred_col, target_col])
    return _ic_by_key(d, _timestamps(d["timestamp"]).dt.floor("D"), pred_col, target_col)


def hac_t_stat(x: np.ndarray, lags: int) -> tuple[float, str]:
    """t-statistic of the mean of a series whose neighbours up to `lags` apart may be correlated.

    Hansen-Hodrick: the long-run variance gamma_0 + 2 * sum_{k=1..lags} gamma_k (equal weights: the right
    ones for the overlap of h-bar targets, which correlates lags 1..h-1 and no further), scaled by n/(n-1) so
    that lags = 0 gives the ordinary t. When that variance is not positive (short, noisy series) Newey-West's
    Bartlett weights over 2 x lags take over. Returns (t, the method in words).
    """
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    n, lags = x.size, max(int(lags), 0)
    if n < 2 or n <= lags + 1:
        return float("nan"), f"too few periods ({n}) for {lags} lags"
    d = x - x.mean()
    gamma = np.array([d[k:] @ d[: n - k] / n for k in range(lags + 1)])
    lrv, method = gamma[0] + 2 * gamma[1:].sum(), f"Hansen-Hodrick HAC, {lags} lags"
    if lags == 0:
        method = "iid (no overlap between IC periods)"
    elif lrv <= 0:
        wide = 2 * lags
        g = np.array([d[k:] @ d[: n - k] / n for k in range(min(wide, n - 1) + 1)])
        w = 1 - np.arange(len(g)) / (wide + 1)
        lrv, method = g[0] + 2 * (w[1:] * g[1:]).sum(), f"Newey-West HAC, {wide} lags"
    lrv *= n / (n - 1)
    if lrv <= 0:
        return (0.0 if x.mean() == 0 else float("nan")), method
    return float(x.mean() / math.sqrt(lrv / n)), method


def overlap_lags(horizon: int, family: str, bars_per_session: float = 1.0) -> int:
    """How many IC periods one target overlaps: h-1 timestamps (cross-sectional, pooled), or the sessions
    that h-1 bars reach into (daily: 0 for one-bar targets on intraday bars, h-1 on daily bars)."""
    h = max(int(horizon), 1)
    if family == "daily":
        return int(math.ceil((h - 1) / max(bars_per_session, 1.0)))
    return h - 1


def ic_summary(ic_df: pd.DataFrame, lags: int = 0) -> dict:
    """Mean IC and rank IC over periods, ICIR = mean/std, and the overlap-robust t of each (`hac_t_stat`
    with `lags`); `t_stat_iid` is the naive ICIR x sqrt(n), kept only to show what overlap does to it."""
    ics = ic_df["ic"].to_numpy(dtype=float) if len(ic_df) else np.array([])
    ranks = ic_df["rank_ic"].to_numpy(dtype=float) if len(ic_df) else np.array([])
    n = int(ics.size)
    nan = float("nan")
    std = float(ics.std(ddof=1)) if n >= 2 else nan
    rstd = float(ranks.std(ddof=1)) if n >= 2 else nan
    icir = float(ics.mean()) / std if n >= 2 and std > 0 else nan
    t, method = hac_t_stat(ics, lags)
    return {
        "ic": float(ics.mean()) if n else nan,
        "rank_ic": float(ranks.mean()) if n else nan,
        "ic_std": std,
        "icir": icir,
        "rank_icir": float(ranks.mean()) / rstd if n >= 2 and rstd > 0 else nan,
        "t_stat": t,
        "rank_t_stat": hac_t_stat(ranks, lags)[0],
        "t_method": method,
        "lags": int(lags),
        "t_stat_iid": icir * math.sqrt(n) if n >= 2 else nan,
        "n_periods": n,
        "positive_share": float((ics > 0).mean()) if n else nan,
    }


def pooled_summary(df: pd.DataFrame, pred_col: str = "prediction", target_col: str = "target",
                   lags: int = 0) -> dict:
    """The pooled IC (one correlation over every row) and its t: the pooled correlation is the mean over
    timestamps of s_t = sum_i zx_it * zy_it / N (z: globally standardised), whose HAC t is taken."""
    d = _finite_rows(df, [pred_col, target_col])
    x, y = d[pred_col].to_numpy(dtype=float), d[target_col].to_numpy(dtype=float)
    out = {"ic": ic(x, y), "rank_ic": rank_ic(x, y), "n_rows": int(len(d))}
    if not math.isfinite(out["ic"]):
        return {**out, "t_stat": float("nan"), "t_method": "undefined IC", "lags": int(lags), "n_periods": 0}
    z = (x - x.mean()) / x.std() * (y - y.mean()) / y.std()
    codes, times = pd.factorize(_ts_ns(d["timestamp"]), sort=True)
    s = np.bincount(codes, z, len(times)) * len(times) / len(z)  # mean of s == the pooled correlation
    t, method = hac_t_stat(s, lags)
    return {**out, "t_stat": t, "t_method": method, "lags": int(lags), "n_periods": int(len(times))}


def lagged_target(df: pd.DataFrame, lag: int, target_col: str = "target") -> np.ndarray:
    """The target of the same symbol `lag` timestamps later (counted over the frame's distinct timestamps, as
    the backtest counts its delay), in df's row order; NaN where that row is missing. With `lag` = trade_delay
    d and an h-bar target this is the return from t+d to t+d+h: the one a book trading d bars after the signal
    earns. lag 0 is the target itself."""
    y = df[target_col].to_numpy(dtype=float)
    if int(lag) == 0 or len(df) == 0:
        return y
    times, tidx = np.unique(_ts_ns(df["timestamp"]), return_inverse=True)
    span = np.int64(len(times) + int(lag) + 1)
    key = pd.factorize(df["symbol"])[0].astype(np.int64) * span + tidx.ravel()
    order = np.argsort(key, kind="stable")
    want = key + int(lag)
    i = np.minimum(np.searchsorted(key[order], want), len(key) - 1)
    return np.where(key[order][i] == want, y[order][i], np.nan)


def named_ics(df: pd.DataFrame, lag: int, pred_col: str = "prediction", target_col: str = "target") -> dict:
    """The three named test ICs of a predictions frame against the target `lag` bars later (`lagged_target`,
    lag = the run's trade_delay: the return the book earns), and the oracle's at the same lag (None without
    one); the model's lag-0 figures beside them as `*_lag0` ("before the trade delay"). What summary.json and
    the runs table hold. NaN where undefined."""
    nan = float("nan")
    out: dict = {"ic_lag": int(lag)}
    oracle = "oracle" in df and df["oracle"].notna().any()
    traded = df.assign(_traded=lagged_target(df, lag, target_col))
    for who, col, d, tcol, tail in (("", pred_col, traded, "_traded", ""), ("oracle_", "oracle", traded, "_traded", ""),
                                    ("", pred_col, df, target_col, "_lag0")):
        if who and not oracle:
            out.update({f"oracle_{f}_ic": None for f in IC_FAMILIES})
            continue
        cs, day = ic_by_timestamp(d, col, tcol), ic_by_day(d, col, tcol)
        out[f"{who}cross_sectional_ic{tail}"] = float(cs["ic"].mean()) if len(cs) else nan
        out[f"{who}daily_ic{tail}"] = float(day["ic"].mean()) if len(day) else nan
        out[f"{who}pooled_ic{tail}"] = ic(d[col], d[tcol])
        if not who:
            out[f"cross_sectional_rank_ic{tail}"] = float(cs["rank_ic"].mean()) if len(cs) else nan
            out[f"daily_rank_ic{tail}"] = float(day["rank_ic"].mean()) if len(day) else nan
            out[f"pooled_rank_ic{tail}"] = rank_ic(d[col], d[tcol])
    return {**out, "test_rows": int(len(df))}


def family_summary(d: pd.DataFrame, family: str, lags: int, pred_col: str = "prediction",
                   target_col: str = "target") -> dict:
    """`ic_summary` (or `pooled_summary`) of one IC family."""
    if family == "cross_sectional":
        return ic_summary(ic_by_timestamp(d, pred_col, target_col), lags)
    if family == "daily":
        return ic_summary(ic_by_day(d, pred_col, target_col), lags)
    return pooled_summary(d, pred_col, target_col, lags)


def ic_decay(df: pd.DataFrame, family: str, overlap: int, max_lag: int = 10, pred_col: str = "prediction",
             target_col: str = "target") -> pd.DataFrame:
    """The IC of one family against the target 0..max_lag bars later (alphalens' "mean IC by period"): how
    long the signal lasts, and so what a delayed book can still take. Every lag's targets overlap their
    neighbours as the lag-0 ones do, so each t uses the same `overlap` HAC lags."""
    rows = []
    for lag in range(max_lag + 1):
        s = family_summary(df.assign(_lagged=lagged_target(df, lag, target_col)), family, overlap, pred_col,
                           "_lagged")
        rows.append({"lag": lag, "ic": s["ic"], "rank_ic": s["rank_ic"], "t_stat": s["t_stat"],
                     "n_periods": s["n_periods"]})
    return pd.DataFrame(rows)


def headline_family(df: pd.DataFrame) -> tuple[str, str]:
    """Which IC the report leads with for this universe, and why, in words."""
    per_ts = df.groupby(_ts_ns(df["timestamp"]))["symbol"].nunique()
    median = float(per_ts.median()) if len(per_ts) else 0.0
    if median >= MIN_PERIOD_ROWS:
        return "cross_sectional", (f"{median:g} symbols at a typical timestamp: the cross-sectional IC ranks them "
                                   f"against each other at each timestamp, as alphalens and Qlib compute it")
    if len(per_ts) and (per_ts.index // 86_400_000_000_000).value_counts().median() >= MIN_PERIOD_ROWS:
        return "daily", (f"{median:g} symbol(s) at a typical timestamp, too few to rank: the per-day IC pools "
                         f"each UTC day's bars")
    return "pooled", (f"{median:g} symbol(s) and too few bars a day for a per-timestamp or per-day IC: the pooled "
                      f"IC is one correlation over all test rows (a time-series IC)")


# ----------------------------------------------------------------------------------------------------
# direction, deciles, per symbol


def directional_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Share of sign(pred) == sign(target), counted only where both are non-zero and finite.

    A zero prediction is a no-call and a zero target has no direction, so neither counts as right or wrong;
    a predictor that never calls a direction (the zero baseline) gets NaN; `coverage` says how often it calls.
    """
    p, t = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    m = np.isfinite(p) & np.isfinite(t) & (p != 0) & (t != 0)
    return float((np.sign(p[m]) == np.sign(t[m])).mean()) if m.any() else float("nan")


def coverage(pred: np.ndarray) -> float:
    """Share of rows with a finite non-zero prediction (rows on which directional accuracy is measured)."""
    p = np.asarray(pred, dtype=float)
    return float((np.isfinite(p) & (p != 0)).mean()) if p.size else float("nan")


def decile_table(
    df: pd.DataFrame, pred_col: str = "prediction", target_col: str = "target", n_bins: int = 10
) -> pd.DataFrame:
    """Predicted vs realised mean target by prediction decile, pooled over symbols and time.

    Bins hold equal counts by prediction rank (ties broken by row order), so a constant prediction still bins.
    A monotone realised column is what a useful signal looks like; `realised_se` = std/sqrt(n) per bin.
    """
    d = _finite_rows(df, [pred_col, target_col])
    p = d[pred_col].to_numpy(dtype=float)
    order = np.argsort(p, kind="stable")
    rank = np.empty(p.size, dtype=np.int64)
    rank[order] = np.arange(p.size)
    bins = (rank * n_bins) // max(p.size, 1) + 1
    frame = pd.DataFrame({"decile": bins, "pred": p, "real": d[target_col].to_numpy(dtype=float)})
    g = frame.groupby("decile", sort=True)
    out = pd.DataFrame(
        {
            "n": g.size(),
            "pred_mean": g["pred"].mean(),
            "realised_mean": g["real"].mean(),
            "realised_se": g["real"].std(ddof=1) / np.sqrt(g.size()),
            "hit_rate": g["real"].apply(lambda s: float((s > 0).mean())),
        }
    )
    return out.reset_index()


def per_symbol_metrics(df: pd.DataFrame, pred_col: str = "prediction", target_col: str = "target") -> pd.DataFrame:
    """Time-series IC, rank IC, directional accuracy and n per symbol, then a pooled row named 'ALL'."""
    rows = []
    groups = [(str(s), g) for s, g in df.groupby("symbol", sort=True)] + [("ALL", df)]
    for sym, g in groups:
        p, t = g[pred_col].to_numpy(dtype=float), g[target_col].to_numpy(dtype=float)
        n = int((np.isfinite(p) & np.isfinite(t)).sum())
        rows.append(
            {
                "symbol": sym,
                "ic": ic(p, t),
                "rank_ic": rank_ic(p, t),
                "directional_accuracy": directional_accuracy(p, t),
                "n": n,
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# baselines


def ridge_fit(X: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, float]:
    """Closed-form ridge with an unpenalised intercept: w = (Xc'Xc + alpha I)^-1 Xc'yc on centred data.

    alpha is on the sum of squares (not per row). Rows with a non-finite feature or target are left out.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m = np.isfinite(y) & np.isfinite(X).all(axis=1)
    X, y = X[m], y[m]
    if len(y) == 0:
        raise ValueError("ridge_fit: no finite training rows")
    xm, ym = X.mean(axis=0), y.mean()
    Xc = X - xm
    w = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ (y - ym))
    return w, float(ym - xm @ w)


def baseline_predictions(
    df: pd.DataFrame,
    X_train: np.ndarray | None = None,
    y_train: np.ndarray | None = None,
    X_test: np.ndarray | None = None,
    ridge_alpha: float = 1.0,
) -> dict[str, np.ndarray]:
    """What the model must beat, on the same rows as `df`.

    zero: predicts 0 (IC undefined, PnL 0). momentum: sign of the last one-bar return (NaN -> 0).
    ridge: linear model on the feature row at t, fitted on the train rows only (X_test row-aligned with df,
    e.g. fs.X[df.row]); without X/y, df's own `ridge` column if it has one (a walk-forward's, fitted per fold),
    else skipped. oracle: the planted expected target (synthetic only).
    """
    n = len(df)
    out: dict[str, np.ndarray] = {"zero": np.zeros(n)}
    if "last_return" in df:
        out["momentum"] = np.sign(np.nan_to_num(df["last_return"].to_numpy(dtype=float), nan=0.0))
    if X_train is not None and y_train is not None and X_test is not None:
        X_test = np.asarray(X_test, dtype=np.float64)
        if len(X_test) != n:
            raise ValueError(f"X_test has {len(X_test)} rows, predictions have {n}: pass X[df.row]")
        w, b = ridge_fit(X_train, y_train, ridge_alpha)
        out["ridge"] = X_test @ w + b
    elif "ridge" in df:
        out["ridge"] = df["ridge"].to_numpy(dtype=float)
    if "oracle" in df and np.isfinite(df["oracle"].to_numpy(dtype=float)).any():
        out["oracle"] = df["oracle"].to_numpy(dtype=float)
    return out


def evaluate_all(
    df: pd.DataFrame,
    baselines: dict[str, np.ndarray],
    family: str = "cross_sectional",
    lags: int = 0,
    pred_col: str = "prediction",
    target_col: str = "target",
    **backtest_kw,
) -> pd.DataFrame:
    """One row per predictor (the model first, then the baselines), every number on the same rows: the
    three named ICs (against `target_col`: the report passes the target at the traded lag), the ICIR and
    overlap-robust t of `family` (with `lags`), direction, and the net Sharpe of `backtest(**backtest_kw)`
    with its standard error and PSR (`sharpe_inference`; per period too, for the deflated Sharpe)."""
    preds = {
        "model": df[pred_col].to_numpy(dtype=float),
        **{k: np.asarray(v, dtype=float) for k, v in baselines.items()},
    }
    rows = []
    for name, p in preds.items():
        d = df.assign(_p=p)
        cs = ic_summary(ic_by_timestamp(d, "_p", target_col), lags if family == "cross_sectional" else 0)
        day = ic_summary(ic_by_day(d, "_p", target_col), lags if family == "daily" else 0)
        pooled = pooled_summary(d, "_p", target_col, lags if family == "pooled" else 0)
        head = {"cross_sectional": cs, "daily": day, "pooled": pooled}[family]
        bt = backtest(d, "_p", **backtest_kw)
        inf = sharpe_inference(bt.pnl["net"].to_numpy(), bt.stats["periods_per_year"])
        rows.append(
            {
                "predictor": name,
                "cross_sectional_ic": cs["ic"],
                "cross_sectional_rank_ic": cs["rank_ic"],
                "daily_ic": day["ic"],
                "daily_rank_ic": day["rank_ic"],
                "pooled_ic": pooled["ic"],
                "icir": head.get("icir", float("nan")),
                "t_stat": head["t_stat"],
                "n_periods": head["n_periods"],
                "directional_accuracy": directional_accuracy(p, d[target_col].to_numpy(dtype=float)),
                "coverage": coverage(p),
                "sharpe_net": bt.stats["net"]["sharpe"],
                "sharpe_net_se": inf["se"],
                "sharpe_net_psr": inf["psr"],
                "sharpe_net_period": inf["sharpe_period"],
                "sharpe_net_se_period": inf["se_period"],
                "total_return_net": bt.stats["net"]["total_return"],
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# backtest


def sharpe(returns: np.ndarray, periods_per_year: float) -> float:
    """Annualised Sharpe mean/std(ddof=1) * sqrt(periods_per_year), zero risk-free rate (empyrical's
    `sharpe_ratio` with `annualization=periods_per_year`).

    A series that is all zero (never traded) has Sharpe 0; a constant non-zero one, or < 2 bars, has NaN.
    """
    r = np.asarray(returns, dtype=float)
    r = r[np.isfinite(r)]
    if r.size < 2:
        return float("nan")
    sd = r.std(ddof=1)
    if sd == 0:
        return 0.0 if r.mean() == 0 else float("nan")
    return float(r.mean() / sd * math.sqrt(periods_per_year))


def equity_curve(returns: np.ndarray | pd.Series) -> np.ndarray:
    """Compounded wealth of 1 invested: cumprod(1 + r), r simple per-bar portfolio returns."""
    return np.cumprod(1.0 + np.nan_to_num(np.asarray(returns, dtype=float)))


def max_drawdown(equity: np.ndarray) -> float:
    """Largest peak-to-trough loss as a positive fraction of the peak (0.2 = lost 20% from the high)."""
    e = np.asarray(equity, dtype=float)
    if e.size == 0:
        return float("nan")
    return float(np.max(1.0 - e / np.maximum.accumulate(e)))


def drawdown_curve(returns: np.ndarray | pd.Series) -> np.ndarray:
    """Underwater curve: equity / its running peak - 1 after each bar (0 at a new high, -0.2 = 20% below);
    the peak starts at the 1 invested, so a first-bar loss is a drawdown."""
    e = np.r_[1.0, equity_curve(returns)]
    return (e / np.maximum.accumulate(e) - 1.0)[1:]


def positions(
    df: pd.DataFrame,
    pred_col: str = "prediction",
    mode: str = "sign",
    cap: float = 1.0,
    scale_window: int = 500,
) -> np.ndarray:
    """Target position per row (before equal weighting), in df's row order.

    sign: sign(prediction). scaled: prediction / s, clipped to +-cap, where s is the median |prediction| of
    the same symbol over the previous `scale_window` rows (t excluded, so no look-ahead; needs 10 rows, or
    the whole window if shorter, before trading). Non-finite predictions or scales give a flat position.
    """
    p = df[pred_col].to_numpy(dtype=float)
    if mode == "sign":
        return np.sign(np.nan_to_num(p, nan=0.0))
    if mode != "scaled":
        raise ValueError(f"mode must be 'sign', 'scaled' or 'neutral', got {mode!r}")
    order = np.lexsort((_ts_ns(df["timestamp"]), pd.factorize(df["symbol"])[0]))
    absp = pd.Series(np.abs(p[order]))
    sym = df["symbol"].to_numpy()[order]
    min_periods = min(10, scale_window)
    scale_sorted = absp.groupby(sym).transform(
        lambda s: s.shift(1).rolling(scale_window, min_periods=min_periods).median()
    )
    scale = np.empty_like(p)
    scale[order] = scale_sorted.to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.clip(p / scale, -cap, cap)
    return np.where(np.isfinite(pos) & (scale > 0), pos, 0.0)


def signal_weights(df: pd.DataFrame, pred_col: str = "prediction", mode: str = "sign", cap: float = 1.0,
                   scale_window: int = 500) -> np.ndarray:
    """Portfolio weight per row at the row's own timestamp, before the trade delay, in df's row order.

    sign / scaled: the position (`positions`) / N_t, N_t the symbols with a row at t. neutral: the prediction
    demeaned across the symbols with a finite prediction at t, over the sum of |demeaned| (net 0, gross 1;
    flat when they all agree).
    """
    tcode = pd.factorize(_ts_ns(df["timestamp"]))[0]
    if mode != "neutral":
        return positions(df, pred_col, mode, cap, scale_window) / np.bincount(tcode)[tcode]
    p = df[pred_col].to_numpy(dtype=float)
    ok = np.isfinite(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(tcode[ok], p[ok], tcode.max() + 1) / np.bincount(tcode[ok], minlength=tcode.max() + 1)
        dev = np.where(ok, p - mean[tcode], 0.0)
        gross = np.bincount(tcode, np.abs(dev))[tcode]
        return np.where(gross > 0, dev / gross, 0.0)


@dataclass
class BacktestResult:
    """pnl: per timestamp `gross`, `net`, `buy_hold` simple portfolio returns, and `cost`, `turnover`,
    `exposure` (gross), `net_exposure`. stats: {'gross': {...}, 'net': {...}, 'buy_hold': {...}} each with
    total_return, annual_return, annual_volatility, sharpe, max_drawdown, turnover, hit_rate, n_bars; plus
    the settings used and the mean exposures."""

    pnl: pd.DataFrame
    stats: dict = field(default_factory=dict)


def _delayed(codes: np.ndarray, tidx: np.ndarray, w: np.ndarray, delay: int, n_times: int) -> np.ndarray:
    """The weight held at each row: the signal weight of the same symbol `delay` timestamps earlier (flat
    when that row is missing). Rows sorted by (symbol, time), so the keys below are sorted."""
    if delay == 0 or len(w) == 0:
        return w
    span = n_times + delay + 1
    src = codes.astype(np.int64) * span + tidx + delay  # the row each signal is executed at
    dst = codes.astype(np.int64) * span + tidx
    i = np.minimum(np.searchsorted(src, dst), len(src) - 1)
    return np.where(src[i] == dst, w[i], 0.0)


def _trade_flows(tidx: np.ndarray, sym: np.ndarray, w: np.ndarray, n_times: int) -> np.ndarray:
    """|weight change| per timestamp over a long frame sorted by (symbol, time); a missing row means flat.

    A row whose previous row of the same symbol is not at the previous timestamp opens from 0; a row whose
    next row is not at the next timestamp is closed at the next timestamp (if the sample still runs then).
    """
    same_prev = np.r_[False, (sym[1:] == sym[:-1]) & (tidx[1:] == tidx[:-1] + 1)]
    prev_w = np.where(same_prev, np.r_[0.0, w[:-1]], 0.0)
    flows = np.bincount(tidx, weights=np.abs(w - prev_w), minlength=n_times)
    closes = ~np.r_[same_prev[1:], False] & (tidx + 1 < n_times)
    flows += np.bincount(tidx[closes] + 1, weights=np.abs(w[closes]), minlength=n_times)
    return flows


def _stats(r: np.ndarray, turnover: np.ndarray, exposure: np.ndarray, ppy: float) -> dict:
    equity = np.r_[1.0, equity_curve(r)]  # start at 1 so a loss on the first bar is a drawdown
    held = exposure > 0
    years = r.size / ppy if ppy > 0 else float("nan")
    return {
        "total_return": float(equity[-1] - 1.0),
        "annual_return": float(equity[-1] ** (1.0 / years) - 1.0) if r.size and equity[-1] > 0 else float("nan"),
        "annual_volatility": float(r.std(ddof=1) * math.sqrt(ppy)) if r.size >= 2 else float("nan"),
        "sharpe": sharpe(r, ppy),
        "max_drawdown": max_drawdown(equity),
        "turnover": float(turnover.mean()) if turnover.size else float("nan"),
        "hit_rate": float((r[held] > 0).mean()) if held.any() else float("nan"),
        "n_bars": int(r.size),
    }


def backtest(
    df: pd.DataFrame,
    pred_col: str = "prediction",
    cost_bps: float = 5.0,
    bar_seconds: float | None = None,
    mode: str = "sign",
    cap: float = 1.0,
    scale_window: int = 500,
    periods_per_year: float | None = None,
    trade_delay: int = 1,
    annualised: dict | None = None,
) -> BacktestResult:
    """Long/short backtest of a prediction column, with costs on every change of weight.

    The weights of timestamp t (`signal_weights`: equal weight sign or scaled positions, or market-neutral)
    are traded `trade_delay` timestamps later, at that bar's close, and held over the next bar for the simple
    return exp(ret_next) - 1 (ret_next a log return; NaN -> 0). gross_t = sum w * r; cost_t = cost_bps/1e4 *
    sum |w_t - w_{t-1}| (the first position is a change from 0, a symbol without a row is flat, the book is
    not liquidated after the last bar); net = gross - cost; equity compounds: cumprod(1 + net). Sharpe,
    annual return and volatility use `periods_per_year`, else the calendar of df's timestamps
    (`annualisation`), or `annualised` (an `annualisation` dict the caller measured; its description is
    kept). Buy-and-hold is long 1/N_t of every symbol present, pays cost_bps once at entry and rebalances for
    free. `market_beta`: the net book's beta to buy-and-hold (the equal-weight market).
    """
    bar = float(bar_seconds) if bar_seconds else infer_bar_seconds(df)
    ann = annualised or annualisation(df, bar, periods_per_year or 0.0)
    ppy = ann["periods_per_year"]
    d = pd.DataFrame(
        {
            "timestamp": _ts_ns(df["timestamp"]),
            "symbol": df["symbol"].to_numpy(),
            "w": signal_weights(df, pred_col, mode, cap, scale_window),
            "r": np.expm1(np.nan_to_num(df["ret_next"].to_numpy(dtype=float), nan=0.0)),
        }
    ).sort_values(["symbol", "timestamp"], kind="stable")
    times, tidx = np.unique(d["timestamp"].to_numpy(), return_inverse=True)
    tidx = tidx.ravel()
    n_t = np.bincount(tidx, minlength=len(times))
    sym = d["symbol"].to_numpy()
    w = _delayed(pd.factorize(sym)[0], tidx, d["w"].to_numpy(), int(trade_delay), len(times))
    r = d["r"].to_numpy()
    gross = np.bincount(tidx, weights=w * r, minlength=len(times))
    turnover = _trade_flows(tidx, sym, w, len(times))
    net = gross - cost_bps / 1e4 * turnover
    exposure = np.bincount(tidx, weights=np.abs(w), minlength=len(times))
    net_exposure = np.bincount(tidx, weights=w, minlength=len(times))
    wb = 1.0 / n_t[tidx]
    bh = np.bincount(tidx, weights=wb * r, minlength=len(times))
    bh_turnover = _trade_flows(tidx, sym, wb, len(times))
    if len(bh):
        bh[0] -= cost_bps / 1e4 * bh_turnover[0]
    pnl = pd.DataFrame({"timestamp": pd.to_datetime(times, utc=True), "gross": gross, "net": net, "buy_hold": bh,
                        "cost": cost_bps / 1e4 * turnover, "turnover": turnover, "exposure": exposure,
                        "net_exposure": net_exposure})
    stats = {
        "gross": _stats(gross, turnover, exposure, ppy),
        "net": _stats(net, turnover, exposure, ppy),
        "buy_hold": _stats(bh, bh_turnover, np.ones(len(times)), ppy),
        "cost_bps": float(cost_bps),
        "mode": mode,
        "trade_delay": int(trade_delay),
        "bar_seconds": bar,
        "periods_per_year": ppy,
        "annualisation": ann["description"],
        "annualisation_method": ann["method"],
        "market_beta": market_beta(net, bh),
        "gross_exposure": float(exposure.mean()) if len(times) else float("nan"),
        "net_exposure": float(net_exposure.mean()) if len(times) else float("nan"),
        "abs_net_exposure": float(np.abs(net_exposure).mean()) if len(times) else float("nan"),
    }
    return BacktestResult(pnl=pnl, stats=stats)


def cost_sensitivity(bt: BacktestResult, costs_bps=COST_GRID_BPS) -> pd.DataFrame:
    """Net Sharpe, annual and total return of the same book at each cost (bps per unit of weight traded):
    net = gross - cost/1e4 * turnover, bar by bar."""
    gross, turnover = bt.pnl["gross"].to_numpy(), bt.pnl["turnover"].to_numpy()
    exposure, ppy = bt.pnl["exposure"].to_numpy(), bt.stats["periods_per_year"]
    rows = []
    for c in costs_bps:
        s = _stats(gross - float(c) / 1e4 * turnover, turnover, exposure, ppy)
        rows.append({"cost_bps": float(c), "net_sharpe": s["sharpe"], "net_annual_return": s["annual_return"],
                     "net_total_return": s["total_return"]})
    return pd.DataFrame(rows)


def break_even_bps(bt: BacktestResult) -> float:
    """The cost at which the net Sharpe reaches 0: net mean 0 <=> cost = 1e4 x mean(gross) / mean(turnover).
    NaN when the book loses before costs or never trades."""
    g, t = float(bt.pnl["gross"].mean()), float(bt.pnl["turnover"].mean())
    return 1e4 * g / t if len(bt.pnl) and g > 0 and t > 0 else float("nan")


# ----------------------------------------------------------------------------------------------------
# error bars and multiple testing

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


def newey_west_lags(n: int) -> int:
    """The usual plug-in bandwidth floor(4 (n/100)^(2/9)) (Newey and West 1994)."""
    return int(4 * (max(n, 1) / 100) ** (2 / 9))


def sharpe_inference(returns: np.ndarray, periods_per_year: float, lags: int | None = None) -> dict:
    """The Sharpe ratio with a standard error that allows for autocorrelation and fat tails, its 95% interval
    and the probabilistic Sharpe ratio against 0.

    Lo (2002), non-IID returns: SR = mu / sigma is a function of the moments (mu, sigma^2); its variance is
    g' S g / (n - 1) with g = (1/sigma, -mu / (2 sigma^3)) the gradient and S the long-run (Newey-West,
    Bartlett weights over `lags`, default `newey_west_lags`) covariance of (r - mu, (r - mu)^2 - sigma^2).
    With lags 0 this is Mertens' (2002) / Opdyke's (2007) IID formula (1 - skew SR + (kurtosis - 1)/4 SR^2) /
    (n - 1). PSR = Phi(SR / SE) (Bailey and Lopez de Prado 2012, with this SE). Per period, then annualised by
    sqrt(periods_per_year) (the interval; PSR does not depend on it).
    """
    r = np.asarray(returns, dtype=float)
    r = r[np.isfinite(r)]
    n = r.size
    nan = float("nan")
    out = {"sharpe": sharpe(r, periods_per_year), "se": nan, "ci_low": nan, "ci_high": nan, "psr": nan,
           "sharpe_period": nan, "se_period": nan, "lags": None, "n": int(n)}
    if n < 3 or r.std() == 0:
        return out
    lags = newey_west_lags(n) if lags is None else max(int(lags), 0)
    mu, d = r.mean(), r - r.mean()
    var = d @ d / n
    m = np.column_stack([d, d * d - var])
    S = m.T @ m / n
    for k in range(1, min(lags, n - 1) + 1):
        g = m[k:].T @ m[:-k] / n
        S += (1 - k / (lags + 1)) * (g + g.T)
    grad = np.array([1 / math.sqrt(var), -mu / (2 * var**1.5)])
    se_p = math.sqrt(max(grad @ S @ grad, 0.0) / (n - 1))
    sr_p = float(r.mean() / r.std(ddof=1))
    root = math.sqrt(periods_per_year)
    out.update(sharpe_period=sr_p, se_period=se_p, se=se_p * root, ci_low=(sr_p - 1.96 * se_p) * root,
               ci_high=(sr_p + 1.96 * se_p) * root, psr=_NORMAL.cdf(sr_p / se_p) if se_p > 0 else nan, lags=lags)
    return out


def expected_max_z(n_trials: int) -> float:
    """E[max of n_trials independent standard normals], Bailey and Lopez de Prado's (2014) approximation
    (1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)); 0 for one trial."""
    n = int(n_trials)
    if n <= 1:
        return 0.0
    return (1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / n) + EULER_GAMMA * _NORMAL.inv_cdf(1 - 1 / (n * math.e))


def deflated_sharpe(sharpe_period: float, se_period: float, n_trials: int, trial_variance: float) -> dict:
    """The deflated Sharpe ratio (Bailey and Lopez de Prado 2014): the PSR against SR0 = sqrt(V) E[max z of
    N trials], the Sharpe the best of N skill-less trials would show, V the variance of the trials' Sharpe
    ratios (per period). One trial: the PSR against 0."""
    sr0 = math.sqrt(max(trial_variance, 0.0)) * expected_max_z(n_trials) if n_trials > 1 else 0.0
    ok = math.isfinite(sharpe_period) and math.isfinite(se_period) and se_period > 0
    return {"dsr": _NORMAL.cdf((sharpe_period - sr0) / se_period) if ok else float("nan"),
            "sr0_period": sr0, "n_trials": int(n_trials)}


def deflated_t(t: float, n_trials: int) -> float:
    """The IC's t-statistic deflated the same way: Phi(t - E[max z of N trials]), the probability that the
    best of N null t-statistics (variance 1) would not reach it."""
    return _NORMAL.cdf(t - expected_max_z(n_trials)) if math.isfinite(t) else float("nan")


def break_even_interval(bt: BacktestResult, block: int, samples: int, seed: int) -> dict:
    """A 95% moving-block bootstrap interval of the break-even cost 1e4 mean(gross) / mean(turnover): blocks
    of `block` bars of (gross, turnover) pairs resampled `samples` times (numpy's generator seeded with
    `seed`, so the interval is the same every time). Negative bounds: losing before costs."""
    g, t = bt.pnl["gross"].to_numpy(dtype=float), bt.pnl["turnover"].to_numpy(dtype=float)
    n = g.size
    nan = float("nan")
    if n < 2 or samples < 1 or not t.sum() > 0:
        return {"low": nan, "high": nan, "block": int(block), "samples": int(samples), "seed": int(seed)}
    block = int(min(max(block, 1), n))
    k = -(-n // block)
    starts = np.random.default_rng(seed).integers(0, n - block + 1, size=(samples, k))
    idx = (starts[:, :, None] + np.arange(block)).reshape(samples, -1)[:, :n]
    with np.errstate(invalid="ignore", divide="ignore"):
        be = 1e4 * g[idx].mean(axis=1) / t[idx].mean(axis=1)
    be = be[np.isfinite(be)]
    low, high = (np.quantile(be, [0.025, 0.975]) if be.size else (nan, nan))
    return {"low": float(low), "high": float(high), "block": block, "samples": int(samples), "seed": int(seed)}


def bootstrap_block(n: int, horizon: int, trade_delay: int) -> int:
    """Block length: n^(1/3) bars (the usual rate), at least the bars one position's return spans."""
    return max(int(round(max(n, 1) ** (1 / 3))), int(horizon) + int(trade_delay))


def market_beta(book: np.ndarray, market: np.ndarray) -> float:
    """The book's beta to the equal-weight market: cov(book, market) / var(market) over the bars."""
    b, m = np.asarray(book, dtype=float), np.asarray(market, dtype=float)
    ok = np.isfinite(b) & np.isfinite(m)
    if ok.sum() < 3 or m[ok].std() == 0:
        return float("nan")
    b, m = b[ok], m[ok]
    return float(((b - b.mean()) @ (m - m.mean())) / ((m - m.mean()) @ (m - m.mean())))


# ----------------------------------------------------------------------------------------------------
# words for what the data is, and for figures that cannot be right

MAX_PLAUSIBLE_SHARPE = 10.0
MAX_PLAUSIBLE_ANNUAL_RETURN = 10.0  # 1000%


def resolve_position_mode(df: pd.DataFrame, mode: str, min_symbols: int) -> tuple[str, str]:
    """`auto`: neutral when a typical timestamp has at least `min_symbols` symbols (a cross-section to rank),
    else sign. Returns (mode, why in words)."""
    if mode != "auto":
        return mode, "as given"
    per_ts = df.groupby(_ts_ns(df["timestamp"]))["symbol"].nunique()
    median = float(per_ts.median()) if len(per_ts) else 0.0
    if median >= min_symbols:
        return "neutral", f"auto: {median:g} symbols at a typical timestamp (>= {min_symbols}): market-neutral"
    return "sign", f"auto: {median:g} symbol(s) at a typical timestamp (< {min_symbols}): sign of each prediction"


def bar_words(seconds: float) -> str:
    """A bar size as a reader says it: '1 day', '5 min', '1 hour', '30 s'."""
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return "unknown"
    for unit, size in (("week", 604_800), ("day", 86_400), ("hour", 3_600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            k = int(seconds // size)
            return f"{k} {unit}" + ("s" if k > 1 and unit != "min" else "")
    return f"{seconds:g} s"


def implausible(sharpe_value: float | None, annual_return: float | None) -> list[str]:
    """Reasons why a book's figures cannot be taken at face value: an annualised return above 1000% or a
    Sharpe above 10 is no market's (a short test span extrapolated, a look-ahead, a bad print)."""
    out = []
    if annual_return is not None and math.isfinite(annual_return) and annual_return > MAX_PLAUSIBLE_ANNUAL_RETURN:
        out.append(f"annual return {annual_return * 100:,.4g}% is above {MAX_PLAUSIBLE_ANNUAL_RETURN:.0%}: a short "
                   f"test span compounded to a year, a look-ahead, or a bad print")
    if sharpe_value is not None and math.isfinite(sharpe_value) and abs(sharpe_value) > MAX_PLAUSIBLE_SHARPE:
        out.append(f"Sharpe {sharpe_value:.3g} is beyond {MAX_PLAUSIBLE_SHARPE:g}: no traded book holds one; look "
                   f"for a look-ahead, a zero-cost trade at the signal's own close, or too few periods")
    return out
