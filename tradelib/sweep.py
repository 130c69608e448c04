"""`tradelib sweep`: a grid of training runs, each notebook 03 executed by papermill, and their comparison.

    tradelib sweep -f params/default.yaml -p batch_size 128,512 -p model lstm,tcn -p max_steps 50
    tradelib sweep -z batch_size 128,512,1024 -z grad_accum_steps 1,2,1 -p loader dataloader,device

Each `-p NAME VALUES` is an axis of the grid: every combination of the axes' values is one run (a single
value: the same in every run). `-z NAME VALUES` links parameters position by position: `-z batch_size
128,512,1024 -z grad_accum_steps 1,2,1` is three runs (128 x 1, 512 x 2, 1024 x 1), not nine, and the linked
set is one more axis of the grid.

How VALUES is split: `,` separates the values of a number, a true/false, or a parameter with fixed choices
(`model`, `loader`, `fold_window`, ...). Every other text parameter keeps its commas, since its own value may
hold them (`loaders`, `batch_sizes`, `cost_grid_bps`, `bench_models`, a `data_path`): only `;` separates its
values (`-p data_path 'a.csv;b.csv'`). `;` works for every parameter; a value with `;` splits on `;` only.

Every combination is checked (names, values, the device, that the data path exists; a relative one is read
from where the sweep runs) before the first run starts. A `-f` file's settings of the other notebooks (a
profile such as params/quick.yaml sets 02's `profile_seconds`) are left out with a note; with -p they are
refused. The runs go into one sweep folder; each is a normal run folder, so every tool that reads a run reads it
(04_report with run_id `<sweep_id>/<run>`):

    outputs/<sweep_id>/
      <run>/               e.g. batch_size=512,model=tcn: 03_train.ipynb as executed, and the run's own files
      sweep.json           the sweep's definition: shared parameters, axes, runs
      sweep.csv            one row per run: its values, status, throughput, memory, the named ICs, the headline
                           IC's t and whether it is significant once the sweep's runs are allowed for, net
                           Sharpe and its 95% interval
      sweep.md, sweep.html, sweep.png    the same table for reading, and its figure

The sweep id is named by `--name`, else made from the parameters (the same command gives the same id).
Rerunning the same command skips the runs that finished with the same parameters, resumes any that was
interrupted, and writes the table again. A run that fails is reported in the table and the sweep goes on;
the command then ends with exit code 1. Net Sharpe and the ICs are the report's (report.headline_numbers), with
the report parameters given to the sweep (cost_bps, position_mode, trade_delay, ...).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import html
import itertools
import json
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tradelib import runs
from tradelib.config import (
    Config,
    ConfigError,
    as_written,
    declared_parameters,
    parameters_help,
    parse_value,
    read_params,
    unknown_message,
)
from tradelib.data.load import existing_data_path
from tradelib.hardware import pick_device
from tradelib.paths import atomic_write_bytes, notebooks_dir
from tradelib.pipeline import NotebookFailed, execute_notebooks
from tradelib.report import report, tables
from tradelib.report.backtest import SIGNIFICANT
from tradelib.report.inputs import ReportSettings, load_featureset, load_inputs
from tradelib.train.models import check_model

NOTEBOOK = "03_train"
FIELDS = {f.name: f for f in dataclasses.fields(Config)}
MANAGED = ("run_id", "resume")  # the sweep names each run and resumes it
# the comparison table's figures, after each run's values and status (report.headline_numbers' names)
NUMBERS = ["samples_per_s", "it_per_s", "global_batch", "data_wait_share", "peak_mem_gb", "gpu_util", "mfu",
           "train_time_s", "cross_sectional_ic", "cross_sectional_rank_ic", "daily_ic", "pooled_ic", "ic_t_stat",
           "ic_t_deflated", "net_sharpe", "net_sharpe_ci_low", "net_sharpe_ci_high", "gross_sharpe", "break_even_bps"]


@dataclass
class Plan:
    """A sweep before it runs: every run's name, varying values and checked Config."""

    sweep_id: str
    folder: Path
    shared: dict  # the parameters every run gets (files, then single-valued -p)
    axes: list[str]  # the names that vary, in the order given
    names: list[str]  # run folder names
    values: list[dict]  # each run's varying values
    configs: list[Config]


