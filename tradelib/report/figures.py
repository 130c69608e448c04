"""The report's figures: which plots (plots.py) 04_report shows, drawn from a `ReportInputs` and saved as
run_dir/<name>.png.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tradelib import runs
from tradelib.progress import stage_lines
from tradelib.report.inputs import STAGE_LINES_ROWS, ReportInputs, lr_schedule
from tradelib.report.metrics import FAMILY_WORDS
from tradelib.report.report import as_float
from tradelib.report.words import fmt, fmt_count

LOSS_LABEL = "MSE (target / its training scale)"  # the training loss's unit on every axis


def make_figures(inputs: ReportInputs, run_dir: Path | None = None, runs_df: pd.DataFrame | None = None) -> dict:
    """Draw every report figure and save each as run_dir/<name>.png; returns {name: Figure}. From
    STAGE_LINES_ROWS predictions on, a line names each figure as it is drawn (25 s of silence on 590k of them).

    The throughput figure covers the sibling runs under run_dir's parent unless `runs_df` is given.
    """
    from tradelib.report import plots  # matplotlib/seaborn only when drawing

    run_dir = Path(run_dir or inputs.run_dir)
    if runs_df is None:
        runs_df = runs.runs_table(run_dir.parent)
    fam, lag = inputs.family, inputs.book["trade_delay"]
    head = inputs.ic[fam]
    share = fam == "pooled"  # a series of each timestamp's share of the IC, not of correlations
    note = f"mean {fmt(head['ic'])}, t {fmt(head['t_stat'], '.2f')} ({head['t_method']})"
    draws = {
        "training": lambda: plots.plot_training(inputs.steps, inputs.epochs, run_dir / "training.png",
                                                schedule=lr_schedule(inputs.facts, inputs.steps,
                                                                     inputs.summary.get("optimizer_steps")),
                                                loss_label=LOSS_LABEL),
        "equity": lambda: plots.plot_equity(inputs.backtest, run_dir / "equity.png"),
        "underwater": lambda: plots.plot_underwater(inputs.backtest, run_dir / "underwater.png"),
        "costs": lambda: plots.plot_cost_sensitivity(inputs.costs, inputs.break_even_bps, inputs.book["cost_bps"],
                                                     run_dir / "costs.png"),
        "deciles": lambda: plots.plot_deciles(inputs.deciles, run_dir / "deciles.png", unit=(
            "vol-scaled log return" if (inputs.summary.get("config") or {}).get("vol_scaled_target")
            else "forward log return")),
        "ic": lambda: plots.plot_ic(inputs.ic_series, run_dir / "ic.png", note=note,
                                    label=f"{FAMILY_WORDS[fam]}, lag {lag}" + (": each timestamp's share" if share
                                                                               else ""),
                                    unit="share of the pooled IC" if share else "IC (correlation)"),
    }
    if inputs.decay is not None:
        draws["ic_decay"] = lambda: plots.plot_ic_decay(inputs.decay, run_dir / "ic_decay.png",
                                                        FAMILY_WORDS[inputs.family], lag)
    draws["throughput"] = lambda: throughput_figures(inputs, run_dir, runs_df)  # (and runs.png)
    if inputs.quality:
        draws["quality"] = lambda: plots.plot_quality(inputs.quality, run_dir / "quality.png")
    if inputs.folds is not None:
        draws["folds"] = lambda: plots.plot_folds(inputs.folds, inputs.family, run_dir / "folds.png")
    say = stage_lines("figures", len(inputs.predictions) >= STAGE_LINES_ROWS)
    figs = {}
    for i, (name, draw) in enumerate(draws.items(), 1):
        say(f"{name}.png ({i} of {len(draws)})")
        figs.update(draw() if name == "throughput" else {name: draw()})
    return figs


def throughput_figures(inputs: ReportInputs, run_dir: Path, runs_df: pd.DataFrame) -> dict:
    """`throughput`: 02's sweep (the seed-style DataLoader beside the device loader at each micro-batch) with this
    run's training samples/s across it, or, without a sweep, every run's samples/s; `runs`: every run's
    samples/s, when there are two or more."""
    from tradelib.report import plots

    sweep = inputs.sweep
    s = inputs.summary
    figs = {}
    if sweep is not None and len(sweep):
        label = (f"this run's training: {s.get('model')}, {s.get('loader')} loader, batch "
                 f"{fmt_count(s.get('batch_size'))} x {fmt_count(s.get('grad_accum_steps'))}")
        figs["throughput"] = plots.plot_loader_sweep(sweep, run_dir / "throughput.png",
                                                     training=(as_float(s.get("samples_per_s")), label))
    else:
        figs["throughput"] = plots.plot_runs(runs_df, run_dir / "throughput.png")
    if len(runs_df.dropna(subset=["samples_per_s"])) >= 2:
        figs["runs"] = plots.plot_runs(runs_df, run_dir / "runs.png")
    return figs
