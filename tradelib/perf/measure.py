"""Measuring the training step: configurations side by side, with honest data waits, as medians.

`bench` (the command) and 02_profiling (the sweep, the trace, the largest batch) both measure through here.
Each configuration is a real `Trainer` driven through its public `step`: what is timed is the training step
itself, not a copy. Repetitions are interleaved (A B C A B C ...) so that drift (clocks, heat, other load)
hits all configurations alike; warm-up steps (worker start-up, torch.compile, allocator growth) are not
timed; the figures are medians over the repetitions.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from tradelib.config import Config
from tradelib.data import cache, dataset
from tradelib.data.features import FEATURE_NAMES, FeatureSet
from tradelib.hardware import (
    CpuElsewhere,
    MfuPeak,
    busy_fields,
    device_name,
    mfu,
    mfu_peak,
    pick_device,
    resolved_precision,
    sync,
    torch_flags,
)
from tradelib.monitor import GpuMonitor
from tradelib.train.models import MODELS, USER_MODEL, model_for, n_params
from tradelib.train.sources import Batch, BatchSource, Windows
from tradelib.train.stream import make_sources, min_budget, resident_bytes
from tradelib.train.trainer import Trainer, seed_everything

LOADERS = ("dataloader", "device", "dense", "stream")
MODES = ("eager", "graph")  # the step's kernels launched one by one, or the step graph replayed (cuda_graphs)
REQUIRED_KEYS = ("loader", "model", "batch_size", "samples_per_s", "data_wait_share", "it_per_s",
                 "batches_per_epoch", "peak_mem_bytes", "mfu", "device")
# (faster, baseline) pairs of loaders whose samples/s ratio is reported, within one step mode
RATIOS = {"device/dataloader": ("device", "dataloader"), "dense/per_window": ("dense", "device"),
          "stream/resident": ("stream", "device")}


# -- configurations ----------------------------------------------------------------------------------------
@dataclass
class Setup:
    """One configuration to measure: a label, the loader kind, the full run config, the model spec it came
    from, the group whose members are compared as ratios (one model spec, or one batch size of a sweep), and the
    step mode asked for (eager, graph, or "" for what the config says), and the targets a step trains (loaders are
    compared at the same number). A `stream` setup streams through the
    bench's budget (`stream_budget` of the data, at least 32 blocks) unless `own_budget`: the config's own
    device_memory_budget and stream_block_rows, as a run of that config streams (the doctor, 02's trace)."""

    label: str
    loader: str  # dataloader | device | dense | stream
    cfg: Config
    spec: str  # e.g. "tcn:window=64,layers=4"
    group: str
    mode: str = ""
    own_budget: bool = False
    targets_per_step: int = 0  # the targets an optimizer step trains, by design (a dense run's unknown targets aside)


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """'tcn:window=64,layers=4' -> ('tcn', {'window': '64', 'layers': '4'}): a model and its config overrides.
    A model of the user's keeps its class: 'mypkg.nets:Net:window=64' -> ('mypkg.nets:Net', {'window': '64'})."""
    user = USER_MODEL.match(spec.strip())
    if user and spec.strip()[user.end():user.end() + 1] in ("", ":") and user.group(0).split(":")[0] not in MODELS:
        name, rest = user.group(0), spec.strip()[user.end():].removeprefix(":")
    else:
        name, _, rest = spec.partition(":")
        name = name.strip().lower()
    overrides = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"model spec {spec!r}: expected NAME=VALUE after ':', got {item!r}")
        overrides[key.strip()] = value.strip()
    return name.strip(), overrides


def split_list(text: str | int) -> list[str]:
    """'a,b c' -> ['a', 'b', 'c'] (a papermill -p of one number arrives as an int)."""
    return [s for s in str(text).replace(",", " ").split() if s]


