"""Would the signal survive costs? The book: positions, the backtest with costs, Sharpe inference, the
deflated Sharpe over the trials compared, the break-even cost and its bootstrap interval.

The signal at the close of t trades `trade_delay` bars later (default 1: at the close of t+1) and earns the
simple return exp(ret_next) - 1 to the symbol's next row, held through the bars it did not print in between;
costs on every change of weight. `evaluate_all` sets
every predictor (the model and `metrics.baseline_predictions`) side by side on the same rows; `trial_count`
and `best_predictors` say what the deflated figures count and which predictor, if any, is marked best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

from tradelib.report.metrics import (
    IC_FAMILIES,
    UTC,
    annualisation,
    coverage,
    directional_accuracy,
    family_summary,
    infer_bar_seconds,
    shift_rows,
    ts_ns,
)

# ----------------------------------------------------------------------------------------------------
# returns, equity, drawdown


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


# ----------------------------------------------------------------------------------------------------
# positions


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
    order = np.lexsort((ts_ns(df["timestamp"]), pd.factorize(df["symbol"])[0]))
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
    tcode = pd.factorize(ts_ns(df["timestamp"]))[0]
    return _spread(tcode, _signal(df, pred_col, mode, cap, scale_window), mode)


def _signal(df: pd.DataFrame, pred_col: str, mode: str, cap: float, scale_window: int) -> np.ndarray:
    """What `_spread` weighs per row: the position (sign, scaled: `positions`) or the prediction (neutral)."""
    if mode != "neutral":
        return positions(df, pred_col, mode, cap, scale_window)
    return df[pred_col].to_numpy(dtype=float)


def _spread(tcode: np.ndarray, x: np.ndarray, mode: str) -> np.ndarray:
    """`signal_weights` from each row's timestamp code and its position (sign, scaled) or prediction (neutral)."""
    if mode != "neutral":
        return x / np.bincount(tcode)[tcode]
    ok = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(tcode[ok], x[ok], tcode.max() + 1) / np.bincount(tcode[ok], minlength=tcode.max() + 1)
        dev = np.where(ok, x - mean[tcode], 0.0)
        gross = np.bincount(tcode, np.abs(dev))[tcode]
        return np.where(gross > 0, dev / gross, 0.0)


def resolve_position_mode(median: float, mode: str, min_symbols: int) -> tuple[str, str]:
    """`auto`: neutral when a typical timestamp has at least `min_symbols` symbols (`median`, of
    `metrics.typical_symbols`: a cross-section to rank), else sign. Returns (mode, why in words)."""
    if mode != "auto":
        return mode, "as given"
    if median >= min_symbols:
        return "neutral", f"auto: {median:g} symbols at a typical timestamp (>= {min_symbols}): market-neutral"
    return "sign", f"auto: {median:g} symbol(s) at a typical timestamp (< {min_symbols}): sign of each prediction"


# ----------------------------------------------------------------------------------------------------
# the book


@dataclass
class BacktestResult:
    """pnl: per timestamp `gross`, `net`, `buy_hold` simple portfolio returns, and `cost`, `turnover`,
    `exposure` (gross), `net_exposure`. stats: {'gross': {...}, 'net': {...}, 'buy_hold': {...}} each with
    total_return, annual_return, annual_volatility, sharpe, max_drawdown, turnover, hit_rate, n_bars; plus
    the settings used and the mean exposures."""

    pnl: pd.DataFrame
    stats: dict = field(default_factory=dict)


def _runs_on(d: pd.DataFrame, tidx: np.ndarray) -> np.ndarray:
    """Per row of `d` (sorted by symbol, time): whether its symbol's position runs on, untraded, over the
    timestamps before the symbol's next row, at which it printed no bar. So when its `ret_next` (the return it
    earns) is known and runs to that next row: where `d` has `row` (the feature set's, as predictions.parquet
    has), the next row is the feature set's next one, so no bar printed between is left without its return (a
    row without a prediction, e.g. one whose target spans the missing bar) and the two lie in one segment (a
    gap longer than `max_gap_bars` ends the segment, and ret_next is NaN there); in a walk-forward, in one fold.
    A frame without `row` is taken to hold each symbol's rows: its ret_next runs to the next one."""
    sym = d["symbol"].to_numpy()
    nxt = np.r_[sym[1:] == sym[:-1], False] & np.r_[tidx[1:] > tidx[:-1] + 1, False]
    nxt &= np.isfinite(d["ret_next"].to_numpy(dtype=float))
    for col, step in (("row", 1), ("fold", 0)):
        if col in d:
            v = d[col].to_numpy()
            nxt[:-1] &= v[1:] == v[:-1] + step
    return nxt


