"""The training step: a model, its optimizer and LR schedule, and one exact, accumulating optimizer step.

One optimizer step = `grad_accum_steps` micro-batches. Each micro-batch adds sum(squared error) / N to the
gradients, N being the number of valid targets in the whole accumulated batch (over all DDP ranks), so the
step equals one big batch of N: also for the last, partial window of an epoch and for masked dense targets.
The LR schedule advances once per optimizer step. A non-finite loss or gradient norm skips the step on the
device (fused AdamW's `found_inf`), with no host sync; so does a step without one valid target (N = 0), whose
zero gradient would otherwise still move the weights (AdamW's momentum and weight decay). The loss is
`masked_sse`, which validation calls too.

`Trainer.step(ids)` is the whole step and the only thing the run loop, the bench and 02_profiling call; it
knows nothing of files, epochs or logging (run.py holds those).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from tradelib.config import Config
from tradelib.distributed import all_reduce
from tradelib.hardware import autocast, resolved_precision
from tradelib.train.checkpoint import rng_state, set_rng_state
from tradelib.train.sources import Batch, BatchSource, Windows, torch_seed
from tradelib.train.stream import StreamWindows


@dataclass
class StepStats:
    """One optimizer step's figures. Tensors stay on the device: reading them syncs, so read at log points."""

    sse: torch.Tensor  # sum of squared errors over this rank's valid targets
    n_valid: torch.Tensor  # valid targets of the step over all ranks (float64; 0: the update was skipped)
    norm: torch.Tensor  # gradient norm before clipping
    skipped: torch.Tensor  # True where the loss or the gradient was non-finite: the update was skipped
    micro_batches: int
    fetch_s: float  # host seconds inside source.fetch
    fetch_marks: list = field(default_factory=list)  # CUDA: stream events around each fetch (see _cuda_mark)


