"""Training progress (lines, the progress file the pipeline follows) and the TensorBoard events of a run."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tradelib import runs
from tradelib.config import Config
from tradelib.progress import LINE_FRACTIONS, PROGRESS_FILE, Follower, Progress, choose_mode, read_progress
from tradelib.train.run import TrainingRun, train

from .conftest import fit_until_interrupted

TINY = dict(synth_symbols=3, synth_bars=400, window=8, hidden=8, layers=1, model="mlp", batch_size=16, epochs=2,
            device="cpu", compile="off", log_every=2, checkpoint_every=5, seed=3, warmup_steps=5)


def test_lines_mode_prints_a_handful_and_the_file_follows_every_step(tmp_path, capsys):
    path = tmp_path / PROGRESS_FILE
    p = Progress(400, desc="train mlp", mode="lines", epochs=2, path=path, file_interval_s=0.0)
    for step in range(1, 401):
        p.advance()
        if step % 50 == 0:
            p.figures(step // 200, 1.0 / step, 12_345.0)
        assert read_progress(path)["step"] == step  # (no throttle here: every step reaches the file)
    p.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(LINE_FRACTIONS) + 2  # the start, each quarter, the end: not one per step
    assert lines[0].startswith("train mlp:   0% 0/400 steps, epoch 1/2")
    # a quarter line carries the figures of the last log point before it (here step 150)
    assert lines[2].startswith("train mlp:  50% 200/400 steps, epoch 1/2, loss 0.0067, 12.3k samples/s")
    assert "ETA" in lines[1] and lines[-1].startswith("train mlp: 100% 400/400 steps") and "ETA" not in lines[-1]
    final = read_progress(path)
    assert (final["state"], final["step"], final["total"], final["epochs"]) == ("done", 400, 400, 2)


def test_the_file_is_written_at_most_once_per_interval(tmp_path):
    path = tmp_path / PROGRESS_FILE
    p = Progress(1000, mode="off", path=path, file_interval_s=3600.0)
    for _ in range(999):
        p.advance()
    assert read_progress(path)["step"] == 0  # written at the start, then held back by the interval
    p.close("interrupted")
    assert read_progress(path)["step"] == 999 and read_progress(path)["state"] == "interrupted"


def test_auto_mode_outside_a_kernel_depends_on_the_terminal(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert choose_mode("auto") == "lines"  # a log file keeps every redraw of a bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert choose_mode("auto") == "bar"
    assert choose_mode("off") == "off" and choose_mode("widget") == "bar"  # no widget outside Jupyter
    with pytest.raises(ValueError, match="progress mode 'loud'"):
        choose_mode("loud")


def test_follower_shows_another_process_progress_to_its_end(tmp_path, capsys):
    """What the pipeline does while 03_train runs in its kernel: follow progress.json to the run's end."""
    path = tmp_path / PROGRESS_FILE
    path.write_text(json.dumps({"step": 99, "total": 100, "state": "done"}))  # a previous run's: ignored
    with Follower(path, "[pipeline] 03_train", mode="lines", poll_s=0.01):
        run = Progress(120, desc="train lstm", mode="off", epochs=3, path=path, file_interval_s=0.0)
        for step in range(120):
            run.advance()
            run.figures(step // 40, 0.5, 2000.0)
        run.close()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[pipeline] 03_train: train lstm:") and "/120 steps" in out[0]
    assert out[-1].startswith("[pipeline] 03_train: train lstm: 100% 120/120 steps, epoch 3/3, loss 0.5000")
    assert len(out) <= len(LINE_FRACTIONS) + 2


def test_follower_shows_each_fold_of_a_walk_forward_as_its_own_bar(tmp_path, capsys):
    """A walk-forward trains fold-0/, fold-1/ ... one after another: each fold's progress is followed to its end."""
    with Follower(tmp_path / PROGRESS_FILE, "[pipeline] 03_train", mode="lines", poll_s=0.01):
        for k in range(2):
            (tmp_path / f"fold-{k}").mkdir()
            run = Progress(40, desc="train lstm", mode="off", epochs=1, path=tmp_path / f"fold-{k}" / PROGRESS_FILE,
                           file_interval_s=0.0)
            for _ in range(40):
                run.advance()
                run.figures(0, 0.25 * (k + 1), 1000.0)
            run.close()
            time.sleep(0.1)  # the follower sees the finished fold before the next one starts
    out = capsys.readouterr().out.splitlines()
    ends = [line for line in out if "100% 40/40 steps" in line]
    assert [line.split(":")[1].strip() for line in ends] == ["fold-0 train lstm", "fold-1 train lstm"], out
    assert "loss 0.2500" in ends[0] and "loss 0.5000" in ends[1]


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for row in runs.read_metrics(folder):
        for key, tag in runs.TENSORBOARD_TAGS.get(row["kind"], {}).items():
            if row.get(key) is not None:
                out.setdefault(tag, []).append((row["step"], row[key]))
    return out


def assert_same(events: dict, jsonl: dict) -> None:
    assert set(events) == set(jsonl)
    for tag, points in jsonl.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag  # float32


@pytest.mark.slow
def test_tensorboard_events_equal_metrics_jsonl(outputs):
    result = train(Config(**TINY, run_id="tb"), progress=False)
    events, jsonl = tensorboard_scalars(result.run_dir), jsonl_scalars(result.run_dir)
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/data_wait_share",
            "epoch/train_loss", "epoch/val_loss"} <= set(events)
    assert len(events["epoch/val_loss"]) == 2 and len(events["train/loss"]) >= 10
    assert_same(events, jsonl)


