"""Walk-forward: one model per fold, each trained on its fold's past and tested on the period that follows.

With `folds` > 1 the out-of-sample span is cut into that many test periods (`features.fold_bounds`). Fold k
trains on its own window (`fold_window`: expanding from the first row, or rolling at the first fold's
length) with features scaled on those rows only (its own feature cache), validates and early-stops on the
period before its test period, purged at each boundary, and predicts its test period. With `fold_init` warm
a fold starts from the previous fold's final weights; with scratch, from new ones. The run folder holds a
normal run folder per fold and, at its top, what every tool reads of a run:

    outputs/<run_id>/
      fold-0/ .. fold-<K-1>/   normal run folders (metrics.jsonl, checkpoints/, predictions.parquet, summary.json)
      predictions.parquet      the folds' test predictions stitched in fold order, with `fold` and `ridge` (the
                               ridge baseline fitted on that fold's training rows)
      metrics.jsonl            the folds' rows one after another, steps and epochs counted across folds, `fold`
      summary.json             throughput (median over folds), the named ICs of the stitched predictions, and
                               `folds`: one entry per fold (periods, windows, steps, its own named ICs)

`resume=True` continues every fold that has checkpoints (a finished one only rewrites its outputs) and
trains the rest.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tradelib import runs
from tradelib.config import Config, declared_parameters, injected_parameters, resume_command, run_market_zone
from tradelib.data.features import FeatureSet
from tradelib.distributed import dist_env, launch_distributed, needs_launch
from tradelib.paths import outputs_dir
from tradelib.report import metrics
from tradelib.report.tables import minute
from tradelib.train.models import check_model
from tradelib.train.run import RunResult, train, train_or_launch
from tradelib.train.runfolder import say_removed
from tradelib.train.stops import StopRequested, stopped_by

# summary.json figures of a walk-forward: the median over folds, the sum, or the largest
MEDIAN_OVER_FOLDS = ("samples_per_s", "samples_per_s_whole", "it_per_s", "data_wait_share", "gpu_util", "mfu",
                     "epoch_time_s")
SUM_OVER_FOLDS = ("train_time_s", "optimizer_steps", "skipped_steps", "test_windows")
MAX_OVER_FOLDS = ("peak_mem_bytes", "gpu_mem_used_max_bytes", "train_windows")


@dataclass
class FoldResult:
    fold: int
    run: RunResult


def first_run(ns: dict) -> Path:
    """The run 04_report trains when outputs/ holds none (a fresh clone): 03_train's, with every Config parameter
    papermill gave the notebook (its globals() `ns`), the training ones 04 itself ignores included, so that
    `papermill 04_report.ipynb out.ipynb -f params/tiny.yaml` trains tiny's run, not the defaults' (minutes). In
    JupyterLab nothing is injected: the Config parameters a researcher set in the notebook's cells that 04 does
    not declare (its own are report knobs) are the ones given."""
    names = {f.name for f in dataclasses.fields(Config)}
    own = set(declared_parameters("04_report"))
    typed = [n for n in ns if n in names and n not in own]
    given = {n: ns[n] for n in dict.fromkeys([*injected_parameters(ns), *typed]) if n in names}
    cfg = Config.from_dict(given, source="04_report parameters")
    said = f", with the parameters given ({', '.join(given)})" if given else ""
    print(f"no run under outputs/ yet: training one as 03_train would{said}", flush=True)
    return train_or_walk(cfg)


def train_or_walk(cfg: Config) -> Path:
    """What `tradelib train` and 03_train call: one run (`train.train_or_launch`), or with `folds` > 1 the
    walk-forward (under torchrun when `n_gpus` > 1: every rank walks the folds). Returns the run folder."""
    check_model(cfg)  # before any run folder, feature build or launch
    if cfg.folds <= 1:
        return train_or_launch(cfg)
    if needs_launch(cfg):
        return launch_distributed(cfg)
    return walk_forward(cfg).run_dir


def walk_forward(cfg: Config, progress: bool = True) -> RunResult:
    """Train every fold in order, then stitch their test predictions and write the run's top-level files.
    Returns the run (its summary, the last fold's model and feature set)."""
    env = dist_env()
    if cfg.resume and not cfg.run_id:
        raise ValueError(f"resume=True needs the run_id of the walk-forward to continue (the stop printed it)"
                         f"{runs.unfinished_hint()}")
    if env.world > 1 and not cfg.run_id:
        raise ValueError("a walk-forward under torchrun needs run_id (tradelib train -p n_gpus N sets one)")
    run_id = cfg.run_id or runs.new_run_id()
    top = runs.run_path(run_id)
    created = not top.exists()
    top.mkdir(parents=True, exist_ok=True)
    lock = runs.lock_run(top) if env.main else None  # the folds lock their own folders
    folds: list[FoldResult] = []
    try:
        if env.main and any((top / "checkpoints").glob("*.pt")):
            raise ValueError(f"run {run_id!r} is a single-split run ({top / 'checkpoints'}): choose another run_id "
                             f"for a walk-forward")
        if env.main:
            say_removed(top)
        for k in range(cfg.folds):
            folds.append(train_fold(cfg, run_id, k, folds[-1] if folds else None, progress))
            if folds[-1].run.stopped and k < cfg.folds - 1:  # asked during the fold's last step: it finished first
                raise StopRequested(folds[-1].run.stopped)
        if not env.main:
            return folds[-1].run
        summary = write_outputs(cfg.replace(run_id=run_id), top, folds)
        print(fold_lines(summary))
        return RunResult(top, summary, folds[-1].run.model, folds[-1].run.fs)
    except BaseException as exc:
        stop = isinstance(exc, KeyboardInterrupt) and not getattr(exc, "resume_said", False)
        if stop and env.main and runs.has_checkpoints(top):
            say_resume(exc, cfg, run_id, len(folds))
        if created:  # a fold that failed to start removed its own folder: this one may be empty now
            runs.remove_if_unused(top, lock)
        raise
    finally:
        if lock is not None:
            lock.release()


def say_resume(exc: KeyboardInterrupt, cfg: Config, run_id: str, done: int) -> None:
    """The resume command of a walk-forward stopped outside a fold's training (which prints its own): between two
    folds (the next one's feature build, its setup) or while the stitched results were written. A stop there said
    only "stopped by SIGTERM", though the folds before it are kept and a resume goes on from them."""
    signum = getattr(exc, "signum", signal.SIGINT)
    where = (f"before fold {done + 1} of {cfg.folds} trained" if done < cfg.folds else
             "while its stitched results were written")
    print(f"\n{stopped_by(signum)}: walk-forward {run_id} {where}; the {done} fold(s) before are kept.\n"
          f"Resume: {resume_command(cfg, run_id)}", flush=True)
    exc.resume_said = True


def train_fold(cfg: Config, run_id: str, k: int, previous: FoldResult | None, progress: bool) -> FoldResult:
    """Fold k: a normal run in outputs/<run_id>/fold-k/ on the fold's feature set (scaled on its training rows;
    with shard_data under torchrun, this rank's shards of it), which the run builds itself: a resume's settings
    are checked against the fold's checkpoint first, not after a feature build they refuse."""
    env = dist_env()
    fid = f"{run_id}/fold-{k}"
    resume = cfg.resume and runs.has_checkpoints(outputs_dir() / fid)
    if env.main:
        print(f"\nwalk-forward fold {k + 1} of {cfg.folds} ({cfg.fold_window} training window, "
              f"{cfg.fold_init} start){': resuming' if resume else ''}", flush=True)
    init = None
    if cfg.fold_init == "warm" and previous is not None and not resume:
        init = {name: t.detach().clone() for name, t in previous.run.model.state_dict().items()}
    # under torchrun the ranks keep one process group through all the folds and leave it after the last one
    return FoldResult(k, train(cfg.replace(run_id=fid, resume=resume), progress=progress, init_state=init,
                               leave_group=k == cfg.folds - 1, walk=run_id, fold=k))


def stitched_predictions(folds: list[FoldResult]) -> pd.DataFrame:
    """The folds' test predictions one after another, with their `fold` and `ridge`: a ridge regression on
    the same features, fitted on that fold's training rows (the baseline the report sets beside the model)."""
    frames = []
    for f in folds:
        df = runs.read_predictions(f.run.run_dir)
        fs: FeatureSet = f.run.fs
        w, b = metrics.ridge_fit_rows(fs.X, fs.y, np.asarray(fs.split) == 0)  # in blocks: X may be a map
        df.insert(1, "fold", np.int32(f.fold))
        df["ridge"] = metrics.ridge_predict(fs.X, df["row"].to_numpy(), w, b)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def stitched_metrics(folds: list[FoldResult]) -> list[dict]:
    """The folds' metric rows one after another, each with its `fold`; steps and epochs continue across folds
    (fold k's step 1 follows the last step of fold k-1), so a training curve reads left to right in time."""
    rows, step0, epoch0 = [], 0, 0
    for f in folds:
        mine = runs.read_metrics(f.run.run_dir)
        for r in mine:
            r = {**r, "fold": f.fold}
            if "step" in r:
                r["step"] += step0
            if r.get("kind") == "epoch":
                r["epoch"] += epoch0
            rows.append(r)
        step0 += int(f.run.summary.get("optimizer_steps") or 0)
        epoch0 += sum(1 for r in mine if r.get("kind") == "epoch")
    return rows


def _iso(ns) -> str | None:
    return None if ns is None else pd.Timestamp(int(ns), tz="UTC").isoformat()


def fold_entry(f: FoldResult, predictions: pd.DataFrame) -> dict:
    """One fold of summary.json: its periods (ISO, UTC; train_start None = the first row), its windows and
    steps, and the named ICs of its own test predictions."""
    s, cut = f.run.summary, f.run.fs.meta["splits"]
    mine = predictions[predictions["fold"] == f.fold]
    return {
        "fold": f.fold, "run_id": s["run_id"],
        **{k: _iso(cut.get(k)) for k in ("train_start", "train_end", "val_start", "val_end", "test_start",
                                         "test_end")},
        "test_period_start": _iso(cut.get("val_end")),  # the test periods tile (val_end, test_end] fold by fold
        "train_windows": s.get("train_windows"), "test_windows": s.get("test_windows"),
        "optimizer_steps": s.get("optimizer_steps"), "best_val_loss": s.get("best_val_loss"),
        "samples_per_s": s.get("samples_per_s"), "cache_dir": s.get("cache_dir"),
        "norm_median": f.run.fs.meta["norm"]["median"], "norm_scale": f.run.fs.meta["norm"]["scale"],
        **metrics.named_ics(mine, s["config"]["trade_delay"], zone=run_market_zone(s["config"])),
    }


def _over_folds(values: list, how) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)]
    return how(vals) if vals else None