def masked_sse(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss, defined once: (sum of squared errors over the valid targets, their number), summed in `dtype`.
    A valid target is one where `mask` is True (every target without a mask). Training divides the sum by the
    valid targets of the whole optimizer step, validation by the split's: both are the mean squared error."""
    err = (pred.float() - y) ** 2
    if mask is None:
        return err.sum(dtype=dtype), torch.full((), err.numel(), dtype=dtype, device=err.device)
    return torch.where(mask, err, 0.0).sum(dtype=dtype), mask.sum(dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(torch_seed(seed))


def scaled_lr(cfg: Config, world: int = 1) -> float:
    """The LR scaling rule, applied only when asked: linear or square root in the global batch."""
    ratio = cfg.batch_size * cfg.grad_accum_steps * world / cfg.reference_batch
    return {"none": cfg.lr, "linear": cfg.lr * ratio, "sqrt": cfg.lr * math.sqrt(ratio)}[cfg.lr_scaling]


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


def maybe_compile(model: torch.nn.Module, cfg: Config, device: torch.device, probe: torch.Tensor):
    """torch.compile when asked (auto: on CUDA); falls back to eager and says why if it fails.

    `reduce-overhead` adds CUDA graphs: one replay instead of a launch per kernel, for small models whose
    step is launch-bound on a GPU."""
    want = cfg.compile in ("on", "reduce-overhead") or (cfg.compile == "auto" and device.type == "cuda")
    if not want:
        return model, "off"
    mode = "reduce-overhead" if cfg.compile == "reduce-overhead" else None
    if mode and device.type == "cuda" and cfg.grad_accum_steps > 1:
        # the first micro-batch's gradient becomes .grad as the graph's own output buffer, which the next
        # replay overwrites: accumulation breaks (pytorch/pytorch#169545, #96693)
        print("compile=reduce-overhead with grad_accum_steps > 1: CUDA graphs would overwrite the gradient "
              "accumulated so far with each micro-batch's; compiling without CUDA graphs (compile=on)")
        mode = None
    try:
        compiled = torch.compile(model, mode=mode)
        with torch.no_grad(), autocast(device, cfg.precision):
            compiled(probe)
        return compiled, mode or "on"
    except Exception as exc:  # noqa: BLE001 - any compiler failure means eager, reported
        print(f"torch.compile failed, training eagerly: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return model, f"failed: {type(exc).__name__}"


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


class Trainer:
    """The model, its optimizer and LR schedule, and the step. `source` feeds training; `windows` evaluation."""

    def __init__(self, cfg: Config, model: torch.nn.Module, windows: Windows | StreamWindows, source: BatchSource,
                 device: torch.device, world: int = 1, verbose: bool = True) -> None:
        self.cfg, self.model, self.windows, self.source = cfg, model, windows, source
        self.device, self.world = device, world
        n_train = len(source) // world
        if n_train == 0:
            raise ValueError("no training windows: the data is shorter than one window per split")
        self.global_batch = cfg.batch_size * cfg.grad_accum_steps  # per rank; x world for the whole step
        self.steps_per_epoch = math.ceil(n_train / self.global_batch)
        # micro-batches: an epoch's last, partial step may take fewer than grad_accum_steps
        self.batches_per_epoch = math.ceil(n_train / cfg.batch_size)
        self.total_steps, self.warmup = self.schedule(cfg.epochs, cfg.max_steps)
        self.lr = scaled_lr(cfg, world)
        self.precision = resolved_precision(cfg.precision, device)  # fp32, bf16 or fp16
        if self.precision == "fp16" and device.type == "cpu" and any(
                isinstance(m, torch.nn.RNNBase) for m in model.modules()):
            raise ValueError(f"precision fp16 with model {cfg.model} on the CPU: oneDNN has no fp16 LSTM/GRU kernel; "
                             f"use precision fp32 or bf16 on the CPU")
        # fp16's range is too narrow for small gradients: the loss is scaled up, the gradients back down
        self.scaler = make_scaler(device) if self.precision == "fp16" else None
        if verbose and cfg.precision == "auto" and device.type == "cuda":
            print(f"precision auto: {self.precision} autocast" + (
                " with a GradScaler (this card has no native bf16)" if self.scaler else ""))
        self.opt = make_optimizer(model, cfg, self.lr, device)
        self.fused = bool(self.opt.defaults.get("fused"))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, self.warmup, self.total_steps, cfg.min_lr_ratio))
        probe = next(windows.batches(windows.ends(0)[:2], 2))[0]
        self.fwd, self.compiled = maybe_compile(model, cfg, device, probe)
        # dense mode trains through forward_dense; evaluation stays per window (the same function)
        train_module, train_probe, self.train_fwd = model, probe, self.fwd
        if cfg.dense:
            train_module = DenseForward(model)
            train_probe = source.fetch(torch.arange(min(2, len(source)), device=device)).x
            self.train_fwd, _ = maybe_compile(train_module, cfg, device, train_probe)
        if world > 1:  # evaluation keeps self.fwd: only rank 0 evaluates, with no collective
            unused = unused_parameters(train_module, train_probe, device)
            if unused and verbose:
                print(f"DDP: {', '.join(unused)} get no gradient (unused in forward): find_unused_parameters=True, "
                      f"which walks the graph every step; a model without unused parameters avoids it")
            ids = [device.index] if device.type == "cuda" else None
            self.train_fwd = DDP(self.train_fwd, device_ids=ids, find_unused_parameters=bool(unused))
        # the step graph is recorded at the first step; graphs_reason says why it is on or off
        self.graphs, self.graphs_reason = use_step_graph(cfg, device, world, self.fused, model, self.compiled)
        if verbose or (cfg.cuda_graphs == "true" and not self.graphs):
            print(f"cuda_graphs: {'on' if self.graphs else 'off'} ({self.graphs_reason})")
        self.graph: StepGraph | None = None
        self.graph_steps = 0  # steps taken by replaying the step graph

    def schedule(self, epochs: int, max_steps: int) -> tuple[int, int]:
        """(total optimizer steps, warm-up steps) of a run of this length: the LR schedule is fitted to them."""
        total = self.steps_per_epoch * epochs
        total = min(total, max_steps) if max_steps > 0 else total
        return total, min(self.cfg.warmup_steps, max(1, total // 10))

    def step_lr(self, step: int, schedule: tuple[int, int] | None = None) -> float:
        """The learning rate optimizer step `step` trains at, steps counted from 1 as the run loop, metrics.jsonl
        and train_facts.json count them: the schedule at position step - 1, since LambdaLR advances after the
        step. `schedule`: (total steps, warm-up steps) of another run length; this run's by default."""
        total, warmup = schedule or (self.total_steps, self.warmup)
        return self.lr * lr_factor(step - 1, warmup, total, self.cfg.min_lr_ratio)

    # -- the step ------------------------------------------------------------------------------------------
    def step(self, ids: torch.Tensor) -> StepStats:
        """One optimizer step over these items (this rank's share of the step), in micro-batches of batch_size."""
        if self.graphs and len(ids) == self.global_batch:
            return self.graph_step(ids)
        stats = self.accumulate(ids)  # without the graph, or an epoch's last, partial step
        stats.norm, stats.skipped = self.update(stats.sse, stats.n_valid)
        return stats

    def graph_step(self, ids: torch.Tensor) -> StepStats:
        """The step by replaying the step graph (recorded at the first call): its micro-batches are fetched first,
        then copied into the graph's buffers. If the recording failed, the same step eagerly."""
        n_valid, seconds, marks = self.valid_count(ids), [], []
        batches = list(self.fetched(ids.split(self.cfg.batch_size), seconds, marks))
        if self.graph is None:
            self.graph = self.record(batches, n_valid)
        if self.graph is not None and self.graph.fits(batches):
            sse, norm, bad = self.graph.run(batches, n_valid)
            self.sched.step()
            self.graph_steps += 1
        else:
            sse = self.backward_all(batches, len(batches), n_valid)
            norm, bad = self.update(sse, n_valid)
        return StepStats(sse, n_valid, norm, bad, len(batches), sum(seconds), marks)

    def record(self, batches: list[Batch], n_valid: torch.Tensor) -> StepGraph | None:
        """The step graph for steps shaped like this one; None, said and for the rest of the run, if the
        recording fails (the run goes on eagerly from the same state)."""
        try:
            return StepGraph(self, batches, n_valid, capture=self.device.type == "cuda")
        except Exception as exc:  # noqa: BLE001 - any capture failure means eager, reported
            self.graphs = False
            self.graphs_reason = f"recording the step failed: {type(exc).__name__}"
            self.opt.zero_grad(set_to_none=True)
            if self.scaler is not None:  # a recording that failed mid-step can leave the scaler's bookkeeping there
                fresh = make_scaler(self.device)
                fresh.load_state_dict(self.scaler.state_dict())
                self.scaler = fresh
            print(f"cuda_graphs: recording the step failed, training without the step graph: "
                  f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            return None

    def valid_count(self, ids: torch.Tensor) -> torch.Tensor:
        """Valid targets of the step over all ranks (0 when every target is masked: the update is skipped)."""
        return all_reduce(self.source.count(ids).clone())

    def fetched(self, chunks: Iterable[torch.Tensor], seconds: list, marks: list) -> Iterator[Batch]:
        """The micro-batches of these chunks of ids, each fetched when it is asked for; the host seconds of each
        fetch go into `seconds` and, on CUDA, the stream events around it into `marks`."""
        for part in chunks:
            t0, start = time.perf_counter(), self._cuda_mark()
            batch = self.source.fetch(part)
            seconds.append(time.perf_counter() - t0)
            if start is not None:
                marks.append((start, self._cuda_mark()))
            yield batch

    def accumulate(self, ids: torch.Tensor) -> StepStats:
        """Forward and backward of every micro-batch of `ids`, each fetched just before its forward: the
        gradients of the mean loss over the whole step are left in the parameters' .grad."""
        n_valid, seconds, marks = self.valid_count(ids), [], []
        chunks = ids.split(self.cfg.batch_size)
        sse = self.backward_all(self.fetched(chunks, seconds, marks), len(chunks), n_valid)
        nothing = torch.zeros((), device=self.device)
        return StepStats(sse, n_valid, nothing, nothing.bool(), len(chunks), sum(seconds), marks)

    def backward_all(self, batches: Iterable[Batch], count: int, n_valid: torch.Tensor,
                     cache: bool = True) -> torch.Tensor:
        """The micro-steps of one optimizer step (the eager step's and the step graph's): forward and backward
        of each of the `count` micro-batches; returns their summed squared errors. DDP syncs the gradients on
        the last micro-batch only."""
        sse = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            sse = sse + self.backward(batch, n_valid, sync=i == count - 1, cache=cache)
        return sse

    def backward(self, batch: Batch, n_valid: torch.Tensor, sync: bool = True, cache: bool = True) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its sum of squared errors (on the device).

        The gradient gets sum(error^2) / n_valid from this micro-batch, n_valid counting the valid targets of
        the whole accumulated batch over all ranks: the K micro-batches of a step then add up to the mean over
        the whole batch, however the valid targets fall. DDP averages over ranks, hence the factor world.
        fp16: the loss is scaled by the GradScaler's factor (`apply` unscales the gradients).
        `sync=False` (all but the last micro-step) leaves the gradients unsynchronised; `cache=False` turns
        autocast's weight cache off (while recording the step graph).
        """
        ctx = self.train_fwd.no_sync() if self.world > 1 and not sync else contextlib.nullcontext()
        with ctx:
            with autocast(self.device, self.precision, cache):
                pred = self.train_fwd(batch.x)
            sse, _ = masked_sse(pred, batch.y, batch.mask)
            loss = sse * self.world / n_valid.clamp(min=1).float()  # fp32, as the loss; counts < 2^24 are exact
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        return sse.detach()

    def update(self, loss: torch.Tensor | None = None, n_valid: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip, skip on a non-finite norm or loss or on no valid target (decided on the device), step, advance
        the schedule. Returns (pre-clip gradient norm, the flag of a non-finite step).

        The LR schedule advances on a skipped step too: it follows the optimizer-step counter, which counts
        the batches consumed, so a skip costs one update, not a shift of the whole schedule."""
        norm, bad = self.apply(loss, n_valid)
        self.sched.step()
        return norm, bad

    def apply(self, loss: torch.Tensor | None = None, n_valid: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The update without the schedule (what the step graph records). Fused AdamW takes the skip flag as
        `found_inf` (GradScaler's hook): it leaves weights, moments and its own step count untouched, with no
        host sync. A step with `n_valid` 0 is skipped too, without counting as non-finite (the returned flag).
        fp16: the GradScaler unscales the gradients first; an fp16 overflow leaves an inf or NaN in
        them and so in the norm, which joins the overflow to this one skip. The scaler then backs its factor
        off (or grows it after growth_interval clean steps), on the device."""
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        bad = ~torch.isfinite(norm)  # a NaN or inf loss gives a non-finite gradient and so a non-finite norm
        if loss is not None:
            bad = bad | ~torch.isfinite(loss)  # and an overflowing loss whose gradient stayed finite
        if self.world > 1:  # the gradients agree after DDP's all-reduce, the local losses need not
            bad = all_reduce(bad.float(), "max").bool()
        skip = bad if n_valid is None else bad | (n_valid == 0)  # (n_valid is the same on every rank)
        if self.fused:
            self.opt.found_inf = skip.float()  # fused AdamW skips the update when this is non-zero
            self.opt.step()
        elif not bool(skip):  # host sync: only without fused AdamW
            self.opt.step()
        if self.scaler is not None:
            self.scaler.update()
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

    # -- evaluation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, ends: torch.Tensor) -> torch.Tensor:
        """Predictions in scaled target units for these window ends, on the device (eval mode, autocast)."""
        self.model.eval()
        out = torch.empty(len(ends), device=self.device)
        i = 0
        with autocast(self.device, self.precision):
            for x, _ in self.windows.batches(ends, self.cfg.eval_batch_size):
                # copied out at once: under CUDA graphs the next replay overwrites the graph's output buffer
                out[i : i + len(x)] = self.fwd(x)
                i += len(x)
        self.model.train()
        return out

    def sse_count(self, split: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of squared errors, windows) over a split's windows (`masked_sse`), on the device: the parts of a
        mean that ranks holding different windows add up (shard_data), summed in float64 by default."""
        ends = self.windows.ends(split)
        if len(ends) == 0:
            zero = torch.zeros((), dtype=dtype, device=self.device)
            return zero, zero.clone()
        return masked_sse(self.predict(ends), self.windows.targets(ends), dtype=dtype)

    def loss(self, split: int) -> float:
        """Mean squared error (scaled target units) over a split's windows; NaN (0 / 0) when it has none. Summed in
        float32, as every run so far has logged it."""
        sse, n = self.sse_count(split, torch.float32)
        return float(sse / n)

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict()}
        if self.scaler is not None:  # fp16
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])  # new optimizer state tensors: a step graph reads the old
        self.sched.load_state_dict(state["scheduler"])
        self.set_scheduled_lr()
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.graph = None  # recorded again at the next step

    def set_scheduled_lr(self) -> None:
        """The learning rates this run's schedule gives at the loaded step. The optimizer's state brings the LR its
        writer's schedule set, which differs when a resume changes epochs or max_steps (the schedule is refitted):
        without this the first step after such a resume would take the old schedule's LR. The same expression as
        LambdaLR's, so an unchanged schedule gives the very same floats."""
        factor = lr_factor(self.sched.last_epoch, self.warmup, self.total_steps, self.cfg.min_lr_ratio)
        for group, base in zip(self.opt.param_groups, self.sched.base_lrs):
            group["lr"] = base * factor
        self.sched._last_lr = [group["lr"] for group in self.opt.param_groups]  # what get_last_lr() reports

    def flops_per_sample(self) -> float | None:
        from tradelib.train.models import training_flops_per_sample

        return training_flops_per_sample(self.model, self.cfg.dense, self.cfg.dense_chunk)

    def flops_per_item(self) -> float | None:
        """Training FLOPs per item of a step's ids (a window, or a dense chunk): what MFU counts, since a chunk
        computes all its rows whatever number of them have a known target."""
        from tradelib.train.models import training_flops_per_item

        return training_flops_per_item(self.model, self.cfg.dense, self.cfg.dense_chunk)


def make_scaler(device: torch.device) -> torch.amp.GradScaler:
    """fp16's loss scaling, torch's defaults (2^16, halved after an overflow, doubled after 2000 clean steps)."""
    return torch.amp.GradScaler(device.type)


def graphs_refused(device: torch.device, world: int, fused: bool, model: torch.nn.Module, compiled: str
                   ) -> str | None:
    """Why the step graph cannot be used here, or None when it can. `compiled`: what `maybe_compile` made of
    cfg.compile (off, on, reduce-overhead), which drops reduce-overhead's graphs under accumulation or a failure."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, this run is on {device}"
    if world > 1:
        return ("not with DDP: its gradient all-reduce would have to be recorded in the graph, which needs a fixed "
                "bucket layout and NCCL set up for capture, not done or tested here (docs/distributed.md)")
    if compiled == "reduce-overhead":
        return "compile=reduce-overhead already replays the forward and backward as CUDA graphs"
    if not fused:
        return "it needs fused AdamW, which skips a non-finite step on the device"
    if rnns := cudnn_dropout_rnns(model):
        # PyTorch's get_dropout_state: the state is re-seeded (a new buffer) at the first training call after the
        # generator's state is set, e.g. by seeding another run in the same process
        return (f"not with cuDNN's LSTM/GRU dropout ({rnns[0] or 'the model'}, dropout > 0): cuDNN keeps its masks' "
                f"random state in a buffer that re-seeding torch's generator replaces, and a recorded graph would "
                f"go on writing to the freed one (torch's own dropout, as in mlp and tcn, is fine)")
    return None


def use_step_graph(cfg: Config, device: torch.device, world: int, fused: bool, model: torch.nn.Module,
                   compiled: str) -> tuple[bool, str]:
    """(whether the step graph is used, why): `auto` and `true` use it wherever `graphs_refused` allows it,
    `false` never."""
    if cfg.cuda_graphs == "false":
        return False, "cuda_graphs=false"
    why_not = graphs_refused(device, world, fused, model, compiled)
    if why_not:
        return False, why_not
    return True, f"cuda_graphs={cfg.cuda_graphs}: one CUDA process with fused AdamW"


def cudnn_dropout_rnns(model: torch.nn.Module) -> list[str]:
    """The model's LSTMs/GRUs that apply dropout: cuDNN draws those masks from a state buffer of its own."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.RNNBase) and m.dropout > 0]


class StepGraph:
    """The whole optimizer step (the forward and backward of its K micro-batches, the loss, clipping, the skip
    decision, fused AdamW, fp16's loss scaling) recorded once as a CUDA graph and replayed: one launch a step
    instead of one per kernel, for models whose kernels are too short to hide the host's launches. Replays read
    the micro-batches, the valid count and the learning rates from fixed buffers, which `run` fills; the
    schedule stays a float on the host. The micro-steps are the eager step's own (`Trainer.backward_all`): the
    gradients accumulate in place over the K backward passes, inside the one graph.

    Recording needs a few eager steps first (lazy allocations, cuDNN and cuBLAS set-up, compilation), on a side
    stream; they run on this step's batches and are then undone (weights, optimizer moments and step counts,
    the GradScaler's factor, the RNG), so the run's result does not depend on them. The optimizer's state must
    exist before recording and is reset to zeros in place when it did not: allocated during the recording, it
    would be re-zeroed at every replay.

    Dropout: torch's own dropout draws from the CUDA generator's Philox offsets, which a replay advances as the
    eager step would, so replays draw the eager step's masks (cuDNN's LSTM/GRU dropout is refused, see
    `graphs_refused`).

    `capture=False` runs the same steps without recording (what the CPU tests check).
    """

    WARMUP = 3

    def __init__(self, tr: Trainer, batches: list[Batch], n_valid: torch.Tensor, capture: bool = True) -> None:
        self.tr = tr
        self.batches = [Batch(b.x.clone(), b.y.clone(), None if b.mask is None else b.mask.clone()) for b in batches]
        self.n_valid = n_valid.clone()
        # CUDA's fused AdamW reads a float32 learning rate from a tensor (an eager step passes a double: replays
        # differ from eager steps by lr's rounding, ~1e-8 relative); the CPU's reads a double
        dtype = torch.float32 if tr.device.type == "cuda" else torch.float64
        self.lrs = [torch.tensor(float(g["lr"]), dtype=dtype, device=tr.device) for g in tr.opt.param_groups]
        saved = self.save()
        side = torch.cuda.Stream(tr.device) if capture else None
        if side is not None:
            side.wait_stream(torch.cuda.current_stream(tr.device))
        try:
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for _ in range(self.WARMUP):
                    self.body(capturing=False)
        finally:  # also when a warm-up step fails: the run goes on eagerly from the state it had
            if side is not None:
                torch.cuda.current_stream(tr.device).wait_stream(side)
            self.restore(saved)
        tr.opt.zero_grad(set_to_none=True)  # the recorded backward makes its gradients in the graph's memory
        self.graph = torch.cuda.CUDAGraph() if capture else None
        if self.graph is not None:
            # the warm-up's stream: cuBLAS workspaces and such are made per stream, so none is made mid-recording;
            # thread_local: the streaming loader's and pinned-memory threads may use CUDA meanwhile
            with torch.cuda.graph(self.graph, stream=side, capture_error_mode="thread_local"):
                self.out = self.body(capturing=True)

    def fits(self, batches: list[Batch]) -> bool:
        same = lambda a, b: (a is None) == (b is None) and (a is None or (a.shape == b.shape and a.dtype == b.dtype))
        return len(batches) == len(self.batches) and all(
            same(b.x, f.x) and same(b.y, f.y) and same(b.mask, f.mask) for b, f in zip(batches, self.batches))

    def run(self, batches: list[Batch], n_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step on these micro-batches: (sum of squared errors, gradient norm, skipped), copied out of the
        graph's buffers, which the next replay overwrites."""
        for b, f in zip(batches, self.batches):
            f.x.copy_(b.x)
            f.y.copy_(b.y)
            if f.mask is not None:
                f.mask.copy_(b.mask)
        self.n_valid.copy_(n_valid)
        for t, group in zip(self.lrs, self.tr.opt.param_groups):
            t.fill_(group["lr"])
        if self.graph is None:
            return tuple(t.clone() for t in self.body(capturing=False))
        self.graph.replay()
        return tuple(t.clone() for t in self.out)

    def body(self, capturing: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step on the fixed buffers, with the learning rates read from device tensors."""
        groups = self.tr.opt.param_groups
        floats = [g["lr"] for g in groups]
        for g, t in zip(groups, self.lrs):
            g["lr"], g["capturable"] = t, capturing  # capturable: AdamW refuses to be recorded without it
        try:
            sse = self.tr.backward_all(self.batches, len(self.batches), self.n_valid, cache=False)
            norm, bad = self.tr.apply(sse, self.n_valid)
        finally:
            for g, f in zip(groups, floats):
                g["lr"], g["capturable"] = f, False
        return sse, norm, bad

    def save(self) -> dict:
        tr = self.tr
        return {"model": {k: v.detach().clone() for k, v in tr.model.state_dict().items()},
                "opt": {p: {k: v.clone() for k, v in st.items()} for p, st in tr.opt.state.items()},
                "scaler": None if tr.scaler is None else tr.scaler.state_dict(), "rng": rng_state(tr.device)}

    def restore(self, saved: dict) -> None:
        tr = self.tr
        with torch.no_grad():
            for k, v in tr.model.state_dict().items():
                v.copy_(saved["model"][k])
            for p, st in tr.opt.state.items():  # in place: the graph will read these very tensors
                before = saved["opt"].get(p)
                for k, v in st.items():
                    if before is None:
                        v.zero_()  # the state a first step makes: zero moments, step 0
                    else:
                        v.copy_(before[k])
        if saved["scaler"] is not None:
            tr.scaler.load_state_dict(saved["scaler"])  # in place (fill_) once the factor's tensor exists
        set_rng_state(saved["rng"], tr.device)
