"""The whole path (a CSV read and cleaned, features, device windows, training, predictions, the report) on
markets tradelib did not generate, written here with numpy: on random walks the model finds nothing; with a
planted drift that lasts it finds a signal the book can trade; with a planted one-bar reversal, a model trained
on the return from t learns it and the report says no book trading a bar later earns it, while the default
model, trained on the return the book earns, does not chase it. Three ways through: an LSTM over windows, a
causal TCN trained on dense chunks, a walk-forward of two folds; and three symbols, traded and judged as a
directional book. A look-ahead in what the predictions see (a window reaching past t, a target starting before
it) would show on the random walks."""

import math

import numpy as np
import pandas as pd
import pytest

from tradelib.config import Config
from tradelib.report import report as rp
from tradelib.report import words as rw
from tradelib.report.inputs import ReportSettings, load_featureset, load_inputs
from tradelib.train.walkforward import train_or_walk

pytestmark = pytest.mark.slow

N_SYM, N_BARS = 10, 3000  # 5-minute bars: a test split of 15% of 3000 bars x 10 symbols


def write_market(path, seed: int, reversal: float = 0.0, drift: float = 0.0, n_sym: int = N_SYM) -> None:
    """OHLCV bars of `n_sym` symbols, log returns r_t = mu_t + phi r_(t-1) + e_t with t(5) noise e (sd 0.26%):
    phi = `reversal` (a one-bar bounce); mu an AR(1) with coefficient `drift`, sd 0.06% (a slow trend seen only
    through the returns). Both 0: a random walk."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-02", periods=N_BARS, freq="5min", tz="UTC")
    frames = []
    for i in range(n_sym):
        e = 0.002 * rng.standard_t(5, N_BARS)
        z = 0.0006 * math.sqrt(1 - drift**2) * rng.standard_normal(N_BARS)
        mu, r = np.zeros(N_BARS), np.zeros(N_BARS)
        for t in range(1, N_BARS):
            mu[t] = drift * mu[t - 1] + z[t]
            r[t] = mu[t] + reversal * r[t - 1] + e[t]
        close = 50.0 * np.exp(np.cumsum(r))
        open_ = np.r_[close[0], close[:-1]]
        frames.append(pd.DataFrame({
            "timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "symbol": f"S{i:02d}", "open": open_,
            "high": np.maximum(open_, close) * (1 + rng.uniform(0, 1e-3, N_BARS)),
            "low": np.minimum(open_, close) * (1 - rng.uniform(0, 1e-3, N_BARS)),
            "close": close, "volume": rng.uniform(1e3, 2e3, N_BARS),
        }))  # fmt: skip
    pd.concat(frames).to_csv(path, index=False)


def trained_report(tmp_path, name: str, run: dict | None = None, **market) -> dict:
    """Train a small LSTM (or what `run` sets) on the market's CSV for 150 steps (per fold), then compute its
    report as 04 does."""
    csv = tmp_path / f"{name}.csv"
    write_market(csv, **market)
    cfg = Config(**{"data_path": str(csv), "window": 16, "hidden": 16, "layers": 1, "batch_size": 64, "epochs": 1,
                    "max_steps": 150, "log_every": 25, "device": "cpu", "compile": "off", "tensorboard": False,
                    "run_id": name, **(run or {})})
    run_dir = train_or_walk(cfg)
    return rp.build_report(run_dir, inputs=load_inputs(run_dir, ReportSettings.of(cfg), fs=load_featureset(run_dir)))


# the path each way it can go: windows into a recurrent model, dense chunks of a causal TCN, walk-forward folds
PATHS = {"lstm": {}, "tcn-dense": {"model": "tcn", "dense": True, "layers": 2, "dense_chunk": 64, "batch_size": 4,
                                   "epochs": 3}, "walk-forward": {"folds": 2}}
NULL_RUNS = {"lstm-0": ("lstm", 0), "lstm-1": ("lstm", 1), "lstm-2": ("lstm", 2), "tcn-dense": ("tcn-dense", 3),
             "walk-forward": ("walk-forward", 4)}


@pytest.mark.parametrize("case", NULL_RUNS)
def test_on_random_walks_the_model_finds_nothing(tmp_path, case):
    """Neither the traded-lag IC nor the lag-0 one is distinguishable from zero (a window that saw t+1 would
    make the lag-0 one huge), no predictor is marked best, the gross Sharpe's interval holds 0, and the book's
    beta is within chance of 0."""
    path, seed = NULL_RUNS[case]
    report = trained_report(tmp_path, case, PATHS[path], seed=seed)
    s = report["summary"]
    assert s["headline_ic"] == "cross_sectional" and s["ic_lag"] == 1
    assert abs(s["ic_t_stat"]) < 3 and abs(s["ic_t_stat_lag0"]) < 3, s
    assert abs(s["cross_sectional_ic"]) < 0.05 and abs(s["cross_sectional_ic_lag0"]) < 0.05
    assert report["best_predictors"] == {}
    low, high = s["gross_sharpe_ci"]
    assert low < 0 < high
    assert not s["survives_costs"]
    assert abs(report["backtest"]["market"]["beta_t"]) < 3  # nor a market exposure: the neutral book's beta
    assert not [w for w in report["warnings"] if "carries market beta" in w]  # within chance of 0, not warned about


@pytest.mark.parametrize("path", PATHS)
def test_a_planted_drift_is_found_and_traded(tmp_path, path):
    """Each path finds a signal that lasts past the trade delay: the test on random walks can fail."""
    s = trained_report(tmp_path, f"drift-{path}", PATHS[path], seed=0, drift=0.97)["summary"]
    assert s["ic_t_stat"] > 5 and s["cross_sectional_ic"] > 0.08
    assert s["net_sharpe_ci"][0] > 0  # after 5 bps costs, with its error bars
    assert s["baseline_ic"]["ridge"] > 0.08  # the ridge on the same features finds it too


def test_a_one_bar_reversal_is_not_learned_for_a_book_that_cannot_trade_it(tmp_path):
    """phi = -0.2. Trained on the return from t (target_delay 0), the model learns the bounce (lag-0 IC about
    -phi), but a book trading one bar later earns phi^2 of it with the opposite sign and loses; the report says
    so, and warns that the model learned another target than the book trades. Trained as by default on the
    return the book earns (target_delay 1 = trade_delay), the model does not chase the bounce: its traded IC is
    not below zero and its gross book does not lose beyond its error bars."""
    report = trained_report(tmp_path, "bounce", {"target_delay": 0}, seed=0, reversal=-0.2)
    s = report["summary"]
    assert s["cross_sectional_ic_lag0"] > 0.12 and s["ic_t_stat_lag0"] > 5
    assert s["cross_sectional_ic"] < 0.02 < s["cross_sectional_ic_lag0"] - 0.1
    assert s["net_sharpe_ci"][1] < 0  # the book that trades it a bar late loses
    assert "no book trading 1 bar(s) later earns that" in rw.summary_markdown(report)
    assert any("learned the return starting 0 bar(s) after its signal" in w for w in report["warnings"])
    s = trained_report(tmp_path, "bounce-delayed", seed=0, reversal=-0.2)["summary"]
    assert s["cross_sectional_ic_lag0"] < 0.05 and s["cross_sectional_ic"] > -0.01
    assert s["gross_sharpe_ci"][1] > 0


@pytest.mark.parametrize("drift", [0.0, 0.97])
def test_three_symbols_are_traded_and_judged_as_a_directional_book(tmp_path, drift):
    """Too few symbols to rank: auto trades each one's sign and leads with the pooled IC, the IC of that book.
    On random walks it finds nothing; a drift that lasts it finds, and the sign book earns it gross, with its
    error bars (at 5 bps a sign book's turnover on 5-minute bars leaves its net Sharpe undecided; the per-day
    IC, over the two days of this test span, cannot tell either)."""
    s = trained_report(tmp_path, f"three-{drift}", {"epochs": 2}, seed=7, drift=drift, n_sym=3)["summary"]
    assert (s["position_mode"], s["headline_ic"], s["ic_lag"]) == ("sign", "pooled", 1)
    if drift == 0:
        assert abs(s["ic_t_stat"]) < 3 and abs(s["ic_t_stat_lag0"]) < 3 and abs(s["pooled_ic"]) < 0.1
        assert s["gross_sharpe_ci"][0] < 0 < s["gross_sharpe_ci"][1]
    else:
        assert s["ic_t_stat"] > 3 and s["pooled_ic"] > 0.08 and s["gross_sharpe_ci"][0] > 0
