"""The notebooks' tables as a researcher reads them: chosen columns, a unit in every header that has one, integers
as integers, shares as percentages, memory in GB everywhere, an MFU that cannot be right shown as `invalid` (never as
a number) and a flagged Sharpe or annual return with `(implausible)` beside it. Each function turns a frame or dict
of report.py, runs.py or profiling.py into a frame of strings; `show` renders one compactly (no index, no wrapping
inside a cell), so that the HTML report reads at 1400 px without scrolling sideways. Nothing here computes a figure.
"""

from __future__ import annotations

import html
import math
import numbers
import re

import pandas as pd

NA = "–"


def _ok(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)  # numpy's numbers too


def _col(df: pd.DataFrame, col: str) -> pd.Series:
    """A column of df, or NaN throughout when df has none."""
    return df[col] if col in df else pd.Series([float("nan")] * len(df), index=df.index)


def number(v, spec: str) -> str:
    """format(v, spec), except that a value rounding to zero carries no minus sign: a net exposure of -0.0004 reads
    '+0.00' at '+.2f', never '-0.00'."""
    out = format(v, spec)
    if out.startswith("-") and not any(c in "123456789" for c in out):
        out = ("+" if spec.startswith("+") else "") + out[1:]
    return out


def minute(value, missing: str = NA) -> str:
    """A time as '2024-01-08 09:21' in UTC (a naive one read as UTC), from summary.json's ISO text or a
    timestamp; None as `missing`, and a text that is no time ('2024-01-08 (whole day, UTC)') as it came."""
    if value is None or value is pd.NaT or value == "":
        return missing
    t = pd.to_datetime(value, utc=True, errors="coerce") if isinstance(value, (str, pd.Timestamp)) else pd.NaT
    return str(value) if pd.isna(t) else t.strftime("%Y-%m-%d %H:%M")


def num(v, digits: int = 3) -> str:
    return number(v, f",.{digits}f") if _ok(v) else NA


def span(low, high, digits: int = 2) -> str:
    """A 95% interval's cell: '-1.20 to 3.40'."""
    return f"{num(low, digits)} to {num(high, digits)}" if _ok(low) and _ok(high) else NA


def pct_span(low, high) -> str:
    """A 95% interval of returns: '-7.2% to +25.9%'."""
    return f"{signed_pct(low)} to {signed_pct(high)}" if _ok(low) and _ok(high) else NA


def integer(v) -> str:
    return f"{int(round(v)):,}" if _ok(v) else NA


def pct(v, digits: int = 1) -> str:
    return number(v, f".{digits}%") if _ok(v) else NA


def share(v) -> str:
    """A share of time (a data wait) in figures and tables alike: two significant digits ('11%', '2.5%', '0.27%'),
    whole percent from 10%; never a nonzero share as '0%' (below 0.01%: '<0.01%')."""
    if not _ok(v):
        return NA
    p = float(v) * 100
    if p == 0 or abs(p) >= 9.95:
        return f"{p:.0f}%"
    return f"{p:.2g}%" if abs(p) >= 0.01 else ("<0.01%" if p > 0 else ">-0.01%")


def busy(v) -> str:
    """A GPU busy percentage as NVML gives it (0-100)."""
    return f"{v:.0f}%" if _ok(v) else NA


def signed_pct(v, digits: int = 1) -> str:
    """A return: +1.2%, -100.0%; one beyond 10,000% as a power of ten (an annualised few days)."""
    if not _ok(v):
        return NA
    return number(v, f"+.{digits}%") if abs(v) < 100 else f"{v * 100:+.1e}%"


def gb(nbytes) -> str:
    """Bytes in GB (1e9), with three significant figures: 0.00144 GB, 0.544 GB, 2.5 GB."""
    return f"{nbytes / 1e9:.3g} GB" if _ok(nbytes) else NA


def rate(v) -> str:
    return f"{v:,.0f}" if _ok(v) else NA


def mfu(value, invalid=None) -> str:
    """MFU as a percentage; `invalid` (the flagged value) or a value above 1 wins: an MFU that cannot be right is
    no figure."""
    if _ok(invalid) or (_ok(value) and value > 1):
        return "invalid"
    return pct(value, 2)


