"""The throughput bench: the seed's DataLoader pipeline, the device loader and dense chunks, side by side.

Same data, same model, same global batch, one process. Each configuration is a real `Trainer`; the bench
drives that trainer's own `micro_step` / `optimizer_step`, so what is timed is the training step itself,
not a copy. Repetitions are interleaved (A B C A B C ...) so that drift (clocks, heat, other load) hits all
configurations alike; warm-up steps (worker start-up, torch.compile, allocator growth) are not timed; the
figures are medians over the repetitions.

    python -m tradelib bench [--device cpu|cuda] [--batch-size 1024] [--steps 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from tradelib import cache
from tradelib.config import Config, add_param_args, load_config
from tradelib.features import FeatureConfig, FeatureSet
from tradelib.models import build_model, n_params, training_flops_per_sample
from tradelib.monitor import GpuMonitor
from tradelib.paths import outputs_dir
from tradelib.train import Trainer, peak_flops, pick_device

LOADERS = ("dataloader", "device", "dense")
# the default LSTM, and a TCN whose per-window receptive field is substantial (61 rows of a 64-row window)
DEFAULT_MODELS = ("lstm", "tcn:window=64,layers=4")
REQUIRED_KEYS = ("loader", "model", "batch_size", "samples_per_s", "data_wait_share", "it_per_s",
                 "batches_per_epoch", "peak_mem_bytes", "mfu", "device")


# -- configurations ----------------------------------------------------------------------------------------
@dataclass
class Setup:
    """One configuration to measure: a label, the loader kind and the full run config."""

    label: str
    loader: str  # dataloader | device | dense
    cfg: Config
    spec: str  # the model spec it came from, e.g. "tcn:window=64,layers=4"


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """'tcn:window=64,layers=4' -> ('tcn', {'window': 64, 'layers': 4}): a model and its config overrides."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"model spec {spec!r}: expected NAME=VALUE after ':', got {item!r}")
        overrides[key.strip()] = value.strip()
    return name.strip().lower(), overrides


def make_setups(base: Config, spec: str, loaders: Sequence[str] = LOADERS, dense_batch: int | None = None,
                verbose: bool = True) -> list[Setup]:
    """The configurations of one model spec. Dense mode (causal models only) gets as many chunks per batch
    as make about the same number of trained targets as `base.batch_size` windows: the same global batch."""
    name, overrides = parse_model_spec(spec)
    cfg = Config.from_dict({**base.to_dict(), **overrides, "model": name}, source=f"model spec {spec!r}")
    setups = []
    for loader in loaders:
        if loader not in LOADERS:
            raise ValueError(f"unknown loader {loader!r}: choose from {', '.join(LOADERS)}")
        if loader == "dense":
            probe = build_model(cfg.model, 1, cfg.window, cfg.hidden, cfg.layers)
            if not hasattr(probe, "forward_dense"):
                if verbose:
                    print(f"bench: no dense mode for {cfg.model} (not a causal convolution model); skipped")
                continue
            per_chunk = cfg.dense_chunk - probe.receptive_field + 1
            chunks = dense_batch or max(1, round(cfg.batch_size / max(per_chunk, 1)))
            setups.append(Setup(f"{name}/dense", "dense", cfg.replace(dense=True, loader="device",
                                                                          batch_size=chunks), spec))
        else:
            setups.append(Setup(f"{name}/{loader}", loader, cfg.replace(dense=False, loader=loader), spec))
    return setups


