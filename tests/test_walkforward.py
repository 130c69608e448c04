"""Walk-forward: fold splits that tile the out-of-sample span, scaling fitted per fold, stitched predictions."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tradelib import runs
from tradelib.config import Config
from tradelib.data import cache, dataset
from tradelib.data.dataset import features_of
from tradelib.data.features import feature_makers, fit_robust
from tradelib.report import backtest, metrics, report, tables, words
from tradelib.report.inputs import ReportSettings, load_featureset, load_inputs
from tradelib.train.run import TrainingRun, train
from tradelib.train.walkforward import walk_forward

from .test_features import clean_market

BAR = 300 * 10**9
FOLDS = dict(window=16, horizon=2, folds=3, train_frac=0.4, val_frac=0.1)
# a tiny, fast walk-forward run: 3 symbols x 2,500 bars, an MLP, a few steps per fold
WF = dict(synth_symbols=3, synth_bars=2500, window=8, hidden=8, layers=1, model="mlp", batch_size=64, epochs=1,
          max_steps=6, log_every=2, device="cpu", compile="off", precision="fp32", seed=5, warmup_steps=1,
          folds=3, train_frac=0.4, val_frac=0.1)


@pytest.fixture(scope="module")
def clean():
    return clean_market(n_symbols=4, n_bars=1500)


@pytest.mark.parametrize("window", ["expanding", "rolling"])
def test_each_folds_test_period_follows_its_training_and_the_test_periods_tile(clean, window):
    cfg = Config(**FOLDS, fold_window=window)
    sets = [features_of(clean, cfg, fold=k) for k in range(3)]
    ts = sets[0].timestamp
    single = features_of(clean, Config(window=16, horizon=2, train_frac=0.4, val_frac=0.1))
    gap = (cfg.horizon + cfg.window) * BAR  # the purge, in bars of each symbol: at least this much time
    cuts = [fs.meta["splits"] for fs in sets]
    for k, fs in enumerate(sets):
        t = {s: ts[fs.split == s] for s in (0, 1, 2)}
        assert t[0].max() < t[1].min() and t[1].max() < t[2].min()  # train, then validation, then test
        assert t[1].min() - t[0].max() >= gap and t[2].min() - t[1].max() >= gap  # purged at each boundary
        assert cuts[k]["val_end"] < t[2].min() and t[2].max() <= cuts[k]["test_end"]
        assert t[0].max() <= cuts[k]["train_end"] < cuts[k]["val_end"]
        if window == "rolling" and k > 0:
            assert t[0].min() > cuts[k]["train_start"] > ts.min()
        else:
            assert t[0].min() == ts.min()
    # fold 0 is the single split; each test period starts where the previous one ended; the last ends the data
    assert cuts[0]["train_end"] == single.meta["splits"]["train_end"]
    assert cuts[0]["val_end"] == single.meta["splits"]["val_end"]
    assert all(cuts[k + 1]["val_end"] == cuts[k]["test_end"] for k in range(2))
    assert cuts[-1]["test_end"] == ts.max()
    periods = [(ts > c["val_end"]) & (ts <= c["test_end"]) for c in cuts]
    assert (sum(p.astype(int) for p in periods) == (ts > cuts[0]["val_end"])).all()  # no overlap, no hole
    tested = [set(zip(ts[fs.split == 2], fs.symbol_id[fs.split == 2])) for fs in sets]
    assert not (tested[0] & tested[1]) and not (tested[1] & tested[2]) and not (tested[0] & tested[2])
    if window == "rolling":  # the training window keeps the first fold's share of the rows
        sizes = [int((fs.split == 0).sum()) for fs in sets]
        assert max(sizes) - min(sizes) < 0.02 * sizes[0]


def test_each_fold_is_scaled_on_its_own_training_rows_only(clean):
    """The stored median and scale of every feature equal a fit on that fold's training rows, and differ by
    fold; moving only rows after a fold's training period changes nothing of that fold's scaling. (The build
    fits the unscaled features as its shards hold them, float32: so does the fit here.)"""
    cfg = Config(**FOLDS)
    sets = [features_of(clean, cfg, fold=k) for k in range(3)]
    makers = feature_makers(clean, sets[0].segment, "UTC")
    for fs in sets:
        for j, name in enumerate(fs.feature_names):
            med, scale = fit_robust(makers[name]()[fs.split == 0].astype(np.float32).astype(np.float64))
            assert fs.meta["norm"]["median"][j] == med and fs.meta["norm"]["scale"][j] == scale
    assert sets[0].meta["norm"] != sets[1].meta["norm"] != sets[2].meta["norm"]
    late = clean.copy()
    after = sets[1].timestamp > sets[1].meta["splits"]["train_end"]
    late.loc[after, "volume"] *= 1000  # only rows after fold 1's training period move
    assert features_of(late, cfg, fold=1).meta["norm"] == sets[1].meta["norm"]
    assert features_of(late, cfg, fold=2).meta["norm"] != sets[2].meta["norm"]


def test_one_fold_is_the_single_split_and_the_cache_keys_on_the_fold(clean):
    plain = features_of(clean, Config(window=16))
    one = features_of(clean, Config(window=16, folds=1, fold_window="rolling"))
    assert (plain.split == one.split).all() and plain.meta["splits"] == one.meta["splits"]
    assert plain.meta["feature_config"] == one.meta["feature_config"]
    base = Config(synth_symbols=3, synth_bars=600)
    assert cache.cache_key(base) == cache.cache_key(base.replace(folds=1, fold_window="rolling"))
    three = base.replace(folds=3)
    keys = {cache.cache_key(three, k) for k in range(3)} | {cache.cache_key(base)}
    assert len(keys) == 4 and cache.cache_key(three.replace(fold_window="rolling"), 1) not in keys
    with pytest.raises(ValueError, match="fold 3 does not exist"):
        features_of(clean, Config(**FOLDS), fold=3)
    with pytest.raises(ValueError, match="walk-forward fold 0 of 40: the test split holds no window of 16 bars"):
        features_of(clean, Config(**{**FOLDS, "folds": 40}))


def test_a_run_starts_from_the_weights_it_is_given(tiny_cfg, tiny_fs):
    cfg = tiny_cfg.replace(run_id="warm", model="mlp")
    donor = TrainingRun(cfg.replace(run_id="donor", seed=9), tiny_fs, progress=False)
    given = {k: v + 1.0 for k, v in donor.model.state_dict().items()}
    donor.close()
    run = TrainingRun(cfg, tiny_fs, progress=False, init_state=given)
    try:
        assert all(torch.equal(v, given[k]) for k, v in run.model.state_dict().items())
    finally:
        run.close()


@pytest.fixture(scope="module")
def outputs(module_outputs):
    """One outputs/ for the whole module (overriding conftest's folder per test): the walk-forward is shared."""
    return module_outputs


@pytest.fixture(scope="module")
def walked(outputs):
    return walk_forward(Config(**WF, run_id="wf", fold_init="warm"), progress=False)


def test_stitched_predictions_are_the_folds_predictions_in_their_test_periods(walked):
    top = walked.run_dir
    stitched = runs.read_predictions(top)
    folds = walked.summary["folds"]
    assert [f["run_id"] for f in folds] == [f"wf/fold-{k}" for k in range(3)]
    per = [runs.read_predictions(top / f"fold-{k}") for k in range(3)]
    cols = ["row", "timestamp", "symbol", "prediction", "target", "ret_next"]
    pd.testing.assert_frame_equal(stitched[cols], pd.concat(per, ignore_index=True)[cols])
    assert stitched["fold"].tolist() == [k for k, p in enumerate(per) for _ in range(len(p))]
    assert not stitched.duplicated(["timestamp", "symbol"]).any()
    for k, f in enumerate(folds):
        when = pd.to_datetime(stitched.loc[stitched["fold"] == k, "timestamp"], utc=True)
        assert when.min() > pd.Timestamp(f["test_period_start"]) and when.max() <= pd.Timestamp(f["test_end"])
        assert pd.Timestamp(f["train_end"]) < pd.Timestamp(f["val_end"]) < when.min()
    assert folds[0]["norm_median"] != folds[1]["norm_median"] != folds[2]["norm_median"]
    # the summary's named ICs are the stitched predictions', each fold's its own rows'
    ics = metrics.named_ics(stitched, walked.summary["ic_lag"])
    assert walked.summary["pooled_ic"] == ics["pooled_ic"] and walked.summary["test_rows"] == len(stitched)
    assert folds[1]["pooled_ic"] == metrics.named_ics(per[1], walked.summary["ic_lag"])["pooled_ic"]
    steps = [r["step"] for r in runs.read_metrics(top) if r["kind"] == "step"]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) and steps[-1] == 18
    shown = tables.folds_table(folds)  # 03's table of the folds
    assert shown["fold"].tolist() == ["0", "1", "2"] and shown["pooled IC"][1] == f"{folds[1]['pooled_ic']:.4f}"
    start = "the start" if folds[0]["train_start"] is None else pd.Timestamp(folds[0]["train_start"]).strftime(
        "%Y-%m-%d %H:%M")  # an expanding window's first fold trains from the data's start
    assert shown["trained on (UTC)"][0] == f"{start} to {pd.Timestamp(folds[0]['train_end']):%Y-%m-%d %H:%M}"
    assert shown["windows (train / test)"][2] == f"{folds[2]['train_windows']:,} / {folds[2]['test_windows']:,}"


