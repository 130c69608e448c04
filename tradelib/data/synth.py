"""A synthetic multi-symbol OHLCV market, deterministic from a seed, with the seed report's hostile values.

Returns follow a GARCH(1,1) with Student-t shocks (volatility clustering, heavy tails) and an intraday
volatility and volume cycle; volume rises with |return|. A weak, known component is planted in the next
bar's return: mean reversion of the last `signal_lookback` bars' move, scaled by the current volatility.
`oracle` holds that expected next-bar return, so the oracle IC of a one-bar target is known. The signal lasts:
the planted mean of bar t+1+d reverts a move whose k bars share k-d with those known at t, so the IC at lag d
falls about linearly, to 0 at d = k (6): a book trading 1 bar late keeps about 4/5 of it (docs/data.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BAR = pd.Timedelta(minutes=5)
START = pd.Timestamp("2024-01-01", tz="UTC")


def generate_market(
    n_symbols: int,
    n_bars: int,
    seed: int,
    hostile: bool = True,
    signal_strength: float = 0.2,
    signal_lookback: int = 6,
) -> pd.DataFrame:
    """The raw frame (design.md layout) plus `oracle`; hostile values included unless hostile=False. The size and
    seed have no defaults here: a run's are Config's (synth_symbols, synth_bars, data_seed; cache.synth_params)."""
    rng = np.random.default_rng(seed)
    bars_per_day = int(pd.Timedelta(days=1) / BAR)
    phase = (np.arange(n_bars) % bars_per_day) / bars_per_day
    # intraday cycle: busier around 14:00 UTC, quiet at night
    season = 1.0 + 0.45 * np.cos(2 * np.pi * (phase - 14 / 24))
    ret, sigma, mu = _garch_returns(rng, n_bars, n_symbols, season, bars_per_day, signal_strength, signal_lookback)

    base_price = np.exp(rng.uniform(np.log(5), np.log(500), n_symbols))
    close = base_price * np.exp(np.cumsum(ret, axis=0))
    open_ = np.vstack([base_price, close[:-1]])
    # intrabar extremes: beyond open/close by a fraction of the bar's volatility
    wick = np.abs(rng.normal(0, 1, (2, n_bars, n_symbols))) * sigma * 0.5
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    base_volume = np.exp(rng.uniform(np.log(1e4), np.log(1e7), n_symbols))
    volume = (
        base_volume
        * season[:, None] ** 2
        * (0.3 + np.abs(ret) / sigma)
        * rng.lognormal(0, 0.4, (n_bars, n_symbols))
    )
    # oracle at t: the planted expected return of bar t+1 (known at t: it depends on bars <= t)
    oracle = np.vstack([mu[1:], np.full((1, n_symbols), np.nan)])

    symbols = [f"SYM{i:02d}" for i in range(n_symbols)]
    if hostile:
        symbols[-1] = "MICRO"
        for prices in (close, open_, high, low):
            prices[:, -1] *= 1e-8 / base_price[-1]
        volume[:, -1] *= 1e15 / base_volume[-1]

    ts = START + BAR * np.arange(n_bars)
    frame = pd.DataFrame(
        {
            "timestamp": np.tile(ts, n_symbols),
            "symbol": np.repeat(symbols, n_bars),
            "open": open_.T.ravel(),
            "high": high.T.ravel(),
            "low": low.T.ravel(),
            "close": close.T.ravel(),
            "volume": volume.T.ravel(),
            "oracle": oracle.T.ravel(),
        }
    )
    if hostile:
        frame = _make_hostile(frame, rng, n_bars)
    return frame.reset_index(drop=True)


def _garch_returns(rng: np.random.Generator, n_bars: int, n_symbols: int, season: np.ndarray, bars_per_day: int,
                   signal_strength: float, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(returns, volatility, planted mean) [n_bars, n_symbols]: GARCH(1,1) with Student-t shocks, scaled by the
    intraday season, plus mean reversion of the last k bars' move."""
    daily_vol = rng.uniform(0.01, 0.04, n_symbols)
    bar_var = (daily_vol**2) / bars_per_day
    alpha, beta = 0.08, 0.9
    omega = bar_var * (1 - alpha - beta)
    df_t = 4.0
    shocks = rng.standard_t(df_t, size=(n_bars, n_symbols)) / np.sqrt(df_t / (df_t - 2))
    ret = np.zeros((n_bars, n_symbols))
    sigma = np.zeros((n_bars, n_symbols))
    mu = np.zeros((n_bars, n_symbols))
    var = bar_var.copy()
    for t in range(n_bars):
        s = np.sqrt(var) * season[t]
        if t >= k:
            move = ret[t - k : t].sum(axis=0) / (s * np.sqrt(k))
            mu[t] = -signal_strength * s * np.tanh(move)
        ret[t] = mu[t] + s * shocks[t]
        sigma[t] = s
        var = omega + alpha * (ret[t] / season[t]) ** 2 + beta * var
    return ret, sigma, mu


def _make_hostile(frame: pd.DataFrame, rng: np.random.Generator, n_bars: int) -> pd.DataFrame:
    """What real feeds deliver: zero volumes, NaN/inf, a spike, duplicates and missing bars."""
    n = len(frame)
    frame = frame.copy()
    vol = frame["volume"].to_numpy().copy()
    vol[rng.choice(n, max(1, n // 200), replace=False)] = 0.0
    vol[rng.choice(n, 3, replace=False)] = np.inf
    frame["volume"] = vol
    for col in ("close", "high"):
        vals = frame[col].to_numpy().copy()
        vals[rng.choice(n, 3, replace=False)] = np.nan
        frame[col] = vals
    close = frame["close"].to_numpy().copy()
    high = frame["high"].to_numpy().copy()
    close[rng.integers(n)] = np.inf
    spike = int(rng.integers(n_bars // 2, n_bars - 10))  # one bar of SYM00 printed 40x, then back
    close[spike] *= 40.0
    high[spike] = close[spike]
    frame["close"], frame["high"] = close, high
    # missing bars: 1% at random, plus a long outage in the second symbol
    keep = rng.random(n) > 0.01
    outage = n_bars + n_bars // 3
    keep[outage : outage + 300] = False
    frame = frame[keep]
    dup = frame.sample(5, random_state=int(rng.integers(1 << 31)))
    return pd.concat([frame, dup]).sort_values(["symbol", "timestamp"], kind="stable")
