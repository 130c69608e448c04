"""report.json: one run's figures, computed from its `ReportInputs` (inputs.py) and written as strict JSON.

`build_report` assembles the summary (the named ICs, the book after costs, the Sharpe's error bars, the
throughput), the conventions the numbers depend on, every table, a walk-forward's figures per fold and, when
asked, another run's figures beside these. The words and figures that go with it: words.py, figures.py.
docs/metrics.md says which figure is which.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tradelib import runs
from tradelib.config import run_setting
from tradelib.paths import atomic_write_bytes, is_synthetic
from tradelib.report import backtest as bk
from tradelib.report import metrics as ev
from tradelib.report.inputs import (
    SHORT_SPAN_DAYS,
    TRADED,
    ReportInputs,
    ReportSettings,
    load_featureset,
    load_inputs,
    lr_schedule,
    sweep_runs,
)
from tradelib.report.words import run_configuration

IC_NUMBERS = [
    "cross_sectional_ic", "cross_sectional_rank_ic", "daily_ic", "daily_rank_ic", "pooled_ic",
    "oracle_cross_sectional_ic", "oracle_daily_ic", "oracle_pooled_ic",
    "cross_sectional_ic_lag0", "daily_ic_lag0", "pooled_ic_lag0",
]  # fmt: skip
SUMMARY_NUMBERS = IC_NUMBERS + [
    "directional_accuracy", "net_sharpe", "gross_sharpe", "buy_hold_sharpe", "net_total_return", "max_drawdown",
    "turnover", "market_beta", "market_alpha", "break_even_bps", "samples_per_s", "data_wait_share", "gpu_util",
    "mfu", "peak_mem_gb", "epoch_time_s",
]  # fmt: skip
TIMED = ("samples_per_s", "epoch_time_s")  # throughput: compared only when neither run was timed on a busy machine
PERIOD_WORDS = {"cross_sectional": "per-timestamp ICs", "daily": "per-day ICs",
                "pooled": "per-timestamp terms of the pooled correlation"}


def build_report(run_dir: Path, compare_with: Path | None = None, *, inputs: ReportInputs | None = None,
                 **load_kwargs) -> dict:
    """Compute the report of one run, write it to run_dir/report.json (strict JSON, NaN -> null), return it.

    Pass `inputs` from `load_inputs` to reuse them for `figures.make_figures`; otherwise they are loaded here, with
    `load_kwargs` (settings, fs, X_train, y_train, X_test, bar_seconds) passed on to `load_inputs`.
    """
    run_dir = Path(run_dir)
    if inputs is None:
        inputs = load_inputs(run_dir, **load_kwargs)
    summary = summary_block(inputs)
    report = {
        "run_id": summary["run_id"],
        "run_dir": str(run_dir),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "summary": summary,
        "conventions": conventions(inputs),
        "ic": {**inputs.ic, "headline": inputs.family, "lag": inputs.book["trade_delay"]},
        "ic_lag0": inputs.ic_lag0,
        "ic_decay": inputs.decay,
        "test_span": inputs.test_span,
        "warnings": inputs.warnings,
        "trials": inputs.trials,
        "ic_by_timestamp": inputs.ic_timestamp,
        "ic_by_day": inputs.ic_day,
        "predictors": inputs.predictors,
        "best_predictors": bk.best_predictors(inputs.predictors, inputs.family, inputs.trials),
        "per_symbol": inputs.per_symbol,
        "deciles": inputs.deciles,
        "backtest": inputs.backtest.stats,
        "costs": {"net_sharpe_by_cost": inputs.costs, "break_even_bps": inputs.break_even_bps,
                  "break_even_ci": inputs.break_even_ci},
        "training": _training_block(inputs),
        "run": {k: v for k, v in inputs.summary.items() if k != "config"},
        "config": inputs.summary.get("config", {}),
        "configuration": [list(kv) for kv in run_configuration(inputs.summary, inputs.splits)],
    }
    if inputs.sweep is not None:
        report["loader_sweep"] = inputs.sweep
    if inputs.folds is not None:
        report["folds"] = fold_block(inputs)
    if compare_with is not None:
        report["compare"] = compare_block(summary, Path(compare_with))
    report = to_jsonable(report)
    atomic_write_bytes(json.dumps(report, indent=1, allow_nan=False).encode(), run_dir / "report.json")
    # report.html is the previous report.json's until 04 is rendered again: a stop before that left the two apart
    (run_dir / "report.html").unlink(missing_ok=True)
    return report


def headline_numbers(inputs: ReportInputs) -> dict:
    """The figures a sweep's table and a comparison show (what `load_inputs(headline_only=True)` computes): the
    run, the named ICs (at the traded lag, the oracle's, before the delay), the headline IC's t and whether the report
    calls it significant (in a sweep: once the sweep's runs are allowed for), the book after costs (its net Sharpe
    with error bars), throughput."""
    s, bt, p, icd, book = inputs.summary, inputs.backtest.stats, inputs.predictors, inputs.ic, inputs.book
    mfu, net = as_float(s.get("mfu")), bt["net"]["sharpe_inference"]
    t, runs = as_float(icd[inputs.family]["t_stat"]), sweep_runs(inputs.run_dir)
    deflated = bk.deflated_t(abs(t), runs)
    out = {
        "run_id": s.get("run_id") or inputs.run_dir.name,
        "device": s.get("device"),
        "device_name": s.get("device_name"),
        "model": s.get("model"),
        "loader": s.get("loader"),
        "bar_seconds": book["bar_seconds"],
        "headline_ic": inputs.family,
        "ic_lag": book["trade_delay"],  # every *_ic below is against the return the book earns at this lag
    }
    for fam in ("cross_sectional", "daily"):
        f = icd[fam]
        out.update({f"{fam}_ic": f["ic"], f"{fam}_rank_ic": f["rank_ic"], f"{fam}_icir": f["icir"],
                    f"{fam}_t_stat": f["t_stat"], f"{fam}_periods": f["n_periods"]})
    out.update({"pooled_ic": icd["pooled"]["ic"], "pooled_rank_ic": icd["pooled"]["rank_ic"],
                "pooled_t_stat": icd["pooled"]["t_stat"]})
    # the headline IC's t; the best of a sweep's runs is no single test: its |t| deflated over them, as the best
    # predictor's t is, and the report's verdict (a sweep's table shows it beside each run's ICs)
    out.update({"ic_t_stat": icd[inputs.family]["t_stat"], "sweep_runs": runs, "ic_t_deflated": deflated,
                "ic_significant": bk.significant(t, deflated, runs)})
    for fam in ev.IC_FAMILIES:  # before the trade delay: against the return from the signal's own close
        f = inputs.ic_lag0[fam]
        out.update({f"{fam}_ic_lag0": f["ic"], f"{fam}_rank_ic_lag0": f["rank_ic"], f"{fam}_t_stat_lag0": f["t_stat"]})
    for fam in ev.IC_FAMILIES:
        out[f"oracle_{fam}_ic"] = _predictor(p, "oracle", f"{fam}_ic")
    out.update({
        "directional_accuracy": _predictor(p, "model", "directional_accuracy"),
        "periods_per_year": bt["periods_per_year"],
        "net_sharpe": bt["net"]["sharpe"],
        "net_sharpe_se": net["se"],
        "net_sharpe_ci": [net["ci_low"], net["ci_high"]],
        "gross_sharpe": bt["gross"]["sharpe"],
        "buy_hold_sharpe": bt["buy_hold"]["sharpe"],
        "net_total_return": bt["net"]["total_return"],
        "max_drawdown": bt["net"]["max_drawdown"],
        "turnover": bt["net"]["turnover"],
        "market_beta": bt["market"]["beta"],
        "market_beta_ci": bt["market"]["beta_ci"],
        "market_alpha": bt["market"]["alpha"],  # a year's worth, beyond the market exposure
        "market_alpha_ci": bt["market"]["alpha_ci"],
        "market_alpha_t": bt["market"]["alpha_t"],
        "break_even_bps": inputs.break_even_bps,
        "samples_per_s": as_float(s.get("samples_per_s")),
        "data_wait_share": as_float(s.get("data_wait_share")),
        "gpu_util": as_float(s.get("gpu_util")),
        "mfu": mfu if not mfu > 1 else float("nan"),  # above 1: impossible
        "mfu_invalid": mfu if mfu > 1 else None,
        "peak_mem_gb": as_float(s.get("peak_mem_bytes")) / 1e9,
        "epoch_time_s": as_float(s.get("epoch_time_s")),
        "busy_note": s.get("busy_note"),  # samples/s timed while other processes were busy: not comparable
    })
    return out


def summary_block(inputs: ReportInputs) -> dict:
    """The numbers that matter, flat: `headline_numbers`, which IC leads and why, the baselines, the book's
    settings and its error bars, and the figures that cannot be taken as they read."""
    s, bt, p, head = inputs.summary, inputs.backtest.stats, inputs.predictors, inputs.ic[inputs.family]
    out = headline_numbers(inputs)
    runs = out["sweep_runs"]
    out.update({
        "n_test_rows": int(len(inputs.predictions)),
        "test_days": _span_days(inputs.predictions),
        "n_symbols": int(inputs.predictions["symbol"].nunique()),
        "bar": ev.bar_words(inputs.book["bar_seconds"]),
        "horizon_bars": inputs.horizon,
        "target_delay_bars": int(run_setting(s.get("config") or {}, "target_delay")),
        "headline_reason": inputs.family_reason,
        "ic_t_method": head["t_method"],  # of ic_t_stat: overlap-robust, of the headline family
        "ic_t_stat_lag0": inputs.ic_lag0[inputs.family]["t_stat"],
        "ic_t_deflated_lag0": bk.deflated_t(abs(as_float(inputs.ic_lag0[inputs.family]["t_stat"])), runs),
        "ic_without_best": ev.without_best(inputs.predictions, inputs.family, inputs.ic_series, target_col=TRADED,
                                          zone=inputs.zone),
        "baseline_ic": {name: _predictor(p, name, f"{inputs.family}_ic") for name in p["predictor"] if name != "model"},
        "cost_bps": inputs.book["cost_bps"],
        "position_mode": bt["mode"],
        "position_mode_reason": inputs.mode_reason,
        "trade_delay": bt["trade_delay"],
        "annualisation_source": inputs.book["annualised"].get("source"),
        "net_annual_return": bt["net"]["annual_return"],
        "net_annual_return_ci": bt["net"]["annual_return_ci"],
        "net_annual_volatility": bt["net"]["annual_volatility"],
        "gross_exposure": bt["gross_exposure"],
        "net_exposure": bt["net_exposure"],
        "abs_net_exposure": bt["abs_net_exposure"],
        **sharpe_block(inputs),
    })
    figures = {"net_sharpe": bt["net"]["sharpe"], "gross_sharpe": bt["gross"]["sharpe"],
               "net_annual_return": bt["net"]["annual_return"], "gross_annual_return": bt["gross"]["annual_return"],
               "market_alpha": bt["market"]["alpha"], "buy_hold_sharpe": bt["buy_hold"]["sharpe"],
               "buy_hold_annual_return": bt["buy_hold"]["annual_return"]}
    pnl = inputs.backtest.pnl  # the gross book's alpha: a net one far below it is the costs' (`costs_explain`)
    gross_alpha = bk.market_regression(pnl["gross"].to_numpy(), pnl["buy_hold"].to_numpy(), bt["periods_per_year"])
    costs = {"market_alpha": bk.costs_explain(figures["market_alpha"], gross_alpha["alpha"],
                                              bk.MAX_PLAUSIBLE_ANNUAL_RETURN)}
    flags = {"net_sharpe": bk.net_sharpe_flags(figures["net_sharpe"], figures["gross_sharpe"]),
             "gross_sharpe": bk.implausible(figures["gross_sharpe"], None),
             "net_annual_return": bk.implausible(None, figures["net_annual_return"]),
             "gross_annual_return": bk.implausible(None, figures["gross_annual_return"]),
             "market_alpha": bk.implausible(None, None, figures["market_alpha"]),
             "buy_hold_sharpe": bk.implausible(figures["buy_hold_sharpe"], None, market=True),
             "buy_hold_annual_return": bk.implausible(None, figures["buy_hold_annual_return"], market=True)}
    synthetic = is_synthetic((s.get("config") or {}).get("data_path"))
    planted = " (here the embedded synthetic market, whose planted signal is far stronger than a real market's)"
    out["flags"] = {k: why[0] + (planted if synthetic and figures[k] > 0 and not k.startswith("buy_hold") else "")
                    for k, why in flags.items() if why and not costs.get(k)}  # figures that cannot be taken as read
    # (a loss is not the signal's, and buy & hold holds no signal)
    out["warnings"] = list(inputs.warnings)
    return out


def sharpe_block(inputs: ReportInputs) -> dict:
    """The net Sharpe's PSR, the gross and buy-and-hold Sharpes' error bars (`bk.sharpe_inference`; the net
    one's are in `headline_numbers`), the net Sharpe's deflated Sharpe over the trials the report
    knows, the break-even cost's bootstrap interval, and whether the book survives its cost: only where that
    interval lies above the cost; otherwise the data cannot tell (or it does not)."""
    stats, ci, n = inputs.backtest.stats, inputs.break_even_ci, inputs.trials
    net, gross, hold = (stats[k]["sharpe_inference"] for k in ("net", "gross", "buy_hold"))
    dsr = bk.deflated_sharpe(net["sharpe_period"], net["se_period"], n["n_trials"], n["trial_variance"])
    low, high, cost = ci.get("low", float("nan")), ci.get("high", float("nan")), inputs.book["cost_bps"]
    survives = None
    if math.isfinite(low) and low > cost:
        survives = True
    elif math.isfinite(high) and high < cost:
        survives = False
    return {
        "net_sharpe_psr": net["psr"], "net_sharpe_se_lags": net["lags"], "gross_sharpe_se": gross["se"],
        "gross_sharpe_ci": [gross["ci_low"], gross["ci_high"]], "gross_sharpe_psr": gross["psr"],
        "buy_hold_sharpe_ci": [hold["ci_low"], hold["ci_high"]],
        "net_sharpe_dsr": dsr["dsr"], "dsr_trials": dsr["n_trials"], "dsr_sr0": dsr["sr0_period"],
        "break_even_ci": [low, high], "break_even_block": ci.get("block"), "break_even_samples": ci.get("samples"),
        "survives_costs": survives,
    }


def conventions(inputs: ReportInputs) -> dict:
    """What the numbers mean here: which IC leads and why, the t-statistic, the annualisation, the book
    (delay, cost, positions) and the split dates. The report states all of it."""
    head, bt, lag = inputs.ic[inputs.family], inputs.backtest.stats, inputs.book["trade_delay"]
    return {
        "headline_ic": inputs.family,
        "headline_ic_words": ev.FAMILY_WORDS[inputs.family],
        "headline_reason": inputs.family_reason,
        "ic_families": {
            "cross_sectional": "Pearson (and Spearman) correlation across symbols at each timestamp with >= 3 "
                               "symbols, averaged over timestamps (alphalens, Qlib)",
            "daily": "correlation over every row of a session (a day from the market's start of day; all symbols "
                     "and bars), averaged over days",
            "pooled": "one correlation over every test row",
        },
        "t_stat": f"{head['t_method']}, over {PERIOD_WORDS[inputs.family]}; the target spans {inputs.horizon} "
                  f"bar(s) (horizon from {inputs.horizon_source})",
        "significance": "|t| >= 2 on the overlap-robust t only",
        "ic_lag": f"every IC against the target {lag} bar(s) after the signal (the return from t+{lag} to t+"
                  f"{lag + inputs.horizon}, the one a book trading {lag} bar(s) later earns); the lag-0 figures "
                  f"(before the trade delay) beside them",
        "sharpe_interval": "Lo (2002) non-IID standard error (delta method, Newey-West covariance of the first two "
                           "moments): allows for autocorrelation and fat tails; 95% interval SR +- 1.96 SE",
        "deflation": f"deflated Sharpe over {inputs.trials.get('n_trials')} trial(s) ("
                     f"{inputs.trials.get('predictors')} predictor(s) x {inputs.trials.get('sweep_runs')} sweep "
                     f"run(s)); 'best' only for a positive figure whose deflated probability exceeds {bk.SIGNIFICANT}",
        "bar": ev.bar_words(inputs.book["bar_seconds"]),
        "position_mode_reason": inputs.mode_reason,
        "horizon_bars": inputs.horizon,
        "annualisation": inputs.book["annualised"],
        "trade_delay_bars": bt["trade_delay"],
        "cost_bps": bt["cost_bps"],
        "position_mode": bt["mode"],
        "splits": inputs.splits,
    }


def _training_block(inputs: ReportInputs) -> dict:
    steps, epochs = inputs.steps, inputs.epochs
    val = epochs["val_loss"].dropna() if len(epochs) else pd.Series(dtype=float)
    return {
        "loss": inputs.loss or {},
        "lr_from_step_0": lr_schedule(inputs.facts, steps, inputs.summary.get("optimizer_steps")) is not None,
        "n_step_rows": int(len(steps)),
        "last_step": float(steps["step"].iloc[-1]) if len(steps) else float("nan"),
        "final_loss_ema": float(steps["loss_ema"].iloc[-1]) if len(steps) else float("nan"),
        "skipped_steps": float(steps["skipped_steps"].max()) if len(steps) else float("nan"),
        "best_val_loss": float(val.min()) if len(val) else float("nan"),
        "best_epoch": float(epochs.loc[val.idxmin(), "epoch"]) if len(val) else float("nan"),
        "epochs": epochs,
    }


def compare_block(this: dict, other_dir: Path) -> dict:
    """This run's summary numbers beside another run's, each figure against the same figure (delta = this -
    other, ratio = this / other). The other run is evaluated with this run's book (cost, positions, delay), so
    the two are measured alike, and annualised by its own calendar as its own report is (its feature cache's whole
    data's over a short test span): a 24/7 market and an exchange session of one bar size have different periods a
    year. Only a `periods_per_year` the researcher gave this run applies to the
    other too, on data of the same bar size."""
    other_dir = Path(other_dir)
    unread = ""  # why the other run's predictions were not read, where they were not (its summary's figures then)
    try:
        bar = ev.infer_bar_seconds(runs.read_predictions(other_dir))
        same_bar = math.isclose(bar, as_float(this.get("bar_seconds")), rel_tol=1e-6)
        given = same_bar and this.get("annualisation_source") == "given"
        book = ReportSettings.of(cost_bps=this["cost_bps"], position_mode=this["position_mode"],
                                 trade_delay=this["trade_delay"],
                                 periods_per_year=this["periods_per_year"] if given else 0.0)
        # its feature cache: a test span too short to see a week's pattern is annualised by the whole data's
        fs = load_featureset(other_dir, f"the compared run {other_dir.name}'s test span, if under {SHORT_SPAN_DAYS} "
                                        f"days, is annualised by its own days, not its whole data's")
        other = headline_numbers(load_inputs(other_dir, book, fs=fs, headline_only=True))
    except (FileNotFoundError, ValueError) as exc:  # a throughput-only run: compare what summary.json holds
        unread = " ".join(str(exc).split())
        s = runs.read_summary(other_dir) or {}
        other = {k: as_float(s.get(k)) for k in SUMMARY_NUMBERS}  # its named test ICs, the throughput
        other.update(peak_mem_gb=as_float(s.get("peak_mem_bytes")) / 1e9)
        other.update({k: s.get(k) for k in ("device", "device_name", "model", "loader", "busy_note")})
    busy = bool(this.get("busy_note") or other.get("busy_note"))  # either timed on a busy machine: no speed-up
    metrics = {}
    for k in SUMMARY_NUMBERS:
        a, b = as_float(this.get(k)), as_float(other.get(k))
        apart = busy and k in TIMED
        metrics[k] = {"this": a, "other": b, "delta": float("nan") if apart else a - b,
                      "ratio": a / b if b != 0 and not apart else float("nan")}
    keys = ("device", "device_name", "model", "loader", "headline_ic", "periods_per_year", "bar_seconds", "busy_note")
    return {
        "run_id": other_dir.name,
        "run_dir": str(other_dir),
        "this": {k: this.get(k) for k in keys},
        "other": {k: other.get(k) for k in keys},
        "metrics": metrics,
        "net_sharpe_ci": {"this": this.get("net_sharpe_ci"), "other": other.get("net_sharpe_ci")},
        "market_beta_ci": {"this": this.get("market_beta_ci"), "other": other.get("market_beta_ci")},
        "unread": unread,
    }


def to_jsonable(obj):
    """Plain JSON types, NaN/inf -> None, timestamps -> ISO strings, frames -> lists of records."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, pd.DataFrame):
        return [to_jsonable(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, (list, tuple, pd.Series, np.ndarray)):
        return [to_jsonable(v) for v in list(obj)]
    if isinstance(obj, (pd.Timestamp, np.datetime64)):
        return None if pd.isna(obj) else pd.Timestamp(obj).isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, np.bool_, str)):
        return bool(obj) if isinstance(obj, np.bool_) else obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is pd.NaT or obj is pd.NA:
        return None
    return str(obj)


def as_float(value) -> float:
    """A summary.json value as a float; None, strings and missing -> NaN."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return float("nan")


def _predictor(predictors: pd.DataFrame, name: str, col: str) -> float:
    row = predictors.loc[predictors["predictor"] == name, col]
    return float(row.iloc[0]) if len(row) else float("nan")


def _span_days(df: pd.DataFrame) -> float:
    ts = pd.to_datetime(df["timestamp"], utc=True)
    return float((ts.max() - ts.min()) / pd.Timedelta(days=1)) if len(ts) else float("nan")


def fold_block(inputs: ReportInputs) -> dict:
    """report.json's `folds`: how the walk-forward was set up, and `inputs.fold_table`."""
    s = inputs.summary
    return {"n_folds": len(s.get("folds") or []), "fold_window": s.get("fold_window"), "fold_init": s.get("fold_init"),
            "headline_ic": inputs.family, "t_method": inputs.ic[inputs.family]["t_method"], "table": inputs.folds}
