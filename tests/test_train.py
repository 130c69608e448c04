"""The trainer survives: checkpoints, resume after a kill or an interrupt, bad steps, exact accumulation.

Everything runs on the CPU with a tiny synthetic market and model; "bitwise" means torch.equal on every
tensor of the final state dict.
"""

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tradelib.config import Config
from tradelib.data import cache, dataset
from tradelib.train.run import TrainingDiverged, TrainingFailed, TrainingRun, train
from tradelib.train.trainer import Trainer, lr_factor

from .conftest import fit_until_interrupted

# 583 training windows, 32 per optimizer step: 19 steps per epoch (the last one partial, 7 windows), 38 in all
TINY = dict(synth_symbols=3, synth_bars=400, window=8, hidden=8, layers=1, model="mlp", dropout=0.1,
            batch_size=16, grad_accum_steps=2, epochs=2, device="cpu", compile="off", precision="fp32",
            log_every=2, checkpoint_every=5, seed=3, warmup_steps=5)


def tiny(run_id: str, **changes) -> Config:
    return Config(**{**TINY, "run_id": run_id, **changes})


@pytest.fixture(scope="module")
def outputs(module_outputs):
    """One outputs/ for the whole module (overriding conftest's folder per test), so that the reference run
    and the feature caches are shared; subprocesses inherit it through the environment."""
    return module_outputs


@pytest.fixture(scope="module")
def reference(outputs):
    """One uninterrupted run: its final weights and metric rows."""
    train(tiny("reference"), progress=False)
    return final_model(outputs, "reference"), metric_rows(outputs, "reference")


def final_model(outputs: Path, run_id: str) -> dict:
    return torch.load(outputs / run_id / "checkpoints" / "last.pt", weights_only=False)["model"]


def metric_rows(outputs: Path, run_id: str) -> list[dict]:
    return [json.loads(line) for line in (outputs / run_id / "metrics.jsonl").read_text().splitlines()]