def _fill_unprinted(d: pd.DataFrame, times: np.ndarray) -> pd.DataFrame:
    """`d` with a row appended for each timestamp of `times` at which a symbol whose position runs on
    (`_runs_on`) printed no bar: `printed` False, the prediction and position of its last row (what is known
    then: no look-ahead), return 0 (its last row's ret_next already runs over the gap). Rows of `d` keep their
    order and come first, so a frame without such gaps gives the same sums as before, bit for bit."""
    order = np.lexsort((d["timestamp"].to_numpy(), pd.factorize(d["symbol"])[0]))
    s = d.iloc[order]
    tidx = np.searchsorted(times, s["timestamp"].to_numpy())
    gap = _runs_on(s, tidx)
    src = s[gap]
    missing = (np.r_[tidx[1:], 0] - tidx - 1)[gap]  # timestamps without a bar before the symbol's next row
    fill = src.loc[src.index.repeat(missing)].copy()
    step = np.arange(len(fill)) - np.repeat(np.cumsum(missing) - missing, missing) + 1
    fill["timestamp"] = times[np.repeat(tidx[gap], missing) + step]
    fill["r"] = 0.0
    fill["printed"] = False
    return pd.concat([d.assign(printed=True), fill], ignore_index=True)


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
    """One book's figures; its Sharpe always with its error bars (`sharpe_inference`), wherever it is shown."""
    equity = np.r_[1.0, equity_curve(r)]  # start at 1 so a loss on the first bar is a drawdown
    held = exposure > 0
    years = r.size / ppy if ppy > 0 else float("nan")
    inf = sharpe_inference(r, ppy)
    return {
        "total_return": float(equity[-1] - 1.0),
        "annual_return": float(equity[-1] ** (1.0 / years) - 1.0) if r.size and equity[-1] > 0 else float("nan"),
        "annual_return_ci": annual_return_interval(r, ppy),
        "annual_volatility": float(r.std(ddof=1) * math.sqrt(ppy)) if r.size >= 2 else float("nan"),
        "sharpe": inf["sharpe"],
        "sharpe_inference": inf,
        "max_drawdown": max_drawdown(equity),
        "turnover": float(turnover.mean()) if turnover.size else float("nan"),
        "hit_rate": float((r[held] > 0).mean()) if held.any() else float("nan"),
        "n_bars": int(r.size),
    }