def splits_on_comma(name: str, text: str = "") -> bool:
    """Whether `,` separates a parameter's sweep values: numbers, booleans and fixed choices never hold one, nor
    does a patterned text (model) where the whole `text` is not a value."""
    f = FIELDS[name]
    if f.type in ("int", "float", "bool") or f.metadata["choices"]:
        return True
    pattern = f.metadata["pattern"]
    return bool(pattern) and re.fullmatch(pattern, text) is None


def split_values(name: str, text) -> list:
    """The values one -p / -z gives a parameter (see the module's doc for `,` and `;`), typed as papermill
    types them."""
    if not isinstance(text, str):
        return [text]
    sep = ";" if ";" in text else "," if splits_on_comma(name, text) else None
    parts = [text] if sep is None else [p.strip() for p in text.split(sep)]
    if any(p == "" for p in parts) and len(parts) > 1:
        raise ConfigError(f"sweep: parameter {name!r} has an empty value in {text!r}")
    return [parse_value(p) for p in parts]


def _check_name(name: str, allowed: set[str], where: str) -> None:
    """A name the sweep may set; `where` it was given (a file, -p or -z) is said with a refusal."""
    if name not in FIELDS:
        raise ConfigError(f"sweep: {where}: {unknown_message(name, FIELDS)}")
    if name in MANAGED:
        raise ConfigError(f"sweep: {where}: parameter {name!r} is set by the sweep for each run (name the sweep with "
                          f"--name)")
    if name not in allowed and FIELDS[name].metadata["group"] != "report":
        raise ConfigError(f"sweep: {where}: parameter {name!r} does not shape a training run ({NOTEBOOK} does not "
                          f"declare it; `tradelib sweep --help` lists those that do)")


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(value)).strip("_") or "_"


def run_name(values: dict) -> str:
    """A run's folder name: its varying values, e.g. batch_size=512,model=tcn ("run" when nothing varies)."""
    return ",".join(f"{k}={_slug(v)}" for k, v in values.items()) or "run"


def default_id(shared: dict, axes: list[tuple[str, list]]) -> str:
    """The same parameters give the same sweep id, so rerunning a command finds its finished runs."""
    blob = json.dumps({"shared": shared, "axes": axes}, sort_keys=True, default=str).encode()
    return "sweep-" + "-".join(name for name, _ in axes)[:60] + ("-" if axes else "") + \
        hashlib.sha256(blob).hexdigest()[:8]


def grid_axes(grid: list[tuple[str, str]], linked: list[tuple[str, str]], shared: dict, allowed: set[str]
              ) -> list[tuple[tuple[str, ...], list[tuple]]]:
    """The grid's axes as (names, rows of values): one per -p NAME with several values, and one for all the -z
    NAMEs together, position by position. A -p NAME with one value goes into `shared` instead."""
    seen: set[str] = set()

    def values(name: str, text: str, linked_: bool) -> list:
        if name in seen:
            raise ConfigError(f"sweep: parameter {name!r} is given twice")
        seen.add(name)
        _check_name(name, allowed, "-z" if linked_ else "-p")
        vals = split_values(name, text)
        if FIELDS[name].metadata["group"] == "report" and (len(vals) > 1 or linked_):
            raise ConfigError(f"sweep: {name!r} is a report parameter: every run is evaluated with one value of it "
                              f"(cost_grid_bps reports the net Sharpe at several costs); sweep training parameters")
        return vals

    axes = []
    for name, text in grid:
        vals = values(name, text, False)
        if len(vals) == 1:
            shared[name] = vals[0]
        else:
            axes.append(((name,), [(v,) for v in vals]))
    if linked:
        cols = {name: values(name, text, True) for name, text in linked}
        if len({len(v) for v in cols.values()}) > 1:
            raise ConfigError("sweep: the -z parameters go together position by position and need as many values "
                              "each; got " + ", ".join(f"{k} {len(v)}" for k, v in cols.items()))
        axes.append((tuple(cols), list(zip(*cols.values()))))
    return axes


