"""Assemble one run's evaluation into `report.json` (numbers) and PNGs (figures), for 04_report to display.

The notebook calls, in order: `inputs = load_inputs(run_dir, cost_bps, fs=fs, ...)` (frames: predictions,
ICs, backtest, costs, curves), `report = build_report(run_dir, inputs=inputs)` (a dict, also
run_dir/report.json), `make_figures(inputs, run_dir)` (Figures, also run_dir/*.png) and
`summary_markdown(report)`. docs/metrics.md says which figure is which.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tradelib import runs
from tradelib.config import Config
from tradelib.data.sessions import Calendar
from tradelib.paths import atomic_write_bytes
from tradelib.report import metrics as ev

IC_NUMBERS = [
    "cross_sectional_ic", "cross_sectional_rank_ic", "daily_ic", "daily_rank_ic", "pooled_ic",
    "oracle_cross_sectional_ic", "oracle_daily_ic", "oracle_pooled_ic",
    "cross_sectional_ic_lag0", "daily_ic_lag0", "pooled_ic_lag0",
]  # fmt: skip
SUMMARY_NUMBERS = IC_NUMBERS + [
    "directional_accuracy", "net_sharpe", "gross_sharpe", "buy_hold_sharpe", "net_total_return", "max_drawdown",
    "turnover", "break_even_bps", "samples_per_s", "data_wait_share", "gpu_util", "mfu", "peak_mem_gb",
    "epoch_time_s",
]  # fmt: skip
FAMILY_WORDS = {"cross_sectional": "cross-sectional IC (per timestamp)", "daily": "per-day IC",
                "pooled": "pooled IC (all test rows)"}
TRADED = "target_traded"  # the predictions frame's column: the target at the traded lag (ev.lagged_target)
FACTS_FILE = "train_facts.json"  # what training writes for the report (tradelib/train/facts.py)
DECAY_LAGS = 10  # the IC decay table's last lag, in bars
SHORT_SPAN_DAYS = 28  # a calendar over fewer days cannot tell a 24/7 market from an exchange
MIN_TEST_PERIODS = 60  # fewer test periods than this: every figure is a few draws
SIGNIFICANT = 0.975  # "significant after deflation": a deflated probability above this (one trial: t > 1.96)
LOSS_LABEL = "MSE (target / its training scale)"  # the training loss's unit on every axis
PERIOD_WORDS = {"cross_sectional": "per-timestamp ICs", "daily": "per-day ICs",
                "pooled": "per-timestamp terms of the pooled correlation"}


@dataclass
class ReportInputs:
    """Everything the report is computed from, kept as frames so figures need not re-read the run folder.

    Every IC here is against the target at the traded lag (`ic_lag` = trade_delay: the return from t+d to
    t+d+h, `TRADED`), except `ic_lag0` (before the trade delay) and the decay over lags."""

    run_dir: Path
    summary: dict
    predictions: pd.DataFrame  # with TRADED: the target at the traded lag
    steps: pd.DataFrame
    epochs: pd.DataFrame
    bar_seconds: float
    cost_bps: float
    horizon: int
    horizon_source: str
    annualisation: dict
    family: str  # the headline IC family
    family_reason: str
    ic_timestamp: pd.DataFrame  # cross-sectional IC per timestamp
    ic_day: pd.DataFrame  # IC per UTC day
    ic: dict  # family -> ev.ic_summary / ev.pooled_summary
    deciles: pd.DataFrame
    per_symbol: pd.DataFrame
    predictors: pd.DataFrame
    backtest: ev.BacktestResult
    costs: pd.DataFrame
    break_even_bps: float
    splits: dict
    ic_lag: int = 0
    ic_lag0: dict = field(default_factory=dict)  # family -> summary against the lag-0 target
    decay: pd.DataFrame | None = None  # the headline IC at lags 0..10
    sharpe: dict = field(default_factory=dict)  # 'net', 'gross': ev.sharpe_inference
    break_even_ci: dict = field(default_factory=dict)
    trials: dict = field(default_factory=dict)  # what the deflated Sharpe counts
    mode_reason: str = ""
    test_span: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    facts: dict | None = None  # train_facts.json: what training wrote for the report
    quality: dict | None = None
    loss: dict | None = None  # loss_context: the loss's unit, and why validation sits below training

    @property
    def ic_series(self) -> pd.DataFrame:
        """The headline family's IC per period (the per-timestamp one when the headline is the pooled IC)."""
        return self.ic_day if self.family == "daily" else self.ic_timestamp


def _bar_seconds_from_fs(fs) -> float | None:
    bars = (getattr(fs, "meta", None) or {}).get("bar_seconds")
    if isinstance(bars, dict):
        vals = [float(v) for v in bars.values() if v is not None and np.isfinite(v)]
        return float(np.median(vals)) if vals else None
    return float(bars) if isinstance(bars, (int, float)) else None


def _horizon(summary: dict, fs) -> tuple[int, str]:
    """The target horizon in bars: the run's config, else the feature set's, else 1 (and the report says so)."""
    for source, conf in (("the run's config", summary.get("config") or {}),
                         ("the feature set", ((getattr(fs, "meta", None) or {}).get("feature_config") or {}))):
        if isinstance(conf.get("horizon"), int):
            return int(conf["horizon"]), source
    return 1, "not recorded: assumed 1"


def _iso(ns) -> str | None:
    """ISO time; an inclusive end of day (a date given as train_end / val_end) as the date itself."""
    if ns is None:
        return None
    if (int(ns) + 1) % (86_400 * 10**9) == 0:
        return pd.Timestamp(int(ns), tz="UTC").strftime("%Y-%m-%d") + " (whole day, UTC)"
    return pd.Timestamp(int(ns), tz="UTC").isoformat()


def split_dates(summary: dict, fs, predictions: pd.DataFrame) -> dict:
    """The split boundaries as ISO times, whichever way they were set (fs.meta, else the run's config and
    the test rows' own span); a walk-forward's from its summary, fold by fold."""
    if summary.get("folds"):
        return walk_forward_splits(summary)
    cuts = ((getattr(fs, "meta", None) or {}).get("splits")) if fs is not None else None
    if cuts:
        out = {k: (_iso(v) if k not in ("method", "purge_bars") else v) for k, v in cuts.items()}
        return {**out, "source": "feature set"}
    conf = summary.get("config") or {}
    ts = pd.to_datetime(predictions["timestamp"], utc=True)
    dated = bool(conf.get("train_end"))
    return {"method": "dates" if dated else "fractions", "train_end": conf.get("train_end") or None,
            "val_end": conf.get("val_end") or None, "train_frac": None if dated else conf.get("train_frac"),
            "val_frac": None if dated else conf.get("val_frac"),
            "test_start": ts.min().isoformat() if len(ts) else None,
            "test_end": ts.max().isoformat() if len(ts) else None, "source": "run config and test rows"}


def walk_forward_splits(summary: dict) -> dict:
    """A walk-forward's periods: the out-of-sample span its test periods tile, and each fold's periods."""
    folds = summary["folds"]
    keys = ("train_start", "train_end", "val_start", "val_end", "test_start", "test_end")
    return {"method": "walk-forward", "n_folds": len(folds), "fold_window": summary.get("fold_window"),
            "fold_init": summary.get("fold_init"), "test_start": folds[0].get("test_start"),
            "test_end": folds[-1].get("test_end"), "folds": [{"fold": f["fold"], **{k: f.get(k) for k in keys}}
                                                            for f in folds], "source": "run summary"}


def _annualisation(df: pd.DataFrame, fs, bar: float, periods_per_year: float) -> tuple[dict, float]:
    """(annualisation dict, bars per session): the given periods_per_year, else the calendar of the test span
    itself (holes in the training years do not move it). A test span too short to see weekends (< 4 weeks)
    takes the whole data's verdict on whether the market trades 24/7 (fs.meta, when the cache is there)."""
    test = ev.annualisation(df, bar)
    full = ((getattr(fs, "meta", None) or {}).get("calendar")) if fs is not None else None
    if full and test["span_days"] < SHORT_SPAN_DAYS and (full["method"] == "continuous") != (
            test["method"] == "continuous"):
        keep = {k: test[k] for k in ("bar_seconds", "n_sessions", "span_days", "sessions_per_year",
                                     "bars_per_session")}
        test = Calendar(**keep, continuous=full["method"] == "continuous").to_dict()
        test["description"] += f" (whether weekends trade: from all {full['n_sessions']:,} sessions of the data)"
    bars_per_session = float(test.get("bars_per_session") or 1.0)
    if periods_per_year and periods_per_year > 0:
        return {**ev.annualisation(df, bar, periods_per_year), "source": "given"}, bars_per_session
    return {**test, "source": "measured on the test span",
            "description": f"measured on the test span: {test['description']}"}, bars_per_session


