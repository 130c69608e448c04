"""`tradelib sweep`: the grid as planned (and refused before anything runs), then end to end through papermill."""

import json
import subprocess
import sys

import pandas as pd
import papermill as pm
import pytest

from tradelib import runs
from tradelib.config import Config, ConfigError
from tradelib.paths import repo_root
from tradelib.report import report as rp
from tradelib.sweep import (
    Plan,
    make_plan,
    markdown_table,
    read_sweep,
    run_sweep,
    split_values,
    sweep_table,
    write_outputs,
)

from .test_report import make_run

ROOT = repo_root()
TINY = str(ROOT / "params" / "tiny.yaml")


@pytest.mark.parametrize("name, text, values", [
    ("batch_size", "128,512,1024", [128, 512, 1024]),
    ("model", "lstm, tcn", ["lstm", "tcn"]),  # a parameter with fixed choices
    ("dense", "True,False", [True, False]),
    ("lr", "1e-3;2e-3", [0.001, 0.002]),  # `;` works for every parameter
    ("cost_grid_bps", "0,5,10", ["0,5,10"]),  # a text parameter keeps its commas: one value
    ("cost_grid_bps", "0,5;1,2", ["0,5", "1,2"]),
    ("data_path", "prices,2024.csv", ["prices,2024.csv"]),
    ("batch_size", "256", [256]),
])
def test_values_split_on_commas_only_where_a_value_cannot_hold_one(name, text, values):
    assert split_values(name, text) == values


def test_the_plan_is_the_grid_and_links_the_zipped_parameters(outputs):
    """The seed's before/after table (128; 512 x 2; 1024) for both loaders: six runs, not eighteen."""
    plan = make_plan(None, [("loader", "dataloader,device"), ("lr", "0.001")],
                     [("batch_size", "128,512,1024"), ("grad_accum_steps", "1,2,1")], "seed")
    pairs = [(c.loader, c.batch_size, c.grad_accum_steps) for c in plan.configs]
    assert pairs == [(lo, b, g) for lo in ("dataloader", "device") for b, g in ((128, 1), (512, 2), (1024, 1))]
    assert all(c.lr == 0.001 for c in plan.configs) and plan.shared == {"lr": 0.001}
    assert plan.names[1] == "loader=dataloader,batch_size=512,grad_accum_steps=2"
    assert [c.run_id for c in plan.configs][:1] == ["seed/loader=dataloader,batch_size=128,grad_accum_steps=1"]
    same = make_plan(None, [("model", "lstm,tcn")], [])
    assert make_plan(None, [("model", "lstm,tcn")], []).sweep_id == same.sweep_id  # the same command, the same id
    assert make_plan(None, [("model", "lstm,gru")], []).sweep_id != same.sweep_id
    assert not any(outputs.iterdir()), "planning writes nothing"


def test_a_sweep_stopped_between_runs_says_how_to_go_on(outputs, monkeypatch, capsys):
    """SIGTERM between two runs (no notebook running, so none said how to go on) ended with "stopped by SIGTERM"
    alone."""
    import signal

    from tradelib import sweep
    from tradelib.train.stops import StopRequested

    def stopped_before_the_second(plan, i, progress):
        if i == 1:
            raise StopRequested(signal.SIGTERM)
        return "ran"

    monkeypatch.setattr(sweep, "run_one", stopped_before_the_second)
    with pytest.raises(StopRequested) as stop:
        run_sweep(make_plan(None, [("model", "lstm,tcn")], [], "between"), progress=False)
    assert stop.value.resume_said
    assert "[sweep] stopped after 1 of 2 runs; to go on: the same sweep command again" in capsys.readouterr().out


def test_a_sweep_varies_how_the_data_reaches_the_device(outputs):
    """Streamed data and sharded data are parameters of 03 like any other: a sweep plans runs that differ in
    them (each run is a 03 run, so a streamed or sharded sweep run is a streamed or sharded run)."""
    plan = make_plan(None, [("loader", "device,stream"), ("device_memory_budget", "0.5;2e6"),
                            ("shard_data", "True"), ("stream_block_rows", "4096")], [])
    got = [(c.loader, c.device_memory_budget, c.shard_data, c.stream_block_rows) for c in plan.configs]
    assert got == [(lo, b, True, 4096) for lo in ("device", "stream") for b in (0.5, 2e6)]
    assert plan.names[3] == "loader=stream,device_memory_budget=2000000.0"


