"""One training run: epochs of `Trainer.step`, metrics at log points, checkpoints, interrupts, and its outputs.

The step itself (exact accumulation, the on-device skip of a non-finite step) is trainer.py's; this module
drives it and keeps the run's position, so that a run survives: full-state checkpoints (every
`checkpoint_every` steps and at each epoch's end) let `resume=True` continue bit for bit on the CPU, also after
a kill; Ctrl-C / a Jupyter interrupt stops at the next optimizer step with a checkpoint. Metrics are summed on
the device and read at log points, the only host syncs. Under torchrun the same code runs DDP (see
distributed.py); only rank 0 writes, through its RunFolder (runfolder.py: the lock, metrics, checkpoints, the
results).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from tradelib import runs
from tradelib.config import Config, as_written, resume_command
from tradelib.data import cache, dataset
from tradelib.data.features import FeatureSet
from tradelib.distributed import (
    DistEnv,
    all_reduce,
    barrier,
    broadcast_object,
    cleanup_distributed,
    dist_env,
    gather_object,
    init_distributed,
    launch_distributed,
    needs_launch,
    node_others_sum,
    rank_rows,
    shutdown_grace,
)
from tradelib.hardware import (
    CpuElsewhere,
    pick_device,
    say_determinism,
    torch_flags,
)
from tradelib.monitor import GpuMonitor
from tradelib.paths import outputs_dir
from tradelib.progress import Progress, headless_kernel
from tradelib.train import checkpoint
from tradelib.train.facts import write_train_facts
from tradelib.train.models import check_model, model_for, n_params
from tradelib.train.runfolder import RunFolder
from tradelib.train.sources import PaddedSource, check_split_windows
from tradelib.train.stops import StopRequested, StopRequests, progress_state, stopped_by
from tradelib.train.stream import make_sources
from tradelib.train.trainer import StepStats, Trainer, seed_everything


class TrainingFailed(RuntimeError):
    """The run trained but its result is not usable (no step taken, non-finite weights or predictions): no
    summary is written, so nothing downstream takes it for a finished run."""


class TrainingDiverged(TrainingFailed):
    """Too many non-finite steps in a row, or non-finite weights: the last finite checkpoint is named."""


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    model: torch.nn.Module
    fs: FeatureSet
    stopped: int | None = None  # a stop signal that came during the run's last step or validation: nothing to stop


def prepare_features(cfg: Config, env: DistEnv, sharded: bool = False, fold: int = 0) -> FeatureSet:
    """The feature cache (of walk-forward fold `fold`), mapped from disk, built by one process at a time: rank 0
    first, then one process per other node (a hit where the outputs folder is shared), then the rest (hits), so
    no two builds race on one folder (once the process group is up). `sharded`: each process maps and verifies
    only its own run of shards."""
    turn = 0 if env.rank == 0 else 1 if env.local_rank == 0 else 2
    fs = None
    for t in range(3 if env.world > 1 else 1):
        if t == turn:
            fs = dataset.prepare(cfg, verbose=env.main, mmap=True, share=(env.rank, env.world) if sharded else None,
                                 fold=fold)
        barrier()
    return fs


def rows_of(fs: FeatureSet, lo: int, hi: int) -> FeatureSet:
    """Rows lo..hi of a FeatureSet (views), `meta["rows"]` saying which."""
    return dataclasses.replace(fs, **{k: getattr(fs, k)[lo:hi] for k in FeatureSet.ARRAYS},
                               meta={**fs.meta, "rows": [lo, hi], "rows_total": len(fs)})


class Tally:
    """The sums behind one log interval's metrics, kept on the device; `read()` syncs once and resets them. A stop
    between log points checkpoints them (`state`), so the resumed run logs the rows the uninterrupted one does."""

    SUMS = tuple(k for k in checkpoint.TALLY_NUMBERS if k != "wait_s")  # the sums on the device

    def __init__(self, device: torch.device) -> None:
        self.device = device
        zero = lambda: torch.zeros((), device=device, dtype=torch.float64)
        self.sse, self.n_taken, self.n, self.skipped, self.bad_run, self.bad_max, self.bad_loss = (
            zero() for _ in range(7))
        self.norm_last = torch.zeros((), device=device)
        self.wait_s, self.steps, self.micro_batches, self.marks, self.carried_s = 0.0, 0, 0, [], 0.0

    def add(self, s: StepStats) -> None:
        good = ~s.skipped
        self.sse += torch.where(good, s.sse, 0.0)  # the logged loss is over the steps that were taken
        self.n_taken += good * s.n_valid
        self.n += s.n_valid
        self.skipped += s.skipped
        self.bad_loss += ~torch.isfinite(s.sse)  # a non-finite loss: the model's output, not only its gradient
        self.bad_run = (self.bad_run + s.skipped) * s.skipped  # consecutive skipped steps, on the device
        torch.maximum(self.bad_max, self.bad_run, out=self.bad_max)
        self.norm_last = s.norm
        self.wait_s += s.fetch_s
        self.marks += s.fetch_marks
        self.steps += 1
        self.micro_batches += s.micro_batches

    def read(self) -> dict:
        """The interval's figures as floats (a host sync), the loss summed over all ranks; then reset."""
        if self.marks:  # on CUDA: the stream's time between the marks around each fetch
            self.wait_s = self.marked_wait()
        all_reduce(self.sse)  # the counts already are global
        sums = (self.sse, self.n_taken, self.n, self.skipped, self.bad_max, self.bad_loss, self.norm_last.double())
        sse, n_taken, n, skipped, bad_max, bad_loss, norm = torch.stack(sums).tolist()
        out = {"sse": sse, "n_taken": n_taken, "n": n, "skipped": int(skipped), "bad_max": bad_max,
               "bad_loss": int(bad_loss), "norm": norm,
               "wait_s": self.wait_s, "steps": self.steps, "micro_batches": self.micro_batches}
        for t in (self.sse, self.n_taken, self.n, self.skipped, self.bad_max, self.bad_loss):
            t.zero_()
        self.wait_s, self.steps, self.micro_batches, self.marks, self.carried_s = 0.0, 0, 0, [], 0.0
        return out

    def marked_wait(self) -> float:
        """The data wait of the interval on CUDA (a sync): the marks' time, and what a resume carried over."""
        torch.cuda.synchronize(self.device)
        return self.carried_s + sum(a.elapsed_time(b) for a, b in self.marks) / 1e3

    def state(self) -> dict:
        """The interval's sums so far as plain values (a host sync; this rank's loss sum), for a checkpoint; the
        interval goes on (an epoch's checkpoint)."""
        return {**{k: float(getattr(self, k)) for k in self.SUMS},
                "wait_s": self.marked_wait() if self.marks else self.wait_s, "steps": self.steps,
                "micro_batches": self.micro_batches}

    def load_state(self, state: dict) -> None:
        for k in self.SUMS:
            getattr(self, k).fill_(state[k])
        self.wait_s, self.steps, self.micro_batches = state["wait_s"], state["steps"], state["micro_batches"]
        self.carried_s = state["wait_s"]  # (on CUDA the marks' time replaces wait_s: this is added to it)