# -- driving the trainer's step ------------------------------------------------------------------------------
def scratch_run_id(tag: str) -> str:
    """A throw-away run folder for the Trainers a measurement builds (removed by `remove_scratch`)."""
    return f".scratch/{tag}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def remove_scratch(run_id: str) -> None:
    shutil.rmtree(outputs_dir() / run_id, ignore_errors=True)
    try:
        (outputs_dir() / ".scratch").rmdir()  # only when no other measurement is using it
    except OSError:
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedSource:
    """A trainer's batch source, its fetches timed (and, on CUDA, synchronised around: an honest wait)."""

    def __init__(self, inner, device: torch.device) -> None:
        self.inner, self.device, self.wait = inner, device, 0.0

    def batch(self, ids: torch.Tensor):
        sync(self.device)
        t0 = time.perf_counter()
        with record_function("fetch batch"):
            out = self.inner.batch(ids)
            sync(self.device)
        self.wait += time.perf_counter() - t0
        return out

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class Runner:
    """One configuration: its Trainer (the real step) and the stream of its batches, epoch after epoch."""

    def __init__(self, setup: Setup, fs: FeatureSet, run_id: str) -> None:
        self.setup = setup
        self.trainer = Trainer(setup.cfg.replace(run_id=run_id), fs, progress=False)
        self.epoch = 0
        self.queue: torch.Tensor | None = None

    def take(self, n_steps: int) -> list[torch.Tensor]:
        """The next n_steps global batches of ids in training order (shuffled epochs, one after another)."""
        tr = self.trainer
        need = n_steps * tr.global_batch
        parts = [] if self.queue is None else [self.queue]
        have = sum(len(p) for p in parts)
        while have < need:
            order = tr.source.order(0, self.epoch, tr.cfg.seed, tr.rank, tr.world)
            self.epoch += 1
            parts.append(order)
            have += len(order)
        ids = torch.cat(parts)
        self.queue = ids[need:]
        return list(ids[:need].split(tr.global_batch))

    def run(self, n_warmup: int, n_steps: int) -> dict:
        """n_warmup untimed then n_steps timed optimizer steps, each the trainer's own `train_group` (the
        step `Trainer.fit` runs: micro-batches, gradient accumulation, clipping, the optimizer and the LR).

        Data wait is the time blocked in `source.batch` (the DataLoader's next(), or the device gather). On
        CUDA the device is synchronised before and after each fetch so that the figure counts the gather and
        the host-to-device copy, not just their launch: an honest wait at the cost of a sync per micro-batch.
        """
        tr = self.trainer
        groups = self.take(n_warmup + n_steps)
        timed = TimedSource(tr.source, tr.device)
        if hasattr(tr.source, "start"):  # the DataLoader gets exactly these batches: no prefetch beyond them
            tr.source.start(torch.cat(groups))
        tr.source = timed
        try:
            for group in groups[:n_warmup]:
                tr.train_group(group)
            sync(tr.device)
            n0, timed.wait, t0 = float(tr.n_acc), 0.0, time.perf_counter()
            for group in groups[n_warmup:]:
                with record_function("train step"):
                    tr.train_group(group)
            sync(tr.device)
            seconds = time.perf_counter() - t0
        finally:
            tr.source = timed.inner
            tr.fetch_marks.clear()  # the trainer's own CUDA fetch marks: this bench times fetches itself
        micro = sum(math.ceil(len(g) / tr.cfg.batch_size) for g in groups[n_warmup:])
        return {"seconds": seconds, "wait_s": timed.wait, "micro_batches": micro,
                "samples": int(round(float(tr.n_acc) - n0))}

    def close(self) -> None:
        """Stop the DataLoader's persistent workers now rather than at garbage collection."""
        it = getattr(getattr(self.trainer.source, "loader", None), "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


def step_peak_bytes(fn) -> int:
    """Peak bytes held by CPU tensors allocated while `fn()` runs, relative to its start (torch.profiler
    memory events). The CPU stand-in for torch.cuda.max_memory_allocated: deterministic, unlike RSS; the
    batch counts, memory outside this process's tensors (the DataLoader workers' own) does not."""
    with tempfile.TemporaryDirectory() as tmp:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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


def measured_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024,
                          seconds: float = 0.5) -> float:
    """FLOP/s of a square matmul on this device (best burst): the MFU denominator where no peak is known."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:  # the best of short bursts: a peak, robust to other load on the machine
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        best = max(best, 4 * 2.0 * n**3 / (time.perf_counter() - t0))
    return best


def device_peak(device: torch.device, verbose: bool = True) -> tuple[float, str]:
    """(peak FLOP/s, where it came from): the chip's table figure, else a measured matmul rate."""
    table = peak_flops(device)
    if table:
        return table, f"table: dense bf16 peak of {torch.cuda.get_device_name(device)}"
    if device.type == "cuda":
        rate = measured_matmul_flops(device, torch.bfloat16, 4096)
        return rate, "measured: bf16 4096x4096 matmul on this GPU (chip not in the peak table)"
    rate = measured_matmul_flops(device, torch.float32, 1024)
    if verbose:
        print(f"bench: CPU peak for MFU = measured fp32 1024x1024 matmul rate, {rate / 1e9:.1f} GFLOP/s "
              f"({torch.get_num_threads()} threads)")
    return rate, f"measured: fp32 1024x1024 matmul on this CPU ({torch.get_num_threads()} threads)"