def test_the_ridge_baseline_is_refitted_on_each_folds_training_rows(walked):
    stitched = runs.read_predictions(walked.run_dir)
    for k in range(3):
        fs = dataset.prepare(Config(**WF), verbose=False, fold=k)
        train = (fs.split == 0) & np.isfinite(fs.y)
        X = np.c_[np.ones(train.sum()), fs.X[train].astype(np.float64)]
        coef = np.linalg.solve(X.T @ X + np.diag([0.0] + [1.0] * fs.n_features), X.T @ fs.y[train])
        mine = stitched[stitched["fold"] == k]
        expected = np.c_[np.ones(len(mine)), fs.X[mine["row"]].astype(np.float64)] @ coef
        np.testing.assert_allclose(mine["ridge"], expected, rtol=1e-6, atol=1e-9)


def test_warm_folds_continue_from_the_previous_folds_weights(walked):
    """Fold 1 of the warm walk-forward equals a run of fold 1 started from fold 0's final weights, bit for bit."""
    top = walked.run_dir
    fold0 = torch.load(top / "fold-0" / "checkpoints" / "last.pt", weights_only=False)["model"]
    fs1 = dataset.prepare(Config(**WF), verbose=False, fold=1)
    again = train(Config(**WF, run_id="again", fold_init="warm"), fs=fs1, progress=False, init_state=fold0)
    fold1 = torch.load(top / "fold-1" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(v, fold1[k]) for k, v in again.model.state_dict().items())
    scratch = train(Config(**WF, run_id="scratch"), fs=fs1, progress=False)
    assert not all(torch.equal(v, fold1[k]) for k, v in scratch.model.state_dict().items())


