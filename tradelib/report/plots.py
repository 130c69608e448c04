"""The report's figures: each function draws one small figure, returns it, and saves a PNG when asked.

Numbers come from `evaluate`; nothing here computes a metric the report states.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib
import matplotlib.collections
import matplotlib.dates
import matplotlib.legend_handler
import matplotlib.patches
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib import cbook


def _ensure_backend() -> None:
    """Headless scripts and tests get Agg; a notebook (or MPLBACKEND, or an explicit choice) keeps its own."""
    if os.environ.get("MPLBACKEND") or "ipykernel" in sys.modules:
        return
    getter = getattr(matplotlib.rcParams, "_get_backend_or_none", None)
    if getter is not None and getter() is None:
        matplotlib.use("Agg")


_ensure_backend()

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from tradelib.report.backtest import (  # noqa: E402
    MAX_PLAUSIBLE_SHARPE,
    BacktestResult,
    drawdown_curve,
    equity_curve,
)
from tradelib.report.tables import (  # noqa: E402
    LOADER_NAMES,
    NOTHING_CLEANED,
    epoch_labels,
    partial_epochs,
    share,
    zero_volumes,
)

sns.set_theme(style="whitegrid", context="notebook")


def _save(fig: plt.Figure, save_to: str | Path | None, tight: bool = True) -> plt.Figure:
    if tight:
        fig.tight_layout()
    if save_to is not None:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_to, dpi=110, bbox_inches="tight")
    return fig


def _empty(ax: plt.Axes, text: str) -> None:
    """A panel with nothing to draw says why, without the 0-1 axes of no data."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_training(steps: pd.DataFrame, epochs: pd.DataFrame, save_to: str | Path | None = None,
                  schedule: pd.DataFrame | None = None, loss_label: str = "loss") -> plt.Figure:
    """2x2: per-step loss (raw, EMA), train/val loss per epoch, learning rate (the whole schedule from step 0
    when `schedule` is given, the logged values as dots), grad norm (+ skipped steps). `loss_label` is the
    loss's unit, for the y axes."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    if steps["loss"].notna().any():
        ax.plot(steps["step"], steps["loss"], alpha=0.3, lw=0.8, label="per log interval")
        ax.plot(steps["step"], steps["loss_ema"], lw=1.5, label="EMA")
        ax.legend(fontsize="small")
    else:
        _empty(ax, "no step rows")
    ax.set(title="training loss", xlabel="optimizer step", ylabel=loss_label)
    ax = axes[0, 1]
    if len(epochs) and epochs[["train_loss", "val_loss"]].notna().any().any():
        # a walk-forward's folds are separate models: a line per fold, none joining one fold's epoch to the next's
        parts = [g for _, g in epochs.groupby("fold", sort=False)] if _folds(epochs) > 1 else [epochs]
        for col, label in (("train_loss", "training (mean over the epoch)"), ("val_loss", "validation (at its end)")):
            if epochs[col].notna().any():
                colour = None
                for i, part in enumerate(parts):
                    (line,) = ax.plot(part["epoch"] + 1, part[col], marker="o", color=colour,
                                      label=label if i == 0 else None)
                    colour = line.get_color()
        first, last = int(epochs["epoch"].min()) + 1, int(epochs["epoch"].max()) + 1
        ax.set_xlim(first - 0.5, last + 0.5)  # whole epochs: one epoch's span alone gets ticks 0.945 .. 1.05
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))
        labels = [e.replace(" ", "\n") for e in epoch_labels(epochs)]  # '(partial)': a run stopped inside it
        if _folds(epochs) > 1:  # a walk-forward's epochs run on across its folds: each tick says whose it is
            labels = [f"{e}\nfold {int(f)}" for e, f in zip(labels, epochs["fold"])]
        if _folds(epochs) > 1 or partial_epochs(epochs).any():
            ax.set_xticks(epochs["epoch"] + 1, labels=labels)
        ax.legend(fontsize="small")
    else:
        _empty(ax, "no epoch finished\n(max_steps ended the run first)")
    ax.set(title="loss per epoch", xlabel="epoch", ylabel=loss_label)
    _plot_lr(axes[1, 0], steps, schedule)
    _plot_grad_norm(axes[1, 1], steps)
    for ax in (axes[0, 0], axes[1, 0], axes[1, 1]):  # optimizer steps are whole numbers
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if _folds(steps) > 1:  # each fold restarts its model and LR schedule: where, on the step axes
        rows = pd.concat([steps[["fold", "step"]], epochs.reindex(columns=["fold", "step"])])
        ends = rows.groupby("fold")["step"].max().sort_index().iloc[:-1]  # a fold's last step: its epoch row's
        for ax in (axes[0, 0], axes[1, 0], axes[1, 1]):
            for i, step in enumerate(ends):
                ax.axvline(step + 0.5, color="grey", ls=":", lw=1, label="a fold starts" if i == 0 else None)
        axes[0, 0].legend(fontsize="small")
    return _save(fig, save_to)


def _folds(frame: pd.DataFrame) -> int:
    return int(frame["fold"].nunique()) if "fold" in frame else 0


def _plot_lr(ax: plt.Axes, steps: pd.DataFrame, schedule: pd.DataFrame | None) -> None:
    logged = steps.dropna(subset=["lr"])
    if schedule is not None and len(schedule):
        ax.plot(schedule["step"], schedule["lr"], lw=1.2, label="schedule")
        warmup = schedule.attrs.get("warmup")
        title = f"learning rate: {warmup} warm-up step{'s' * (warmup != 1)}, then cosine" if warmup else "learning rate"
    else:
        title = "learning rate (logged values)"
    if len(logged):
        ax.plot(logged["step"], logged["lr"], "o", ms=3, label="logged")
    if schedule is None and not len(logged):
        _empty(ax, "no lr logged")
    else:
        ax.legend(fontsize="small")
    ax.set_xlim(left=0)
    ax.set(title=title, xlabel="optimizer step", ylabel="learning rate")


class PlainLogFormatter(matplotlib.ticker.Formatter):
    """A log axis's labels as plain numbers (0.2, 1, 40: not 2e-01 beside 10^0, nor 6x10^1), on the ticks matplotlib's
    `LogFormatter(**choice)` would label: its `labelOnlyBase` and `minor_thresholds` choose which, this says how."""

    def __init__(self, **choice):
        self.choice = matplotlib.ticker.LogFormatter(**choice)

    def set_axis(self, axis):
        super().set_axis(axis)
        self.choice.set_axis(axis)

    def set_locs(self, locs):
        super().set_locs(locs)
        self.choice.set_locs(locs)

    def __call__(self, x, pos=None):
        return self.fix_minus(f"{x:g}") if self.choice(x, pos) else ""


PLAIN_RANGE = (1e-4, 1e6)  # where f"{x:g}" writes every tick without an exponent


def _plain(low: float, high: float) -> bool:
    """Whether a log axis from `low` to `high` reads in plain numbers (`PLAIN_RANGE`) rather than 10^k."""
    return PLAIN_RANGE[0] <= low and high < PLAIN_RANGE[1]


def _plain_log_labels(axis: matplotlib.axis.Axis) -> None:
    """Plain-number labels on a log axis; between decades only where at most one decade is ticked (over two, 2 3 4 6
    per decade ran into each other)."""
    axis.set_major_formatter(PlainLogFormatter())
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def _plot_grad_norm(ax: plt.Axes, steps: pd.DataFrame) -> None:
    if steps["grad_norm"].notna().any():
        ax.plot(steps["step"], steps["grad_norm"], lw=0.8)
        ax.set_yscale("log")
        _plain_log_labels(ax.yaxis)
    else:
        _empty(ax, "no grad norm logged")
    skipped = steps["skipped_steps"].fillna(0)
    if (skipped > 0).any():
        twin = ax.twinx()
        twin.step(steps["step"], skipped, color="tab:red", where="post")
        twin.set_ylabel("skipped steps (cumulative)", color="tab:red")
        twin.grid(False)
    ax.set(title="gradient norm (before clipping)", xlabel="optimizer step", ylabel="L2 norm (log scale)")


def _dates(ax: plt.Axes) -> None:
    """Short, non-overlapping date labels on a time axis (the year and day said once, at the start)."""
    locator = matplotlib.dates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(matplotlib.dates.ConciseDateFormatter(locator))


def plot_equity(bt: BacktestResult, save_to: str | Path | None = None) -> plt.Figure:
    """Compounded equity of the long/short signal before and after costs, and of buy-and-hold."""
    fig, ax = plt.subplots(figsize=(10, 4))
    pnl = bt.pnl
    labels = {
        "gross": "gross",
        "net": f"net of {bt.stats.get('cost_bps', 0):g} bps",
        "buy_hold": "buy & hold",
    }
    for col, label in labels.items():
        ax.plot(pnl["timestamp"], equity_curve(pnl[col]), label=label, lw=1.2)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(title="equity (1 invested, compounded)", ylabel="wealth (1 = the start)")
    ax.legend(fontsize="small")
    _dates(ax)
    return _save(fig, save_to)


def plot_deciles(decile_df: pd.DataFrame, save_to: str | Path | None = None,
                 unit: str = "forward log return") -> plt.Figure:
    """Realised mean target per prediction decile (bars, +-1 s.e.: `metrics.decile_table`'s `realised_se`, the
    overlap- and timestamp-robust s.e. of that mean) against the predicted mean (line)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    x = decile_df["decile"].to_numpy()
    ax.bar(x, decile_df["realised_mean"], yerr=decile_df["realised_se"], color="tab:blue", alpha=0.7,
           capsize=3, label="realised (error bars: ±1 s.e.)")  # fmt: skip
    ax.plot(x, decile_df["pred_mean"], color="tab:orange", marker="o", label="predicted")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set(title="target by prediction decile", xlabel="prediction decile (1: lowest predictions)",
           ylabel=f"mean target ({unit})", xticks=x)
    ax.legend()
    return _save(fig, save_to)