# the loop's position and the sums behind its metrics: all of it goes into a checkpoint
LOOP_STATE = checkpoint.LOOP_COUNTS + checkpoint.LOOP_NUMBERS


class TrainingRun:
    """A run: its Trainer, its folder, and the loop's position. Consistent (checkpointable) only between
    optimizer steps: `step` steps were taken and `pos` items of this epoch's order (this rank's share) consumed.
    Checkpoints are written at log points, so the metric sums they carry are complete up to `step`; a stop's
    checkpoint between them also carries the log interval's sums so far and its seconds (`tally`, `pending_s`)."""

    def __init__(self, cfg: Config, fs: FeatureSet | None = None, progress: bool = True,
                 init_state: dict | None = None, walk: str = "", fold: int = 0) -> None:
        # `walk`: the run id of the walk-forward this run is a fold of, the one a resume names; `fold`: which
        self.cfg, self.progress, self.init_state, self.walk, self.fold = cfg, progress, init_state, walk, fold
        env = dist_env()
        self.rank, self.world, self.main = env.rank, env.world, env.main
        self.device = init_distributed(env, pick_device(cfg.device, verbose=self.main))
        if cfg.resume and not cfg.run_id:
            raise ValueError(f"resume=True needs the run_id of the run to continue (the stop printed it)"
                             f"{runs.unfinished_hint()}")
        check_model(cfg)
        self.run_id = cfg.run_id or broadcast_object(runs.new_run_id())  # every rank writes to rank 0's folder
        self.trainer: Trainer | None = None
        self.folder = RunFolder(self.run_id, self.main)
        self.dir, self.ckpt_dir = self.folder.dir, self.folder.ckpt_dir
        try:
            self._setup(fs, env)
        except BaseException:
            self.folder.discard_if_unused()
            self.close()
            raise

    def _setup(self, fs: FeatureSet | None, env: DistEnv) -> None:
        cfg = self.cfg
        self.folder.open(cfg.resume)
        seed_everything(cfg.seed)
        if self.main:
            say_determinism(self.device, cfg.deterministic)
        self.sharded = self.world > 1 and cfg.shard_data
        if self.sharded and cfg.loader == "dataloader":
            raise ValueError("shard_data=True needs loader device or stream (the seed-style DataLoader reads all rows)")
        self.resume_point: tuple[dict | None, Path | None] = (None, None)
        self.resumed_from: Path | None = None  # the checkpoint a resume went on from
        if cfg.resume:  # the checkpoint's settings checked before this run builds (or maps) its features
            self.resume_point = self.load_resume_point()
            checkpoint.check_settings(*self.resume_point, cfg, self.walk or self.run_id)
        self.fs = fs if fs is not None else prepare_features(cfg, env, self.sharded, self.fold)
        whole = self.fs.meta.get("rows", [0, len(self.fs)]) == [0, self.fs.meta.get("rows_total", len(self.fs))]
        self._fs_all = self.fs if whole else None
        if self.sharded and self._fs_all is not None:  # given whole (in memory): this rank's run of symbols
            self.fs = rows_of(self.fs, *rank_rows(self.fs.symbol_id, self.rank, self.world))
        self.row0 = self.fs.meta.get("rows", [0])[0]  # the first of this process's rows in the whole FeatureSet
        if self.sharded and self.main:
            print(f"shard_data: each of the {self.world} processes holds its own symbols' rows (this one "
                  f"{len(self.fs):,} of {self.fs.meta.get('rows_total', len(self.fs)):,})")
        self.cache_key = self.fs.meta.get("cache_key", "")
        model = model_for(cfg, self.fs.n_features).to(self.device)
        if self.init_state is not None and not cfg.resume:  # warm start (walk-forward); a resume has its own
            model.load_state_dict(self.init_state)
        self.windows, source = make_sources(self.fs, model, cfg, self.device, verbose=self.main)
        if self.sharded:  # every rank as many items an epoch (padding after its own): the same number of steps
            most = all_reduce(torch.tensor(float(len(source)), device=self.device), "max")
            batch = cfg.batch_size * cfg.grad_accum_steps
            source = PaddedSource(source, math.ceil(float(most) / batch) * batch, self.world)
        # targets trained per epoch over all ranks: windows, or valid chunk positions in dense mode
        counted = source.count(torch.arange(len(source), device=source.ids_device))
        self.epoch_targets = float(all_reduce(counted) if self.sharded else counted)  # (shard_data: every rank's)
        counts = torch.tensor([float(len(self.windows.ends(s))) for s in (0, 1, 2)], device=self.device)
        self.n_windows = [int(c) for c in (all_reduce(counts) if self.sharded else counts).tolist()]  # all ranks
        check_split_windows(self.fs, cfg, self.n_windows)  # a split without windows: refused before training
        self.trainer = Trainer(cfg, model, self.windows, source, self.device, self.world, verbose=self.main)
        self.step, self.epoch, self.pos = 0, 0, 0
        self.skipped, self.best_val, self.epochs_since_best = 0, float("inf"), 0
        self.train_time, self.samples_seen = 0.0, 0
        self.epoch_sse, self.epoch_n, self.epoch_time = 0.0, 0.0, 0.0
        self.tally = Tally(self.device)
        self.pending_s = 0.0  # seconds of the log interval a resume goes on with (a stop between log points)
        self.clock: Callable[[], float] = time.perf_counter  # every duration of the run (tests give a fake one)
        self.t_log = self.t_ckpt = self.clock()
        self.on_step: Callable[[TrainingRun], None] | None = None  # called between optimizer steps (tests)
        self._clean, self._saved_step = True, -1
        self.stop = StopRequests(enabled=False)  # fit() enters a live one
        self._agreed_stop: int | None = None  # DDP: the signal every rank stops on at the same step
        self.stopped: int | None = None  # a stop asked for after the last step's check: the run finished (RunResult)
        self._grace_said = False  # DDP: whether log points too far apart for torchrun's shutdown wait were named
        self.gpu_stats: dict = {}
        self.other_cores: float | None = None  # the cores other processes kept busy while it trained (CPU runs)
        self.cpu_own_s = self.cpu_wall_s = 0.0  # this process's CPU seconds and the wall seconds of its training
        # after the compile probe, which may draw dropout masks: the restored RNG is then exactly the saved one
        if cfg.resume:
            self._resume()
        else:
            self.folder.start_metrics()

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model

    def close(self) -> None:
        """Stop what runs beside the loop and let go of what the run holds: the DataLoader's worker processes,
        DDP's wrapper (its reducer holds the process group), the run folder's lock. Safe to call twice."""
        if self.trainer is not None:
            stop_workers = getattr(self.trainer.source, "close", None)
            if stop_workers is not None:
                stop_workers()
            if isinstance(self.trainer.train_fwd, DDP):
                self.trainer.train_fwd = self.trainer.train_fwd.module
        if self.folder is not None:
            self.folder.close()

    # -- checkpoints ---------------------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to continue bit for bit: the trainer, the loop's position and sums, the RNG."""
        return {
            **self.trainer.state_dict(),
            **{k: getattr(self, k) for k in LOOP_STATE},
            "world": self.world,
            "bad_run": float(self.tally.bad_run),
            "tally": self.tally.state(),  # (empty at a log point; a stop between them: the interval so far)
            "pending_s": self.clock() - self.t_log if self.tally.steps else 0.0,
            "rng": checkpoint.rng_state(self.device),
            "config": self.cfg.to_dict(),
            "order": self.state_order(),
            "cache_key": self.cache_key,
            "feature_names": self.fs.feature_names,
            "target_scale": float(self.windows.target_scale),
        }

    def save_checkpoint(self, tag: str) -> Path | None:
        """Rank 0 writes `tag`.pt; of the step-N.pt files the newest keep_checkpoints stay. Weights that are no
        longer finite are never written (nor do they push a finite checkpoint out of the rotation)."""
        step_file = tag.startswith("step-")
        if step_file:
            self.t_ckpt = self.clock()  # (every rank: the next time-due checkpoint is agreed on)
        if not self.main:
            self._saved_step = self.step if step_file else self._saved_step  # (every rank knows what rank 0 saved)
            return None
        self.check_finite_weights()
        path = self.folder.save(self.state(), tag)
        if step_file:
            self._saved_step = self.step
            self.folder.rotate(self.cfg.keep_checkpoints)
        return path

    def check_finite_weights(self) -> None:
        """Raise TrainingDiverged, naming the last checkpoint (the last finite state), when a weight is NaN or inf."""
        floats = {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}
        if not floats or bool(torch.stack([torch.isfinite(v).all() for v in floats.values()]).all()):
            return
        bad = [k for k, v in floats.items() if not bool(torch.isfinite(v).all())]
        raise TrainingDiverged(
            f"run {self.run_id!r} stopped at step {self.step}: the weights are no longer finite ({', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}); nothing more is written and the last checkpoint, "
            f"{self.folder.latest_checkpoint()}, holds the last finite state. Lower lr or set grad_clip, and check the "
            f"data.")

    def load_resume_point(self) -> tuple[dict, Path]:
        """The checkpoint a resume goes on from: only rank 0 may see the run folder (another node's disk), so it
        hands it to all."""
        ck, path = broadcast_object(self.folder.load_resume_point() if self.main else (None, None))
        if ck is None:
            raise FileNotFoundError(f"resume: no checkpoint in {self.ckpt_dir} (run_id {self.run_id!r}): the run wrote "
                                    f"none before it stopped; start it again without resume")
        return ck, path

    def _resume(self) -> None:
        ck, path = self.resume_point
        self.resume_point, self.resumed_from = (None, None), path  # (the state not held for the run's life)
        checkpoint.check_resumable(ck, path, self.cfg, self.cache_key, self.world, self.walk or self.run_id)
        if ck.get("order") != self.state_order():
            raise ValueError(f"resume refused: {path} was trained streaming its data in groups of {ck.get('order')} "
                             f"(block rows, blocks per group), this run would stream {self.state_order()}: the "
                             f"epoch's order would change. Resume on the same device with the same "
                             f"device_memory_budget, stream_block_rows and batch sizes")
        checkpoint.check_fits(ck, path, self.model, self.cfg.model)
        try:
            self.trainer.load_state_dict(ck)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # the optimizer's or schedule's state
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(f"resume refused: {path}: its training state does not load into this run "
                             f"({type(exc).__name__}: {first[:200]})") from None
        for k in LOOP_STATE:
            setattr(self, k, ck[k])
        n = len(self.trainer.source.epoch(self.epoch, self.cfg.seed, self.rank, self.world))
        if self.pos > n:  # a run's position never passes its epoch's end: a crafted checkpoint's (refused before
            # metrics.jsonl is cut back to its step)
            raise ValueError(f"resume refused: {path}: not a tradelib training checkpoint (pos {self.pos} lies "
                             f"beyond the {n} items of epoch {self.epoch})")
        if ck.get("restored_best") and not self.done():  # last.pt of a run with early stopping, its step files gone
            raise ValueError(f"resume refused: {path} holds the restored best weights (early stopping), not the "
                             f"training state at step {self.step} that its optimizer, schedule and position belong to; "
                             f"no step-N.pt to go on from is left. It can rewrite the finished run's outputs (resume "
                             f"with its epochs and max_steps), not train on: start a new run (another run_id)")
        self.tally.bad_run.fill_(ck["bad_run"])
        if "tally" in ck:
            self.tally.load_state(ck["tally"])
            self.pending_s = ck["pending_s"]
        self._saved_step = self.step
        checkpoint.set_rng_state(ck["rng"], self.device)
        if self.main:
            kept = self.folder.truncate_metrics(self.step)
            print(f"resumed {self.run_id} from {Path(path).name} at step {self.step} ({self.epoch_words()}, "
                  f"{self.pos} items into its order); metrics.jsonl keeps its {kept} rows up to that step")
            if self.done():
                print(f"the run had already finished: rewriting its outputs ({self.what_ended()} to go on)")
            else:
                self.say_schedule_change(ck["config"])
                self.set_aside_results()

    def say_schedule_change(self, config: dict) -> None:
        """One line where the resume's epochs or max_steps change the run's length: the LR schedule (warm-up,
        cosine decay) is fitted to the new total, so the LR moves at the resume point; the line gives the new
        total and the LR of the step after the resume point under the run's schedule and under this one."""
        old, tr, cfg = as_written(config), self.trainer, self.cfg
        changed = [f"{k} {old[k]} -> {getattr(cfg, k)}" for k in ("epochs", "max_steps") if old[k] != getattr(cfg, k)]
        total, warmup = tr.schedule(old["epochs"], old["max_steps"])
        if not changed or (total, warmup) == (tr.total_steps, tr.warmup):
            return
        before, after = tr.step_lr(self.step + 1, (total, warmup)), tr.step_lr(self.step + 1)
        print(f"the resume changes the run's length ({', '.join(changed)}): its LR schedule (warm-up, cosine decay) "
              f"is fitted to {tr.total_steps} optimizer steps, was {total}: the LR of step {self.step + 1} goes from "
              f"{before:.3g} to {after:.3g} (resume with epochs {old['epochs']} and max_steps {old['max_steps']} "
              f"to keep the run's schedule)", flush=True)

    def epoch_words(self) -> str:
        """The epoch a step is in, counted from 1 as the progress bar counts it: 'epoch 2 of 3'."""
        return f"epoch {min(self.epoch + 1, self.cfg.epochs)} of {self.cfg.epochs}"

    def set_aside_results(self) -> None:
        """A resume that trains on: the results of an earlier finish (this run's, and its walk-forward's) are set
        aside, so that a stop now leaves a stopped run, not a finished one with the old model's results."""
        for folder in (self.dir, *([outputs_dir() / self.walk] if self.walk else [])):
            moved = runs.set_aside_results(folder)
            if moved:
                print(f"it trains on: the results of its earlier finish in {folder} are set aside until it finishes "
                      f"again ({', '.join(f'{m}.superseded' for m in moved)})")

    def state_order(self):
        return getattr(self.trainer.source, "order_key", None)

    def log(self, row: dict) -> None:
        self.folder.log(row)

    # -- the loop ------------------------------------------------------------------------------------------
    def done(self) -> bool:
        """Finished by epochs, max_steps, the max_minutes budget or early stopping: a function of the state (the
        train time moves only at log points, agreed there under DDP), so a resume and every rank agree."""
        return self.reached_end() or self.out_of_time()

    def reached_end(self) -> bool:
        early = self.cfg.patience > 0 and self.epochs_since_best >= self.cfg.patience
        return self.epoch >= self.cfg.epochs or self.step >= self.trainer.total_steps or early

    def out_of_time(self) -> bool:
        return self.cfg.max_minutes > 0 and self.train_time >= 60 * self.cfg.max_minutes

    def what_ended(self) -> str:
        """What ended a finished run, each limit that holds with the setting a resume must raise to go on: raising
        epochs does not resume a run that early stopping or the max_minutes budget ended."""
        cfg, said = self.cfg, []
        if self.epoch >= cfg.epochs or self.step >= self.trainer.total_steps:
            said.append(f"it reached its length, {self.step} optimizer steps of epochs {cfg.epochs} and max_steps "
                        f"{cfg.max_steps}: raise epochs or max_steps")
        if cfg.patience > 0 and self.epochs_since_best >= cfg.patience:
            n = self.epochs_since_best
            said.append(f"early stopping ended it, {n} epoch{'s' if n != 1 else ''} without a better val loss: raise "
                        f"patience {cfg.patience} (0: off)")
        if self.out_of_time():
            said.append(f"its training budget is spent, {self.train_time / 60:.1f} min: raise max_minutes "
                        f"{cfg.max_minutes:g} (0: none)")
        return "; ".join(said)

    def fit(self) -> dict:
        """Train to the end, then finish(); the run is closed afterwards, also after an error or an interrupt."""
        try:
            show = self.progress and self.main
            self.bar = Progress(self.trainer.total_steps, self.step, f"train {self.cfg.model}",
                                self.cfg.progress if show else "off", self.cfg.epochs, path=self.folder.progress_path,
                                epoch=self.epoch)
            if self.cfg.tensorboard:
                self.folder.open_events(self.step + 1 if self.cfg.resume else None)
            self.monitor = GpuMonitor(device=self.device, enabled=self.main, verbose=self.main).start()
            self.t_ckpt = self.clock()
            self.t_log = self.t_ckpt - self.pending_s
            state = "failed"
            try:
                waits = ("the ranks agree on the step at the next log point" if self.world > 1 else
                         "a second signal waits for the step" if headless_kernel() else "")
                with StopRequests(enabled=True, escalate=not waits, waits=waits) as self.stop, CpuElsewhere() as other:
                    try:
                        self._loop()
                    except KeyboardInterrupt as exc:
                        signum = getattr(exc, "signum", signal.SIGINT)
                        state = progress_state(signum)
                        self._on_interrupt(signum)
                        exc.resume_said = True  # (by rank 0)
                        raise
                state = "done"
                self.stopped = self._agreed_stop or (self.stop.requested if self.world == 1 else None)
            finally:
                self.other_cores = other.cores if self.device.type == "cpu" else None  # (the GPU's time is its own)
                self.cpu_own_s, self.cpu_wall_s = other.own, other.wall
                self.gpu_stats = self.monitor.stop()
                self.bar.close(state)
            try:
                return self.finish()
            except KeyboardInterrupt as exc:
                self._on_interrupted_finish(exc)
                raise
        finally:
            self.close()

    def _loop(self) -> None:
        cfg, tr = self.cfg, self.trainer
        while not self.done():
            order = tr.source.epoch(self.epoch, cfg.seed, self.rank, self.world)
            n = len(order)
            tr.source.begin(order[self.pos :])
            while self.pos < n and not self.done():
                self._clean = True  # between optimizer steps: a checkpoint here is exact
                if self._agreed_stop or (self.world == 1 and self.stop.requested):
                    raise StopRequested(self._agreed_stop or self.stop.requested)
                self._clean = False
                group = order[self.pos : self.pos + tr.global_batch]
                self.tally.add(tr.step(group))
                self.pos += len(group)
                self.step += 1
                self.bar.advance()
                epoch_end = self.pos >= n
                ckpt_due = cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0
                if ckpt_due or epoch_end or self.step % cfg.log_every == 0 or self.step >= tr.total_steps:
                    ckpt_due = self.log_point() or ckpt_due  # (log_point: every rank, every time)
                if ckpt_due and not (epoch_end or self.done()):  # (at an epoch's or the run's end: after validation)
                    self.save_checkpoint(f"step-{self.step}")
                    self.t_log = self.clock()  # checkpoint I/O is not training time
                self._clean = True
                if self.on_step is not None:
                    self.on_step(self)
            self._clean = False
            self.end_epoch(partial=self.pos < n)  # (inside the epoch: max_steps, max_minutes)
            self._clean = True

    def log_point(self) -> bool:
        """One host sync: a metrics row, a GPU row, and the divergence check. Under DDP the ranks also agree here
        on the train time (the max_minutes budget), a time-due checkpoint and a stop request. Returns whether a
        checkpoint is due by time (checkpoint_minutes since the last one)."""
        t = self.tally.read()
        now = self.clock()
        dt = max(now - self.t_log, 1e-9)
        self.train_time += dt
        self.epoch_time += dt
        self.samples_seen += int(t["n"])
        self.epoch_sse += t["sse"]
        self.epoch_n += t["n_taken"]
        self.skipped += t["skipped"]
        loss = t["sse"] / t["n_taken"] if t["n_taken"] > 0 else float("nan")
        row = {"kind": "step", "step": self.step, "epoch": self.epoch, "samples": self.samples_seen, "loss": loss,
               "lr": self.trainer.step_lr(self.step), "grad_norm": t["norm"], "samples_per_s": t["n"] / dt,
               "it_per_s": t["micro_batches"] / dt, "data_wait_share": t["wait_s"] / dt,
               "skipped_steps": self.skipped, "elapsed_s": self.train_time}
        self.log(row)
        gpu = self.monitor.read()  # GPU busy % and memory over this log interval (NVML)
        if gpu["gpu_samples"]:
            self.log({"kind": "gpu", "step": self.step, "elapsed_s": self.train_time, **gpu})
        self.bar.figures(self.epoch, loss, row["samples_per_s"])
        if self.world > 1 and self.main and not self._grace_said and dt > shutdown_grace():
            self._grace_said = True
            print(f"log points are {dt:.0f} s apart: a stop (Ctrl-C or SIGTERM to torchrun) is agreed at the next one, "
                  f"but torchrun kills its workers {shutdown_grace():.0f} s after passing the signal on (its "
                  f"--shutdown-timeout), before they get there: no checkpoint, the steps since the last one lost. "
                  f"Lower log_every ({self.cfg.log_every}) or raise --shutdown-timeout", flush=True)
        due = self.cfg.checkpoint_minutes > 0 and now - self.t_ckpt >= 60 * self.cfg.checkpoint_minutes
        if self.world > 1:
            agreed = all_reduce(torch.tensor([self.train_time, float(due), float(self.stop.requested or 0)],
                                             dtype=torch.float64, device=self.device), "max").tolist()
            self.train_time, due, self._agreed_stop = agreed[0], bool(agreed[1]), int(agreed[2]) or None
        if self.main and self.out_of_time() and not self.reached_end():
            print(f"max_minutes: the training budget of {self.cfg.max_minutes:g} min is spent at step {self.step}; "
                  f"ending with a validation, a checkpoint and the results", flush=True)
        self.t_log = self.clock()
        if t["bad_max"] >= self.cfg.max_bad_steps:
            raise TrainingDiverged(self.diverged_words(t))
        return due

    def diverged_words(self, t: dict) -> str:
        """Why the run stops after max_bad_steps non-finite steps in a row (`t`: the log interval's figures): what
        was not finite, where the last good weights are, and the settings that address it."""
        cfg, tr = self.cfg, self.trainer
        if t["bad_loss"]:  # the features are finite and unknown targets masked: the model's output was not
            what = f"a non-finite loss, the model's output NaN or inf ({t['bad_loss']} of the last {t['steps']} steps"
            fix = f"check the model's forward (your own model's), lower lr ({cfg.lr:g})" + (
                ", or set output_clip (0: off)" if cfg.output_clip == 0 else "")
        else:
            what = f"a non-finite gradient with a finite loss ({t['bad_max']:.0f} steps"
            fix = f"lower lr ({cfg.lr:g})" + (", or use precision bf16 or fp32" if tr.precision == "fp16" else "")
        return (f"training stopped at step {self.step}: {int(t['bad_max'])} optimizer steps in a row had {what}; "
                f"max_bad_steps={cfg.max_bad_steps}), {self.skipped} skipped in all. Skipped steps leave the weights "
                f"untouched: {self.last_good()}. {fix[0].upper()}{fix[1:]}; look for non-finite features or targets.")

    def last_good(self) -> str:
        """Where the last good (finite) state of a run that stops on non-finite figures is kept, in words."""
        last = self.folder.latest_checkpoint() if self.main else None
        return (f"the last checkpoint, {last}, holds the last good weights" if last else
                "no checkpoint was written yet (start the run again once that is fixed)")

    def end_epoch(self, partial: bool = False) -> None:
        """Validation, best.pt when it is the best so far, a step checkpoint; at an epoch's end also the next
        epoch and early stopping (seen by done()). A run that ends inside an epoch (max_steps, max_minutes:
        `partial`) validates once all the same and keeps its position, so a longer resume goes on."""
        val = self.validate()
        # (non-finite weights, and a run whose every step was skipped, have their own messages)
        if not math.isfinite(val) and self.n_windows[1] > 0 and self.step > self.skipped:
            self.check_finite_weights()
            raise TrainingFailed(
                f"run {self.run_id!r} stopped at step {self.step} ({self.epoch_words()}): the validation loss is "
                f"{val} over {self.n_windows[1]:,} windows although the weights are finite: the model's predictions "
                f"in eval mode are NaN or inf (its eval path, e.g. your own model's, or outputs too large: set "
                f"output_clip or lower lr); the test predictions would be too, so nothing more is trained or written: "
                f"{self.last_good()}")
        trained = self.epoch_n if partial else self.epoch_targets
        self.log({"kind": "epoch", "epoch": self.epoch, "step": self.step, **({"partial": True} if partial else {}),
                  "train_loss": self.epoch_sse / self.epoch_n if self.epoch_n else float("nan"),
                  "val_loss": val, "epoch_time_s": self.epoch_time,
                  "samples_per_s": trained / max(self.epoch_time, 1e-9)})
        better = val < self.best_val
        if not partial:
            self.epoch += 1
            self.bar.set_epoch(self.epoch)
            self.pos = 0
            self.epoch_sse, self.epoch_n, self.epoch_time = 0.0, 0.0, 0.0
            # no validation windows (a NaN loss): nothing to stop on
            self.epochs_since_best = 0 if better else self.epochs_since_best + int(math.isfinite(val))
        if better:
            self.best_val = val
            self.save_checkpoint("best")
        self.save_checkpoint(f"step-{self.step}")
        if not partial and self.main and self.cfg.patience and self.epochs_since_best >= self.cfg.patience:
            print(f"early stop after epoch {self.epoch}: val loss has not improved for {self.epochs_since_best} "
                  f"epochs (best {self.best_val:.5f})")
        self.t_log = self.clock()

    def validate(self) -> float:
        """Validation loss, computed on rank 0 and shared, so every rank takes the same early-stop decision; with
        shard_data each rank's part of it, added up on every rank."""
        self.bar.note(f"validating on {len(self.trainer.windows.ends(1)):,} windows")
        if self.sharded:
            sse, n = (float(x) for x in all_reduce(torch.stack(self.trainer.sse_count(1))).tolist())
            return sse / n if n else float("nan")
        return float(broadcast_object(self.trainer.loss(1) if self.main else 0.0))

    def _on_interrupt(self, signum: int) -> None:
        if self._clean and (self.world == 1 or self._agreed_stop):
            if self._saved_step == self.step:  # (an epoch's end wrote this step's checkpoint a moment ago)
                where = f"checkpoint {self.folder.latest_checkpoint()}"
            else:  # the log interval's sums so far go into the checkpoint: the resumed run logs this interval
                where = f"checkpoint {self.save_checkpoint(f'step-{self.step}')}"
        else:  # stopped inside a step (or under DDP): the last checkpoint is the resume point
            where = f"no checkpoint written mid-step; resume starts from {self.folder.latest_checkpoint()}"
        if self.main:
            print(f"\n{stopped_by(signum)} at step {self.step} ({self.epoch_words()}); {where}.\n"
                  f"{self.resume_lines('Resume')}", flush=True)

    def resume_lines(self, lead: str) -> str:
        """`lead`, the command that resumes this run (a fold resumes as its walk-forward does), and how a notebook
        or papermill does the same."""
        return (f"{lead}: {resume_command(self.cfg, self.walk or self.run_id)}\n(notebook 03_train or papermill: the "
                f"same -p NAME VALUE pairs, those not given left at their defaults)")

    def _on_interrupted_finish(self, exc: KeyboardInterrupt) -> None:
        """A stop once the training ended, while its results were written (train_facts.json's forward pass over
        every split, the predictions, the summary: minutes on a large set): progress.json read "done" with no
        results and nothing was said. Now it reads the stop, and the resume command, which writes them from the
        final checkpoint, is printed."""
        signum = getattr(exc, "signum", signal.SIGINT)
        self.bar.mark(progress_state(signum))
        if self.main:
            print(f"\n{stopped_by(signum)} while writing the run's results (its training had ended at step "
                  f"{self.step}; checkpoint {self.folder.latest_checkpoint()}).\n"
                  f"{self.resume_lines('Resume, which writes them')}", flush=True)
        exc.resume_said = True

    # -- the end -------------------------------------------------------------------------------------------
    def finish(self) -> dict:
        """Write the final state as step-N.pt (the resume point), restore the best weights when early
        stopping is on, write last.pt (those weights), predictions and the summary. A run that took no step,
        or whose weights or predictions are not finite, raises instead (TrainingFailed): no summary, no false
        success, and the checkpoints keep the last finite state. With shard_data every rank predicts its own test
        windows with the final weights (rank 0's best.pt sent to all) and rank 0 writes them all."""
        self.discount_sibling_ranks()
        if self.main:  # what the report needs from training: report/inputs.py reads train_facts.json, never imports us
            write_train_facts(self.dir, self.trainer, self.fs_all() if self.sharded else self.fs, self.cfg)
        if not (self.main or self.sharded):
            return {"run_id": self.run_id, "rank": self.rank}
        if self.step - self.skipped <= 0:  # (shard_data: the same on every rank)
            raise TrainingFailed(
                f"run {self.run_id!r} trained nothing: {self.step} optimizer steps, {self.skipped} of them skipped "
                f"(non-finite loss or gradient); no predictions or summary written. Check the data and lr.")
        best = None
        if self.main:
            if self._saved_step != self.step:
                self.save_checkpoint(f"step-{self.step}")
            if self.cfg.patience:
                best = self.folder.best_weights(torch.device("cpu") if self.sharded else self.device)
        if self.sharded:
            best = broadcast_object(best)
        if best is not None:
            self.model.load_state_dict(best)
        if not self.sharded:  # (shard_data: after the gather below, which every rank must reach)
            self.save_last(restored=best is not None)
        ends = self.windows.ends(2)
        self.bar.note(f"predicting {len(ends):,} test windows")
        rows = ends.cpu().numpy()
        pred = self.trainer.predict(ends).cpu().numpy() * self.windows.target_scale
        if self.sharded:
            parts = gather_object((self.row0 + rows, pred))
            if not self.main:
                return {"run_id": self.run_id, "rank": self.rank}
            self.save_last(restored=best is not None)
            rows, pred = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            order = np.argsort(rows, kind="stable")
            rows, pred = rows[order], pred[order]
        if not np.isfinite(pred).all():
            raise TrainingFailed(
                f"run {self.run_id!r}: {int((~np.isfinite(pred)).sum()):,} of {len(pred):,} test predictions are not "
                f"finite although the weights are; no predictions or summary written (checkpoints kept in "
                f"{self.ckpt_dir}). Set output_clip, or lower lr.")
        return self.folder.write_results(self.fs_all() if self.sharded else self.fs, rows, pred,
                                         self.folder.summary(self))

    def discount_sibling_ranks(self) -> None:
        """Under DDP on CPUs, rank 0's measure of the cores other processes kept busy (`other_cores`, which flags
        samples/s timed on a busy machine) less this run's other ranks on its machine: torchrun's children, not
        rank 0's, they counted as load from elsewhere and flagged every CPU run of several processes busy. Every
        rank calls it (a gather)."""
        if self.world == 1 or self.device.type != "cpu":
            return
        siblings = node_others_sum(self.cpu_own_s)
        if self.other_cores is not None and self.cpu_wall_s > 0:
            self.other_cores = max(0.0, self.other_cores - siblings / self.cpu_wall_s)

    def save_last(self, restored: bool) -> None:
        """last.pt: the final weights (the best ones when `restored`), once they are known to be finite."""
        self.check_finite_weights()
        self.folder.save({**self.state(), "restored_best": restored}, "last")

    def fs_all(self) -> FeatureSet:
        """The whole FeatureSet (rank 0's predictions need every rank's rows): as given, or mapped from the cache
        unverified (each rank verified its own shards)."""
        if self._fs_all is None:
            self._fs_all = cache.load(Path(self.fs.meta["cache_dir"]), mmap=True, verify=False)
        return self._fs_all