def _knob(name: str):
    """A report parameter's default: Config's, the one place defaults live."""
    return Config.__dataclass_fields__[name].default


def _sweep_runs(run_dir: Path) -> int:
    """How many runs the sweep this run belongs to holds (its sweep.json), else 1."""
    plan = Path(run_dir).parent / "sweep.json"
    try:
        return max(len(json.loads(plan.read_text()).get("runs") or []), 1) if plan.exists() else 1
    except (OSError, ValueError):
        return 1


def read_facts(run_dir: Path) -> dict | None:
    """train_facts.json (written by training: the LR at every optimizer step, the windows and the zero
    yardstick per split); None for a run without it."""
    path = Path(run_dir) / FACTS_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError) as exc:
        print(f"{path} unreadable ({exc}): the LR schedule and the zero-prediction yardstick are left out")
        return None


def report_params(cfg: Config) -> dict:
    """`load_inputs`' keyword arguments from a Config's report parameters (what 04_report and a sweep pass)."""
    return {"cost_bps": cfg.cost_bps, "mode": cfg.position_mode, "periods_per_year": cfg.periods_per_year,
            "trade_delay": cfg.trade_delay, "min_symbols_cs": cfg.min_symbols_cs,
            "cost_grid_bps": [float(c) for c in cfg.cost_grid_bps.split(",") if c.strip()],
            "bootstrap_samples": cfg.bootstrap_samples, "bootstrap_seed": cfg.bootstrap_seed}


def load_inputs(
    run_dir: Path,
    cost_bps: float = 5.0,
    fs=None,
    X_train: np.ndarray | None = None,
    y_train: np.ndarray | None = None,
    X_test: np.ndarray | None = None,
    bar_seconds: float | None = None,
    mode: str | None = None,
    ridge_alpha: float = 1.0,
    periods_per_year: float = 0.0,
    trade_delay: int = 1,
    cost_grid_bps=ev.COST_GRID_BPS,
    min_symbols_cs: int | None = None,
    bootstrap_samples: int | None = None,
    bootstrap_seed: int | None = None,
) -> ReportInputs:
    """Read a run folder and compute every table the report shows.

    The ridge baseline needs features: pass `X_train, y_train, X_test` (X_test row-aligned with the
    predictions), or a FeatureSet `fs` to take them from (its train rows, and fs.X[predictions.row]);
    without either it is skipped. The bar size comes from `bar_seconds`, else fs.meta, else the timestamps;
    periods per year from `periods_per_year` (> 0), else the test span's calendar (see `_annualisation`).
    `mode`, `min_symbols_cs`, `bootstrap_samples`, `bootstrap_seed`: None takes Config's default.
    """
    run_dir = Path(run_dir)
    mode = _knob("position_mode") if mode is None else mode
    min_symbols_cs = _knob("min_symbols_cs") if min_symbols_cs is None else int(min_symbols_cs)
    samples = _knob("bootstrap_samples") if bootstrap_samples is None else int(bootstrap_samples)
    seed = _knob("bootstrap_seed") if bootstrap_seed is None else int(bootstrap_seed)
    df = runs.read_predictions(run_dir)
    df[TRADED] = ev.lagged_target(df, trade_delay)
    summary = runs.read_summary(run_dir) or {}
    steps, epochs = runs.training_curves(run_dir)
    if fs is not None and X_train is None and "ridge" not in df:  # a walk-forward brings its ridge, fitted per fold
        train = np.asarray(fs.split) == 0
        X_train, y_train = fs.X[train], fs.y[train]
        X_test = fs.X[df["row"].to_numpy()] if "row" in df else None
    bar = bar_seconds or (_bar_seconds_from_fs(fs) if fs is not None else None) or ev.infer_bar_seconds(df)
    ann, bars_per_session = _annualisation(df, fs, float(bar), periods_per_year)
    horizon, horizon_source = _horizon(summary, fs)
    family, reason = ev.headline_family(df)
    mode, mode_reason = ev.resolve_position_mode(df, mode, min_symbols_cs)
    lags = {f: ev.overlap_lags(horizon, f, bars_per_session) for f in ev.IC_FAMILIES}
    by_ts, by_day = ev.ic_by_timestamp(df, target_col=TRADED), ev.ic_by_day(df, target_col=TRADED)
    book = {"cost_bps": cost_bps, "bar_seconds": bar, "mode": mode, "periods_per_year": ann["periods_per_year"],
            "trade_delay": trade_delay, "annualised": ann}
    bt = ev.backtest(df, "prediction", **book)
    baselines = ev.baseline_predictions(df, X_train, y_train, X_test, ridge_alpha)
    quality = (getattr(fs, "meta", None) or {}).get("quality") if fs is not None else None
    predictors = ev.evaluate_all(df, baselines, family, lags[family], target_col=TRADED, **book)
    inputs = ReportInputs(
        run_dir=run_dir, summary=summary, predictions=df, steps=steps, epochs=epochs, bar_seconds=float(bar),
        cost_bps=float(cost_bps), horizon=horizon, horizon_source=horizon_source, annualisation=ann,
        family=family, family_reason=reason, ic_timestamp=by_ts, ic_day=by_day,
        ic={f: ev.family_summary(df, f, lags[f], target_col=TRADED) for f in ev.IC_FAMILIES},
        deciles=ev.decile_table(df, target_col=TRADED), per_symbol=ev.per_symbol_metrics(df, target_col=TRADED),
        predictors=predictors, backtest=bt, costs=ev.cost_sensitivity(bt, cost_grid_bps),
        break_even_bps=ev.break_even_bps(bt), splits=split_dates(summary, fs, df), quality=quality or None,
        ic_lag=int(trade_delay), ic_lag0={f: ev.family_summary(df, f, lags[f]) for f in ev.IC_FAMILIES},
        decay=ev.ic_decay(df, family, lags[family], DECAY_LAGS),
        sharpe={k: ev.sharpe_inference(bt.pnl[k].to_numpy(), ann["periods_per_year"]) for k in ("net", "gross")},
        break_even_ci=ev.break_even_interval(bt, ev.bootstrap_block(len(bt.pnl), horizon, trade_delay), samples,
                                             seed),
        trials=trial_count(predictors, _sweep_runs(run_dir)), mode_reason=mode_reason,
        test_span=test_span(df, fs, summary), facts=read_facts(run_dir),
    )
    inputs.warnings = report_warnings(inputs, min_symbols_cs)
    inputs.loss = loss_context(inputs)
    return inputs


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


def _num(value) -> float:
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