MANY_BARS = 300  # beyond this many periods a bar is under a pixel wide in plot_ic's 10-inch figure


UP, DOWN = "tab:green", "tab:red"  # a bar above zero, below it


def _time_bars(ax: plt.Axes, when: pd.Series, heights: np.ndarray, width: pd.Timedelta, label: str
               ) -> matplotlib.collections.PolyCollection:
    """Bars at `when` (green up, red down), as `ax.bar` draws them but as one collection: a test span of 11,700
    periods took `ax.bar` 5.8 s (a patch per bar), and a year of minute bars would take minutes. Beyond MANY_BARS
    each bar gets an edge of its own colour, a hairline at least (the real daily test span's 929 bars were 0.6 px
    wide and drawn faint)."""
    x = matplotlib.dates.date2num(when)
    half = (width / pd.Timedelta(days=1)) / 2
    h = np.nan_to_num(heights)
    boxes = np.stack([np.c_[x - half, np.zeros_like(h)], np.c_[x - half, h], np.c_[x + half, h],
                      np.c_[x + half, np.zeros_like(h)]], axis=1)
    colours = np.where(h > 0, UP, DOWN)
    many = len(h) > MANY_BARS
    bars = matplotlib.collections.PolyCollection(boxes, facecolors=colours, edgecolors=colours if many else "none",
                                                 alpha=0.6, linewidths=0.5 if many else 0, label=label)
    ax.add_collection(bars)
    ax.xaxis_date()
    ax.autoscale_view()
    return bars


