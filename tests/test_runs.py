"""Run folders as others see them: a dead run told apart from a live one, the latest finished run, a full disk
named as such, the pipeline's notebook selection and its headline."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from tradelib import paths, runs
from tradelib.cli import explain
from tradelib.pipeline import NOTEBOOKS, headline, select_notebooks
from tradelib.progress import GONE, PROGRESS_FILE, Progress, read_progress


def gone_pid() -> int:
    """The PID of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def make_run(folder, finished: bool, pid: int | None = None, state: str = "running") -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("")
    if pid is not None:
        (folder / PROGRESS_FILE).write_text(json.dumps({"step": 5, "total": 10, "state": state, "pid": pid}))
    if finished:
        runs.write_summary(folder, {"run_id": folder.name, "finished": "2026-01-01T00:00:00"})


def test_a_run_whose_writer_is_gone_reads_stopped_process_gone(outputs):
    make_run(outputs / "killed", False, gone_pid())
    make_run(outputs / "alive", False, os.getpid())
    make_run(outputs / "stopped", False, gone_pid(), state="stopped")
    assert read_progress(outputs / "killed" / PROGRESS_FILE)["state"] == GONE == "stopped (process gone)"
    assert runs.run_state(outputs / "alive") == f"running (process {os.getpid()})"
    assert runs.run_state(outputs / "stopped") == "stopped"  # its own last word stands
    assert runs.run_state(outputs / "killed") == GONE
    assert runs.runs_table(outputs).empty  # the finished runs only


