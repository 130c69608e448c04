"""report/metrics.py and report/backtest.py against numbers worked out by hand on small arrays, and invariants."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import lfilter

from tradelib import runs
from tradelib.report import backtest as bk
from tradelib.report import metrics as ev
from tradelib.report.inputs import ReportSettings

HOUR = 3600.0


def frame(ts, symbols, pred, target=None, ret_next=None, **extra) -> pd.DataFrame:
    """A predictions frame in the design.md layout from short lists."""
    n = len(pred)
    df = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(ts, utc=True),
            "symbol": symbols,
            "prediction": np.asarray(pred, dtype=float),
            "target": np.zeros(n) if target is None else np.asarray(target, dtype=float),
            "ret_next": np.zeros(n) if ret_next is None else np.asarray(ret_next, dtype=float),
        }
    )
    for k, v in extra.items():
        df[k] = v
    return df


def planted(n_sym=3, n_days=2, rho=0.3, seed=0) -> pd.DataFrame:
    """5-minute bars; the prediction correlates rho with the target, the oracle more."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-03-01", periods=288 * n_days, freq="5min", tz="UTC")
    n = len(ts) * n_sym
    z = rng.standard_normal(n)
    return pd.DataFrame(
        {
            "timestamp": np.tile(ts, n_sym),
            "symbol": np.repeat([f"S{i}" for i in range(n_sym)], len(ts)),
            "prediction": rho * z + math.sqrt(1 - rho**2) * rng.standard_normal(n),
            "target": z,
            "ret_next": 1e-3 * z,
            "last_return": 1e-3 * rng.standard_normal(n),
            "oracle": 0.7 * z + math.sqrt(1 - 0.49) * rng.standard_normal(n),
        }
    )


# ---------------------------------------------------------------------------------------------------------
# IC