@pytest.mark.slow
def test_a_resumed_run_purges_the_events_after_its_checkpoint(outputs):
    """Interrupted at step 7 (after the step-5 checkpoint), resumed: the events TensorBoard shows are exactly the
    rows metrics.jsonl keeps, none twice."""
    fit_until_interrupted(TrainingRun(Config(**TINY, run_id="tb-resumed"), progress=False), 7)
    train(Config(**TINY, run_id="tb-resumed", resume=True), progress=False)
    folder = outputs / "tb-resumed"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    assert_same(tensorboard_scalars(folder), jsonl_scalars(folder))


def test_without_tensorboard_a_run_says_so_in_one_line_and_trains(outputs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # the package is absent: its import fails
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    result = train(Config(**{**TINY, "run_id": "no-tb", "epochs": 1}), progress=False)
    notice = [line for line in capsys.readouterr().out.splitlines() if "TensorBoard" in line]
    assert notice == ["TensorBoard events off: the tensorboard package is not installed (pip install tensorboard, "
                      "or -p tensorboard False); metrics.jsonl holds every figure"]
    assert result.summary["optimizer_steps"] > 0 and not list(result.run_dir.glob("events.out.tfevents.*"))


def test_a_run_says_when_it_validates_and_predicts(outputs, capsys):
    """The validation at each epoch's end and the test predictions after the last step run over whole splits
    (minutes on years of minute bars, the bar standing still): a line says each, with its windows, in order; none
    with progress off."""
    run = TrainingRun(Config(**{**TINY, "run_id": "says", "progress": "lines"}))
    windows = run.trainer.windows
    val, test = len(windows.ends(1)), len(windows.ends(2))
    run.fit()
    lines = capsys.readouterr().out.splitlines()
    said = [line for line in lines if line.startswith(("validating", "predicting"))]
    assert said == [f"validating on {val:,} windows"] * 2 + [f"predicting {test:,} test windows"]
    assert lines.index(said[-1]) > max(i for i, line in enumerate(lines) if line.startswith("train mlp: 100%"))
    quiet = Progress(10, mode="off")
    quiet.note("validating on 1 windows")
    assert capsys.readouterr().out == ""


def test_stage_lines_in_a_notebook_papermill_runs_reach_its_terminal_too(tmp_path, capfd, monkeypatch):
    """The pipeline runs 01-04 with papermill, showing only its count of cells: the feature build's and the
    report's stage lines went into the saved notebook alone, and minutes passed in the terminal without a word.
    In a headless kernel they reach the terminal that started it too (its stderr), and stay in the notebook."""
    import nbformat
    import papermill as pm

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from tradelib.progress import stage_lines\n"
                                          "say = stage_lines('feature build', True)\nsay('cleaning 9 rows')\n"
                                          "stage_lines('report', False)('not said')")]
    nbformat.write(nb, tmp_path / "probe.ipynb")
    monkeypatch.delenv("PYTEST_CURRENT_TEST")  # (ipykernel keeps no descriptor of its terminal under pytest)
    pm.execute_notebook(str(tmp_path / "probe.ipynb"), str(tmp_path / "out.ipynb"), progress_bar=False,
                        log_output=False, kernel_name="python3")
    err = capfd.readouterr().err
    terminal = [line for line in err.splitlines() if line.startswith(("feature build", "report"))]
    assert terminal == ["feature build, 0s: cleaning 9 rows"]
    text = "".join(o.get("text", "") for o in nbformat.read(tmp_path / "out.ipynb", 4).cells[0].outputs)
    assert text == "feature build, 0s: cleaning 9 rows\n"


@pytest.mark.slow
def test_auto_mode_gives_lines_in_a_kernel_that_papermill_runs(tmp_path):
    """papermill (nbclient) runs the kernel headless: no widget, whose saved state would read `0% 0/483`. The
    signal is nbclient's in-memory history: the same kernel with a history file (as JupyterLab's) gets the widget."""
    pytest.importorskip("ipywidgets")
    import nbformat
    import papermill as pm

    from tradelib.progress import HEADLESS_HISTORY, headless_kernel

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from tradelib.progress import choose_mode, has_widgets, in_kernel\n"
                                          "print(choose_mode('auto'), in_kernel(), has_widgets())")]
    nbformat.write(nb, tmp_path / "probe.ipynb")
    for history, mode in (None, "lines"), (tmp_path / "history.sqlite", "widget"):
        pm.execute_notebook(str(tmp_path / "probe.ipynb"), str(tmp_path / "out.ipynb"), progress_bar=False,
                            kernel_name="python3",
                            extra_arguments=[f"--HistoryManager.hist_file={history}"] if history else [])
        text = "".join(o.get("text", "") for o in nbformat.read(tmp_path / "out.ipynb", 4).cells[0].outputs)
        assert text.split() == [mode, "True", "True"]
    assert not headless_kernel() and HEADLESS_HISTORY not in sys.argv  # this process is no kernel