def test_the_report_has_every_fold_and_all_of_them(walked):
    top = walked.run_dir
    inputs = load_inputs(top, ReportSettings.of(), fs=load_featureset(top))
    rep = report.build_report(top, inputs=inputs)
    table = pd.DataFrame(rep["folds"]["table"])
    assert table["fold"].tolist() == ["0", "1", "2", "all"] and rep["folds"]["n_folds"] == 3
    stitched = inputs.predictions
    for k in range(3):
        mine = stitched[stitched["fold"] == k]
        row = table.iloc[k]
        assert row["test_rows"] == len(mine)
        assert row["pooled_ic"] == pytest.approx(metrics.named_ics(mine, rep["summary"]["ic_lag"])["pooled_ic"])
        s = rep["summary"]
        book = backtest.backtest(mine, cost_bps=s["cost_bps"], trade_delay=s["trade_delay"],
                                 periods_per_year=s["periods_per_year"], mode=s["position_mode"])
        net, pnl = book.stats["net"], book.pnl
        assert row["net_sharpe"] == pytest.approx(net["sharpe"])
        beta = np.cov(pnl["net"], pnl["buy_hold"])[0, 1] / np.var(pnl["buy_hold"], ddof=1)  # the fold's own market
        alpha = (pnl["net"].mean() - beta * pnl["buy_hold"].mean()) * s["periods_per_year"]
        assert (row["market_beta"], row["market_alpha"]) == pytest.approx((beta, alpha), rel=1e-9)
        inf = net["sharpe_inference"]  # each fold's Sharpe with its own error bars
        assert (row["net_sharpe_ci_low"], row["net_sharpe_ci_high"]) == pytest.approx((inf["ci_low"], inf["ci_high"]))
    assert table.iloc[3]["net_sharpe"] == pytest.approx(rep["summary"]["net_sharpe"])
    assert [table.iloc[3]["net_sharpe_ci_low"], table.iloc[3]["net_sharpe_ci_high"]] == rep["summary"]["net_sharpe_ci"]
    assert rep["conventions"]["splits"]["method"] == "walk-forward"
    assert "ridge" in set(inputs.predictors["predictor"])  # the per-fold ridge, though no single feature set
    text = words.folds_markdown(rep)
    assert "3 folds" in text and text.count("\n| ") == 5  # header + 3 folds + all
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    assert [r[-2] for r in rows] == ["beta"] + [f"{b:+.2f}" for b in table["market_beta"]]
    assert [r[-3] for r in rows[1:]] == [f"{r.net_sharpe:.2f} ({r.net_sharpe_ci_low:.2f} to {r.net_sharpe_ci_high:.2f})"
                                         for r in table.itertuples()]  # each fold's net Sharpe with its interval
    width = sum(max(len(r[i]) for r in rows) * 7.8 + 16 for i in range(len(rows[0])))  # as test_notebooks reads
    assert width <= 1300, round(width)  # a 1400 px page


