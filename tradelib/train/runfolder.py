"""A training run's folder, `outputs/<run_id>/`, as the run holds it: the lock, metrics rows and their TensorBoard
events, checkpoints (saving, rotation, the resume point), and the results written at the finish.

run.py drives the loop and asks this module to write; only rank 0 holds a RunFolder that writes (`main`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from tradelib import runs
from tradelib.config import run_market_zone
from tradelib.hardware import busy_fields, device_name, mfu, peak_flops, peak_memory_bytes
from tradelib.paths import remove_stale_tmp, writing
from tradelib.progress import PROGRESS_FILE
from tradelib.report import metrics
from tradelib.train import checkpoint
from tradelib.train.models import n_params


def refuse_walk_forward(folder: Path, run_id: str) -> None:
    """Refuse a single-split run in a walk-forward's folder (its `fold-k/` folders): it would write its
    summary.json, predictions.parquet and metrics.jsonl over the walk-forward's stitched ones, and the walk-forward
    could no longer be resumed. A resume that left out `folds` found no checkpoint at the top and said to start
    again without resume, which did exactly that."""
    folds = sorted((p for p in folder.glob("fold-*") if p.is_dir()), key=lambda p: p.name)
    if not folds:
        return
    written = [runs.read_summary(p) for p in (folder, *folds)]
    n = next((s["config"].get("folds") for s in written if s and isinstance(s.get("config"), dict)), None)
    given = f"-p folds {n}" if n else "-p folds with the number of folds it was started with"
    raise ValueError(f"run {run_id!r} is a walk-forward ({', '.join(p.name for p in folds)} in {folder}): a "
                     f"single-split run would write over its results; to go on with it, give it its folds ({given}), "
                     f"or choose another run_id")


def say_removed(folder: Path, what: str = "file") -> None:
    """Delete what a killed write left in a run folder or its checkpoints/ (a predictions.parquet, summary.json or
    checkpoint half written, as large as the test set or the model), saying so."""
    n = remove_stale_tmp(folder) if folder.is_dir() else 0
    if n:
        print(f"removed {n} unfinished {what}(s) of an earlier, killed write in {folder}")


class RunFolder:
    """outputs/<run_id>/ for one run; on rank 0 (`main`) it holds the folder's lock until close()."""

    def __init__(self, run_id: str, main: bool) -> None:
        self.run_id, self.main = run_id, main
        self.dir = runs.run_path(run_id)
        self.ckpt_dir = self.dir / "checkpoints"
        self.events: runs.TensorBoardLog | None = None
        self.created = main and not self.dir.exists()
        self.lock = runs.lock_run(self.dir) if main else None  # held for the run's life (close releases it)

    @property
    def progress_path(self) -> Path | None:
        return self.dir / PROGRESS_FILE if self.main else None

    def open(self, resume: bool) -> None:
        """Clear what a killed writer left; a fresh run refuses a folder that already has checkpoints."""
        if not self.main:
            return
        refuse_walk_forward(self.dir, self.run_id)
        say_removed(self.ckpt_dir, "checkpoint file")  # the run folder is locked: no writer of ours is alive in it
        say_removed(self.dir)
        if not resume:  # (a resume finds its checkpoints in load_resume_point, or says it found none)
            if runs.has_checkpoints(self.dir):
                raise ValueError(f"run {self.run_id!r} already has checkpoints in {self.ckpt_dir}: pass resume=True "
                                 f"to continue it, or choose another run_id")
            best = self.ckpt_dir / "best.pt"
            if best.exists():  # an attempt killed before its first step file: no state to go on from
                best.unlink()
                print(f"removed {best}: its run was killed before it wrote a training state to resume from")
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)

    def start_metrics(self) -> None:
        if self.main:
            with writing(self.dir / "metrics.jsonl"):
                (self.dir / "metrics.jsonl").write_text("")

    def open_events(self, purge_step: int | None) -> None:
        if self.main:
            self.events = runs.TensorBoardLog(self.dir, purge_step)

    def log(self, row: dict) -> None:
        if self.main:
            runs.append_metrics(self.dir, row)
            if self.events is not None:
                self.events.add(row)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def save(self, state: dict, tag: str) -> Path:
        """`tag`.pt; of the step-N.pt files the newest keep_checkpoints stay (rotate with `rotate`)."""
        return checkpoint.save(state, self.ckpt_dir / f"{tag}.pt")

    def rotate(self, keep: int) -> None:
        checkpoint.rotate(self.ckpt_dir, keep)

    def latest_checkpoint(self) -> Path | None:
        found = checkpoint.resume_candidates(self.ckpt_dir)
        return found[0] if found else None

    def load_resume_point(self) -> tuple[dict | None, Path | None]:
        """The newest checkpoint that loads (rank 0); the newer ones that do not are set aside, saying why, as
        `<name>.damaged`: no longer a resume candidate nor rotated, not deleted."""
        ck, path, skipped = None, None, []
        for candidate in checkpoint.resume_candidates(self.ckpt_dir):
            try:
                ck, path = checkpoint.load(candidate), candidate
                break
            except ValueError as exc:
                skipped.append((candidate, str(exc)))
        if ck is None and skipped:
            raise FileNotFoundError(f"resume: none of the {len(skipped)} checkpoints in {self.ckpt_dir} loads "
                                    f"({'; '.join(why for _, why in skipped)}); start the run again without "
                                    f"resume, or with another run_id")
        for bad, why in skipped:
            bad.replace(bad.with_name(bad.name + ".damaged"))
            print(f"resume: skipped {why}; kept as {bad.name}.damaged")
        return ck, path

    def best_weights(self, device: torch.device) -> dict | None:
        best = self.ckpt_dir / "best.pt"
        return checkpoint.load(best, device)["model"] if best.exists() else None

    def truncate_metrics(self, step: int) -> int:
        return runs.truncate_metrics(self.dir, step)

    # -- the finish ----------------------------------------------------------------------------------------
    def summary(self, run) -> dict:
        """summary.json's figures (before the test ICs): the configuration, throughput medians over metrics.jsonl,
        memory, MFU and the loop's totals, of `run` (the TrainingRun writing into this folder)."""
        rows = runs.read_metrics(self.dir)
        steps = [r for r in rows if r["kind"] == "step"]
        epochs = [r for r in rows if r["kind"] == "epoch" and not r.get("partial")]  # whole epochs: their time
        med = lambda rs, k: float(np.median([r[k] for r in rs])) if rs else float("nan")
        sps = med(steps, "samples_per_s")
        tr, cfg, device = run.trainer, run.cfg, run.device
        flops = tr.flops_per_sample()
        peak, peak_source = peak_flops(device, peak_tflops=cfg.peak_tflops)  # one device's: MFU per rank
        # a rank's items a second: its micro-batches' chunks, dense (a chunk computes its rows whatever number have
        # a known target, which samples/s counts alone); else its windows, every one with a known target
        items_per_s = med(steps, "it_per_s") * cfg.batch_size if cfg.dense else sps / run.world
        return {
            # the configuration that retrains this run (resume false: from_dict of it must not resume), and
            # whether it went on from a checkpoint
            "run_id": self.run_id, "config": cfg.replace(resume=False).to_dict(), "resumed": cfg.resume,
            "device": str(device),
            "device_name": device_name(device), "loader": cfg.loader, "model": cfg.model,
            "n_params": n_params(run.model), "batch_size": cfg.batch_size,
            "grad_accum_steps": cfg.grad_accum_steps, "world_size": run.world,
            "global_batch": tr.global_batch * run.world, "lr": tr.lr, "base_lr": cfg.lr,
            "lr_scaling": cfg.lr_scaling, "reference_batch": cfg.reference_batch,
            "compiled": tr.compiled, "graph_steps": tr.graph_steps, "fused_adamw": tr.fused, "samples_per_s": sps,
            # the whole training time's rate beside the intervals' median: stalls (a busy machine, a slow first
            # step) are in the first and not in the second, which then reads far above what the run did
            "samples_per_s_whole": run.samples_seen / run.train_time if run.train_time > 0 else float("nan"),
            "precision": tr.precision, "grad_scaler": tr.scaler is not None,  # what precision auto chose
            "cuda_graphs": "on" if tr.graphs else "off", "cuda_graphs_reason": tr.graphs_reason,
            "it_per_s": med(steps, "it_per_s"),
            "batches_per_epoch": tr.batches_per_epoch, "dense": cfg.dense,
            "data_wait_share": med(steps, "data_wait_share"), "peak_mem_bytes": peak_memory_bytes(device),
            "gpu_util": run.gpu_stats.get("gpu_util_median"),  # NVML busy %, median
            "gpu_mem_used_max_bytes": run.gpu_stats.get("gpu_mem_used_max_bytes"),
            # MFU counts items (a window, or a dense chunk with every row computed, known target or not) per rank
            "flops_per_sample": flops, "mfu": mfu(items_per_s, tr.flops_per_item(), peak),
            "peak_flops_source": peak_source,
            "epoch_time_s": med(epochs, "epoch_time_s"), "train_time_s": run.train_time,
            "optimizer_steps": run.step, "skipped_steps": run.skipped,
            "best_val_loss": run.best_val if math.isfinite(run.best_val) else None,
            "cache_key": run.cache_key, "cache_dir": run.fs.meta.get("cache_dir", ""),
            "train_windows": run.n_windows[0], "train_samples_per_epoch": run.epoch_targets,
            "test_windows": run.n_windows[2], "shard_data": run.sharded,
            **busy_fields([run.other_cores], cfg.max_other_load),  # samples/s timed on a busy machine: flagged
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def write_results(self, fs, rows: np.ndarray, pred: np.ndarray, summary: dict) -> dict:
        """predictions.parquet, then summary.json with the named test ICs added; returns the summary."""
        runs.write_predictions(self.dir, fs, rows, pred)
        summary = {**summary, **metrics.named_ics(runs.read_predictions(self.dir), summary["config"]["trade_delay"],
                                                  zone=run_market_zone(summary["config"]))}
        runs.write_summary(self.dir, summary)
        return summary

    def discard_if_unused(self) -> None:
        """Remove the folder if this run created it and wrote nothing in it (`runs.remove_if_unused`). Before
        close(), while the lock is held."""
        if self.created:
            runs.remove_if_unused(self.dir, self.lock)

    def close(self) -> None:
        """Let go of the events writer and the lock. Safe to call twice."""
        if self.events is not None:
            self.events.close()
            self.events = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