def make_setups(base: Config, spec: str, loaders: Sequence[str] = LOADERS[:3], group: str | None = None,
                verbose: bool = True, modes: Sequence[str] | None = None) -> list[Setup]:
    """The configurations of one model spec (a spec's own `loaders=a+b` replaces `loaders`). Dense mode (causal
    models only) gets `dense_batch` chunks per batch, or (0) chunks that train as many targets as `base.batch_size`
    windows (`dense_shape`): the same global batch. `modes` (eager, graph) measures each loader with the
    step's kernels launched one by one and with the step graph, labelled NAME/LOADER/MODE; the graph needs
    CUDA, so on another device its rows are skipped with the reason. A spec that sets cuda_graphs itself keeps
    it (auto: the trainer's choice, labelled NAME/LOADER, its record's `mode` what ran), as does a run without
    `modes`. A spec's `as=LABEL` replaces NAME in its labels."""
    name, overrides = parse_model_spec(spec)
    shown = overrides.pop("as", name)  # `as=NAME` names a spec's rows (two specs of one model side by side)
    if "loaders" in overrides:
        overrides["loaders"] = overrides["loaders"].replace("+", ",")
    cfg = Config.from_dict({**base.to_dict(), **overrides, "model": name}, source=f"model spec {spec!r}")
    if "loaders" in overrides:
        loaders = split_list(cfg.loaders)
    for mode in modes or ():
        if mode not in MODES:
            raise ValueError(f"unknown step mode {mode!r}: choose from {', '.join(MODES)}")
    if modes is not None and "cuda_graphs" in overrides:
        modes = [{"true": "graph", "false": "eager"}.get(cfg.cuda_graphs, "")]
    if modes and "graph" in modes and not str(cfg.device).startswith("cuda"):
        if verbose:
            print(f"measure: {shown}'s graph rows skipped: the step graph is a CUDA graph and this runs on "
                  f"{cfg.device}")
        modes = [m for m in modes if m != "graph"]
        if not modes:
            return []
    setups = []
    for loader in loaders:
        if loader not in LOADERS:
            raise ValueError(f"unknown loader {loader!r}: choose from {', '.join(LOADERS)}")
        if loader == "dense":
            probe = model_for(cfg, len(FEATURE_NAMES))  # the features every build has: a user's model may need them
            if not hasattr(probe, "forward_dense"):
                if verbose:
                    print(f"measure: no dense mode for {cfg.model} (forward_dense: tcn, transformer); "
                          "loader dense skipped")
                continue
            chunks, chunk = dense_shape(cfg.batch_size, cfg.dense_batch, getattr(probe, "max_chunk", None),
                                        cfg.dense_chunk, probe.receptive_field)
            run = cfg.replace(dense=True, loader="device", batch_size=chunks, dense_chunk=chunk)
            targets = chunks * (chunk - probe.receptive_field + 1)
        else:  # stream: the windows streamed in blocks, through a budget of cfg.stream_budget of the data (Runner)
            run, targets = cfg.replace(dense=False, loader=loader), cfg.batch_size
        for mode in modes or [""]:
            label = f"{shown}/{loader}" + (f"/{mode}" if mode else "")
            step = run.replace(cuda_graphs="true" if mode == "graph" else "false") if mode else run
            setups.append(Setup(label, loader, step, spec, group or spec, mode,
                                targets_per_step=targets * cfg.grad_accum_steps))
    return setups


