"""What the 02_profiling notebook calls: a batch-size sweep per loader, a torch.profiler trace of the real
training step, and the largest batch that fits in memory.

The seed raised its batch from 128 to 1024 and read it/s; samples/s and the data-wait share are the figures
that say whether the input pipeline or the model is the limit. Everything here drives the Trainer's own
step through measure.py's `Runner`, so the sweep, the trace and the bench all measure the same code.
"""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

from tradelib.config import Config
from tradelib.data import dataset
from tradelib.hardware import mfu_peak, pick_device, sync
from tradelib.paths import atomic_write_bytes
from tradelib.perf.measure import (
    Runner,
    device_events,
    make_setups,
    measure,
    quiet_profiler,
    split_list,
    step_peak_bytes,
)

SWEEP_COLUMNS = ["loader", "batch_size", "targets_per_step", "samples_per_s", "speedup", "unlike", "it_per_s",
                 "data_wait_share",
                 "batches_per_epoch", "peak_mem_bytes", "mfu", "gpu_busy_pct", "step_time_s", "mfu_invalid",
                 "mfu_invalid_reason", "other_cores", "busy_note"]
# (an MFU that cannot be right: mfu empty, the value and why beside it; busy_note: timed on a busy machine; unlike:
# a speed-up over a row that trains another number of targets a step, as dense's batch of chunks does)


def write_sweep(sweep: pd.DataFrame, path: Path) -> Path:
    """The sweep as CSV (batch_size_sweep.csv, which the report reads back), written whole or not at all: 02 stopped
    while writing it leaves the file it had, never half of a new one."""
    atomic_write_bytes(sweep.to_csv(index=False).encode(), Path(path))
    return Path(path)


def batch_size_sweep(cfg: Config, batch_sizes: Sequence[int] | None = None, loaders: Sequence[str] | None = None,
                     verbose: bool = False, seconds: float = 0.0) -> pd.DataFrame:
    """samples/s, it/s, memory, data-wait share and batches per epoch for each loader and batch size (default:
    cfg.batch_sizes and cfg.loaders), with cfg.steps, cfg.warmup and cfg.repeats.

    All (loader, batch size) pairs are measured interleaved on the same data; "dense" (causal models) uses
    batch sizes in chunks. One row per pair, `speedup` against the seed's DataLoader at the same batch size
    (dense: against per-window); the full records are in the `records` attribute.

    `seconds` > 0: a time budget the work is sized to. A pilot (one warm-up and two timed steps of each loader
    at the smallest batch size) gives the time a step costs; the timed steps per configuration are then as many
    as fit (at least 3, at most cfg.steps), and the batch sizes, measured one after another smallest first,
    stop where the next would end past the budget (named in the `skipped_sizes` attribute). Every row's MFU is
    over the same peak (`mfu_peak`, taken once: on a CPU a measured matmul rate)."""
    device = pick_device(cfg.device, verbose=False)
    cfg = cfg.replace(device=str(device))
    sizes = sorted({int(b) for b in (batch_sizes or split_list(cfg.batch_sizes))})
    t0 = time.perf_counter()
    peak = mfu_peak(device, cfg.peak_tflops, cfg.max_other_load)  # one MFU denominator for every batch size

    said: list[bool] = []  # a loader skipped (dense for a model without it) is said once, not left out silently

    def setups_at(group: list[int]) -> list:
        setups = []
        for bs in group:
            base = cfg.replace(batch_size=bs, dense_batch=bs)
            for s in make_setups(base, cfg.model, loaders or split_list(cfg.loaders), group=f"@{bs}",
                                 verbose=verbose or not said):
                s.label = f"{s.label}@{bs}"
                setups.append(s)
            said.append(True)
        return setups

    def run(group: list[int], steps: int, warmup: int) -> list[dict]:
        return measure(setups_at(group), steps=steps, warmup=warmup, repeats=cfg.repeats, verbose=verbose,
                       max_other_load=cfg.max_other_load, peak=peak)

    skipped: list[int] = []
    # 02 gives the sweep a share of profile_seconds (12 s of 20 had read 'profile_seconds 12 s')
    share = f"(its share of profile_seconds {cfg.profile_seconds:g} s)"
    if seconds <= 0:
        records = run(sizes, cfg.steps, cfg.warmup)
    else:
        t1 = time.perf_counter()
        pilot = run(sizes[:1], 2, 1)  # the pilot: its figures are not kept
        step_s = sum(cfg.grad_accum_steps / r["it_per_s"] for r in pilot)  # a step of every loader at sizes[0]
        per_step = step_s / sizes[0]  # seconds per step per window of batch, for all the loaders
        fixed = max(0.0, time.perf_counter() - t1 - 3 * step_s * cfg.repeats)  # each measure(): data, models
        left = seconds - (time.perf_counter() - t0) - fixed * len(sizes)
        work = sum(sizes) * per_step * cfg.repeats
        steps = max(3, min(cfg.steps, int(left / work) - cfg.warmup)) if work > 0 else cfg.steps
        if steps < cfg.steps:
            print(f"sweep budget {seconds:.0f} s {share}: {steps} timed steps per configuration (steps={cfg.steps} "
                  f"would not fit; a step takes about {per_step * sizes[0]:.2f} s at batch {sizes[0]})")
        records = []
        for i, bs in enumerate(sizes):
            elapsed = time.perf_counter() - t0
            if records and elapsed + fixed + (steps + cfg.warmup) * per_step * bs * cfg.repeats > seconds:
                skipped = sizes[i:]
                print(f"batch sizes {', '.join(map(str, skipped))} left out: they would not finish within the "
                      f"sweep's budget of {seconds:.0f} s {share} ({elapsed:.0f} s spent)")
                break
            records += run([bs], steps, cfg.warmup)
    df = pd.DataFrame(records).reindex(columns=SWEEP_COLUMNS)
    df.attrs["skipped_sizes"] = skipped
    df = df.sort_values(["loader", "batch_size"], ignore_index=True)
    df.attrs["records"] = records
    return df


