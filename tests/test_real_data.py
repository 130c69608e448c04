"""Real daily stock bars that tradelib did not generate (tests/data/real: SP500, NASDAQ, MSFT), and the report's
figures on them checked against peer tools: alphalens-reloaded for the cross-sectional IC, empyrical-reloaded
for Sharpe, annual return and volatility. No model is trained: a ridge on the features stands in for one."""

import math
from pathlib import Path

import empyrical
import numpy as np
import pandas as pd
import pytest
from alphalens.performance import factor_information_coefficient

from tradelib import runs
from tradelib.config import Config
from tradelib.data import dataset
from tradelib.report import inputs as ri
from tradelib.report import metrics as ev
from tradelib.report import report as rp

REAL = Path(__file__).resolve().parent / "data" / "real"
CFG = Config(data_path=str(REAL), window=16, horizon=1)


@pytest.fixture(scope="module")
def real_fs():
    return dataset.build(CFG)[0]


@pytest.fixture
def real_run(tmp_path, real_fs):
    """A run folder as train.py writes it (predictions.parquet, summary.json with the config): a ridge fitted
    on the training rows predicts every test row with a known target."""
    fs = real_fs
    train = fs.split == 0
    w, b = ev.ridge_fit(fs.X[train], fs.y[train])
    rows = np.flatnonzero((fs.split == 2) & np.isfinite(fs.y))
    run = tmp_path / "real-run"
    run.mkdir()
    runs.write_predictions(run, fs, rows, fs.X[rows].astype(np.float64) @ w + b)
    runs.write_summary(run, {"run_id": run.name, "config": CFG.to_dict()})
    return run


def test_real_daily_calendar_gives_about_252_periods_a_year(real_fs):
    cal = real_fs.meta["calendar"]
    assert cal["method"] == "sessions" and cal["bars_per_session"] == 1.0
    assert 250 < cal["periods_per_year"] < 254  # not 365.25: weekends and holidays do not trade
    # a weekend is a session break, not a missing bar: targets over it stay (one symbol lacks one day)
    assert real_fs.meta["masked_targets"]["spans_missing_bar"] <= 3
    ends = np.r_[real_fs.symbol_id[1:] != real_fs.symbol_id[:-1], True]
    assert np.isfinite(real_fs.y[~ends]).mean() > 0.999


def test_sharpe_on_real_daily_bars_equals_empyrical(real_run, real_fs):
    inputs = ri.load_inputs(real_run, ri.ReportSettings.of(cost_bps=5.0), fs=real_fs)
    s = rp.build_report(real_run, inputs=inputs)["summary"]
    ppy = s["periods_per_year"]
    assert 250 < ppy < 254 and inputs.book["annualised"]["method"] == "sessions"
    net = inputs.backtest.pnl["net"].to_numpy()
    assert net.std() > 0 and len(net) > 500
    assert s["net_sharpe"] == pytest.approx(empyrical.sharpe_ratio(net, annualization=ppy), rel=1e-10)
    assert s["net_sharpe"] == pytest.approx(net.mean() / net.std(ddof=1) * np.sqrt(ppy), rel=1e-10)  # by hand
    assert s["net_annual_return"] == pytest.approx(empyrical.annual_return(net, annualization=ppy), rel=1e-10)
    assert s["net_annual_volatility"] == pytest.approx(empyrical.annual_volatility(net, annualization=ppy),
                                                       rel=1e-10)
    gross = inputs.backtest.pnl["gross"].to_numpy()
    assert s["gross_sharpe"] == pytest.approx(empyrical.sharpe_ratio(gross, annualization=ppy), rel=1e-10)
    # from the 1 invested: a flat bar first puts it in empyrical's running peak too
    assert s["max_drawdown"] == pytest.approx(-empyrical.max_drawdown(np.r_[0.0, net]), rel=1e-10)
    assert s["market_beta"] == pytest.approx(empyrical.beta(net, inputs.backtest.pnl["buy_hold"].to_numpy()),
                                             rel=1e-10)