# -- measuring ------------------------------------------------------------------------------------------------
def measure(setups: Sequence[Setup], steps: int = 30, warmup: int = 5, repeats: int = 3,
            monitor_interval_s: float = 0.1, verbose: bool = True) -> list[dict]:
    """Measure every setup, interleaved: repeat r runs setup 1, 2, ... in turn. One record per setup."""
    if steps < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"steps and repeats must be >= 1 and warmup >= 0, got {steps}, {repeats}, {warmup}")
    scratch = scratch_run_id("bench")
    runners: list[Runner] = []
    fsets: dict[str, FeatureSet] = {}
    try:
        for i, s in enumerate(setups):
            key = json.dumps([vars(FeatureConfig.from_config(s.cfg)), s.cfg.data_path, s.cfg.synth_symbols,
                              s.cfg.synth_bars, s.cfg.data_seed], default=str)
            if key not in fsets:
                fsets[key] = cache.prepare(s.cfg, verbose=verbose)
            runners.append(Runner(s, fsets[key], f"{scratch}/{i}-{s.label.replace('/', '-')}"))
        device = runners[0].trainer.device
        peak, peak_src = device_peak(device, verbose)
        monitor = GpuMonitor(interval_s=monitor_interval_s, device=device, verbose=verbose).start()
        runs: list[list[dict]] = [[] for _ in runners]
        for rep in range(repeats):
            for runner, out in zip(runners, runs):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                monitor.read()
                res = runner.run(warmup, steps)
                res["gpu"] = monitor.read()
                if device.type == "cuda":
                    res["peak_mem"] = int(torch.cuda.max_memory_allocated(device))
                out.append(res)
                if verbose:
                    print(f"bench {rep + 1}/{repeats} {runner.setup.label:16s} "
                          f"{res['samples'] / res['seconds']:>12,.0f} samples/s  "
                          f"wait {res['wait_s'] / res['seconds']:6.1%}")
        monitor.stop()
        records = []
        for runner, out in zip(runners, runs):
            if device.type == "cuda":
                mem, mem_kind = max(r["peak_mem"] for r in out), "cuda: torch.cuda.max_memory_allocated"
            else:  # one more (untimed) step under the memory profiler
                mem = step_peak_bytes(lambda r=runner: r.run(0, 1))
                mem_kind = ("cpu: peak bytes of CPU tensors allocated during one training step "
                            "(torch.profiler memory events; DataLoader workers not counted)")
            records.append(make_record(runner, out, mem, mem_kind, peak, peak_src, steps, warmup, repeats))
        add_ratios(records)
        return records
    finally:
        for runner in runners:
            runner.close()
        remove_scratch(scratch)