def test_report_takes_the_latest_finished_run_and_names_a_newer_running_one(outputs, capsys):
    make_run(outputs / "old", True)
    time.sleep(0.01)
    make_run(outputs / "done", True)
    time.sleep(0.01)
    make_run(outputs / "dead", False, gone_pid())
    time.sleep(0.01)
    make_run(outputs / "training", False, os.getpid())
    assert runs.latest_run() == outputs / "done"
    assert [(p.name, s) for p, s in runs.newer_unfinished(outputs / "done")] == [
        ("training", f"running (process {os.getpid()})"), ("dead", GONE)]
    assert runs.has_runs()
    for name in ("old", "done"):
        (outputs / name / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no finished run under .*dead stopped \(process gone\)"):
        runs.latest_run()
    assert not runs.has_runs()


def test_a_full_disk_names_the_file_and_the_outputs_folder(outputs, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write(2) or fsync raise: no file named

    monkeypatch.setattr(os, "fsync", full)
    target = outputs / "run" / "summary.json"
    target.parent.mkdir(parents=True)
    with pytest.raises(OSError) as raised:
        paths.atomic_write_bytes(b"{}", target)
    code, line = explain(raised.value)
    assert code == 2 and line.startswith(f"{target}: disk full (No space left on device)")
    assert "TRADELIB_OUTPUTS" in line and str(outputs) in line
    assert not list(target.parent.iterdir())  # no temporary file left behind


def test_a_feature_build_on_a_full_disk_names_the_file_and_the_build_goes_on_afterwards(outputs, monkeypatch):
    """The build writes its arrays through memory maps: a full disk killed it with SIGBUS (exit 135, nothing said)
    when a write through the map met a block the disk could not give. Their blocks are now allocated first, so a
    full disk is an OSError naming the file, exit 2."""
    from tradelib.config import Config
    from tradelib.data import dataset

    from .conftest import TINY

    allocate = os.posix_fallocate

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as raised:
        dataset.prepare(Config(**TINY), verbose=False)
    code, line = explain(raised.value)
    assert code == 2 and re.match(rf"{outputs / 'cache'}/.*\.npy: disk full \(No space left on device\)", line), line
    monkeypatch.setattr(os, "posix_fallocate", allocate)
    assert len(dataset.prepare(Config(**TINY), verbose=False)) > 0


def test_a_report_of_an_unfinished_run_names_what_it_lacks(outputs):
    """A walk-forward stopped while writing its results has predictions.parquet and no summary.json: the report
    said it had neither."""
    from tradelib.pipeline import run_report

    run = outputs / "half"
    (run / "fold-0").mkdir(parents=True)
    (run / "predictions.parquet").write_bytes(b"")
    Progress(10, mode="off", path=run / "fold-0" / PROGRESS_FILE).close("done")
    with pytest.raises(FileNotFoundError, match=r"run 'half' has no summary.json \(.*\): it has not finished \(done "
                                                r"in fold-0\)"):
        run_report("half")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_metrics_row_on_a_full_disk_names_its_file(tmp_path):
    """/dev/full answers every write with ENOSPC, as a full disk does a training's next metrics row: the error
    said "a file: disk full", not which one."""
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    with pytest.raises(OSError) as raised:
        runs.append_metrics(tmp_path, {"kind": "step", "step": 1})
    assert explain(raised.value)[1].startswith(f"{tmp_path / 'metrics.jsonl'}: disk full")


def test_a_real_full_disk_ends_a_feature_build_with_its_line(tmp_path):
    """The same on a 600 kB tmpfs (where this test may mount one: as root): `prepare` ends with exit 2 and the
    disk-full line, not SIGBUS."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("no small file system to fill (mounting a tmpfs needs root)")
    try:
        env = {**paths.child_env(), "TRADELIB_OUTPUTS": str(disk / "outputs")}
        done = subprocess.run([sys.executable, "-m", "tradelib", "prepare", "-p", "synth_symbols", "3", "-p",
                               "synth_bars", "1500"], env=env, capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["umount", str(disk)])
    assert done.returncode == 2, (done.returncode, done.stderr[-500:])
    assert re.match(r"error: .*\.npy: disk full \(No space left on device\)", done.stderr.splitlines()[-1])


def test_numpys_short_write_reads_as_a_full_disk(tmp_path):
    short = OSError("237301 requested and 35312 written")  # numpy's words for a write the disk cut short
    with pytest.raises(OSError) as raised, paths.writing(tmp_path / "x.npy"):
        raise short
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "x.npy")
    assert "disk full" in explain(raised.value)[1]
    with paths.writing(tmp_path / "y.npy"):
        np.save(tmp_path / "y.npy", np.zeros(3))


@pytest.mark.parametrize("skip, only, left", [
    ("02", "", ("01_data_cleaning", "03_train", "04_report")),
    ("profiling,4", "", ("01_data_cleaning", "03_train")),
    ("", "01,03_train", ("01_data_cleaning", "03_train")),
    ("", "", NOTEBOOKS),
])  # fmt: skip
def test_the_pipeline_runs_the_notebooks_named(skip, only, left):
    assert select_notebooks(skip, only) == left


def test_a_notebook_name_that_names_none_is_refused():
    with pytest.raises(ValueError, match=r"--skip '05' names no notebook; the notebooks: 01_data_cleaning"):
        select_notebooks("05")
    with pytest.raises(ValueError, match="not both"):
        select_notebooks("02", "03")


def test_the_headline_reads_what_report_json_has(tmp_path):
    path = tmp_path / "report.json"
    summary = {"headline_ic": "cross_sectional", "ic_lag": 1, "cross_sectional_ic": 0.0123, "ic_t_stat": 2.5,
               "ic_t_method": "HAC, 3 lags", "net_sharpe": 1.234, "cost_bps": 1.0}
    path.write_text(json.dumps({"summary": summary}))
    assert headline(path) == ["headline IC (cross-sectional, at the traded lag of 1 bar): 0.0123, t 2.50 [HAC, 3 lags]",
                              "net Sharpe after 1 bps costs: 1.23"]
    path.write_text(json.dumps({"summary": {**summary, "net_sharpe_ci": [0.5, 2.0], "flags": {"net_sharpe": "why"},
                                            "warnings": ["few symbols"]}}))
    assert headline(path)[1:] == ["net Sharpe after 1 bps costs: 1.23, 95% interval 0.50 to 2.00",
                                  "flagged (net sharpe): why", "warning: few symbols"]
    rest = {"ic": -0.0021, "periods": 10, "of": 953, "best": "2015-08-25T00:00:00+00:00"}
    path.write_text(json.dumps({"summary": {**summary, "ic_without_best": rest}}))
    assert headline(path)[0].endswith("t 2.50 [HAC, 3 lags]; -0.0021 without its 10 best and 10 worst of 953 periods")
    path.write_text(json.dumps({"summary": {"net_sharpe": None}}))
    assert headline(path) == []
    assert headline(tmp_path / "missing.json") == []


def test_progress_lines_name_the_run_folder_first_and_last(tmp_path, capsys):
    p = Progress(8, mode="lines", path=tmp_path / PROGRESS_FILE)
    for _ in range(8):
        p.advance()
    p.close()
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"run folder {tmp_path}") and out[-1].endswith(f"run folder {tmp_path}")
    assert not any(line.endswith(str(tmp_path)) for line in out[1:-1])


def test_remove_if_unused_keeps_a_folder_with_anything_written_and_then_the_callers_files(tmp_path):
    """Only the lock, an empty checkpoints/ and the caller's own files (a launch's launch.yaml) count as unused;
    with a checkpoint in it the folder stays whole, the caller's files too."""
    for kept in (True, False):
        folder = tmp_path / f"run-{kept}"
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "launch.yaml").write_text("run_id: x\n")
        if kept:
            (folder / "checkpoints" / "step-2.pt").write_bytes(b"weights")
        lock = runs.lock_run(folder)
        runs.remove_if_unused(folder, lock, also=("launch.yaml",))
        lock.release()
        assert folder.exists() is kept and (folder / "launch.yaml").exists() is kept