def _bars_key(bars: matplotlib.collections.Collection) -> tuple:
    """The legend's key of `_time_bars`: both colours, up then down (a collection's own key takes its first bar's
    colour: red in one run, green in another)."""
    alpha = bars.get_alpha()
    return (matplotlib.patches.Patch(color=UP, alpha=alpha), matplotlib.patches.Patch(color=DOWN, alpha=alpha))


def plot_ic(ic_df: pd.DataFrame, save_to: str | Path | None = None, window: int | None = None,
            label: str = "IC per period", note: str = "", unit: str = "IC (correlation)") -> plt.Figure:
    """Above: IC per period (bars, on a time axis) with a rolling mean and the overall mean; rank IC as dots.
    Below: the mean so far, from the first period to each date, ending at the mean: where the IC was earned (a
    step is a few periods carrying it). `label` names the IC family, `note` (the mean and its overlap-robust t,
    with the method) goes beside it in the title, `unit` on the y axis (the pooled IC's per-timestamp shares are
    not correlations)."""
    fig, (ax, low) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True, height_ratios=(2, 1))
    if len(ic_df) == 0:
        _empty(ax, "no period with a defined IC")
        low.set_visible(False)
        return _save(fig, save_to)
    when = pd.to_datetime(ic_df["period"]).reset_index(drop=True)
    gaps = when.diff().dropna()
    width = 0.8 * (gaps.median() if len(gaps) else pd.Timedelta(days=1))
    window = window or max(1, min(20, len(ic_df) // 5))
    mean = ic_df["ic"].mean()
    bars = _time_bars(ax, when, ic_df["ic"].to_numpy(dtype=float), width, label="IC")
    ax.plot(when, ic_df["rank_ic"].to_numpy(), "k.", ms=3, label="rank IC")
    ax.plot(when, ic_df["ic"].rolling(window, min_periods=1).mean().to_numpy(), color="tab:blue",
            label=f"rolling mean ({window} periods)")
    ax.axhline(mean, color="tab:blue", ls="--", lw=0.8, label=f"mean {mean:.3f}")
    _clip_outliers(ax, when, ic_df["ic"].to_numpy(dtype=float), ic_df["rank_ic"].to_numpy(dtype=float))
    ax.set(title=label + (f"\n{note}" if note else ""), ylabel=unit)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend([_bars_key(h) if h is bars else h for h in handles], labels, fontsize="small", loc="upper left",
              bbox_to_anchor=(1.01, 1.0), handler_map={tuple: matplotlib.legend_handler.HandlerTuple(ndivide=None)})
    so_far = [ic_df[col].expanding().mean().to_numpy(dtype=float) for col in ("ic", "rank_ic")]
    low.plot(when, so_far[0], color="tab:blue", label="IC")
    low.plot(when, so_far[1], color="black", lw=0.8, label="rank IC")
    low.axhline(mean, color="tab:blue", ls="--", lw=0.8)
    _clip_outliers(low, when, *so_far)  # the first few periods' means, over one or two of them
    low.axhline(0, color="grey", lw=0.6)
    low.set(ylabel="mean so far")
    low.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _dates(low)
    return _save(fig, save_to)


def robust_limits(values: np.ndarray, margin: float = 0.1) -> tuple[float, float] | None:
    """y limits spanning the 1st to 99th percentile of the finite `values` and 0, widened by `margin` of that span
    each side, where the values reach beyond 1.5 times it (the real daily run's pooled-IC shares: 1st..99th
    percentile -4.1..3.9, a few at -10.6 and 9.7 squeezing the rest into a tenth of the panel); None where the
    values' own range reads well."""
    v = values[np.isfinite(values)]
    if not len(v):
        return None
    lo, hi = np.percentile(v, [1, 99])
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if v.max() - v.min() <= 1.5 * (hi - lo):
        return None
    pad = margin * (hi - lo)
    return float(lo - pad), float(hi + pad)


def _clip_outliers(ax: plt.Axes, when: pd.Series, *series: np.ndarray) -> None:
    """Robust y limits (`robust_limits`) on a time panel, each period with a value beyond them marked at the edge
    it passes (a triangle pointing out), their count and extremes in the legend. The data drawn stays as it is."""
    values = np.concatenate(series)
    limits = robust_limits(values)
    if limits is None:
        return
    lo, hi = limits
    stacked = np.vstack(series)
    with np.errstate(invalid="ignore"):
        above, below = (stacked > hi).any(axis=0), (stacked < lo).any(axis=0)
    ax.set_ylim(lo, hi)
    finite = values[np.isfinite(values)]
    label = f"{int((above | below).sum())} off the axis\n({finite.min():.3g} to {finite.max():.3g})"
    for rows, y, marker in ((above, hi, "^"), (below, lo, "v")):
        if rows.any():
            ax.plot(when[rows], np.full(int(rows.sum()), y), marker, color="black", ms=5, ls="none", label=label,
                    clip_on=False)  # on the frame, half beyond it
            label = None


def plot_ic_decay(decay: pd.DataFrame, save_to: str | Path | None = None, label: str = "IC",
                  traded_lag: int | None = None) -> plt.Figure:
    """The mean IC and rank IC against the target 0..L bars after the signal (alphalens' "mean IC by period"):
    how long the signal lasts. The bars the report calls significant are solid (`decay["significant"]`, of
    `inputs.decay_judged`: a positive IC, t >= 2 at lag 0 and the traded lag, the 9 others deflated over the scan),
    not every |t| >= 2, which a scan of noise shows at some lag; the traded lag is marked."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    if len(decay) == 0 or not np.isfinite(decay["ic"].to_numpy(dtype=float)).any():
        _empty(ax, "no lag with a defined IC")
        return _save(fig, save_to)
    sig = decay["significant"].to_numpy(dtype=bool)
    ax.bar(decay["lag"], decay["ic"], color=np.where(sig, "tab:blue", "lightsteelblue"),
           label="mean IC (solid: significant, as the text judges it)")
    ax.plot(decay["lag"], decay["rank_ic"], "k.", label="rank IC")
    if traded_lag is not None:
        ax.axvline(traded_lag, color="tab:red", ls="--", lw=1, label=f"traded lag ({traded_lag})")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set(title=f"{label} by lag", xlabel="lag (bars between the signal and the start of its target)",
           ylabel="mean IC", xticks=decay["lag"])
    handles, labels = ax.get_legend_handles_labels()  # below the axes: over eleven bars and dots it hid one
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(fig, save_to, tight=False)


def plot_underwater(bt: BacktestResult, save_to: str | Path | None = None) -> plt.Figure:
    """Drawdown of the net book below its running peak, over time (0 at a new high)."""
    fig, ax = plt.subplots(figsize=(10, 3))
    pnl = bt.pnl
    dd = drawdown_curve(pnl["net"])
    ax.fill_between(pnl["timestamp"], dd, 0.0, color="tab:red", alpha=0.4, step="post")
    ax.plot(pnl["timestamp"], dd, color="tab:red", lw=0.8)
    worst = float(dd.min()) if len(dd) else 0.0
    ax.set(title=f"underwater: net drawdown from the running peak (worst {worst:.1%})", ylabel="drawdown")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    _dates(ax)
    return _save(fig, save_to)


def plot_cost_sensitivity(costs: pd.DataFrame, break_even: float, cost_bps: float | None = None,
                          save_to: str | Path | None = None) -> plt.Figure:
    """Net Sharpe with its 95% interval against the cost per unit traded (bps), with the break-even cost and the
    report's cost; a net Sharpe the report flags (`cost_sensitivity`'s net_sharpe_implausible) is ringed."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(costs["cost_bps"], costs["net_sharpe"], marker="o", color="tab:blue", label="net Sharpe")
    ax.fill_between(costs["cost_bps"], costs["net_sharpe_ci_low"], costs["net_sharpe_ci_high"], color="tab:blue",
                    alpha=0.15, lw=0, label="95% interval")
    flagged = costs[costs["net_sharpe_implausible"].astype(bool)]
    if len(flagged):
        ax.scatter(flagged["cost_bps"], flagged["net_sharpe"], s=120, facecolors="none", edgecolors="tab:red", lw=1.5,
                   zorder=3, label=f"implausible (beyond +-{MAX_PLAUSIBLE_SHARPE:g})")
    ax.axhline(0.0, color="grey", lw=0.8)
    if np.isfinite(break_even):
        ax.axvline(break_even, color="tab:red", ls="--", lw=1, label=f"break-even {break_even:.1f} bps")
    if cost_bps is not None:
        ax.axvline(cost_bps, color="tab:green", ls=":", lw=1, label=f"report's cost {cost_bps:g} bps")
    ax.set(title="net Sharpe by trading cost", xlabel="cost (bps per unit of weight traded)",
           ylabel="net Sharpe (annualised)")
    ax.legend(fontsize="small")
    return _save(fig, save_to)


LOADER_COLOURS = {"dataloader": "tab:orange", "device": "tab:blue", "dense": "tab:green"}
BUSY_HATCH = "//"  # a bar timed while other processes kept the machine busy (`busy_note`)


def _k(value: float) -> str:
    return f"{value / 1e3:,.1f}k" if value >= 1e4 else f"{value:,.0f}"


def plot_loader_sweep(sweep: pd.DataFrame, save_to: str | Path | None = None,
                      training: tuple[float, str] | None = None) -> plt.Figure:
    """02_profiling's sweep: samples/s of each loader at each micro-batch, side by side (the seed-style DataLoader
    beside the device loader, with the device loader's speed-up over it), and the share of step time spent
    waiting for data; a configuration timed on a busy machine (`busy_note`) hatched. `training` = (samples/s,
    label) draws a run's own training throughput across the first panel."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    loaders = [name for name in LOADER_NAMES if name in set(sweep["loader"])]
    sizes = sorted(sweep["batch_size"].unique())
    x, width = np.arange(len(sizes)), 0.8 / max(len(loaders), 1)
    by = sweep.set_index(["loader", "batch_size"])
    busy = by["busy_note"].notna() if "busy_note" in by else pd.Series(False, index=by.index)
    for panel, col in ((0, "samples_per_s"), (1, "data_wait_share")):
        ax = axes[panel]
        for i, loader in enumerate(loaders):
            vals = [by[col].get((loader, b), np.nan) for b in sizes]
            bars = ax.bar(x + (i - (len(loaders) - 1) / 2) * width, vals, width, label=LOADER_NAMES[loader],
                          color=LOADER_COLOURS[loader],
                          hatch=[BUSY_HATCH if busy.get((loader, b), False) else "" for b in sizes], edgecolor="white")
            labels = [_k(v) if col == "samples_per_s" else share(v) for v in vals]
            ax.bar_label(bars, labels=["" if np.isnan(v) else t for v, t in zip(vals, labels)], fontsize="x-small")
        ax.set_xticks(x, [f"{b:,}" for b in sizes])
        ax.set_xlabel("micro-batch (windows; chunks for dense)")
    if training is not None and np.isfinite(training[0]):
        axes[0].axhline(training[0], color="black", ls="--", lw=1, label=training[1])
    axes[0].set(title="training throughput by loader", ylabel="samples / s")
    axes[0].yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _k(v)))
    axes[1].set(title="share of step time waiting for data", ylabel="data wait")
    axes[1].yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: share(v)))
    for ax in axes:
        ax.margins(y=0.15)
    handles, labels = axes[0].get_legend_handles_labels()
    colour = {LOADER_NAMES[name]: LOADER_COLOURS[name] for name in loaders}  # a loader's key: its colour, unhatched
    handles = [matplotlib.patches.Patch(color=colour[t]) if t in colour else h for h, t in zip(handles, labels)]
    if busy.any():
        handles.append(matplotlib.patches.Patch(facecolor="grey", edgecolor="white", hatch=BUSY_HATCH))
        labels.append("timed on a busy machine: not comparable")
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    if training is not None and np.isfinite(training[0]):
        _clear_of_line(axes[0], training[0])
    return _save(fig, save_to, tight=False)


def _clear_of_line(ax: plt.Axes, y: float) -> None:
    """Each bar label the horizontal line at `y` would cross moves inside its bar, below the top (a device loader's
    870 under a training line at 900 read struck through)."""
    renderer = ax.figure.canvas.get_renderer()
    line = ax.transData.transform((0, y))[1]
    for text in ax.texts:  # bar_label's annotations, offset in points from each bar's top
        box = text.get_window_extent(renderer)
        if box.y0 - 2 <= line <= box.y1 + 2:
            text.set_position((0, -3))
            text.set_verticalalignment("top")
            text.set_color("white")


def plot_runs(runs_df: pd.DataFrame, save_to: str | Path | None = None) -> plt.Figure:
    """Training samples/s of every run side by side, one horizontal bar each, named with its loader and batch."""
    d = runs_df.dropna(subset=["samples_per_s"]).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(10, max(2.0, 0.4 * len(d) + 1.2)))
    if len(d) == 0:
        _empty(ax, "no run with samples/s")
        return _save(fig, save_to)
    names = [f"{r.run_id}  ({LOADER_NAMES.get(r.loader, r.loader)}, batch {r.batch_size:,.0f} x "
             f"{r.grad_accum_steps:,.0f})" for r in d.itertuples()]
    colours = [LOADER_COLOURS.get(v, "tab:grey") for v in d["loader"]]
    bars = ax.barh(np.arange(len(d)), d["samples_per_s"], color=colours)
    ax.bar_label(bars, labels=[_k(v) for v in d["samples_per_s"]], fontsize="small", padding=3)
    ax.set_yticks(np.arange(len(d)), names)
    ax.invert_yaxis()
    ax.margins(x=0.12)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _k(v)))
    ax.set(title="training throughput of every run", xlabel="samples / s")
    return _save(fig, save_to)


def plot_folds(folds: pd.DataFrame, family: str, save_to: str | Path | None = None) -> plt.Figure:
    """A walk-forward fold by fold, then all folds together (the stitched record, hatched): the headline IC of
    each test period beside the ridge baseline refitted per fold, and the net Sharpe with its interval."""
    labels = [f"{'fold ' + r.fold if r.fold != 'all' else 'all folds'}\n{str(r.test_start)[:10]}\n"
              f"to {str(r.test_end)[:10]}" for r in folds.itertuples()]
    x = np.arange(len(folds))
    hatch = ["//" if f == "all" else "" for f in folds["fold"]]
    col, word = f"{family}_ic", family.replace("_", "-") + " IC"
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 2.2 * len(folds) + 3), 4))
    ax = axes[0]
    ax.bar(x - 0.2, folds[col], width=0.4, label="model", hatch=hatch, edgecolor="white")
    ax.bar(x + 0.2, folds["ridge_ic"], width=0.4, label="ridge (refitted per fold)", color="tab:grey", hatch=hatch,
           edgecolor="white")
    ax.set(title=f"test {word} per fold", ylabel=word)
    ax.margins(y=0.3)  # room for the legend
    ax.legend(fontsize="small", loc="upper left", ncol=2)
    ax = axes[1]
    ax.bar(x, folds["net_sharpe"], width=0.5, hatch=hatch, edgecolor="white",
           color=np.where(folds["net_sharpe"] >= 0, "tab:green", "tab:red"),
           yerr=_error_bars(folds["net_sharpe"], folds["net_sharpe_ci_low"], folds["net_sharpe_ci_high"]), capsize=4)
    ax.set(title="net Sharpe per fold (annualised), 95% intervals", ylabel="net Sharpe")
    for ax in axes:
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, labels, fontsize="small")
    return _save(fig, save_to)


def _error_bars(value: pd.Series, low: pd.Series, high: pd.Series) -> np.ndarray:
    """Matplotlib's [2, n] asymmetric error bars of an interval around each value (0 where unknown)."""
    return np.nan_to_num(np.vstack([value - low, high - value]).astype(float), nan=0.0)


def plot_sweep(table: pd.DataFrame, save_to: str | Path | None = None) -> plt.Figure:
    """A sweep's runs side by side, one bar per run in each panel: samples/s, data-wait share, peak memory, the
    three named test ICs and the net Sharpe with its interval. Runs are labelled by their folder names (the values
    that vary)."""
    label = table["run"].astype(str).str.replace(",", ", ")
    y = np.arange(len(table))
    panels = [("samples_per_s", "samples / s", "{:,.0f}"), ("data_wait_share", "data-wait share", share),
              ("peak_mem_gb", "peak memory (GB)", "{:.2f}"), (None, "test IC", None),
              ("net_sharpe", "net Sharpe (annualised), 95% intervals", "{:.2f}")]
    fig, axs = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 2, 0.45 * len(table) + 2), sharey=True)
    for ax, (col, title, fmt) in zip(axs, panels):
        if col is None:
            ics = [("cross_sectional_ic", "cross-sectional"), ("daily_ic", "per-day"), ("pooled_ic", "pooled")]
            for j, (c, word) in enumerate(ics):
                ax.barh(y + (j - 1) * 0.27, table[c], height=0.27, label=word)
            ax.axvline(0, color="black", lw=0.8)
            ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=3, frameon=False)
        else:
            vals = table[col]
            err = (_error_bars(vals, table["net_sharpe_ci_low"], table["net_sharpe_ci_high"])
                   if col == "net_sharpe" else None)
            bars = ax.barh(y, vals.fillna(0), color="tab:red" if col == "net_sharpe" else "tab:blue", xerr=err,
                           capsize=3)
            text = fmt if callable(fmt) else fmt.format
            ax.bar_label(bars, labels=["-" if pd.isna(v) else text(v) for v in vals], fontsize="x-small", padding=2)
            ax.margins(x=0.25)
        if col == "data_wait_share":
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: share(v)))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))  # a narrow panel: ticks that fit it
        ax.set_title(title, fontsize="medium")
    axs[0].set_yticks(y, label, fontsize="small")
    axs[0].invert_yaxis()
    return _save(fig, save_to)