def train(cfg: Config, fs: FeatureSet | None = None, progress: bool = True, init_state: dict | None = None,
          leave_group: bool = True, walk: str = "", fold: int = 0) -> RunResult:
    """Train one run end to end; the function 03_train and `tradelib train` both call (through
    walkforward.train_or_walk). `init_state`: the model's starting weights (a warm-started walk-forward fold).
    Under torchrun every process calls it and leaves the process group at the end (also on an error);
    `leave_group` False keeps it after a clean finish, the ranks meeting at a barrier, for the next run of the
    same processes (a walk-forward's next fold: joining a group again after leaving it can hang in gloo's
    rendezvous). `walk`: the walk-forward's run id, when this run is one of its folds, and `fold` which one (its
    features, built when `fs` is not given: after a resume's settings are checked). Torch's global flags (TF32,
    determinism) are set for the run and put back afterwards."""
    run, finished = None, False
    with torch_flags(cfg.deterministic):
        try:
            run = TrainingRun(cfg, fs, progress, init_state, walk, fold)
            tr = run.trainer
            if run.main:
                print(f"run {run.run_id} (folder {run.dir}): {cfg.model}, {n_params(run.model):,} parameters, "
                      f"{run.n_windows[0]:,} training windows, global batch {tr.global_batch * run.world} "
                      f"({cfg.batch_size} x {cfg.grad_accum_steps} accumulation"
                      f"{f' x {run.world} ranks' if run.world > 1 else ''}), {tr.total_steps} optimizer steps, "
                      f"lr {tr.lr:g}, device {run.device}")
            summary = run.fit()
            finished = True
        finally:
            if run is not None:
                run.close()
            if leave_group or not finished:
                cleanup_distributed(clean=finished)
            else:
                barrier()
    if run.main:
        print(done_line(summary, run.dir))
    # a sharded run's predictions index all rows: rank 0's result holds them all
    return RunResult(run.dir, summary, run.model, run.fs_all() if run.sharded and run.main else run.fs, run.stopped)


def done_line(summary: dict, run_dir: Path) -> str:
    """The line a finished training ends with: each test IC with the oracle's of the same family beside it (the
    cross-sectional oracle next to the pooled IC read as the pooled ceiling, 0.07 where it was 0.16)."""
    def ic(family: str) -> str:
        oracle = summary.get(f"oracle_{family}_ic")
        return f"{summary[f'{family}_ic']:.4f}" + (f" (oracle {oracle:.4f})" if oracle is not None else "")

    constant = (f"; the model's {summary['test_rows']:,} test predictions are one value, so every IC is undefined: "
                f"it learned nothing from its inputs (see the training loss)" if summary.get("constant_predictions")
                else "")
    return (f"done: {summary['samples_per_s']:,.0f} samples/s, test IC at the traded lag {summary['ic_lag']}: "
            f"cross-sectional {ic('cross_sectional')}, pooled {ic('pooled')}{constant}, outputs in {run_dir}")


def train_or_launch(cfg: Config) -> Path:
    """`train(cfg)` in this process, or, when cfg asks for several GPUs outside torchrun, torchrun with that
    many processes: what `tradelib train` and 03_train both do. Returns the run folder."""
    if needs_launch(cfg):
        return launch_distributed(cfg)
    return train(cfg).run_dir
