"""The trainer: device-resident windows, correct gradient accumulation, one host sync per log interval.

One optimizer step = `grad_accum_steps` micro-batches. Each micro-batch adds sum(squared error) / N to the
gradients, N being the number of targets in the whole accumulated batch, so the step equals one big batch
of N (also for the last, partial window of an epoch, where N is smaller). The LR schedule advances once per
optimizer step. A non-finite gradient norm skips the step on the device (fused AdamW's `found_inf`), with
no host sync; skips are counted and read at the log interval.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from tradelib import cache
from tradelib.config import Config
from tradelib.features import FeatureSet
from tradelib.loaders import DataLoaderData
from tradelib.models import build_model, n_params, training_flops_per_sample
from tradelib.paths import new_run_id, run_dir
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
    """torch.compile when asked (auto: on CUDA); falls back to eager and says why if it fails."""
    want = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    if not want:
        return model, "off"
    try:
        compiled = torch.compile(model)
        with torch.no_grad(), autocast(device, cfg.precision):
            compiled(probe)
        return compiled, "on"
    except Exception as exc:  # noqa: BLE001 - any compiler failure means eager, reported
        print(f"torch.compile failed, training eagerly: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return model, f"failed: {type(exc).__name__}"


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # process peak RSS on Linux


def atomic_save(obj: dict, path: Path) -> None:
    """Write to a temporary file, then rename: a kill mid-write leaves the previous file intact."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
    """Holds the run's state so that it can be checkpointed and resumed at any optimizer step."""

    def __init__(self, cfg: Config, fs: FeatureSet | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.device = pick_device(cfg.device, verbose=self.rank == 0)
        if cfg.resume and not cfg.run_id:
            raise ValueError("resume=True needs the run_id of the run to continue")
        self.run_id = cfg.run_id or new_run_id()
        self.dir = run_dir(self.run_id)
        (self.dir / "checkpoints").mkdir(exist_ok=True)
        seed_everything(cfg.seed)
        self.fs = fs if fs is not None else cache.prepare(cfg, verbose=self.rank == 0)
        self.cache_key = self.fs.meta.get("cache_key", "")
        self.model = build_model(cfg.model, self.fs.n_features, cfg.window, cfg.hidden, cfg.layers,
                                 cfg.dropout, cfg.init_gain, cfg.output_clip).to(self.device)
        self.data, self.source = make_sources(self.fs, self.model, cfg, self.device)
        n_train = self.source.n_items() // self.world
        if n_train == 0:
            raise ValueError("no training windows: the data is shorter than one window per split")
        self.global_batch = cfg.batch_size * cfg.grad_accum_steps
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
        self.step, self.epoch, self.pos = 0, 0, 0
        self.skipped, self.best_val = 0, float("inf")
        self.epochs_since_best = 0
        self.train_time = 0.0
        self.samples_seen = 0
        self.metrics = self.dir / "metrics.jsonl"
        if cfg.resume:
            self._resume()
        elif self.rank == 0:
            self.metrics.write_text("")
        probe = self.data.gather(self.data.ends(0)[:2])[0]
        self.fwd, self.compiled = maybe_compile(self.model, cfg, self.device, probe)
        # dense mode trains through forward_dense; evaluation stays per window (the same function)
        self.train_fwd = self.fwd
        if cfg.dense:
            dense_probe = self.source.batch(torch.arange(min(2, n_train), device=self.device))[0]
            self.train_fwd, _ = maybe_compile(self.model.forward_dense, cfg, self.device, dense_probe)

    # -- checkpoints ---------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": None,  # bf16 needs no gradient scaler
            "step": self.step, "epoch": self.epoch, "pos": self.pos,
            "skipped": self.skipped, "best_val": self.best_val, "epochs_since_best": self.epochs_since_best,
            "train_time": self.train_time, "samples_seen": self.samples_seen,
            "rng": {
                "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "config": self.cfg.to_dict(),
            "cache_key": self.cache_key,
            "feature_names": self.fs.feature_names,
            "target_scale": self.data.target_scale,
        }

    def save_checkpoint(self, tag: str) -> Path | None:
        if self.rank != 0:
            return None
        ckpt_dir = self.dir / "checkpoints"
        path = ckpt_dir / f"{tag}.pt"
        atomic_save(self.state(), path)
        if tag.startswith("step-"):
            steps = sorted(ckpt_dir.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
            for old in steps[: max(0, len(steps) - self.cfg.keep_checkpoints)]:
                old.unlink()
        return path

    def latest_checkpoint(self) -> Path | None:
        ckpts = list((self.dir / "checkpoints").glob("*.pt"))
        ckpts = [p for p in ckpts if p.stem != "best"]
        return max(ckpts, key=lambda p: torch.load(p, map_location="cpu", weights_only=False)["step"],
                   default=None)

    def _resume(self) -> None:
        path = self.latest_checkpoint()
        if path is None:
            raise FileNotFoundError(f"resume: no checkpoint in {self.dir / 'checkpoints'}")
        ck = torch.load(path, map_location=self.device, weights_only=False)
        if ck["cache_key"] != self.cache_key:
            raise ValueError(f"resume refused: {path} was trained on feature cache {ck['cache_key']}, "
                             f"this run's data gives {self.cache_key}")
        mine = self.cfg.to_dict()
        compatible = ("resume", "epochs", "max_steps", "log_every", "checkpoint_every", "device", "compile",
                      "run_id", "keep_checkpoints", "patience", "max_bad_steps", "eval_batch_size", "extra")
        diff = {k: (ck["config"].get(k), mine[k]) for k in mine
                if k not in compatible and ck["config"].get(k) != mine[k]}
        if diff:
            raise ValueError(f"resume refused: config differs from {path}: " +
                             ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()))
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        for k in ("step", "epoch", "pos", "skipped", "best_val", "epochs_since_best", "train_time", "samples_seen"):
            setattr(self, k, ck[k])
        random.setstate(ck["rng"]["python"])
        np.random.set_state(ck["rng"]["numpy"])
        torch.set_rng_state(ck["rng"]["torch"].cpu())
        if ck["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ck["rng"]["cuda"]])
        if self.rank == 0:
            print(f"resumed {self.run_id} from {path.name} at step {self.step} (epoch {self.epoch})")

    def log(self, row: dict) -> None:
        if self.rank == 0:
            with self.metrics.open("a") as f:
                f.write(json.dumps(row) + "\n")

    # -- the loop ------------------------------------------------------------------------------------
    def micro_step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
                   n_valid: int | torch.Tensor) -> torch.Tensor:
        """Forward and backward of one micro-batch; adds sum(error^2) / n_valid to the gradients, n_valid
        counting the valid targets of the whole accumulated batch. Returns the sum (on the device)."""
        with autocast(self.device, self.cfg.precision):
            pred = self.train_fwd(x)
        err = (pred.float() - y) ** 2
        sse = (err * mask).sum() if mask is not None else err.sum()
        (sse / n_valid).backward()
        return sse.detach()

    def optimizer_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip, skip on a non-finite norm (on the device), step, advance the schedule, zero the grads."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        bad = ~torch.isfinite(norm)
        if self.fused:
            self.opt.found_inf = bad.float()  # fused AdamW skips the update when this is non-zero
            self.opt.step()
        elif not bool(bad):  # host sync: only without fused AdamW
            self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return norm.detach(), bad

    def fit(self) -> dict:
        cfg, B, K = self.cfg, self.cfg.batch_size, self.cfg.grad_accum_steps
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {cfg.model}", unit="step",
                   disable=not self.progress or self.rank != 0, dynamic_ncols=True)
        zero = torch.zeros((), device=self.device)
        sse_acc, n_acc, bad_run, skipped_acc, norm_last = zero.clone(), zero.clone(), zero.clone(), zero.clone(), zero
        t_log, wait, steps_since = time.perf_counter(), 0.0, 0
        epoch_start, epoch_sse, epoch_n = time.perf_counter(), zero.clone(), zero.clone()
        stop = False
        try:
            while self.epoch < cfg.epochs and not stop:
                order = self.source.order(0, self.epoch, cfg.seed, self.rank, self.world)
                n = len(order)
                if hasattr(self.source, "start"):
                    self.source.start(order[self.pos :])
                while self.pos < n:
                    if self.step >= self.total_steps:
                        stop = True
                        break
                    group = order[self.pos : self.pos + self.global_batch]
                    n_valid = self.source.count(group)
                    for ids in group.split(B):
                        t0 = time.perf_counter()
                        x, y, mask = self.source.batch(ids)
                        wait += time.perf_counter() - t0
                        sse_acc += self.micro_step(x, y, mask, n_valid)
                    norm_last, bad = self.optimizer_step()
                    bad_run = (bad_run + bad) * bad  # consecutive non-finite steps, on the device
                    skipped_acc += bad
                    n_acc += n_valid
                    self.pos += len(group)
                    self.step += 1
                    steps_since += 1
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.pos >= n or self.step == self.total_steps:
                        if self.device.type == "cuda":
                            torch.cuda.synchronize(self.device)
                        dt = time.perf_counter() - t_log
                        self.train_time += dt
                        n_samples = int(n_acc) * self.world
                        self.samples_seen += n_samples
                        loss = float(sse_acc) / max(int(n_acc), 1)
                        epoch_sse += sse_acc
                        epoch_n += n_acc
                        self.skipped += int(skipped_acc)
                        row = {"kind": "step", "step": self.step, "epoch": self.epoch,
                               "samples": self.samples_seen, "loss": loss, "lr": self.sched.get_last_lr()[0],
                               "grad_norm": float(norm_last), "samples_per_s": n_samples / dt,
                               "it_per_s": steps_since * K / dt, "data_wait_share": wait / dt,
                               "skipped_steps": self.skipped, "elapsed_s": self.train_time}
                        self.log(row)
                        bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{row['samples_per_s']:,.0f}")
                        if int(bad_run) >= cfg.max_bad_steps:
                            raise TrainingDiverged(
                                f"{int(bad_run)} optimizer steps in a row had a non-finite loss or gradient "
                                f"(step {self.step}); stopping. The last good checkpoints stay in "
                                f"{self.dir / 'checkpoints'}")
                        sse_acc.zero_()
                        n_acc.zero_()
                        skipped_acc.zero_()
                        wait, steps_since = 0.0, 0
                        t_log = time.perf_counter()
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.save_checkpoint(f"step-{self.step}")
                if self.pos >= n:
                    stop = self.end_epoch(float(epoch_sse) / max(int(epoch_n), 1), time.perf_counter() - epoch_start)
                    epoch_start = time.perf_counter()
                    epoch_sse.zero_()
                    epoch_n.zero_()
                    t_log = time.perf_counter()
        except KeyboardInterrupt:
            path = self.save_checkpoint("interrupted")
            bar.close()
            print(f"\ninterrupted at step {self.step}; checkpoint {path}. Resume with "
                  f"run_id={self.run_id!r}, resume=True (CLI: -p run_id {self.run_id} -p resume True)")
            raise
        bar.close()
        return self.finish()

    def end_epoch(self, train_loss: float, seconds: float) -> bool:
        """Validation, best checkpoint, early stopping; returns True to stop."""
        val = evaluate_loss(self.fwd, self.data, 1, self.cfg, self.device)
        self.log({"kind": "epoch", "epoch": self.epoch, "step": self.step, "train_loss": train_loss,
                  "val_loss": val, "epoch_time_s": seconds,
                  "samples_per_s": float(epoch_samples(self)) / max(seconds, 1e-9)})
        self.epoch += 1
        self.pos = 0
        improved = val < self.best_val
        if improved:
            self.best_val, self.epochs_since_best = val, 0
            self.save_checkpoint("best")
        else:
            self.epochs_since_best += 1
        self.save_checkpoint(f"step-{self.step}")
        if self.cfg.patience and self.epochs_since_best >= self.cfg.patience:
            if self.rank == 0:
                print(f"early stop: val loss has not improved for {self.epochs_since_best} epochs")
            return True
        return False

    def finish(self) -> dict:
        """Restore the best weights if validation ran, write last.pt, predictions and the summary."""
        best = self.dir / "checkpoints" / "best.pt"
        if self.cfg.patience and best.exists():
            self.model.load_state_dict(torch.load(best, map_location=self.device, weights_only=False)["model"])
        self.save_checkpoint("last")
        summary = self.summary()
        if self.rank == 0:
            self.write_predictions()
            summary.update(test_metrics(self.dir / "predictions.parquet"))
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
            "lr": self.lr, "compiled": self.compiled, "fused_adamw": self.fused,
            "samples_per_s": sps,
            "it_per_s": float(np.median([r["it_per_s"] for r in steps])) if steps else float("nan"),
            "batches_per_epoch": self.steps_per_epoch * self.cfg.grad_accum_steps, "dense": self.cfg.dense,
            "data_wait_share": float(np.median([r["data_wait_share"] for r in steps])) if steps else float("nan"),
            "peak_mem_bytes": peak_memory_bytes(self.device),
            "gpu_util": None,
            "flops_per_sample": flops,
            "mfu": sps * flops / peak if peak else None,
            "epoch_time_s": float(np.median([r["epoch_time_s"] for r in epochs])) if epochs else float("nan"),
            "train_time_s": self.train_time, "optimizer_steps": self.step, "skipped_steps": self.skipped,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "cache_key": self.cache_key, "cache_dir": self.fs.meta.get("cache_dir", ""),
            "train_windows": int(len(self.data.ends(0))), "train_samples_per_epoch": epoch_samples(self), "test_windows": int(len(self.data.ends(2))),
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