def plot_quality(report_dict: dict, save_to: str | Path | None = None) -> plt.Figure:
    """Rows dropped or changed per cleaning rule (a QualityReport dict's `counts`, summed over symbols; horizontal
    bars, log scale when counts span decades), and the raw data's zero volumes, which no rule counts."""
    frame = pd.DataFrame(report_dict.get("counts") or [], columns=["rule", "symbol", "action", "rows"])
    frame["rows"] = pd.to_numeric(frame["rows"], errors="coerce")
    counts = frame.groupby(["action", "rule"], as_index=False)["rows"].sum().rename(columns={"action": "what"})
    counts = counts[counts["rows"] > 0]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(counts) + 1)))
    zeros = ((report_dict.get("ranges_before") or {}).get("volume") or {}).get("zero") or 0
    ax.set_title("data quality: rows per rule" + (f"\n{zero_volumes(zeros)}" if zeros else ""))
    if len(counts) == 0:
        _empty(ax, NOTHING_CLEANED)
        return _save(fig, save_to)
    counts = counts.sort_values("rows", ascending=False)
    sns.barplot(data=counts, y="rule", x="rows", hue="what", dodge=False, orient="h", ax=ax)
    log = counts["rows"].max() > 100 * max(counts["rows"].min(), 1)
    if log:
        ax.set_xscale("log")
    ax.set(xlabel="rows (log scale)" if log else "rows", ylabel="")
    return _save(fig, save_to)