def test_resume_continues_the_folds_with_checkpoints_and_trains_the_rest(walked):
    top = walked.run_dir
    before = runs.read_predictions(top)
    shutil.rmtree(top / "fold-2")
    again = walk_forward(Config(**WF, run_id="wf", fold_init="warm", resume=True), progress=False)
    after = runs.read_predictions(top)
    pd.testing.assert_frame_equal(before, after)  # folds 0, 1 resumed at their end; fold 2 trained the same
    assert again.summary["folds"][2]["optimizer_steps"] == 6
    with pytest.raises(ValueError, match="already has checkpoints"):
        walk_forward(Config(**WF, run_id="wf"), progress=False)


def test_a_stop_between_folds_prints_the_resume_command_that_finishes_the_walk(walked, outputs, monkeypatch, capsys):
    """SIGTERM while fold 1 built its features said only "stopped by SIGTERM": no resume command, though fold 0
    was kept. Now the command is printed, and run as printed it ends where the uninterrupted walk-forward did."""
    import tradelib.train.run as run_module
    from tradelib.cli import main
    from tradelib.train.stops import StopRequested

    build, at = run_module.prepare_features, [0]

    def stopped_at_fold(cfg, env, sharded=False, fold=0):
        if fold == at[0]:
            raise StopRequested(signal.SIGTERM)
        return build(cfg, env, sharded, fold)

    monkeypatch.setattr(run_module, "prepare_features", stopped_at_fold)
    with pytest.raises(StopRequested) as stop:  # at fold 0: nothing kept, no folder left, no command
        walk_forward(Config(**WF, run_id="wf-stop"), progress=False)
    assert not stop.value.resume_said and not (outputs / "wf-stop").exists()
    at[0] = 1
    with pytest.raises(StopRequested) as stop:
        walk_forward(Config(**WF, run_id="wf-stop", fold_init="warm"), progress=False)
    assert stop.value.resume_said
    said = capsys.readouterr().out
    assert "stopped by SIGTERM: walk-forward wf-stop before fold 2 of 3 trained; the 1 fold(s) before are kept" in said
    command = re.search(r"^Resume: python -m tradelib (.*)$", said, re.M).group(1)
    assert "-p folds 3" in command and "-p fold_init warm" in command
    assert not (outputs / "wf-stop" / "fold-1").exists()
    monkeypatch.setattr(run_module, "prepare_features", build)
    assert main(shlex.split(command)) == 0
    pd.testing.assert_frame_equal(runs.read_predictions(outputs / "wf-stop"), runs.read_predictions(walked.run_dir))