def summary_block(inputs: ReportInputs) -> dict:
    """The numbers that matter, flat: the three named ICs, which one leads and why, tradability after
    costs, and training throughput."""
    s, bt, p, icd = inputs.summary, inputs.backtest.stats, inputs.predictors, inputs.ic
    head = icd[inputs.family]
    out = {
        "run_id": s.get("run_id") or inputs.run_dir.name,
        "device": s.get("device"),
        "device_name": s.get("device_name"),
        "model": s.get("model"),
        "loader": s.get("loader"),
        "n_test_rows": int(len(inputs.predictions)),
        "test_days": _span_days(inputs.predictions),
        "n_symbols": int(inputs.predictions["symbol"].nunique()),
        "bar_seconds": inputs.bar_seconds,
        "bar": ev.bar_words(inputs.bar_seconds),
        "horizon_bars": inputs.horizon,
        "headline_ic": inputs.family,
        "headline_reason": inputs.family_reason,
        "ic_t_stat": head["t_stat"],  # overlap-robust, of the headline family
        "ic_t_method": head["t_method"],
    }
    out["ic_lag"] = inputs.ic_lag  # every *_ic below is against the return the book earns at this lag
    for fam in ("cross_sectional", "daily"):
        f = icd[fam]
        out.update({f"{fam}_ic": f["ic"], f"{fam}_rank_ic": f["rank_ic"], f"{fam}_icir": f["icir"],
                    f"{fam}_t_stat": f["t_stat"], f"{fam}_periods": f["n_periods"]})
    out.update({"pooled_ic": icd["pooled"]["ic"], "pooled_rank_ic": icd["pooled"]["rank_ic"],
                "pooled_t_stat": icd["pooled"]["t_stat"]})
    for fam in ev.IC_FAMILIES:  # before the trade delay: against the return from the signal's own close
        f = inputs.ic_lag0[fam]
        out.update({f"{fam}_ic_lag0": f["ic"], f"{fam}_rank_ic_lag0": f["rank_ic"], f"{fam}_t_stat_lag0": f["t_stat"]})
    out["ic_t_stat_lag0"] = inputs.ic_lag0[inputs.family]["t_stat"]
    for fam in ev.IC_FAMILIES:
        out[f"oracle_{fam}_ic"] = _predictor(p, "oracle", f"{fam}_ic")
    out["baseline_ic"] = {name: _predictor(p, name, f"{inputs.family}_ic") for name in p["predictor"]
                          if name != "model"}
    out.update({
        "directional_accuracy": _predictor(p, "model", "directional_accuracy"),
        "cost_bps": inputs.cost_bps,
        "position_mode": bt["mode"],
        "position_mode_reason": inputs.mode_reason,
        "trade_delay": bt["trade_delay"],
        "periods_per_year": bt["periods_per_year"],
        "annualisation_source": inputs.annualisation.get("source"),
        "net_sharpe": bt["net"]["sharpe"],
        "gross_sharpe": bt["gross"]["sharpe"],
        "buy_hold_sharpe": bt["buy_hold"]["sharpe"],
        "net_total_return": bt["net"]["total_return"],
        "net_annual_return": bt["net"]["annual_return"],
        "net_annual_volatility": bt["net"]["annual_volatility"],
        "max_drawdown": bt["net"]["max_drawdown"],
        "turnover": bt["net"]["turnover"],
        "gross_exposure": bt["gross_exposure"],
        "net_exposure": bt["net_exposure"],
        "abs_net_exposure": bt["abs_net_exposure"],
        "market_beta": bt["market_beta"],
        "break_even_bps": inputs.break_even_bps,
        **sharpe_block(inputs),
        "samples_per_s": _num(s.get("samples_per_s")),
        "data_wait_share": _num(s.get("data_wait_share")),
        "gpu_util": _num(s.get("gpu_util")),
        "mfu": _num(s.get("mfu")) if not _num(s.get("mfu")) > 1 else float("nan"),  # above 1: impossible
        "mfu_invalid": _num(s.get("mfu")) if _num(s.get("mfu")) > 1 else None,
        "peak_mem_gb": _num(s.get("peak_mem_bytes")) / 1e9,
        "epoch_time_s": _num(s.get("epoch_time_s")),
    })
    flags = {"net_sharpe": ev.implausible(bt["net"]["sharpe"], None),
             "gross_sharpe": ev.implausible(bt["gross"]["sharpe"], None),
             "net_annual_return": ev.implausible(None, bt["net"]["annual_return"]),
             "gross_annual_return": ev.implausible(None, bt["gross"]["annual_return"])}
    out["flags"] = {k: why[0] for k, why in flags.items() if why}  # figures that cannot be taken as they read
    out["warnings"] = list(inputs.warnings)
    return out


def sharpe_block(inputs: ReportInputs) -> dict:
    """The net Sharpe's error bars (`ev.sharpe_inference`), its deflated Sharpe over the trials the report
    knows, the break-even cost's bootstrap interval, and whether the book survives its cost: only where that
    interval lies above the cost; otherwise the data cannot tell (or it does not)."""
    net, gross, ci, n = inputs.sharpe["net"], inputs.sharpe["gross"], inputs.break_even_ci, inputs.trials
    dsr = ev.deflated_sharpe(net["sharpe_period"], net["se_period"], n["n_trials"], n["trial_variance"])
    low, high = ci.get("low", float("nan")), ci.get("high", float("nan"))
    survives = None
    if math.isfinite(low) and low > inputs.cost_bps:
        survives = True
    elif math.isfinite(high) and high < inputs.cost_bps:
        survives = False
    return {
        "net_sharpe_se": net["se"], "net_sharpe_ci": [net["ci_low"], net["ci_high"]], "net_sharpe_psr": net["psr"],
        "net_sharpe_se_lags": net["lags"], "gross_sharpe_se": gross["se"],
        "gross_sharpe_ci": [gross["ci_low"], gross["ci_high"]], "gross_sharpe_psr": gross["psr"],
        "net_sharpe_dsr": dsr["dsr"], "dsr_trials": dsr["n_trials"], "dsr_sr0": dsr["sr0_period"],
        "break_even_ci": [low, high], "break_even_block": ci.get("block"), "break_even_samples": ci.get("samples"),
        "survives_costs": survives,
    }


def trial_count(predictors: pd.DataFrame, sweep_runs: int) -> dict:
    """What the deflated Sharpe counts: the predictors that compete (not the oracle, not `zero`) times the runs
    of the sweep this run belongs to; V, the variance of their net Sharpe ratios (per period), at least their
    mean squared standard error (what skill-less trials would scatter by)."""
    rivals = _rivals(predictors)
    sr = rivals["sharpe_net_period"].dropna().to_numpy(dtype=float)
    se = rivals["sharpe_net_se_period"].dropna().to_numpy(dtype=float)
    floor = float(np.mean(se**2)) if se.size else 0.0
    var = max(float(sr.var(ddof=1)) if sr.size >= 2 else 0.0, floor)
    return {"predictors": int(len(rivals)), "sweep_runs": int(sweep_runs),
            "n_trials": max(int(len(rivals)) * int(sweep_runs), 1), "trial_variance": var}


def _rivals(predictors: pd.DataFrame) -> pd.DataFrame:
    """The predictors that compete: the oracle is the planted signal (a ceiling) and `zero` never trades."""
    return predictors[(predictors["predictor"] != "oracle") & (predictors["coverage"] > 0)]


def test_span(df: pd.DataFrame, fs, summary: dict) -> dict:
    """The test span as traded: the first and last prediction, the periods, and (with the feature cache, one
    split) the rows lost before the first prediction: to the purge after the validation split, and to the
    window's warm-up (test rows with a target but fewer than `window` test rows behind them)."""
    ts = pd.to_datetime(df["timestamp"], utc=True)
    out = {"first_prediction": ts.min().isoformat() if len(ts) else None,
           "last_prediction": ts.max().isoformat() if len(ts) else None,
           "periods": int(ts.nunique()), "predictions": int(len(df)),
           "purged_rows": None, "warmup_rows": None, "test_rows": None}
    cut = ((getattr(fs, "meta", None) or {}).get("splits")) if fs is not None else None
    if not cut or summary.get("folds") or cut.get("val_end") is None:
        return out
    t, split = np.asarray(fs.timestamp), np.asarray(fs.split)
    after = t > int(cut["val_end"])
    if cut.get("test_end") is not None:
        after &= t <= int(cut["test_end"])
    test = split == 2
    out.update(purged_rows=int(np.count_nonzero(after & (split == -1))), test_rows=int(np.count_nonzero(test)),
               test_start=_iso(cut.get("test_start")))
    windows = summary.get("test_windows")
    if isinstance(windows, int):
        out["warmup_rows"] = int(np.count_nonzero(test & np.isfinite(fs.y))) - windows
    return out


def report_warnings(inputs: ReportInputs, min_symbols_cs: int) -> list[str]:
    """What a reader must know before trusting the figures: a warm-up as long as the run, a test span of few
    periods, a cross-section of few symbols."""
    out = []
    c, s = inputs.summary.get("config") or {}, inputs.summary
    steps, warm = s.get("optimizer_steps"), c.get("warmup_steps")
    if isinstance(steps, int) and isinstance(warm, int) and warm >= steps:
        out.append(f"warmup_steps {warm} reaches the run's {steps} optimizer steps (the schedule caps the warm-up at "
                   f"a tenth of the run): size the run for this data (params/daily.yaml for daily bars)")
    periods = inputs.test_span.get("periods") or 0
    if periods < MIN_TEST_PERIODS:
        out.append(f"the test span holds {periods} periods (< {MIN_TEST_PERIODS}): every figure below rests on a few "
                   f"draws")
    if inputs.family == "cross_sectional" or inputs.backtest.stats["mode"] == "neutral":
        per_ts = inputs.predictions.groupby("timestamp")["symbol"].nunique()
        typical = float(per_ts.median()) if len(per_ts) else 0.0
        if typical < min_symbols_cs:
            out.append(f"the cross-sectional figures rest on {typical:g} symbols at a typical timestamp "
                       f"(< {min_symbols_cs}): a correlation across so few is noisy and biased towards 0")
    return out