def test_metrics(pred_path: Path) -> dict:
    """Pooled test IC of the model and of the oracle on the same rows, for the summary line."""
    df = pd.read_parquet(pred_path)
    ic = df["prediction"].corr(df["target"]) if len(df) > 2 and df["prediction"].std() > 0 else float("nan")
    has_oracle = df["oracle"].notna().any()
    oracle = df["oracle"].corr(df["target"]) if has_oracle else float("nan")
    return {"test_ic": float(ic), "oracle_ic_test": float(oracle) if has_oracle else None,
            "test_rows": int(len(df))}


def train(cfg: Config, fs: FeatureSet | None = None, progress: bool = True) -> RunResult:
    """Train one run end to end; the function 03_train and `python -m tradelib train` both call."""
    trainer = Trainer(cfg, fs, progress)
    if trainer.rank == 0:
        print(f"run {trainer.run_id}: {cfg.model}, {n_params(trainer.model):,} parameters, "
              f"{len(trainer.data.ends(0)):,} training windows, global batch "
              f"{trainer.global_batch * trainer.world} ({cfg.batch_size} x {cfg.grad_accum_steps} accumulation"
              f"{f' x {trainer.world} ranks' if trainer.world > 1 else ''}), {trainer.total_steps} optimizer steps, "
              f"lr {trainer.lr:g}, device {trainer.device}")
    summary = trainer.fit()
    if trainer.rank == 0:
        print(f"done: {summary['samples_per_s']:,.0f} samples/s, test IC {summary.get('test_ic', float('nan')):.4f}"
              f" (oracle {summary.get('oracle_ic_test')}), outputs in {trainer.dir}")
    return RunResult(trainer.dir, summary, trainer.model, trainer.fs)