def backtest(
    df: pd.DataFrame,
    pred_col: str = "prediction",
    *,
    cost_bps: float,
    trade_delay: int,
    bar_seconds: float | None = None,
    mode: str = "sign",
    cap: float = 1.0,
    scale_window: int = 500,
    periods_per_year: float | None = None,
    annualised: dict | None = None,
) -> BacktestResult:
    """Long/short backtest of a prediction column, with costs on every change of weight.

    The weights of timestamp t (`signal_weights`: equal weight sign or scaled positions, or market-neutral)
    are traded `trade_delay` timestamps later, at that bar's close, and held over the next bar for the simple
    return exp(ret_next) - 1 (ret_next a log return to the symbol's next row; NaN -> 0). Where that next row
    is timestamps later (bars the symbol did not print: `_runs_on`), the position is held through them untraded,
    earning nothing more there, and the symbol counts in N_t and in the neutral cross-section with its last
    prediction (`_fill_unprinted`); a symbol that ends, or whose return to its next row is not in df, is closed.
    gross_t = sum w * r; cost_t = cost_bps/1e4 * sum |w_t - w_{t-1}| (the first position is a change from 0, a
    symbol without a row is flat, the book is not liquidated after the last bar); net = gross - cost; equity
    compounds: cumprod(1 + net). Sharpe,
    annual return and volatility use `periods_per_year`, else the calendar of df's timestamps
    (`annualisation`), or `annualised` (an `annualisation` dict the caller measured; its description is
    kept). Buy-and-hold is long 1/N_t of every symbol present, pays cost_bps once at entry and rebalances for
    free. `market`: the net book's beta to buy-and-hold (the equal-weight market) and the alpha it earns beyond
    that exposure, with their error bars (`market_regression`).
    """
    bar = float(bar_seconds) if bar_seconds else infer_bar_seconds(df)
    ann = annualised or annualisation(df, bar, periods_per_year=periods_per_year or 0.0)
    ppy = ann["periods_per_year"]
    d = pd.DataFrame(
        {
            "timestamp": ts_ns(df["timestamp"]),
            "symbol": df["symbol"].to_numpy(),
            "x": _signal(df, pred_col, mode, cap, scale_window),
            "r": np.expm1(np.nan_to_num(df["ret_next"].to_numpy(dtype=float), nan=0.0)),
            "ret_next": df["ret_next"].to_numpy(dtype=float),
            **{c: df[c].to_numpy() for c in ("row", "fold") if c in df},
        }
    )
    times = np.unique(d["timestamp"].to_numpy())
    d = _fill_unprinted(d, times)  # a symbol is held through a bar it did not print
    d["w"] = _spread(np.searchsorted(times, d["timestamp"].to_numpy()), d["x"].to_numpy(), mode)
    d = d.sort_values(["symbol", "timestamp"], kind="stable")
    tidx = np.searchsorted(times, d["timestamp"].to_numpy())
    n_t = np.bincount(tidx, minlength=len(times))
    sym = d["symbol"].to_numpy()
    w = shift_rows(sym, d["timestamp"].to_numpy(), d["w"].to_numpy(), -int(trade_delay), 0.0)  # held at each row
    printed = d["printed"].to_numpy()
    if not printed.all():  # no bar, no trade: a row without one holds what its symbol's last bar held
        w = pd.Series(np.where(printed, w, np.nan)).ffill().to_numpy()
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
        "market": market_regression(net, bh, ppy),
        "gross_exposure": float(exposure.mean()) if len(times) else float("nan"),
        "net_exposure": float(net_exposure.mean()) if len(times) else float("nan"),
        "abs_net_exposure": float(np.abs(net_exposure).mean()) if len(times) else float("nan"),
    }
    return BacktestResult(pnl=pnl, stats=stats)


def cost_sensitivity(bt: BacktestResult, costs_bps) -> pd.DataFrame:
    """Net Sharpe and annual return with their 95% intervals, and total return, of the same book at each cost
    (bps per unit of weight traded): net = gross - cost/1e4 * turnover, bar by bar; `net_sharpe_implausible` where
    the report flags that net Sharpe (`net_sharpe_flags`: costs.png rings it, the cost table marks it)."""
    gross, turnover = bt.pnl["gross"].to_numpy(), bt.pnl["turnover"].to_numpy()
    exposure, ppy = bt.pnl["exposure"].to_numpy(), bt.stats["periods_per_year"]
    rows = []
    for c in costs_bps:
        s = _stats(gross - float(c) / 1e4 * turnover, turnover, exposure, ppy)
        inf = s["sharpe_inference"]
        rows.append({"cost_bps": float(c), "net_sharpe": s["sharpe"], "net_sharpe_ci_low": inf["ci_low"],
                     "net_sharpe_ci_high": inf["ci_high"], "net_annual_return": s["annual_return"],
                     "net_annual_return_ci_low": s["annual_return_ci"][0],
                     "net_annual_return_ci_high": s["annual_return_ci"][1],
                     "net_total_return": s["total_return"],
                     "net_sharpe_implausible": bool(net_sharpe_flags(s["sharpe"], bt.stats["gross"]["sharpe"]))})
    return pd.DataFrame(rows)


def break_even_bps(bt: BacktestResult) -> float:
    """The cost at which the net Sharpe reaches 0: net mean 0 <=> cost = 1e4 x mean(gross) / mean(turnover).
    NaN when the book loses before costs or never trades."""
    g, t = float(bt.pnl["gross"].mean()), float(bt.pnl["turnover"].mean())
    return 1e4 * g / t if len(bt.pnl) and g > 0 and t > 0 else float("nan")