def markdown_text(value) -> str:
    """Text from a file (a run's summary.json, a sweep's table, the data) as markdown that shows it as written: its
    markup escaped (a colleague's run folder must not put live HTML into report.html), its markdown punctuation
    taken literally, on one line."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|~#!])", r"\\\1", text)


def markdown_code(value) -> str:
    """Text from a file as a markdown code span, whatever backticks it holds (a fence longer than its longest run of
    them): inside a span markup is text, but a backtick of its own would end a plain one and let the rest through."""
    text = " ".join(str(value).split())
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def show(df: pd.DataFrame, caption: str = "", highlight: tuple[tuple[int, str], ...] = (), text: bool = False):
    """A compact Styler: no index, cells on one line, numbers right-aligned (`text`: everything left-aligned and
    allowed to wrap, for a table of sentences); `highlight` marks (row, column) cells."""
    style = df.style.hide(axis="index").format(escape="html").format_index(escape="html", axis=1)  # data's text
    cell = "padding: 2px 8px; " + ("text-align: left;" if text else "text-align: right; white-space: nowrap;")
    style = style.set_table_styles([
        {"selector": "th", "props": cell},
        {"selector": "td", "props": cell},
        {"selector": "th:first-child, td:first-child", "props": "text-align: left; white-space: nowrap;"},
        {"selector": "caption", "props": "caption-side: bottom; text-align: left; color: #555; padding-top: 4px;"},
    ])  # fmt: skip
    if caption:
        style = style.set_caption(caption)
    for row, col in highlight:
        style = style.set_properties(subset=pd.IndexSlice[[row], [col]], **{"background-color": "#c7e9c0",
                                                                           "font-weight": "bold"})
    return style


# -- 01's tables ---------------------------------------------------------------------------------------------------
NOTHING_CLEANED = "no row dropped, changed, masked or flagged"  # what clean data's table and figure say


def zero_volumes(n: int) -> str:
    """What 01's raw panel and quality.png say of the data's zero volumes, which no rule counts (docs/data.md)."""
    return f"{n:,} zero volume{'s' if n != 1 else ''} kept: no rule counts {'them' if n != 1 else 'it'}"


def cleaning_table(counts: pd.DataFrame) -> pd.DataFrame:
    """Rows per cleaning rule (`explore.counts_table`'s rows per rule and symbol, summed): what it did, the rows
    and the symbols it touched, and the symbol it touched most, so that a universe of hundreds of symbols reads
    in a few lines. Clean data gets one row saying so (a bare header reads as a table that failed to fill)."""
    counts = counts[counts["rows"] > 0]
    if not len(counts):
        return pd.DataFrame([{"action": NA, "rule": NOTHING_CLEANED, "rows": "0", "symbols": "0", "most in": NA}])
    rows = []
    for (action, rule), g in counts.groupby(["action", "rule"], sort=True):
        top = g.sort_values(["rows", "symbol"], ascending=[False, True]).iloc[0]
        rows.append({"action": action, "rule": rule, "rows": integer(g["rows"].sum()),
                     "symbols": integer(g["symbol"].nunique()), "most in": f"{top['symbol']} ({integer(top['rows'])})"})
    return pd.DataFrame(rows, columns=["action", "rule", "rows", "symbols", "most in"])


def ranges_view(ranges: pd.DataFrame) -> pd.DataFrame:
    """`explore.ranges_table` as read: each raw column's finite range (3 significant digits) and its counts of
    NaN, inf, zero and negative values, before and after cleaning."""
    sig = lambda v: f"{v:.3g}" if _ok(v) else NA  # noqa: E731
    return pd.DataFrame({"stage": ranges["stage"], "column": ranges["column"], "min": [sig(v) for v in ranges["min"]],
                         "max": [sig(v) for v in ranges["max"]],
                         **{name: [integer(v) for v in ranges[key]] for key, name in
                            (("nan", "NaN"), ("inf", "inf"), ("zero", "zero"), ("negative", "negative"))}})


def features_view(features: pd.DataFrame) -> pd.DataFrame:
    """`explore.feature_table`'s rows of one split as read: each feature's range before scaling (every row), the
    rows without the history it needs, then this split's scaled range, median, spread and share at the clip."""
    return pd.DataFrame({
        "feature": features["feature"],
        "before scaling": [f"{a:.3g} to {b:.3g}" if _ok(a) and _ok(b) else NA
                           for a, b in zip(features["raw_min"], features["raw_max"])],
        "rows without history": [integer(v) for v in features["no_history"]],
        "scaled": [span(a, b, 3) for a, b in zip(features["min"], features["max"])],
        "median": [num(v, 3) for v in features["median"]],
        "std": [num(v, 3) for v in features["std"]],
        "at the clip": [pct(v, 2) for v in features["at_clip"]],
    })  # fmt: skip


# -- the report's tables ------------------------------------------------------------------------------------------
def ic_table(ic: dict, headline: str, before: dict | None = None) -> pd.DataFrame:
    """The three named ICs at the traded lag (`ic["lag"]`), one row each, the headline first; with `before`
    (report.json's `ic_lag0`), the same figure before the trade delay beside each."""
    names = {"cross_sectional": "cross-sectional (per timestamp)", "daily": "per day", "pooled": "pooled (all rows)"}
    order = [headline] + [f for f in names if f != headline]
    lag = ic.get("lag", 0)
    rows = []
    for fam in order:
        f = ic[fam]
        row = {"IC": names[fam] + (" (headline)" if fam == headline else ""),
               f"mean IC, lag {lag}": num(f.get("ic"), 4), "rank IC": num(f.get("rank_ic"), 4),
               "ICIR": num(f.get("icir"), 2), "t (HAC)": num(f.get("t_stat"), 2), "lags": integer(f.get("lags")),
               "periods": integer(f.get("n_periods", f.get("n_rows"))), "IC > 0": pct(f.get("positive_share"), 0)}
        if before and lag:
            row.update({"IC before the delay (lag 0)": num(before[fam].get("ic"), 4),
                        "t, lag 0": num(before[fam].get("t_stat"), 2)})
        rows.append(row)
    return pd.DataFrame(rows)


def decay_table(decay: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """The headline IC at each lag (report.json's `ic_decay`)."""
    d = pd.DataFrame(decay)
    return pd.DataFrame({"lag (bars)": [integer(v) for v in d["lag"]], "mean IC": [num(v, 4) for v in d["ic"]],
                         "rank IC": [num(v, 4) for v in d["rank_ic"]], "t (HAC)": [num(v, 2) for v in d["t_stat"]],
                         "periods": [integer(v) for v in d["n_periods"]]})


PREDICTOR_COLUMNS = {"cross_sectional_ic": "cross-sectional IC", "cross_sectional_rank_ic": "rank IC",
                     "daily_ic": "per-day IC", "pooled_ic": "pooled IC", "t_stat": "t (HAC)",
                     "directional_accuracy": "direction right", "coverage": "calls made", "sharpe_net": "net Sharpe",
                     "sharpe_net_se": "SE (Lo)", "sharpe_net_psr": "P(Sharpe > 0)",
                     "total_return_net": "net return"}  # fmt: skip


def predictor_table(predictors: pd.DataFrame, t_family: str) -> pd.DataFrame:
    """The model and the baselines on the same rows; `t (HAC)` is of the headline family `t_family`."""
    out = pd.DataFrame({"predictor": predictors["predictor"].astype(str)})
    for col, name in PREDICTOR_COLUMNS.items():
        values = _col(predictors, col)
        if col in ("directional_accuracy", "coverage"):
            out[name] = [pct(v) for v in values]
        elif col == "total_return_net":
            out[name] = [signed_pct(v) for v in values]
        else:
            out[name] = [num(v, 2 if col in ("t_stat", "sharpe_net", "sharpe_net_se", "sharpe_net_psr") else 4)
                         for v in values]
    return out.rename(columns={"t (HAC)": f"t ({t_family.replace('_', '-')}, HAC)"})


def predictor_highlight(predictors: pd.DataFrame, best: dict[str, str]) -> tuple[tuple[int, str], ...]:
    """The (row, column) cells of predictor_table to mark, from backtest.best_predictors' {column: predictor}."""
    rows = {str(p): i for i, p in enumerate(predictors["predictor"])}
    return tuple((rows[name], PREDICTOR_COLUMNS[col]) for col, name in best.items()
                 if col in PREDICTOR_COLUMNS and name in rows)


BOOKS = {"gross": "gross (before costs)", "net": "net of costs", "buy_hold": "buy & hold"}


def backtest_table(stats: dict, flags: dict | None = None) -> pd.DataFrame:
    """Gross, net of costs and buy-and-hold side by side, a figure a row, each Sharpe and annual return with its
    95% interval on the row below it; the book's settings are said once, beside the table. A figure the report
    flags (report.json's `summary.flags`, e.g. `net_sharpe`) reads "implausible" beside it."""
    flags = flags or {}
    mark = lambda text, key: f"{text} (implausible)" if key in flags else text  # noqa: E731
    table = {"figure": ["total return", "annual return", "annual return 95% interval", "annual volatility", "Sharpe",
                        "Sharpe 95% interval", "max drawdown", "turnover / bar", "hit rate", "bars"]}
    for key, name in BOOKS.items():
        b, inf = stats[key], stats[key]["sharpe_inference"]
        table[name] = [signed_pct(b["total_return"]), mark(signed_pct(b["annual_return"]), f"{key}_annual_return"),
                       pct_span(*b["annual_return_ci"]), pct(b["annual_volatility"]),
                       mark(num(b["sharpe"], 2), f"{key}_sharpe"), span(inf["ci_low"], inf["ci_high"]),
                       pct(b["max_drawdown"]), num(b["turnover"], 3), pct(b["hit_rate"]), integer(b["n_bars"])]
    return pd.DataFrame(table)


def costs_table(costs: pd.DataFrame) -> pd.DataFrame:
    """`cost_sensitivity`'s rows; a net Sharpe the report flags reads "(implausible)", as in `backtest_table`."""
    flagged = costs["net_sharpe_implausible"] if "net_sharpe_implausible" in costs else [False] * len(costs)
    return pd.DataFrame({"cost (bps)": [f"{c:g}" if _ok(c) else NA for c in costs["cost_bps"]],
                         "net Sharpe": [num(v, 2) + (" (implausible)" if f else "")
                                        for v, f in zip(costs["net_sharpe"], flagged)],
                         "95% interval": [span(lo, hi) for lo, hi in zip(costs["net_sharpe_ci_low"],
                                                                         costs["net_sharpe_ci_high"])],
                         "net annual return": [signed_pct(v) for v in costs["net_annual_return"]],
                         "its 95% interval": [pct_span(lo, hi) for lo, hi in zip(costs["net_annual_return_ci_low"],
                                                                                 costs["net_annual_return_ci_high"])],
                         "net total return": [signed_pct(v) for v in costs["net_total_return"]]})  # as backtest_table


def per_symbol_table(per_symbol: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"symbol": per_symbol["symbol"].astype(str), "IC": [num(v, 4) for v in per_symbol["ic"]],
                         "rank IC": [num(v, 4) for v in per_symbol["rank_ic"]],
                         "direction right": [pct(v) for v in per_symbol["directional_accuracy"]],
                         "test rows": [integer(v) for v in per_symbol["n"]]})


def epoch_in_fold(epochs: pd.DataFrame) -> pd.Series:
    """Each epoch row's epoch within its walk-forward fold, from 1 (a walk-forward's epochs count across folds)."""
    return epochs.groupby("fold", sort=False).cumcount() + 1


def partial_epochs(epochs: pd.DataFrame) -> pd.Series:
    """Whether each epoch row is the one validation of a run that stopped inside it (`max_steps`, `max_minutes`):
    its loss is the mean over the steps it ran, its time theirs, not an epoch's."""
    return _col(epochs, "partial").eq(True)


def epoch_labels(epochs: pd.DataFrame) -> list[str]:
    """Each epoch row as a reader counts it: from 1 (within its fold for a walk-forward, whose epochs count across
    its folds), '(partial)' where the run stopped inside it."""
    folds = "fold" in epochs and epochs["fold"].nunique() > 1
    within = epoch_in_fold(epochs) if folds else epochs["epoch"] + 1
    return [integer(e) + (" (partial)" if part else "") for e, part in zip(within, partial_epochs(epochs))]


def epochs_table(epochs: pd.DataFrame, loss_unit: str = "MSE") -> pd.DataFrame:
    """One row per epoch; a walk-forward's (whose epochs count across its folds) as its fold and the epoch in it."""
    folds = "fold" in epochs and epochs["fold"].nunique() > 1
    table = pd.DataFrame({"epoch": epoch_labels(epochs),
                          f"train loss ({loss_unit})": [num(v, 4) for v in epochs["train_loss"]],
                          f"val loss ({loss_unit})": [num(v, 4) for v in epochs["val_loss"]],
                          "time (s)": [num(v, 1) for v in epochs["epoch_time_s"]],
                          "samples/s": [rate(v) for v in epochs["samples_per_s"]]})
    if folds:
        table.insert(0, "fold", [integer(f) for f in epochs["fold"]])
    return table


def config_table(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """(setting, value) pairs, as words.run_configuration lists them."""
    return pd.DataFrame(rows, columns=["setting", "value"])


# -- throughput ---------------------------------------------------------------------------------------------------
LOADER_NAMES = {"dataloader": "seed-style DataLoader", "device": "device loader", "dense": "dense chunks"}
LOADER_SHORT = {"dataloader": "DataLoader", "device": "device", "dense": "dense"}


def sweep_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """02_profiling's sweep: each loader at each micro-batch, with the speed-up over the seed's pipeline."""
    g = lambda col: _col(sweep, col)
    return pd.DataFrame({
        "loader": [LOADER_NAMES.get(v, v) for v in sweep["loader"]],
        "micro-batch": [integer(v) for v in sweep["batch_size"]],
        "samples/s": [rate(v) for v in sweep["samples_per_s"]],
        "vs seed": [f"{v:.2f}x" if _ok(v) else NA for v in g("speedup")],
        "data wait": [share(v) for v in g("data_wait_share")],
        "ms / micro-batch": [num(v * 1e3, 1) for v in g("step_time_s")],  # (an optimizer step: x grad_accum_steps)
        "batches / epoch": [integer(v) for v in g("batches_per_epoch")],
        "peak memory": [gb(v) for v in g("peak_mem_bytes")],
        "MFU": [mfu(m, bad) for m, bad in zip(g("mfu"), g("mfu_invalid"))],
        "GPU busy": [busy(v) for v in g("gpu_busy_pct")],
        "others' CPU": [f"{v:.1f} cores" + (" (busy)" if isinstance(n, str) else "") if _ok(v) else NA
                        for v, n in zip(g("other_cores"), g("busy_note"))],
    })  # fmt: skip


def runs_table(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Every run under outputs/, side by side: the throughput figures and the named test ICs, at the lag each was
    taken at (the run's trade_delay; unknown for a summary written before it was recorded)."""
    g = lambda col: _col(runs_df, col)
    when = pd.to_datetime(g("finished"), utc=True, errors="coerce")
    return pd.DataFrame({
        "run": runs_df["run_id"].astype(str),
        "model": [v if isinstance(v, str) else NA for v in g("model")],
        "loader": [LOADER_SHORT.get(v, v) if isinstance(v, str) else NA for v in g("loader")],
        "device": [v if isinstance(v, str) else NA for v in g("device")],
        "batch": [f"{integer(b)} x {integer(a)}" for b, a in zip(g("batch_size"), g("grad_accum_steps"))],
        "samples/s": [rate(v) for v in g("samples_per_s")],
        "data wait": [share(v) for v in g("data_wait_share")],
        "GPU busy": [busy(v) for v in g("gpu_util")],
        "MFU": [mfu(v) for v in g("mfu")],
        "peak memory": [f"{v:.3g} GB" if _ok(v) else NA for v in g("peak_mem_gb")],
        "epoch (s)": [num(v, 1) for v in g("epoch_time_s")],
        "IC lag": [integer(v) for v in g("ic_lag")],
        "cross-sect. IC": [num(v, 4) for v in g("cross_sectional_ic")],
        "pooled IC": [num(v, 4) for v in g("pooled_ic")],
        "finished (UTC)": [t.strftime("%Y-%m-%d %H:%M") if not pd.isna(t) else NA for t in when],
    })  # fmt: skip


def folds_table(folds: list[dict]) -> pd.DataFrame:
    """03's walk-forward: each fold's training and test spans, its windows and optimizer steps, and its named test
    ICs (summary.json's `folds`)."""
    g = lambda key: [f.get(key) for f in folds]  # noqa: E731
    return pd.DataFrame({
        "fold": [integer(v) for v in g("fold")],
        "trained on (UTC)": [f"{minute(a, 'the start')} to {minute(b)}"
                             for a, b in zip(g("train_start"), g("train_end"))],
        "tested on (UTC)": [f"{minute(a)} to {minute(b)}" for a, b in zip(g("test_start"), g("test_end"))],
        "windows (train / test)": [f"{integer(a)} / {integer(b)}" for a, b in zip(g("train_windows"),
                                                                                  g("test_windows"))],
        "steps": [integer(v) for v in g("optimizer_steps")],
        "cross-sectional IC": [num(v, 4) for v in g("cross_sectional_ic")],
        "per-day IC": [num(v, 4) for v in g("daily_ic")],
        "pooled IC": [num(v, 4) for v in g("pooled_ic")],
    })  # fmt: skip


def run_summary_table(summary: dict) -> pd.DataFrame:
    """One run's figures from its summary.json, each with its unit (03_train's summary)."""
    g = summary.get
    rows = [
        ("model", f"{g('model')}, {integer(g('n_params'))} parameters"),
        ("device", f"{g('device_name')} ({g('device')}), loader {g('loader')}, compile {g('compiled')}"
                   + (f", CUDA step graph ({integer(g('graph_steps'))} steps replayed)" if g("graph_steps") else "")),
        ("batch", f"{integer(g('batch_size'))} x {integer(g('grad_accum_steps'))} accumulation x "
                  f"{integer(g('world_size') or 1)} rank(s) = {integer(g('global_batch'))} windows per step"),
        ("learning rate", f"{g('lr'):g} (lr_scaling {g('lr_scaling')})" if _ok(g("lr")) else NA),
        ("optimizer steps", f"{integer(g('optimizer_steps'))} ({integer(g('skipped_steps'))} skipped)"),
        ("samples/s", f"{rate(g('samples_per_s'))} (median over the log intervals; "
                      f"{rate(g('samples_per_s_whole'))} over the whole training time)"),
        ("data wait", share(g("data_wait_share"))),
        ("GPU busy", busy(g("gpu_util")) if _ok(g("gpu_util")) else f"{NA} (no NVML reading)"),
        ("MFU", mfu(g("mfu")) if g("mfu") is not None else f"{NA} (no peak FLOP/s known for this device)"),
        ("peak memory", gb(g("peak_mem_bytes"))),
        ("epoch time", f"{num(g('epoch_time_s'), 1)} s" if _ok(g("epoch_time_s")) else f"{NA} (no epoch finished)"),
        ("training time", f"{num(g('train_time_s'), 1)} s"),
        ("best validation loss", num(g("best_val_loss"), 4)),
        ("test ICs", f"cross-sectional {num(g('cross_sectional_ic'), 4)}, per day {num(g('daily_ic'), 4)}, "
                     f"pooled {num(g('pooled_ic'), 4)} over {integer(g('test_rows') or g('test_windows'))} rows"),
    ]
    return pd.DataFrame(rows, columns=["figure", "value"])


def ops_table(top: pd.DataFrame) -> pd.DataFrame:
    """02's torch.profiler top ops: milliseconds over the profiled steps, and each op's share of the self time."""
    g = lambda col: _col(top, col)
    return pd.DataFrame({"op": top["op"].astype(str), "calls": [integer(v) for v in g("calls")],
                         "self CPU (ms)": [num(v, 2) for v in g("self_cpu_ms")],
                         "CPU total (ms)": [num(v, 2) for v in g("cpu_total_ms")],
                         "self device (ms)": [num(v, 2) for v in g("self_device_ms")],
                         "device total (ms)": [num(v, 2) for v in g("device_total_ms")],
                         "share of self time": [pct(v) for v in g("share_of_self_time")]})