_BOX_VALUES = ("mean", "cilo", "cihi", "whishi", "whislo", "fliers", "q1", "med", "q3")


def box_stats(values: np.ndarray, codes: np.ndarray, names, log: bool = False) -> list[dict]:
    """One box per name (`codes` index `names`; finite values only, positive ones when `log`), as
    matplotlib's `cbook.boxplot_stats` defines it: quartiles by linear interpolation, whiskers at the last value
    within 1.5 IQR of the box, computed in log10 space when `log` (as a box on a log axis reads) and drawn back on
    the values' scale. Each box's fliers are cut to its lowest and highest: a flier per row is millions of points
    on real data (01's figure on 9.9M rows: 3.9 s drawn this way, 34.5 s with seaborn's boxplot; docs/perf.md)."""
    v, c = np.asarray(values, dtype=float), np.asarray(codes)
    ok = np.isfinite(v) & (c >= 0) & ((v > 0) if log else True)
    v, c = (np.log10(v[ok]) if log else v[ok]), c[ok]
    order = np.argsort(c, kind="stable")
    v, c = v[order], c[order]
    bounds = np.searchsorted(c, np.arange(len(names) + 1))
    back = (lambda x: 10.0 ** np.asarray(x)) if log else np.asarray  # noqa: E731
    boxes = []
    for name, a, b in zip(names, bounds[:-1], bounds[1:]):
        if a == b:
            continue
        box = cbook.boxplot_stats(v[a:b], labels=[str(name)])[0]
        fliers = box["fliers"]
        box["fliers"] = np.unique([fliers.min(), fliers.max()]) if fliers.size else fliers
        del box["iqr"]  # a width, not a value: nothing to draw back on a log axis, and bxp does not read it
        boxes.append({k: (back(x) if k in _BOX_VALUES else x) for k, x in box.items()})
    return boxes


