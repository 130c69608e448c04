"""End to end: papermill runs every notebook on tiny parameters, from the repo root and from notebooks/."""

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from tradelib.config import NOTEBOOK_PARAMS, Config, parameter_lines
from tradelib.paths import repo_root

ROOT = repo_root()
NB = ROOT / "notebooks"
TINY_PARAMS = str(ROOT / "params" / "tiny.yaml")


def declared(name: str) -> dict:
    return pm.inspect_notebook(str(NB / f"{name}.ipynb"))


@pytest.mark.parametrize("path", sorted(NB.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_is_stripped_tagged_and_typed(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code")
    params = pm.inspect_notebook(str(path))
    lines = [ln for ln in tagged[0].source.splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(params) == len(lines), "papermill could not parse every parameter line"
    for name, p in params.items():
        assert p["inferred_type_name"] not in ("None", ""), f"{name} has no type"
        assert p["help"], f"{name} has no comment"


@pytest.mark.parametrize("name", list(NOTEBOOK_PARAMS))
def test_parameter_cells_are_configs_fields(name):
    """Each notebook declares exactly its groups' Config fields, with Config's defaults and help: one truth."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    params = declared(name)
    assert list(params) == [line.split(":")[0] for line in parameter_lines(*NOTEBOOK_PARAMS[name])]
    for pname, p in params.items():
        assert eval(p["default"]) == fields[pname].default, pname  # noqa: S307 - literals from our own notebook
        assert p["help"] == fields[pname].metadata["help"], pname
    if name == "03_train":  # every knob of a training run
        train = {"data", "features", "model", "training", "system"}
        assert {n for n, f in fields.items() if f.metadata["group"] in train} - {"extra"} == set(params)


@pytest.mark.slow
def test_train_notebook_from_repo_root_with_papermill_cli_then_report_from_notebooks_dir(tmp_path, outputs,
                                                                                         monkeypatch):
    """`papermill notebooks/03_train.ipynb out.ipynb -p batch_size ...` from the repo root (03 builds the feature
    cache it needs by itself); then `cd notebooks && papermill 04_report.ipynb ...` with no run named reports on
    that run, the latest."""
    out = tmp_path / "out.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", "notebooks/03_train.ipynb", str(out), "-f", TINY_PARAMS,
                    "-p", "batch_size", "32", "-p", "run_id", "from-root", "--no-progress-bar"],
                   cwd=ROOT, check=True, capture_output=True)
    summary = json.loads((outputs / "from-root" / "summary.json").read_text())
    assert summary["batch_size"] == 32
    # a kernel papermill runs is headless: progress as a few lines (the first and last naming the run folder),
    # never a widget that the saved notebook would keep half drawn
    train_cell = next(c for c in nbformat.read(out, as_version=4).cells if "train_or_walk(cfg)" in c.source)
    widgets = [o for o in train_cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    lines = [line for o in train_cell.outputs for line in o.get("text", "").splitlines()
             if line.startswith("train ")]
    assert not widgets and 2 <= len(lines) <= 5
    assert lines[0].endswith(str(outputs / "from-root")) and lines[-1].endswith(str(outputs / "from-root"))
    assert not [o for o in train_cell.outputs if o.get("name") == "stderr"], "no progress redraws, no warnings"
    # the settings cell says what differs from the defaults in a line, not Config's repr of its 90-odd fields
    config_cell = next(c for c in nbformat.read(out, as_version=4).cells if "cfg = notebook_config(" in c.source)
    said = [o for o in config_cell.outputs if o.get("output_type") != "stream" or len(o["text"]) > 400]
    assert not said and "-p batch_size 32" in "".join(o["text"] for o in config_cell.outputs)
    assert not (outputs / "from-root" / "report.json").exists()
    monkeypatch.chdir(NB)
    pm.execute_notebook(str(NB / "04_report.ipynb"), str(tmp_path / "04.ipynb"), cwd=str(NB), progress_bar=False)
    assert (outputs / "from-root" / "report.json").exists()


@pytest.mark.slow
def test_papermill_runs_a_notebook_with_a_profile_holding_other_notebooks_parameters(tmp_path, outputs):
    """`papermill notebooks/01_data_cleaning.ipynb out.ipynb -f params/tiny.yaml`: the profile's model and
    training parameters are 03's, which 01 ignores with one note (it used to refuse `hidden`)."""
    out = tmp_path / "out.ipynb"
    res = subprocess.run([sys.executable, "-m", "papermill", "notebooks/01_data_cleaning.ipynb", str(out), "-f",
                          TINY_PARAMS, "--no-progress-bar"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    first = next(c for c in nbformat.read(out, as_version=4).cells if "notebook_config(" in c.source)
    text = "".join(o.get("text", "") for o in first.outputs)
    assert ("01_data_cleaning ignores hidden, layers, batch_size, epochs, max_steps, warmup_steps, log_every: other "
            "notebooks'") in text, text
    said = {c.source.splitlines()[0]: "".join(o.get("text", "") for o in c.outputs) for c in
            nbformat.read(out, as_version=4).cells if c.cell_type == "code" and c.source}
    raw_rows = int(re.search(r"([\d,]+) raw rows", said["raw = dataset.load_raw(cfg)"])[1].replace(",", ""))
    rows = re.search(r"([\d,]+) rows in = ([\d,]+) kept \+ ([\d,]+) dropped", said["fs = dataset.prepare(cfg)"])
    assert rows, "01 says the rows in, kept and dropped, cache hit or not"
    rows_in, kept, dropped = (int(g.replace(",", "")) for g in rows.groups())
    features = int(re.search(r"([\d,]+) rows x", said["ft = explore.feature_table(fs)"])[1].replace(",", ""))
    assert rows_in == raw_rows and rows_in == kept + dropped and kept == features
    split_line = said["ft = explore.feature_table(fs)"]  # counts as words, not a dict's repr
    assert "{" not in split_line and re.search(r"rows per split: train [\d,]+, val [\d,]+, test [\d,]+;", split_line)


@pytest.mark.slow
def test_pipeline_runs_all_notebooks_and_renders_the_report(outputs):
    res = subprocess.run([sys.executable, "-m", "tradelib", "pipeline", "-f", TINY_PARAMS, "-p", "run_id", "pipe",
                          "-p", "doctor_seconds", "1"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    run = outputs / "pipe"
    for name in ("01_data_cleaning", "02_profiling", "03_train", "04_report"):
        assert (run / f"{name}.ipynb").exists(), name
    html = (run / "report.html").read_text()
    assert "cross-sectional IC (per timestamp)" in html and "Why this IC" in html and "Conventions" in html
    for figure in ("underwater", "costs", "ic"):
        assert (run / f"{figure}.png").exists(), figure
    assert "resolve_run" not in html and "from tradelib" not in html  # no code cells in the report
    report = json.loads((run / "report.json").read_text())
    assert {"summary", "conventions", "predictors", "backtest", "costs", "loader_sweep"} <= set(report)
    assert (run / "checkpoints" / "last.pt").exists() and (run / "predictions.parquet").exists()
    assert str(run / "report.html") in res.stdout
    # the terminal: each notebook, and 03's training progress from its progress.json; no profiler chatter
    assert "[pipeline] 3/4 03_train" in res.stdout and "[pipeline] 03_train: train lstm: 100% 8/8 steps" in res.stdout
    assert "USDT" not in res.stdout + res.stderr and "without encryption" not in res.stderr
    assert "KeyboardInterrupt" not in res.stdout + res.stderr  # (jupyter_client interrupts a kernel to stop it)
    assert_few_progress_outputs(run)
    assert_reads_at_1400px(html)
    marked = set()  # the rows of the cells the predictor table marks best (a CSS rule names them)
    for rule in re.finditer(r"\{\s*background-color: #c7e9c0", html):
        selectors = html[html.rfind("}", 0, rule.start()) + 1 : rule.start()]
        marked |= {int(row) for row in re.findall(r"_row(\d+)_col\d+", selectors)}
    rows = {p["predictor"]: i for i, p in enumerate(report["predictors"])}
    assert marked == {rows[name] for name in report["best_predictors"].values()}  # only what survives deflation
    assert not marked & {1, 4}  # never zero (row 1) nor the oracle (row 4)


class Tables(HTMLParser):
    """Every <table> of a page, as rows of cell texts (header cells included)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables, self.open, self.cell = [], [], None

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "table":
            self.open.append([])
        elif tag == "tr" and self.open:
            self.open[-1].append([])
        elif tag in ("td", "th") and self.open:
            self.cell = []

    def handle_endtag(self, tag) -> None:
        if tag in ("td", "th") and self.cell is not None and self.open and self.open[-1]:
            self.open[-1][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag == "table" and self.open:
            self.tables.append(self.open.pop())

    def handle_data(self, data) -> None:
        if self.cell is not None:
            self.cell.append(data)


def assert_reads_at_1400px(html: str) -> None:
    """The report's tables: none twice, none wider than a 1400 px page (an estimate from the longest text of each
    column, 7.8 px a character plus padding, for tables whose cells do not wrap), integers never printed as
    floats (256.000, 4431.0000, as pandas prints them), headers in words (never a snake_case key), memory in GB,
    no NaN."""
    parser = Tables()
    parser.feed(html)
    tables = [t for t in parser.tables if t]
    assert len(tables) >= 8
    flat = [tuple(map(tuple, t)) for t in tables]
    assert len(set(flat)) == len(flat), "a table appears twice"
    for t in tables:
        header, cells = t[0], [c for row in t[1:] for c in row]
        if len(header) > 2:
            width = sum(max(len(r[i]) for r in t if i < len(r)) * 7.8 + 16 for i in range(len(header)))
            assert width <= 1300, (round(width), header)
        assert not [h for h in header if re.fullmatch(r"[a-z]+(_[a-z0-9]+)+", h)], header
        assert not [c for c in cells if re.fullmatch(r"-?[1-9]\d*(,\d{3})*\.000+", c)], (header, cells)
        assert not [c for c in cells if c.lower() in ("nan", "none", "nat")], (header, cells)
        for h in header:
            if "memory" in h:
                assert all(c.endswith(" GB") or c == "–" for c in (r[header.index(h)] for r in t[1:])), h
    predictors = next(t for t in tables if t[0][0] == "predictor")
    assert [r[0] for r in predictors[1:]] == ["model", "zero", "momentum", "ridge", "oracle"]


def assert_few_progress_outputs(run: Path) -> None:
    """The executed 03 holds a handful of progress lines (the start, each quarter, the end), not a redraw per
    step; no notebook holds a stderr output (no progress debris, no IProgress warning, no profiler lines)."""
    nb = {name: nbformat.read(run / f"{name}.ipynb", as_version=4) for name in ("02_profiling", "03_train")}
    train_cell = next(c for c in nb["03_train"].cells if "train_or_walk(cfg)" in c.source)
    text = "".join(o.get("text", "") for o in train_cell.outputs if o.output_type == "stream")
    progress = [line for line in text.splitlines() if line.startswith("train lstm:")]
    # the lines, not the outputs: nbclient keeps each of the kernel's stdout flushes as an output of its own, and a
    # loaded machine flushes in more pieces (11 outputs once at load 8, where 10 was the bound)
    assert 2 <= len(progress) <= 5, train_cell.outputs
    for name, book in nb.items():
        stderr = [o.text for c in book.cells if c.cell_type == "code" for o in c.outputs if o.get("name") == "stderr"]
        assert not stderr, (name, stderr[:3])


@pytest.mark.slow
def test_pipeline_rejects_an_unknown_parameter():
    res = subprocess.run([sys.executable, "-m", "tradelib", "pipeline", "-p", "batchsize", "3"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "unknown parameter(s) batchsize" in res.stderr


@pytest.mark.slow
def test_a_failing_notebook_stops_the_pipeline_with_one_line(outputs):
    """02 fails (01, which it does not need, is left out: a kernel start fewer); 03 and 04 never start."""
    res = subprocess.run([sys.executable, "-m", "tradelib", "pipeline", "-f", TINY_PARAMS, "-p", "model", "tcn",
                          "-p", "layers", "9", "-p", "run_id", "bad", "--skip", "01"], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 02_profiling failed in cell") and "receptive field" in last
    assert str(outputs / "bad" / "02_profiling.ipynb") in last
    assert sorted(p.name for p in (outputs / "bad").glob("*.ipynb")) == ["02_profiling.ipynb"]


def test_a_second_checkout_sharing_the_environment_runs_its_own_code_in_the_kernels(tmp_path):
    """A copy of tradelib outside this checkout (a git worktree sharing one virtual environment, which has this
    checkout installed) executes a notebook: its kernel imports the copy, as the process that launched it did,
    not the installed one (which would also write into the installed checkout's outputs/)."""
    second = tmp_path / "worktree"
    shutil.copytree(ROOT / "tradelib", second / "tradelib", ignore=shutil.ignore_patterns("__pycache__"))
    (second / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    probe = "import pathlib, tradelib\npathlib.Path(where).write_text(tradelib.__file__)"
    nb.cells = [nbformat.v4.new_code_cell("where = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(probe)]
    nbformat.write(nb, second / "notebooks" / "probe.ipynb")
    script = ("import sys; from pathlib import Path; from tradelib.pipeline import execute_notebooks; "
              "execute_notebooks({'probe': Path('notebooks/probe.ipynb')}, {'probe': {'where': sys.argv[1]}}, "
              "Path(sys.argv[2]), progress=False)")
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "where.txt"), str(tmp_path)], cwd=second,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "where.txt").read_text() == str(second / "tradelib" / "__init__.py")


def stop_pipeline(args: list[str], sig: str, progress: Path, past: int) -> int:
    """Start the pipeline with `args`, send it `sig` once its training's progress.json is past step `past`, and
    check how it stops: exit 128 + the signal, the resume hint with the run's own settings, the checkpoint of
    the step it stopped at (returned)."""
    import signal
    import time

    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:  # well into training, between two epoch ends
        try:
            if json.loads(progress.read_text()).get("step", 0) > past:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    proc.send_signal(getattr(signal, sig))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + getattr(signal, sig), (sig, out[-2000:])
    said = out[out.index("03_train stopped (its training interrupted; resume: "):]
    hint = said[len("03_train stopped (its training interrupted; resume: "):said.index(")\n")]
    assert hint.startswith("python -m tradelib pipeline --only 03 ") and "-p epochs 200" in hint, hint
    assert hint.endswith("-p run_id held -p resume True"), hint  # the run's own settings: it works as printed
    step = json.loads(progress.read_text())["step"]
    assert (progress.parent / "checkpoints" / f"step-{step}.pt").exists()  # the step it stopped at
    return step


@pytest.mark.slow
def test_a_scheduler_stopping_the_pipeline_stops_training_at_a_step_with_a_checkpoint(outputs):
    """SIGTERM (a scheduler, docker stop) or SIGHUP to the pipeline stops 03's kernel the way Ctrl-C does: its
    training stops at a step with a checkpoint, the pipeline says how to resume and exits 128 + the signal, and
    the resumed run goes on from that step. Unhandled, the signal ended the pipeline and its kernel at once.
    SIGTERM stops the first run, SIGHUP the resumed one (one pipeline start fewer than a run per signal)."""
    args = [sys.executable, "-m", "tradelib", "pipeline", "-f", TINY_PARAMS, "--only", "03", "-p", "epochs", "200",
            "-p", "max_steps", "0", "-p", "run_id", "held", "-p", "device", "cpu", "-p", "compile", "off"]
    progress = outputs / "held" / "progress.json"
    first = stop_pipeline(args, "SIGTERM", progress, 60)
    resumed = [*args, "-p", "resume", "True"]
    second = stop_pipeline(resumed, "SIGHUP", progress, first + 20)  # the resumed run, well past the first stop
    res = subprocess.run([*resumed, "-p", "max_steps", str(second + 5)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((outputs / "held" / "summary.json").read_text())["optimizer_steps"] == second + 5


@pytest.mark.slow
def test_a_stopped_kernel_has_time_to_write_its_checkpoint(tmp_path):
    """The pipeline's papermill kernel, interrupted on SIGTERM, takes 7 s to end its step and save (a large
    model's checkpoint): the pipeline says it waits, waits, and signals it no second time meanwhile, not even on
    a second SIGTERM to the pipeline (jupyter_client's own manager signals again after 2.5 s and kills after 5)."""
    import signal
    import time

    probe = ("import pathlib, signal, time\nseen = []\n"
             "def stop(s, f):\n    seen.append(s)\n    pathlib.Path(out, f'signal-{len(seen)}').write_text(str(s))\n"
             "signal.signal(signal.SIGINT, stop)\nsignal.signal(signal.SIGTERM, stop)\n"
             "pathlib.Path(out, 'started').write_text('')\nwhile not seen:\n    time.sleep(0.05)\n"
             "time.sleep(7)\npathlib.Path(out, 'saved').write_text(str(seen))\nraise KeyboardInterrupt")
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("out = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(probe)]
    nbformat.write(nb, tmp_path / "probe.ipynb")
    script = ("import sys; from pathlib import Path; from tradelib.pipeline import execute_notebooks; "
              "execute_notebooks({'probe': Path(sys.argv[1]) / 'probe.ipynb'}, {'probe': {'out': sys.argv[1]}}, "
              "Path(sys.argv[1]), progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    while not (tmp_path / "started").exists() and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)  # a scheduler's second, or the session's SIGHUP: it waits with the first
    out, _ = proc.communicate(timeout=120)
    assert (tmp_path / "saved").exists(), out[-2000:]
    assert (tmp_path / "signal-1").read_text() == str(int(signal.SIGINT)) and not (tmp_path / "signal-2").exists()
    assert "SIGTERM: stopping probe: its kernel ends its step, waited for up to 120 s" in out
    assert "probe stopped (start again with the same command)" in out


def test_04_calls_the_per_day_ic_a_sessions_not_a_utc_dates():
    # metrics.ic_by_day groups by session_dates (a day from the market's start of day), not by the UTC date
    cells = json.loads((repo_root() / "notebooks" / "04_report.ipynb").read_text())["cells"]
    words = next("".join(c["source"]) for c in cells if "**per-day** IC" in "".join(c["source"]))
    assert "UTC day" not in words and "session" in words


def test_04_with_no_run_named_says_a_newer_run_was_stopped(outputs, capsys):
    """04 in JupyterLab after 03 was interrupted: the latest finished run is an older one, and 04 reported it in
    silence (`tradelib report` named the newer one); its cell that picks the run now says so."""
    import time

    from tradelib import runs
    from tradelib.progress import PROGRESS_FILE

    for name in ("done", "stopped"):
        (outputs / name).mkdir(parents=True)
        (outputs / name / "metrics.jsonl").write_text("")
        if name == "done":
            runs.write_summary(outputs / name, {"run_id": name})
            time.sleep(0.01)
    (outputs / "stopped" / PROGRESS_FILE).write_text(json.dumps({"step": 5, "total": 10, "state": "interrupted"}))
    cells = nbformat.read(NB / "04_report.ipynb", as_version=4).cells
    picks = next(c.source.splitlines()[0] for c in cells if c.source.startswith("run = "))
    ns = {"runs": runs, "run_id": ""}
    exec(picks, ns)
    assert ns["run"] == outputs / "done"
    said = capsys.readouterr().out
    assert "run 'stopped' is newer but interrupted: reporting the latest finished run, 'done'" in said