def test_a_resumed_runs_first_line_and_its_follower_show_its_epoch(tmp_path, capsys):
    """A run resumed at step 5,808 of 8,800 in its 133rd epoch says so from its first line, and so does the
    pipeline's follower reading its progress.json (before its first log point brings the figures)."""
    path = tmp_path / PROGRESS_FILE
    with Follower(path, "[pipeline] 03_train", mode="lines", poll_s=0.01):
        run = Progress(8800, 5808, desc="train lstm", mode="lines", epochs=200, path=path, file_interval_s=0.0,
                       epoch=132)
        time.sleep(0.1)
        run.close("interrupted")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("train lstm:  66% 5808/8800 steps, epoch 133/200"), out
    followed = [line for line in out if line.startswith("[pipeline]")]
    assert followed and "epoch 133/200" in followed[0], out


def test_a_progress_file_naming_a_pid_no_process_can_have_reads_as_a_dead_run(tmp_path):
    """progress.json comes with a colleague's folder: a pid of 10**20 overflowed os.kill ('internal error:
    OverflowError' from `tradelib report` with no run named), and 0 or -1 name process groups (read as alive)."""
    for pid in (10**20, 0, -1):
        path = tmp_path / PROGRESS_FILE
        path.write_text(json.dumps({"step": 1, "total": 2, "state": "running", "pid": pid}))
        assert read_progress(path)["state"] == "stopped (process gone)"


def test_a_widget_of_a_run_ended_cleanly_short_of_its_steps_closes_green_not_red(monkeypatch):
    """JupyterLab: tqdm draws a bar closed short of its total red, as an error, so a run that max_minutes or early
    stopping ended cleanly read as failed; it closes green now. An interrupted or failed run's stays red."""
    pytest.importorskip("ipywidgets")
    from tradelib import progress

    monkeypatch.setattr(progress, "in_kernel", lambda: True)
    monkeypatch.setattr(progress, "headless_kernel", lambda: False)
    styles = {}
    for state, steps in (("done", 4), ("done", 10), ("interrupted", 4), ("failed", 4)):
        shown = Progress(10, mode="widget")
        assert shown.mode == "widget"
        bar = shown.bar
        shown.advance(steps)
        shown.close(state)
        styles[state, steps] = bar.container.children[1].bar_style
    assert styles == {("done", 4): "success", ("done", 10): "success", ("interrupted", 4): "danger",
                      ("failed", 4): "danger"}


def test_a_closed_widget_shows_the_runs_own_rate_not_its_first_seconds(monkeypatch):
    """JupyterLab: tqdm's widget keeps, once closed, the rate (and ETA) of its last redraw, a second or more before
    the end: a run whose first step was slow closed reading `52/100 [00:01<00:26, 1.82step/s]`. It closes with the
    run's own rate, the steps over the elapsed time, as tqdm's terminal bar does."""
    pytest.importorskip("ipywidgets")
    import re

    from tradelib import progress

    monkeypatch.setattr(progress, "in_kernel", lambda: True)
    monkeypatch.setattr(progress, "headless_kernel", lambda: False)
    shown = Progress(100, mode="widget")
    bar = shown.bar
    time.sleep(1.1)  # a slow first step (compilation, a cold cache): the one redraw the bar makes
    shown.advance(2)
    for _ in range(50):
        time.sleep(0.002)
        shown.advance()
    shown.close("interrupted")
    said = bar.container.children[2].value
    rate = float(re.search(r"([\d.]+)step/s", said).group(1))
    assert rate > 52 / 1.1 / 2, said  # 52 steps in about 1.2 s


def test_a_stop_while_the_results_are_written_says_so_and_how_to_resume(outputs, monkeypatch, capsys):
    """Jupyter's stop pressed once the bar is full, while the run writes its results (train_facts.json's forward
    pass over every split, the predictions, the summary): progress.json said "done" with no summary (04 then named
    the run "newer but done") and nothing was said. It says the stop, and the resume command, which writes them."""
    from tradelib.train import run as run_module

    cfg = Config(**{**TINY, "epochs": 1, "run_id": "stopped-finishing"})

    def stop(*args) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "write_train_facts", stop)
        with pytest.raises(KeyboardInterrupt) as raised:
            train(cfg)
    folder = outputs / "stopped-finishing"
    assert runs.run_state(folder) == "interrupted" and not (folder / "summary.json").exists()
    said = capsys.readouterr().out
    assert "interrupted while writing the run's results" in said and getattr(raised.value, "resume_said", False)
    assert "-p run_id stopped-finishing -p resume True" in said
    train(cfg.replace(resume=True))
    assert runs.run_state(folder) == "finished"