def make_record(runner: Runner, runs: list[dict], mem: int, mem_kind: str, peak: float, peak_src: str,
                steps: int, warmup: int, repeats: int) -> dict:
    tr, s = runner.trainer, runner.setup
    sps = [r["samples"] / r["seconds"] for r in runs]
    busy = [r["gpu"]["gpu_util_median"] for r in runs if r["gpu"].get("gpu_util_median") is not None]
    gmem = [r["gpu"]["gpu_mem_used_max_bytes"] for r in runs if r["gpu"].get("gpu_mem_used_max_bytes")]
    flops = training_flops_per_sample(tr.model)
    med = statistics.median(sps)
    return {
        "label": s.label, "spec": s.spec, "loader": s.loader, "model": s.cfg.model,
        "batch_size": s.cfg.batch_size, "batch_unit": "chunks" if s.loader == "dense" else "windows",
        "targets_per_batch": statistics.median(r["samples"] / r["micro_batches"] for r in runs),
        "grad_accum_steps": s.cfg.grad_accum_steps,
        "samples_per_s": med, "samples_per_s_runs": sps,
        "data_wait_share": statistics.median(r["wait_s"] / r["seconds"] for r in runs),
        "it_per_s": statistics.median(r["micro_batches"] / r["seconds"] for r in runs),
        "batches_per_epoch": tr.steps_per_epoch * s.cfg.grad_accum_steps,
        "step_time_s": statistics.median(r["seconds"] / r["micro_batches"] for r in runs),
        "peak_mem_bytes": int(mem), "peak_mem_kind": mem_kind,
        "flops_per_sample": flops, "peak_flops": peak, "peak_flops_source": peak_src,
        "mfu": med * flops / peak if peak else None,
        "gpu_busy_pct": statistics.median(busy) if busy else None,
        "gpu_mem_used_max_bytes": max(gmem) if gmem else None,
        "device": str(tr.device),
        "device_name": torch.cuda.get_device_name(tr.device) if tr.device.type == "cuda" else "cpu",
        "num_workers": tr.source.settings["num_workers"] if s.loader == "dataloader" else 0,
        "window": s.cfg.window, "hidden": s.cfg.hidden, "layers": s.cfg.layers,
        "receptive_field": getattr(tr.model, "receptive_field", None),
        "dense_chunk": s.cfg.dense_chunk if s.loader == "dense" else None,
        "n_params": n_params(tr.model), "compiled": tr.compiled,
        "precision": "bf16" if s.cfg.precision == "bf16" or (s.cfg.precision == "auto" and tr.device.type == "cuda")
        else "fp32",
        "train_items_per_epoch": tr.source.n_items(),
        "data": {"data_path": s.cfg.data_path, "synth_symbols": s.cfg.synth_symbols,
                 "synth_bars": s.cfg.synth_bars, "rows": len(tr.fs)},
        "steps": steps, "warmup": warmup, "repeats": repeats,
        "torch": torch.__version__, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def add_ratios(records: list[dict]) -> None:
    """Per model spec: device / dataloader and dense / per-window (device), as ratios of the medians and
    per interleaved repetition. Every record of a spec carries its spec's ratios; `speedup` is the record's
    own against its baseline (dataloader for the device loader, the per-window device loader for dense)."""
    by_spec: dict[str, dict[str, dict]] = {}
    for r in records:
        by_spec.setdefault(r["spec"], {})[r["loader"]] = r
    for group in by_spec.values():
        ratios = {}
        for name, (num, den) in {"device/dataloader": ("device", "dataloader"),
                                 "dense/per_window": ("dense", "device")}.items():
            if num in group and den in group:
                a, b = group[num], group[den]
                ratios[name] = a["samples_per_s"] / b["samples_per_s"]
                ratios[name + "_runs"] = [x / y for x, y in zip(a["samples_per_s_runs"], b["samples_per_s_runs"])]
        for r in group.values():
            r["ratios"] = ratios
            key = {"device": "device/dataloader", "dense": "dense/per_window"}.get(r["loader"])
            r["speedup"] = ratios.get(key) if key else None


def format_table(records: list[dict]) -> str:
    rows = [{
        "config": r["label"], "batch": f"{r['batch_size']} {r['batch_unit']}",
        "samples/s": f"{r['samples_per_s']:,.0f}",
        "speedup": f"{r['speedup']:.2f}x" if r.get("speedup") else "",
        "data wait": f"{r['data_wait_share']:.1%}", "it/s": f"{r['it_per_s']:.1f}",
        "batches/epoch": r["batches_per_epoch"], "peak mem MB": f"{r['peak_mem_bytes'] / 2**20:,.0f}",
        "MFU": f"{r['mfu']:.2%}" if r["mfu"] is not None else "n/a",
        "GPU busy": f"{r['gpu_busy_pct']:.0f}%" if r["gpu_busy_pct"] is not None else "n/a",
    } for r in records]
    return pd.DataFrame(rows).to_string(index=False)


def run_bench(device: str = "auto", models: Sequence[str] = DEFAULT_MODELS, batch_size: int = 1024,
              steps: int = 30, warmup: int = 5, repeats: int = 3, loaders: Sequence[str] = LOADERS,
              json_path: str | Path | None = None, data_path: str | None = None, synth_symbols: int | None = None,
              synth_bars: int | None = None, num_workers: int = 8, dense_batch: int | None = None,
              base: Config | None = None, verbose: bool = True) -> list[dict]:
    """Measure every (model, loader) configuration on the same data and global batch; print a table and
    write the records as JSON (default outputs/bench/bench-<timestamp>.json). Returns the records.

    `models` are specs "name" or "name:key=value,...", e.g. "tcn:window=64,layers=4"; `base` holds every
    other setting (the CLI's -f/-p). The seed pipeline runs with min(num_workers, cores) workers."""
    base = base or Config()
    dev = pick_device(device, verbose=verbose)
    changes = {"device": str(dev), "batch_size": batch_size, "num_workers": num_workers}
    for name, value in (("data_path", data_path), ("synth_symbols", synth_symbols), ("synth_bars", synth_bars)):
        if value is not None:
            changes[name] = value
    base = base.replace(**changes)
    setups = [s for spec in models for s in make_setups(base, spec, loaders, dense_batch, verbose)]
    if not setups:
        raise ValueError("nothing to measure: no (model, loader) configuration applies")
    records = measure(setups, steps, warmup, repeats, verbose=verbose)
    if verbose:
        print()
        print(format_table(records))
        for r in records:
            if r["loader"] != "dataloader" and r.get("speedup"):
                base_name = "seed DataLoader" if r["loader"] == "device" else "per-window"
                print(f"{r['label']}: {r['speedup']:.2f}x the {base_name} samples/s (median of {repeats})")
        print(f"peak memory: {records[0]['peak_mem_kind']}")
        print(f"MFU peak: {records[0]['peak_flops_source']}")
    path = Path(json_path) if json_path else outputs_dir() / "bench" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1, default=str))
    if verbose:
        print(f"wrote {path}")
    return records