def test_a_fold_killed_between_best_pt_and_its_first_step_file_is_trained_again(walked, outputs):
    """A kill after a fold's first best.pt and before its step file left only best.pt: the resume took it for a
    checkpoint and failed ("no checkpoint ... start it again without resume"), and a fresh start was refused for
    it ("already has checkpoints"). best.pt is no training state: the fold is trained again, as it would have been."""
    top = outputs / "wf-best"
    shutil.copytree(walked.run_dir, top)
    for name in ("summary.json", "predictions.parquet", "metrics.jsonl"):
        (top / name).unlink()
    shutil.rmtree(top / "fold-2")
    (top / "fold-2" / "checkpoints").mkdir(parents=True)
    shutil.copy(walked.run_dir / "fold-1" / "checkpoints" / "best.pt", top / "fold-2" / "checkpoints" / "best.pt")
    walk_forward(Config(**WF, run_id="wf-best", fold_init="warm", resume=True), progress=False)
    pd.testing.assert_frame_equal(runs.read_predictions(top), runs.read_predictions(walked.run_dir))
    single = outputs / "single-best" / "checkpoints"  # a single run left so starts again, its stale best.pt gone
    single.mkdir(parents=True)
    (single / "best.pt").write_bytes(b"not this run's weights")
    train(Config(**{**WF, "folds": 1, "patience": 1}, run_id="single-best"), progress=False)
    assert (single / "best.pt").read_bytes() != b"not this run's weights"


def test_a_stop_during_a_folds_last_validation_stops_the_walk_after_that_fold(outputs, monkeypatch, capsys):
    """SIGTERM during a fold's last step or its final validation said "stopping after this optimizer step", found
    no step left to stop at, and was lost: the walk-forward trained every later fold and ended with exit 0. The
    fold finishes, then the walk stops with its resume command."""
    from tradelib.train.stops import StopRequested

    validate = TrainingRun.validate

    def signalled(run):
        if run.run_id.endswith("fold-0"):
            run.stop.requested = signal.SIGTERM  # what StopRequests' handler records
        return validate(run)

    monkeypatch.setattr(TrainingRun, "validate", signalled)
    with pytest.raises(StopRequested) as stop:
        walk_forward(Config(**WF, run_id="wf-late"), progress=False)
    assert stop.value.signum == signal.SIGTERM and stop.value.resume_said
    assert "walk-forward wf-late before fold 2 of 3 trained" in capsys.readouterr().out
    assert (outputs / "wf-late" / "fold-0" / "summary.json").exists() and not (outputs / "wf-late" / "fold-1").exists()


def test_a_resume_removes_what_a_killed_results_write_left(walked, outputs, capsys):
    """A SIGKILL while the stitched predictions (or a fold's) were written left `.predictions.parquet.<pid>.<ns>.tmp`
    in the run folder for good (only checkpoints/ was swept); the resume that holds the folder now deletes those of
    dead processes, and a live writer's stays."""
    top = outputs / "wf-litter"
    shutil.copytree(walked.run_dir, top)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = [top / f".predictions.parquet.{dead.pid}.1.tmp", top / "fold-1" / f".summary.json.{dead.pid}.2.tmp"]
    live = top / f".summary.json.{os.getpid()}.3.tmp"
    for p in (*left, live):
        p.write_bytes(b"partial")
    walk_forward(Config(**WF, run_id="wf-litter", fold_init="warm", resume=True), progress=False)
    assert not any(p.exists() for p in left) and live.exists()
    out = capsys.readouterr().out
    assert f"removed 1 unfinished file(s) of an earlier, killed write in {top}\n" in out
    assert f"removed 1 unfinished file(s) of an earlier, killed write in {top / 'fold-1'}\n" in out