def dense_shape(batch_size: int, dense_batch: int, fixed_chunk: int | None, dense_chunk: int, receptive_field: int
                ) -> tuple[int, int]:
    """(chunks per batch, chunk rows) of a dense row. `dense_batch` chunks of `dense_chunk` rows if given; else
    chunks of at most `dense_chunk` rows that train exactly `batch_size` targets (each trains its rows from the
    receptive_field-th on): the fewest whose count divides batch_size. A model whose chunks have one length
    (`fixed_chunk`: a transformer's window) gets the nearest count, exact only where that length divides."""
    chunk = fixed_chunk or dense_chunk
    per_chunk = max(chunk - receptive_field + 1, 1)
    if dense_batch or fixed_chunk:
        return dense_batch or max(1, round(batch_size / per_chunk)), chunk
    chunks = -(-batch_size // per_chunk)
    while batch_size % chunks:
        chunks += 1
    return chunks, batch_size // chunks + receptive_field - 1


# -- driving the trainer's step ------------------------------------------------------------------------------
class TimedSource:
    """A batch source whose fetches are timed; on CUDA the device is synchronised before and after each, so
    the figure counts the gather and the host-to-device copy, not just their launch (an honest wait, at the
    cost of a sync per micro-batch). `host` holds each fetch's host time alone: the call, up to its return
    (on CUDA the launches and the source's own bookkeeping; on a CPU the gather too)."""

    def __init__(self, inner: BatchSource) -> None:
        self.inner, self.device, self.wait, self.host = inner, inner.device, 0.0, []

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str):  # the rest of the BatchSource protocol (epoch, begin, count, ...) as it is
        return getattr(self.inner, name)

    def fetch(self, ids: torch.Tensor) -> Batch:
        sync(self.device)
        t0 = time.perf_counter()
        with record_function("fetch batch"):
            out = self.inner.fetch(ids)
            t1 = time.perf_counter()
            sync(self.device)
        self.wait += time.perf_counter() - t0
        self.host.append(t1 - t0)
        return out