def test_how_to_go_on_after_a_stopped_notebook(tmp_path):
    """The pipeline's line after a stop: 04 alone as a report; 03 resumed where it has a checkpoint (a
    walk-forward's are in its folds, and so is its state), else started again; 01 and 02 started again."""
    from tradelib.pipeline import go_on
    from tradelib.progress import PROGRESS_FILE, Progress

    run = tmp_path / "r"
    (run / "fold-0" / "checkpoints").mkdir(parents=True)
    assert go_on("04_report", run, "RESUME", "RERUN") == f"the report alone: tradelib report {run}, with the same -f " \
                                                         "/ -p"
    assert go_on("03_train", run, "RESUME", "RERUN") == "no checkpoint yet; start again: RERUN"
    assert go_on("01_data_cleaning", run, "RESUME", "RERUN") == "start again: RERUN"
    (run / "fold-0" / "checkpoints" / "best.pt").write_bytes(b"weights")  # no training state: none to resume
    assert not runs.has_checkpoints(run) and go_on("03_train", run, "RESUME", "RERUN").startswith("no checkpoint")
    (run / "fold-0" / "checkpoints" / "step-4.pt").write_bytes(b"weights")
    Progress(10, mode="off", path=run / "fold-0" / PROGRESS_FILE).close("interrupted")
    assert runs.has_checkpoints(run) and runs.run_state(run) == "interrupted in fold-0"
    assert go_on("03_train", run, "RESUME", "RERUN") == "its training interrupted in fold-0; resume: RESUME"
    assert go_on("02_profiling", run, "", "") == "start again with the same command"


def test_stop_handlers_are_put_back_and_an_ignored_signal_stays_ignored():
    """signals_interrupt raises StopRequested on SIGTERM and SIGHUP while entered and puts the handlers back; a
    signal the process was started ignoring (nohup's SIGHUP) is left ignored, by it and by StopRequests."""
    import signal

    from tradelib.train.stops import StopRequested, StopRequests, signals_interrupt

    before = signal.getsignal(signal.SIGTERM)
    previous_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with pytest.raises(StopRequested) as stop:
            with signals_interrupt():
                assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
        assert stop.value.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before
        with StopRequests(enabled=True) as stops:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: the run goes on
            time.sleep(0.1)
            assert stops.requested is None
    finally:
        signal.signal(signal.SIGHUP, previous_hup)


@pytest.mark.parametrize("vol_scaled", [False, True])
def test_the_predictions_keep_the_target_from_t_whatever_the_model_learned(tmp_path, vol_scaled):
    """predictions.parquet's `target` is the return from t (lag 0) of a run trained on the delayed one: the
    target_delay 0 features' y on the same rows (and, unscaled, the forward return beside it), so that the
    report's trade_delay shift means the same for every run."""
    from tradelib.config import Config
    from tradelib.data import clean
    from tradelib.data.dataset import features_of
    from tradelib.data.synth import generate_market
    from tradelib.train.sources import window_ends

    bars = clean.clean_ohlcv(generate_market(n_symbols=3, n_bars=900, seed=3), "synthetic", keep=("oracle",))[0]
    base, late = (features_of(bars, Config(window=16, target_delay=d, vol_scaled_target=vol_scaled)) for d in (0, 1))
    rows = window_ends(late, 2, 16)
    pred = runs.read_predictions(runs.write_predictions(tmp_path, late, rows, np.zeros(len(rows))).parent)
    np.testing.assert_array_equal(pred["target"].to_numpy(np.float32), base.y[rows])
    assert not np.array_equal(late.y[rows], base.y[rows], equal_nan=True)  # what the model learned differs
    if not vol_scaled:
        np.testing.assert_array_equal(pred["target"], pred["fwd_return"])


