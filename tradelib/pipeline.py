"""Run the numbered notebooks with papermill into one run folder, then render the report to HTML."""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import math
import shlex
import time
from pathlib import Path

from tradelib.config import (
    Config,
    declared_parameters,
    declaring_notebooks,
    nondefault_params,
    read_params,
    resume_command,
)
from tradelib.data.load import existing_data_path
from tradelib.hardware import pick_device
from tradelib.paths import atomic_write_bytes, child_environment, notebooks_dir
from tradelib.progress import PROGRESS_FILE, Follower
from tradelib.runs import (
    check_predictions,
    has_checkpoints,
    holding_run,
    new_run_id,
    read_summary,
    report_run,
    resolve_run,
    run_dir,
    run_state,
)
from tradelib.train.stops import signals_interrupt

NOTEBOOKS = ("01_data_cleaning", "02_profiling", "03_train", "04_report")
TRAINS = "03_train"  # the notebook whose training progress the pipeline shows in the terminal
# papermill's kernels: their own log at ERROR (ipykernel 7 warns on every start that its local TCP sockets are
# not encrypted; the kernel runs on this machine for this process only)
# jupyter_client interrupts every kernel as it shuts it down; ipykernel logs that as "ERROR | KeyboardInterrupt
# caught in kernel" when it lands between cells. A notebook's own errors come back through papermill either way.
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]
KERNEL_STOP_S = 120.0  # how long a stopped notebook's kernel has to end its step and write its checkpoint


