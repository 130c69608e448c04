"""Did the model learn anything real, would the signal survive costs, did the GPU work?

Metrics only: functions of a predictions frame (`runs.read_predictions`) that return plain pandas frames and
dicts; `report.py` assembles them, `plots.py` draws them, `runs.py` reads the files.

Conventions (the numbers in the report depend on them):
- IC is a per-period correlation averaged over periods (as Qlib does), never one pooled correlation that a few
  volatile days dominate. The period depends on the data: intraday bars -> the UTC day, pooling every symbol's
  bars of that day; daily or longer bars with >= 3 symbols -> one cross-section per timestamp; daily bars with
  1-2 symbols -> the calendar month over time. Periods with fewer than 3 rows or a constant side are dropped.
- Annualisation assumes 24/7 markets: bars per year = 365.25 * 86400 / bar_seconds. For exchange-traded daily
  bars (~252 sessions a year) pass `periods_per_year` to `backtest` instead.
- Backtest positions are taken at the close of bar t and earn the simple return exp(ret_next) - 1 of the
  next bar; portfolios are equal weight over the symbols present at t; a symbol without a row at t is flat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tradelib.data import bar_sizes_ns, ns_since_epoch

SECONDS_PER_YEAR = 365.25 * 86400.0
DAY_SECONDS = 86400.0
MIN_PERIOD_ROWS = 3  # a correlation over fewer rows is noise, and over 2 rows it is always +-1


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


def bars_per_year(bar_seconds: float) -> float:
    """24/7 convention: every bar of the calendar year trades (crypto-style data)."""
    return SECONDS_PER_YEAR / float(bar_seconds)


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
# information coefficient


def period_kind(bar_seconds: float, n_symbols: int) -> str:
    """Which period an IC is measured over: 'day' (intraday bars), 'timestamp' (cross-section), 'month'."""
    if bar_seconds < DAY_SECONDS:
        return "day"
    return "timestamp" if n_symbols >= MIN_PERIOD_ROWS else "month"


def _period_key(ts: pd.Series, kind: str) -> pd.Series:
    if kind == "day":
        return ts.dt.floor("D")
    if kind == "timestamp":
        return ts
    return ts.dt.tz_convert(None).dt.to_period("M").dt.start_time.dt.tz_localize("UTC")


def ic_by_period(
    df: pd.DataFrame,
    pred_col: str = "prediction",
    target_col: str = "target",
    bar_seconds: float | None = None,
) -> pd.DataFrame:
    """Pearson IC and Spearman rank IC per period (see the module docstring); columns period, ic, rank_ic, n.

    `bar_seconds=None` infers the bar size from the timestamps. Rows with a non-finite prediction or target
    are left out; periods with n < 3 or a constant prediction/target are dropped, not kept as NaN.
    """
    cols = ["period", "ic", "rank_ic", "n"]
    d = _finite_rows(df, [pred_col, target_col])
    if len(d) == 0:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    bar = float(bar_seconds) if bar_seconds else infer_bar_seconds(d)
    key = _period_key(_timestamps(d["timestamp"]), period_kind(bar, d["symbol"].nunique()))
    codes, periods = pd.factorize(key, sort=True)  # integer codes: grouping on them is fast
    x, y = d[pred_col].to_numpy(dtype=float), d[target_col].to_numpy(dtype=float)
    ic_, n = _group_corr(codes, len(periods), x, y)
    rx = pd.Series(x).groupby(codes).rank().to_numpy()
    ry = pd.Series(y).groupby(codes).rank().to_numpy()
    rank_ic_, _ = _group_corr(codes, len(periods), rx, ry)
    out = pd.DataFrame({"period": periods, "ic": ic_, "rank_ic": rank_ic_, "n": n})
    return out.dropna(subset=["ic", "rank_ic"]).reset_index(drop=True)[cols]


def ic_summary(ic_df: pd.DataFrame) -> dict:
    """Mean IC and its significance across periods: ICIR = mean/std, t = ICIR * sqrt(n_periods)."""
    ics = ic_df["ic"].to_numpy(dtype=float) if len(ic_df) else np.array([])
    ranks = ic_df["rank_ic"].to_numpy(dtype=float) if len(ic_df) else np.array([])
    n = int(ics.size)
    nan = float("nan")
    mean = float(ics.mean()) if n else nan
    std = float(ics.std(ddof=1)) if n >= 2 else nan
    icir = mean / std if n >= 2 and std > 0 else nan
    rstd = float(ranks.std(ddof=1)) if n >= 2 else nan
    return {
        "ic": mean,
        "rank_ic": float(ranks.mean()) if n else nan,
        "ic_std": std,
        "icir": icir,
        "rank_icir": float(ranks.mean()) / rstd if n >= 2 and rstd > 0 else nan,
        "t_stat": icir * math.sqrt(n) if n >= 2 else nan,
        "n_periods": n,
        "positive_share": float((ics > 0).mean()) if n else nan,
    }


def pooled_ic(df: pd.DataFrame, pred_col: str = "prediction", target_col: str = "target") -> dict:
    """One Pearson correlation over every (symbol, time) row pooled, for the model and for the oracle on the
    same rows: the run summary's quick figure. The report's per-period ICs are the ones to read."""
    oracle = ic(df["oracle"], df[target_col]) if "oracle" in df and df["oracle"].notna().any() else None
    return {"pooled_ic": ic(df[pred_col], df[target_col]), "oracle_pooled_ic": oracle, "test_rows": int(len(df))}


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
    ridge: linear model on the feature row at t, fitted on the train rows only (skipped without X/y; X_test
    must be row-aligned with df, e.g. fs.X[df.row]). oracle: the planted expected target (synthetic only).
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
    if "oracle" in df and np.isfinite(df["oracle"].to_numpy(dtype=float)).any():
        out["oracle"] = df["oracle"].to_numpy(dtype=float)
    return out


def evaluate_all(
    df: pd.DataFrame,
    baselines: dict[str, np.ndarray],
    bar_seconds: float | None = None,
    cost_bps: float = 5.0,
    mode: str = "sign",
    pred_col: str = "prediction",
    target_col: str = "target",
) -> pd.DataFrame:
    """One row per predictor (the model first, then the baselines), every number on the same rows."""
    bar = float(bar_seconds) if bar_seconds else infer_bar_seconds(df)
    preds = {
        "model": df[pred_col].to_numpy(dtype=float),
        **{k: np.asarray(v, dtype=float) for k, v in baselines.items()},
    }
    rows = []
    for name, p in preds.items():
        d = df.assign(_p=p)
        s = ic_summary(ic_by_period(d, "_p", target_col, bar))
        bt = backtest(d, "_p", cost_bps, bar, mode=mode)
        rows.append(
            {
                "predictor": name,
                "ic": s["ic"],
                "rank_ic": s["rank_ic"],
                "icir": s["icir"],
                "t_stat": s["t_stat"],
                "n_periods": s["n_periods"],
                "directional_accuracy": directional_accuracy(p, d[target_col].to_numpy(dtype=float)),
                "coverage": coverage(p),
                "sharpe_net": bt.stats["net"]["sharpe"],
                "total_return_net": bt.stats["net"]["total_return"],
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# backtest


def sharpe(returns: np.ndarray, periods_per_year: float) -> float:
    """Annualised Sharpe mean/std(ddof=1) * sqrt(periods_per_year), zero risk-free rate.

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
        raise ValueError(f"mode must be 'sign' or 'scaled', got {mode!r}")
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


