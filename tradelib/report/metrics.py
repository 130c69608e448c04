"""Did the model learn anything real? The signal's measures: ICs, their overlap-robust t, deciles, baselines.

Functions of a predictions frame (`runs.read_predictions`) that return plain pandas frames and dicts;
`backtest.py` trades the signal, `inputs.py` and `report.py` assemble the report, `plots.py` draws it.
docs/metrics.md says which figure is which and how each is computed.

Conventions (the numbers in the report depend on them):
- Three ICs, each named for what it is. `cross_sectional`: the correlation across symbols at each timestamp
  (timestamps with >= 3 symbols), averaged over timestamps: what alphalens and Qlib call IC. `daily`: the
  correlation over every row of a session (all symbols and bars pooled), averaged over days. `pooled`: one
  correlation over every test row. Each comes as Pearson (`ic`) and Spearman (`rank_ic`).
  The one that leads is the IC of the bet the book makes (`headline_family`).
- t-statistics are overlap-robust: a target over h bars shares h-1 bars with the next one, so consecutive IC
  periods are correlated. `hac_t_stat` uses the Hansen-Hodrick HAC variance (equal weights on the lags the
  targets overlap, h-1 for per-timestamp ICs). "Significant" is said only of that figure. The decile table's
  error bars use the same variance (`hac_se`) over per-timestamp sums (Driscoll-Kraay), not std/sqrt(rows).
- Annualisation comes from the data's own calendar (`sessions.calendar`): the distinct timestamps a year, counted
  in whole weeks with gaps over ten days left out (~252 for daily stock bars, 365.25 x 288 for 5-minute bars of a
  24/7 market); or a `periods_per_year` given by the researcher.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tradelib.data.clean import bar_sizes_ns
from tradelib.data.load import UTC, ns_since_epoch
from tradelib.data.sessions import DAY_NS, calendar, day_start
from tradelib.data.sessions import bar_words as bar_words  # (the report says bar sizes as the quality report does)

MIN_PERIOD_ROWS = 3  # a correlation over fewer rows is noise, and over 2 rows it is always +-1
IC_FAMILIES = ("cross_sectional", "daily", "pooled")
FAMILY_WORDS = {"cross_sectional": "cross-sectional IC (per timestamp)", "daily": "per-day IC",
                "pooled": "pooled IC (all test rows)"}


# ----------------------------------------------------------------------------------------------------
# small helpers


def _timestamps(col: pd.Series) -> pd.Series:
    """Timestamps as datetime64[UTC], whether stored as datetimes or as int64 ns (the FeatureSet layout)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
    return pd.to_datetime(col, utc=True)


def ts_ns(col: pd.Series) -> np.ndarray:
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
    ts = ts_ns(df["timestamp"])
    order = np.lexsort((ts, codes))
    bars = bar_sizes_ns(codes[order], ts[order], len(uniques))
    bars = bars[bars > 0]
    if bars.size == 0:
        raise ValueError("cannot infer the bar size: no symbol has two rows at different times; pass bar_seconds")
    return float(np.median(bars)) / 1e9


def session_dates(df: pd.DataFrame, zone: str = UTC) -> pd.Series:
    """Each row's session, as the date it starts on on the market's clock `zone` (`sessions.day_start`; the date
    written as that day's UTC midnight): the per-day IC's days, the build's sessions, so a session across midnight
    (Sydney's 23:00 to 05:00 UTC, Globex's 18:00 to 17:00 New York) is one day, not two halves."""
    when = _timestamps(df["timestamp"])
    try:
        bar = infer_bar_seconds(df) * 1e9
    except ValueError:  # no symbol with two bars: no night between them to find
        bar = float(DAY_NS)
    wall = when.dt.tz_convert(zone).dt.tz_localize(None)
    return (wall - pd.Timedelta(int(day_start(ts_ns(when), bar, zone)), "ns")).dt.floor("D").dt.tz_localize(UTC)


