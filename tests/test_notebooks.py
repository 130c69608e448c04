"""End to end: papermill runs every notebook on tiny parameters, from the repo root and from notebooks/."""

import dataclasses
import json
import subprocess
import sys
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


def test_train_notebook_from_repo_root_with_papermill_cli(tmp_path, outputs):
    """`papermill notebooks/03_train.ipynb out.ipynb -p batch_size ...` from the repo root."""
    out = tmp_path / "out.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", "notebooks/03_train.ipynb", str(out), "-f", TINY_PARAMS,
                    "-p", "batch_size", "32", "-p", "run_id", "from-root", "--no-progress-bar"],
                   cwd=ROOT, check=True, capture_output=True)
    summary = json.loads((outputs / "from-root" / "summary.json").read_text())
    assert summary["batch_size"] == 32


def test_pipeline_runs_all_notebooks_and_renders_the_report(outputs):
    res = subprocess.run([sys.executable, "-m", "tradelib", "pipeline", "-f", TINY_PARAMS, "-p", "run_id", "pipe"],
                         cwd=ROOT, capture_output=True, text=True)
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


def test_train_then_report_from_notebooks_dir_reports_the_latest_run(tmp_path, outputs, monkeypatch):
    """`cd notebooks && papermill 03_train.ipynb ...`, then 04 with no run named reports on that run; 03 builds
    the feature cache it needs by itself."""
    out = tmp_path / "04.ipynb"
    monkeypatch.chdir(NB)
    pm.execute_notebook(str(NB / "03_train.ipynb"), str(tmp_path / "03.ipynb"), cwd=str(NB), progress_bar=False,
                        parameters={**_tiny(), "run_id": "alone"})
    pm.execute_notebook(str(NB / "04_report.ipynb"), str(out), cwd=str(NB), progress_bar=False)
    assert (outputs / "alone" / "report.json").exists()


def test_pipeline_rejects_an_unknown_parameter():
    res = subprocess.run([sys.executable, "-m", "tradelib", "pipeline", "-p", "batchsize", "3"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "unknown parameter(s) batchsize" in res.stderr


def _tiny() -> dict:
    import yaml

    params = yaml.safe_load(Path(TINY_PARAMS).read_text())
    return {k: v for k, v in params.items() if k in declared("03_train")}


def test_a_failing_notebook_stops_the_pipeline_with_one_line(outputs):
    res = subprocess.run([sys.executable, "-m", "tradelib", "pipeline", "-f", TINY_PARAMS, "-p", "model", "tcn",
                          "-p", "layers", "9", "-p", "run_id", "bad"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 02_profiling failed in cell") and "receptive field" in last
    assert str(outputs / "bad" / "02_profiling.ipynb") in last