def market_regression(book: np.ndarray, market: np.ndarray, periods_per_year: float, lags: int | None = None
                      ) -> dict:
    """The book against the equal-weight market, OLS book = alpha + beta market + e over the finite bars: `beta`
    (= cov / var, empyrical's) and `alpha`, what the book earns beyond that exposure, a year's worth (x periods a
    year, arithmetic), each with a 95% interval and t from the Newey-West covariance of the regression's scores
    (Bartlett weights over `lags`, default `newey_west_lags`, as the Sharpe's), each bar's residual divided by
    1 - its leverage (HC3, MacKinnon and White 1985; statsmodels' `HC3` at 0 lags): a few crash bars far out on
    the market axis pull the line towards them and hide their own residuals (with plain ones a sign book's beta
    interval on t(3) GARCH returns held the true beta in 89% of samples, with HC3 91%; docs/metrics.md). A
    directional book that is mostly long earns the market's drift; alpha is the rest. A neutral book can still
    carry beta: long names that move more with the market than those it is short."""
    b, m = np.asarray(book, dtype=float), np.asarray(market, dtype=float)
    ok = np.isfinite(b) & np.isfinite(m)
    b, m = b[ok], m[ok]
    nan = float("nan")
    if b.size < 3 or m.std() == 0:
        return {"alpha": nan, "alpha_ci": [nan, nan], "alpha_t": nan, "beta": nan, "beta_ci": [nan, nan],
                "beta_t": nan}
    X = np.column_stack([np.ones_like(m), m])
    coef = np.linalg.lstsq(X, b, rcond=None)[0]
    lags = newey_west_lags(b.size) if lags is None else max(int(lags), 0)
    inv = np.linalg.inv(X.T @ X)
    lever = np.einsum("ij,jk,ik->i", X, inv, X)  # each bar's leverage h_tt, the diagonal of X (X'X)^-1 X'
    resid = np.divide(b - X @ coef, 1 - lever, out=np.zeros_like(b), where=lever < 1)  # h_tt 1: fitted exactly
    cov = inv @ long_run_covariance(X * resid[:, None], lags) @ inv * b.size
    (a, beta), (se_a, se_b) = coef.astype(float), np.sqrt(np.maximum(np.diag(cov), 0.0))
    return {"alpha": a * periods_per_year, "alpha_ci": [(a + z * se_a) * periods_per_year for z in (-1.96, 1.96)],
            "alpha_t": a / se_a if se_a > 0 else nan, "beta": float(beta),
            "beta_ci": [float(beta + z * se_b) for z in (-1.96, 1.96)], "beta_t": beta / se_b if se_b > 0 else nan}


# ----------------------------------------------------------------------------------------------------
# error bars


EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


def newey_west_lags(n: int) -> int:
    """The usual plug-in bandwidth floor(4 (n/100)^(2/9)) (Newey and West 1994)."""
    return int(4 * (max(n, 1) / 100) ** (2 / 9))


def long_run_covariance(m: np.ndarray, lags: int) -> np.ndarray:
    """Newey-West: the covariance of the columns of `m` (n x k, centred) with Bartlett-weighted
    autocovariances up to `lags`, each over n."""
    n = len(m)
    S = m.T @ m / n
    for k in range(1, min(lags, n - 1) + 1):
        g = m[k:].T @ m[:-k] / n
        S += (1 - k / (lags + 1)) * (g + g.T)
    return S


def annual_return_interval(returns: np.ndarray, periods_per_year: float, lags: int | None = None) -> list[float]:
    """A 95% interval of the compound annual return exp(P m) - 1 (P periods a year, m the mean log growth
    log(1 + r) per period, whose exp(P m) - 1 is `_stats`' annual_return): m +- 1.96 Newey-West standard errors
    (Bartlett weights over `lags`, default `newey_west_lags`, as the Sharpe's), mapped through exp(P x) - 1.
    NaN ends with fewer than 3 returns or a period that lost everything; an end beyond the float range is inf (a
    short, volatile test span of minute bars, P about 500,000, gets there at a mean plus 1.96 s.e. of 0.14%)."""
    r = np.asarray(returns, dtype=float)
    r = r[np.isfinite(r)]
    if r.size < 3 or (r <= -1).any():
        return [float("nan")] * 2
    g = np.log1p(r)
    lags = newey_west_lags(r.size) if lags is None else max(int(lags), 0)
    se = math.sqrt(max(long_run_covariance((g - g.mean())[:, None], lags)[0, 0], 0.0) / r.size)
    with np.errstate(over="ignore"):
        return [float(np.expm1(periods_per_year * (g.mean() + z * se))) for z in (-1.96, 1.96)]


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
    S = long_run_covariance(np.column_stack([d, d * d - var]), lags)
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
    """The IC's t-statistic deflated as `deflated_sharpe` deflates a Sharpe (Bailey and Lopez de Prado, with the
    trials' t-statistics of variance 1): Phi(t - E[max z of N trials]), the confidence that t lies beyond what the
    best of N skill-less trials shows on average. It is a haircut, stricter than the chance that the best of N
    null t-statistics stays below t (Phi(t)^N: at N 4 and t 2.5, 0.926 here against 0.975), so a predictor is
    marked best at t above about 3.0 for N 4, 3.5 for N 10."""
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