def snapshot(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"tensors differ: {unequal}"


def comparable(rows: list[dict]) -> list[tuple]:
    """The metric rows without the timing fields (which differ between any two runs)."""
    keys = ("kind", "step", "epoch", "samples", "loss", "lr", "grad_norm", "skipped_steps", "train_loss", "val_loss")
    return [tuple(r.get(k) for k in keys) for r in rows]


def adam_steps(trainer: Trainer) -> set[float]:
    return {float(s["step"]) for s in trainer.opt.state.values()}


# ---------------------------------------------------------------------------------------------------------
# checkpoints and determinism


def test_checkpoints_hold_the_full_state_and_rotate(outputs, reference):
    folder = outputs / "reference" / "checkpoints"
    steps = sorted(int(p.stem.split("-")[1]) for p in folder.glob("step-*.pt"))
    assert steps == [30, 35, 38]  # keep_checkpoints=3 of 5, 10, 15, 19 (epoch end), 20, ..., 38
    assert (folder / "best.pt").exists() and (folder / "last.pt").exists()
    assert not list(folder.glob("*.tmp"))
    last = torch.load(folder / "last.pt", weights_only=False)
    for key in ("model", "optimizer", "scheduler", "step", "epoch", "pos", "rng", "config", "cache_key"):
        assert key in last
    assert (last["step"], last["epoch"], last["pos"]) == (38, 2, 0)
    assert set(last["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert last["config"]["seed"] == 3 and last["cache_key"] == cache.cache_key(tiny("reference"))
    assert last["scheduler"]["last_epoch"] == 38
    mid = torch.load(folder / "step-35.pt", weights_only=False)
    assert (mid["step"], mid["epoch"], mid["pos"]) == (35, 1, 16 * 32)  # 16 steps into epoch 1
    # a checkpoint is written at a log point: the rows up to its step are in metrics.jsonl
    rows = metric_rows(outputs, "reference")
    assert [r["step"] for r in rows if r["kind"] == "step"] == [2, 4, 5, 6, 8, 10, 12, 14, 15, 16, 18, 19, 20, 22,
                                                               24, 25, 26, 28, 30, 32, 34, 35, 36, 38]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [0, 1]


@pytest.mark.slow
def test_same_seed_same_bits_other_seed_other_bits(outputs, reference):
    ref_model, ref_rows = reference
    train(tiny("again"), progress=False)
    assert_bitwise(final_model(outputs, "again"), ref_model)
    assert comparable(metric_rows(outputs, "again")) == comparable(ref_rows)
    train(tiny("other-seed", seed=4), progress=False)
    other = final_model(outputs, "other-seed")
    assert not any(torch.equal(other[k], ref_model[k]) for k in ref_model if ref_model[k].dim() >= 2)


# ---------------------------------------------------------------------------------------------------------
# resume: after SIGKILL, after an interrupt, and refusals

KILLED_CHILD = r"""
import json, sys, time
from tradelib.config import Config
from tradelib.train.run import TrainingRun
cfg = Config.from_dict(json.loads(sys.argv[1]))
pause_at, marker = int(sys.argv[2]), sys.argv[3]

def hold(run):
    if run.step == pause_at:
        open(marker, "w").close()
        time.sleep(600)  # the test kills this process here, three steps past the step-10 checkpoint

run = TrainingRun(cfg, progress=False)
run.on_step = hold
run.fit()
"""


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_same_bits(outputs, reference, tmp_path):
    ref_model, ref_rows = reference
    cfg = tiny("killed")
    marker = tmp_path / "paused"
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, json.dumps(cfg.to_dict()), "13", str(marker)])
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None, "the training process ended before the kill"
        assert time.monotonic() < deadline, "the training process never reached step 13"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    folder = outputs / "killed" / "checkpoints"
    assert not (folder / "last.pt").exists()
    assert sorted(p.name for p in folder.glob("step-*.pt")) == ["step-10.pt", "step-5.pt"]
    assert metric_rows(outputs, "killed")[-1]["step"] == 12  # logged after the checkpoint: must not stay twice

    params = [a for k, v in cfg.replace(resume=True).to_dict().items() if k in TINY or k in ("run_id", "resume")
              for a in ("-p", k, str(v))]
    done = subprocess.run([sys.executable, "-m", "tradelib", "train", *params], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed killed from step-10.pt at step 10 (epoch 1 of " in done.stdout  # counted as the bar counts
    assert_bitwise(final_model(outputs, "killed"), ref_model)
    assert comparable(metric_rows(outputs, "killed")) == comparable(ref_rows)


@pytest.fixture
def interactive_sigint():
    """Ctrl-C as an interactive Python has it, also where pytest was started in the background with SIGINT
    ignored (which a run rightly keeps ignored)."""
    started = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, started)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["signal", "raise"])
def test_interrupt_writes_a_checkpoint_and_resumes_to_the_same_bits(outputs, reference, capsys, how,
                                                                    interactive_sigint):
    ref_model, _ = reference
    run_id = f"interrupted-{how}"
    run = TrainingRun(tiny(run_id), progress=False)
    handler_before = signal.getsignal(signal.SIGINT)

    def interrupt(t: TrainingRun) -> None:
        if t.step == 23:
            if how == "signal":  # what Jupyter's interrupt button and Ctrl-C do
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt

    run.on_step = interrupt
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    assert signal.getsignal(signal.SIGINT) is handler_before
    out = capsys.readouterr().out
    assert f"interrupted at step 23 (epoch {run.epoch + 1} of {run.cfg.epochs})" in out  # as the bar counts
    assert f"-p run_id {run_id} -p resume True" in out
    folder = outputs / run_id / "checkpoints"
    ck = torch.load(folder / "step-23.pt", weights_only=False)
    assert (ck["step"], ck["epoch"], ck["pos"]) == (23, 1, 4 * 32)
    assert not (folder / "last.pt").exists()

    train(tiny(run_id, resume=True), progress=False)
    assert_bitwise(final_model(outputs, run_id), ref_model)
    steps = [r["step"] for r in metric_rows(outputs, run_id) if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 38


def test_a_stop_between_log_points_resumes_to_the_uninterrupted_runs_metric_rows(outputs):
    """The stop's checkpoint carries the log interval's sums so far: no extra row at the stop's step, and the next
    row's loss covers the whole interval, as in the uninterrupted run (a walk-forward's folds resume the same)."""
    cfg = dict(epochs=1, checkpoint_every=0, log_every=4)
    train(tiny("rows-whole", **cfg), progress=False)
    run = TrainingRun(tiny("rows-stopped", **cfg), progress=False)
    fit_until_interrupted(run, 7)  # between the log points at steps 4 and 8
    assert [r["step"] for r in metric_rows(outputs, "rows-stopped")] == [4]
    train(tiny("rows-stopped", resume=True, **cfg), progress=False)
    assert comparable(metric_rows(outputs, "rows-stopped")) == comparable(metric_rows(outputs, "rows-whole"))
    assert_bitwise(final_model(outputs, "rows-stopped"), final_model(outputs, "rows-whole"))


STOPPED_CHILD = r"""
import json, os, sys, time
import tradelib.train.run as run_module
from tradelib.cli import main
pause_at, marker, go = int(sys.argv[1]), sys.argv[2], sys.argv[3]
fit = run_module.TrainingRun.fit

def hold(run):
    if run.step == pause_at:  # the test signals this process here, mid-epoch, then lets it go on
        open(marker, "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)

def fit_held(run):
    run.on_step = hold
    return fit(run)

run_module.TrainingRun.fit = fit_held
sys.exit(main(["train", *sys.argv[4:]]))
"""


def printed_command(line: str) -> list[str]:
    """A printed `python -m tradelib ...` command as this interpreter runs it."""
    import shlex

    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "tradelib"], line
    return [sys.executable, *words[1:]]


def cli_params(cfg: Config) -> list[str]:
    return [a for k, v in cfg.to_dict().items() if k in TINY or k in ("run_id", "resume") for a in ("-p", k, str(v))]


class Payload:
    """What a crafted checkpoint holds: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_never_run(outputs, short_run, tmp_path):
    marker = tmp_path / "MARKER"
    folder = outputs / "crafted" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"model": Payload(marker)}, folder / "step-999.pt")
    done = subprocess.run([sys.executable, "-m", "tradelib", "train", *cli_params(tiny("crafted", resume=True))],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: resume: none of the 1 checkpoints") and "refused: it holds posix.system" in last
    assert not marker.exists()
    # beside a run's own checkpoints: set aside with a line, and the resume goes on from the newest real one
    torch.save({"model": Payload(marker)}, outputs / short_run / "checkpoints" / "step-999.pt")
    run = TrainingRun(tiny(short_run, epochs=1, resume=True), progress=False)
    run.close()
    assert run.step in (3, 5) and not marker.exists()
    assert (outputs / short_run / "checkpoints" / "step-999.pt.damaged").exists()


@pytest.mark.slow
def test_sigterm_mid_epoch_stops_with_a_checkpoint_and_resumes_to_the_same_bits(outputs, reference, tmp_path):
    """What a scheduler, `docker stop` or systemd do: SIGTERM at step 13 (mid-epoch, past the step-10 checkpoint)
    stops the CLI at that step with an exact checkpoint, exit 143, progress.json "stopped", the resume command
    printed; resumed, the final weights equal the uninterrupted run's bit for bit."""
    ref_model, _ = reference
    cfg = tiny("terminated")
    marker, go = tmp_path / "paused", tmp_path / "go"
    child = subprocess.Popen([sys.executable, "-c", STOPPED_CHILD, "13", str(marker), str(go), *cli_params(cfg)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None, child.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the training process never reached step 13"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGTERM)
    go.touch()
    out, err = child.communicate(timeout=120)
    assert child.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM at step 13" in out and "-p run_id terminated -p resume True" in out
    assert err.strip().splitlines()[-1] == "error: stopped by SIGTERM (the resume command is above)"
    folder = outputs / "terminated"
    assert json.loads((folder / "progress.json").read_text())["state"] == "stopped"
    ck = torch.load(folder / "checkpoints" / "step-13.pt", weights_only=True)
    assert (ck["step"], ck["epoch"], ck["pos"]) == (13, 0, 13 * 32)
    assert not (folder / "checkpoints" / "last.pt").exists()

    done = subprocess.run([sys.executable, "-m", "tradelib", "train", *cli_params(cfg.replace(resume=True))],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed terminated from step-13.pt at step 13" in done.stdout
    assert_bitwise(final_model(outputs, "terminated"), ref_model)
    steps = [r["step"] for r in metric_rows(outputs, "terminated") if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 38


def test_sighup_stops_like_ctrl_c_and_lets_go_of_the_run_folder(outputs, capsys):
    from tradelib import runs
    from tradelib.cli import explain
    from tradelib.train.stops import StopRequested

    handlers_before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    run = TrainingRun(tiny("hung-up"), progress=False)
    run.on_step = lambda t: os.kill(os.getpid(), signal.SIGHUP) if t.step == 7 else None
    with pytest.raises(StopRequested) as stopped:
        run.fit()
    assert explain(stopped.value) == (129, "stopped by SIGHUP (the resume command is above)")
    assert {s: signal.getsignal(s) for s in handlers_before} == handlers_before
    assert "stopped by SIGHUP at step 7" in capsys.readouterr().out
    folder = outputs / "hung-up"
    assert (folder / "checkpoints" / "step-7.pt").exists()
    assert json.loads((folder / "progress.json").read_text())["state"] == "stopped"
    runs.check_run_free(folder)  # the lock is released: another process may take the folder


SECOND_SIGNAL_CHILD = r"""
import os, signal, sys
import tradelib.train.checkpoint as checkpoint
import tradelib.train.run as run_module
from tradelib.cli import main
second = getattr(signal, sys.argv[1])
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as a terminal has it (also under a background pytest)
fit, save, first = run_module.TrainingRun.fit, checkpoint.save, []

def hold(run):
    if run.step == 13 and not first:  # a scheduler's SIGTERM between two steps
        first.append(True)
        os.kill(os.getpid(), signal.SIGTERM)

def save_hit(state, path):
    if first and path.name == "step-13.pt":  # the second signal arrives while the stop's checkpoint is written
        os.kill(os.getpid(), second)
    return save(state, path)

def fit_held(run):
    run.on_step = hold
    return fit(run)

checkpoint.save = save_hit
run_module.TrainingRun.fit = fit_held
sys.exit(main(["train", *sys.argv[2:]]))
"""


@pytest.mark.parametrize("second", ["SIGTERM", "SIGINT"])
def test_a_second_sigterm_waits_for_the_checkpoint_and_a_second_ctrl_c_stops_at_once(outputs, second):
    """A scheduler that signals again (or a wrapper forwarding its own SIGTERM) while the stop's checkpoint is
    written: the checkpoint is written all the same and the resume command printed. A second Ctrl-C stops at once,
    without them, and the last line then points to no resume command."""
    run_id = f"twice-{second.lower()}"
    child = subprocess.run([sys.executable, "-c", SECOND_SIGNAL_CHILD, second, *cli_params(tiny(run_id))],
                           capture_output=True, text=True, timeout=300)
    last = child.stderr.strip().splitlines()[-1]
    step13 = outputs / run_id / "checkpoints" / "step-13.pt"
    if second == "SIGTERM":
        assert child.returncode == 143, child.stderr[-3000:]
        assert "stopped by SIGTERM at step 13" in child.stdout and f"-p run_id {run_id} -p resume True" in child.stdout
        assert last == "error: stopped by SIGTERM (the resume command is above)"
        assert torch.load(step13, weights_only=True)["step"] == 13
    else:
        assert child.returncode == 130, child.stderr[-3000:]
        assert "Resume:" not in child.stdout and not step13.exists()
        assert last == "error: interrupted"


def test_the_last_line_points_to_the_resume_command_only_where_it_was_printed():
    from tradelib.cli import explain
    from tradelib.train.stops import StopRequested

    assert explain(StopRequested(signal.SIGTERM)) == (143, "stopped by SIGTERM")  # stopped before it was printed
    assert explain(KeyboardInterrupt()) == (130, "interrupted")


PROCESS_GROUP_CHILD = r"""
import os, signal, sys, time
import tradelib.train.sources as sources
from tradelib.cli import main
fetch, calls = sources.DataLoaderSource.fetch, []

def fetch_hit(self, ids):
    calls.append(1)
    if len(calls) == 27:  # inside optimizer step 14 (2 micro-batches a step): what Slurm, systemd and
        os.killpg(os.getpgid(0), signal.SIGTERM)  # `kill -TERM -PGID` do, the DataLoader's workers included
        time.sleep(0.5)  # (a scheduler does not wait for the step)
    return fetch(self, ids)

sources.DataLoaderSource.fetch = fetch_hit
sys.exit(main(["train", *sys.argv[1:]]))
"""


@pytest.mark.slow
def test_sigterm_to_the_process_group_stops_a_dataloader_run_with_workers_at_a_step(outputs):
    """The DataLoader's worker processes get the process group's SIGTERM too; they go on serving the step, the
    run stops after it with a checkpoint and the resume command, and the resume continues."""
    params = [*cli_params(tiny("group-stopped")), "-p", "loader", "dataloader", "-p", "num_workers", "2"]
    child = subprocess.run([sys.executable, "-c", PROCESS_GROUP_CHILD, *params], capture_output=True, text=True,
                           timeout=300, start_new_session=True)  # its own process group: the test's is not signalled
    assert child.returncode == 143, child.stderr[-3000:]
    assert "stopped by SIGTERM at step 14" in child.stdout and "-p run_id group-stopped -p resume True" in child.stdout
    folder = outputs / "group-stopped"
    assert torch.load(folder / "checkpoints" / "step-14.pt", weights_only=True)["step"] == 14
    assert json.loads((folder / "progress.json").read_text())["state"] == "stopped"
    done = subprocess.run([sys.executable, "-m", "tradelib", "train", *params, "-p", "resume", "True"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed group-stopped from step-14.pt at step 14" in done.stdout


@pytest.mark.slow
def test_a_resumed_dataloader_run_with_dropout_ends_where_the_uninterrupted_one_does(outputs, reference):
    """The DataLoader's iterator takes its seed from its own generator, not from the RNG the dropout masks are
    drawn from: resumed mid-epoch, the run ends bit for bit where the uninterrupted one does (and, the batches
    being the same, where the device loader's run does)."""
    dl = dict(loader="dataloader", num_workers=0, dropout=0.1)
    train(tiny("dataloader", **dl), progress=False)
    run = TrainingRun(tiny("dataloader-resumed", **dl), progress=False)
    fit_until_interrupted(run, 13)
    train(tiny("dataloader-resumed", resume=True, **dl), progress=False)
    assert_bitwise(final_model(outputs, "dataloader-resumed"), final_model(outputs, "dataloader"))
    assert_bitwise(final_model(outputs, "dataloader"), reference[0])


def test_a_resume_that_trains_on_sets_the_finished_results_aside(outputs, reference):
    """A finished run resumed with more epochs: until it finishes again its old summary, predictions and last.pt
    are set aside, so a stop reads as a stop, not as the old finished run; finished again, it has new ones."""
    from tradelib import runs

    first = train(tiny("extended", epochs=1), progress=False).summary
    folder = outputs / "extended"
    run = TrainingRun(tiny("extended", epochs=2, resume=True), progress=False)
    fit_until_interrupted(run, 25)
    for name in ("summary.json", "predictions.parquet", "checkpoints/last.pt"):
        assert not (folder / name).exists() and (folder / f"{name}.superseded").exists(), name
    assert runs.run_state(folder) == "interrupted"
    assert runs.latest_run().name != "extended"
    again = train(tiny("extended", epochs=2, resume=True), progress=False).summary
    assert (first["optimizer_steps"], again["optimizer_steps"]) == (19, 38)
    assert runs.read_summary(folder)["optimizer_steps"] == 38 and runs.run_state(folder) == "finished"
    assert (folder / "predictions.parquet").exists() and (folder / "checkpoints" / "last.pt").exists()


def test_a_stopped_walk_forward_prints_the_resume_command_that_resumes_it(outputs, monkeypatch, capsys):
    """A finished walk-forward resumed with another epoch and stopped by SIGTERM in its second fold: its results
    are set aside (it reads as stopped), and the printed command, the walk-forward's run id with the same folds
    parameters, resumes it to the end."""
    import re

    import tradelib.train.run as run_module
    from tradelib import runs
    from tradelib.train.walkforward import walk_forward

    walk = dict(folds=2, train_frac=0.5, val_frac=0.15, synth_bars=800, fold_init="warm", epochs=1)
    walk_forward(tiny("walked", **walk), progress=False)
    fit, stop = run_module.TrainingRun.fit, []

    def fit_held(run):
        if run.run_id.endswith("fold-1"):  # two steps into its second epoch
            stop.append(run.step + 2)
            run.on_step = lambda r: os.kill(os.getpid(), signal.SIGTERM) if r.step == stop[0] else None
        return fit(run)

    monkeypatch.setattr(run_module.TrainingRun, "fit", fit_held)
    more = {**walk, "epochs": 2}
    with pytest.raises(KeyboardInterrupt):
        walk_forward(tiny("walked", resume=True, **more), progress=False)
    folder = outputs / "walked"
    assert not (folder / "summary.json").exists() and runs.run_state(folder) == "stopped in fold-1"
    printed = re.search(r"^Resume: (.*)$", capsys.readouterr().out, re.M).group(1)
    for pair in ("folds 2", "fold_init warm", "epochs 2", "synth_bars 800", "train_frac 0.5"):  # the run's own
        assert f"-p {pair} " in printed, pair
    assert printed.endswith("-p run_id walked -p resume True")
    done = subprocess.run(printed_command(printed), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed walked/fold-1 from step-{stop[0]}.pt at step {stop[0]}" in done.stdout
    assert runs.run_state(folder) == "finished" and runs.read_summary(folder)["config"]["epochs"] == 2


def test_a_checkpoint_of_the_wrong_content_is_set_aside_and_one_that_does_not_fit_is_named(outputs, capsys):
    """A file that loads but is no training checkpoint (another program's weights) is set aside like a damaged
    one and the resume goes on from the newest good one; weights of other shapes than the model's are refused,
    naming the file and the first parameter that does not fit."""
    from tradelib.train import checkpoint

    train(tiny("foreign", epochs=1, max_steps=12), progress=False)
    folder = outputs / "foreign" / "checkpoints"
    torch.save({"model": torch.nn.Linear(3, 1).state_dict()}, folder / "step-99.pt")
    run = TrainingRun(tiny("foreign", epochs=1, max_steps=14, resume=True), progress=False)
    run.close()
    out = capsys.readouterr().out
    assert run.step == 12 and "step-99.pt: not a tradelib training checkpoint" in out
    assert (folder / "step-99.pt.damaged").exists()
    ck = checkpoint.load(folder / "step-12.pt")
    ck["model"]["head.proj.weight"] = torch.zeros(3, 5)
    checkpoint.save({**ck, "step": 13}, folder / "step-13.pt")
    with pytest.raises(ValueError, match=r"resume refused: .*step-13.pt: its weights do not fit model mlp: "
                                         r"head.proj.weight is \[3, 5\] in the file, \[1, 8\] in the model"):
        TrainingRun(tiny("foreign", epochs=1, max_steps=14, resume=True), progress=False)


def test_a_last_pt_holding_the_restored_best_weights_is_no_point_to_train_on_from(outputs):
    """With early stopping on, last.pt holds the best epoch's weights beside the final step's optimizer and
    position: with its step files gone it may rewrite the finished run's outputs, not train on."""
    train(tiny("restored", patience=5), progress=False)
    folder = outputs / "restored" / "checkpoints"
    assert torch.load(folder / "last.pt", weights_only=True)["restored_best"]
    for p in folder.glob("step-*.pt"):
        p.unlink()
    with pytest.raises(ValueError, match=r"resume refused: .*last.pt holds the restored best weights"):
        TrainingRun(tiny("restored", patience=5, epochs=3, resume=True), progress=False)
    TrainingRun(tiny("restored", patience=5, resume=True), progress=False).close()  # done: rewrites its outputs


class FakeClock:
    """A clock the test moves: a minute per optimizer step."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self, run: TrainingRun) -> None:
        self.now += 60.0


def test_checkpoints_by_time_follow_the_clock_and_change_nothing_trained(outputs, reference):
    """checkpoint_minutes 3, a minute per step, checked at the log points (every 2 steps): a checkpoint when 3
    minutes have passed since the last one (the epoch ends' included). The weights are the reference's."""
    clock = FakeClock()
    run = TrainingRun(tiny("by-time", checkpoint_every=0, checkpoint_minutes=3, keep_checkpoints=50), progress=False)
    run.clock, run.on_step = clock, clock.tick
    run.fit()
    folder = outputs / "by-time" / "checkpoints"
    # the log of step k reads minute k - 1; the epoch end's checkpoint (19) comes after its step's tick, minute 19
    assert sorted(checkpoint_steps(folder)) == [4, 8, 12, 16, 19, 24, 28, 32, 36, 38]
    assert_bitwise(final_model(outputs, "by-time"), reference[0])
    off = TrainingRun(tiny("by-time-off", checkpoint_every=0, checkpoint_minutes=0), progress=False)
    clock = FakeClock()
    off.clock, off.on_step = clock, clock.tick
    off.fit()
    assert sorted(checkpoint_steps(outputs / "by-time-off" / "checkpoints")) == [19, 38]


def test_a_ddp_run_says_when_its_log_points_are_further_apart_than_torchruns_shutdown_wait(outputs, capsys,
                                                                                           monkeypatch):
    """Under torchrun a stop is agreed at the next log point, and torchrun kills its workers 30 s (its
    --shutdown-timeout) after passing a SIGTERM or Ctrl-C on: with log points further apart the workers died
    without the checkpoint that "stopping after this optimizer step with a checkpoint" had promised, and nothing
    said why. Rank 0 now says so once, at the first log point that comes too late (a minute per step, every 2
    steps: 60 to 120 s apart; the world of 2 faked, its collectives no-ops without a process group)."""
    clock = FakeClock()
    run = TrainingRun(tiny("grace", max_steps=6, checkpoint_every=0, checkpoint_minutes=0), progress=False)
    run.world, run.clock, run.on_step = 2, clock, clock.tick
    run.fit()
    out = capsys.readouterr().out
    assert out.count("log points are ") == 1 and "torchrun kills its workers 30 s after" in out
    monkeypatch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600")
    clock = FakeClock()
    run = TrainingRun(tiny("grace-long", max_steps=6, checkpoint_every=0, checkpoint_minutes=0), progress=False)
    run.world, run.clock, run.on_step = 2, clock, clock.tick
    run.fit()
    assert "log points are" not in capsys.readouterr().out


def checkpoint_steps(folder: Path) -> list[int]:
    return [int(p.stem.split("-")[1]) for p in folder.glob("step-*.pt")]


def test_max_minutes_ends_the_run_cleanly_inside_an_epoch(outputs, capsys):
    """A 10-minute budget, a minute per step, read at the log points (every 2 steps): the log of step 12 reads
    minute 11, the first past the budget, so the run ends there, inside epoch 0, with a validation, best.pt, a
    checkpoint, the predictions and the summary."""
    clock = FakeClock()
    run = TrainingRun(tiny("budget", checkpoint_every=0, checkpoint_minutes=0, max_minutes=10), progress=False)
    run.clock, run.on_step = clock, clock.tick
    summary = run.fit()
    assert summary["optimizer_steps"] == 12 and summary["best_val_loss"] is not None
    assert "training budget of 10 min is spent at step 12" in capsys.readouterr().out
    folder = outputs / "budget"
    assert (folder / "checkpoints" / "best.pt").exists() and (folder / "checkpoints" / "step-12.pt").exists()
    assert (folder / "predictions.parquet").exists() and (folder / "summary.json").exists()
    epochs = [r for r in metric_rows(outputs, "budget") if r["kind"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["partial"] and epochs[0]["step"] == 12 and np.isfinite(epochs[0]["val_loss"])


def test_a_finished_run_resumed_says_which_limit_ended_it_and_what_to_raise(outputs, capsys):
    """A resume of a finished run names what ended it: raising epochs goes on after a run that reached its
    length, not after one that early stopping or the max_minutes budget ended."""
    clock = FakeClock()
    run = TrainingRun(tiny("budget-said", checkpoint_every=0, checkpoint_minutes=0, max_minutes=10), progress=False)
    run.clock, run.on_step = clock, clock.tick
    run.fit()
    train(tiny("early-said", epochs=6, patience=1, lr=0.02, checkpoint_every=0), progress=False)
    capsys.readouterr()
    TrainingRun(tiny("budget-said", checkpoint_every=0, checkpoint_minutes=0, max_minutes=10, epochs=4,
                     resume=True), progress=False).close()
    TrainingRun(tiny("early-said", epochs=9, patience=1, lr=0.02, checkpoint_every=0, resume=True),
                progress=False).close()
    said = [line for line in capsys.readouterr().out.splitlines() if "had already finished" in line]
    assert len(said) == 2 and not any("raise epochs" in line for line in said), said
    assert "its training budget is spent, 11.0 min: raise max_minutes 10 (0: none) to go on" in said[0]
    assert "early stopping ended it, 1 epoch without a better val loss: raise patience 1 (0: off)" in said[1]
    TrainingRun(tiny("early-said", epochs=6, patience=1, lr=0.02, checkpoint_every=0, max_steps=5, resume=True),
                progress=False).close()
    assert "it reached its length, " in capsys.readouterr().out


def test_every_checkpoint_is_written_once(outputs, monkeypatch):
    """A run ending on a checkpoint step (max_steps 10, checkpoint_every 5) writes step-10 once, after its
    validation; a stop at an epoch's end (step 19, written there) writes nothing more."""
    from tradelib.train.runfolder import RunFolder

    written = []
    save = RunFolder.save
    monkeypatch.setattr(RunFolder, "save", lambda self, state, tag: written.append(tag) or save(self, state, tag))
    train(tiny("once", epochs=1, max_steps=10), progress=False)
    assert written.count("step-10") == 1 and written.count("step-5") == 1
    written.clear()
    run = TrainingRun(tiny("once-stopped", epochs=2), progress=False)
    run.on_step = lambda r: os.kill(os.getpid(), signal.SIGTERM) if r.step == 19 else None
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    assert run.step == 19 and written.count("step-19") == 1


@pytest.fixture(scope="module")
def short_run(outputs):
    train(tiny("short", epochs=1, max_steps=3), progress=False)
    return "short"


def test_resume_refuses_another_feature_cache(outputs, short_run, monkeypatch):
    # what a fix to the feature code does: a new code fingerprint, so a new cache key
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "feature-code-after-a-fix")
    with pytest.raises(ValueError, match=r"resume refused: .* trained on feature cache .* give cache .*: no data or "
                                         r"feature parameter differs, so the data's contents, the feature code or "
                                         r"the numpy or pandas release"):
        TrainingRun(tiny(short_run, epochs=1, resume=True), progress=False)


def test_resume_with_other_data_parameters_is_refused_naming_them_before_a_cache_is_built(outputs, short_run):
    """Resumed without the run's data parameters (the printed command followed without the original -f / -p):
    refused from the checkpoint's config, naming each parameter with both values and the command that resumes
    the run, before this run's features are built."""
    import shlex

    cfg = tiny(short_run, epochs=1, synth_bars=500, window=12, resume=True)
    with pytest.raises(ValueError) as refused:
        TrainingRun(cfg, progress=False)
    text = str(refused.value)
    assert "synth_bars was 400, now 500" in text and "window was 8, now 12" in text
    assert not cache.folder_for(cache.cache_key(cfg)).exists()  # no feature cache built for the other data
    command = text.split("The run's own settings resume it: ")[1]
    words = shlex.split(command)
    assert ["-p", "synth_bars", "400"] == words[words.index("synth_bars") - 1:][:3]
    assert words[-6:] == ["-p", "run_id", short_run, "-p", "resume", "True"]


def test_a_resume_that_changes_the_length_says_what_it_does_to_the_lr_schedule(outputs, capsys):
    """epochs or max_steps changed on resume: the schedule is fitted to the new total, and one line says so,
    with the LR at the resume step under the run's schedule and under the new one."""
    run = TrainingRun(tiny("shortened", checkpoint_every=0, log_every=1), progress=False)
    fit_until_interrupted(run, 10)
    logged = {r["step"]: r["lr"] for r in metric_rows(outputs, "shortened") if r["kind"] == "step"}
    capsys.readouterr()
    resumed = TrainingRun(tiny("shortened", epochs=1, checkpoint_every=0, log_every=1, resume=True), progress=False)
    resumed.close()
    out = capsys.readouterr().out
    lr, tr = resumed.trainer.lr, resumed.trainer
    before = lr * lr_factor(10, 3, 38, Config().min_lr_ratio)  # step 11 under the run's schedule (warm-up 3)
    after = lr * lr_factor(10, tr.warmup, 19, Config().min_lr_ratio)
    assert (tr.total_steps, tr.warmup) == (19, 1)
    assert logged[10] == pytest.approx(lr * lr_factor(9, 3, 38, Config().min_lr_ratio), rel=1e-12)
    assert (f"the resume changes the run's length (epochs 2 -> 1): its LR schedule (warm-up, cosine decay) is "
            f"fitted to 19 optimizer steps, was 38: the LR of step 11 goes from {before:.3g} to {after:.3g} "
            f"(resume with epochs 2 and max_steps 0 to keep the run's schedule)") in out
    capsys.readouterr()
    TrainingRun(tiny("shortened", checkpoint_every=0, log_every=1, resume=True), progress=False).close()
    assert "LR schedule" not in capsys.readouterr().out  # the same length: nothing said


def test_the_first_step_after_a_resume_that_changes_the_length_takes_the_new_schedules_lr(outputs):
    """The optimizer's saved state carries the LR of the run's old schedule: the resume step must take the LR
    that the refitted schedule gives (and the line above announces), and a same-length resume the very same."""
    run = TrainingRun(tiny("relength", checkpoint_every=0, log_every=1), progress=False)
    fit_until_interrupted(run, 10)
    for changes, total in (({"epochs": 3}, 57), ({}, 38)):
        resumed = TrainingRun(tiny("relength", checkpoint_every=0, log_every=1, resume=True, **changes),
                              progress=False)
        resumed.close()
        tr = resumed.trainer
        want = tr.lr * lr_factor(10, tr.warmup, total, Config().min_lr_ratio)
        assert tr.total_steps == total
        assert [g["lr"] for g in tr.opt.param_groups] == [want, want] and tr.sched.get_last_lr() == [want, want]


@pytest.mark.slow
def test_the_printed_resume_command_resumes_the_run_as_printed(outputs, reference, capsys):
    """Stopped at a step, the run prints a command with its own settings (those that differ from the defaults):
    run as printed, in a new process, it resumes the run and ends bit for bit where the uninterrupted one did."""
    import re

    ref_model, _ = reference
    run = TrainingRun(tiny("as-printed"), progress=False)
    fit_until_interrupted(run, 23)
    out = capsys.readouterr().out
    printed = re.search(r"^Resume: (.*)$", out, re.M).group(1)
    assert "notebook 03_train or papermill: the same -p NAME VALUE pairs" in out
    assert printed.startswith("python -m tradelib train -p synth_symbols 3 -p synth_bars 400 -p window 8 ")
    assert printed.endswith("-p run_id as-printed -p resume True") and "-p lr " not in printed  # defaults left out
    done = subprocess.run(printed_command(printed), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed as-printed from step-23.pt at step 23" in done.stdout
    assert_bitwise(final_model(outputs, "as-printed"), ref_model)


def test_resume_refuses_a_changed_setting_and_a_fresh_run_over_checkpoints(outputs, short_run):
    with pytest.raises(ValueError, match=r"resume refused: .*hidden was 8, now 16.*lr was 0.002, now 0.01"):
        TrainingRun(tiny(short_run, epochs=1, hidden=16, lr=0.01, resume=True), progress=False)
    with pytest.raises(ValueError, match="already has checkpoints .* pass resume=True"):
        TrainingRun(tiny(short_run, epochs=1), progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        TrainingRun(tiny("never-ran", resume=True), progress=False)
    # ended by max_steps inside its epoch: validated once all the same
    assert (outputs / short_run / "checkpoints" / "best.pt").exists()
    assert [r["partial"] for r in metric_rows(outputs, short_run) if r["kind"] == "epoch"] == [True]
    # length and bookkeeping may change: this one continues
    result = train(tiny(short_run, epochs=1, max_steps=5, log_every=1, resume=True), progress=False)
    assert result.summary["optimizer_steps"] == 5


@pytest.mark.slow
def test_early_stopping_restores_the_best_weights_and_stays_stopped_on_resume(outputs, capsys):
    cfg = tiny("early", epochs=6, patience=1, lr=0.02, checkpoint_every=0)
    first = train(cfg, progress=False)
    val = [r["val_loss"] for r in metric_rows(outputs, "early") if r["kind"] == "epoch"]
    stop = next((e + 1 for e in range(1, len(val)) if val[e] >= min(val[:e])), None)  # epochs run to the stop
    assert len(val) == stop < 6  # stopped after the first epoch that did not improve on the best
    assert "early stop after epoch" in capsys.readouterr().out
    folder = outputs / "early" / "checkpoints"
    best = torch.load(folder / "best.pt", weights_only=False)
    last = torch.load(folder / "last.pt", weights_only=False)
    final = torch.load(folder / f"step-{last['step']}.pt", weights_only=False)  # the state training ended in
    assert best["best_val"] == min(val) and last["restored_best"]
    assert_bitwise(last["model"], best["model"])
    assert not torch.equal(final["model"]["head.proj.weight"], best["model"]["head.proj.weight"])
    again = train(cfg.replace(resume=True), progress=False)  # nothing left to train: the same outputs again
    assert again.summary["optimizer_steps"] == first.summary["optimizer_steps"] == last["step"]
    assert len([r for r in metric_rows(outputs, "early") if r["kind"] == "epoch"]) == len(val)


# ---------------------------------------------------------------------------------------------------------
# non-finite losses and gradients


def poison_outputs(run: TrainingRun, bad: callable) -> None:
    """Turn the model's training outputs to NaN for the optimizer steps where bad(step being taken)."""
    def hook(module, inputs, output):
        if module.training and bad(run.step + 1):
            return output * float("nan")
        return None
    run.model.register_forward_hook(hook)


def test_nan_loss_skips_the_step_without_touching_weights_or_adam(outputs):
    run = TrainingRun(tiny("nan-loss", epochs=1, checkpoint_every=0), progress=False)
    trainer = run.trainer
    bad_steps = {3, 4, 9}
    poison_outputs(run, lambda s: s in bad_steps)
    states = {0: snapshot(run.model)}
    moments = {}
    norms = {}

    def record(t: TrainingRun) -> None:
        states[t.step] = snapshot(t.model)
        moments[t.step] = [s["exp_avg"].clone() for s in t.trainer.opt.state.values()]
        norms[t.step] = float(t.tally.norm_last)

    run.on_step = record
    run.fit()
    for s in bad_steps:  # a NaN loss gives a NaN gradient norm, and the fused step is skipped on the device
        assert not np.isfinite(norms[s])
        assert_bitwise(states[s], states[s - 1])
        assert all(torch.equal(a, b) for a, b in zip(moments[s], moments[s - 1]))
    assert not any(torch.equal(states[5][k], states[4][k]) for k in states[5] if "weight" in k)
    assert run.skipped == 3 and metric_rows(outputs, "nan-loss")[-2]["skipped_steps"] == 3
    assert adam_steps(trainer) == {19.0 - 3}  # Adam's own step count (bias correction) skips too
    assert trainer.sched.last_epoch == 19  # the LR schedule follows the optimizer-step counter
    assert all(torch.isfinite(v).all() for v in run.model.state_dict().values())
    # the logged loss is over the steps taken: NaN only for the interval (steps 3-4) where none was
    losses = {r["step"]: r["loss"] for r in metric_rows(outputs, "nan-loss") if r["kind"] == "step"}
    assert [s for s, v in losses.items() if not np.isfinite(v)] == [4]


def test_nonfinite_features_skip_exactly_the_steps_that_read_them(outputs):
    cfg = tiny("poisoned-data", epochs=1, checkpoint_every=0, dropout=0.0)
    fs = dataset.prepare(cfg, verbose=False)
    fs = dataclasses.replace(fs, X=fs.X.copy(), meta=dict(fs.meta))
    rows = np.flatnonzero(fs.split == 0)[[100, 300, 500]]
    fs.X[rows[0], 0], fs.X[rows[1], 3], fs.X[rows[2], 5] = np.nan, np.inf, -np.inf
    run = TrainingRun(cfg, fs=fs, progress=False)
    src = run.trainer.source
    order = src.ends[src.epoch(0, cfg.seed)].numpy()  # the window ends of epoch 0, in training order
    reads = lambda ends: any(((e - cfg.window < rows) & (rows <= e)).any() for e in ends)
    expected = sum(reads(order[i : i + 32]) for i in range(0, len(order), 32))
    assert 0 < expected < run.trainer.steps_per_epoch
    run.fit()
    assert run.skipped == expected
    assert adam_steps(run.trainer) == {float(run.step - expected)}
    assert all(torch.isfinite(p).all() for p in run.model.parameters())


def test_an_overflowing_loss_with_finite_gradients_is_skipped(outputs):
    trainer = TrainingRun(tiny("inf-loss", epochs=1), progress=False).trainer
    batch = trainer.source.fetch(torch.arange(16))
    before = snapshot(trainer.model)
    trainer.backward(batch, torch.tensor(16.0))
    norm, bad = trainer.update(loss=torch.tensor(float("inf")))
    assert torch.isfinite(norm) and bool(bad)
    assert_bitwise(snapshot(trainer.model), before)
    assert adam_steps(trainer) == {0.0} and trainer.sched.last_epoch == 1


def test_too_many_bad_steps_stop_with_a_message_and_the_last_good_checkpoint(outputs):
    run = TrainingRun(tiny("diverged", epochs=1, log_every=1, max_bad_steps=4), progress=False)
    poison_outputs(run, lambda s: s >= 6)  # steps 6, 7, 8, 9 fail; step-5.pt is the last checkpoint
    with pytest.raises(TrainingDiverged, match=r"at step 9: 4 optimizer steps in a row .*max_bad_steps=4.*step-5\.pt"):
        run.fit()
    folder = outputs / "diverged" / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["step-5.pt"]
    assert_bitwise(torch.load(folder / "step-5.pt", weights_only=False)["model"], snapshot(run.model))


def test_a_model_whose_output_is_nan_from_the_start_is_named_with_output_clip_and_no_checkpoint(outputs):
    run = TrainingRun(tiny("nan-from-start", epochs=1, log_every=1, max_bad_steps=3), progress=False)
    poison_outputs(run, lambda s: True)
    with pytest.raises(TrainingDiverged) as caught:
        run.fit()
    said = str(caught.value)
    assert "at step 3: 3 optimizer steps in a row had a non-finite loss, the model's output NaN or inf" in said
    assert "no checkpoint was written yet" in said and "None" not in said
    assert "output_clip" in said and "set grad_clip" not in said  # (grad_clip is on: 1.0)


def test_a_validation_loss_that_is_not_finite_stops_the_run_at_that_epoch(outputs):
    """Finite in training, NaN in eval mode: the run stops at the first validation, naming it, instead of training
    every epoch and failing on the test predictions at the end."""
    run = TrainingRun(tiny("nan-in-eval", epochs=3, checkpoint_every=0), progress=False)
    run.model.register_forward_hook(lambda module, inputs, out: None if module.training else out * float("nan"))
    with pytest.raises(TrainingFailed, match=r"stopped at step 19 \(epoch 1 of 3\): the validation loss is nan over "
                                             r"\d[\d,]* windows although the weights are finite"):
        run.fit()
    assert run.step == run.trainer.steps_per_epoch == 19
    assert not (outputs / "nan-in-eval" / "summary.json").exists()


# ---------------------------------------------------------------------------------------------------------
# gradient accumulation


def grads(model: torch.nn.Module) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def mean_loss_grads(trainer: Trainer, x, y, mask=None) -> dict:
    """Plain autograd of the mean squared error over the whole batch, on a copy of the model."""
    model = copy.deepcopy(trainer.model)
    model.zero_grad(set_to_none=True)
    pred = model.forward_dense(x) if mask is not None else model(x)
    err = (pred - y) ** 2
    (err[mask].mean() if mask is not None else err.mean()).backward()
    return grads(model)


def per_micro_mean_grads(trainer: Trainer, ids: torch.Tensor, b: int, k: int) -> dict:
    """The pitfall: each micro-batch's own mean, divided by K."""
    model = copy.deepcopy(trainer.model)
    model.zero_grad(set_to_none=True)
    for part in ids.split(b):
        x, y, mask = trainer.source.fetch(part)
        pred = model.forward_dense(x) if mask is not None else model(x)
        err = (pred - y) ** 2
        ((err[mask].mean() if mask is not None else err.mean()) / k).backward()
    return grads(model)


def close(a: dict, b: dict, tol: float = 1e-6) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=1e-4, atol=tol) for k in a)


def accumulate(trainer: Trainer, group: torch.Tensor) -> dict:
    """The trainer's own micro-steps over `group`, as Trainer.step runs them; the summed gradients."""
    trainer.accumulate(group)
    return grads(trainer.model)


def test_k_micro_batches_equal_one_batch_of_k_times_b(outputs):
    small = TrainingRun(tiny("acc-8x4", batch_size=8, grad_accum_steps=4, dropout=0.0), progress=False).trainer
    big = TrainingRun(tiny("acc-32x1", batch_size=32, grad_accum_steps=1, dropout=0.0), progress=False).trainer
    assert_bitwise(snapshot(small.model), snapshot(big.model))
    group = small.source.epoch(0, 3)[:32]
    g_small, g_big = accumulate(small, group), accumulate(big, group)
    assert close(g_small, g_big) and close(g_small, mean_loss_grads(small, *small.source.fetch(group)[:2]))
    small.update()
    big.update()
    assert close(snapshot(small.model), snapshot(big.model))


def test_the_partial_last_window_of_an_epoch_is_weighted_by_its_size(outputs):
    trainer = TrainingRun(tiny("acc-partial", batch_size=7, grad_accum_steps=3, dropout=0.0), progress=False).trainer
    order = trainer.source.epoch(0, 3)
    last = order[(trainer.steps_per_epoch - 1) * 21 :]
    assert len(last) == 16  # micro-batches of 7, 7 and 2
    true = mean_loss_grads(trainer, *trainer.source.fetch(last)[:2])
    assert close(accumulate(trainer, last), true)
    assert not close(per_micro_mean_grads(trainer, last, 7, 3), true, tol=1e-4)  # the test can tell


def test_masked_targets_are_normalised_over_the_whole_accumulated_batch(outputs):
    cfg = tiny("acc-dense", model="tcn", layers=2, window=16, dense=True, dense_chunk=32, batch_size=2,
               grad_accum_steps=3, dropout=0.0)
    fs = dataset.prepare(cfg, verbose=False)
    fs = dataclasses.replace(fs, y=fs.y.copy(), meta=dict(fs.meta))
    fs.y[np.random.default_rng(0).random(len(fs.y)) < 0.3] = np.nan  # 30% of the targets unknown
    trainer = TrainingRun(cfg, fs=fs, progress=False).trainer
    group = trainer.source.epoch(0, 3)[:6]
    counts = [int(trainer.source.count(ids)) for ids in group.split(2)]
    assert len(set(counts)) > 1, counts  # micro-batches with different numbers of valid targets
    x, y, mask = trainer.source.fetch(group)
    true = mean_loss_grads(trainer, x, y, mask)
    assert close(accumulate(trainer, group), true)
    assert not close(per_micro_mean_grads(trainer, group, 2, 3), true, tol=1e-4)


def test_a_dense_runs_mfu_counts_every_row_its_chunks_compute(outputs):
    """A dense chunk computes all its rows, known target or not; summary.json's MFU took valid targets/s x FLOPs per
    trained target, low by the share of unknown targets (the bench's and the doctor's were fixed alike)."""
    from tradelib.train.models import model_for, training_flops_per_item, training_flops_per_sample

    cfg = tiny("dense-mfu", model="tcn", layers=2, window=16, dense=True, dense_chunk=32, batch_size=2,
               peak_tflops=1.0, max_steps=12, log_every=4)
    summary = train(cfg, progress=False).summary
    model = model_for(cfg, len(dataset.prepare(cfg, verbose=False).feature_names))
    per_chunk = training_flops_per_item(model, True, cfg.dense_chunk)
    assert summary["mfu"] == pytest.approx(summary["it_per_s"] * cfg.batch_size * per_chunk / 1e12, rel=1e-9)
    valid_only = summary["samples_per_s"] * training_flops_per_sample(model, True, cfg.dense_chunk) / 1e12
    assert valid_only < 0.999 * summary["mfu"]  # the old figure: some targets of the trained rows are unknown


def test_a_step_without_a_valid_target_leaves_weights_and_adam_untouched(outputs):
    """Every target of the step masked: its gradient is zero, and AdamW would still move the weights (momentum,
    weight decay) and count a step; the update is skipped instead, not counted as non-finite."""
    from tradelib.train.models import model_for
    from tradelib.train.sources import dense_chunks

    cfg = tiny("empty-step", model="tcn", layers=2, window=16, dense=True, dense_chunk=32, batch_size=2,
               grad_accum_steps=1, dropout=0.0)
    fs = dataset.prepare(cfg, verbose=False)
    fs = dataclasses.replace(fs, y=fs.y.copy(), meta=dict(fs.meta))
    starts, _ = dense_chunks(fs, 0, cfg.dense_chunk, model_for(cfg, fs.n_features).receptive_field)
    for s in starts[[2, 3]]:
        fs.y[s : s + cfg.dense_chunk] = np.nan  # chunks 2 and 3 keep no known target
    trainer = TrainingRun(cfg, fs=fs, progress=False).trainer
    trainer.step(torch.tensor([0, 1]))  # a real step first: AdamW has moments to carry on with
    before, moments = snapshot(trainer.model), [s["exp_avg"].clone() for s in trainer.opt.state.values()]
    stats = trainer.step(torch.tensor([2, 3]))
    assert float(stats.n_valid) == 0 and not bool(stats.skipped)  # no target, nothing non-finite
    assert_bitwise(snapshot(trainer.model), before)
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, trainer.opt.state.values()))
    assert adam_steps(trainer) == {1.0} and trainer.sched.last_epoch == 2
    trainer.step(torch.tensor([0, 4]))
    assert adam_steps(trainer) == {2.0}


def test_a_resumed_runs_summary_holds_the_configuration_that_retrains_it(outputs):
    """summary.json's `config` is what `Config.from_dict` turns back into this run, resume false (true would
    resume instead of retrain); `resumed` says the run went on from a checkpoint."""
    fresh = tiny("summary-config", epochs=1, checkpoint_every=0)
    run = TrainingRun(fresh.replace(checkpoint_every=5), progress=False)
    fit_until_interrupted(run, 5)
    TrainingRun(fresh.replace(checkpoint_every=5, resume=True), progress=False).fit()
    summary = json.loads((outputs / "summary-config" / "summary.json").read_text())
    assert summary["resumed"] is True and summary["config"]["resume"] is False
    assert Config.from_dict(summary["config"]) == fresh.replace(checkpoint_every=5)
    train(fresh.replace(run_id="summary-config-fresh"), progress=False)
    summary = json.loads((outputs / "summary-config-fresh" / "summary.json").read_text())
    assert summary["resumed"] is False
    assert Config.from_dict(summary["config"]) == fresh.replace(run_id="summary-config-fresh")


def test_a_resumed_walk_forwards_summaries_hold_the_configuration_that_retrains_it(outputs):
    """The same for a walk-forward resumed (here finished, its outputs rewritten): its summary and every fold's."""
    from tradelib.train.walkforward import walk_forward

    walk = tiny("walk-config", folds=2, train_frac=0.5, val_frac=0.15, synth_bars=800, epochs=1, checkpoint_every=0)
    walk_forward(walk, progress=False)
    walk_forward(walk.replace(resume=True), progress=False)
    for folder, want in ((outputs / "walk-config", walk),
                         *((outputs / "walk-config" / f"fold-{k}", walk.replace(run_id=f"walk-config/fold-{k}"))
                           for k in range(2))):
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["resumed"] is True and Config.from_dict(summary["config"]) == want, folder


def test_the_logged_lr_is_the_rate_each_step_trained_at(outputs):
    """metrics.jsonl's `lr` at step s and train_facts.json's entry s - 1 are the rate step s's update used, as
    the optimizer held it at opt.step() and as a plain torch loop with the same LambdaLR schedule gives it."""
    run = TrainingRun(tiny("lr-logged", log_every=1, checkpoint_every=0), progress=False)
    held = []
    run.trainer.opt.register_step_pre_hook(lambda opt, args, kwargs: held.append(opt.param_groups[0]["lr"]))
    run.fit()
    tr = run.trainer
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=tr.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, tr.warmup, tr.total_steps, tr.cfg.min_lr_ratio))
    plain = []
    for _ in range(tr.total_steps):
        plain.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    logged = [r["lr"] for r in metric_rows(outputs, "lr-logged") if r["kind"] == "step"]
    facts = json.loads((outputs / "lr-logged" / "train_facts.json").read_text())["lr"]
    assert (tr.total_steps, tr.warmup) == (38, 3) and plain[:3] == pytest.approx([tr.lr / 3, tr.lr * 2 / 3, tr.lr])
    assert held == plain and logged == plain and facts == plain


@pytest.mark.slow
def test_a_whole_epoch_with_accumulation_matches_big_batches_and_steps_the_schedule_per_update(outputs):
    runs = {}
    for b, k in ((8, 4), (32, 1)):
        run = TrainingRun(tiny(f"epoch-{b}x{k}", batch_size=b, grad_accum_steps=k, epochs=1, dropout=0.0),
                          progress=False)
        run.fit()
        runs[k] = run
    assert close(snapshot(runs[4].model), snapshot(runs[1].model), tol=1e-5)
    run, t = runs[4], runs[4].trainer
    assert run.step == t.steps_per_epoch == 19  # ceil(583 / 32), not ceil(583 / 8) micro-batches
    assert t.sched.last_epoch == 19 and adam_steps(t) == {19.0}
    warmup = min(t.cfg.warmup_steps, max(1, t.total_steps // 10))
    assert t.opt.param_groups[0]["lr"] == pytest.approx(t.lr * lr_factor(19, warmup, 19, t.cfg.min_lr_ratio))


def test_micro_batches_are_counted_as_taken_when_the_last_step_is_short(outputs):
    """batches_per_epoch and it_per_s count the micro-batches fetched: an epoch's last, partial step takes fewer
    than grad_accum_steps (583 windows in steps of 3 x 16: 12 full steps, then 7 windows in 1 micro-batch)."""
    run = TrainingRun(tiny("micro-batches", grad_accum_steps=3, epochs=1, log_every=1, checkpoint_every=0),
                      progress=False)
    n = len(run.trainer.source)
    summary = run.fit()
    last = n - (run.step - 1) * 48
    assert (n, run.step, last) == (583, 13, 7)
    assert summary["batches_per_epoch"] == 12 * 3 + 1 == -(-n // 16)
    rows = [r for r in metric_rows(outputs, "micro-batches") if r["kind"] == "step"]
    # per log interval (one step here): micro-batches / windows, whatever the interval's duration
    assert rows[0]["it_per_s"] / rows[0]["samples_per_s"] == pytest.approx(3 / 48)
    assert rows[-1]["it_per_s"] / rows[-1]["samples_per_s"] == pytest.approx(1 / 7)


def test_the_warm_up_is_capped_at_a_tenth_of_the_run_as_its_help_says(outputs):
    """warmup_steps is a most: a run of T optimizer steps warms up over min(warmup_steps, max(1, T // 10)), which
    the parameter's help (the CLI's --help and the notebooks' comments) says."""
    import dataclasses as dc

    help_text = {f.name: f.metadata["help"] for f in dc.fields(Config)}["warmup_steps"]
    assert "capped at a tenth of the run's optimizer steps (at least 1)" in help_text
    for max_steps, warmup_steps, want in ((300, 50, 30), (8, 50, 1), (0, 50, 38), (300, 10, 10), (300, 0, 0)):
        run = TrainingRun(tiny("warm-cap", epochs=20, max_steps=max_steps, warmup_steps=warmup_steps), progress=False)
        run.close()
        assert run.trainer.warmup == want, (max_steps, warmup_steps, run.trainer.total_steps)


# ---------------------------------------------------------------------------------------------------------
# the loss once; the step graph and the precision chosen by `auto`


def test_training_and_validation_take_the_loss_from_masked_sse(outputs, monkeypatch):
    """masked_sse is the squared error summed over valid targets with their count; the training step's
    gradient and logged sum and the validation loss all come from it (counted here by wrapping the real
    function), so a change to the loss reaches both."""
    from tradelib.train import trainer as trainer_module

    pred, y = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.0, 2.0, 1.0])
    mask = torch.tensor([True, False, True])
    assert [float(t) for t in trainer_module.masked_sse(pred, y)] == [10.0, 3.0]
    assert [float(t) for t in trainer_module.masked_sse(pred, y, mask, torch.float64)] == [10.0, 2.0]

    tr = TrainingRun(tiny("loss-once", dropout=0.0), progress=False).trainer
    calls, real = [], trainer_module.masked_sse
    monkeypatch.setattr(trainer_module, "masked_sse", lambda *a, **k: calls.append(k.get("dtype")) or real(*a, **k))
    group = tr.source.epoch(0, 3)[: tr.global_batch]
    x, y, _ = tr.source.fetch(group)
    with torch.no_grad():
        want_sse, n = real(tr.model(x), y)
    stats = tr.step(group)
    assert calls == [None, None] and float(n) == len(group)  # one call a micro-batch
    assert torch.allclose(stats.sse, want_sse, rtol=1e-6)
    val = tr.loss(1)
    assert calls[2:] == [torch.float32]
    sse, count = real(tr.predict(tr.windows.ends(1)), tr.windows.targets(tr.windows.ends(1)))
    assert val == float(sse / count)
    monkeypatch.setattr(trainer_module, "masked_sse",  # a different loss: absolute error
                        lambda p, t, m=None, dtype=torch.float32: ((p.float() - t).abs().sum(dtype=dtype),
                                                                    torch.full((), p.numel(), dtype=dtype)))
    assert tr.loss(1) == pytest.approx(float((tr.predict(tr.windows.ends(1)) - tr.windows.targets(
        tr.windows.ends(1))).abs().mean()), rel=1e-5)


def test_auto_uses_the_step_graph_wherever_it_is_allowed(outputs, reference):
    """`auto` (the default) and `true` choose the step graph exactly where graphs_refused finds no reason, on a
    CUDA device (decided without one); `false` never; on the CPU off, with the reason, in the trainer and in
    summary.json. YAML's and papermill's booleans read as true/false."""
    from tradelib.train.models import model_for
    from tradelib.train.trainer import graphs_refused, use_step_graph

    cuda = torch.device("cuda")
    assert Config().cuda_graphs == "auto"
    models = {(m, d): model_for(Config(model=m, dropout=d, window=8), 4) for m in ("lstm", "mlp") for d in (0.0, 0.1)}
    for changes in ({}, {"grad_accum_steps": 2}, {"compile": "reduce-overhead"}, {"compile": "on"}, {"dense": True}):
        for (world, fused, model) in [(w, f, m) for w in (1, 2) for f in (True, False) for m in models.values()]:
            for mode in ("auto", "true"):
                cfg = Config(**changes, cuda_graphs=mode)
                on, why = use_step_graph(cfg, cuda, world, fused, model, cfg.compile)
                refused = graphs_refused(cuda, world, fused, model, cfg.compile)
                assert on == (refused is None) and (on or why == refused), (changes, world, fused)
            off = Config(**changes, cuda_graphs="false")
            assert use_step_graph(off, cuda, world, fused, model, off.compile)[0] is False
    default = models["lstm", 0.0]  # the default configuration, accumulating or not; torch's own dropout too
    assert use_step_graph(Config(), cuda, 1, True, default, "on")[0]
    assert use_step_graph(Config(grad_accum_steps=2), cuda, 1, True, default, "on")[0]
    assert use_step_graph(Config(dropout=0.1), cuda, 1, True, models["mlp", 0.1], "on")[0]
    assert not use_step_graph(Config(dropout=0.1), cuda, 1, True, models["lstm", 0.1], "on")[0]  # cuDNN's dropout
    # reduce-overhead's own graphs refuse the step graph only where they were made (accumulation compiles without)
    overhead = Config(compile="reduce-overhead", grad_accum_steps=2)
    assert not use_step_graph(overhead, cuda, 1, True, default, "reduce-overhead")[0]
    assert use_step_graph(overhead, cuda, 1, True, default, "on")[0]
    on, why = use_step_graph(Config(), torch.device("cpu"), 1, True, default, "off")
    assert not on and why.startswith("CUDA graphs need a CUDA device")
    summary = json.loads((outputs / "reference" / "summary.json").read_text())
    assert summary["cuda_graphs"] == "off" and summary["cuda_graphs_reason"].startswith("CUDA graphs need a CUDA")
    assert Config.from_dict({"cuda_graphs": True}).cuda_graphs == "true"
    assert Config.from_dict({"cuda_graphs": False}).cuda_graphs == "false"


def test_the_summary_and_the_report_say_which_precision_auto_chose(outputs, reference):
    """summary.json records the precision the run computed in (what `auto` chose) and whether a GradScaler scaled
    its loss; the report's configuration line says it, not the setting 'auto' alone."""
    from tradelib.report.words import precision_words, run_configuration

    summary = json.loads((outputs / "reference" / "summary.json").read_text())
    assert (summary["config"]["precision"], summary["precision"], summary["grad_scaler"]) == ("fp32", "fp32", False)
    auto = {**summary, "config": {**summary["config"], "precision": "auto"}}
    assert dict(run_configuration(auto, {}))["device"].startswith("cpu (cpu), precision fp32 (auto), compile off")
    on_a_t4 = {"precision": "fp16", "grad_scaler": True, "config": {"precision": "auto"}}
    assert precision_words(on_a_t4) == "fp16 with a GradScaler (auto)"
    assert precision_words({"config": {"precision": "auto"}}) == "auto"  # a summary written before it said


def test_precision_auto_is_bf16_where_the_card_has_it_else_fp16_and_fp32_on_the_cpu(outputs):
    from tradelib.hardware import precision_for, resolved_precision

    assert precision_for("auto", "cuda", bf16_native=True) == "bf16"
    assert precision_for("auto", "cuda", bf16_native=False) == "fp16"  # V100, T4: with a GradScaler
    assert precision_for("auto", "cpu", bf16_native=False) == "fp32"
    assert all(precision_for(p, d, n) == p for p in ("fp32", "bf16", "fp16") for d in ("cpu", "cuda")
               for n in (True, False))
    assert resolved_precision("auto", torch.device("cpu")) == "fp32"
    tr = TrainingRun(tiny("precision-cpu"), progress=False).trainer
    assert tr.precision == "fp32" and tr.scaler is None  # CPU results unchanged
    with pytest.raises(ValueError, match="precision fp16 with model lstm on the CPU: oneDNN has no fp16 LSTM"):
        TrainingRun(tiny("fp16-lstm", model="lstm", precision="fp16"), progress=False)


def test_the_summary_gives_the_whole_training_time_s_rate_beside_the_intervals_median(outputs):
    """samples_per_s is the median over log intervals, which leaves out stalls; samples_per_s_whole is the valid
    targets trained on over the whole training time, as the last metrics row counts them."""
    from tradelib import runs

    folder = train(tiny("whole", epochs=1, max_steps=4, log_every=2), progress=False).run_dir
    summary = runs.read_summary(folder)
    last = [r for r in runs.read_metrics(folder) if r["kind"] == "step"][-1]
    assert last["step"] == summary["optimizer_steps"] == 4
    assert summary["samples_per_s_whole"] == pytest.approx(last["samples"] / summary["train_time_s"], rel=1e-9)
    assert summary["samples_per_s_whole"] == pytest.approx(last["samples"] / last["elapsed_s"], rel=1e-9)