def _runner(cfg: Config) -> Runner:
    """A Runner for this config's data, model and loader, streamed (loader stream, or data above
    device_memory_budget) as a run of it streams: its own budget and blocks, not the bench's."""
    cfg = cfg.replace(device=str(pick_device(cfg.device, verbose=False)))
    setup = make_setups(cfg.replace(dense_batch=cfg.batch_size), cfg.model, ["dense" if cfg.dense else cfg.loader],
                        verbose=False)[0]
    setup.own_budget = True
    return Runner(setup, dataset.prepare(cfg, verbose=False))


def profile_step(cfg: Config, trace_path: str | Path | None = None, top: int = 25) -> pd.DataFrame:
    """torch.profiler over cfg.profile_steps training steps (CPU and, where present, CUDA activities) after
    cfg.warmup untimed ones. Writes a Chrome/Perfetto trace (open in ui.perfetto.dev or chrome://tracing) to
    `trace_path` and returns the top ops by self time (device time on CUDA) as a DataFrame. The trace marks
    each "train step" and its "fetch batch" so the data wait is visible beside the kernels."""
    runner = _runner(cfg)
    try:
        device = runner.device
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        runner.run(cfg.warmup, 1)
        with quiet_profiler(), profile(activities=activities, record_shapes=False) as prof:
            runner.run(0, cfg.profile_steps)
        if trace_path:
            Path(trace_path).parent.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(trace_path))
        return top_ops(prof.key_averages(), device.type == "cuda", top)
    finally:
        runner.close()