def test_a_resume_with_other_settings_is_refused_before_a_fold_builds_its_features(walked, outputs):
    """The README: a resume that would change the training is refused before any feature cache is built. A
    walk-forward built the fold's cache first (on real data, minutes), then refused."""
    caches = set((outputs / "cache").iterdir())
    with pytest.raises(ValueError, match="resume refused: .*fold-0.* window was 8, now 12"):
        walk_forward(Config(**{**WF, "window": 12}, run_id="wf", fold_init="warm", resume=True), progress=False)
    assert set((outputs / "cache").iterdir()) == caches


def test_a_single_split_run_is_refused_in_a_walk_forwards_folder(walked, outputs):
    """`train -p run_id WF` without its folds (a resume too) wrote a single run's results over the stitched ones."""
    top = outputs / "wf-single"
    shutil.copytree(walked.run_dir, top)
    before = {p.name: p.read_bytes() for p in top.iterdir() if p.is_file() and p.name != ".lock"}
    for resume in (False, True):
        with pytest.raises(ValueError, match=r"run 'wf-single' is a walk-forward \(fold-0, fold-1, fold-2 in .*"
                                             r"\(-p folds 3\)"):
            train(Config(**{**WF, "folds": 1}, run_id="wf-single", resume=resume), progress=False)
    assert {p.name: p.read_bytes() for p in top.iterdir() if p.is_file() and p.name != ".lock"} == before
    assert not (top / "checkpoints").exists()


@pytest.mark.slow
def test_two_ranks_walk_the_folds_like_one_process(outputs):
    """`tradelib train -p n_gpus 2 -p folds 2`: torchrun, every rank walks the folds in one process group; each
    fold's weights match one process with the same global batch, and rank 0 alone writes."""
    base = {**WF, "folds": 2, "max_steps": 3, "fold_init": "warm"}
    two = {**base, "batch_size": 16, "grad_accum_steps": 2, "n_gpus": 2, "run_id": "ddp-wf"}
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    args = [a for k, v in two.items() for a in ("-p", k, str(v))]
    res = subprocess.run([sys.executable, "-m", "tradelib", "train", *args], env=env, capture_output=True, text=True,
                         timeout=300)  # a hang fails the test, never blocks the suite
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert res.stdout.count("walk-forward: 2 folds") == 1 and res.stdout.count("done: ") == 2
    folder = outputs / "ddp-wf"
    one = walk_forward(Config(**{**base, "batch_size": 32, "grad_accum_steps": 2, "run_id": "one-wf"}), progress=False)
    for k in range(2):
        ddp = torch.load(folder / f"fold-{k}" / "checkpoints" / "last.pt", weights_only=False)["model"]
        single = torch.load(one.run_dir / f"fold-{k}" / "checkpoints" / "last.pt", weights_only=False)["model"]
        for name, v in single.items():
            assert torch.allclose(ddp[name], v, rtol=1e-5, atol=1e-6), (k, name)
    summary = runs.read_summary(folder)
    assert summary["world_size"] == 2 and len(summary["folds"]) == 2
    assert len(runs.read_predictions(folder)) == len(runs.read_predictions(one.run_dir))


def test_a_streamed_walk_forward_is_the_resident_one(walked):
    """Every fold trained and evaluated through streamed data (blocks of 500 rows, all of them resident at once)
    gives the resident walk-forward's predictions bit for bit: the two combine."""
    streamed = walk_forward(Config(**WF, run_id="wf-stream", fold_init="warm", loader="stream",
                                   stream_block_rows=500), progress=False)
    a, b = runs.read_predictions(walked.run_dir), runs.read_predictions(streamed.run_dir)
    pd.testing.assert_frame_equal(a, b)
    assert all(f["loader"] == "stream" for f in (runs.read_summary(streamed.run_dir / f"fold-{k}") for k in range(3)))