def test_the_alpha_beyond_the_market_equals_statsmodels_ols_with_a_newey_west_covariance(real_run, real_fs):
    """The net book regressed on buy & hold: statsmodels' OLS gives the same alpha and beta, and its sandwich
    pieces (the hat matrix's diagonal, `S_hac_simple`: Bartlett, the Sharpe's lags, no small-sample correction) on
    the HC3 scores, each bar's residual over 1 - its leverage, the same intervals and t."""
    import statsmodels.api as sm
    from statsmodels.stats.sandwich_covariance import S_hac_simple

    from tradelib.report import backtest as bk

    inputs = ri.load_inputs(real_run, ri.ReportSettings.of(cost_bps=5.0), fs=real_fs)
    s = rp.build_report(real_run, inputs=inputs)["summary"]
    net, market = inputs.backtest.pnl["net"].to_numpy(), inputs.backtest.pnl["buy_hold"].to_numpy()
    ppy, lags = s["periods_per_year"], bk.newey_west_lags(len(net))
    X = sm.add_constant(market)
    fit = sm.OLS(net, X).fit()
    lever = fit.get_influence().hat_matrix_diag
    inv = fit.normalized_cov_params
    se = np.sqrt(np.diag(inv @ S_hac_simple(X * (fit.resid / (1 - lever))[:, None], lags) @ inv))
    assert s["market_alpha"] == pytest.approx(fit.params[0] * ppy, rel=1e-10)
    assert s["market_alpha_t"] == pytest.approx(fit.params[0] / se[0], rel=1e-8)
    assert s["market_alpha_ci"] == pytest.approx([(fit.params[0] + z * se[0]) * ppy for z in (-1.96, 1.96)],
                                                 rel=1e-8)
    assert s["market_beta"] == pytest.approx(fit.params[1], rel=1e-10)
    assert s["market_beta_ci"] == pytest.approx([fit.params[1] + z * se[1] for z in (-1.96, 1.96)], rel=1e-8)


def alphalens_rank_ic(df: pd.DataFrame) -> pd.Series:
    """alphalens-reloaded's per-date Spearman IC of `prediction` against `target` (its forward return)."""
    factor = df.rename(columns={"timestamp": "date", "symbol": "asset", "prediction": "factor", "target": "1D"})
    return factor_information_coefficient(factor.set_index(["date", "asset"])[["factor", "1D"]])["1D"]


def test_cross_sectional_ic_equals_alphalens_on_real_predictions(real_run, real_fs):
    df = runs.read_predictions(real_run)
    theirs = alphalens_rank_ic(df)
    ours = ev.ic_by_timestamp(df)
    enough = df.groupby("timestamp")["symbol"].nunique() >= 3  # alphalens also ranks 2 names (always +-1)
    theirs = theirs[enough.reindex(theirs.index).to_numpy()]
    assert len(ours) == len(theirs) > 500
    np.testing.assert_array_equal(ours["period"].to_numpy(), theirs.index.to_numpy())
    np.testing.assert_allclose(ours["rank_ic"].to_numpy(), theirs.to_numpy(), atol=1e-12)
    s = rp.build_report(real_run, settings=ri.ReportSettings.of(), fs=real_fs)["summary"]
    assert s["cross_sectional_rank_ic_lag0"] == pytest.approx(theirs.mean(), abs=1e-12)  # before the trade delay


def shifted_by_a_bar(df: pd.DataFrame) -> pd.DataFrame:
    """df's rows with `shifted`: each asset's target one date later (pandas' pivot and shift, not tradelib's
    lookup), where there is one."""
    wide = df.pivot(index="timestamp", columns="symbol", values="target").sort_index()
    shifted = wide.shift(-1).stack().rename("shifted")
    return df.join(shifted, on=["timestamp", "symbol"]).dropna(subset=["shifted"])


def test_the_cross_sectional_ic_is_alphalens_on_returns_shifted_by_the_trade_delay(real_run, real_fs):
    """trade_delay 1: every IC is against the t+1 to t+2 return; the cross-sectional one is alphalens-reloaded's
    IC on each asset's forward returns shifted one date."""
    df = shifted_by_a_bar(runs.read_predictions(real_run))
    enough = df.groupby("timestamp")["symbol"].transform("nunique") >= 3
    theirs = alphalens_rank_ic(df[enough].drop(columns="target").rename(columns={"shifted": "target"}))
    s = rp.build_report(real_run, settings=ri.ReportSettings.of(trade_delay=1), fs=real_fs)["summary"]
    assert len(theirs) > 500
    assert s["cross_sectional_rank_ic"] == pytest.approx(theirs.mean(), abs=1e-12)
    assert s["cross_sectional_rank_ic"] != pytest.approx(s["cross_sectional_rank_ic_lag0"], abs=1e-6)