def top_ops(averages, on_device: bool, top: int) -> pd.DataFrame:
    """The `top` rows of a trace's key_averages by self time, with their share of it: on a CPU the ops' self CPU
    time; on a GPU (`on_device`) the device's kernels and copies alone (`device_events`), as torch's own table
    shares them: a CPU op's device time and a record_function range's span on the device repeat those kernels."""
    rows = [{"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
             "cpu_total_ms": e.cpu_time_total / 1e3,
             # off a GPU no device activity was profiled: its times are unknown, not 0 ms
             "self_device_ms": e.self_device_time_total / 1e3 if on_device else float("nan"),
             "device_total_ms": e.device_time_total / 1e3 if on_device else float("nan")}
            for e in (device_events(averages) if on_device else averages)]
    df = pd.DataFrame(rows)
    key = "self_device_ms" if on_device else "self_cpu_ms"
    df = df.sort_values(key, ascending=False, ignore_index=True).head(top)
    df["share_of_self_time"] = df[key] / max(sum(r[key] for r in rows), 1e-12)
    return df


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        try:  # hand freed heap pages back to the OS (glibc); best effort
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class StepProbe:
    """Runs single training steps at any micro-batch size and reports their peak memory."""

    def __init__(self, cfg: Config, limit: int = 1 << 20) -> None:
        # one micro-batch per step whatever its size: batch_size is the largest size probed; eager steps, measured
        # one at a time (a step of exactly batch_size would record a step graph: three warm-up steps and a capture)
        self.runner = _runner(cfg.replace(loader="device", batch_size=max(limit, cfg.batch_size),
                                          grad_accum_steps=1, cuda_graphs="false"))
        self.trainer, self.device = self.runner.trainer, self.runner.device
        self.cuda = self.device.type == "cuda"
        self.gen = torch.Generator().manual_seed(0)
        self.step(min(cfg.batch_size, 8))  # optimizer state and lazy allocations exist before measuring

    def step(self, batch: int) -> None:
        ids = torch.randint(0, len(self.trainer.source), (batch,), generator=self.gen).to(self.device)  # any size
        self.trainer.step(ids)
        sync(self.device)

    def peak_bytes(self, batch: int) -> int | None:
        """CUDA: max_memory_allocated over one step (None on out-of-memory); CPU: peak bytes of the CPU
        tensors the step allocates (torch.profiler memory events; resident data not counted)."""
        _release_memory(self.device)
        if not self.cuda:
            return step_peak_bytes(lambda: self.step(batch))
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            self.step(batch)
        except torch.cuda.OutOfMemoryError:
            self.trainer.opt.zero_grad(set_to_none=True)
            return None
        return int(torch.cuda.max_memory_allocated(self.device))

    def close(self) -> None:
        self.runner.close()
        _release_memory(self.device)


class _BudgetSpent(Exception):
    """find_max_batch's time budget ran out (its own: a TimeoutError from torch or a DataLoader is not this)."""


def find_max_batch(cfg: Config, start: int = 256, limit: int = 1 << 20, budget_bytes: int | None = None,
                   rel_tol: float = 1 / 32, verbose: bool = True, seconds: float = 0.0) -> int:
    """The largest micro-batch (windows, or chunks with dense=True) whose training step fits in memory.

    Doubles from `start` until a step fails (or `limit`), then bisects to within `rel_tol`. On CUDA a step
    fails on torch.cuda.OutOfMemoryError, or when `budget_bytes` is given and max_memory_allocated exceeds
    it; the feature matrix resident on the device counts, as in training with the device loader. On the CPU
    nothing runs out, so the bound is `budget_bytes` (default cfg.cpu_budget_mb) on the peak
    bytes of CPU tensors one step allocates (torch.profiler memory events), resident data not counted.
    `seconds` > 0: a time budget; the search stops when it is spent, with the largest batch found to fit."""
    deadline = time.perf_counter() + seconds if seconds > 0 else float("inf")
    probe = StepProbe(cfg, limit)
    if not probe.cuda and budget_bytes is None:
        budget_bytes = cfg.cpu_budget_mb * 2**20
    if verbose:
        where = f"{torch.cuda.get_device_name(probe.device)} memory" if probe.cuda else "the CPU"
        bound = f" within a budget of {budget_bytes / 2**20:,.1f} MiB" if budget_bytes else ""
        extra = "" if probe.cuda else " (CPU: nothing runs out of memory, so the bound is the budget on one step)"
        print(f"find_max_batch: {cfg.model} on {where}{bound}{extra}")

    def fits(b: int) -> bool:
        if lo and time.perf_counter() > deadline:
            raise _BudgetSpent
        used = probe.peak_bytes(b)
        ok = used is not None and (budget_bytes is None or used <= budget_bytes)
        if verbose:
            mem = "out of memory" if used is None else f"{used / 2**20:,.2f} MiB"
            print(f"  batch {b:>9,}: {'fits' if ok else 'does not fit'} ({mem})")
        return ok

    lo, hi, b = 0, limit + 1, min(start, limit)
    try:
        while b <= limit:  # double until a failure brackets the answer
            if not fits(b):
                hi = b
                break
            lo = b
            if b == limit:
                break
            b = min(2 * b, limit)
        while hi <= limit and hi - lo > max(1, int(lo * rel_tol)):  # bisect inside (lo, hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    except _BudgetSpent:
        print(f"find_max_batch: the time budget of {seconds:.0f} s is spent: at least {lo:,} fits (not searched "
              f"further; raise profile_seconds for the exact figure)")
    finally:
        probe.close()
    if lo == 0:
        raise RuntimeError(f"find_max_batch: not even a batch of 1 fits ({cfg.model}, budget {budget_bytes} bytes)")
    if verbose:
        print(f"find_max_batch: {lo:,}" + (" (the limit)" if lo == limit else ""))
    return lo
