"""Assemble one run's evaluation into `report.json` (numbers) and PNGs (figures), for 04_report to display.

The notebook calls, in order: `inputs = load_inputs(run_dir, cost_bps, fs=fs)` (frames: predictions, IC,
backtest, curves), `report = build_report(run_dir, inputs=inputs)` (a dict, also run_dir/report.json),
`make_figures(inputs, run_dir)` (Figures, also run_dir/*.png) and `summary_markdown(report)`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tradelib import evaluate as ev
from tradelib import runs

SUMMARY_NUMBERS = [
    "period_ic", "period_rank_ic", "icir", "ic_t_stat", "pooled_ic", "oracle_ic", "directional_accuracy",
    "net_sharpe", "gross_sharpe", "buy_hold_sharpe", "net_total_return", "max_drawdown", "turnover",
    "samples_per_s", "data_wait_share", "gpu_util", "mfu", "peak_mem_gb", "epoch_time_s",
]  # fmt: skip


@dataclass
class ReportInputs:
    """Everything the report is computed from, kept as frames so figures need not re-read the run folder."""

    run_dir: Path
    summary: dict
    predictions: pd.DataFrame
    steps: pd.DataFrame
    epochs: pd.DataFrame
    bar_seconds: float
    cost_bps: float
    ic: pd.DataFrame
    deciles: pd.DataFrame
    per_symbol: pd.DataFrame
    predictors: pd.DataFrame
    backtest: ev.BacktestResult
    quality: dict | None = None


def _bar_seconds_from_fs(fs) -> float | None:
    bars = (getattr(fs, "meta", None) or {}).get("bar_seconds")
    if isinstance(bars, dict):
        vals = [float(v) for v in bars.values() if v is not None and np.isfinite(v)]
        return float(np.median(vals)) if vals else None
    return float(bars) if isinstance(bars, (int, float)) else None


def load_inputs(
    run_dir: Path,
    cost_bps: float = 5.0,
    fs=None,
    X_train: np.ndarray | None = None,
    y_train: np.ndarray | None = None,
    X_test: np.ndarray | None = None,
    bar_seconds: float | None = None,
    mode: str = "sign",
    ridge_alpha: float = 1.0,
) -> ReportInputs:
    """Read a run folder and compute every table the report shows.

    The ridge baseline needs features: pass `X_train, y_train, X_test` (X_test row-aligned with the
    predictions), or a FeatureSet `fs` to take them from (its train rows, and fs.X[predictions.row]);
    without either it is skipped. The bar size comes from `bar_seconds`, else fs.meta, else the timestamps.
    """
    run_dir = Path(run_dir)
    df = runs.read_predictions(run_dir)
    summary = runs.read_summary(run_dir) or {}
    steps, epochs = runs.training_curves(run_dir)
    if fs is not None and X_train is None:
        train = np.asarray(fs.split) == 0
        X_train, y_train = fs.X[train], fs.y[train]
        X_test = fs.X[df["row"].to_numpy()] if "row" in df else None
    bar = bar_seconds or (_bar_seconds_from_fs(fs) if fs is not None else None) or ev.infer_bar_seconds(df)
    baselines = ev.baseline_predictions(df, X_train, y_train, X_test, ridge_alpha)
    quality = (getattr(fs, "meta", None) or {}).get("quality") if fs is not None else None
    return ReportInputs(
        run_dir=run_dir,
        summary=summary,
        predictions=df,
        steps=steps,
        epochs=epochs,
        bar_seconds=float(bar),
        cost_bps=float(cost_bps),
        ic=ev.ic_by_period(df, bar_seconds=bar),
        deciles=ev.decile_table(df),
        per_symbol=ev.per_symbol_metrics(df),
        predictors=ev.evaluate_all(df, baselines, bar, cost_bps, mode),
        backtest=ev.backtest(df, "prediction", cost_bps, bar, mode=mode),
        quality=quality or None,
    )


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


def summary_block(inputs: ReportInputs) -> dict:
    """The numbers that matter, flat: signal quality, tradability after costs, and training throughput."""
    s, bt, p = inputs.summary, inputs.backtest.stats, inputs.predictors
    ics = ev.ic_summary(inputs.ic)
    pooled = inputs.per_symbol.loc[inputs.per_symbol["symbol"] == "ALL"]
    oracle_ic = _predictor(p, "oracle", "ic")
    n_symbols = int(inputs.predictions["symbol"].nunique())
    return {
        "run_id": s.get("run_id") or inputs.run_dir.name,
        "device": s.get("device"),
        "device_name": s.get("device_name"),
        "model": s.get("model"),
        "loader": s.get("loader"),
        "n_test_rows": int(len(inputs.predictions)),
        "n_symbols": n_symbols,
        "bar_seconds": inputs.bar_seconds,
        "ic_period": ev.period_kind(inputs.bar_seconds, n_symbols),
        "n_periods": ics["n_periods"],
        "period_ic": ics["ic"],
        "period_rank_ic": ics["rank_ic"],
        "icir": ics["icir"],
        "ic_t_stat": ics["t_stat"],
        "pooled_ic": float(pooled["ic"].iloc[0]) if len(pooled) else float("nan"),
        "oracle_ic": oracle_ic,
        "baseline_ic": {name: _predictor(p, name, "ic") for name in p["predictor"] if name != "model"},
        "directional_accuracy": _predictor(p, "model", "directional_accuracy"),
        "cost_bps": inputs.cost_bps,
        "backtest_mode": bt["mode"],
        "net_sharpe": bt["net"]["sharpe"],
        "gross_sharpe": bt["gross"]["sharpe"],
        "buy_hold_sharpe": bt["buy_hold"]["sharpe"],
        "net_total_return": bt["net"]["total_return"],
        "max_drawdown": bt["net"]["max_drawdown"],
        "turnover": bt["net"]["turnover"],
        "samples_per_s": _num(s.get("samples_per_s")),
        "data_wait_share": _num(s.get("data_wait_share")),
        "gpu_util": _num(s.get("gpu_util")),
        "mfu": _num(s.get("mfu")),
        "peak_mem_gb": _num(s.get("peak_mem_bytes")) / 1e9,
        "epoch_time_s": _num(s.get("epoch_time_s")),
    }


def _training_block(inputs: ReportInputs) -> dict:
    steps, epochs = inputs.steps, inputs.epochs
    val = epochs["val_loss"].dropna() if len(epochs) else pd.Series(dtype=float)
    return {
        "n_step_rows": int(len(steps)),
        "last_step": float(steps["step"].iloc[-1]) if len(steps) else float("nan"),
        "final_loss_ema": float(steps["loss_ema"].iloc[-1]) if len(steps) else float("nan"),
        "skipped_steps": float(steps["skipped_steps"].max()) if len(steps) else float("nan"),
        "best_val_loss": float(val.min()) if len(val) else float("nan"),
        "best_epoch": float(epochs.loc[val.idxmin(), "epoch"]) if len(val) else float("nan"),
        "epochs": epochs,
    }


def compare_block(this: dict, other_dir: Path, cost_bps: float) -> dict:
    """This run's summary numbers beside another run's: delta = this - other, ratio = this / other."""
    other_dir = Path(other_dir)
    try:
        other = summary_block(load_inputs(other_dir, cost_bps=cost_bps))
    except (FileNotFoundError, ValueError):  # a throughput-only run: compare what summary.json holds
        s = runs.read_summary(other_dir) or {}
        other = {k: _num(s.get(k)) for k in SUMMARY_NUMBERS}  # pooled_ic is the one test figure it holds
        other.update(peak_mem_gb=_num(s.get("peak_mem_bytes")) / 1e9)
        other.update({k: s.get(k) for k in ("device", "device_name", "model", "loader")})
    metrics = {}
    for k in SUMMARY_NUMBERS:
        a, b = _num(this.get(k)), _num(other.get(k))
        metrics[k] = {"this": a, "other": b, "delta": a - b, "ratio": a / b if b != 0 else float("nan")}
    return {
        "run_id": other_dir.name,
        "run_dir": str(other_dir),
        "this": {k: this.get(k) for k in ("device", "device_name", "model", "loader")},
        "other": {k: other.get(k) for k in ("device", "device_name", "model", "loader")},
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
                              "batches_per_epoch", "peak_mem_bytes", "mfu", "gpu_busy_pct") if c in sweep]]


def build_report(run_dir: Path, compare_with: Path | None = None, cost_bps: float = 5.0, *,
                 inputs: ReportInputs | None = None, **load_kwargs) -> dict:
    """Compute the report of one run, write it to run_dir/report.json (strict JSON, NaN -> null), return it.

    Pass `inputs` from `load_inputs` to reuse them for `make_figures`; otherwise they are loaded here, with
    `load_kwargs` (fs, X_train, y_train, X_test, bar_seconds, mode) passed on to `load_inputs`.
    """
    run_dir = Path(run_dir)
    if inputs is None:
        inputs = load_inputs(run_dir, cost_bps, **load_kwargs)
    summary = summary_block(inputs)
    bt = inputs.backtest
    report = {
        "run_id": summary["run_id"],
        "run_dir": str(run_dir),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "summary": summary,
        "ic": ev.ic_summary(inputs.ic),
        "ic_by_period": inputs.ic,
        "predictors": inputs.predictors,
        "per_symbol": inputs.per_symbol,
        "deciles": inputs.deciles,
        "backtest": bt.stats,
        "training": _training_block(inputs),
        "run": {k: v for k, v in inputs.summary.items() if k != "config"},
        "config": inputs.summary.get("config", {}),
    }
    sweep = loader_sweep(run_dir)
    if sweep is not None:
        report["loader_sweep"] = sweep
    if compare_with is not None:
        report["compare"] = compare_block(summary, Path(compare_with), inputs.cost_bps)
    report = to_jsonable(report)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    return report


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


def summary_markdown(report: dict) -> str:
    """A few lines and one table for the top of the HTML report: signal, baselines, costs, throughput."""
    s = report["summary"]
    g = s.get
    others = "".join(f", {k} {_f(v)}" for k, v in (g("baseline_ic") or {}).items() if k != "oracle")
    t = g("ic_t_stat")
    if t is None:
        verdict = "n/a"
    else:
        verdict = "significant (|t| >= 2)" if abs(t) >= 2 else "not distinguishable from zero (|t| < 2)"
    lines = [
        f"**Run `{g('run_id')}`**: {g('model')} on {g('device_name') or g('device')}, "
        f"loader `{g('loader')}`, {g('n_test_rows'):,} test rows, {g('n_symbols')} symbols.",
        "",
        f"Test IC **{_f(g('period_ic'))}**, the mean of per-{g('ic_period')} ICs (rank IC "
        f"{_f(g('period_rank_ic'))}, ICIR {_f(g('icir'), '.2f')}, t {_f(t, '.2f')} over {g('n_periods')} "
        f"{g('ic_period')} periods: {verdict}; pooled over all rows {_f(g('pooled_ic'))}; "
        f"oracle {_f(g('oracle_ic'))}{others}). "
        f"Directional accuracy {_f(g('directional_accuracy'), '.1%')}.",
        "",
        f"Long/short {g('backtest_mode', 'sign')} backtest at {_f(g('cost_bps'), 'g')} bps: "
        f"net Sharpe **{_f(g('net_sharpe'), '.2f')}** (gross {_f(g('gross_sharpe'), '.2f')}, "
        f"buy & hold {_f(g('buy_hold_sharpe'), '.2f')}), net return {_f(g('net_total_return'), '.1%')}, "
        f"max drawdown {_f(g('max_drawdown'), '.1%')}, turnover {_f(g('turnover'), '.2f')} per bar.",
        "",
        f"Training: **{_rate(g('samples_per_s'))} samples/s**, data wait {_f(g('data_wait_share'), '.1%')}, "
        f"GPU util {_f(g('gpu_util'), '.0%')}, MFU {_f(g('mfu'), '.1%')}, "
        f"peak memory {_f(g('peak_mem_gb'), '.2f')} GB, epoch {_f(g('epoch_time_s'), '.1f')} s.",
    ]
    cmp = report.get("compare")
    if cmp:
        m = cmp["metrics"]
        sps = m["samples_per_s"]
        lines += [
            "",
            f"Against run `{cmp['run_id']}` (loader `{cmp['other'].get('loader')}`): samples/s "
            f"{_rate(sps['other'])} -> {_rate(sps['this'])} (x{_f(sps['ratio'], '.1f')}), pooled test IC "
            f"{_f(m['pooled_ic']['other'])} -> {_f(m['pooled_ic']['this'])}, net Sharpe "
            f"{_f(m['net_sharpe']['other'], '.2f')} -> {_f(m['net_sharpe']['this'], '.2f')}.",
        ]
    lines += [
        "",
        "| predictor | IC | rank IC | ICIR | t | dir. acc. | net Sharpe |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report.get("predictors", []):
        cells = [
            r["predictor"], _f(r["ic"]), _f(r["rank_ic"]), _f(r["icir"], ".2f"), _f(r["t_stat"], ".2f"),
            _f(r["directional_accuracy"], ".1%"), _f(r["sharpe_net"], ".2f"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# figures


def make_figures(inputs: ReportInputs, run_dir: Path | None = None, runs_df: pd.DataFrame | None = None) -> dict:
    """Draw every report figure and save each as run_dir/<name>.png; returns {name: Figure}.

    The throughput figure covers the sibling runs under run_dir's parent unless `runs_df` is given.
    """
    from tradelib import plots  # matplotlib/seaborn only when drawing

    run_dir = Path(run_dir or inputs.run_dir)
    if runs_df is None:
        runs_df = runs.runs_table(run_dir.parent)
    figs = {
        "training": plots.plot_training(inputs.steps, inputs.epochs, run_dir / "training.png"),
        "equity": plots.plot_equity(inputs.backtest, run_dir / "equity.png"),
        "deciles": plots.plot_deciles(inputs.deciles, run_dir / "deciles.png"),
        "ic": plots.plot_ic(inputs.ic, run_dir / "ic.png"),
        "throughput": plots.plot_throughput(runs_df, run_dir / "throughput.png"),
    }
    if inputs.quality:
        figs["quality"] = plots.plot_quality(inputs.quality, run_dir / "quality.png")
    return figs


def load_featureset(run_dir: Path):
    """The FeatureSet a run trained on, from the cache folder its summary names; None (and says why) when
    the cache is gone, in which case the ridge baseline and the data-quality section are left out."""
    from tradelib import cache

    summary = runs.read_summary(Path(run_dir)) or {}
    folder = Path(summary.get("cache_dir") or "")
    if not summary.get("cache_dir") or not cache.has(folder):
        print(f"feature cache {folder} not found: ridge baseline and data quality left out "
              f"(rebuild it with `tradelib prepare` and the run's parameters)")
        return None
    return cache.load(folder)