def annualisation(df: pd.DataFrame, bar_seconds: float | None = None, *, periods_per_year: float,
                  zone: str = UTC) -> dict:
    """Periods per year and how they were found: `periods_per_year` when given (> 0), else the calendar of
    the frame's timestamps (`sessions.calendar`, its days on the market's clock `zone`; pass the longest span you
    have, e.g. every split)."""
    if periods_per_year and periods_per_year > 0:
        return {"periods_per_year": float(periods_per_year), "method": "given",
                "description": f"given: periods_per_year = {float(periods_per_year):g}"}
    bar = float(bar_seconds) if bar_seconds else infer_bar_seconds(df)
    return calendar(ts_ns(df["timestamp"]), bar, zone).to_dict()


def symbols_per_timestamp(df: pd.DataFrame) -> pd.Series:
    """How many symbols have a row at each timestamp (indexed by int64 ns)."""
    return df.groupby(ts_ns(df["timestamp"]))["symbol"].nunique()


def typical_symbols(per_ts: pd.Series) -> float:
    """The median number of symbols at a timestamp (of `symbols_per_timestamp`): the cross-section a ranking or a
    neutral book sees."""
    return float(per_ts.median()) if len(per_ts) else 0.0


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


def ic_by_day(df: pd.DataFrame, pred_col: str = "prediction", target_col: str = "target",
              zone: str = UTC) -> pd.DataFrame:
    """The per-day IC: one correlation over every row of a session (`session_dates` on the market's clock `zone`),
    all symbols and bars pooled (for daily bars this is the cross-sectional IC). Columns period (the day), ic,
    rank_ic, n."""
    d = _finite_rows(df, [pred_col, target_col])
    return _ic_by_key(d, session_dates(d, zone), pred_col, target_col)


def hac_se(x: np.ndarray, lags: int) -> tuple[float, str]:
    """Standard error of the mean of a series whose neighbours up to `lags` apart may be correlated.

    Hansen-Hodrick: the long-run variance gamma_0 + 2 * sum_{k=1..lags} gamma_k (equal weights: the right
    ones for the overlap of h-bar targets, which correlates lags 1..h-1 and no further). When that variance is
    not positive (short, noisy series) Newey-West's Bartlett weights over 2 x lags take over. Either is divided
    by its expectation on independent periods of variance 1, (n-1)/n - 2/n^2 * sum_k w_k (n-k) (for equal weights
    (n-lags)(n-lags-1)/n^2): the gammas are taken about the series' own mean, which pulls each lag's product
    towards 0, and at 19 lags over 250 periods their sum read 15% low (with n/(n-1) alone a useless signal's t
    at h = 20 over 250 days passed |t| >= 1.96 in 11% of samples, now 8%; docs/metrics.md). So it is unbiased
    there at any lags, and lags = 0 gives the ordinary std/sqrt(n). Returns (s.e., the method in words); NaN
    when the series is too short for its lags.
    """
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    n, lags = x.size, max(int(lags), 0)
    if n < 2 or n <= lags + 1:
        return float("nan"), f"too few periods ({n}) for {lags} lags"
    d = x - x.mean()
    w = np.ones(lags + 1)
    gamma = np.array([d[k:] @ d[: n - k] / n for k in range(lags + 1)])
    lrv, method = gamma[0] + 2 * gamma[1:].sum(), f"Hansen-Hodrick HAC, {lags} lags"
    if lags == 0:
        method = "iid (no overlap between IC periods)"
    elif lrv <= 0:
        wide = 2 * lags
        gamma = np.array([d[k:] @ d[: n - k] / n for k in range(min(wide, n - 1) + 1)])
        w = 1 - np.arange(len(gamma)) / (wide + 1)
        lrv, method = gamma[0] + 2 * (w[1:] * gamma[1:]).sum(), f"Newey-West HAC, {wide} lags"
    k = np.arange(1, len(w))
    lrv /= (n - 1) / n - 2 * (w[1:] * (n - k)).sum() / n**2  # its expectation on independent periods
    return math.sqrt(max(lrv, 0.0) / n), method