@functools.cache
def patient_kernel_manager() -> type:
    """papermill's kernel manager, waiting KERNEL_STOP_S (not jupyter_client's 5 s) for a kernel it has
    interrupted to end before it signals it again and kills it: a training kernel stops at its next step and
    writes a checkpoint first, which can take longer than 5 s (a large model, a validation under way)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Float

    class PatientKernelManager(AsyncKernelManager):
        shutdown_wait_time = Float(KERNEL_STOP_S, config=True)

    return PatientKernelManager


class NotebookFailed(RuntimeError):
    """A notebook raised: the pipeline stops there, naming the cell and the saved notebook."""


def split_params(params: dict, names: tuple[str, ...], origins: dict[str, str]) -> tuple[dict[str, dict], Config]:
    """Each notebook of `names` gets the parameters its `parameters` cell declares (papermill's own reading); a
    name none declares is an error, and so is a value the Config refuses (named with its `origins`, the file or
    -p it came from). Returns them and the Config."""
    import papermill as pm

    notebooks = {name: pm.inspect_notebook(str(notebooks_dir() / f"{name}.ipynb")) for name in names}
    declared = set().union(*(set(p) for p in notebooks.values()))
    unknown = sorted(set(params) - declared)
    if unknown:
        hints = {name: hint[0] for name in unknown if (hint := difflib.get_close_matches(name, sorted(declared), n=1))}
        said = (repr(next(iter(hints.values()))) if len(hints) == 1 and len(unknown) == 1
                else ", ".join(f"{k!r} -> {v!r}" for k, v in hints.items()))
        named = ", ".join(f"{n} ({origins.get(n, 'parameters')})" for n in unknown)
        elsewhere = {n: declaring_notebooks(n) for n in unknown} if len(notebooks) == 1 else {}
        if any(elsewhere.values()):  # `report -p hidden 8`: 03's, not the report's
            whose = "; ".join(f"{n} ({origins.get(n, 'parameters')}) is {' and '.join(nbs)}'s"
                              for n, nbs in elsewhere.items() if nbs)
            typos = ", ".join(n for n, nbs in elsewhere.items() if not nbs)
            raise ValueError(f"not a report parameter: {whose}: it changes only with a new run (tradelib train or "
                             f"pipeline)" + (f"; unknown parameter(s) {typos}: no notebook declares them" if typos
                                              else "") + " (see `tradelib report --help`)")
        raise ValueError(f"unknown parameter(s) {named}: no notebook declares them"
                         + (f" (did you mean {said}?)" if hints else "")
                         + f" (see `tradelib {'pipeline' if len(notebooks) > 1 else 'report'} --help`)")
    cfg = Config.from_dict(params, source=origins)
    return {name: {k: v for k, v in params.items() if k in decl} for name, decl in notebooks.items()}, cfg


def select_notebooks(skip: str = "", only: str = "") -> tuple[str, ...]:
    """The notebooks a `--skip` or `--only` list leaves, in order: comma-separated numbers (02, 2) or names
    (02_profiling, profiling)."""
    if skip and only:
        raise ValueError("pipeline: give --skip or --only, not both")

    def pick(text: str, option: str) -> set[str]:
        chosen = set()
        for word in (w.strip() for w in text.split(",") if w.strip()):
            found = [n for n in NOTEBOOKS if word in (n, n[:2], n[3:]) or (word.isdigit() and int(word) == int(n[:2]))]
            if not found:
                raise ValueError(f"pipeline: {option} {word!r} names no notebook; the notebooks: "
                                 f"{', '.join(NOTEBOOKS)} (a number or a name)")
            chosen.update(found)
        return chosen

    if only:
        return tuple(n for n in NOTEBOOKS if n in pick(only, "--only"))
    skipped = pick(skip, "--skip") if skip else set()
    return tuple(n for n in NOTEBOOKS if n not in skipped)


def headline(report_json: Path) -> list[str]:
    """The result in a few lines, from report.json's summary: the headline IC at the lag the book trades with its
    t-statistic and without the periods that carried it most, the net Sharpe with its 95% interval, and beside
    them the report's flags (a figure no market makes) and warnings. A figure the summary lacks, or holds as
    NaN, is left out."""
    try:
        s = json.loads(Path(report_json).read_text()).get("summary") or {}
    except (OSError, ValueError, AttributeError):
        return []
    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    lines = []
    family, lag = s.get("headline_ic"), s.get("ic_lag")
    ic, t = s.get(f"{family}_ic"), s.get("ic_t_stat")
    if num(ic):
        at = f", at the traded lag of {lag} bar{'s' if lag != 1 else ''}" if lag is not None else ""
        rest = s.get("ic_without_best") or {}
        lines.append(f"headline IC ({str(family).replace('_', '-')}{at}): {ic:.4f}"
                     + (f", t {t:.2f} [{s['ic_t_method']}]" if num(t) and s.get("ic_t_method") else "")
                     + (f"; {rest['ic']:.4f} without its {rest['periods']} best and {rest['periods']} worst of "
                          f"{rest['of']} periods"
                        if num(rest.get("ic")) else ""))
    sharpe, ci = s.get("net_sharpe"), s.get("net_sharpe_ci")
    if num(sharpe):
        cost = f" after {s['cost_bps']:g} bps costs" if num(s.get("cost_bps")) else ""
        interval = f", 95% interval {ci[0]:.2f} to {ci[1]:.2f}" if isinstance(ci, list) and all(map(num, ci)) else ""
        lines.append(f"net Sharpe{cost}: {sharpe:.2f}{interval}")
    flags = s.get("flags") or {}
    lines += [f"flagged ({name.replace('_', ' ')}): {why}" for name, why in flags.items()]
    lines += [f"warning: {w}" for w in s.get("warnings") or []]
    return lines


def go_on(name: str, out: Path, resume: str, rerun: str, report: str = "") -> str:
    """How to go on after notebook `name` of the run in `out` was stopped: its report alone (`report`: the command,
    where it is not the same command again), the training resumed from its checkpoint, or the command run again."""
    if name == "04_report":
        return f"the report alone: {report or f'tradelib report {out}, with the same -f / -p'}"
    if name == TRAINS and resume and has_checkpoints(out):
        return f"its training {run_state(out)}; resume: {resume}"
    again = f"start again: {rerun}" if rerun else "start again with the same command"
    return f"no checkpoint yet; {again}" if name == TRAINS else again


def resume_pipeline(cfg: Config, run_id: str, notebooks: tuple[str, ...]) -> str:
    """The command that resumes the pipeline's stopped training: --only the training and the notebooks after it
    that this pipeline runs (never with --skip, which the CLI refuses beside --only), with the run's settings that
    differ from the defaults among those the notebooks declare."""
    rest = tuple(n for n in notebooks if n >= TRAINS) or (TRAINS,)
    names = [name for n in rest for name in declared_parameters(n)]
    return resume_command(cfg, run_id, f"pipeline --only {','.join(n[:2] for n in rest)}", names)


def report_command(cfg: Config, out: Path) -> str:
    """The command that writes the report of the run in `out` alone, with the pipeline's report settings that differ
    from the defaults: not the pipeline's -f / -p, whose training settings `tradelib report` refuses."""
    words = ["report", str(out), *nondefault_params(cfg, declared_parameters("04_report"))]
    return "python -m tradelib " + " ".join(shlex.quote(w) for w in words)


def render_html(notebook: Path, html: Path) -> Path:
    """The executed notebook as HTML without code cells: what a researcher reads."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    atomic_write_bytes(body.encode("utf-8"), html)
    return html


def render_report(out: Path, label: str, report: str = "") -> Path:
    """report.html from the executed 04_report in `out`. A stop while it renders (seconds, after 04 said it was
    done) leaves 04_report.ipynb and report.json and no report.html: said, with the command that writes it
    (`report`, as `go_on` takes it)."""
    try:
        return render_html(out / "04_report.ipynb", out / "report.html")
    except KeyboardInterrupt:
        print(f"{label} stopped while rendering report.html: 04_report.ipynb and report.json are written, "
              f"report.html is not ({go_on('04_report', out, '', '', report)})", flush=True)
        raise


def run_pipeline(files: list[str] | None = None, overrides: list[tuple[str, str]] | None = None,
                 notebooks: tuple[str, ...] = NOTEBOOKS, progress: bool = True) -> dict[str, Path]:
    """Execute `notebooks` (all four, or those select_notebooks left) in order into outputs/<run_id>/ and render
    the report; returns the paths.

    Every parameter is checked before the first notebook starts (its name, its value, the device, that the data
    path exists; a relative one is made absolute, `paths.resolve_data_path`), so a bad one ends with one line,
    not a failed notebook; one that only a skipped notebook takes is accepted. The run folder is locked for the
    pipeline's life; its notebooks' kernels inherit the lock."""
    origins: dict[str, str] = {}
    params = read_params(files, overrides, origins)
    if "data_path" in params:  # relative to where the command runs, not to notebooks/ where the kernels run
        params["data_path"] = existing_data_path(str(params["data_path"]))
    run_id = str(params.get("run_id") or new_run_id())
    params["run_id"] = run_id
    per_nb, cfg = split_params(params, NOTEBOOKS, origins)
    src = {name: notebooks_dir() / f"{name}.ipynb" for name in notebooks}
    pick_device(cfg.device, verbose=False)  # CUDA asked for but absent: say so now
    out = run_dir(run_id)
    with holding_run(out):
        again = (resume_pipeline(cfg, run_id, notebooks), f"the same command with -p run_id {run_id}",
                 report_command(cfg, out))
        return execute_notebooks(src, per_nb, out, progress, again=again)


def run_report(run: str = "", files: list[str] | None = None, overrides: list[tuple[str, str]] | None = None,
               progress: bool = True) -> dict[str, Path]:
    """`tradelib report`: 04_report for one finished run (an id or a folder; the latest when empty), executed
    with papermill into the run's folder and rendered to report.html beside report.json. The report's parameters
    (-f / -p, e.g. compare_with, cost_bps) are checked first, and the folder is held while it is written."""
    origins: dict[str, str] = {}
    params = read_params(files, overrides, origins)
    src = {"04_report": notebooks_dir() / "04_report.ipynb"}
    per_nb, _ = split_params(params, ("04_report",), origins)
    folder = report_run(run or params.get("run_id") or None)  # none named: the latest finished, newer ones named
    found = {"summary.json": read_summary(folder) is not None,
             "predictions.parquet": (folder / "predictions.parquet").exists()}
    missing = [name for name, there in found.items() if not there]
    if missing:  # (a walk-forward stopped while writing its results has its predictions and no summary)
        raise FileNotFoundError(f"run {folder.name!r} has no {' and no '.join(missing)} ({folder}): it has not "
                                f"finished ({run_state(folder)}); train it to the end first (or resume it)")
    check_predictions(folder)
    if per_nb["04_report"].get("compare_with"):  # resolved here, so that a bad one never reaches the notebook
        per_nb["04_report"]["compare_with"] = str(comparable_run(str(per_nb["04_report"]["compare_with"])))
    per_nb["04_report"]["run_id"] = str(folder)
    with holding_run(folder):
        return execute_notebooks(src, per_nb, folder, progress, label="[report]")


def comparable_run(name: str) -> Path:
    """The run `--compare-with` / compare_with names, resolved: an error naming it unless it exists and has
    finished (its summary.json: a run with test predictions is compared on them, one without on its summary)."""
    try:
        other = resolve_run(name)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"compare_with: {exc}; name a run id under outputs/ or a run folder") from None
    if read_summary(other) is None:
        raise FileNotFoundError(f"compare_with: run {other.name!r} has no summary.json ({other}): it has not "
                                f"finished; train it to the end first (or resume it), or compare with another run")
    return other


def execute_notebooks(src: dict[str, Path], per_nb: dict[str, dict], out: Path, progress: bool,
                      label: str = "[pipeline]", again: tuple[str, str, str] = ("", "", "")) -> dict[str, Path]:
    """Each notebook of `src` executed in order by papermill into `out` with its parameters; 03's training
    progress followed in the terminal. 04 is rendered to report.html. Ctrl-C, SIGTERM or SIGHUP stop the
    notebook's kernel as Ctrl-C does (03's training: at a step, with a checkpoint; the kernel is given
    KERNEL_STOP_S for it), then say how to go on (`again`: the command that resumes a stopped training, the one
    that runs the rest again, and the one that writes the report alone)."""
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    notebooks = tuple(src)
    if TRAINS in per_nb and "progress" not in per_nb[TRAINS]:  # a few lines in the saved notebook; the bar here
        per_nb = {**per_nb, TRAINS: {**per_nb[TRAINS], "progress": "lines"}}
    paths: dict[str, Path] = {}
    for i, name in enumerate(notebooks, 1):
        t0 = time.perf_counter()
        print(f"{label} {i}/{len(notebooks)} {name} -> {out / (name + '.ipynb')}", flush=True)
        # 03_train: the training's own bar (step, epoch, loss, samples/s, ETA) instead of papermill's cell count
        follow = Follower(out / PROGRESS_FILE, f"{label} {name}") if progress and name == TRAINS else None
        try:
            saves = " and writes a checkpoint" if name == TRAINS else ""
            waiting = f"stopping {name}: its kernel ends its step{saves}, waited for up to {KERNEL_STOP_S:.0f} s"
            with follow or contextlib.nullcontext(), child_environment(), signals_interrupt(waiting):
                pm.execute_notebook(str(src[name]), str(out / f"{name}.ipynb"), parameters=per_nb[name],
                                    cwd=str(notebooks_dir()), progress_bar=progress and follow is None,
                                    log_output=False, extra_arguments=KERNEL_ARGS,
                                    kernel_manager_class=patient_kernel_manager())
        except pm.PapermillExecutionError as exc:
            raise NotebookFailed(f"{name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
                                 f"(the executed notebook with the traceback: {out / (name + '.ipynb')})") from None
        except KeyboardInterrupt:
            print(f"{label} {name} stopped ({go_on(name, out, *again)})", flush=True)
            raise
        except DeadKernelError as exc:  # the kernel died (killed, out of memory)
            training = f"; its training {run_state(out)}" if name == TRAINS else ""
            raise NotebookFailed(f"{name}: the notebook's kernel died ({exc}){training} (the notebook as far as it "
                                 f"ran: {out / (name + '.ipynb')})") from None
        print(f"{label} {name} done in {time.perf_counter() - t0:.0f}s", flush=True)
        paths[name] = out / f"{name}.ipynb"
    if "04_report" in notebooks:
        paths["report.html"] = render_report(out, label, again[2])
        paths["report.json"] = out / "report.json"
    paths["run_dir"] = out
    return paths