def test_the_requirements_allow_no_pyarrow_or_torch_that_runs_a_files_pickles():
    """pyarrow 0.14 to 14.0.0 unpickle a Parquet file's PyExtensionType columns as they read it (CVE-2023-47248):
    with 14.0.0, which `pyarrow>=14` allowed, a colleague's predictions.parquet ran its code in `tradelib report`
    (runs.read_predictions). 14.0.1 refuses such a column."""
    import re
    from pathlib import Path

    from packaging.version import Version

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    floor = re.search(r'"pyarrow>=([\d.]+)"', text)
    assert floor is not None and Version(floor.group(1)) >= Version("14.0.1")
    # torch's weights_only loading (checkpoint.load) could be made to run a crafted checkpoint's code up to 2.9.1
    # (GHSA-63cw-57p8-fm3p; before 2.6, GHSA-53q9-r3pm-6pq6): `torch>=2.4` allowed both
    floor = re.search(r'"torch>=([\d.]+)"', text)
    assert floor is not None and Version(floor.group(1)) >= Version("2.10")


def test_the_report_alone_after_a_stopped_pipeline_is_a_command_the_report_takes(tmp_path):
    """A pipeline stopped in 04 said `tradelib report RUN, with the same -f / -p`: the same -f (any profile, its
    training settings) is refused by the report. It now prints the command, with the report's own settings."""
    import shlex
    from pathlib import Path

    from tradelib.config import read_params
    from tradelib.pipeline import NOTEBOOKS, go_on, report_command, split_params

    origins: dict[str, str] = {}
    tiny = Path(__file__).resolve().parents[1] / "params" / "tiny.yaml"
    params = read_params([str(tiny)], [("cost_bps", "2"), ("run_id", "r")], origins)
    _, cfg = split_params(params, NOTEBOOKS, origins)
    said = go_on("04_report", tmp_path / "r", "RESUME", "RERUN", report_command(cfg, tmp_path / "r"))
    words = shlex.split(said.split(": ", 1)[1])
    assert words[:5] == ["python", "-m", "tradelib", "report", str(tmp_path / "r")]
    pairs = [tuple(words[i + 1 : i + 3]) for i in range(5, len(words), 3)]
    assert all(words[i] == "-p" for i in range(5, len(words), 3)) and pairs == [("cost_bps", "2.0")]
    given: dict[str, str] = {}
    split_params(read_params(None, pairs, given), ("04_report",), given)  # what `tradelib report` checks: no error


def test_a_run_folder_with_symbolic_links_is_refused_before_anything_is_written(tmp_path):
    """A colleague's run folder unpacked from a tar keeps its links: `tradelib report` locked it through `.lock` (the
    file it names truncated to a PID) and wrote its figures and notebook through `ic.png` and `04_report.ipynb`."""
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(precious)
    (run / "ic.png").symlink_to(precious)
    with pytest.raises(ValueError, match=r"2 symbolic link\(s\) \(\.lock -> .*precious\.txt, ic\.png -> "):
        with runs.holding_run(run):
            pass
    assert precious.read_text() == "keep me\n"
    (run / ".lock").unlink()
    with pytest.raises(ValueError, match="ic.png"):
        runs.lock_run(run)
    (run / "ic.png").unlink()
    runs.lock_run(run).release()
    lock = tmp_path / "cache.lock"
    lock.symlink_to(precious)  # a lock elsewhere (a cache key's) is never written through either
    with pytest.raises(OSError):
        paths.FileLock(lock).acquire()
    assert precious.read_text() == "keep me\n"