def hac_t_stat(x: np.ndarray, lags: int) -> tuple[float, str]:
    """t-statistic of the mean of a series whose neighbours up to `lags` apart may be correlated: its mean over
    `hac_se` (Hansen-Hodrick, Newey-West where that variance is not positive). Returns (t, the method in words);
    0 for a series of zeros, NaN for a constant non-zero one or one too short for its lags."""
    se, method = hac_se(x, lags)
    if math.isnan(se):
        return se, method
    x = np.asarray(x, dtype=float)
    mean = float(x[np.isfinite(x)].mean())
    if se <= 0:
        return (0.0 if mean == 0 else float("nan")), method
    return mean / se, method


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


def _pooled_shares(codes: np.ndarray, n_times: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """s_t = sum_i zx_it * zy_it * T / N over the rows of timestamp code t (z standardised over all N rows, T
    timestamps): the mean of s over timestamps is the pooled correlation of x and y."""
    z = (x - x.mean()) / x.std() * (y - y.mean()) / y.std()
    return np.bincount(codes, z, n_times) * n_times / len(z)


def pooled_by_timestamp(df: pd.DataFrame, pred_col: str = "prediction", target_col: str = "target") -> pd.DataFrame:
    """Each timestamp's share of the pooled IC (`_pooled_shares`; their mean is the pooled IC), and of the pooled
    rank IC on the rows' ranks among all rows: the pooled IC as a series over time. A share is not a correlation
    and can exceed 1. Columns period, ic, rank_ic, n; empty where the pooled IC is undefined."""
    d = _finite_rows(df, [pred_col, target_col])
    x, y = d[pred_col].to_numpy(dtype=float), d[target_col].to_numpy(dtype=float)
    if not math.isfinite(ic(x, y)):
        return pd.DataFrame({c: pd.Series(dtype=float) for c in ("period", "ic", "rank_ic", "n")})
    codes, times = pd.factorize(_timestamps(d["timestamp"]), sort=True)
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return pd.DataFrame({"period": times, "ic": _pooled_shares(codes, len(times), x, y),
                         "rank_ic": _pooled_shares(codes, len(times), rx, ry),
                         "n": np.bincount(codes, minlength=len(times))})


def pooled_summary(df: pd.DataFrame, pred_col: str = "prediction", target_col: str = "target",
                   lags: int = 0) -> dict:
    """The pooled IC (one correlation over every row) and its t: the HAC t of the mean of each timestamp's
    share (`_pooled_shares`), whose mean is the pooled correlation."""
    d = _finite_rows(df, [pred_col, target_col])
    x, y = d[pred_col].to_numpy(dtype=float), d[target_col].to_numpy(dtype=float)
    out = {"ic": ic(x, y), "rank_ic": rank_ic(x, y), "n_rows": int(len(d))}
    if not math.isfinite(out["ic"]):
        return {**out, "t_stat": float("nan"), "t_method": "undefined IC", "lags": int(lags), "n_periods": 0}
    codes, times = pd.factorize(ts_ns(d["timestamp"]), sort=True)
    t, method = hac_t_stat(_pooled_shares(codes, len(times), x, y), lags)
    return {**out, "t_stat": t, "t_method": method, "lags": int(lags), "n_periods": int(len(times))}


def shift_rows(symbols, ts: np.ndarray, values: np.ndarray, lag: int, fill: float) -> np.ndarray:
    """Each row's value of the same symbol `lag` timestamps later (earlier when negative), counted over the
    distinct timestamps `ts` (int64 ns) of the frame, in the rows' own order; `fill` where that row is missing."""
    values = np.asarray(values, dtype=float)
    if int(lag) == 0 or len(values) == 0:
        return values
    times, tidx = np.unique(ts, return_inverse=True)
    span = np.int64(len(times) + abs(int(lag)) + 1)
    key = pd.factorize(symbols)[0].astype(np.int64) * span + tidx.ravel()
    order = np.argsort(key, kind="stable")
    want = key + int(lag)
    i = np.minimum(np.searchsorted(key[order], want), len(key) - 1)
    return np.where(key[order][i] == want, values[order][i], fill)


def lagged_target(df: pd.DataFrame, lag: int, target_col: str = "target") -> np.ndarray:
    """The target of the same symbol `lag` timestamps later (counted over the frame's distinct timestamps, as
    the backtest counts its delay), in df's row order; NaN where that row is missing. With `lag` = trade_delay
    d and an h-bar target this is the return from t+d to t+d+h: the one a book trading d bars after the signal
    earns. lag 0 is the target itself. In a walk-forward's stitched predictions (a `fold` column) the shift stays
    inside each fold: the frame's next timestamp after a fold's last is the next fold's first test bar, after the
    purge gap, whose target is not the return the signal's book earns; those rows are NaN, as in the fold alone."""
    who = df["symbol"] if "fold" not in df else pd.MultiIndex.from_arrays([df["symbol"], df["fold"]])
    return shift_rows(who, ts_ns(df["timestamp"]), df[target_col].to_numpy(dtype=float), lag, np.nan)


def constant_predictions(pred: pd.Series | np.ndarray) -> bool:
    """Whether the finite predictions are one value (or none): a model that outputs a constant has learned nothing
    from its inputs, and every IC of it is undefined (NaN) for that reason, not for want of rows."""
    p = np.asarray(pred, dtype=float)
    p = p[np.isfinite(p)]
    return len(p) == 0 or bool(p.min() == p.max())


def named_ics(df: pd.DataFrame, lag: int, pred_col: str = "prediction", target_col: str = "target",
              zone: str = UTC) -> dict:
    """The three named test ICs of a predictions frame against the target `lag` bars later (`lagged_target`,
    lag = the run's trade_delay: the return the book earns), and the oracle's at the same lag (None without
    one); the model's lag-0 figures beside them as `*_lag0` ("before the trade delay"). What summary.json and
    the runs table hold. NaN where undefined; `constant_predictions` says when that is because the model's
    predictions are one value. `zone`: the market's clock, whose days the per-day IC reads (as the report's)."""
    out: dict = {"ic_lag": int(lag)}
    oracle = "oracle" in df and df["oracle"].notna().any()
    traded = df.assign(_traded=lagged_target(df, lag, target_col))
    for who, col, d, tcol, tail in (("", pred_col, traded, "_traded", ""), ("oracle_", "oracle", traded, "_traded", ""),
                                    ("", pred_col, df, target_col, "_lag0")):
        for f in IC_FAMILIES:
            s = family_summary(d, f, 0, col, tcol, zone) if oracle or not who else {"ic": None}
            out[f"{who}{f}_ic{tail}"] = s["ic"]
            if not who:
                out[f"{f}_rank_ic{tail}"] = s["rank_ic"]
    return {**out, "test_rows": int(len(df)), "constant_predictions": constant_predictions(df[pred_col])}


def family_summary(d: pd.DataFrame, family: str, lags: int, pred_col: str = "prediction",
                   target_col: str = "target", zone: str = UTC) -> dict:
    """`ic_summary` (or `pooled_summary`) of one IC family; the per-day IC's days on the market's clock `zone`."""
    if family == "cross_sectional":
        return ic_summary(ic_by_timestamp(d, pred_col, target_col), lags)
    if family == "daily":
        return ic_summary(ic_by_day(d, pred_col, target_col, zone), lags)
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


def without_best(df: pd.DataFrame, family: str, ic_df: pd.DataFrame, share: float = 0.01,
                 pred_col: str = "prediction", target_col: str = "target", zone: str = UTC) -> dict:
    """The sceptic's question of an IC: does it rest on a few periods? The family's IC recomputed over df's rows
    outside the ceil(`share` x n) periods that carried it most (the largest ICs in the direction of its sign; ties,
    the earliest first) and as many that went most against it (a pooled IC, whose per-timestamp shares are
    unbounded, can be one crash week). Trimmed on both sides, an IC spread evenly over its periods keeps its
    value at any n; trimmed only of its best it would fall by about 0.027 sd per period whatever n, which on
    20,000 periods halves an IC of t 4. `ic_df`: the family's IC per period (period, ic) on df
    (`ReportInputs.ic_series`); `zone`: the market's clock, whose days the per-day IC reads. Returns ic (NaN when
    nothing is left), periods (how many left out on each side), of (n), best (the period that carried it most)."""
    ic_df = ic_df[np.isfinite(ic_df["ic"].to_numpy(dtype=float))]
    x = ic_df["ic"].to_numpy(dtype=float)
    k = int(math.ceil(share * x.size))
    if x.size <= 2 * k:
        return {"ic": float("nan"), "periods": k, "of": int(x.size), "best": None}
    order = np.argsort(-np.sign(x.mean()) * x, kind="stable")
    left = _timestamps(ic_df["period"].iloc[np.r_[order[:k], order[-k:]]])
    when = session_dates(df, zone) if family == "daily" else _timestamps(df["timestamp"])
    kept = df.loc[~when.isin(left).to_numpy()]
    return {"ic": family_summary(kept, family, 0, pred_col, target_col, zone)["ic"], "periods": k, "of": int(x.size),
            "best": left.iloc[0].isoformat()}


def headline_family(per_ts: pd.Series, mode: str) -> tuple[str, str]:
    """Which IC the report leads with, and why in words: the one of the bet the book (`mode`, as
    `backtest.resolve_position_mode` resolved it) makes. A neutral book bets on the ranking of the symbols at
    each timestamp: the cross-sectional IC (n/a below 3 symbols, which no correlation ranks). A directional one
    (sign, scaled) also bets on each symbol's moves over time, across days too: the pooled IC, one correlation
    over every test row, sees both (the per-day IC sees no day's level, the cross-sectional IC no timestamp's).
    So the per-day IC never leads. `per_ts`: `symbols_per_timestamp`."""
    median = typical_symbols(per_ts)
    if mode == "neutral":
        few = (f"; below {MIN_PERIOD_ROWS} symbols no correlation ranks them, so it is n/a"
               if median < MIN_PERIOD_ROWS else ", as alphalens and Qlib compute it")
        return "cross_sectional", (f"a neutral book over {median:g} symbol(s) at a typical timestamp bets on ranking "
                                   f"them: the cross-sectional IC measures that ranking at each timestamp{few}")
    return "pooled", (f"a directional ({mode}) book over {median:g} symbol(s) bets on each one's moves over time, not "
                      f"only on ranking them: the pooled IC, one correlation over every test row, sees both")


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
    df: pd.DataFrame, pred_col: str = "prediction", target_col: str = "target", n_bins: int = 10, lags: int = 0
) -> pd.DataFrame:
    """Predicted vs realised mean target by prediction decile, pooled over symbols and time.

    Bins hold equal counts by prediction rank over all rows (ties broken by row order), so a constant prediction
    still bins. A monotone realised column is what a useful signal looks like. `realised_mean` is the mean over
    the bin's rows; `realised_se` is its standard error (`decile_se`): a timestamp's rows share its market move
    and overlap the targets of the `lags` timestamps beside them, so they are not independent rows.
    """
    d = _finite_rows(df, [pred_col, target_col])
    p = d[pred_col].to_numpy(dtype=float)
    order = np.argsort(p, kind="stable")
    rank = np.empty(p.size, dtype=np.int64)
    rank[order] = np.arange(p.size)
    bins = (rank * n_bins) // max(p.size, 1) + 1
    real = d[target_col].to_numpy(dtype=float)
    codes, times = pd.factorize(ts_ns(d["timestamp"]), sort=True)
    frame = pd.DataFrame({"decile": bins, "pred": p, "real": real})
    g = frame.groupby("decile", sort=True)
    se = pd.Series({k: decile_se(real[rows], codes[rows], len(times), lags) for k, rows in g.indices.items()},
                   dtype=float)
    out = pd.DataFrame(
        {
            "n": g.size(),
            "pred_mean": g["pred"].mean(),
            "realised_mean": g["real"].mean(),
            "realised_se": se.rename_axis("decile"),
            "hit_rate": g["real"].apply(lambda s: float((s > 0).mean())),
        }
    )
    return out.reset_index()