# ----------------------------------------------------------------------------------------------------
# every predictor on the same rows, and the trials the deflated figures count


SIGNIFICANT = 0.975  # "significant after deflation": a deflated probability above this (one trial: t > 1.96)


def significant(t, deflated, runs: int) -> bool:
    """Whether the report calls an IC significant: |t| >= 2, and in a sweep of several runs also its |t| deflated
    over them (`deflated_t`, as the best predictor's t is over the trials) above SIGNIFICANT: the best of a
    sweep's runs on noise passes |t| >= 2 far more often than one run does."""
    if not (isinstance(t, (int, float)) and math.isfinite(t) and abs(t) >= 2):
        return False
    return runs <= 1 or (isinstance(deflated, (int, float)) and deflated > SIGNIFICANT)


def evaluate_all(
    df: pd.DataFrame,
    baselines: dict[str, np.ndarray],
    family: str = "cross_sectional",
    lags: int = 0,
    pred_col: str = "prediction",
    target_col: str = "target",
    model: tuple[dict, BacktestResult] | None = None,
    zone: str = UTC,
    **backtest_kw,
) -> pd.DataFrame:
    """One row per predictor (the model first, then the baselines), every number on the same rows: the
    three named ICs (against `target_col`: the report passes the target at the traded lag), the ICIR and
    overlap-robust t of `family` (with `lags`), direction, and the net Sharpe of `backtest(**backtest_kw)`
    with its standard error and PSR (`sharpe_inference`; per period too, for the deflated Sharpe).
    `model`: the model's {family: `family_summary`} and backtest where the caller has made them on these rows,
    target and book (`load_inputs` has), taken instead of being made again. `zone`: the market's clock, whose days
    the per-day IC reads."""
    preds = {
        "model": df[pred_col].to_numpy(dtype=float),
        **{k: np.asarray(v, dtype=float) for k, v in baselines.items()},
    }
    rows = []
    for name, p in preds.items():
        if name == "model" and model is not None:
            ics, bt = model
        else:
            d = df.assign(_p=p)
            ics = {f: family_summary(d, f, lags if f == family else 0, "_p", target_col, zone) for f in IC_FAMILIES}
            bt = backtest(d, "_p", **backtest_kw)
        cs, day, pooled, head = ics["cross_sectional"], ics["daily"], ics["pooled"], ics[family]
        inf = bt.stats["net"]["sharpe_inference"]
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
                "directional_accuracy": directional_accuracy(p, df[target_col].to_numpy(dtype=float)),
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


def trial_count(predictors: pd.DataFrame, sweep_runs: int) -> dict:
    """What the deflated Sharpe counts: the predictors that compete (`_rivals`) times the runs of the sweep this
    run belongs to, and their `trial_variance`."""
    rivals = _rivals(predictors)
    var = trial_variance(rivals["sharpe_net_period"], rivals["sharpe_net_se_period"])
    return {"predictors": int(len(rivals)), "sweep_runs": int(sweep_runs),
            "n_trials": max(int(len(rivals)) * int(sweep_runs), 1), "trial_variance": var}


def trial_variance(sharpe_period: pd.Series, se_period: pd.Series) -> float:
    """V for the deflated Sharpe: the variance of the trials' per-period Sharpe ratios, at least their mean
    squared standard error (what skill-less trials would scatter by)."""
    sr = sharpe_period.dropna().to_numpy(dtype=float)
    se = se_period.dropna().to_numpy(dtype=float)
    return max(float(sr.var(ddof=1)) if sr.size >= 2 else 0.0, float(np.mean(se**2)) if se.size else 0.0)


def _rivals(predictors: pd.DataFrame) -> pd.DataFrame:
    """The predictors that compete: the oracle is the planted signal (a ceiling) and `zero` never trades."""
    return predictors[(predictors["predictor"] != "oracle") & (predictors["coverage"] > 0)]