def make_plan(files: list[str] | None, grid: list[tuple[str, str]], linked: list[tuple[str, str]] | None = None,
              sweep_id: str = "") -> Plan:
    """Read and check the whole sweep: every name, and the Config and model settings of every combination, before
    anything runs.
    A parameter file's settings of the other notebooks (a profile such as params/quick.yaml sets 02's
    `profile_seconds`) are left out with a note; given with -p or -z they are refused."""
    allowed = set(declared_parameters(NOTEBOOK))
    origins: dict[str, str] = {}
    shared = read_params(files, origins=origins)
    other = [n for n in shared if n in FIELDS and n not in MANAGED and n not in allowed
             and FIELDS[n].metadata["group"] != "report"]
    if other:
        named = ", ".join(f"{n} ({origins[n]})" for n in other)
        print(f"sweep: left out, as they do not shape a training run: {named}", flush=True)
    shared = {k: v for k, v in shared.items() if k not in other}
    for name in shared:
        _check_name(name, allowed, origins[name])
    axes = grid_axes(grid, linked or [], shared, allowed)
    origins.update({**{n: "-p" for n, _ in grid}, **{n: "-z" for n, _ in linked or []}})
    axis_names = [n for names, _ in axes for n in names]
    for name in axis_names:  # a file's value of a swept parameter is replaced in every run
        shared.pop(name, None)
    combos = [dict(zip(axis_names, (v for row in rows for v in row)))
              for rows in itertools.product(*(rows for _, rows in axes))]
    sweep_id = sweep_id or default_id(shared, [("+".join(n), r) for n, r in axes])
    folder = runs.run_path(sweep_id, "sweep --name")  # (a name of the user's, before any run's settings)
    run_names = [run_name(c) for c in combos]
    configs = []
    for run, values in zip(run_names, combos):
        given = {**shared, **values, "run_id": f"{sweep_id}/{run}"}
        if "data_path" in given:  # relative to where the sweep runs, not to notebooks/ where the kernels run
            given["data_path"] = existing_data_path(str(given["data_path"]))
        try:
            configs.append(Config.from_dict(given, source=origins))
        except ConfigError as exc:
            raise ConfigError(f"sweep run {run}: {exc}") from None
        try:  # what the model settings alone refuse (dense with an lstm, ...): now, not after the runs before it
            check_model(configs[-1])
        except ValueError as exc:
            raise ConfigError(f"sweep run {run}: {exc}") from None
    for device in {c.device for c in configs}:
        pick_device(device, verbose=False)  # CUDA asked for but absent: say so now
    return Plan(sweep_id, folder, shared, axis_names, run_names, combos, configs)


# -- running ------------------------------------------------------------------------------------------------
def _differences(done: dict, want: dict) -> list[str]:
    """The training parameters (03's) in which a finished run's config differs from the one wanted; how a run
    shows its progress or whether it wrote TensorBoard events changes nothing it trained."""
    trained = set(declared_parameters(NOTEBOOK)) - {"resume", "progress", "tensorboard"}
    done = as_written(done)  # a run from before a setting: what it did
    return [f"{k}: {done.get(k)!r} -> {v!r}" for k, v in want.items() if k in trained and done.get(k) != v]


def run_one(plan: Plan, i: int, progress: bool) -> str:
    """Run i of the plan through notebook 03 into its folder: "ran", "done earlier" (finished with these
    parameters), or "failed: ..." (the notebook's error; the sweep goes on)."""
    name, cfg = plan.names[i], plan.configs[i]
    folder = plan.folder / name
    head = f"[sweep] {i + 1}/{len(plan.names)} {name}"
    done = runs.read_summary(folder)
    if done is not None:
        diff = _differences(done.get("config") or {}, cfg.to_dict())
        if not diff:
            print(f"{head}: finished earlier with these parameters, skipped", flush=True)
            return "done earlier"
        raise ConfigError(f"sweep {plan.sweep_id!r}: run {name!r} finished with other parameters ({'; '.join(diff)})"
                          f": name this sweep differently with --name")
    resume = runs.has_checkpoints(folder)
    declared = set(declared_parameters(NOTEBOOK))
    params = {k: v for k, v in {**plan.shared, **plan.values[i]}.items() if k in declared}
    params.update(run_id=cfg.run_id, resume=resume)
    if "data_path" in params:
        params["data_path"] = cfg.data_path  # as make_plan resolved it
    print(f"{head}: {'resuming' if resume else 'running'} {NOTEBOOK}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        execute_notebooks({NOTEBOOK: notebooks_dir() / f"{NOTEBOOK}.ipynb"}, {NOTEBOOK: params}, folder, progress,
                          label="[sweep]", again=("the same sweep command again (finished runs are skipped, this one "
                                                  "resumes)", "the same sweep command again"))
    except NotebookFailed as exc:
        print(f"{head}: failed: {exc}", flush=True)
        return f"failed: {exc}"
    except KeyboardInterrupt as exc:
        exc.resume_said = True  # execute_notebooks said how to go on: the same sweep command again
        raise
    return "ran"