def test_a_newer_stopped_walk_forward_is_named_beside_the_latest_finished_run(outputs):
    """A walk-forward writes its own metrics.jsonl once its folds are done: one stopped in a fold was no run
    folder, so `tradelib report` and 04 reported an older run without naming it."""
    make_run(outputs / "done", True)
    time.sleep(0.01)
    make_run(outputs / "walk" / "fold-0", False, gone_pid(), state="interrupted")
    assert runs.latest_run() == outputs / "done"
    assert [(p.name, s) for p, s in runs.newer_unfinished(outputs / "done")] == [("walk", "interrupted in fold-0")]


def test_a_resume_with_no_run_id_names_the_newest_unfinished_run(outputs):
    """03 in JupyterLab, stopped with run_id empty (a new time-stamped id): `resume = True` alone was refused with
    no hint of the id to give; the refusal names the newest run that has not finished."""
    from tradelib.config import Config
    from tradelib.train.walkforward import train_or_walk

    make_run(outputs / "done", True)
    time.sleep(0.01)
    make_run(outputs / "20260101-120000", False, gone_pid(), state="interrupted")
    for folds in (0, 2):
        with pytest.raises(ValueError, match=r"resume=True needs the run_id .*: the newest unfinished run here is "
                                             r"'20260101-120000' \(interrupted\)"):
            train_or_walk(Config(resume=True, folds=folds, device="cpu"))


def test_a_stop_while_report_html_renders_says_it_is_missing_and_how_to_write_it(tmp_path, monkeypatch, capsys):
    """SIGTERM after 04 is done, while nbconvert renders report.html: the notebook and report.json are there, the
    HTML is not (no half file), and the line before the stop's names the command that writes it."""
    import os
    import signal

    import nbformat
    from nbconvert import HTMLExporter

    from tradelib.pipeline import render_report
    from tradelib.train.stops import StopRequested, signals_interrupt

    out = tmp_path / "run"
    out.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# report")]), out / "04_report.ipynb")
    render = HTMLExporter.from_notebook_node

    def sigterm_midway(self, nb, **kw):  # the signal arrives while the exporter works
        os.kill(os.getpid(), signal.SIGTERM)
        return render(self, nb, **kw)

    monkeypatch.setattr(HTMLExporter, "from_notebook_node", sigterm_midway)
    with pytest.raises(StopRequested), signals_interrupt():
        render_report(out, "[report]", "python -m tradelib report RUN -p cost_bps 2.0")
    said = capsys.readouterr().out
    assert ("[report] stopped while rendering report.html: 04_report.ipynb and report.json are written, report.html "
            "is not (the report alone: python -m tradelib report RUN -p cost_bps 2.0)") in said
    assert sorted(p.name for p in out.iterdir()) == ["04_report.ipynb"]


@pytest.mark.parametrize("run_id", ["../victim", "sweep/../../victim", "ABSOLUTE", "."])
def test_a_run_id_outside_outputs_is_refused_before_anything_is_written(outputs, tmp_path, capsys, run_id):
    """`-p run_id ../victim` (a colleague's parameter file) trained into outputs/../victim, writing its summary.json,
    metrics and checkpoints over that folder's; an absolute path did the same anywhere, and '.' into outputs/."""
    from tradelib.cli import main

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "summary.json").write_text("precious\n")
    run_id = str(victim) if run_id == "ABSOLUTE" else run_id
    outputs.mkdir()
    code = main(["train", "-p", "synth_symbols", "3", "-p", "synth_bars", "400", "-p", "window", "8", "-p", "model",
                 "mlp", "-p", "device", "cpu", "-p", "max_steps", "2", "-p", "run_id", run_id])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: run_id {run_id!r}: a run id names a folder under outputs/"), err
    assert sorted(p.name for p in victim.iterdir()) == ["summary.json"]
    assert (victim / "summary.json").read_text() == "precious\n" and not list(outputs.iterdir())
    assert runs.run_path("sweep/run-0") == outputs / "sweep" / "run-0"
    assert main(["sweep", "--name", run_id, "-p", "lr", "1e-3,2e-3", "--dry-run"]) == 2  # named as the sweep's name
    err = capsys.readouterr().err
    assert err.startswith(f"error: sweep --name {run_id!r}: a run id names a folder under outputs/"), err