def conventions(inputs: ReportInputs) -> dict:
    """What the numbers mean here: which IC leads and why, the t-statistic, the annualisation, the book
    (delay, cost, positions) and the split dates. The report states all of it."""
    head = inputs.ic[inputs.family]
    bt = inputs.backtest.stats
    return {
        "headline_ic": inputs.family,
        "headline_ic_words": FAMILY_WORDS[inputs.family],
        "headline_reason": inputs.family_reason,
        "ic_families": {
            "cross_sectional": "Pearson (and Spearman) correlation across symbols at each timestamp with >= 3 "
                               "symbols, averaged over timestamps (alphalens, Qlib)",
            "daily": "correlation over every row of a UTC day (all symbols and bars), averaged over days",
            "pooled": "one correlation over every test row",
        },
        "t_stat": f"{head['t_method']}, over {PERIOD_WORDS[inputs.family]}; the target spans {inputs.horizon} "
                  f"bar(s) (horizon from {inputs.horizon_source})",
        "significance": "|t| >= 2 on the overlap-robust t only",
        "ic_lag": f"every IC against the target {inputs.ic_lag} bar(s) after the signal (the return from t+"
                  f"{inputs.ic_lag} to t+{inputs.ic_lag + inputs.horizon}, the one a book trading "
                  f"{inputs.ic_lag} bar(s) later earns); the lag-0 figures (before the trade delay) beside them",
        "sharpe_interval": "Lo (2002) non-IID standard error (delta method, Newey-West covariance of the first two "
                           "moments): allows for autocorrelation and fat tails; 95% interval SR +- 1.96 SE",
        "deflation": f"deflated Sharpe over {inputs.trials.get('n_trials')} trial(s) ("
                     f"{inputs.trials.get('predictors')} predictor(s) x {inputs.trials.get('sweep_runs')} sweep "
                     f"run(s)); 'best' only for a positive figure whose deflated probability exceeds {SIGNIFICANT}",
        "bar": ev.bar_words(inputs.bar_seconds),
        "position_mode_reason": inputs.mode_reason,
        "horizon_bars": inputs.horizon,
        "annualisation": inputs.annualisation,
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
    other, ratio = this / other). The other run is evaluated with this run's book (cost, positions, delay)
    and, on data of the same bar size, this run's periods per year, so the two are measured alike."""
    other_dir = Path(other_dir)
    try:
        bar = ev.infer_bar_seconds(runs.read_predictions(other_dir))
        same_bar = math.isclose(bar, _num(this.get("bar_seconds")), rel_tol=1e-6)
        other = summary_block(load_inputs(
            other_dir, cost_bps=this["cost_bps"], mode=this["position_mode"], trade_delay=this["trade_delay"],
            periods_per_year=this["periods_per_year"] if same_bar else 0.0))
    except (FileNotFoundError, ValueError):  # a throughput-only run: compare what summary.json holds
        s = runs.read_summary(other_dir) or {}
        other = {k: _num(s.get(k)) for k in SUMMARY_NUMBERS}  # its named test ICs, the throughput
        other.update(peak_mem_gb=_num(s.get("peak_mem_bytes")) / 1e9)
        other.update({k: s.get(k) for k in ("device", "device_name", "model", "loader")})
    metrics = {}
    for k in SUMMARY_NUMBERS:
        a, b = _num(this.get(k)), _num(other.get(k))
        metrics[k] = {"this": a, "other": b, "delta": a - b, "ratio": a / b if b != 0 else float("nan")}
    keys = ("device", "device_name", "model", "loader", "headline_ic", "periods_per_year", "bar_seconds")
    return {
        "run_id": other_dir.name,
        "run_dir": str(other_dir),
        "this": {k: this.get(k) for k in keys},
        "other": {k: other.get(k) for k in keys},
        "metrics": metrics,
    }


def loader_sweep(run_dir: Path) -> pd.DataFrame | None:
    """02_profiling's batch-size sweep of this run (the seed's DataLoader and the device loader measured side
    by side on this device, `speedup` = device / dataloader at each batch size); None when 02 did not run."""
    path = Path(run_dir) / "batch_size_sweep.csv"
    if not path.exists():
        return None
    sweep = pd.read_csv(path)
    return sweep[[c for c in ("loader", "batch_size", "samples_per_s", "speedup", "it_per_s", "data_wait_share",
                              "batches_per_epoch", "peak_mem_bytes", "mfu", "gpu_busy_pct", "step_time_s",
                              "mfu_invalid", "mfu_invalid_reason", "other_cores", "busy_note") if c in sweep]]


def sweep_notes(sweep: pd.DataFrame) -> list[str]:
    """What a reader must know about 02's figures: why an MFU is marked invalid, and which configurations were
    timed while other processes were busy (their samples/s are not comparable)."""
    notes = [f"MFU marked *invalid*: {why}." for why in dict.fromkeys(sweep.get("mfu_invalid_reason", pd.Series(
        dtype=object)).dropna())]
    busy = sweep.dropna(subset=["busy_note"]) if "busy_note" in sweep else sweep.iloc[:0]
    if len(busy):
        which = "every configuration" if len(busy) == len(sweep) else ", ".join(
            f"{r.loader} at {r.batch_size:,}" for r in busy.itertuples())
        cores = os.cpu_count() or 1
        notes.append(f"Timed while other processes kept up to {busy['other_cores'].max():.1f} of the {cores} cores "
                     f"busy ({which}): those samples/s and their ratios are not comparable; rerun on an idle "
                     f"machine.")
    return notes