def _draw_boxes(ax: plt.Axes, boxes: list[dict], log: bool) -> None:
    if log:
        ax.set_yscale("log")
    if not boxes:
        _empty(ax, "no finite value")
        return
    ax.bxp(boxes, patch_artist=True,
           boxprops={"facecolor": "#a6cee3"}, medianprops={"color": "#1f3b5c"}, flierprops={"markersize": 2})
    ax.tick_params(axis="x", rotation=45)
    drawn = np.concatenate([np.r_[b["whislo"], b["whishi"], b["fliers"]] for b in boxes])
    if log and _plain(drawn.min(), drawn.max()):  # else 10^k, one notation throughout
        _plain_log_labels(ax.yaxis)


def _as_axis(x: float, plain: bool) -> str:
    """A value in a log axis's own notation: plain (0.067, 8100) where its labels are (`PLAIN_RANGE`), else
    as a power of ten (6.7x10^-2) beside its 10^k ticks."""
    if plain:
        return f"{x:.0f}" if x >= 100 else f"{x:.3g}"  # no thousands separator: the ticks (f"{x:g}") have none
    mantissa, exponent = f"{x:.1e}".split("e")
    return rf"${mantissa}\times10^{{{int(exponent)}}}$"


def plot_raw_vs_features(raw: pd.DataFrame, fs, save_to: Path | None = None,
                         features: tuple[str, ...] = ("ret_1", "log_volume_rel")):
    """Raw close and volume per symbol on a log scale (where the 1e-8 prices and 1e15 volumes show) next to
    the cleaned features per symbol (where they are gone). Boxes per symbol (`box_stats`), their fliers only
    the extremes."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 7))
    finite = np.isfinite(raw["close"].to_numpy(dtype=float)) & np.isfinite(raw["volume"].to_numpy(dtype=float))
    codes, names = pd.factorize(raw["symbol"].to_numpy()[finite], sort=True)
    for ax, col in zip(axes[0], ("close", "volume")):
        vals = raw[col].to_numpy(dtype=float)[finite]
        _draw_boxes(ax, box_stats(vals, codes, names, log=True), log=True)
        pos, zeros = vals[vals > 0], int(np.count_nonzero(vals == 0))
        plain = pos.size and _plain(pos.min(), pos.max())  # the axis's notation (`_draw_boxes`: the same extremes)
        span = (f"spans {_as_axis(pos.min(), plain)} to {_as_axis(pos.max(), plain)}" if pos.size
                else "no positive value")
        if pos.size < vals.size:  # a log axis cannot show them: said, so a zero volume is not read as absent
            span += "\nnot shown: " + (zero_volumes(zeros) if col == "volume" and zeros == vals.size - pos.size
                                        else f"{vals.size - pos.size:,} zero or negative")
        ax.set(title=f"raw {col} (log scale): {span}", xlabel="symbol", ylabel=col)
    train = np.flatnonzero(fs.split == 0)
    for ax, col in zip(axes[1], features):
        j = fs.feature_names.index(col)
        _draw_boxes(ax, box_stats(fs.X[train, j], fs.symbol_id[train], fs.symbols), log=False)
        ax.set(title=f"feature {col}, scaled (train split): one scale for all", xlabel="symbol", ylabel=col)
    return _save(fig, save_to)