def test_a_profile_files_settings_of_other_notebooks_are_left_out_with_a_note(outputs, tmp_path, capsys):
    """params/quick.yaml sets 02's profile_seconds and loaders beside its training: a sweep over it trains with
    the rest and says what it left out; the same names given with -p are still refused."""
    plan = make_plan([str(ROOT / "params" / "quick.yaml")], [("batch_size", "64,128")], [])
    assert [c.batch_size for c in plan.configs] == [64, 128] and all(c.hidden == 32 for c in plan.configs)
    assert "profile_seconds" not in plan.shared and "loaders" not in plan.shared
    note = capsys.readouterr().out
    assert "left out, as they do not shape a training run: profile_seconds" in note and "quick.yaml" in note
    with pytest.raises(ConfigError, match="-p: parameter 'profile_seconds' does not shape a training run"):
        make_plan([str(ROOT / "params" / "quick.yaml")], [("batch_size", "64,128"), ("profile_seconds", "5")], [])


def test_a_sweep_table_from_before_the_sharpe_intervals_still_reads(tmp_path):
    """04 shows the sweep a run belongs to: a sweep.csv written without the interval columns reads with NaN for
    them, and its net Sharpe shows bare; an unknown interval (a book that never traded) is not shown as one."""
    old = pd.DataFrame({"batch_size": [64, 128], "run": ["batch_size=64", "batch_size=128"], "status": ["ran"] * 2,
                        "busy": ["no"] * 2, "samples_per_s": [1e4, 2e4], "net_sharpe": [1.5, 0.0]})
    old.to_csv(tmp_path / "sweep.csv", index=False)
    table, _ = read_sweep(tmp_path)
    assert table["net_sharpe_ci_low"].isna().all()
    text = markdown_table(table)
    assert "| 1.50 |" in text and "| 0.00 |" in text and "(" not in text.split("\n", 2)[2]
    table.loc[0, ["net_sharpe_ci_low", "net_sharpe_ci_high"]] = [-0.5, 3.5]
    assert "| 1.50 (-0.50 to 3.50) |" in markdown_table(table) and "| 0.00 |" in markdown_table(table)



def test_the_sweep_table_gives_each_runs_ic_t_and_its_verdict_over_the_sweeps_runs(tmp_path):
    """A reader picks the best run of a sweep by eye: beside each run's ICs the table shows the headline IC's t and
    whether that run's report calls it significant once the sweep's runs are allowed for, and says why. Here a
    run of t about 2.4 passes |t| >= 2 alone but not over 4 runs; a strong one passes both."""
    folder, rhos, seeds = tmp_path / "sw", [0.0, 0.01, 0.05, 0.15], [1, 2, 0, 3]
    names = [f"rho={r}" for r in rhos]
    for name, rho, seed in zip(names, rhos, seeds):
        make_run(folder / name, seed=seed, rho=rho)
    (folder / "sweep.json").write_text(json.dumps({"runs": {n: {} for n in names}}))
    plan = Plan("sw", folder, {}, ["rho"], names, [{"rho": r} for r in rhos], [Config()] * 4)
    table = sweep_table(plan, ["ran"] * 4)
    for name, row in zip(names, table.itertuples()):
        s = rp.build_report(folder / name, settings=rp.ReportSettings.of())["summary"]
        assert s["sweep_runs"] == 4
        assert (row.ic_t_stat, row.ic_t_deflated) == pytest.approx((s["ic_t_stat"], s["ic_t_deflated"]))
        assert row.ic_significant == ("yes" if abs(s["ic_t_stat"]) >= 2 and s["ic_t_deflated"] > 0.975 else "no")
    assert 2 < table["ic_t_stat"][2] < 2.8 and table["ic_significant"].tolist()[2:] == ["no", "yes"]
    write_outputs(plan, table)
    text = (folder / "sweep.md").read_text()
    assert "| lead IC's t | significant over runs |" in text
    assert f"| {table['ic_t_stat'][2]:.2f} | no |" in text and "deflated over the 4 runs above 0.975" in text
    assert "significant over runs" in (folder / "sweep.html").read_text()

@pytest.mark.parametrize("grid, linked, problem", [
    ([("batch_size", "64,0")], [], "sweep run batch_size=0: parameter 'batch_size' is 0; it must be >= 1"),
    ([("batchsize", "64,128")], [], "did you mean 'batch_size'"),
    ([("cost_bps", "1,5")], [], "'cost_bps' is a report parameter"),
    ([("steps", "5,10")], [], "'steps' does not shape a training run"),
    ([("run_id", "a")], [], "'run_id' is set by the sweep"),
    ([("model", "lstm,cnn")], [], "parameter 'model' is 'cnn'; allowed: mlp | lstm | gru | tcn | transformer"),
    ([("lr", "1,2")], [("lr", "3,4")], "'lr' is given twice"),
    ([("model", "tcn,lstm"), ("dense", "true")], [], "sweep run model=lstm: dense=True needs a causal"),
    ([], [("batch_size", "1,2"), ("grad_accum_steps", "1,2,3")], "need as many values each"),
])
def test_a_bad_combination_is_refused_before_anything_runs(outputs, grid, linked, problem):
    with pytest.raises(ConfigError, match=problem.replace("|", r"\|").replace("(", r"\(")):
        make_plan(None, grid, linked)
    assert not outputs.exists() or not any(outputs.iterdir())