def write_outputs(cfg: Config, top: Path, folds: list[FoldResult]) -> dict:
    """predictions.parquet, metrics.jsonl and summary.json of the whole walk-forward, in `top`."""
    pred = stitched_predictions(folds)
    runs.write_prediction_frame(top, pred)
    runs.write_metrics(top, stitched_metrics(folds))
    per = [f.run.summary for f in folds]
    # what all folds share (device, model, batch, parameters ...) and the data's calendar and quality, the same for
    # every fold: the last fold's (its cache_dir too; each fold's own cache is in `folds`)
    summary = dict(per[-1])
    for keys, how in ((MEDIAN_OVER_FOLDS, lambda v: float(np.median(v))), (SUM_OVER_FOLDS, sum),
                      (MAX_OVER_FOLDS, max)):
        summary.update({k: _over_folds([s.get(k) for s in per], how) for k in keys})
    summary.update({
        "run_id": cfg.run_id, "config": cfg.replace(resume=False).to_dict(),  # as a fold's (RunFolder.summary)
        "resumed": any(s.get("resumed", False) for s in per),  # (a fold written before the fact: no key)
        "best_val_loss": None,  # one per fold, in `folds`
        "folds": [fold_entry(f, pred) for f in folds], "fold_window": cfg.fold_window, "fold_init": cfg.fold_init,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **metrics.named_ics(pred, cfg.trade_delay, zone=cfg.market_zone),
    })
    runs.write_summary(top, summary)
    return summary


def fold_lines(summary: dict) -> str:
    """The walk-forward's result, one line per fold, for the terminal and 03."""
    lines = [f"walk-forward: {len(summary['folds'])} folds, {summary['fold_window']} training window, "
             f"{summary['fold_init']} start; out-of-sample pooled IC {summary['pooled_ic']:.4f}, cross-sectional IC "
             f"{summary['cross_sectional_ic']:.4f} over {summary['test_rows']:,} test rows"]
    for f in summary["folds"]:
        lines.append(f"  fold {f['fold']}: train {minute(f['train_start'], 'start')} .. {minute(f['train_end'])}, test "
                     f"{minute(f['test_start'])} .. {minute(f['test_end'])}: {f['test_rows']:,} rows, pooled IC "
                     f"{f['pooled_ic']:.4f}, cross-sectional IC {f['cross_sectional_ic']:.4f}")
    return "\n".join(lines)
