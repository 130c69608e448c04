"""The embedded market has the stylised facts it claims, the seed's hostile values, and a known oracle."""

import numpy as np
import pandas as pd
import pytest

from tradelib.data.synth import generate_market


@pytest.fixture(scope="module")
def market():
    return generate_market(n_symbols=4, n_bars=20_000, seed=11, hostile=False)


def returns(df: pd.DataFrame, symbol: str) -> np.ndarray:
    return np.diff(np.log(df.loc[df["symbol"] == symbol, "close"].to_numpy()))


def test_deterministic_from_the_seed():
    a, b = generate_market(3, 2000, seed=5), generate_market(3, 2000, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not generate_market(3, 2000, seed=6)["close"].equals(a["close"])


def test_heavy_tails_and_volatility_clustering(market):
    r = returns(market, "SYM00")
    z = (r - r.mean()) / r.std()
    assert (z**4).mean() > 4.5  # excess kurtosis well above a normal's 3
    a = np.abs(r)
    lag1 = np.corrcoef(a[:-1], a[1:])[0, 1]
    assert lag1 > 0.1  # |r| is autocorrelated: calm and busy spells
    assert abs(np.corrcoef(r[:-1], r[1:])[0, 1]) < 0.1  # the returns themselves are nearly unpredictable


def test_intraday_volume_pattern_and_volume_follows_volatility(market):
    g = market[market["symbol"] == "SYM01"]
    by_hour = g.groupby(g["timestamp"].dt.hour)["volume"].median()
    assert by_hour.max() / by_hour.min() > 3  # busy afternoon (UTC), quiet night
    assert by_hour.idxmax() in range(11, 18)
    r = np.abs(returns(market, "SYM01"))
    assert np.corrcoef(r, g["volume"].to_numpy()[1:])[0, 1] > 0.2


def test_oracle_is_known_at_t_and_predicts_the_next_bar(market):
    for sym in ("SYM00", "SYM02"):
        g = market[market["symbol"] == sym]
        nxt = np.r_[returns(market, sym), np.nan]
        ok = np.isfinite(g["oracle"].to_numpy()) & np.isfinite(nxt)
        ic = np.corrcoef(g["oracle"].to_numpy()[ok], nxt[ok])[0, 1]
        assert 0.05 < ic < 0.3, ic  # weak but real, as a planted signal should be
    assert market.groupby("symbol")["oracle"].apply(lambda s: np.isnan(s.iloc[-1])).all()


def test_hostile_values_of_the_seed_are_there():
    df = generate_market(n_symbols=4, n_bars=5000, seed=7, hostile=True)
    micro = df[df["symbol"] == "MICRO"]
    assert micro["close"].median() < 1e-7 and micro["volume"].median() > 1e14
    assert (df["volume"] == 0).sum() > 10
    assert df["close"].isna().sum() >= 1 and np.isinf(df["volume"]).sum() >= 1
    assert df.duplicated(["symbol", "timestamp"]).sum() > 0
    per_symbol = df.groupby("symbol").size()
    assert (per_symbol < 5000).all()  # missing bars
    ratio = (df["close"] / df.groupby("symbol")["close"].shift(1)).replace([np.inf, -np.inf], np.nan)
    assert ratio.max() > 10  # the price spike