def decile_se(y: np.ndarray, codes: np.ndarray, n_times: int, lags: int) -> float:
    """Standard error of the mean of the rows `y` (one decile's targets) at timestamp codes `codes` (0..n_times-1,
    in time order): Driscoll-Kraay, the HAC (`hac_se`, `lags` timestamps) of the series over every timestamp of
    u_t = T / N * sum of the bin's (y - mean(y)) at t, whose mean is 0. A timestamp's rows enter it as one term,
    a timestamp without the bin's rows as 0, so that the lags count timestamps. NaN with fewer than 2 timestamps."""
    if np.unique(codes).size < 2:
        return float("nan")
    u = np.bincount(codes, y - y.mean(), n_times) * n_times / len(y)
    return hac_se(u, lags)[0]


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


def ridge_fit_rows(X: np.ndarray, y: np.ndarray, mask: np.ndarray, alpha: float = 1.0,
                   block_rows: int = 1 << 18) -> tuple[np.ndarray, float]:
    """`ridge_fit(X[mask], y[mask], alpha)` without copying the rows out: float64 sums over blocks of rows, the
    means first, then the centred products. X may be a memory map larger than memory (a feature cache a run
    streamed)."""
    if mask.dtype != bool or len(mask) != len(X) or len(y) != len(X):
        raise ValueError(f"ridge_fit_rows: mask ({mask.dtype}, {len(mask)}) and y ({len(y)}) must be one per row "
                         f"of X ({len(X)}), the mask boolean")

    def blocks():
        for lo in range(0, len(X), block_rows):
            take = mask[lo : lo + block_rows]
            Xb = np.asarray(X[lo : lo + block_rows][take], dtype=np.float64)
            yb = np.asarray(y[lo : lo + block_rows][take], dtype=np.float64)
            ok = np.isfinite(yb) & np.isfinite(Xb).all(axis=1)
            yield Xb[ok], yb[ok]

    n, sx, sy = 0, np.zeros(X.shape[1]), 0.0
    for Xb, yb in blocks():
        n, sx, sy = n + len(yb), sx + Xb.sum(axis=0), sy + yb.sum()
    if n == 0:
        raise ValueError("ridge_fit: no finite training rows")
    xm, ym = sx / n, sy / n
    gram, cross = np.zeros((X.shape[1], X.shape[1])), np.zeros(X.shape[1])
    for Xb, yb in blocks():
        Xc = Xb - xm
        gram += Xc.T @ Xc
        cross += Xc.T @ (yb - ym)
    w = np.linalg.solve(gram + alpha * np.eye(X.shape[1]), cross)
    return w, float(ym - xm @ w)