class Runner:
    """One configuration: its Trainer (the real step, fed through a TimedSource) and the stream of its
    batches, epoch after epoch. `shared`: the resident windows of the configurations measured beside it, by
    (data, window, device), so that N configurations hold one copy of the data on the device, not N (N copies of
    data that fits a run's device_memory_budget can fill the device)."""

    def __init__(self, setup: Setup, fs: FeatureSet, shared: dict | None = None) -> None:
        self.setup, cfg = setup, setup.cfg
        self.device = pick_device(cfg.device, verbose=False)
        if setup.loader == "stream" and not setup.own_budget:  # a share of the data, >= 32 blocks: it really streams
            cfg = cfg.replace(stream_block_rows=max(1, min(cfg.stream_block_rows, len(fs) // 32)),
                              eval_batch_size=cfg.batch_size)  # (the bench does not evaluate)
            budget = max(cfg.stream_budget * resident_bytes(fs, cfg), min_budget(fs, cfg, cfg.window))
            cfg = setup.cfg = cfg.replace(device_memory_budget=float(budget))
        seed_everything(cfg.seed)
        model = model_for(cfg, fs.n_features).to(self.device)
        key = (id(fs), cfg.window, str(self.device))
        windows, source = make_sources(fs, model, cfg, self.device, windows=(shared or {}).get(key))
        if shared is not None and isinstance(windows, Windows):
            shared.setdefault(key, windows)
        self.source = TimedSource(source)
        self.trainer = Trainer(cfg, model, windows, self.source, self.device, verbose=False)
        self.fs, self.epoch = fs, 0
        self.queue: torch.Tensor | None = None

    def take(self, n_steps: int) -> list[torch.Tensor]:
        """The next n_steps global batches of items in training order (shuffled epochs, one after another)."""
        tr = self.trainer
        need = n_steps * tr.global_batch
        parts = [] if self.queue is None else [self.queue]
        have = sum(len(p) for p in parts)
        while have < need:
            order = self.source.epoch(self.epoch, tr.cfg.seed)
            self.epoch += 1
            parts.append(order)
            have += len(order)
        ids = torch.cat(parts)
        self.queue = ids[need:]
        return list(ids[:need].split(tr.global_batch))

    def run(self, n_warmup: int, n_steps: int, timed: Callable[[], object] | None = None) -> dict:
        """n_warmup untimed then n_steps timed optimizer steps, each `Trainer.step` (micro-batches, gradient
        accumulation, clipping, the optimizer and the LR). Data wait is the time blocked in the source's
        fetch (the DataLoader's next(), or the device gather). `timed` is called as the timed steps start (the
        GPU monitor's read: its busy % is then theirs, not the warm-up's compilation or graph recording)."""
        tr = self.trainer
        groups = self.take(n_warmup + n_steps)
        self.source.begin(torch.cat(groups))  # the DataLoader gets exactly these batches: no prefetch beyond
        for group in groups[:n_warmup]:
            tr.step(group)
        sync(self.device)
        if timed is not None:
            timed()
        self.source.wait, self.source.host, counts, micro = 0.0, [], [], 0
        t0 = time.perf_counter()
        for group in groups[n_warmup:]:
            with record_function("train step"):
                stats = tr.step(group)
            counts.append(stats.n_valid)
            micro += stats.micro_batches
        sync(self.device)
        seconds = time.perf_counter() - t0
        samples = int(round(float(torch.stack(counts).sum()))) if counts else 0
        return {"seconds": seconds, "wait_s": self.source.wait, "micro_batches": micro, "samples": samples,
                "items": sum(len(g) for g in groups[n_warmup:]),  # windows, or dense chunks: what MFU counts
                "fetch_host_s": statistics.median(self.source.host) if self.source.host else None}

    def close(self) -> None:
        close = getattr(self.source.inner, "close", None)
        if close is not None:
            close()


# what torch.profiler's kineto prints on the process's stderr at every start and stop of a profile; and, with a
# CUDA build of torch on a machine without a GPU driver, its "no device" error (code 35: cudaErrorInsufficientDriver)
PROFILER_NOISE = re.compile(r"^(USDT|STAGE):\S+ \S+ \d+:\d+ \S+\] |^\[W\S* \S+ CPUAllocator\.cpp:\d+\] Memory block "
                            r"of unknown size was allocated before the profiling started"
                            r"|^ERROR:\S+ \S+ \d+:\d+ DeviceProperties\.cpp:\d+\] gpuGetDeviceCount failed "
                            r"with code 35$")


@contextlib.contextmanager
def quiet_profiler() -> Iterator[None]:
    """Hold the process's stderr (file descriptor 2) in a file while torch.profiler runs, then pass on all of it
    but kineto's `USDT: ... profiler_start / profiler_stop` lines (two per profile, dozens in a sweep, in the
    terminal and in the notebook). KINETO_LOG_LEVEL could hide them only with kineto's errors."""
    # torch 2.11 warns at every profile that events of earlier cycles are dropped: every profile here is one cycle
    with warnings.catch_warnings(), _held_stderr():
        warnings.filterwarnings("ignore", message="Warning: Profiler clears events at the end of each cycle")
        yield


@contextlib.contextmanager
def _held_stderr() -> Iterator[None]:
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not PROFILER_NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def device_events(events) -> list:
    """The device-side events of a torch.profiler trace (kernels, copies, memsets; its events or its key_averages):
    each device second once. A CPU op's device time repeats its kernels', and a record_function range (`train step`,
    torch's `Optimizer.step#...`, torch.compile's regions) is mirrored on the device as a span over kernels that are
    events of their own (`gpu_user_annotation`): neither is counted again."""
    from torch.autograd import DeviceType

    return [e for e in events if e.device_type != DeviceType.CPU and not e.is_user_annotation]


def step_peak_bytes(fn) -> int:
    """Peak bytes held by CPU tensors allocated while `fn()` runs, relative to its start (torch.profiler
    memory events). The CPU stand-in for torch.cuda.max_memory_allocated: deterministic, unlike RSS; the
    batch counts, memory outside this process's tensors (the DataLoader workers' own) does not."""
    with tempfile.TemporaryDirectory() as tmp:
        with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text()).get("traceEvents", [])
    mem = sorted((e["ts"], e["args"]["Bytes"]) for e in events
                 if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0)
    total = peak = 0
    for _, nbytes in mem:
        total += nbytes
        peak = max(peak, total)
    return int(peak)


# -- measurements that cannot be right ---------------------------------------------------------------------------
def mfu_fields(value: float | None, peak_note: str | None) -> dict:
    """MFU as a figure only where it can be right: above 1 (impossible) or over an untrusted peak it is
    `mfu_invalid` with `mfu_invalid_reason`, and `mfu` is None, as tools/gpu_check.py reports it."""
    if value is None:
        return {"mfu": None}
    if value > 1:
        return {"mfu": None, "mfu_invalid": value,
                "mfu_invalid_reason": f"MFU {value:.2f} is above 1, which is impossible: the FLOP count or the peak "
                                      f"is wrong" + (f" ({peak_note})" if peak_note else "")}
    if peak_note:
        return {"mfu": None, "mfu_invalid": value, "mfu_invalid_reason": peak_note}
    return {"mfu": value}


def mfu_text(record: dict, spec: str = ".2%") -> str:
    """The MFU cell of a table: the figure, `invalid`, or n/a."""
    if record.get("mfu_invalid") is not None and record.get("mfu") is None:
        return "invalid"
    value = record.get("mfu")
    return format(value, spec) if isinstance(value, (int, float)) and value == value else "n/a"


# -- measuring ------------------------------------------------------------------------------------------------
def measure(setups: Sequence[Setup], *, steps: int, warmup: int, repeats: int, max_other_load: float,
            monitor_interval_s: float = 0.1, verbose: bool = True, peak: MfuPeak | None = None) -> list[dict]:
    """Measure every setup, interleaved: repeat r runs setup 1, 2, ... in turn. One record per setup. An MFU
    that cannot be right (above 1, or over a CPU peak measured while other processes were busy) is flagged
    (`mfu_invalid`, `mfu_invalid_reason`), never given as `mfu`. `peak`: the MFU denominator of calls that
    are one measurement in parts (the sweep's batch sizes); else `mfu_peak` now."""
    runners: list[Runner] = []
    with torch_flags(deterministic=False):  # off, as a default run has them
        try:
            fsets: dict[str, FeatureSet] = {}  # the same data is built or loaded once, and put on the device once
            shared: dict = {}
            for s in setups:
                key = cache.cache_key(s.cfg)
                if key not in fsets:
                    fsets[key] = dataset.prepare(s.cfg, verbose=verbose)
                runners.append(Runner(s, fsets[key], shared))
            device = runners[0].device
            peak = peak if peak is not None else mfu_peak(device, setups[0].cfg.peak_tflops, max_other_load)
            if verbose:
                print((f"MFU peak: {peak.flops / 1e9:,.1f} GFLOP/s ({peak.source})" if peak.flops else
                       f"MFU n/a: {peak.source}") + (f"; NOT TRUSTED: {peak.untrusted}" if peak.untrusted else ""))
            monitor = GpuMonitor(interval_s=monitor_interval_s, device=device, verbose=verbose).start()
            runs: list[list[dict]] = [[] for _ in runners]
            for rep in range(repeats):
                for runner, out in zip(runners, runs):
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    with CpuElsewhere() as others:
                        res = runner.run(warmup, steps, timed=monitor.read)
                    res["gpu"], res["other_cores"] = monitor.read(), others.cores
                    if device.type == "cuda":
                        res["peak_mem"] = int(torch.cuda.max_memory_allocated(device))
                    out.append(res)
                    if verbose:
                        host = res["fetch_host_s"]
                        print(f"measure {rep + 1}/{repeats} {runner.setup.label:22s} "
                              f"{res['samples'] / res['seconds']:>12,.0f} samples/s  "
                              f"wait {res['wait_s'] / res['seconds']:6.1%}  "
                              f"host {host * 1e6 if host is not None else float('nan'):8,.1f} us/fetch")
            monitor.stop()
            records = []
            for runner, out in zip(runners, runs):
                if device.type == "cuda":
                    mem, mem_kind = max(r["peak_mem"] for r in out), "cuda: torch.cuda.max_memory_allocated"
                else:  # one more (untimed) step under the memory profiler
                    mem = step_peak_bytes(lambda r=runner: r.run(0, 1))
                    mem_kind = ("cpu: peak bytes of CPU tensors allocated during one training step "
                                "(torch.profiler memory events; DataLoader workers not counted)")
                records.append({**make_record(runner, out, mem, mem_kind, peak, steps, warmup, repeats),
                                **busy_fields([r["other_cores"] for r in out], max_other_load)})
            add_ratios(records)
            return records
        finally:
            for runner in runners:
                runner.close()


def make_record(runner: Runner, runs: list[dict], mem: int, mem_kind: str, peak: MfuPeak, steps: int, warmup: int,
                repeats: int) -> dict:
    tr, s = runner.trainer, runner.setup
    sps = [r["samples"] / r["seconds"] for r in runs]
    items = statistics.median(r["items"] / r["seconds"] for r in runs)
    busy = [r["gpu"]["gpu_util_median"] for r in runs if r["gpu"].get("gpu_util_median") is not None]
    gmem = [r["gpu"]["gpu_mem_used_max_bytes"] for r in runs if r["gpu"].get("gpu_mem_used_max_bytes")]
    flops, per_item = tr.flops_per_sample(), tr.flops_per_item()
    med = statistics.median(sps)
    hosts = [r["fetch_host_s"] for r in runs if r.get("fetch_host_s") is not None]
    return {
        "label": s.label, "spec": s.spec, "group": s.group, "loader": s.loader, "model": s.cfg.model,
        "mode": s.mode or ("graph" if tr.graphs else "eager"),
        "graph_refused": tr.graphs_reason if tr.cfg.cuda_graphs == "true" and not tr.graphs else None,
        "batch_size": s.cfg.batch_size, "batch_unit": "chunks" if s.loader == "dense" else "windows",
        "targets_per_batch": statistics.median(r["samples"] / r["micro_batches"] for r in runs),
        "targets_per_step": s.targets_per_step,
        "grad_accum_steps": s.cfg.grad_accum_steps,
        "samples_per_s": med, "samples_per_s_runs": sps,
        "data_wait_share": statistics.median(r["wait_s"] / r["seconds"] for r in runs),
        "fetch_host_us": statistics.median(hosts) * 1e6 if hosts else None,  # the median repetition's median
        "it_per_s": statistics.median(r["micro_batches"] / r["seconds"] for r in runs),
        "batches_per_epoch": tr.steps_per_epoch * s.cfg.grad_accum_steps,
        "step_time_s": statistics.median(r["seconds"] / r["micro_batches"] for r in runs),
        "peak_mem_bytes": int(mem), "peak_mem_kind": mem_kind,
        "flops_per_sample": flops, "peak_flops": peak.flops, "peak_flops_source": peak.source,
        "flops_per_item": per_item, "items_per_s": items,
        "peak_other_cores": peak.other_cores, **mfu_fields(mfu(items, per_item, peak.flops), peak.untrusted),
        "gpu_busy_pct": statistics.median(busy) if busy else None,
        "gpu_mem_used_max_bytes": max(gmem) if gmem else None,
        "device": str(runner.device), "device_name": device_name(runner.device),
        "num_workers": getattr(runner.source.inner, "settings", {}).get("num_workers", 0),
        "window": s.cfg.window, "hidden": s.cfg.hidden, "layers": s.cfg.layers,
        "receptive_field": getattr(tr.model, "receptive_field", None),
        "dense_chunk": s.cfg.dense_chunk if s.loader == "dense" else None,
        "n_params": n_params(tr.model), "compiled": tr.compiled, "graph_steps": tr.graph_steps,
        "precision": resolved_precision(s.cfg.precision, runner.device),
        "train_items_per_epoch": len(runner.source),
        "stream": getattr(getattr(runner.source.inner, "plan", None), "reason", None),
        "data": {"data_path": s.cfg.data_path, "synth_symbols": s.cfg.synth_symbols,
                 "synth_bars": s.cfg.synth_bars, "rows": len(runner.fs)},
        "steps": steps, "warmup": warmup, "repeats": repeats,
        "torch": torch.__version__, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def add_ratios(records: list[dict]) -> None:
    """Per group and step mode: device / dataloader, dense / per-window (device) and stream / resident, as ratios
    of the medians and per interleaved repetition; per group and loader, graph / eager. Every record carries its
    group's loader ratios (`ratios`, those of its own mode); `speedup` is the record's own against its baseline
    loader (dataloader for the device loader, the per-window device loader for dense); `graph_speedup` a graph
    row's against the same loader's eager row. A ratio of rows whose steps train different numbers of targets (an
    explicit dense_batch; a transformer's window that does not divide batch_size) says so in `unlike` (samples/s
    are per target, but a bigger step is faster per target)."""
    by_group: dict[tuple[str, str], dict[str, dict]] = {}
    for r in records:
        by_group.setdefault((r["group"], r.get("mode", "")), {})[r["loader"]] = r
    for group in by_group.values():
        ratios = {}
        for name, (num, den) in RATIOS.items():
            if num in group and den in group:
                ratios[name], ratios[name + "_runs"] = speed_ratio(group[num], group[den])
                a, b = (group[k].get("targets_per_step") for k in (num, den))
                if a != b:
                    group[num]["unlike"] = f"{a} targets a step against {b} for the {den} row"
        for r in group.values():
            r["ratios"] = ratios
            r["speedup"] = ratios.get(next((name for name, (num, _) in RATIOS.items() if num == r["loader"]), ""))
    eager = {(r["group"], r["loader"]): r for r in records if r.get("mode") == "eager"}
    for r in records:
        base = eager.get((r["group"], r["loader"])) if r.get("mode") == "graph" else None
        r["graph_speedup"] = None
        if base:
            r["graph_speedup"], r["graph_speedup_runs"] = speed_ratio(r, base)


def speed_ratio(a: dict, b: dict) -> tuple[float, list[float]]:
    """Record a's samples/s over record b's: of the medians, and per interleaved repetition (the perf side's one
    speed ratio: loader over loader, graph over eager)."""
    return a["samples_per_s"] / b["samples_per_s"], [x / y for x, y in zip(a["samples_per_s_runs"],
                                                                           b["samples_per_s_runs"])]


def format_table(records: list[dict]) -> str:
    rows = [{
        "config": r["label"], "batch": f"{r['batch_size']} {r['batch_unit']}",
        "targets/step": r.get("targets_per_step", ""), "samples/s": f"{r['samples_per_s']:,.0f}",
        "speedup": f"{r['speedup']:.2f}x" + ("*" if r.get("unlike") else "") if r.get("speedup") else "",
        "graph/eager": f"{r['graph_speedup']:.2f}x" if r.get("graph_speedup") else "",
        "data wait": f"{r['data_wait_share']:.1%}",
        "host us/fetch": f"{r['fetch_host_us']:,.1f}" if r.get("fetch_host_us") is not None else "n/a",
        "it/s": f"{r['it_per_s']:.1f}",
        "batches/epoch": r["batches_per_epoch"], "peak mem MB": f"{r['peak_mem_bytes'] / 2**20:,.0f}",
        "MFU": mfu_text(r),
        "GPU busy": f"{r['gpu_busy_pct']:.0f}%" if r["gpu_busy_pct"] is not None else "n/a",
    } for r in records]
    return pd.DataFrame(rows).to_string(index=False)


def summary_lines(records: list[dict]) -> list[str]:
    """The lines under the table: each speed-up with its baseline, one line per distinct reason an MFU was
    flagged invalid, one per configuration timed on a busy machine, then how peak memory and the MFU peak were
    had."""
    names = {"device": "seed DataLoader", "dense": "per-window", "stream": "resident"}
    same = lambda r: f" ({r['mode']}, both)" if r.get("mode") else ""
    reasons = dict.fromkeys(r["mfu_invalid_reason"] for r in records if r.get("mfu_invalid_reason"))
    unlike = lambda r: f"; * NOT the same batch: {r['unlike']}" if r.get("unlike") else ""
    return ([f"{r['label']}: {r['speedup']:.2f}x the {names[r['loader']]} samples/s{same(r)} (median of "
             f"{r['repeats']}{unlike(r)})" for r in records if r.get("speedup")]
            + [f"{r['label']}: {r['graph_speedup']:.2f}x the same loader's eager step (median of {r['repeats']})"
               for r in records if r.get("graph_speedup")]
            + [f"MFU invalid, not reported: {why}" for why in reasons]
            + [f"{r['label']}: {r['busy_note']}" for r in records if r.get("busy_note")]
            + [f"peak memory: {records[0]['peak_mem_kind']}", f"MFU peak: {records[0]['peak_flops_source']}"])