@pytest.mark.slow
def test_a_sweep_runs_notebook_03_per_combination_and_compares_them(outputs, tmp_path):
    """Two runs through papermill, one of them a walk-forward; the table, figure and page; a rerun skips both;
    the same name with other parameters is refused; 04 reports a run of the sweep fold by fold."""
    res = subprocess.run([sys.executable, "-m", "tradelib", "sweep", "--name", "s", "-f", TINY, "-p", "folds", "0,2",
                          "-p", "max_steps", "4", "-p", "device", "cpu", "-p", "compile", "off", "-p", "cost_bps", "2"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    folder = outputs / "s"
    table = pd.read_csv(folder / "sweep.csv")
    assert table["run"].tolist() == ["folds=0", "folds=2"] and set(table["status"]) == {"ran"}
    assert (table["samples_per_s"] > 0).all() and table["pooled_ic"].notna().all() and table["net_sharpe"].notna().all()
    assert set(table["headline_ic"]) == {"pooled"}  # tiny.yaml's 3 symbols: a sign book, led by the pooled IC
    for run in ("folds=0", "folds=2"):
        summary = runs.read_summary(folder / run)
        assert summary["run_id"] == f"s/{run}" and (folder / run / "03_train.ipynb").exists()
        assert summary["pooled_ic"] == pytest.approx(table.set_index("run").loc[run, "pooled_ic"])
    assert len(runs.read_summary(folder / "folds=2")["folds"]) == 2 and (folder / "folds=2" / "fold-1").is_dir()
    shown = {name: (folder / name / "03_train.ipynb").read_text() for name in ("folds=0", "folds=2")}
    assert "trained on (UTC)" in shown["folds=2"] and "trained on (UTC)" not in shown["folds=0"]  # 03's fold table
    page = (folder / "sweep.html").read_text()
    assert "samples/s" in page and "net Sharpe" in page and "data:image/png;base64," in page
    assert (folder / "sweep.png").stat().st_size > 0 and (folder / "sweep.md").read_text().count("| ran |") == 2
    for r in table.itertuples():  # every run's net Sharpe with its 95% interval, in the csv and the page
        assert r.net_sharpe_ci_low < r.net_sharpe < r.net_sharpe_ci_high
        assert f"{r.net_sharpe:.2f} ({r.net_sharpe_ci_low:,.2f} to {r.net_sharpe_ci_high:,.2f})" in page
    assert str(folder / "sweep.html") in res.stdout

    stamp = (folder / "folds=2" / "03_train.ipynb").stat().st_mtime_ns
    plan = make_plan([TINY], [("folds", "0,2"), ("max_steps", "4"), ("device", "cpu"), ("compile", "off"),
                              ("cost_bps", "2")], [], "s")
    again = run_sweep(plan, progress=False)
    assert set(again["status"]) == {"done earlier"}
    assert (folder / "folds=2" / "03_train.ipynb").stat().st_mtime_ns == stamp
    other = make_plan([TINY], [("folds", "0,2"), ("max_steps", "4"), ("device", "cpu"), ("lr", "0.01")], [], "s")
    with pytest.raises(ConfigError, match="finished with other parameters"):
        run_sweep(other, progress=False)

    nb = ROOT / "notebooks"
    pm.execute_notebook(str(nb / "04_report.ipynb"), str(tmp_path / "04.ipynb"), cwd=str(nb), progress_bar=False,
                        parameters={"run_id": "s/folds=2"})
    report = json.loads((folder / "folds=2" / "report.json").read_text())
    assert [r["fold"] for r in report["folds"]["table"]] == ["0", "1", "all"]
    shown = (tmp_path / "04.ipynb").read_text()
    assert "Walk-forward" in shown and "The sweep `s` this run belongs to" in shown
    assert (folder / "folds=2" / "folds.png").exists()


@pytest.mark.slow
def test_a_failed_run_is_marked_the_others_go_on_and_the_command_fails(outputs):
    """A run that fails on its data (a window longer than every symbol: no rows left), which no check of the
    settings alone foresees."""
    res = subprocess.run([sys.executable, "-m", "tradelib", "sweep", "--name", "f", "-f", TINY, "-p", "window",
                          "2000,16", "-p", "max_steps", "2", "-p", "device", "cpu", "-p", "compile", "off"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: sweep 'f': 1 of 2 runs failed (window=2000)")
    assert str(outputs / "f" / "sweep.html") in last
    table = pd.read_csv(outputs / "f" / "sweep.csv")
    assert table["status"].tolist() == ["failed", "ran"] and table["samples_per_s"].isna().tolist() == [True, False]