@dataclass
class BacktestResult:
    """pnl: per timestamp `gross`, `net`, `buy_hold` simple portfolio returns, and `cost`, `turnover`,
    `exposure`. stats: {'gross': {...}, 'net': {...}, 'buy_hold': {...}} each with total_return, sharpe,
    max_drawdown, turnover, hit_rate, n_bars; plus the settings used."""

    pnl: pd.DataFrame
    stats: dict = field(default_factory=dict)


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
    return {
        "total_return": float(equity[-1] - 1.0),
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
) -> BacktestResult:
    """Long/short equal-weight backtest of a prediction column, with costs on every change of position.

    At each timestamp t every symbol present gets weight position/N_t (N_t = symbols with a row at t;
    positions from `positions`), held over the next bar for the simple return exp(ret_next) - 1 (ret_next is
    a log return; NaN -> 0). gross_t = sum w * r; cost_t = cost_bps/1e4 * sum |w_t - w_{t-1}| (the first
    position is a change from 0, a symbol without a row is flat, the book is not liquidated after the last
    bar); net = gross - cost. Equity compounds: cumprod(1 + net). Sharpe uses bars per year =
    365.25*86400/bar_seconds (24/7) unless `periods_per_year` is given. Buy-and-hold is long 1/N_t of every
    symbol present, pays cost_bps once at entry and rebalances for free.
    """
    bar = float(bar_seconds) if bar_seconds else infer_bar_seconds(df)
    ppy = float(periods_per_year) if periods_per_year else bars_per_year(bar)
    pos_all = positions(df, pred_col, mode, cap, scale_window)
    d = pd.DataFrame(
        {
            "timestamp": _ts_ns(df["timestamp"]),
            "symbol": df["symbol"].to_numpy(),
            "pos": pos_all,
            "r": np.expm1(np.nan_to_num(df["ret_next"].to_numpy(dtype=float), nan=0.0)),
        }
    ).sort_values(["symbol", "timestamp"], kind="stable")
    times, tidx = np.unique(d["timestamp"].to_numpy(), return_inverse=True)
    tidx = tidx.ravel()
    n_t = np.bincount(tidx, minlength=len(times))
    sym = d["symbol"].to_numpy()
    w = d["pos"].to_numpy() / n_t[tidx]
    r = d["r"].to_numpy()
    gross = np.bincount(tidx, weights=w * r, minlength=len(times))
    turnover = _trade_flows(tidx, sym, w, len(times))
    cost = cost_bps / 1e4 * turnover
    net = gross - cost
    exposure = np.bincount(tidx, weights=np.abs(w), minlength=len(times))
    wb = 1.0 / n_t[tidx]
    bh = np.bincount(tidx, weights=wb * r, minlength=len(times))
    bh_turnover = _trade_flows(tidx, sym, wb, len(times))
    if len(bh):
        bh[0] -= cost_bps / 1e4 * bh_turnover[0]
    pnl = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(times, utc=True),
            "gross": gross,
            "net": net,
            "buy_hold": bh,
            "cost": cost,
            "turnover": turnover,
            "exposure": exposure,
        }
    )
    ones = np.ones(len(times))
    stats = {
        "gross": _stats(gross, turnover, exposure, ppy),
        "net": _stats(net, turnover, exposure, ppy),
        "buy_hold": _stats(bh, bh_turnover, ones, ppy),
        "cost_bps": float(cost_bps),
        "mode": mode,
        "bar_seconds": bar,
        "periods_per_year": ppy,
    }
    return BacktestResult(pnl=pnl, stats=stats)