def test_the_headline_on_three_stocks_is_the_pooled_ic_of_the_sign_book_as_scipy_computes_it(real_run, real_fs):
    """3 symbols of daily bars: auto trades each one's sign (fewer than min_symbols_cs 5 to rank), so the headline
    is the IC of that book, the pooled one over every test row against the shifted returns: scipy's Pearson and
    Spearman, and its t scipy's one-sample t of each date's share of it (horizon 1: no overlap)."""
    from scipy import stats

    df = shifted_by_a_bar(runs.read_predictions(real_run))
    s = rp.build_report(real_run, settings=ri.ReportSettings.of(), fs=real_fs)["summary"]
    assert (s["position_mode"], s["headline_ic"], s["ic_lag"]) == ("sign", "pooled", 1)
    assert "directional (sign) book over 3 symbol(s)" in s["headline_reason"]
    x, y = df["prediction"].to_numpy(float), df["shifted"].to_numpy(float)
    assert len(x) > 1500
    assert s["pooled_ic"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert s["pooled_rank_ic"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    z = pd.Series(stats.zscore(x) * stats.zscore(y)).groupby(df["timestamp"].to_numpy())
    shares = z.sum() * z.ngroups / len(x)
    assert s["ic_t_stat"] == pytest.approx(stats.ttest_1samp(shares, 0.0).statistic, rel=1e-10)
    assert s["ic_t_method"].startswith("iid")
    k = math.ceil(0.01 * len(shares))  # without the 1% of dates that carried it most, August 2015's among them,
    order = shares.sort_values(ascending=bool(s["pooled_ic"] < 0), kind="stable").index  # and the 1% against it
    kept = df[~df["timestamp"].isin(order[:k].union(order[-k:]))]
    rest = s["ic_without_best"]
    assert rest["ic"] == pytest.approx(stats.pearsonr(kept["prediction"], kept["shifted"]).statistic, abs=1e-12)
    assert (rest["periods"], rest["of"]) == (k, len(shares)) and rest["best"].startswith("2015-08-2")


def test_the_sharpe_interval_and_psr_equal_a_hand_computation_on_real_daily_returns(real_run, real_fs):
    """Lo (2002) with a Newey-West covariance (statsmodels) of the net book's daily returns, and PSR = Phi(SR/SE);
    the annual return's interval from the same covariance of the log growth."""
    from scipy import stats
    from statsmodels.stats.sandwich_covariance import S_hac_simple

    inputs = ri.load_inputs(real_run, ri.ReportSettings.of(cost_bps=5.0), fs=real_fs)
    s = rp.build_report(real_run, inputs=inputs)["summary"]
    r, ppy = inputs.backtest.pnl["net"].to_numpy(), s["periods_per_year"]
    n, d = len(r), r - r.mean()
    var = d @ d / n
    S = S_hac_simple(np.column_stack([d, d * d - var])) / n
    g = np.array([1 / np.sqrt(var), -r.mean() / (2 * var**1.5)])
    se = np.sqrt(g @ S @ g / (n - 1))
    sr = r.mean() / r.std(ddof=1)
    assert s["net_sharpe_se"] == pytest.approx(se * np.sqrt(ppy), rel=1e-10)
    assert s["net_sharpe_ci"] == pytest.approx([(sr - 1.96 * se) * np.sqrt(ppy), (sr + 1.96 * se) * np.sqrt(ppy)],
                                               rel=1e-10)
    assert s["net_sharpe_psr"] == pytest.approx(stats.norm.cdf(sr / se), rel=1e-10)
    g = np.log1p(r)  # the annual return's interval: the mean log growth with the same Newey-West error
    se_g = np.sqrt(S_hac_simple((g - g.mean())[:, None])[0, 0] / n / n)
    assert s["net_annual_return_ci"] == pytest.approx([np.expm1(ppy * (g.mean() + z * se_g)) for z in (-1.96, 1.96)],
                                                      rel=1e-10)
    assert s["net_annual_return_ci"][0] < s["net_annual_return"] < s["net_annual_return_ci"][1]
    assert s["survives_costs"] in (True, False, None) and len(s["break_even_ci"]) == 2


def test_the_reports_ridge_baseline_is_the_ridge_fitted_on_the_copied_training_rows(real_run, real_fs):
    """real_run's predictions are ridge_fit on fs.X[train] copied out (the definition); the report fits its
    baseline in blocks over the same features, read as 04 reads them (the cache mapped by load_featureset): the
    two predict alike, so their figures are the same."""
    cached = dataset.prepare(CFG, verbose=False)
    assert np.array_equal(cached.X, real_fs.X)
    summary = runs.read_summary(real_run)
    runs.write_summary(real_run, {**summary, "cache_dir": cached.meta["cache_dir"]})
    fs = ri.load_featureset(real_run)
    assert isinstance(fs.X, np.memmap)
    p = ri.load_inputs(real_run, ri.ReportSettings.of(), fs=fs).predictors.set_index("predictor")
    for col in ("cross_sectional_ic", "cross_sectional_rank_ic", "daily_ic", "pooled_ic"):
        assert p.loc["ridge", col] == pytest.approx(p.loc["model", col], rel=1e-6)


def test_the_test_span_as_traded_on_real_daily_bars(real_run, real_fs):
    """First and last prediction, the rows purged after validation and the window's warm-up, counted by hand."""
    from tradelib.train.sources import window_ends

    ends = window_ends(real_fs, 2, CFG.window)
    summary = {"run_id": real_run.name, "config": CFG.to_dict(), "test_windows": int(len(ends))}
    runs.write_summary(real_run, summary)
    span = ri.load_inputs(real_run, ri.ReportSettings.of(), fs=real_fs).test_span
    cut = real_fs.meta["splits"]
    t = real_fs.timestamp
    purged = (real_fs.split == -1) & (t > cut["val_end"])
    assert span["purged_rows"] == int(purged.sum()) == 3 * (CFG.target_reach + CFG.window)  # per symbol
    targets = int(((real_fs.split == 2) & np.isfinite(real_fs.y)).sum())
    assert span["warmup_rows"] == targets - len(ends) >= 3 * (CFG.window - 1)
    first = pd.Timestamp(span["first_prediction"])
    assert first == pd.Timestamp(int(real_fs.timestamp[real_fs.split == 2].min()), tz="UTC")  # predictions: every row
    assert span["periods"] > 500


def test_the_daily_profile_sizes_the_run_for_daily_bars():
    """params/daily.yaml on the real daily bars: the warm-up is a small share of the run's optimizer steps, and
    the report reads the bars as '1 day'."""
    from tradelib.config import load_config
    from tradelib.train.sources import window_ends

    cfg = load_config([str(Path(__file__).resolve().parents[1] / "params" / "daily.yaml")])
    fs = dataset.build(cfg.replace(data_path=str(REAL)))[0]
    steps = len(window_ends(fs, 0, cfg.window)) // (cfg.batch_size * cfg.grad_accum_steps) * cfg.epochs
    assert steps >= 10 * cfg.warmup_steps
    assert ev.bar_words(ri._bar_seconds_from_fs(fs)) == "1 day"


def test_cross_sectional_ic_equals_alphalens_on_a_wide_universe():
    """Twelve symbols of daily bars with a planted signal: many distinct rank ICs, not just 3-name ones."""
    rng = np.random.default_rng(3)
    days = pd.date_range("2021-01-04", periods=120, freq="B", tz="UTC")
    df = pd.DataFrame({"timestamp": np.repeat(days, 12), "symbol": np.tile([f"S{i:02d}" for i in range(12)], 120)})
    df["target"] = rng.standard_normal(len(df))
    df["prediction"] = 0.2 * df["target"] + rng.standard_normal(len(df))
    df = df.drop(index=rng.choice(len(df), 40, replace=False))  # a few missing names
    theirs = alphalens_rank_ic(df)
    ours = ev.ic_by_timestamp(df)
    np.testing.assert_allclose(ours["rank_ic"].to_numpy(), theirs.to_numpy(), atol=1e-12)
    assert ev.named_ics(df, 0)["cross_sectional_rank_ic"] == pytest.approx(theirs.mean(), abs=1e-12)