def ridge_predict(X: np.ndarray, rows: np.ndarray, w: np.ndarray, b: float, block_rows: int = 1 << 18
                  ) -> np.ndarray:
    """X[rows] @ w + b in float64 (`rows`: row numbers), a block of rows at a time (X may be a memory map)."""
    out = np.empty(len(rows))
    for lo in range(0, len(rows), block_rows):
        out[lo : lo + block_rows] = np.asarray(X[rows[lo : lo + block_rows]], dtype=np.float64) @ w + b
    return out


def baseline_predictions(df: pd.DataFrame, ridge: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """What the model must beat, on the same rows as `df`.

    zero: predicts 0 (IC undefined, PnL 0). momentum: sign of the last one-bar return (NaN -> 0).
    ridge: a linear model on the feature row at t fitted on the train rows only: `ridge`, its predictions
    row-aligned with df (`load_inputs` makes them), else df's own `ridge` column if it has one (a walk-forward's,
    fitted per fold), else skipped. oracle: the planted expected target (synthetic only).
    """
    n = len(df)
    out: dict[str, np.ndarray] = {"zero": np.zeros(n)}
    if "last_return" in df:
        out["momentum"] = np.sign(np.nan_to_num(df["last_return"].to_numpy(dtype=float), nan=0.0))
    if ridge is not None:
        if len(ridge) != n:
            raise ValueError(f"ridge has {len(ridge)} predictions, df has {n} rows: predict X[df.row]")
        out["ridge"] = np.asarray(ridge, dtype=np.float64)
    elif "ridge" in df:
        out["ridge"] = df["ridge"].to_numpy(dtype=float)
    if "oracle" in df and np.isfinite(df["oracle"].to_numpy(dtype=float)).any():
        out["oracle"] = df["oracle"].to_numpy(dtype=float)
    return out