def best_predictors(predictors: pd.DataFrame, family: str, trials: dict) -> dict[str, str]:
    """{column: predictor} with the best headline IC and the best net Sharpe among the predictors that compete
    (`_rivals`), marked only when that figure is positive and significant after deflation over the report's
    trials: the IC's t by `deflated_t`, the Sharpe by `deflated_sharpe`, each above SIGNIFICANT. Never on
    noise, never on a loss; the oracle and `zero` are never marked."""
    rivals, n = _rivals(predictors), int(trials.get("n_trials") or 1)
    best = {}
    col = f"{family}_ic"
    if col in rivals and len(rivals[col].dropna()):
        i = rivals[col].idxmax()
        if rivals.loc[i, col] > 0 and deflated_t(float(rivals.loc[i, "t_stat"]), n) > SIGNIFICANT:
            best[col] = str(rivals.loc[i, "predictor"])
    if len(rivals["sharpe_net"].dropna()):
        i = rivals["sharpe_net"].idxmax()
        r = rivals.loc[i]
        dsr = deflated_sharpe(float(r["sharpe_net_period"]), float(r["sharpe_net_se_period"]), n,
                                 float(trials.get("trial_variance") or 0.0))["dsr"]
        if r["sharpe_net"] > 0 and dsr > SIGNIFICANT:
            best["sharpe_net"] = str(r["predictor"])
    return best


# ----------------------------------------------------------------------------------------------------
# figures that cannot be right


MAX_PLAUSIBLE_SHARPE = 10.0
MAX_PLAUSIBLE_ANNUAL_RETURN = 10.0  # 1000%


def implausible(sharpe_value: float | None, annual_return: float | None, alpha: float | None = None,
               market: bool = False) -> list[str]:
    """Reasons why a book's figures cannot be taken at face value: an annualised return above 1000%, an alpha
    beyond +-1000% a year or a Sharpe beyond +-10 is no market's (a short test span extrapolated, a look-ahead, a
    bad print). `market`: buy & hold's figures, which no signal trades: no look-ahead can be behind them."""
    ahead = "" if market else " a look-ahead,"
    out = []
    if annual_return is not None and math.isfinite(annual_return) and annual_return > MAX_PLAUSIBLE_ANNUAL_RETURN:
        out.append(f"annual return {annual_return * 100:,.4g}% is above {MAX_PLAUSIBLE_ANNUAL_RETURN:.0%}: a short "
                   f"test span compounded to a year,{ahead} or a bad print")
    if alpha is not None and math.isfinite(alpha) and abs(alpha) > MAX_PLAUSIBLE_ANNUAL_RETURN:
        out.append(f"alpha {alpha * 100:+,.4g}% a year is beyond +-{MAX_PLAUSIBLE_ANNUAL_RETURN:.0%}: a short test "
                   f"span's mean return times the bars in a year, a look-ahead, or a bad print")
    if sharpe_value is not None and math.isfinite(sharpe_value) and abs(sharpe_value) > MAX_PLAUSIBLE_SHARPE:
        out.append(f"Sharpe {sharpe_value:.3g} is beyond +-{MAX_PLAUSIBLE_SHARPE:g}: " + (
            "no market holds one; look for too few periods (a short test span annualised) or a bad print" if market
            else "no traded book holds one; look for a look-ahead, a zero-cost trade at the signal's own close, or "
                 "too few periods"))
    return out


def costs_explain(net: float, gross: float, bound: float) -> bool:
    """Whether a net figure (a Sharpe, an arithmetic alpha a year) below -`bound` is what costs make of a gross one
    within +-`bound`: a book that trades every bar pays nearly the same cost each bar, so on intraday bars its net
    Sharpe falls far below -10 (5-minute bars, turnover 0.8 a bar, 5 bps: about -100) and its alpha below -1000% a
    year, with no look-ahead or bad print behind them. Such a figure is real and not flagged (`implausible`)."""
    known = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (net, gross))
    return known and net < -bound and abs(gross) <= bound


def net_sharpe_flags(net: float, gross: float) -> list[str]:
    """`implausible`'s reasons for a net Sharpe beside its book's gross one: none where the costs explain it
    (`costs_explain`). The summary's `net_sharpe` flag and each cost of `costs.png` and the cost table."""
    return [] if costs_explain(net, gross, MAX_PLAUSIBLE_SHARPE) else implausible(net, None)