def build_report(run_dir: Path, compare_with: Path | None = None, cost_bps: float = 5.0, *,
                 inputs: ReportInputs | None = None, **load_kwargs) -> dict:
    """Compute the report of one run, write it to run_dir/report.json (strict JSON, NaN -> null), return it.

    Pass `inputs` from `load_inputs` to reuse them for `make_figures`; otherwise they are loaded here, with
    `load_kwargs` (fs, X_train, y_train, X_test, bar_seconds, mode, periods_per_year, trade_delay,
    cost_grid_bps) passed on to `load_inputs`.
    """
    run_dir = Path(run_dir)
    if inputs is None:
        inputs = load_inputs(run_dir, cost_bps, **load_kwargs)
    summary = summary_block(inputs)
    report = {
        "run_id": summary["run_id"],
        "run_dir": str(run_dir),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "summary": summary,
        "conventions": conventions(inputs),
        "ic": {**inputs.ic, "headline": inputs.family, "lag": inputs.ic_lag},
        "ic_lag0": inputs.ic_lag0,
        "ic_decay": inputs.decay,
        "test_span": inputs.test_span,
        "warnings": inputs.warnings,
        "trials": inputs.trials,
        "ic_by_timestamp": inputs.ic_timestamp,
        "ic_by_day": inputs.ic_day,
        "predictors": inputs.predictors,
        "best_predictors": best_predictors(inputs.predictors, inputs.family, inputs.trials),
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
    sweep = loader_sweep(run_dir)
    if sweep is not None:
        report["loader_sweep"] = sweep
    if "fold" in inputs.predictions:
        report["folds"] = fold_block(inputs)
    if compare_with is not None:
        report["compare"] = compare_block(summary, Path(compare_with))
    report = to_jsonable(report)
    atomic_write_bytes(json.dumps(report, indent=1, allow_nan=False).encode(), run_dir / "report.json")
    return report


# ----------------------------------------------------------------------------------------------------
# what the sections of 04 say beside their tables and figures


def best_predictors(predictors: pd.DataFrame, family: str, trials: dict) -> dict[str, str]:
    """{column: predictor} with the best headline IC and the best net Sharpe among the predictors that compete
    (`_rivals`), marked only when that figure is positive and significant after deflation over the report's
    trials: the IC's t by `ev.deflated_t`, the Sharpe by `ev.deflated_sharpe`, each above SIGNIFICANT. Never on
    noise, never on a loss; the oracle and `zero` are never marked."""
    rivals, n = _rivals(predictors), int(trials.get("n_trials") or 1)
    best = {}
    col = f"{family}_ic"
    if col in rivals and len(rivals[col].dropna()):
        i = rivals[col].idxmax()
        if rivals.loc[i, col] > 0 and ev.deflated_t(float(rivals.loc[i, "t_stat"]), n) > SIGNIFICANT:
            best[col] = str(rivals.loc[i, "predictor"])
    if len(rivals["sharpe_net"].dropna()):
        i = rivals["sharpe_net"].idxmax()
        r = rivals.loc[i]
        dsr = ev.deflated_sharpe(float(r["sharpe_net_period"]), float(r["sharpe_net_se_period"]), n,
                                 float(trials.get("trial_variance") or 0.0))["dsr"]
        if r["sharpe_net"] > 0 and dsr > SIGNIFICANT:
            best["sharpe_net"] = str(r["predictor"])
    return best


def _when(text) -> str:
    """An ISO time as '2024-01-08 09:21' (UTC); a whole-day date as it came."""
    if not text or "whole day" in str(text):
        return str(text or "n/a")
    return pd.Timestamp(text).tz_convert("UTC").strftime("%Y-%m-%d %H:%M") if pd.Timestamp(text).tzinfo else str(text)


def _count(value) -> str:
    return f"{int(value):,}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def run_configuration(summary: dict, splits: dict) -> list[tuple[str, str]]:
    """The run's configuration as (setting, value) lines: data, windows, model, batch, learning rate, length,
    device, split dates."""
    c, g = summary.get("config") or {}, summary.get
    data = (f"synthetic market: {c.get('synth_symbols')} symbols x {_count(c.get('synth_bars'))} 5-minute bars "
            f"(seed {c.get('data_seed')})" if c.get("data_path") == "synthetic" else str(c.get("data_path")))
    target = "vol-scaled forward log return" if c.get("vol_scaled_target") else "forward log return"
    per_fold = " per fold" if g("folds") else ""
    steps = f", at most {_count(c['max_steps'])} steps{per_fold}" if c.get("max_steps") else ""
    purge = f", {splits['purge_bars']} bars purged at each boundary" if splits.get("purge_bars") else ""
    return [
        ("data", data),
        ("windows", f"{c.get('window')} bars of history each; {_count(g('train_windows'))} training and "
                    f"{_count(g('test_windows'))} test windows" + (" (training: the last fold's)" if per_fold else "")),
        ("target", f"{target} over {c.get('horizon')} bar(s)"),
        ("model", f"{g('model')}: hidden {c.get('hidden')}, {c.get('layers')} layer(s), dropout {c.get('dropout')}; "
                  f"{_count(g('n_params'))} parameters"),
        ("batch", f"{_count(g('batch_size'))} windows x {_count(g('grad_accum_steps'))} accumulation x "
                  f"{_count(g('world_size') or 1)} rank(s) = {_count(g('global_batch'))} per optimizer step"),
        ("learning rate", f"{_f(g('lr'), 'g')} peak (lr {_f(c.get('lr'), 'g')}, scaling {c.get('lr_scaling')}), "
                          f"{c.get('warmup_steps')} warm-up steps at most, cosine to {c.get('min_lr_ratio')} x; "
                          f"AdamW, weight decay {c.get('weight_decay')}, gradient clip {c.get('grad_clip')}"),
        ("length", f"{c.get('epochs')} epoch(s){steps}: {_count(g('optimizer_steps'))} optimizer steps taken "
                   f"({_count(g('skipped_steps'))} skipped), seed {c.get('seed')}"),
        ("device", f"{g('device_name')} ({g('device')}), precision {c.get('precision')}, compile "
                   f"{g('compiled')}, loader {g('loader')}"
                   + (f"; step graph {g('cuda_graphs')} ({g('cuda_graphs_reason')})" if g("cuda_graphs") else "")),
        ("splits", _split_words(splits, purge)),
    ]


def _split_words(splits: dict, purge: str) -> str:
    if splits.get("method") == "walk-forward":
        return (f"walk-forward: {splits.get('n_folds')} folds, {splits.get('fold_window')} training window, "
                f"{splits.get('fold_init')} start; test periods {_when(splits.get('test_start'))} to "
                f"{_when(splits.get('test_end'))} (UTC){purge}; each fold's dates under 'Does it hold through time?'")
    return (f"by {splits.get('method')}: training to {_when(splits.get('train_end'))}, validation "
            f"{_when(splits.get('val_start'))} to {_when(splits.get('val_end'))}, test "
            f"{_when(splits.get('test_start'))} to {_when(splits.get('test_end'))} (UTC){purge}")


def loss_context(inputs: ReportInputs) -> dict:
    """The training loss's unit, and, when validation sits below training, why, from measurements: what
    predicting 0 scores on each split's windows (a quieter validation period scores lower), dropout (on in
    training only), and the training figure being a mean over an epoch of improving weights."""
    conf = inputs.summary.get("config") or {}
    out = {"unit": "mean squared error of the target in units of its training scale", "target_scale": None,
           "zero_mse": {}, "val_below_train": None, "reasons": []}
    facts = inputs.facts or {}
    if facts.get("zero_mse"):  # measured by training on its own windows (train_facts.json)
        out["target_scale"] = facts.get("target_scale")
        out["zero_mse"] = {k: facts["zero_mse"].get(k) for k in ("train", "val")}
    ep = inputs.epochs.dropna(subset=["train_loss", "val_loss"])
    if not len(ep):
        return out
    train, val = float(ep["train_loss"].iloc[-1]), float(ep["val_loss"].iloc[-1])
    out.update(last_train_loss=train, last_val_loss=val, val_below_train=val < train)
    if val >= train:
        return out
    z = out["zero_mse"]
    if z and z["val"] < z["train"]:
        rel_val, rel_train = val / z["val"], train / z["train"]
        out["reasons"].append(
            f"the validation period is quieter: predicting 0 scores {z['val']:.3f} on its windows against "
            f"{z['train']:.3f} on the training windows; against that yardstick validation is {rel_val:.3f} and "
            f"training {rel_train:.3f}" + (", so the gap is the period's, not the model's" if rel_val >= rel_train
                                          else ""))
    if float(conf.get("dropout") or 0) > 0:
        out["reasons"].append(f"dropout {conf['dropout']} is on while training and off for validation")
    out["reasons"].append(("also, " if out["reasons"] else "") + "the training loss is the mean over an epoch in "
                          "which the weights were still improving, the validation loss that of the weights at its end")
    return out


def lr_schedule(facts: dict | None, steps: pd.DataFrame, optimizer_steps: int | None = None) -> pd.DataFrame | None:
    """The learning rate at every optimizer step from 0 (the warm-up included, which the logged values, one per
    log interval, miss), as training wrote it (train_facts.json's `lr`, from the trainer's own schedule); None
    without it, or when it does not reproduce every logged value (a resume that changed the run's length)."""
    lr = np.asarray((facts or {}).get("lr") or [], dtype=float)
    if not lr.size:
        return None
    logged = steps.dropna(subset=["lr"])
    at = logged["step"].to_numpy(dtype=np.int64)
    if (at >= lr.size).any() or not np.allclose(lr[at], logged["lr"], rtol=1e-6, atol=0):
        return None
    last = int(max(at.max() if at.size else 0, optimizer_steps or 0))
    curve = pd.DataFrame({"step": np.arange(min(last, lr.size - 1) + 1)})
    curve["lr"] = lr[: len(curve)]
    curve.attrs["warmup"] = int(facts.get("warmup") or 0)
    return curve


def training_markdown(report: dict) -> str:
    """The loss's unit, and why validation sits below training when it does."""
    t = report.get("training") or {}
    ctx = t.get("loss") or {}
    z, scale = ctx.get("zero_mse") or {}, ctx.get("target_scale")
    unit = ("**Loss**: the mean squared error of the target divided by its training scale s (1.4826 x the median "
            "absolute deviation of the training targets" + (f", s = {scale:.3g} log return" if scale else "") +
            "): a loss of 1 is an RMS error of one s.")
    if z.get("train") is not None:
        unit += (f" Predicting 0 scores {_f(z.get('train'))} on the training windows and {_f(z.get('val'))} on "
                 f"the validation windows: the yardstick for the curves below.")
    lines = [unit]
    if ctx.get("val_below_train"):
        lines += ["", f"Validation ({_f(ctx.get('last_val_loss'), '.4f')}) ends below training "
                      f"({_f(ctx.get('last_train_loss'), '.4f')}) because " + "; and ".join(ctx["reasons"]) + "."]
    lines += ["", "The learning rate is drawn from step 0, the warm-up included, with the trainer's own schedule "
                  "(the dots are the values logged at each log interval)."
              if t.get("lr_from_step_0") else "The learning rate shows the logged values only."]
    return "\n".join(lines)


def book_markdown(report: dict) -> str:
    """The book's settings, said once for the backtest table below, and the test period's length."""
    b, s = report["backtest"], report["summary"]
    span = ""
    if s.get("test_days") is not None and s["test_days"] < 0.25 * 365.25:
        span = (f" The test split spans {s['test_days']:.1f} days: annualised figures extrapolate it "
                f"{365.25 / max(s['test_days'], 1e-9):,.0f}-fold.")
    ann = (report.get("conventions") or {}).get("annualisation") or {}
    return (f"Book: `{b['mode']}` positions, traded {b['trade_delay']} bar(s) after the signal, "
            f"{_f(b['cost_bps'], 'g')} bps per unit of weight traded, {ev.bar_words(b['bar_seconds'])} bars, "
            f"{_periods(b['periods_per_year'])} periods a year ({ann.get('description') or b['annualisation']})."
            f"{span} {test_span_text(report.get('test_span') or {})}")


def test_span_text(span: dict) -> str:
    """The test span as traded: first and last prediction, and the rows lost before the first one."""
    if not span.get("first_prediction"):
        return ""
    lost = []
    if span.get("purged_rows") is not None:
        lost.append(f"{span['purged_rows']:,} rows purged after the validation split")
    if span.get("warmup_rows") is not None:
        lost.append(f"{span['warmup_rows']:,} test rows spent on the window's warm-up")
    start = f" (the test split starts {_when(span['test_start'])})" if span.get("test_start") else ""
    return (f"Traded from the first prediction {_when(span['first_prediction'])} to the last "
            f"{_when(span['last_prediction'])} UTC{start}, {span['periods']:,} periods"
            + (f"; {' and '.join(lost)}." if lost else "."))


def decay_markdown(report: dict) -> str:
    """What the IC decay says: how long the signal lasts, and where the book trades."""
    rows = report.get("ic_decay") or []
    if not rows:
        return ""
    lag = report["summary"].get("ic_lag") or 0
    at = {r["lag"]: r for r in rows}
    sig = [r["lag"] for r in rows if r.get("t_stat") is not None and r["t_stat"] >= 2 and (r.get("ic") or 0) > 0]
    last = f"significant (t >= 2) at lags {', '.join(map(str, sig))}" if sig else "significant at no lag"
    word = FAMILY_WORDS.get(report["summary"].get("headline_ic"), "")
    return (f"IC by lag ({word}): {_f(at[0].get('ic'))} at lag 0, "
            f"{_f((at.get(lag) or {}).get('ic'))} at the traded lag {lag}; {last}.")


# ----------------------------------------------------------------------------------------------------
# walk-forward: per fold


FOLD_ICS = ("cross_sectional_ic", "cross_sectional_rank_ic", "daily_ic", "daily_rank_ic", "pooled_ic")


def _has(d: pd.DataFrame, col: str) -> bool:
    return col in d and bool(np.isfinite(d[col].to_numpy(dtype=float)).any())


def fold_table(inputs: ReportInputs) -> pd.DataFrame:
    """A walk-forward's figures per fold and over all folds (`fold` "all": the stitched predictions), each on
    that fold's test rows with the report's book: the three named ICs, the headline IC's overlap-robust t, the
    ridge baseline (fitted per fold) and the oracle on the headline IC, and the backtest. Every IC against
    the target at the traded lag; each fold's net Sharpe with its standard error and its deflated Sharpe over
    the folds (trials: the folds compared, so the best fold is not read as skill)."""
    df, fam = inputs.predictions, inputs.family
    lags = inputs.ic[fam]["lags"]
    bt = inputs.backtest.stats
    book = {"cost_bps": inputs.cost_bps, "bar_seconds": inputs.bar_seconds, "mode": bt["mode"],
            "periods_per_year": bt["periods_per_year"], "trade_delay": bt["trade_delay"],
            "annualised": inputs.annualisation}
    periods = {f["fold"]: f for f in inputs.summary.get("folds") or []}
    everything = {"test_start": (periods.get(0) or {}).get("test_start"),
                  "test_end": (periods.get(len(periods) - 1) or {}).get("test_end")}
    rows = []
    for k, d in [*df.groupby("fold", sort=True), ("all", df)]:
        when = everything if k == "all" else periods.get(int(k), {})
        if k != "all":  # a fold's own rows: its last targets do not reach into the next fold (as in summary.json)
            d = d.assign(**{TRADED: ev.lagged_target(d, bt["trade_delay"])})
        head = ev.family_summary(d, fam, lags, target_col=TRADED)
        book_k = ev.backtest(d, "prediction", **book)
        net, gross = book_k.stats["net"], book_k.stats["gross"]
        inf = ev.sharpe_inference(book_k.pnl["net"].to_numpy(), bt["periods_per_year"])
        rows.append({
            "fold": str(k), "train_start": when.get("train_start"), "train_end": when.get("train_end"),
            "test_start": when.get("test_start"), "test_end": when.get("test_end"), "test_rows": int(len(d)),
            **{key: v for key, v in ev.named_ics(d, 0, target_col=TRADED).items() if key in FOLD_ICS},
            "t_stat": head["t_stat"],
            "ridge_ic": ev.family_summary(d, fam, lags, "ridge", TRADED)["ic"] if _has(d, "ridge") else float("nan"),
            "oracle_ic": ev.family_summary(d, fam, lags, "oracle", TRADED)["ic"] if _has(d, "oracle") else float("nan"),
            "net_sharpe": net["sharpe"], "net_sharpe_se": inf["se"], "net_sharpe_psr": inf["psr"],
            "net_sharpe_period": inf["sharpe_period"], "net_sharpe_se_period": inf["se_period"],
            "gross_sharpe": gross["sharpe"], "net_total_return": net["total_return"],
            "max_drawdown": net["max_drawdown"], "turnover": net["turnover"],
            "break_even_bps": ev.break_even_bps(book_k),
        })
    table = pd.DataFrame(rows)
    per = table[table["fold"] != "all"]
    sr = per["net_sharpe_period"].dropna().to_numpy(dtype=float)
    se = per["net_sharpe_se_period"].dropna().to_numpy(dtype=float)
    var = max(float(sr.var(ddof=1)) if sr.size >= 2 else 0.0, float(np.mean(se**2)) if se.size else 0.0)
    n = int(len(per))
    table["net_sharpe_dsr"] = [ev.deflated_sharpe(r.net_sharpe_period, r.net_sharpe_se_period, 1 if r.fold == "all"
                                                  else n, var)["dsr"] for r in table.itertuples()]
    return table


def fold_block(inputs: ReportInputs) -> dict:
    """report.json's `folds`: how the walk-forward was set up, and `fold_table`."""
    s = inputs.summary
    return {"n_folds": len(s.get("folds") or []), "fold_window": s.get("fold_window"), "fold_init": s.get("fold_init"),
            "headline_ic": inputs.family, "t_method": inputs.ic[inputs.family]["t_method"],
            "table": fold_table(inputs)}


def folds_markdown(report: dict) -> str:
    """The walk-forward in a few lines and a table, for 04: does the result hold in every test period?"""
    block = report["folds"]
    fam = block["headline_ic"]
    col = f"{fam}_ic"
    per = [r for r in block["table"] if r["fold"] != "all"]
    every = next(r for r in block["table"] if r["fold"] == "all")
    short = {"cross_sectional": "cross-sectional IC", "daily": "per-day IC", "pooled": "pooled IC"}.get(fam, fam)
    positive = sum(1 for r in per if (r.get(col) or 0) > 0)
    lines = [
        f"**Walk-forward**: {block['n_folds']} folds, {block['fold_window']} training window, each fold's model "
        f"started {'from the previous fold' if block['fold_init'] == 'warm' else 'from new weights'}. "
        f"{FAMILY_WORDS.get(fam, fam)} positive in **{positive} of {len(per)}** test periods; over all of them "
        f"{_f(every.get(col))} (t {_f(every.get('t_stat'), '.2f')}), net Sharpe {_f(every.get('net_sharpe'), '.2f')}.",
        "",
        f"| fold | test period (UTC) | test rows | cross-sectional IC | per-day IC | pooled IC | t of the {short} "
        f"(HAC) | ridge, {short} | net Sharpe | max drawdown |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in block["table"]:
        span = f"{str(r.get('test_start'))[:16]} to {str(r.get('test_end'))[:16]}".replace("T", " ")
        cells = [r["fold"], span, f"{r['test_rows']:,}", _f(r.get("cross_sectional_ic")), _f(r.get("daily_ic")),
                 _f(r.get("pooled_ic")), _f(r.get("t_stat"), ".2f"), _f(r.get("ridge_ic")),
                 _f(r.get("net_sharpe"), ".2f"), _f(r.get("max_drawdown"), ".1%")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# human summary


def _f(value, spec: str = ".3f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _rate(value) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= div:
            return f"{value / div:.3g}{unit}"
    return f"{value:.3g}"


def _verdict(t) -> str:
    if t is None:
        return "n/a"
    return "significant (|t| >= 2)" if abs(t) >= 2 else "not distinguishable from zero (|t| < 2)"


def _signal_lines(report: dict) -> list[str]:
    """The headline IC at the traded lag, named, why it leads, its robust t; the lag-0 figure beside it; then
    the other two and the baselines."""
    g = report["summary"].get
    fam = g("headline_ic")
    word = FAMILY_WORDS.get(fam, fam)
    lag = g("ic_lag") or 0
    others = "".join(f", {k} {_f(v)}" for k, v in (g("baseline_ic") or {}).items() if k != "oracle")
    t = g("ic_t_stat")
    at = f"at lag {lag} (the return the book earns, t+{lag} to t+{lag + (g('horizon_bars') or 1)})"
    if fam == "pooled":
        lead = f"Test **{word} {_f(g('pooled_ic'))}** {at} (rank IC {_f(g('pooled_rank_ic'))}"
    else:
        lead = (f"Test **{word} {_f(g(f'{fam}_ic'))}** {at} (rank IC {_f(g(f'{fam}_rank_ic'))}, ICIR "
                f"{_f(g(f'{fam}_icir'), '.2f')} over {g(f'{fam}_periods')} periods")
    rest = [f"{FAMILY_WORDS[f]} {_f(g(f'{f}_ic'))}" for f in ev.IC_FAMILIES if f != fam]
    before = (f" Before the trade delay (lag 0, from the signal's own close) it reads {_f(g(f'{fam}_ic_lag0'))} "
              f"(t {_f(g('ic_t_stat_lag0'), '.2f')}): no book trading {lag} bar(s) later earns that." if lag else "")
    return [
        f"{lead}; t {_f(t, '.2f')}, {g('ic_t_method')}: {_verdict(t)}). Why this IC: {g('headline_reason')}.{before}",
        "",
        f"The other two at lag {lag}: {'; '.join(rest)}. Baselines on the same {word}: oracle "
        f"{_f(g(f'oracle_{fam}_ic'))}{others}. Directional accuracy {_f(g('directional_accuracy'), '.1%')}.",
    ]


def _figure(g, key: str, spec: str) -> str:
    """A figure, or the reason it cannot be taken as it reads (summary `flags`)."""
    why = (g("flags") or {}).get(key)
    return f"{_f(g(key), spec)} (flagged: {why})" if why else _f(g(key), spec)


def _book_lines(report: dict) -> list[str]:
    g = report["summary"].get
    grid = report.get("costs", {}).get("net_sharpe_by_cost") or []
    sweep = ", ".join(f"{_f(r['cost_bps'], 'g')} bps {_f(r['net_sharpe'], '.2f')}" for r in grid)
    ci, be = g("net_sharpe_ci") or [None, None], g("break_even_ci") or [None, None]
    return [
        f"Long/short `{g('position_mode')}` book ({g('position_mode_reason')}), traded {g('trade_delay')} bar(s) after "
        f"the signal, at {_f(g('cost_bps'), 'g')} bps: net Sharpe **{_figure(g, 'net_sharpe', '.2f')}** (SE "
        f"{_f(g('net_sharpe_se'), '.2f')}, 95% interval {_f(ci[0], '.2f')} to {_f(ci[1], '.2f')}, P(Sharpe > 0) "
        f"{_f(g('net_sharpe_psr'), '.2f')}, deflated over {g('dsr_trials')} trial(s) {_f(g('net_sharpe_dsr'), '.2f')}; "
        f"gross {_figure(g, 'gross_sharpe', '.2f')}, buy & hold {_f(g('buy_hold_sharpe'), '.2f')}), net annual "
        f"return {_figure(g, 'net_annual_return', '.1%')} at volatility {_f(g('net_annual_volatility'), '.1%')}, max "
        f"drawdown {_f(g('max_drawdown'), '.1%')}, turnover {_f(g('turnover'), '.2f')} per bar, net exposure "
        f"{_f(g('net_exposure'), '+.2f')} on average (|net| {_f(g('abs_net_exposure'), '.2f')}, gross "
        f"{_f(g('gross_exposure'), '.2f')}), market beta {_f(g('market_beta'), '+.2f')}.",
        "",
        f"Net Sharpe by cost: {sweep}; {break_even_text(g('break_even_bps'))}; 95% block-bootstrap interval "
        f"{_f(be[0], '.1f')} to {_f(be[1], '.1f')} bps: {survival_text(g('survives_costs'), g('cost_bps'))}.",
    ]


def survival_text(survives, cost_bps) -> str:
    """Whether the book survives its cost, said only as far as the break-even interval can tell."""
    if survives is True:
        return f"survives {_f(cost_bps, 'g')} bps (the whole interval lies above it)"
    if survives is False:
        return f"does not survive {_f(cost_bps, 'g')} bps (the whole interval lies below it)"
    return f"the data cannot tell whether it survives {_f(cost_bps, 'g')} bps (the interval spans it)"


def break_even_text(bps) -> str:
    """The break-even cost in words; there is none when the book loses (or never trades) before costs."""
    if bps is None or not math.isfinite(bps):
        return "no break-even cost: the book does not make money before costs"
    return f"break-even cost **{bps:.1f} bps** per unit of weight traded (the cost at which the net Sharpe reaches 0)"


def _periods(value) -> str:
    return _f(value, ",.0f") if isinstance(value, (int, float)) and value >= 100 else _f(value, ".2f")


def conventions_markdown(report: dict) -> str:
    """What the numbers mean here: which IC and t, the annualisation, the book, the split dates."""
    return "\n".join(_convention_lines(report))


def _convention_lines(report: dict) -> list[str]:
    c = report.get("conventions") or {}
    sp = c.get("splits") or {}
    ann = c.get("annualisation") or {}
    if sp.get("method") == "walk-forward":
        dates = (f"{sp.get('n_folds')} folds ({sp.get('fold_window')} training window), test periods tiling "
                 f"{_when(sp.get('test_start'))} to {_when(sp.get('test_end'))} (UTC), each fold's model trained and "
                 f"validated on the data before its test period, features scaled on its own training rows")
    elif sp.get("method") == "dates" or sp.get("val_start"):
        dates = (f"training to {_when(sp.get('train_end'))}, validation {_when(sp.get('val_start'))} to "
                 f"{_when(sp.get('val_end'))}, test {_when(sp.get('test_start'))} to {_when(sp.get('test_end'))} (UTC)")
    else:
        dates = (f"test {_when(sp.get('test_start'))} to {_when(sp.get('test_end'))} (UTC; the training and "
                 f"validation dates need the feature cache)")
    return [
        f"Headline IC = {c.get('headline_ic_words')}; {c.get('ic_lag')}; t = {c.get('t_stat')}; significance on "
        f"that t only. Sharpe errors: {c.get('sharpe_interval')}; {c.get('deflation')}. Annualisation: "
        f"{_periods(ann.get('periods_per_year'))} periods a year, {ann.get('description')}. Trade delay "
        f"{c.get('trade_delay_bars')} bar(s), cost {_f(c.get('cost_bps'), 'g')} bps per unit of weight traded, "
        f"positions `{c.get('position_mode')}` ({c.get('position_mode_reason')}), {c.get('bar')} bars. Splits by "
        f"{sp.get('method')}: {dates}. See docs/metrics.md.",
    ]


def _compare_lines(report: dict) -> list[str]:
    cmp = report.get("compare")
    if not cmp:
        return []
    m = cmp["metrics"]
    fam = report["summary"].get("headline_ic")
    sps, ic_ = m["samples_per_s"], m.get(f"{fam}_ic", m["pooled_ic"])
    return [
        "",
        f"Against run `{cmp['run_id']}` (loader `{cmp['other'].get('loader')}`): samples/s "
        f"{_rate(sps['other'])} -> {_rate(sps['this'])} (x{_f(sps['ratio'], '.1f')}), {FAMILY_WORDS.get(fam, fam)} "
        f"{_f(ic_['other'])} -> {_f(ic_['this'])}, net Sharpe "
        f"{_f(m['net_sharpe']['other'], '.2f')} -> {_f(m['net_sharpe']['this'], '.2f')}.",
    ]


def summary_markdown(report: dict) -> str:
    """A few lines for the top of the HTML report: the run, the signal and its baselines, the book after costs,
    the throughput, and a comparison when asked. (The predictor table follows in its own section, once.)"""
    g = report["summary"].get
    lines = [
        f"**Run `{g('run_id')}`**: {g('model')} on {g('device_name') or g('device')}, "
        f"loader `{g('loader')}`, {g('n_test_rows'):,} test rows, {g('n_symbols')} symbols of "
        f"{g('bar') or _f(g('bar_seconds'), 'g') + ' s'} bars, target {g('horizon_bars')} bar(s) ahead.",
        "",
        *[f"**Warning**: {w}." for w in g("warnings") or []],
        *([""] if g("warnings") else []),
        *_signal_lines(report),
        "",
        *_book_lines(report),
        "",
        _throughput_line(report),
        *_compare_lines(report),
    ]
    return "\n".join(lines)


def mfu_words(mfu: float | None, note: str | None = None) -> str:
    """MFU for a sentence: the figure, or why there is none; above 1 it is impossible and flagged invalid."""
    if note:
        return f"MFU invalid ({note})"
    if mfu is None or not math.isfinite(mfu):
        return "MFU n/a (no peak FLOP/s known for this device)"
    if mfu > 1:
        return f"MFU invalid ({mfu:.2f} is above 1, which is impossible: the FLOP count or the peak is wrong)"
    return f"MFU {mfu:.1%}"


def _throughput_line(report: dict) -> str:
    g = report["summary"].get
    on_gpu = str(g("device") or "").startswith("cuda")
    memory = ("torch.cuda.max_memory_allocated" if on_gpu else "the training process's peak resident memory")
    busy = f"GPU busy {_f(g('gpu_util'), '.0f')}%" if on_gpu else "GPU busy n/a (a CPU run)"
    epoch = (f"an epoch {_f(g('epoch_time_s'), ',.1f')} s" if g("epoch_time_s") is not None
             else "no epoch finished")
    return (f"Training: **{_rate(g('samples_per_s'))} samples/s**, data wait {_f(g('data_wait_share'), '.1%')}, "
            f"{busy}, {mfu_words(g('mfu'))}, peak memory {_gb(g('peak_mem_gb'))} ({memory}), {epoch}.")


def _gb(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g} GB"


# ----------------------------------------------------------------------------------------------------
# figures


def make_figures(inputs: ReportInputs, run_dir: Path | None = None, runs_df: pd.DataFrame | None = None) -> dict:
    """Draw every report figure and save each as run_dir/<name>.png; returns {name: Figure}.

    The throughput figure covers the sibling runs under run_dir's parent unless `runs_df` is given.
    """
    from tradelib.report import plots  # matplotlib/seaborn only when drawing

    run_dir = Path(run_dir or inputs.run_dir)
    if runs_df is None:
        runs_df = runs.runs_table(run_dir.parent)
    fam = "daily" if inputs.family == "daily" else "cross_sectional"  # the pooled IC has no series
    head = inputs.ic[fam]
    note = f"mean {_f(head['ic'])}, t {_f(head['t_stat'], '.2f')} ({head['t_method']})"
    figs = {
        "training": plots.plot_training(inputs.steps, inputs.epochs, run_dir / "training.png",
                                        schedule=lr_schedule(inputs.facts, inputs.steps,
                                                             inputs.summary.get("optimizer_steps")),
                                        loss_label=LOSS_LABEL),
        "equity": plots.plot_equity(inputs.backtest, run_dir / "equity.png"),
        "underwater": plots.plot_underwater(inputs.backtest, run_dir / "underwater.png"),
        "costs": plots.plot_cost_sensitivity(inputs.costs, inputs.break_even_bps, inputs.cost_bps,
                                             run_dir / "costs.png"),
        "deciles": plots.plot_deciles(inputs.deciles, run_dir / "deciles.png", unit=(
            "vol-scaled log return" if (inputs.summary.get("config") or {}).get("vol_scaled_target")
            else "forward log return")),
        "ic": plots.plot_ic(inputs.ic_series, run_dir / "ic.png", label=f"{FAMILY_WORDS[fam]}, lag {inputs.ic_lag}",
                            note=note),
    }
    if inputs.decay is not None:
        figs["ic_decay"] = plots.plot_ic_decay(inputs.decay, run_dir / "ic_decay.png", FAMILY_WORDS[inputs.family],
                                               inputs.ic_lag)
    figs.update(throughput_figures(inputs, run_dir, runs_df))
    if inputs.quality:
        figs["quality"] = plots.plot_quality(inputs.quality, run_dir / "quality.png")
    if "fold" in inputs.predictions:
        figs["folds"] = plots.plot_folds(fold_table(inputs), inputs.family, run_dir / "folds.png")
    return figs


def throughput_figures(inputs: ReportInputs, run_dir: Path, runs_df: pd.DataFrame) -> dict:
    """`throughput`: 02's sweep (the seed-style DataLoader beside the device loader at each micro-batch) with this
    run's training samples/s across it, or, without a sweep, every run's samples/s; `runs`: every run's
    samples/s, when there are two or more."""
    from tradelib.report import plots

    sweep = loader_sweep(run_dir)
    s = inputs.summary
    figs = {}
    if sweep is not None and len(sweep):
        label = (f"this run's training: {s.get('model')}, {s.get('loader')} loader, batch "
                 f"{_count(s.get('batch_size'))} x {_count(s.get('grad_accum_steps'))}")
        figs["throughput"] = plots.plot_loader_sweep(sweep, run_dir / "throughput.png",
                                                     training=(_num(s.get("samples_per_s")), label))
    else:
        figs["throughput"] = plots.plot_runs(runs_df, run_dir / "throughput.png")
    if len(runs_df.dropna(subset=["samples_per_s"])) >= 2:
        figs["runs"] = plots.plot_runs(runs_df, run_dir / "runs.png")
    return figs


def load_featureset(run_dir: Path):
    """The FeatureSet a run trained on, from the cache folder its summary names; None (and says why) when
    the cache is gone or damaged, in which case the ridge baseline and the data-quality section are left out:
    the run's own figures do not need it."""
    from tradelib.data import cache

    summary = runs.read_summary(Path(run_dir)) or {}
    folder = Path(summary.get("cache_dir") or "")
    rebuild = "rebuild it with `tradelib prepare` and the run's parameters"
    if not summary.get("cache_dir") or not cache.has(folder):
        print(f"feature cache {folder} not found: ridge baseline and data quality left out ({rebuild})")
        return None
    try:
        return cache.load(folder)
    except cache.CacheError as exc:
        print(f"feature cache {folder} is damaged ({exc}): ridge baseline and data quality left out ({rebuild})")
        return None