@pytest.mark.slow
def test_two_sharded_ranks_walk_the_folds(outputs):
    """`-p shard_data True` with 2 ranks and 2 folds: each rank maps only its shards of each fold's cache, and
    the stitched predictions cover exactly the test windows one process predicts, fold by fold, with the same
    per-fold ridge (rank 0 reads every row of the fold's cache)."""
    base = {**WF, "folds": 2, "max_steps": 3, "shard_rows": 2500, "data_seed": 8}  # caches of its own: 3 shards
    two = {**base, "batch_size": 16, "n_gpus": 2, "shard_data": True, "run_id": "sharded-wf"}
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    args = [a for k, v in two.items() for a in ("-p", k, str(v))]
    res = subprocess.run([sys.executable, "-m", "tradelib", "train", *args], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    held = re.findall(r"holds its own symbols' rows \(this one ([\d,]+) of ([\d,]+)\)", res.stdout)
    assert len(held) == 2 and all(int(a.replace(",", "")) < int(b.replace(",", "")) for a, b in held)  # rank 0's part
    one = walk_forward(Config(**{**base, "run_id": "one-sharded-wf"}), progress=False)
    a, b = runs.read_predictions(outputs / "sharded-wf"), runs.read_predictions(one.run_dir)
    cols = ["row", "fold", "timestamp", "symbol", "target", "ridge"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert all(runs.read_summary(outputs / "sharded-wf" / f"fold-{k}")["shard_data"] for k in range(2))


def test_04s_first_run_trains_with_the_parameters_papermill_gave_it(outputs, capsys):
    """`papermill 04_report.ipynb out.ipynb -f params/tiny.yaml` on a fresh clone: 04 ignores the training
    parameters as its own, but the run it trains first takes them (it trained the defaults: 1,926 steps on 2 cores);
    with none given, 03_train's defaults."""
    from tradelib.train.walkforward import first_run

    given = {"synth_symbols": 3, "synth_bars": 1500, "window": 16, "hidden": 8, "max_steps": 4, "device": "cpu",
             "compile": "off", "cost_bps": 2.0}
    ns = {**given, "unrelated": 1, "In": ["import x", "# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in
                                                                                   given.items())]}
    run = first_run(ns)
    config = runs.read_summary(run)["config"]
    assert {k: config[k] for k in given} == given
    assert "training one as 03_train would, with the parameters given (synth_symbols, synth_bars" in \
        capsys.readouterr().out


def test_04s_first_run_in_jupyterlab_trains_with_the_values_set_in_its_cells(capsys, monkeypatch):
    """04 opened in JupyterLab on a fresh clone: nothing is injected, the researcher writes the training values in
    its parameters cell; the run it trains first takes them (it trained the defaults, 1,926 steps on 2 cores, with
    the cell's values silently dropped); 04's own report knobs are left as they are."""
    from tradelib.config import declared_parameters
    from tradelib.train import walkforward

    trained = []
    monkeypatch.setattr(walkforward, "train_or_walk", lambda cfg: trained.append(cfg) or Path("run"))
    given = {"synth_symbols": 3, "synth_bars": 1500, "window": 16, "hidden": 8, "max_steps": 4, "device": "cpu",
             "compile": "off"}
    own = {name: Config().to_dict()[name] for name in declared_parameters("04_report")}  # its parameters cell
    ns = {**own, **given, "unrelated": 1, "In": ["", "run_id: str = ''\n" + "\n".join(f"{k} = {v!r}" for k, v in
                                                                                       given.items())]}
    walkforward.first_run(ns)
    assert {k: getattr(trained[0], k) for k in given} == given
    said = capsys.readouterr().out
    assert "with the parameters given (synth_symbols, synth_bars, window, hidden, max_steps, device, compile)" in said
