"""The trainer: device-resident windows, correct gradient accumulation, one host sync per log interval.

One optimizer step = `grad_accum_steps` micro-batches. Each micro-batch adds sum(squared error) / N to the
gradients, N being the number of valid targets in the whole accumulated batch (over all DDP ranks), so the
step equals one big batch of N: also for the last, partial window of an epoch and for masked dense targets.
The LR schedule advances once per optimizer step. A non-finite loss or gradient norm skips the step on the
device (fused AdamW's `found_inf`), with no host sync; skips are counted and read at the log interval.

A run survives: full-state checkpoints (atomic, every `checkpoint_every` steps and at each epoch's end) let
`resume=True` continue bit for bit on the CPU, also after a kill; Ctrl-C / a Jupyter interrupt stops at the
next optimizer step with a checkpoint. Under torchrun the same code runs DDP (see tradelib/distributed.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from tradelib import cache
from tradelib.config import Config
from tradelib.distributed import (
    DistEnv,
    all_reduce,
    barrier,
    broadcast_object,
    cleanup_distributed,
    dist_env,
    init_distributed,
)
from tradelib.features import FeatureSet
from tradelib.loaders import DataLoaderData
from tradelib.models import build_model, n_params, training_flops_per_sample
from tradelib.monitor import GpuMonitor
from tradelib.paths import new_run_id, outputs_dir
from tradelib.windows import DenseData, DeviceData


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    model: torch.nn.Module
    fs: FeatureSet


def pick_device(name: str = "auto", verbose: bool = True) -> torch.device:
    """CUDA when asked or available; says so when it falls back to the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        else:
            device = torch.device("cpu")
            if verbose:
                print(f"CUDA is not available: training on the CPU ({torch.get_num_threads()} threads)")
    else:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={name!r} was asked for but CUDA is not available on this machine")
    if verbose and device.type == "cuda":
        print(f"training on {torch.cuda.get_device_name(device)} ({device})")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def scaled_lr(cfg: Config, world: int = 1) -> float:
    """The LR scaling rule, applied only when asked: linear or square root in the global batch."""
    ratio = cfg.batch_size * cfg.grad_accum_steps * world / cfg.reference_batch
    if cfg.lr_scaling == "none":
        return cfg.lr
    if cfg.lr_scaling == "linear":
        return cfg.lr * ratio
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * math.sqrt(ratio)
    raise ValueError(f"lr_scaling must be none, linear or sqrt, got {cfg.lr_scaling!r}")


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` optimizer steps, then cosine decay to min_ratio at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: Config, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused where the device supports it; no weight decay on biases and norm parameters."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError) as exc:  # fused needs a supported device and dtype
        print(f"fused AdamW unavailable on {device} ({exc}): using the foreach implementation")
        return torch.optim.AdamW(groups, lr=lr, foreach=True)


def autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def maybe_compile(model: torch.nn.Module, cfg: Config, device: torch.device, probe: torch.Tensor):
    """torch.compile when asked (auto: on CUDA); falls back to eager and says why if it fails.

    `reduce-overhead` adds CUDA graphs: one replay instead of a launch per kernel, for small models whose
    step is launch-bound on a GPU."""
    if cfg.compile not in ("auto", "on", "off", "reduce-overhead"):
        raise ValueError(f"compile must be auto, on, off or reduce-overhead, got {cfg.compile!r}")
    want = cfg.compile in ("on", "reduce-overhead") or (cfg.compile == "auto" and device.type == "cuda")
    if not want:
        return model, "off"
    mode = "reduce-overhead" if cfg.compile == "reduce-overhead" else None
    try:
        compiled = torch.compile(model, mode=mode)
        with torch.no_grad(), autocast(device, cfg.precision):
            compiled(probe)
        return compiled, mode or "on"
    except Exception as exc:  # noqa: BLE001 - any compiler failure means eager, reported
        print(f"torch.compile failed, training eagerly: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return model, f"failed: {type(exc).__name__}"


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # process peak RSS on Linux


def configure_determinism(cfg: Config, device: torch.device, verbose: bool) -> None:
    """CPU runs with a seed repeat bit for bit. On CUDA: say once what does not, and switch on the
    deterministic kernels when `deterministic` is set (slower)."""
    if cfg.deterministic:  # stays on in this process (a notebook kernel) until switched off by hand
        # read when cuBLAS first starts in this process: too late if CUDA already ran matmuls (a notebook kernel)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: name an op without one, do not fail
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if verbose and device.type == "cuda" and not _said_nondeterminism:
        _said_nondeterminism.append(True)
        if cfg.deterministic:
            print("deterministic=True: deterministic CUDA kernels (a warning names any op without one); "
                  "torch.compile's kernel choice and, under DDP, NCCL's reduction order can still vary")
        else:
            print("GPU runs are not bit-for-bit reproducible: cuDNN/cuBLAS pick kernels and split reductions "
                  "at run time (LSTM/GRU, the TCN's convolutions, matmul workspaces), torch.compile may choose "
                  "kernels by timing, and under DDP NCCL's all-reduce order can change. The window gather needs no "
                  "gradient, so no scatter-add atomics. deterministic=True narrows this, at some speed")


_said_nondeterminism: list[bool] = []  # the CUDA note is printed once per process


def prepare_features(cfg: Config, env: DistEnv) -> FeatureSet:
    """The feature cache, built by one process at a time: rank 0 first, then one process per other node
    (a hit where the outputs folder is shared), then the rest (hits), so no two builds race on one folder."""
    turn = 0 if env.rank == 0 else 1 if env.local_rank == 0 else 2
    fs = None
    for t in range(3 if env.world > 1 else 1):
        if t == turn:
            fs = cache.prepare(cfg, verbose=env.main)
        barrier()
    return fs


class DenseForward(torch.nn.Module):
    """The model's forward_dense as a module's forward, so that DDP (which hooks forward) can wrap it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_dense(x)


def unused_parameters(module: torch.nn.Module, x: torch.Tensor, device: torch.device) -> list[str]:
    """Parameters that get no gradient from a forward and backward (DDP must be told, or it waits for them).
    The RNG is put back afterwards (dropout draws), so the run continues as a one-process run would."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        module(x).float().sum().backward()
    unused = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    module.zero_grad(set_to_none=True)
    return unused


def atomic_save(obj: dict, path: Path) -> None:
    """Write to a temporary file, flush it to disk, then rename: a kill mid-write leaves the old file intact."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def step_checkpoints(folder: Path) -> dict[int, Path]:
    """step-N.pt files by N."""
    found = {}
    for p in folder.glob("step-*.pt"):
        m = re.fullmatch(r"step-(\d+)", p.stem)
        if m:
            found[int(m.group(1))] = p
    return found


# settings that may change between a checkpoint and its resume: length, bookkeeping, hardware, loader plumbing
RESUME_MAY_CHANGE = frozenset({
    "resume", "run_id", "epochs", "max_steps", "patience", "log_every", "checkpoint_every", "keep_checkpoints",
    "max_bad_steps", "eval_batch_size", "device", "compile", "deterministic", "loader", "num_workers",
    "prefetch_factor", "pin_memory", "persistent_workers", "n_gpus", "extra",
})


def check_resumable(ck: dict, path: str, cfg: Config, cache_key: str, world: int) -> None:
    """Refuse a resume that would not continue the same training: other features, settings or world size."""
    if ck["cache_key"] != cache_key:
        raise ValueError(
            f"resume refused: {path} was trained on feature cache {ck['cache_key']}, but this run's data, feature "
            f"parameters and feature code give cache {cache_key}. Continuing would mix two feature definitions: "
            f"start a new run (another run_id), or go back to the data and code the run was started with.")
    old = {**Config().to_dict(), **ck["config"]}  # settings added since the checkpoint take their defaults
    mine = cfg.to_dict()
    diff = {k: (old[k], v) for k, v in mine.items() if k not in RESUME_MAY_CHANGE and old.get(k) != v}
    if diff:
        raise ValueError(f"resume refused: the config differs from {path} in settings that change the training: " +
                         ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()) +
                         f". Only these may change on resume: {', '.join(sorted(RESUME_MAY_CHANGE))}")
    if ck.get("world", 1) != world:
        raise ValueError(f"resume refused: {path} was written by {ck.get('world', 1)} processes, this run has {world}: "
                         f"each process's place in the epoch depends on it; resume with the same number")


def truncate_metrics(path: Path, step: int) -> int:
    """Drop metric rows logged after `step` (steps that will run again), atomically; rows kept."""
    if not path.exists():
        path.write_text("")
        return 0
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if row.get("step", -1) <= step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
    return len(keep)


@torch.no_grad()
def predict(model: torch.nn.Module, data: DeviceData, ends: torch.Tensor, cfg: Config,
            device: torch.device) -> torch.Tensor:
    """Predictions in scaled target units for the given window ends, on the device."""
    model.eval()
    out = [model(data.gather(chunk)[0]).float() for chunk in ends.split(cfg.eval_batch_size)]
    model.train()
    return torch.cat(out) if out else torch.zeros(0, device=device)


def evaluate_loss(model, data: DeviceData, split: int, cfg: Config, device: torch.device) -> float:
    ends = data.ends(split)
    if len(ends) == 0:
        return float("nan")
    with autocast(device, cfg.precision):
        pred = predict(model, data, ends, cfg, device)
    return float(((pred - data.y[ends]) ** 2).mean())


class Trainer:
    """Holds the run's state so that it can be checkpointed and resumed at any optimizer step.

    The state a checkpoint holds is consistent only between optimizer steps: `step` steps were taken and
    `pos` windows of this epoch's order (this rank's share) consumed. Checkpoints are written at log points,
    so the metric sums they carry are complete up to `step`.
    """

    def __init__(self, cfg: Config, fs: FeatureSet | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        env = dist_env()
        self.rank, self.world, self.local_rank = env.rank, env.world, env.local_rank
        self.main = env.main
        self.device = init_distributed(env, pick_device(cfg.device, verbose=self.main))
        if cfg.resume and not cfg.run_id:
            raise ValueError("resume=True needs the run_id of the run to continue")
        self.run_id = cfg.run_id or broadcast_object(new_run_id())  # every rank writes to rank 0's folder name
        self.dir = outputs_dir() / self.run_id
        self.ckpt_dir = self.dir / "checkpoints"
        if self.main and not cfg.resume:  # (a resume finds its checkpoints in _resume, or says it found none)
            if any(self.ckpt_dir.glob("*.pt")):
                raise ValueError(f"run {self.run_id!r} already has checkpoints in {self.ckpt_dir}: pass resume=True "
                                 f"to continue it, or choose another run_id")
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)
        configure_determinism(cfg, self.device, verbose=self.main)
        self.fs = fs if fs is not None else prepare_features(cfg, env)
        self.cache_key = self.fs.meta.get("cache_key", "")
        self.model = build_model(cfg.model, self.fs.n_features, cfg.window, cfg.hidden, cfg.layers,
                                 cfg.dropout, cfg.init_gain, cfg.output_clip).to(self.device)
        self.data, self.source = make_sources(self.fs, self.model, cfg, self.device)
        n_train = self.source.n_items() // self.world
        if n_train == 0:
            raise ValueError("no training windows: the data is shorter than one window per split")
        self.global_batch = cfg.batch_size * cfg.grad_accum_steps  # per rank; x world for the whole step
        self.steps_per_epoch = math.ceil(n_train / self.global_batch)
        total = self.steps_per_epoch * cfg.epochs
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps > 0 else total
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        self.lr = scaled_lr(cfg, self.world)
        self.opt = make_optimizer(self.model, cfg, self.lr, self.device)
        self.fused = bool(self.opt.defaults.get("fused"))
        warmup = min(cfg.warmup_steps, max(1, self.total_steps // 10))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, warmup, self.total_steps, cfg.min_lr_ratio))
        # the run's position and the sums behind its metrics: all of it goes into a checkpoint
        self.step, self.epoch, self.pos = 0, 0, 0
        self.skipped, self.best_val, self.epochs_since_best = 0, float("inf"), 0
        self.train_time, self.samples_seen = 0.0, 0
        self.epoch_sse, self.epoch_n, self.epoch_time = 0.0, 0.0, 0.0
        # per log interval, on the device (read at the log point: the only host sync)
        acc = lambda: torch.zeros((), device=self.device, dtype=torch.float64)
        self.sse_acc, self.nl_acc, self.n_acc, self.skipped_acc = acc(), acc(), acc(), acc()
        self.bad_run, self.bad_max, self.norm_last = acc(), acc(), torch.zeros((), device=self.device)
        self.wait, self.steps_since, self.t_log = 0.0, 0, time.perf_counter()
        self.fetch_marks: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # CUDA only: see _cuda_mark
        self.on_step: Callable[[Trainer], None] | None = None  # called between optimizer steps (tests, notebooks)
        self._stop_requested, self._clean, self._saved_step = False, True, -1
        self.metrics = self.dir / "metrics.jsonl"
        probe = self.data.gather(self.data.ends(0)[:2])[0]
        self.fwd, self.compiled = maybe_compile(self.model, cfg, self.device, probe)
        # dense mode trains through forward_dense; evaluation stays per window (the same function)
        train_module, train_probe, self.train_fwd = self.model, probe, self.fwd
        if cfg.dense:
            train_module = DenseForward(self.model)
            train_probe = self.source.batch(torch.arange(min(2, n_train), device=self.device))[0]
            self.train_fwd, _ = maybe_compile(train_module, cfg, self.device, train_probe)
        if self.world > 1:  # evaluation keeps self.fwd: only rank 0 evaluates, with no collective
            unused = unused_parameters(train_module, train_probe, self.device)
            if unused and self.main:
                print(f"DDP: {', '.join(unused)} get no gradient (unused in forward): find_unused_parameters=True, "
                      f"which walks the graph every step; a model without unused parameters avoids it")
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_fwd = DDP(self.train_fwd, device_ids=ids, find_unused_parameters=bool(unused))
        # after the compile probe, which may draw dropout masks: the restored RNG is then exactly the saved one
        if cfg.resume:
            self._resume()
        elif self.main:
            self.metrics.write_text("")

    # -- checkpoints ---------------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to continue bit for bit: weights, optimizer, schedule, position, sums, RNG."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": None,  # bf16 needs no gradient scaler
            "step": self.step, "epoch": self.epoch, "pos": self.pos, "world": self.world,
            "skipped": self.skipped, "best_val": self.best_val, "epochs_since_best": self.epochs_since_best,
            "train_time": self.train_time, "samples_seen": self.samples_seen,
            "epoch_sse": self.epoch_sse, "epoch_n": self.epoch_n, "epoch_time": self.epoch_time,
            "bad_run": float(self.bad_run),
            "rng": {
                "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            },
            "config": self.cfg.to_dict(),
            "cache_key": self.cache_key,
            "feature_names": self.fs.feature_names,
            "target_scale": self.data.target_scale,
        }

    def save_checkpoint(self, tag: str) -> Path | None:
        """Rank 0 writes `tag`.pt atomically; of the step-N.pt files the newest keep_checkpoints stay."""
        if not self.main:
            return None
        path = self.ckpt_dir / f"{tag}.pt"
        atomic_save(self.state(), path)
        if tag.startswith("step-"):
            self._saved_step = self.step
            steps = sorted(step_checkpoints(self.ckpt_dir).items())
            for _, old in steps[: max(0, len(steps) - max(1, self.cfg.keep_checkpoints))]:
                old.unlink()
        return path

    def latest_checkpoint(self) -> Path | None:
        """The step-N.pt with the largest N: the real training state. last.pt may hold the restored best
        weights and best.pt an older state, so they are a fallback only (runs from before step files)."""
        steps = step_checkpoints(self.ckpt_dir)
        if steps:
            return steps[max(steps)]
        last = self.ckpt_dir / "last.pt"
        return last if last.exists() else None

    def _resume(self) -> None:
        ck, path = None, None
        if self.main:  # only rank 0 may see the run folder (another node's disk): it hands the state to all
            found = self.latest_checkpoint()
            if found is not None:
                ck, path = torch.load(found, map_location="cpu", weights_only=False), str(found)
        ck, path = broadcast_object((ck, path))
        if ck is None:
            raise FileNotFoundError(f"resume: no checkpoint in {self.ckpt_dir} (run_id {self.run_id!r})")
        check_resumable(ck, path, self.cfg, self.cache_key, self.world)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        for k in ("step", "epoch", "pos", "skipped", "best_val", "epochs_since_best", "train_time", "samples_seen",
                  "epoch_sse", "epoch_n", "epoch_time"):
            setattr(self, k, ck[k])
        self.bad_run.fill_(ck["bad_run"])
        self._saved_step = self.step
        random.setstate(ck["rng"]["python"])
        np.random.set_state(ck["rng"]["numpy"])
        torch.set_rng_state(ck["rng"]["torch"])
        if ck["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck["rng"]["cuda"], self.device)
        if self.main:
            kept = truncate_metrics(self.metrics, self.step)
            print(f"resumed {self.run_id} from {Path(path).name} at step {self.step} (epoch {self.epoch}, "
                  f"{self.pos} items into its order); metrics.jsonl keeps its {kept} rows up to that step")
            if self.done():
                print("the run had already finished: rewriting its outputs (raise epochs or max_steps to go on)")

    def log(self, row: dict) -> None:
        if self.main:
            with self.metrics.open("a") as f:
                f.write(json.dumps(row) + "\n")

    # -- one optimizer step --------------------------------------------------------------------------
    def micro_step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
                   n_valid: int | torch.Tensor, sync: bool = True) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its sum of squared errors (on the device).

        `n_valid` counts the valid targets of the whole accumulated batch over all ranks, so the gradient
        gets sum(error^2) / n_valid from this micro-batch: the K micro-batches of a step then add up to the
        mean over the whole batch, however the valid targets fall. DDP averages over ranks, hence the
        factor world. `sync=False` (all but the last micro-step) leaves the gradients unsynchronised.
        """
        ctx = self.train_fwd.no_sync() if self.world > 1 and not sync else contextlib.nullcontext()
        with ctx:
            with autocast(self.device, self.cfg.precision):
                pred = self.train_fwd(x)
            err = (pred.float() - y) ** 2
            sse = torch.where(mask, err, 0.0).sum() if mask is not None else err.sum()
            (sse * self.world / n_valid).backward()
        return sse.detach()

    def optimizer_step(self, loss: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip, skip on a non-finite norm or loss (decided on the device), step, advance the schedule.

        Fused AdamW takes the skip flag as `found_inf` (GradScaler's hook): it leaves weights, moments and
        its own step count untouched, with no host sync. The LR schedule advances on a skipped step too:
        it follows the optimizer-step counter, which counts the batches consumed, so a skip costs one
        update, not a shift of the whole schedule. Returns (pre-clip gradient norm, skipped flag).
        """
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        bad = ~torch.isfinite(norm)  # a NaN or inf loss gives a non-finite gradient and so a non-finite norm
        if loss is not None:
            bad = bad | ~torch.isfinite(loss)  # and an overflowing loss whose gradient stayed finite
        if self.world > 1:  # the gradients agree after DDP's all-reduce, the local losses need not
            bad = all_reduce(bad.float(), "max").bool()
        if self.fused:
            self.opt.found_inf = bad.float()  # fused AdamW skips the update when this is non-zero
            self.opt.step()
        elif not bool(bad):  # host sync: only without fused AdamW
            self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return norm.detach(), bad

    def _cuda_mark(self) -> torch.cuda.Event | None:
        """A timing event on the CUDA stream (None on the CPU). Between the marks around a fetch the stream
        spends the gather kernel's time, plus any time it sat idle because the host had no batch yet: the
        GPU's honest data wait, which host timers miss (a launch returns at once)."""
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def global_count(self, group: torch.Tensor) -> int | torch.Tensor:
        """Valid targets of this optimizer step over all ranks: known from the size for windows (every
        rank's group has the same length), summed on the device for dense chunks."""
        n = self.source.count(group)
        if isinstance(n, torch.Tensor):
            return all_reduce(n.clone()).clamp_(min=1)
        return n * self.world

    def train_group(self, group: torch.Tensor) -> None:
        """One optimizer step over `group` (this rank's share), split into micro-batches of batch_size."""
        n_valid = self.global_count(group)
        chunks = group.split(self.cfg.batch_size)
        sse = torch.zeros((), device=self.device)
        for i, ids in enumerate(chunks):
            t0 = time.perf_counter()
            start = self._cuda_mark()
            x, y, mask = self.source.batch(ids)
            self.wait += time.perf_counter() - t0
            if start is not None:
                self.fetch_marks.append((start, self._cuda_mark()))
            sse = sse + self.micro_step(x, y, mask, n_valid, sync=i == len(chunks) - 1)
        norm, bad = self.optimizer_step(sse)
        good = ~bad
        self.sse_acc += torch.where(good, sse, 0.0)  # the logged loss is over the steps that were taken
        self.nl_acc += good * n_valid
        self.n_acc += n_valid
        self.skipped_acc += bad
        self.bad_run = (self.bad_run + bad) * bad  # consecutive skipped steps, on the device
        torch.maximum(self.bad_max, self.bad_run, out=self.bad_max)
        self.norm_last = norm
        self.pos += len(group)
        self.step += 1
        self.steps_since += 1

    # -- the loop ------------------------------------------------------------------------------------
    def done(self) -> bool:
        """Finished by epochs, max_steps or early stopping: a function of the state, so a resume agrees."""
        early = self.cfg.patience > 0 and self.epochs_since_best >= self.cfg.patience
        return self.epoch >= self.cfg.epochs or self.step >= self.total_steps or early

    def fit(self) -> dict:
        # mininterval: a notebook keeps every text refresh as an output, so refresh once a second, not ten times
        self.bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.cfg.model}", unit="step",
                        disable=not self.progress or not self.main, dynamic_ncols=True, mininterval=1.0)
        self.monitor = GpuMonitor(device=self.device, enabled=self.rank == 0, verbose=self.rank == 0).start()
        untrap = self._trap_sigint()
        self.t_log = time.perf_counter()
        try:
            self._loop()
        except KeyboardInterrupt:
            self._on_interrupt()
            raise
        finally:
            untrap()
            self.gpu_stats = self.monitor.stop()
            self.bar.close()
        return self.finish()

    def _loop(self) -> None:
        cfg = self.cfg
        while not self.done():
            order = self.source.order(0, self.epoch, cfg.seed, self.rank, self.world)
            n = len(order)
            if hasattr(self.source, "start"):
                self.source.start(order[self.pos :])
            while self.pos < n and not self.done():
                self._clean = True  # between optimizer steps: a checkpoint here is exact
                if self._stop_requested:
                    raise KeyboardInterrupt
                self._clean = False
                self.train_group(order[self.pos : self.pos + self.global_batch])
                self.bar.update(1)
                epoch_end = self.pos >= n
                ckpt_due = cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0 and not epoch_end
                if ckpt_due or epoch_end or self.step % max(1, cfg.log_every) == 0 or self.step >= self.total_steps:
                    self.flush_log()
                if ckpt_due:  # (at an epoch's end, end_epoch writes it after validation)
                    self.save_checkpoint(f"step-{self.step}")
                    self.t_log = time.perf_counter()  # checkpoint I/O is not training time
                self._clean = True
                if self.on_step is not None:
                    self.on_step(self)
            if self.pos >= n:
                self._clean = False
                self.end_epoch()
                self._clean = True

    def flush_log(self) -> None:
        """The log point: one host sync, a metrics row, and the divergence check."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - self.t_log
        if self.fetch_marks:  # on CUDA: the stream's time between the marks around each fetch (synchronised above)
            self.wait = sum(a.elapsed_time(b) for a, b in self.fetch_marks) / 1e3
            self.fetch_marks.clear()
        all_reduce(self.sse_acc)  # the loss over all ranks (the counts already are global)
        sse, nl, n, skipped, bad_max, norm = torch.stack([
            self.sse_acc, self.nl_acc, self.n_acc, self.skipped_acc, self.bad_max, self.norm_last.double(),
        ]).tolist()
        self.train_time += dt
        self.epoch_time += dt
        self.samples_seen += int(n)
        self.epoch_sse += sse
        self.epoch_n += nl
        self.skipped += int(skipped)
        loss = sse / nl if nl > 0 else float("nan")
        row = {"kind": "step", "step": self.step, "epoch": self.epoch, "samples": self.samples_seen, "loss": loss,
               "lr": self.sched.get_last_lr()[0], "grad_norm": norm, "samples_per_s": n / dt,
               "it_per_s": self.steps_since * self.cfg.grad_accum_steps / dt, "data_wait_share": self.wait / dt,
               "skipped_steps": self.skipped, "elapsed_s": self.train_time}
        self.log(row)
        gpu = self.monitor.read()  # GPU busy % and memory over this log interval (NVML)
        if gpu["gpu_samples"]:
            self.log({"kind": "gpu", "step": self.step, "elapsed_s": self.train_time, **gpu})
        self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{row['samples_per_s']:,.0f}")
        for t in (self.sse_acc, self.nl_acc, self.n_acc, self.skipped_acc, self.bad_max):
            t.zero_()
        self.wait, self.steps_since = 0.0, 0
        self.t_log = time.perf_counter()
        if self.cfg.max_bad_steps > 0 and bad_max >= self.cfg.max_bad_steps:
            last = self.latest_checkpoint() if self.main else None
            raise TrainingDiverged(
                f"training stopped at step {self.step}: {int(bad_max)} optimizer steps in a row had a non-finite "
                f"loss or gradient (max_bad_steps={self.cfg.max_bad_steps}); {self.skipped} skipped in all. "
                f"Skipped steps leave the weights untouched, so the last checkpoint ({last}) holds the last good "
                f"weights. Look for non-finite features or targets, lower lr, or set grad_clip.")

    def end_epoch(self) -> None:
        """Validation, the best checkpoint, an epoch checkpoint, early stopping (seen by done())."""
        val = self.validate()
        self.log({"kind": "epoch", "epoch": self.epoch, "step": self.step,
                  "train_loss": self.epoch_sse / self.epoch_n if self.epoch_n else float("nan"),
                  "val_loss": val, "epoch_time_s": self.epoch_time,
                  "samples_per_s": epoch_samples(self) / max(self.epoch_time, 1e-9)})
        self.epoch += 1
        self.pos = 0
        self.epoch_sse, self.epoch_n, self.epoch_time = 0.0, 0.0, 0.0
        if val < self.best_val:
            self.best_val, self.epochs_since_best = val, 0
            self.save_checkpoint("best")
        elif math.isfinite(val):  # no validation windows: nothing to stop on
            self.epochs_since_best += 1
        self.save_checkpoint(f"step-{self.step}")
        if self.main and self.cfg.patience and self.epochs_since_best >= self.cfg.patience:
            print(f"early stop after epoch {self.epoch}: val loss has not improved for {self.epochs_since_best} "
                  f"epochs (best {self.best_val:.5f})")
        self.t_log = time.perf_counter()

    def validate(self) -> float:
        """Validation loss, computed on rank 0 and shared, so every rank takes the same early-stop decision."""
        val = evaluate_loss(self.fwd, self.data, 1, self.cfg, self.device) if self.main else 0.0
        return float(broadcast_object(val))

    # -- interrupts ----------------------------------------------------------------------------------
    def _trap_sigint(self) -> Callable[[], None]:
        """Ctrl-C / Jupyter's interrupt stops at the next optimizer step, where a checkpoint is exact; a
        second one stops at once. Only in one process on the main thread (DDP: torchrun owns the signal).
        Returns the function that puts the previous handler back."""
        if self.world > 1 or threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            print("\ninterrupt: stopping after this optimizer step (interrupt again to stop at once)", flush=True)

        previous = signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)

    def _on_interrupt(self) -> None:
        self._stop_requested = False
        path = None
        if self.world == 1 and self._clean:
            if self.steps_since:
                self.flush_log()  # the metric sums up to this step go into the checkpoint
            path = self.save_checkpoint(f"step-{self.step}")
            where = f"checkpoint {path}"
        else:  # stopped inside a step (or under DDP): the last checkpoint is the resume point
            path = self.latest_checkpoint() if self.main else None
            where = f"no checkpoint written mid-step; resume starts from {path}"
        if self.main:
            print(f"\ninterrupted at step {self.step} (epoch {self.epoch}); {where}.\n"
                  f"Resume: run_id={self.run_id!r}, resume=True (notebook or papermill: -p run_id {self.run_id} "
                  f"-p resume True; CLI: python -m tradelib train ... -p run_id {self.run_id} -p resume True)",
                  flush=True)

    # -- the end -------------------------------------------------------------------------------------
    def finish(self) -> dict:
        """Write the final state as step-N.pt (the resume point), restore the best weights when early
        stopping is on, write last.pt (those weights), predictions and the summary."""
        if not self.main:
            return {"run_id": self.run_id, "rank": self.rank}
        if self._saved_step != self.step:
            self.save_checkpoint(f"step-{self.step}")
        best = self.ckpt_dir / "best.pt"
        restored = bool(self.cfg.patience) and best.exists()
        if restored:
            self.model.load_state_dict(torch.load(best, map_location=self.device, weights_only=False)["model"])
        atomic_save({**self.state(), "restored_best": restored}, self.ckpt_dir / "last.pt")
        summary = self.summary()
        self.write_predictions()
        summary.update(pooled_test_ic(self.dir / "predictions.parquet"))
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return summary

    def write_predictions(self) -> None:
        ends = self.data.ends(2)
        with autocast(self.device, self.cfg.precision):
            pred = predict(self.fwd, self.data, ends, self.cfg, self.device)
        rows = ends.cpu().numpy()
        fs = self.fs
        pd.DataFrame({
            "row": rows,
            "timestamp": pd.to_datetime(fs.timestamp[rows], utc=True),
            "symbol": np.asarray(fs.symbols, dtype=object)[fs.symbol_id[rows]],
            "prediction": pred.cpu().numpy() * self.data.target_scale,
            "target": fs.y[rows], "fwd_return": fs.fwd_return[rows], "ret_next": fs.ret_next[rows],
            "last_return": fs.last_return[rows], "oracle": fs.oracle[rows],
        }).to_parquet(self.dir / "predictions.parquet", index=False)

    def summary(self) -> dict:
        rows = [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
        steps = [r for r in rows if r["kind"] == "step"]
        epochs = [r for r in rows if r["kind"] == "epoch"]
        sps = float(np.median([r["samples_per_s"] for r in steps])) if steps else float("nan")
        flops = training_flops_per_sample(self.model)
        peak = peak_flops(self.device)
        return {
            "run_id": self.run_id, "config": self.cfg.to_dict(), "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "loader": self.cfg.loader, "model": self.cfg.model, "n_params": n_params(self.model),
            "batch_size": self.cfg.batch_size, "grad_accum_steps": self.cfg.grad_accum_steps,
            "world_size": self.world, "global_batch": self.global_batch * self.world,
            "lr": self.lr, "base_lr": self.cfg.lr, "lr_scaling": self.cfg.lr_scaling,
            "reference_batch": self.cfg.reference_batch, "compiled": self.compiled, "fused_adamw": self.fused,
            "samples_per_s": sps,
            "it_per_s": float(np.median([r["it_per_s"] for r in steps])) if steps else float("nan"),
            "batches_per_epoch": self.steps_per_epoch * self.cfg.grad_accum_steps, "dense": self.cfg.dense,
            "data_wait_share": float(np.median([r["data_wait_share"] for r in steps])) if steps else float("nan"),
            "peak_mem_bytes": peak_memory_bytes(self.device),
            "gpu_util": getattr(self, "gpu_stats", {}).get("gpu_util_median"),  # NVML busy %, median
            "gpu_mem_used_max_bytes": getattr(self, "gpu_stats", {}).get("gpu_mem_used_max_bytes"),
            "flops_per_sample": flops,
            "mfu": sps * flops / peak if peak else None,
            "epoch_time_s": float(np.median([r["epoch_time_s"] for r in epochs])) if epochs else float("nan"),
            "train_time_s": self.train_time, "optimizer_steps": self.step, "skipped_steps": self.skipped,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "cache_key": self.cache_key, "cache_dir": self.fs.meta.get("cache_dir", ""),
            "train_windows": int(len(self.data.ends(0))), "train_samples_per_epoch": epoch_samples(self),
            "test_windows": int(len(self.data.ends(2))),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }


def epoch_samples(trainer: Trainer) -> float:
    """Targets trained per epoch (all ranks): windows, or valid chunk positions in dense mode."""
    src = trainer.source
    return float(src.count(torch.arange(src.n_items(), device=trainer.device))) if trainer.cfg.dense \
        else src.n_items()


def make_sources(fs: FeatureSet, model: torch.nn.Module, cfg: Config, device: torch.device):
    """(evaluation data, training batch source): device windows, dense chunks, or the seed's DataLoader."""
    scale = fs.meta.get("target_scale", 1.0)
    if cfg.dense:
        if not hasattr(model, "forward_dense"):
            raise ValueError(f"dense=True needs a causal model with forward_dense (tcn), not {cfg.model!r}")
        if cfg.loader != "device":
            raise ValueError("dense=True gathers chunks on the device: use loader='device'")
        data = DenseData(fs, cfg.window, device, scale, cfg.dense_chunk, model.receptive_field)
        return data, data
    data = DeviceData(fs, cfg.window, device, scale)
    if cfg.loader == "device":
        return data, data
    if cfg.loader == "dataloader":
        return data, DataLoaderData(fs, cfg.window, device, scale, cfg.batch_size, cfg.num_workers,
                                    cfg.pin_memory, cfg.prefetch_factor, cfg.persistent_workers)
    raise ValueError(f"loader must be 'device' or 'dataloader', got {cfg.loader!r}")


def peak_flops(device: torch.device) -> float | None:
    """The chip's dense bf16 peak from a small table; None where unknown (MFU is then not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    table = {"h200": 989e12, "h100": 989e12, "a100": 312e12, "l4": 121e12, "4090": 165e12, "5090": 209e12}
    return next((v for k, v in table.items() if k in name), None)


def pooled_test_ic(pred_path: Path) -> dict:
    """Pooled test IC of the model and of the oracle on the same rows, for the summary line."""
    df = pd.read_parquet(pred_path)
    ic = df["prediction"].corr(df["target"]) if len(df) > 2 and df["prediction"].std() > 0 else float("nan")
    has_oracle = df["oracle"].notna().any()
    oracle = df["oracle"].corr(df["target"]) if has_oracle else float("nan")
    return {"test_ic": float(ic), "oracle_ic_test": float(oracle) if has_oracle else None,
            "test_rows": int(len(df))}


def train(cfg: Config, fs: FeatureSet | None = None, progress: bool = True) -> RunResult:
    """Train one run end to end; the function 03_train and `python -m tradelib train` both call.

    Under torchrun every process calls it: each joins the process group, trains its share, and leaves the
    group at the end (also on an error). Only rank 0 prints and writes.
    """
    try:
        trainer = Trainer(cfg, fs, progress)
        if trainer.main:
            print(f"run {trainer.run_id}: {cfg.model}, {n_params(trainer.model):,} parameters, "
                  f"{len(trainer.data.ends(0)):,} training windows, global batch "
                  f"{trainer.global_batch * trainer.world} ({cfg.batch_size} x {cfg.grad_accum_steps} accumulation"
                  f"{f' x {trainer.world} ranks' if trainer.world > 1 else ''}), {trainer.total_steps} optimizer "
                  f"steps, lr {trainer.lr:g}, device {trainer.device}")
        summary = trainer.fit()
    finally:
        cleanup_distributed()
    if trainer.main:
        oracle = summary.get("oracle_ic_test")
        print(f"done: {summary['samples_per_s']:,.0f} samples/s, test IC {summary.get('test_ic', float('nan')):.4f}"
              + (f" (oracle {oracle:.4f})" if oracle is not None else "") + f", outputs in {trainer.dir}")
    return RunResult(trainer.dir, summary, trainer.model, trainer.fs)