def run_sweep(plan: Plan, progress: bool = True) -> pd.DataFrame:
    """Every run of the plan in turn (the sweep folder locked meanwhile), then the comparison table and its
    figure. Raises NotebookFailed, after writing the table, when a run failed."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    with runs.holding_run(plan.folder):
        atomic_write_bytes(json.dumps({"sweep_id": plan.sweep_id, "shared": plan.shared, "axes": plan.axes,
                                       "runs": dict(zip(plan.names, plan.values))}, indent=1, default=str).encode(),
                           plan.folder / "sweep.json")
        status: list[str] = []
        try:
            for i in range(len(plan.names)):
                status.append(run_one(plan, i, progress))
            table = sweep_table(plan, status)
            write_outputs(plan, table)
        except KeyboardInterrupt as exc:  # a stop between runs, or while the table was written: how to go on
            if not getattr(exc, "resume_said", False):
                print(f"[sweep] stopped after {len(status)} of {len(plan.names)} runs; to go on: the same sweep "
                      f"command again (finished runs are skipped)", flush=True)
                exc.resume_said = True
            raise
    failed = [n for n, s in zip(plan.names, status) if s.startswith("failed")]
    if failed:
        raise NotebookFailed(f"sweep {plan.sweep_id!r}: {len(failed)} of {len(plan.names)} runs failed "
                             f"({', '.join(failed)}); the table of the others: {plan.folder / 'sweep.html'}")
    return table


def run_figures(folder: Path, cfg: Config, fs) -> dict:
    """One finished run's numbers for the table, computed as its report computes them (report.headline_numbers
    with the sweep's report parameters and the run's FeatureSet `fs`, `load_featureset`'s), the rest from its
    summary.json; `ic_significant` is the report's verdict on the headline IC, its |t| deflated over the sweep's
    runs (the best of several runs by eye is no single test)."""
    inputs = load_inputs(folder, ReportSettings.of(cfg), fs=fs, headline_only=True)
    block = report.headline_numbers(inputs)
    block["net_sharpe_ci_low"], block["net_sharpe_ci_high"] = block["net_sharpe_ci"]
    return {"headline_ic": block["headline_ic"], "ic_significant": "yes" if block["ic_significant"] else "no",
            **{k: block.get(k, inputs.summary.get(k)) for k in NUMBERS}}


def sweep_table(plan: Plan, status: list[str]) -> pd.DataFrame:
    """One row per run: its varying values, run folder, status, and NUMBERS (NaN for a run without results)."""
    rows, caches = [], {}  # each feature cache loaded and verified once: the runs of a sweep often share one
    for name, values, cfg, st in zip(plan.names, plan.values, plan.configs, status):
        row = {**values, "run": name, "status": st.split(":")[0]}
        summary = runs.read_summary(plan.folder / name)
        if summary is not None:
            key = summary.get("cache_key") or summary.get("cache_dir") or ""
            if key not in caches:
                caches[key] = load_featureset(plan.folder / name)
            row.update(run_figures(plan.folder / name, cfg, caches[key]))
            row["busy"] = busy_flag(summary)
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=[*plan.axes, "run", "status", "busy", "headline_ic", "ic_significant",
                                                *NUMBERS])
    for c in NUMBERS:
        table[c] = pd.to_numeric(table[c], errors="coerce").astype(float)
    return table


def busy_flag(summary: dict) -> str:
    """'busy (1.8 cores)' where the run was timed while other processes kept the machine busy (its samples/s is
    not comparable, as 02 and the report say), 'no' where it was not, '' where the run does not say."""
    if summary.get("busy_note"):
        return f"busy ({summary.get('other_cores', 0):.1f} cores)"
    return "no" if "busy_note" in summary else ""


# -- the table for reading ----------------------------------------------------------------------------------
FORMATS = {"samples_per_s": "{:,.0f}", "it_per_s": "{:,.1f}", "global_batch": "{:,.0f}",
           "data_wait_share": tables.share, "peak_mem_gb": "{:.2f}", "gpu_util": "{:.0f}", "mfu": "{:.1%}",
           "train_time_s": "{:,.1f}",
           "net_sharpe": "{:.2f}", "gross_sharpe": "{:.2f}", "break_even_bps": "{:.1f}", "ic_t_stat": "{:.2f}",
           "ic_t_deflated": "{:.3f}"}
HEADERS = {"samples_per_s": "samples/s", "it_per_s": "it/s", "global_batch": "global batch",
           "data_wait_share": "data wait", "peak_mem_gb": "peak memory (GB)", "gpu_util": "GPU busy (%)",
           "mfu": "MFU", "train_time_s": "train time (s)", "headline_ic": "report leads with",
           "cross_sectional_ic": "cross-sectional IC",
           "cross_sectional_rank_ic": "cross-sectional rank IC", "daily_ic": "per-day IC",
           "pooled_ic": "pooled IC", "ic_t_stat": "lead IC's t",
           "ic_significant": "significant over runs", "net_sharpe": "net Sharpe (95% interval)",
           "gross_sharpe": "gross Sharpe",
           "break_even_bps": "break-even (bps)"}


# what sweep.md and sweep.html show of the table (sweep.csv has every column): it fits a 1400 px page
SHOWN = ["samples_per_s", "global_batch", "data_wait_share", "peak_mem_gb", "gpu_util", "mfu", "cross_sectional_ic",
         "daily_ic", "pooled_ic", "ic_t_stat", "ic_significant", "net_sharpe", "break_even_bps"]


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The table for reading: the varying values, the status and SHOWN, integers as integers, shares as
    percentages, ICs to 4 places, the net Sharpe with its 95% interval, '-' where unknown."""
    # (a table from before a column was added: '-' for it)
    shown = table.reindex(columns=[c for c in table.columns if c not in NUMBERS and c not in SHOWN and c != "run"]
                          + SHOWN)
    out = pd.DataFrame(index=shown.index)
    for c in shown.columns:
        fmt = FORMATS.get(c, "{:.4f}" if c in NUMBERS else None)
        col = shown[c]
        if fmt is None:
            out[c] = col.map(lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
        else:
            text = fmt if callable(fmt) else fmt.format
            out[c] = col.map(lambda v, f=text: "-" if pd.isna(v) else f(v))
    if "headline_ic" in out:  # which of the ICs beside it leads each run's report (its book's)
        out["headline_ic"] = out["headline_ic"].str.replace("_", "-")
    ci = [tables.span(lo, hi) for lo, hi in zip(table["net_sharpe_ci_low"], table["net_sharpe_ci_high"])]
    out["net_sharpe"] = [s if c == tables.NA else f"{s} ({c})" for s, c in zip(out["net_sharpe"], ci)]
    return out.rename(columns=HEADERS)


def markdown_table(table: pd.DataFrame) -> str:
    text = readable(table)  # (the values a sweep's folder holds, and 04 shows it as markdown: escaped)
    lines = ["| " + " | ".join(map(tables.markdown_text, text.columns)) + " |", "|" + "---|" * len(text.columns)]
    lines += ["| " + " | ".join(map(tables.markdown_text, row)) + " |" for row in text.itertuples(index=False)]
    return "\n".join(lines)


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body {{font-family: sans-serif; max-width: 1360px; margin: 1em auto; padding: 0 1em; color: #222}}
.scroll {{overflow-x: auto}} table {{border-collapse: collapse; font-size: 13px}}
th, td {{border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap}}
th {{background: #f4f4f4}} img {{max-width: 100%}} code {{background: #f4f4f4; padding: 0 3px}}
</style></head><body><h1>{title}</h1><p>{intro}</p><div class="scroll">{table}</div><p>{notes}</p>
<img src="data:image/png;base64,{png}" alt="the sweep's figure"></body></html>
"""


def write_outputs(plan: Plan, table: pd.DataFrame) -> dict[str, Path]:
    """sweep.csv (the numbers), sweep.md and sweep.html (for reading), sweep.png (the figure)."""
    from tradelib.report import plots

    folder = plan.folder
    paths = {"csv": folder / "sweep.csv", "md": folder / "sweep.md", "html": folder / "sweep.html",
             "png": folder / "sweep.png"}
    atomic_write_bytes(table.to_csv(index=False).encode(), paths["csv"])
    fig = plots.plot_sweep(table, paths["png"])
    import matplotlib.pyplot as plt

    plt.close(fig)
    shared = ", ".join(f"{k}={v}" for k, v in plan.shared.items()) or "the defaults"
    intro = (f"{len(plan.names)} runs of notebook {NOTEBOOK}, each a run folder under {html.escape(str(folder))} "
             f"(report one with <code>tradelib report {html.escape(plan.sweep_id)}/RUN</code>, or 04_report with "
             f"that run_id). Varying: {html.escape(', '.join(plan.axes) or 'nothing')}. Shared: "
             f"{html.escape(shared)}.")
    notes = ("samples/s, it/s and the data-wait share are medians over each run's log intervals; memory is the "
             "peak of the training device; the ICs are on the test split (docs/metrics.md); net Sharpe is the "
             "report's long/short book after costs.")
    if len(plan.names) > 1:
        n = len(plan.names)
        notes += (f" Picking the best of {n} runs by eye is not one test: the best of several runs on noise reaches "
                  f"|t| >= 2 far more often than one run does. 'significant over runs' is each run's report verdict "
                  f"on the IC it leads with: |t| >= 2 and its |t| deflated over the {n} runs above "
                  f"{SIGNIFICANT:g} (about |t| > 3.0 at 4 runs; docs/metrics.md); each net Sharpe interval is its "
                  f"run's alone.")
    if table["busy"].astype(str).str.startswith("busy").any():
        notes += (" Runs marked busy were timed while other processes kept more than max_other_load of the cores "
                  "busy: their samples/s are not comparable; rerun them on an idle machine.")
    atomic_write_bytes(f"# Sweep {plan.sweep_id}\n\n{intro}\n\n{markdown_table(table)}\n\n{notes}\n".encode(),
                       paths["md"])
    body = readable(table).to_html(index=False, escape=True, border=0)
    png = base64.b64encode(paths["png"].read_bytes()).decode()
    atomic_write_bytes(PAGE.format(title=f"Sweep {html.escape(plan.sweep_id)}", intro=intro, table=body,
                                   notes=notes, png=png).encode(), paths["html"])
    return paths


def read_sweep(folder: Path) -> tuple[pd.DataFrame, Path] | None:
    """A sweep folder's table and figure (04 shows them for a run inside a sweep); None when not a sweep."""
    folder = Path(folder)
    if not (folder / "sweep.csv").exists():
        return None
    table = pd.read_csv(folder / "sweep.csv")  # a sweep written before a figure was added has NaN for it
    return table.reindex(columns=[*table.columns, *(c for c in NUMBERS if c not in table)]), folder / "sweep.png"


# -- the command --------------------------------------------------------------------------------------------
def add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--parameters-file", dest="files", action="append", default=[], metavar="FILE",
                   help="YAML parameter file shared by every run (repeatable; later files win); its settings of "
                        "other notebooks (02's profile_seconds, ...) are left out with a note")
    p.add_argument("-p", "--parameter", dest="params", action="append", nargs=2, default=[],
                   metavar=("NAME", "VALUES"), help="an axis of the grid: VALUES separated by , (numbers, true/false, "
                   "choices) or ; (any parameter); one value: the same in every run")
    p.add_argument("-z", "--zip", dest="linked", action="append", nargs=2, default=[], metavar=("NAME", "VALUES"),
                   help="parameters taken together position by position (equally many VALUES each): one axis")
    p.add_argument("--name", default="", help="the sweep id, its folder under outputs/ (default: made from the "
                                              "parameters, so the same command finds its finished runs)")
    p.add_argument("--dry-run", action="store_true", help="check every combination and list the runs; run none")
    said = ["VALUES: `,` separates the values of numbers, true/false, parameters with fixed choices and model; the "
            "other text parameters (loaders, batch_sizes, cost_grid_bps, data_path, ...) keep their commas and split "
            "on `;` only; `;` works for every parameter. The sweep sets run_id and resume of each run itself.",
            "e.g. the seed's before/after table: tradelib sweep -f params/full.yaml -z batch_size 128,512,1024 "
            "-z grad_accum_steps 1,2,1 -p loader dataloader,device -p max_steps 300"]
    p.epilog = ("\n".join(textwrap.fill(t, 100) for t in said) + "\n\n"
                + parameters_help(("data", "features", "model", "training", "system", "report"), exclude=MANAGED))
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def sweep_command(args: argparse.Namespace) -> int:
    plan = make_plan(args.files, [tuple(p) for p in args.params], [tuple(p) for p in args.linked], args.name)
    print(f"sweep {plan.sweep_id}: {len(plan.names)} runs into {plan.folder}", flush=True)
    for name in plan.names:
        print(f"  {name}")
    if args.dry_run:
        return 0
    table = run_sweep(plan)
    print(f"\nsweep {plan.sweep_id}:\n{readable(table).to_string(index=False)}\n")  # (sweep.md: the escaped one)
    for kind in ("csv", "md", "html", "png"):
        print(f"  sweep.{kind:5s} {plan.folder / f'sweep.{kind}'}")
    return 0