def test_ic_hand_values():
    assert ev.ic([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert ev.rank_ic([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # centred sums: sxy = 14, sxx = 5, syy = 50 -> 14 / sqrt(250); ranks agree perfectly
    assert ev.ic([1, 2, 3, 4], [1, 2, 3, 10]) == pytest.approx(14 / math.sqrt(250))
    assert ev.rank_ic([1, 2, 3, 4], [1, 2, 3, 10]) == pytest.approx(1.0)
    assert math.isnan(ev.ic([1, 2], [2, 1]))  # fewer than 3 pairs
    assert math.isnan(ev.ic([1, 1, 1], [1, 2, 3]))  # constant side
    assert ev.ic([1, 2, np.nan, 3], [1, 3, 5, 2]) == pytest.approx(0.5)  # NaN pair left out


def test_ic_by_day_pools_symbols_per_session():
    d1, d2, d3, d4 = "2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"
    ts = [f"{d1} 10:00", f"{d1} 10:05", f"{d1} 10:00"]  # day 1: A, A, B -> pooled n = 3
    ts += [f"{d2} 14:50", f"{d2} 14:55", f"{d2} 14:50", f"{d2} 14:55"]  # day 2: n = 4
    ts += [f"{d3} 10:00", f"{d3} 10:05"]  # day 3: n = 2 -> dropped
    ts += [f"{d4} 10:00", f"{d4} 10:05", f"{d4} 10:10"]  # day 4: constant prediction -> dropped
    sym = ["A", "A", "B", "A", "A", "B", "B", "A", "A", "A", "A", "A"]
    pred = [1, 2, 3, 1, 2, 3, 4, 1, 2, 5, 5, 5]
    tgt = [1, 3, 2, 1, 2, 3, 10, 1, 2, 1, 2, 3]
    out = ev.ic_by_day(frame(ts, sym, pred, tgt))
    assert list(out.columns) == ["period", "ic", "rank_ic", "n"]
    assert list(out["period"]) == [pd.Timestamp(d1, tz="UTC"), pd.Timestamp(d2, tz="UTC")]
    np.testing.assert_allclose(out["ic"], [0.5, 14 / math.sqrt(250)])
    np.testing.assert_allclose(out["rank_ic"], [0.5, 1.0])
    assert list(out["n"]) == [3, 4]
    assert len(ev.ic_by_timestamp(frame(ts, sym, pred, tgt))) == 0  # never 3 symbols at one timestamp


def test_ic_by_timestamp_is_the_cross_section():
    ts = ["2024-01-01"] * 3 + ["2024-01-02"] * 3 + ["2024-01-03"] * 2  # the third has 2 symbols: dropped
    out = ev.ic_by_timestamp(frame(ts, list("ABCABCAB"), [1, 2, 3, 3, 2, 1, 1, 2], [1, 3, 2, 1, 2, 3, 1, 2]))
    assert list(out["period"]) == list(pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True))
    np.testing.assert_allclose(out["ic"], [0.5, -1.0])


def test_cross_sectional_ic_equals_a_hand_computation_per_timestamp():
    """Intraday, 6 symbols, some missing: the mean of pandas' own per-timestamp Pearson and Spearman."""
    df = planted(n_sym=6, n_days=1, rho=0.3, seed=4).sample(frac=0.9, random_state=1)
    out = ev.ic_by_timestamp(df)
    g = df.groupby("timestamp")
    hand = g.apply(lambda x: x["prediction"].corr(x["target"]) if len(x) >= 3 else np.nan).dropna()
    hand_rank = g.apply(lambda x: x["prediction"].corr(x["target"], "spearman") if len(x) >= 3 else np.nan).dropna()
    np.testing.assert_allclose(out["ic"], hand.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(out["rank_ic"], hand_rank.to_numpy(), atol=1e-12)
    named = ev.named_ics(df, 0)
    assert named["cross_sectional_ic"] == pytest.approx(hand.mean())
    assert named["daily_ic"] == pytest.approx(df["prediction"].corr(df["target"]))  # one day: the pooled IC
    assert named["pooled_ic"] == pytest.approx(df["prediction"].corr(df["target"]))
    assert named["oracle_cross_sectional_ic"] > named["cross_sectional_ic"] and named["test_rows"] == len(df)


def test_the_headline_family_is_the_ic_of_the_bet_the_book_makes():
    """A neutral book bets on the ranking of the cross-section: the cross-sectional IC (n/a below 3 symbols,
    and said so); a directional book (sign, scaled) also on each symbol's moves over time: the pooled IC,
    whatever the number of symbols or the bar."""
    n = 30
    days = frame(np.repeat(pd.date_range("2024-01-01", periods=n, freq="D"), 12), [f"S{i}" for i in range(12)] * n,
                 np.arange(12.0 * n))
    for df in (planted(n_sym=12, n_days=1), days):
        per_ts = ev.symbols_per_timestamp(df)
        family, reason = ev.headline_family(per_ts, "neutral")
        assert family == "cross_sectional" and "neutral book over 12 symbol(s)" in reason and "n/a" not in reason
        for mode in ("sign", "scaled"):
            family, reason = ev.headline_family(per_ts, mode)
            assert family == "pooled" and f"directional ({mode}) book over 12 symbol(s)" in reason
    family, reason = ev.headline_family(ev.symbols_per_timestamp(planted(n_sym=2, n_days=1)), "neutral")
    assert family == "cross_sectional" and "below 3 symbols no correlation ranks them, so it is n/a" in reason


DF_AFFINE = planted(n_sym=4, n_days=3, rho=0.2, seed=3)
IC_AFFINE = {f: fn(DF_AFFINE) for f, fn in (("ts", ev.ic_by_timestamp), ("day", ev.ic_by_day))}


@settings(max_examples=25, deadline=None)
@given(a=st.floats(0.01, 100.0), b=st.floats(-100.0, 100.0), flip=st.booleans())
def test_ic_invariant_to_affine_prediction(a, b, flip):
    sign = -1.0 if flip else 1.0
    moved = DF_AFFINE.assign(prediction=sign * a * DF_AFFINE["prediction"] + b)
    for f, fn in (("ts", ev.ic_by_timestamp), ("day", ev.ic_by_day)):
        out = fn(moved)
        np.testing.assert_allclose(out["ic"], sign * IC_AFFINE[f]["ic"], atol=1e-9)
        np.testing.assert_allclose(out["rank_ic"], sign * IC_AFFINE[f]["rank_ic"], atol=1e-9)


def test_ic_summary_hand_values():
    ic_df = pd.DataFrame({"ic": [0.1, 0.3, -0.1, 0.1], "rank_ic": [0.2, 0.2, 0.0, 0.0]})
    s = ev.ic_summary(ic_df)
    # mean 0.1; deviations 0, .2, -.2, 0 -> var .08/3 -> std .1632993; ICIR .6123724; t = ICIR * 2
    assert s["ic"] == pytest.approx(0.1)
    assert s["rank_ic"] == pytest.approx(0.1)
    assert s["ic_std"] == pytest.approx(0.1632993, rel=1e-6)
    assert s["icir"] == pytest.approx(0.6123724, rel=1e-6)
    assert s["t_stat"] == pytest.approx(1.2247449, rel=1e-6) == s["t_stat_iid"]  # no lags: the plain t
    assert s["n_periods"] == 4 and s["lags"] == 0 and s["t_method"].startswith("iid")
    assert s["positive_share"] == pytest.approx(0.75)
    empty = ev.ic_summary(pd.DataFrame({"ic": [], "rank_ic": []}))
    assert empty["n_periods"] == 0 and math.isnan(empty["ic"]) and math.isnan(empty["t_stat"])


def test_hac_t_stat_by_hand():
    x = np.array([0.1, 0.3, -0.1, 0.1, 0.2])
    # mean .12; d = -.02 .18 -.22 -.02 .08; gamma0 = .088/5; gamma1 = (-.0036 -.0396 .0044 -.0016)/5 = -.0404/5
    # Hansen-Hodrick, 1 lag: (gamma0 + 2 gamma1) / ((5-1)(5-1-1)/25) = (.088 - .0808)/5 * 25/12 = .003;
    # t = .12 / sqrt(.003 / 5)
    t, method = ev.hac_t_stat(x, 1)
    assert t == pytest.approx(0.12 / math.sqrt(0.003 / 5)) and method == "Hansen-Hodrick HAC, 1 lags"
    # a series whose equal-weight variance is negative falls back to Newey-West (Bartlett weights, 2 lags)
    alt = np.array([1.0, -1.0] * 10) + 0.01
    t, method = ev.hac_t_stat(alt, 1)
    assert method == "Newey-West HAC, 2 lags" and math.isfinite(t)
    assert math.isnan(ev.hac_t_stat(x, 5)[0])  # more lags than the series can carry
    assert ev.overlap_lags(5, "cross_sectional") == 4 and ev.overlap_lags(5, "pooled") == 4
    assert ev.overlap_lags(1, "daily", 288) == 0 and ev.overlap_lags(12, "daily", 78) == 1
    assert ev.overlap_lags(5, "daily", 1) == 4


def test_overlap_robust_t_on_a_useless_persistent_signal():
    """The issue's simulation: daily bars, 5 symbols, a 5-bar target, a persistent signal (AR(1), 0.98)
    unrelated to the returns, 450 independent samples of 450 days. Consecutive ICs share 4 days of return, so
    the naive t (ICIR x sqrt(n)) calls it significant far too often; the HAC t with h-1 = 4 lags keeps
    |t| >= 2 near the nominal 5% (at most about 8%)."""
    rng = np.random.default_rng(2024)
    seeds, days, n_sym, h = 450, 450, 5, 5
    eps = rng.standard_normal((seeds, days + h, n_sym))
    cum = np.cumsum(eps, axis=1)
    target = cum[:, h:] - cum[:, :-h]  # the sum of the next h daily returns, [seeds, days, n_sym]
    sig = np.empty((seeds, days, n_sym))
    sig[:, 0] = rng.standard_normal((seeds, n_sym))
    shocks = rng.standard_normal((seeds, days, n_sym)) * math.sqrt(1 - 0.98**2)
    for t in range(1, days):
        sig[:, t] = 0.98 * sig[:, t - 1] + shocks[:, t]
    stamps = pd.Timestamp("1678-01-01", tz="UTC") + pd.to_timedelta(np.arange(seeds * days), unit="D")
    df = pd.DataFrame({"timestamp": np.repeat(stamps, n_sym), "symbol": np.tile([f"S{i}" for i in range(n_sym)],
                                                                                 seeds * days),
                       "prediction": sig.ravel(), "target": target.ravel()})  # sample s owns days s*450 ..
    ics = ev.ic_by_timestamp(df)["ic"].to_numpy().reshape(seeds, days)
    lags = ev.overlap_lags(h, "cross_sectional")
    robust = np.array([ev.ic_summary(pd.DataFrame({"ic": x, "rank_ic": x}), lags)["t_stat"] for x in ics])
    naive = np.array([ev.ic_summary(pd.DataFrame({"ic": x, "rank_ic": x}))["t_stat"] for x in ics])
    assert (np.abs(naive) >= 2).mean() > 0.25  # the problem is real (about 36%)
    assert (np.abs(robust) >= 2).mean() <= 0.08  # about 5-6%


def test_hac_variance_is_unbiased_on_independent_periods_at_any_lags():
    """The HAC variance's gammas are taken about the series' own mean, which pulls each lag's product towards 0:
    on independent periods their equal-weight sum has expectation (n-L)(n-L-1)/n^2 of the variance, not (n-1)/n.
    `hac_se` divides by it (statsmodels' uniform-kernel HAC times n^2/((n-L)(n-L-1)); Newey-West's fallback by
    its own), so its variance is unbiased there at any lags: with n/(n-1), as before, 2000 series of 250 at 19
    lags read 0.85, and a useless signal's t at h = 20 over 250 days passed |t| >= 1.96 in 11% of samples."""
    import statsmodels.api as sm

    rng = np.random.default_rng(11)
    x = rng.standard_normal(300) + 0.1
    for lags in (0, 4, 19):
        fit = sm.OLS(x, np.ones_like(x)).fit(cov_type="HAC", cov_kwds={"maxlags": lags, "kernel": "uniform",
                                                                        "use_correction": False})
        assert ev.hac_se(x, lags)[0] == pytest.approx(fit.bse[0] * 300 / math.sqrt((300 - lags) * (299 - lags)),
                                                      rel=1e-10)
    alt = np.array([1.0, -1.0] * 10) + 0.01 * rng.standard_normal(20)  # equal weights negative: Bartlett, 2 lags
    se, method = ev.hac_se(alt, 1)
    fit = sm.OLS(alt, np.ones(20)).fit(cov_type="HAC", cov_kwds={"maxlags": 2, "use_correction": False})
    w = 1 - np.arange(1, 3) / 3
    assert method == "Newey-West HAC, 2 lags"
    assert se == pytest.approx(fit.bse[0] / math.sqrt(19 / 20 - 2 * (w * (20 - np.arange(1, 3))).sum() / 400),
                               rel=1e-10)
    draws = [ev.hac_se(rng.standard_normal(250), 19) for _ in range(2000)]
    assert np.mean([s**2 * 250 for s, _ in draws]) == pytest.approx(1.0, abs=0.05)


def test_pooled_t_is_the_mean_of_per_timestamp_products():
    df = planted(n_sym=3, n_days=2, rho=0.3, seed=6)
    s = ev.pooled_summary(df)
    assert s["ic"] == pytest.approx(df["prediction"].corr(df["target"]))
    assert s["t_stat"] > 5 and s["n_periods"] == df["timestamp"].nunique()
    noise = df.assign(prediction=np.random.default_rng(0).standard_normal(len(df)))
    assert abs(ev.pooled_summary(noise)["t_stat"]) < 3


def test_the_ic_without_the_periods_that_carried_it_most():
    """The ceil(1%) largest ICs in the IC's direction (ties, the earliest first) and as many smallest leave; the
    family's IC is recomputed over the other rows (for a per-timestamp IC, the mean of the other periods');
    nothing left: NaN."""
    df = planted(n_sym=4, n_days=1, rho=0.3, seed=2)
    df = df[df["timestamp"] < df["timestamp"].min() + pd.Timedelta(minutes=5 * 130)]  # ceil(1% of 130) = 2
    by_ts = ev.ic_by_timestamp(df)
    out = ev.without_best(df, "cross_sectional", by_ts)
    order = by_ts.sort_values("ic", ascending=False, kind="stable")
    ends = order.index[:2].union(order.index[-2:])
    assert out["periods"] == 2 and out["of"] == len(by_ts) == 130
    assert out["best"] == order["period"].iloc[0].isoformat()
    assert out["ic"] == pytest.approx(by_ts.drop(ends)["ic"].mean(), rel=1e-12)
    flipped = df.assign(prediction=-df["prediction"])  # a negative IC: its most negative periods leave
    assert ev.without_best(flipped, "cross_sectional", ev.ic_by_timestamp(flipped))["ic"] == pytest.approx(-out["ic"])
    pooled = ev.without_best(df, "pooled", ev.pooled_by_timestamp(df))
    shares = ev.pooled_by_timestamp(df).sort_values("ic", ascending=False, kind="stable")
    kept = df[~df["timestamp"].isin(pd.concat([shares["period"].iloc[:2], shares["period"].iloc[-2:]]))]
    assert pooled["ic"] == pytest.approx(kept["prediction"].corr(kept["target"]), rel=1e-12)  # not the shares' mean
    when = pd.date_range("2024-01-01", periods=1000, freq="D", tz="UTC")  # (numpy sorts a few stably anyway)
    ties = pd.DataFrame({"period": when, "ic": np.where(np.isin(np.arange(1000), [750, 142, 500]), 0.5, 0.1)})
    rows = frame(when, ["A"] * 1000, np.zeros(1000))
    assert ev.without_best(rows, "cross_sectional", ties)["best"] == when[142].isoformat()
    days = planted(n_sym=3, n_days=5, rho=0.3, seed=4)  # per day: the best and the worst day's rows leave
    by_day = ev.ic_by_day(days)
    out = ev.without_best(days, "daily", by_day)
    assert out["best"] == by_day["period"][by_day["ic"].idxmax()].isoformat()
    assert out["ic"] == pytest.approx(by_day.drop([by_day["ic"].idxmax(), by_day["ic"].idxmin()])["ic"].mean(),
                                      rel=1e-12)
    two = ev.without_best(df, "cross_sectional", by_ts.iloc[:2])
    assert math.isnan(two["ic"]) and two["best"] is None


def test_an_ic_spread_evenly_over_20000_periods_is_not_said_to_rest_on_a_few():
    """The same correlation at every timestamp (t about 4 over 20,000 five-minute periods): without its best 1%
    alone such an IC falls to a fifth (0.027 sd per period whatever n, against a mean of 4 sd / sqrt(n)), which
    would call any long signal fragile; without its best and worst 1% it keeps its value."""
    rng = np.random.default_rng(0)
    n, k, rho = 20_000, 10, 0.012
    x = rng.standard_normal((n, k))
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((n, k))
    ts = pd.date_range("2024-01-01", periods=n, freq="5min", tz="UTC")
    df = pd.DataFrame({"timestamp": np.repeat(ts, k), "symbol": np.tile(np.arange(k), n), "prediction": x.ravel(),
                       "target": y.ravel()})
    by_ts = ev.ic_by_timestamp(df)
    s = ev.family_summary(df, "cross_sectional", 0)
    out = ev.without_best(df, "cross_sectional", by_ts)
    assert s["t_stat"] > 2.5 and out["periods"] == 200
    assert out["ic"] == pytest.approx(s["ic"], rel=0.15)
    best_only = by_ts["ic"].sort_values(ascending=False).iloc[200:].mean()
    assert best_only < s["ic"] / 2  # what the one-sided cut said


def test_the_pooled_ic_over_time_is_each_timestamps_share_of_it():
    """`pooled_by_timestamp`: one share per timestamp, by hand from z-scores over all rows; their mean is the
    pooled Pearson and (on ranks among all rows) the pooled Spearman, as pandas computes them."""
    df = planted(n_sym=3, n_days=2, rho=0.3, seed=6)
    df.loc[5, "target"] = np.nan  # a row without a target leaves every figure
    shares = ev.pooled_by_timestamp(df)
    d = df.dropna(subset=["target"])
    z = (d["prediction"] - d["prediction"].mean()) / d["prediction"].std(ddof=0) * (
        (d["target"] - d["target"].mean()) / d["target"].std(ddof=0))
    n_t = d["timestamp"].nunique()
    hand = z.groupby(d["timestamp"]).sum() * n_t / len(d)
    assert len(shares) == n_t and shares["n"].sum() == len(d)
    np.testing.assert_allclose(shares["ic"].to_numpy(), hand.to_numpy(), rtol=1e-12)
    assert shares["ic"].mean() == pytest.approx(d["prediction"].corr(d["target"]), rel=1e-12)
    assert shares["rank_ic"].mean() == pytest.approx(d["prediction"].corr(d["target"], method="spearman"), rel=1e-12)
    assert shares["ic"].mean() == pytest.approx(ev.pooled_summary(df)["ic"], rel=1e-12)
    assert ev.pooled_by_timestamp(df.assign(prediction=1.0)).empty  # no pooled IC, no series


# ---------------------------------------------------------------------------------------------------------
# direction, deciles, per symbol


def test_directional_accuracy_skips_zero_prediction_and_zero_target():
    pred = [1, -1, 2, 0, 1, -3]
    tgt = [1, 1, -1, 1, 0, -2]  # counted rows 0 (right), 1 (wrong), 2 (wrong), 5 (right)
    assert ev.directional_accuracy(pred, tgt) == pytest.approx(0.5)
    assert math.isnan(ev.directional_accuracy([0, 0, 0], [1, -1, 1]))
    assert ev.coverage(pred) == pytest.approx(5 / 6)


def test_decile_table_on_20_rows():
    p = np.random.default_rng(0).permutation(20).astype(float)
    df = frame(["2024-01-01"] * 20, ["A"] * 20, p, p**2)
    out = ev.decile_table(df)
    assert list(out["decile"]) == list(range(1, 11))
    assert list(out["n"]) == [2] * 10
    # decile k holds predictions 2k-2 and 2k-1
    np.testing.assert_allclose(out["pred_mean"], [0.5, 2.5, 4.5, 6.5, 8.5, 10.5, 12.5, 14.5, 16.5, 18.5])
    np.testing.assert_allclose(out["realised_mean"], [0.5, 6.5, 20.5, 42.5, 72.5, 110.5, 156.5, 210.5, 272.5, 342.5])
    assert out["realised_se"].isna().all()  # every row at one timestamp: one period, no standard error


def noise_panel(rng, days=250, n_sym=8, h=5, phi=0.95, drop=0.0) -> pd.DataFrame:
    """Daily bars of n_sym symbols: returns with a market factor (shared by every symbol), a target summing the
    next h of them, a useless persistent prediction (AR(1), phi); `drop` leaves out that share of rows at random."""
    eps = rng.standard_normal((days + h, n_sym)) + rng.standard_normal((days + h, 1))
    cum = np.cumsum(eps, axis=0)
    sig = lfilter([math.sqrt(1 - phi**2)], [1, -phi], rng.standard_normal((days, n_sym)), axis=0)
    stamps = pd.date_range("2021-01-04", periods=days, freq="D", tz="UTC")
    df = pd.DataFrame({"timestamp": np.repeat(stamps, n_sym), "symbol": np.tile([f"S{i}" for i in range(n_sym)], days),
                       "prediction": sig.ravel(), "target": (cum[h:] - cum[:-h]).ravel()})
    return df[rng.random(len(df)) >= drop].reset_index(drop=True)


def test_decile_error_bars_cover_zero_on_noise_with_a_market_factor_and_overlapping_targets():
    """A decile's rows share each timestamp's market move and overlap the h-1 timestamps beside them. The
    std/sqrt(n) of the rows as if independent (the bars before) held the true 0 within +-1.96 s.e. in about 64% of
    such samples at h = 5; the Driscoll-Kraay s.e. (per-timestamp sums, HAC over h-1 timestamps) near 95%."""
    rng = np.random.default_rng(7)
    h, covered, iid = 5, [], []
    for _ in range(200):
        df = noise_panel(rng, h=h)
        out = ev.decile_table(df, lags=h - 1)
        covered.append(np.abs(out["realised_mean"]) <= 1.96 * out["realised_se"])
        rows = df["target"].groupby(pd.qcut(df["prediction"].rank(method="first"), 10, labels=False))
        iid.append(np.abs(out["realised_mean"].to_numpy()) <= 1.96 * (rows.std() / np.sqrt(rows.size())).to_numpy())
    assert 0.88 <= np.mean(covered) <= 0.99
    assert np.mean(iid) < 0.75  # what the bars were


def test_decile_se_equals_statsmodels_driscoll_kraay():
    """Each decile's mean is the OLS coefficient of the target on the decile's indicator; its s.e. is statsmodels'
    Driscoll-Kraay covariance (hac-groupsum over timestamps, uniform kernel: Hansen-Hodrick) times
    T^2/((T-L)(T-L-1)), the small-sample factor of `hac_se`. Rows left out at random, so timestamps hold different
    numbers of rows."""
    import statsmodels.api as sm

    df = noise_panel(np.random.default_rng(3), days=120, n_sym=12, h=3, drop=0.2)
    lags = 2
    out = ev.decile_table(df, lags=lags)
    codes, times = pd.factorize(ev.ts_ns(df["timestamp"]), sort=True)
    n_t = len(times)
    rank = df["prediction"].rank(method="first").to_numpy() - 1
    bins = (rank * 10 // len(df)).astype(int) + 1
    for k in range(1, 11):
        fit = sm.OLS(df["target"].to_numpy(), (bins == k).astype(float)).fit(
            cov_type="hac-groupsum", cov_kwds={"time": codes, "maxlags": lags, "kernel": "uniform",
                                               "use_correction": False})
        row = out.loc[out["decile"] == k].iloc[0]
        assert row["realised_mean"] == pytest.approx(fit.params[0], rel=1e-12)
        assert row["realised_se"] == pytest.approx(fit.bse[0] * n_t / math.sqrt((n_t - lags) * (n_t - lags - 1)),
                                                   rel=1e-10)


def test_per_symbol_metrics_and_pooled_row():
    ts = ["2024-01-01 00:00", "2024-01-01 00:05", "2024-01-01 00:10"] + [
        "2024-01-01 00:00",
        "2024-01-01 00:05",
        "2024-01-01 00:10",
        "2024-01-01 00:15",
    ]
    pred = [1, 2, 3, 1, 2, 3, 4]
    tgt = [1, 3, 2, -1, -2, -3, -10]
    out = ev.per_symbol_metrics(frame(ts, list("AAABBBB"), pred, tgt)).set_index("symbol")
    assert list(out.index) == ["A", "B", "ALL"]
    assert out.loc["A", "ic"] == pytest.approx(0.5)
    assert out.loc["B", "ic"] == pytest.approx(-14 / math.sqrt(250))
    assert out.loc["B", "rank_ic"] == pytest.approx(-1.0)
    assert out.loc["A", "directional_accuracy"] == 1.0 and out.loc["B", "directional_accuracy"] == 0.0
    assert out.loc["ALL", "directional_accuracy"] == pytest.approx(3 / 7)
    assert out.loc["ALL", "ic"] == pytest.approx(np.corrcoef(pred, tgt)[0, 1])
    assert list(out["n"]) == [3, 4, 7]


# ---------------------------------------------------------------------------------------------------------
# baselines


def test_ridge_closed_form_by_hand():
    # x centred already; yc = [-2, 0, 2]: w = sum(x*yc) / (sum(x^2) + alpha) = 4 / (2 + 2) = 1, b = mean(y) = 2
    w, b = ev.ridge_fit(np.array([[-1.0], [0.0], [1.0]]), np.array([0.0, 2.0, 4.0]), alpha=2.0)
    assert w == pytest.approx([1.0]) and b == pytest.approx(2.0)
    # intercept unpenalised, exact linear data recovered with a tiny alpha, NaN targets left out
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 2))
    y = 2 * X[:, 0] - X[:, 1] + 3
    y[::7] = np.nan
    w, b = ev.ridge_fit(X, y, alpha=1e-9)
    np.testing.assert_allclose(w, [2.0, -1.0], atol=1e-6)
    assert b == pytest.approx(3.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 120), st.integers(1, 4), st.integers(1, 50), st.floats(1e-6, 10.0), st.integers(0, 2**32 - 1))
def test_ridge_in_blocks_equals_ridge_on_the_copied_rows(n, k, block, alpha, seed):
    """ridge_fit_rows / ridge_predict (the report's, over a memory map in blocks) against the definition on the
    rows copied out: non-finite features and targets, empty blocks and one-row blocks included."""
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, k)) * rng.uniform(0.1, 5.0, k) + rng.uniform(-3, 3, k)).astype(np.float32)
    y = (X.astype(np.float64) @ rng.standard_normal(k) + rng.standard_normal(n)).astype(np.float32)
    X[rng.random((n, k)) < 0.05] = np.nan
    y[rng.random(n) < 0.05] = np.inf
    mask = rng.random(n) < 0.7
    finite = mask & np.isfinite(y) & np.isfinite(X).all(axis=1)
    if not finite.any():
        with pytest.raises(ValueError, match="no finite training rows"):
            ev.ridge_fit_rows(X, y, mask, alpha, block_rows=block)
        return
    w, b = ev.ridge_fit(X[mask], y[mask], alpha)
    w2, b2 = ev.ridge_fit_rows(X, y, mask, alpha, block_rows=block)
    np.testing.assert_allclose(w2, w, rtol=1e-9, atol=1e-10)
    assert b2 == pytest.approx(b, rel=1e-9, abs=1e-10)
    test = rng.permutation(n)[: max(1, n // 3)]
    np.testing.assert_allclose(ev.ridge_predict(X, test, w, b, block_rows=block),
                               X[test].astype(np.float64) @ w + b, rtol=1e-12, atol=1e-12)


def test_ridge_in_blocks_reads_a_memory_map(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((1000, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -2.0, 0.5], dtype=np.float32) + 0.1).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    mask = np.arange(1000) < 700
    w, b = ev.ridge_fit_rows(mapped, y, mask, 1.0, block_rows=64)
    w0, b0 = ev.ridge_fit(X[mask], y[mask], 1.0)
    np.testing.assert_allclose(w, w0, rtol=1e-9)
    assert b == pytest.approx(b0, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(ev.ridge_predict(mapped, np.arange(700, 1000), w, b, block_rows=64),
                               X[700:].astype(np.float64) @ w + b, rtol=1e-12)
    with pytest.raises(ValueError, match="the mask boolean"):  # row numbers where a mask belongs
        ev.ridge_fit_rows(mapped, y, np.flatnonzero(mask))


def test_baseline_predictions():
    df = frame(
        ["2024-01-01"] * 4,
        ["A"] * 4,
        [0.1, 0.2, 0.3, 0.4],
        last_return=[0.5, -0.2, np.nan, 0.0],
        oracle=[np.nan] * 4,
    )
    b = ev.baseline_predictions(df)
    assert set(b) == {"zero", "momentum"}  # no X -> no ridge; all-NaN oracle -> no oracle
    np.testing.assert_array_equal(b["zero"], [0, 0, 0, 0])
    np.testing.assert_array_equal(b["momentum"], [1, -1, 0, 0])
    made = np.array([0.5, 0.1, -0.2, 0.0])  # a ridge's predictions (load_inputs makes them): taken as they are
    b = ev.baseline_predictions(df.assign(oracle=[0.1, np.nan, 0.2, 0.3]), made)
    np.testing.assert_array_equal(b["ridge"], made)
    assert "oracle" in b
    with pytest.raises(ValueError, match="ridge has 3 predictions, df has 4 rows"):
        ev.baseline_predictions(df, made[:3])
    walked = ev.baseline_predictions(df.assign(ridge=[1.0, 2.0, 3.0, 4.0]))  # a walk-forward's own column
    np.testing.assert_array_equal(walked["ridge"], [1.0, 2.0, 3.0, 4.0])


def test_evaluate_all_model_first_and_baselines_on_same_rows():
    df = planted(n_sym=3, n_days=2, rho=0.3)
    out = bk.evaluate_all(df, ev.baseline_predictions(df), family="cross_sectional", cost_bps=0.0,
                          trade_delay=1)
    assert list(out["predictor"]) == ["model", "zero", "momentum", "oracle"]
    for col in ["cross_sectional_ic", "cross_sectional_rank_ic", "daily_ic", "daily_rank_ic", "pooled_ic", "icir",
                "t_stat", "directional_accuracy", "sharpe_net"]:
        assert col in out
    row = out.set_index("predictor")
    assert math.isnan(row.loc["zero", "cross_sectional_ic"]) and row.loc["zero", "n_periods"] == 0
    assert row.loc["zero", "sharpe_net"] == 0.0 and row.loc["zero", "total_return_net"] == 0.0
    assert row.loc["zero", "coverage"] == 0.0
    for col in ("cross_sectional_ic", "daily_ic", "pooled_ic"):
        assert 0.2 < row.loc["model", col] < 0.4
        assert row.loc["oracle", col] > row.loc["model", col] > abs(row.loc["momentum", col])
    assert row.loc["model", "cross_sectional_ic"] == pytest.approx(ev.ic_by_timestamp(df)["ic"].mean())
    assert row.loc["model", "directional_accuracy"] > 0.55


# ---------------------------------------------------------------------------------------------------------
# backtest


def test_backtest_four_bars_by_hand():
    ts = pd.date_range("2024-01-01", periods=4, freq="h")
    simple = np.array([0.01, -0.02, -0.01, 0.02])
    df = frame(ts, ["A"] * 4, [1.0, 0.5, -2.0, -1.0], ret_next=np.log1p(simple))
    bt = bk.backtest(df, cost_bps=10.0, bar_seconds=HOUR, trade_delay=0)
    # positions +1 +1 -1 -1: gross = pos * r; |dpos| = 1, 0, 2, 0 -> costs 0.001, 0, 0.002, 0
    np.testing.assert_allclose(bt.pnl["gross"], [0.01, -0.02, 0.01, -0.02])
    np.testing.assert_allclose(bt.pnl["net"], [0.009, -0.02, 0.008, -0.02])
    np.testing.assert_allclose(bt.pnl["buy_hold"], [0.009, -0.02, -0.01, 0.02])  # entry cost only
    s = bt.stats
    assert s["net"]["total_return"] == pytest.approx(1.009 * 0.98 * 1.008 * 0.98 - 1)  # -0.0232040512
    assert s["gross"]["total_return"] == pytest.approx(1.01 * 0.98 * 1.01 * 0.98 - 1)
    assert s["buy_hold"]["total_return"] == pytest.approx(1.009 * 0.98 * 0.99 * 1.02 - 1)
    assert s["net"]["turnover"] == pytest.approx(0.75)
    assert s["net"]["hit_rate"] == pytest.approx(0.5)
    assert s["net"]["max_drawdown"] == pytest.approx(1 - 0.98 * 1.008 * 0.98)  # peak 1.009 after bar 1
    assert s["periods_per_year"] == pytest.approx(8766.0)  # hourly bars, every day: continuous, 24 x 365.25
    assert s["net"]["annual_volatility"] == pytest.approx(np.std(bt.pnl["net"], ddof=1) * math.sqrt(8766.0))
    assert list(bt.pnl["timestamp"]) == list(pd.to_datetime(ts, utc=True))


def test_backtest_equal_weight_and_flat_when_a_symbol_leaves():
    ts = pd.to_datetime(["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 02:00"])
    df = frame(
        [ts[0], ts[1], ts[2], ts[0], ts[1]],
        ["A", "A", "A", "B", "B"],
        [1, 1, 1, -1, -1],
        ret_next=np.log1p([0.02, 0.01, 0.03, 0.04, -0.01]),
    )
    bt = bk.backtest(df, cost_bps=20.0, bar_seconds=HOUR, trade_delay=0)
    # weights: A .5 .5 1, B -.5 -.5 (flat at t2: its close is a trade)
    np.testing.assert_allclose(bt.pnl["gross"], [-0.01, 0.01, 0.03])
    np.testing.assert_allclose(bt.pnl["turnover"], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(bt.pnl["net"], [-0.012, 0.01, 0.028])
    np.testing.assert_allclose(bt.pnl["buy_hold"], [0.028, 0.0, 0.03])
    np.testing.assert_allclose(bt.pnl["exposure"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(bt.pnl["net_exposure"], [0.0, 0.0, 1.0])
    assert bt.stats["net"]["max_drawdown"] == pytest.approx(0.012)  # a first-bar loss counts: the peak is 1


def unprinted_bar(a_rows=None, a_ret=0.03) -> pd.DataFrame:
    """A misses its t2 bar (A's t1 ret_next, `a_ret`, runs t1 -> t3); B prints every bar and flips at t2."""
    ts = pd.date_range("2024-01-01", periods=4, freq="h")
    extra = {} if a_rows is None else {"row": [*a_rows, 20, 21, 22, 23]}
    return frame([ts[0], ts[1], ts[3], *ts], ["A"] * 3 + ["B"] * 4, [1, 1, 1, 1, 1, -1, -1],
                 ret_next=np.log1p([0.01, a_ret, 0.0, 0.02, -0.01, 0.01, 0.0]), **extra)


def test_backtest_holds_a_symbol_through_a_bar_it_did_not_print():
    """ret_next runs over A's missing bar, so A's position is held over it: no close, no reopen, and B keeps its
    weight (N_t counts A, held); before, the book closed A at t2, reopened it a bar later and doubled B at t3."""
    for a_rows in (None, [10, 11, 12]):  # the frame's rows are A's, or predictions.parquet's feature-set rows
        bt = bk.backtest(unprinted_bar(a_rows), cost_bps=10.0, bar_seconds=HOUR, trade_delay=1)
        # held (delay 1): t1 A .5 B .5; t2 A .5 (held, earns 0: its t1 return ran to t3) B .5; t3 A .5 B -.5
        np.testing.assert_allclose(bt.pnl["gross"], [0.0, 0.5 * 0.03 - 0.5 * 0.01, 0.5 * 0.01, 0.0])
        np.testing.assert_allclose(bt.pnl["turnover"], [0.0, 1.0, 0.0, 1.0])  # B's flip is the one trade
        np.testing.assert_allclose(bt.pnl["exposure"], [0.0, 1.0, 1.0, 1.0])
        np.testing.assert_allclose(bt.pnl["buy_hold"], [0.015 - 0.001, 0.01, 0.005, 0.0])
    # a bar A printed without a prediction (its row 12 is not in the frame), or its return unknown: A is flat
    for df in (unprinted_bar([10, 11, 13]), unprinted_bar(a_ret=np.nan)):
        bt = bk.backtest(df, cost_bps=10.0, bar_seconds=HOUR, trade_delay=1)
        np.testing.assert_allclose(bt.pnl["turnover"], [0.0, 1.0, 0.5, 1.5])  # closed at t2, B alone at t3
        np.testing.assert_allclose(bt.pnl["exposure"], [0.0, 1.0, 0.5, 1.0])


def test_held_bars_look_at_no_later_prediction():
    """The book up to t + delay is the same whatever the predictions after t are, gaps held or not."""
    rng = np.random.default_rng(5)
    ts = pd.date_range("2024-01-01", periods=40, freq="h", tz="UTC")
    keep = rng.random((3, 40)) > 0.2  # each symbol misses about a fifth of its bars
    keep[:, 0] = True
    sym = np.repeat(list("ABC"), 40)[keep.ravel()]
    df = frame(np.tile(ts, 3)[keep.ravel()], sym, rng.standard_normal(keep.sum()),
               ret_next=0.01 * rng.standard_normal(keep.sum()))
    cut = ts[20]
    later = df.assign(prediction=np.where(df["timestamp"] > cut, rng.standard_normal(len(df)), df["prediction"]))
    for mode in ("sign", "scaled", "neutral"):
        for delay in (0, 1, 2):
            kw = {"cost_bps": 5.0, "bar_seconds": HOUR, "mode": mode, "scale_window": 5, "trade_delay": delay}
            a, b = bk.backtest(df, **kw).pnl, bk.backtest(later, **kw).pnl
            upto = a["timestamp"] <= ts[20 + delay]
            assert upto.sum() >= 20 + delay
            pd.testing.assert_frame_equal(a[upto], b[upto])


def test_scaled_positions_use_past_median_and_cap():
    ts = pd.date_range("2024-01-01", periods=4, freq="h")
    df = frame(ts, ["A"] * 4, [1.0, 2.0, 4.0, -8.0])
    # window 2 needs 2 past rows: t2 scale median(1, 2) = 1.5; t3 median(2, 4) = 3
    np.testing.assert_allclose(bk.positions(df, mode="scaled", cap=3.0, scale_window=2), [0, 0, 4 / 1.5, -8 / 3])
    np.testing.assert_allclose(bk.positions(df, mode="scaled", cap=1.0, scale_window=2), [0, 0, 1, -1])
    np.testing.assert_allclose(bk.positions(df[::-1], mode="scaled", cap=3.0, scale_window=2), [-8 / 3, 4 / 1.5, 0, 0])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), cost=st.floats(0.1, 50.0), mode=st.sampled_from(["sign", "scaled", "neutral"]))
def test_costs_only_ever_lower_pnl(seed, cost, mode):
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=30, freq="h")
    df = frame(
        np.tile(ts, 2), np.repeat(["A", "B"], 30), rng.standard_normal(60), ret_next=0.01 * rng.standard_normal(60)
    )
    kw = {"bar_seconds": HOUR, "mode": mode, "scale_window": 5, "trade_delay": seed % 3}
    with_cost = bk.backtest(df, cost_bps=cost, **kw)
    free = bk.backtest(df, cost_bps=0.0, **kw)
    assert (with_cost.pnl["net"] <= with_cost.pnl["gross"] + 1e-15).all()
    assert (with_cost.pnl["net"] < with_cost.pnl["gross"])[with_cost.pnl["turnover"] > 1e-12].all()
    np.testing.assert_array_equal(free.pnl["net"], free.pnl["gross"])
    np.testing.assert_allclose(free.pnl["gross"], with_cost.pnl["gross"])


def test_trade_delay_trades_the_signal_one_bar_later():
    """The signal at the close of t trades at the close of t+1 and earns the bar after that."""
    ts = pd.date_range("2024-01-01", periods=4, freq="h")
    simple = np.array([0.01, -0.02, -0.01, 0.02])
    df = frame(ts, ["A"] * 4, [1.0, -1.0, -1.0, 1.0], ret_next=np.log1p(simple))
    bt = bk.backtest(df, cost_bps=10.0, bar_seconds=HOUR, trade_delay=1)
    # held: 0 (no signal yet), +1, -1, -1 -> gross 0, -.02, .01, -.02; |dw| 0, 1, 2, 0
    np.testing.assert_allclose(bt.pnl["gross"], [0.0, -0.02, 0.01, -0.02])
    np.testing.assert_allclose(bt.pnl["turnover"], [0.0, 1.0, 2.0, 0.0])
    np.testing.assert_allclose(bt.pnl["net"], [0.0, -0.021, 0.008, -0.02])
    assert bt.stats["trade_delay"] == 1
    # a delay of 2 on two symbols: each symbol's own signal, two timestamps later
    two = pd.concat([df, df.assign(symbol="B", prediction=-df["prediction"])], ignore_index=True)
    bt2 = bk.backtest(two, cost_bps=0.0, bar_seconds=HOUR, trade_delay=2)
    np.testing.assert_allclose(bt2.pnl["gross"], [0.0, 0.0, 0.0, 0.0])  # the two books cancel
    np.testing.assert_allclose(bt2.pnl["exposure"], [0.0, 0.0, 1.0, 1.0])


def test_neutral_book_is_demeaned_with_gross_one():
    ts = ["2024-01-01 00:00"] * 3 + ["2024-01-01 01:00"] * 3
    df = frame(ts, list("ABCABC"), [1.0, 2.0, 3.0, 5.0, 5.0, 5.0], ret_next=np.log1p([0.01, 0.02, 0.04, 0, 0, 0]))
    w = bk.signal_weights(df, mode="neutral")
    np.testing.assert_allclose(w, [-0.5, 0.0, 0.5, 0.0, 0.0, 0.0])  # demeaned [-1, 0, 1] / 2; all equal: flat
    bt = bk.backtest(df, cost_bps=0.0, bar_seconds=HOUR, mode="neutral", trade_delay=0)
    np.testing.assert_allclose(bt.pnl["gross"], [0.015, 0.0])
    np.testing.assert_allclose(bt.pnl["net_exposure"], [0.0, 0.0], atol=1e-15)
    df = planted(n_sym=5, n_days=1, seed=2)
    sign, neutral = (bk.backtest(df, cost_bps=5.0, trade_delay=1, bar_seconds=300, mode=m) for m in ("sign", "neutral"))
    assert sign.stats["abs_net_exposure"] > 0.2  # the sign book leans with the predictions
    assert neutral.stats["abs_net_exposure"] < 1e-12
    np.testing.assert_allclose(neutral.pnl["exposure"][1:], 1.0)  # flat at the first bar: nothing to trade yet


def test_cost_sweep_and_break_even():
    df = planted(n_sym=4, n_days=2, rho=0.3, seed=8)  # a one-bar signal: it pays only if traded at once
    bt = bk.backtest(df, cost_bps=5.0, bar_seconds=300, trade_delay=0)
    sweep = bk.cost_sensitivity(bt, ReportSettings.of().cost_grid_bps)
    assert list(sweep["cost_bps"]) == [0, 1, 2, 5, 10, 20]
    assert sweep.set_index("cost_bps").loc[5.0, "net_sharpe"] == pytest.approx(bt.stats["net"]["sharpe"])
    assert sweep.set_index("cost_bps").loc[0.0, "net_sharpe"] == pytest.approx(bt.stats["gross"]["sharpe"])
    assert (np.diff(sweep["net_sharpe"]) < 0).all()
    for book in ("gross", "net", "buy_hold"):  # every book's Sharpe carries its error bars, from its own returns
        assert bt.stats[book]["sharpe_inference"] == bk.sharpe_inference(bt.pnl[book].to_numpy(), bt.stats[
            "periods_per_year"])
    at5 = sweep.set_index("cost_bps").loc[5.0]
    net = bt.stats["net"]["sharpe_inference"]
    assert (at5["net_sharpe_ci_low"], at5["net_sharpe_ci_high"]) == pytest.approx((net["ci_low"], net["ci_high"]))
    assert (sweep["net_sharpe_ci_low"] < sweep["net_sharpe"]).all() and (sweep["net_sharpe"] < sweep[
        "net_sharpe_ci_high"]).all()
    be = bk.break_even_bps(bt)
    at_be = bk.cost_sensitivity(bt, [be]).loc[0, "net_sharpe"]
    assert be > 0 and abs(at_be) < 1e-9
    flat = bk.backtest(df.assign(prediction=0.0), cost_bps=5.0, trade_delay=1, bar_seconds=300)
    assert math.isnan(bk.break_even_bps(flat))


def test_zero_prediction_gives_zero_pnl():
    ts = pd.date_range("2024-01-01", periods=10, freq="h")
    df = frame(ts, ["A"] * 10, np.zeros(10), ret_next=np.linspace(-0.02, 0.03, 10))
    bt = bk.backtest(df, cost_bps=10.0, trade_delay=1, bar_seconds=HOUR)
    assert (bt.pnl[["gross", "net", "cost", "turnover"]] == 0).all().all()
    assert bt.stats["net"]["total_return"] == 0.0 and bt.stats["net"]["sharpe"] == 0.0
    assert bt.stats["net"]["max_drawdown"] == 0.0 and math.isnan(bt.stats["net"]["hit_rate"])


def test_sharpe_and_drawdown_by_hand():
    # mean .005, sample std sqrt(5e-4 / 3) = .0129099; 4 bars a year -> x2
    assert bk.sharpe([0.01, -0.01, 0.02, 0.0], 4) == pytest.approx(0.7745967, rel=1e-6)
    assert bk.sharpe(np.zeros(5), 252) == 0.0
    assert math.isnan(bk.sharpe([0.01, 0.01], 252)) and math.isnan(bk.sharpe([0.01], 252))
    assert bk.max_drawdown([1.0, 1.1, 0.88, 0.99, 1.21]) == pytest.approx(0.2)  # 1.1 -> 0.88
    assert bk.max_drawdown([1.0, 1.1, 1.2]) == 0.0
    np.testing.assert_allclose(bk.equity_curve([0.1, -0.2]), [1.1, 0.88])
    np.testing.assert_allclose(bk.drawdown_curve([-0.1, 0.1, 0.5, -0.2]), [-0.1, -0.01, 0.0, -0.2])
    r = np.random.default_rng(0).normal(0, 0.01, 200)
    assert -bk.drawdown_curve(r).min() == pytest.approx(bk.max_drawdown(np.r_[1.0, bk.equity_curve(r)]))


def test_infer_bar_seconds_ignores_gaps_and_reads_int_ns():
    ts = pd.to_datetime(["2024-01-01 00:00", "2024-01-01 00:05", "2024-01-01 00:10", "2024-01-03 00:00"], utc=True)
    df = frame(ts, ["A"] * 4, [0, 0, 0, 0])
    assert ev.infer_bar_seconds(df) == 300.0
    assert ev.infer_bar_seconds(df.assign(timestamp=ts.as_unit("ns").asi8)) == 300.0
    with pytest.raises(ValueError, match="bar size"):
        ev.infer_bar_seconds(df.iloc[:1])


# ---------------------------------------------------------------------------------------------------------
# training curves


def test_training_curves_split_kinds_ema_and_survive_a_torn_line(tmp_path):
    rows = [
        {"kind": "step", "step": 1, "epoch": 0, "loss": 1.0, "lr": 1e-3, "grad_norm": 2.0},
        {"kind": "step", "step": 2, "epoch": 0, "loss": 0.0, "lr": 1e-3, "grad_norm": 1.0},
        {"kind": "gpu", "util": 0.9},
        {"kind": "epoch", "epoch": 0, "train_loss": 0.5, "val_loss": 0.6, "epoch_time_s": 3.0},
        {"kind": "step", "step": 3, "epoch": 1, "loss": 0.0, "lr": 5e-4, "grad_norm": 1.0},
    ]
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"kind": "step", "st'
    (tmp_path / "metrics.jsonl").write_text(text)
    steps, epochs = runs.training_curves(tmp_path, ema_alpha=0.5)
    assert list(steps["step"]) == [1, 2, 3] and len(epochs) == 1
    # bias-corrected EMA, alpha .5: 1; (0 + .5) / 1.5; (0 + 0 + .25) / 1.75
    np.testing.assert_allclose(steps["loss_ema"], [1.0, 1 / 3, 1 / 7])
    assert steps["skipped_steps"].isna().all()  # design column present even when not logged
    assert epochs.loc[0, "val_loss"] == 0.6
    empty_steps, empty_epochs = runs.training_curves(tmp_path / "missing")
    assert len(empty_steps) == 0 and "loss_ema" in empty_steps and "val_loss" in empty_epochs