# -- command line ---------------------------------------------------------------------------------------------
def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--model", dest="models", action="append", default=None, metavar="SPEC",
                   help="model spec, repeatable: NAME or NAME:key=value,... "
                        f"(default: {' and '.join(DEFAULT_MODELS)})")
    p.add_argument("--loaders", default=",".join(LOADERS), help=f"comma list of {', '.join(LOADERS)} (default all)")
    p.add_argument("--batch-size", type=int, default=1024, help="global batch in windows (default 1024)")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per repetition (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each repetition (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--workers", type=int, default=8, help="seed DataLoader workers, capped at the cores (default 8)")
    p.add_argument("--dense-batch", type=int, default=None,
                   help="chunks per dense batch (default: as many as make --batch-size trained targets)")
    p.add_argument("--data", default=None, help="'synthetic' or a CSV/Parquet file or folder")
    p.add_argument("--symbols", type=int, default=None, help="synthetic market: symbols (a bigger set)")
    p.add_argument("--bars", type=int, default=None, help="synthetic market: bars per symbol")
    p.add_argument("--json", default=None, help="output JSON (default outputs/bench/bench-<timestamp>.json)")
    p.add_argument("--features", action="store_true",
                   help="measure the data side instead: raw -> clean -> features on --symbols x --bars (default "
                        "100 x 100,000 = 10M rows), its peak memory, and the warm load of params/full.yaml's cache")
    add_param_args(p)


def bench_command(args: argparse.Namespace) -> int:
    if args.features:
        from tradelib.databench import bench_data

        result = bench_data(args.symbols or 100, args.bars or 100_000, repeats=args.repeats)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(args.json) if args.json else outputs_dir() / "bench" / f"features-{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")
        return 0
    base = load_config(args.files, [tuple(p) for p in args.params])
    loaders = [s.strip() for s in re.split(r"[,\s]+", args.loaders) if s.strip()]
    run_bench(device=args.device, models=args.models or DEFAULT_MODELS, batch_size=args.batch_size,
              steps=args.steps, warmup=args.warmup, repeats=args.repeats, loaders=loaders, json_path=args.json,
              data_path=args.data, synth_symbols=args.symbols, synth_bars=args.bars, num_workers=args.workers,
              dense_batch=args.dense_batch, base=base)
    return 0


def main_bench(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tradelib bench", description=__doc__.splitlines()[0])
    add_bench_args(parser)
    return bench_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main_bench())

