"""The prepared GPU check: the seed's figures and the CUDA tests, in one command, in under 10 minutes (560 s).

    bash tools/gpu_check.sh                               # on a machine with one GPU: files in docs/gpu-runs/
    bash tools/gpu_check.sh OUTDIR --device cpu --quick   # the CPU dry run, as tests/test_gpu_check.py runs it

Each stage is a subprocess with its own time budget, so a hang in one (a DataLoader worker, a compiler, a CUDA
call) is killed with its whole process group and cannot take the other stages' time; the whole check also
keeps to one overall budget. The stages use `python -m tradelib ...`, pytest, and this file's own `--stage`
helpers (which import tradelib); nothing needs papermill or Jupyter, nothing is fetched, nothing is installed:

  env         torch, CUDA and cuDNN versions, the device, nvidia-ml-py and NVML, the packages, the MFU peak
  prepare     the params/full.yaml feature cache, timed (`python -m tradelib prepare`)
  bench       `python -m tradelib bench` on full.yaml, one interleaved run, eager and with the step graph: the
              LSTM at batch 1024 with the seed-style DataLoader (8 workers) and the device loader (the loader's
              gain and the graph's apart), the LSTM at 512 x 2 (accumulation), the transformer (window 64,
              hidden 512, 4 layers: the model sized for a GPU); and the TCN per window vs dense, eager
  epoch       `python -m tradelib train` on full.yaml with no flags (the defaults decide the step): two whole
              epochs when the bench says they fit the budget (the second one measured without the first step's
              compilation and recording, the first's time beside it), else one, else as many steps as fit;
              samples/s, the measured and the projected epoch time, NVML busy and data wait
  stream      `python -m tradelib bench --stream` on full.yaml: the LSTM at batch 1024 with its data resident and
              streamed (a quarter of it on the GPU at a time: pinned buffers, a side stream), and the data wait
  sweep       02's batch-size sweep (`profiling.batch_size_sweep`) up to 16,384, device loader vs DataLoader
  cuda_tests  pytest -v on tests/test_cuda.py: its CUDA side (`-m on_cuda`); on the CPU its CPU side. Last, with
              what is left of the budget: its slowest test (the step graph where it is used: five compiled
              families, 300 steps each, eager and graphed) takes minutes. If it runs out, each finished test's
              outcome is in the log, and `--only cuda_tests` reruns it alone (files named ...-only-cuda_tests)

OUTDIR (default docs/gpu-runs, where they are committed: tools/make_perf_tables.py makes docs/perf.md's GPU
tables from them) gets two files, <date>-<device>-<commit>.json (every figure with its MFU and NVML busy, each
stage's status, exit code and duration, versions, the device, the targets judged) and .log (everything printed).
While it runs they are gpu_check.json and gpu_check.log, the JSON rewritten after every stage, so a check killed
from outside still leaves what it had. Exit code 0 when every stage passed: the
targets are judged in the JSON, a missed target is a finding, not a failure of the check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = "params/full.yaml"
STAGES = ("env", "prepare", "bench", "epoch", "stream", "sweep", "cuda_tests")  # the figures first
RUNS = ROOT / "docs" / "gpu-runs"
# each spec measured eager and with the step graph (graph_modes); `as=` names a spec's rows
LSTM = "lstm:loaders=dataloader+device"
ACCUM = "lstm:batch_size={},grad_accum_steps=2,loaders=device,as=lstm-accum"  # the seed's 512 x 2
TCN = "tcn:layers={},loaders=device+dense,cuda_graphs=false"  # eager only: two compilations fewer
TRANSFORMER = "transformer:window={},hidden={},layers={},heads={},loaders=device"


# -- what is measured, on the GPU and in the quick CPU dry run ----------------------------------------------------
@dataclass
class Plan:
    """The check's settings. `quick` is the same check on a tiny market with a few steps: the dry run."""

    device: str
    quick: bool
    data: dict  # overrides after -f params/full.yaml, for every stage (the same data and model)
    bench_models: str
    workers: int  # the seed-style DataLoader's workers (the seed's 8)
    bench: dict  # steps, warmup, repeats of the bench
    tests: list[str]  # pytest's selection in tests/test_cuda.py
    sweep_sizes: tuple[int, ...]
    sweep: dict  # steps, warmup, repeats of the sweep
    budgets: dict  # seconds per stage: a hard limit each
    total_s: float  # the whole check
    epoch_target_s: float = 45.0  # the epoch stage runs whole epochs when the bench says they take this or less
    epoch_max_steps: int = 0  # quick: a fixed number of steps instead


def make_plan(device: str, quick: bool) -> Plan:
    if not quick:  # an H200 from a cold start: feature build ~20 s, torch.compile ~10-20 s per model
        models = f"{LSTM} {ACCUM.format(512)} {TCN.format(4)} {TRANSFORMER.format(64, 512, 4, 8)}"
        return Plan(device, False, data={}, bench_models=models,
                    workers=8, bench={"steps": 100, "warmup": 20, "repeats": 3},
                    tests=["-m", "on_cuda" if device.startswith("cuda") else "on_cpu"],
                    sweep_sizes=(256, 1024, 4096, 16384), sweep={"steps": 30, "warmup": 8, "repeats": 1},
                    # the bench writes its JSON at its end only, so it has the most slack (about 140-210 s
                    # estimated from a cold start: five step graphs compiled, the transformer's the longest)
                    budgets={"env": 40, "prepare": 60, "bench": 300, "epoch": 100, "stream": 60, "sweep": 50,
                             "cuda_tests": 560},  # last: whatever the figures left
                    total_s=560)  # the device tool runs a command for at most 600 s
    data = {"synth_symbols": 3, "synth_bars": 1500, "window": 16, "hidden": 16, "batch_size": 64, "log_every": 2}
    # test_cuda.py's CPU side runs whole in the suite itself: here four of its quick tests prove the stage works
    models = f"{LSTM} {ACCUM.format(32)} {TCN.format(2)} {TRANSFORMER.format(16, 16, 1, 2)}"
    return Plan(device, True, data=data, bench_models=models,
                workers=2,
                bench={"steps": 2, "warmup": 1, "repeats": 1},
                tests=["-m", "on_cpu", "-k", "naive_slices or without_a_host_sync"],
                sweep_sizes=(32, 128), sweep={"steps": 2, "warmup": 1, "repeats": 1},
                budgets={"env": 60, "prepare": 60, "cuda_tests": 90, "bench": 90, "epoch": 60, "stream": 60,
                         "sweep": 60},
                total_s=300, epoch_max_steps=6)


def flags(values: dict) -> list[str]:
    """{'steps': 2} -> ['-p', 'steps', '2']"""
    return [a for k, v in values.items() for a in ("-p", k, str(v))]


# -- running a stage ------------------------------------------------------------------------------------------------
class Log:
    """Prints a line and writes it to the log file."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "w", buffering=1, encoding="utf-8")
        self.lock = threading.Lock()

    def __call__(self, text: str = "") -> None:
        with self.lock:
            print(text, flush=True)
            self.file.write(text + "\n")


def kill_group(pid: int) -> None:
    """SIGKILL the stage's process group: the stage and whatever it started (DataLoader or compile workers)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_process(cmd: list[str], timeout_s: float, log: Log, env: dict) -> tuple[int, float, bool, list[str]]:
    """Run `cmd` in its own process group with its output streamed to the log; kill the group at `timeout_s`.
    Returns (exit code, seconds, timed out, output lines). A process group, not a new session: whatever ends
    the check's own session (the device tool at its time limit) ends the stage too."""
    t0, lines = time.monotonic(), []
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", **group)

    def pump() -> None:  # text mode reads a progress bar's carriage returns as line ends
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log(lines[-1])

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(timeout_s, 1))
    except subprocess.TimeoutExpired:
        timed_out = True
        log(f"!!! timed out after {timeout_s:.0f} s: killing the stage's process group")
    finally:
        kill_group(proc.pid)  # also after a normal exit: no worker outlives its stage
        rc = proc.wait()
    reader.join(timeout=10)
    return rc, time.monotonic() - t0, timed_out, lines


class CheckError(RuntimeError):
    """A stage ran but its figures are missing or not sane."""


@dataclass
class Ctx:
    plan: Plan
    work: Path
    figures: dict = field(default_factory=dict)
    stamp: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S"))

    @property
    def outputs(self) -> Path:
        return self.work / "outputs"

    def tradelib(self, command: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "tradelib", command, "-f", FULL, "-p", "device", self.plan.device,
                *flags(self.plan.data), *extra]

    def helper(self, stage: str) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--device", self.plan.device,
                "--work", str(self.work), *(["--quick"] if self.plan.quick else [])]


# -- MFU: beside every throughput, and never a figure above 1 -------------------------------------------------------
def checked_mfu(value: float | None) -> dict:
    """{'mfu': v} for 0 <= v <= 1; an MFU above 1 is impossible, so it is kept only as `mfu_invalid` (a bug in
    the FLOP count or the peak), never as a figure."""
    if value is None or value != value:  # (NaN: a table row with no MFU beside rows with one)
        return {"mfu": None}
    if not 0 <= value <= 1:
        return {"mfu": None, "mfu_invalid": value}
    return {"mfu": value}


def measured_mfu(record: dict) -> dict:
    """A bench or sweep record's MFU: one that measure.py already flagged (above 1, or a CPU peak measured while
    other processes were busy) stays flagged, with its reason; else checked here."""
    bad = record.get("mfu_invalid")
    if isinstance(bad, (int, float)) and bad == bad:  # (NaN: a sweep row that was not flagged)
        return {"mfu": None, "mfu_invalid": bad, "mfu_invalid_reason": record.get("mfu_invalid_reason")}
    return checked_mfu(record.get("mfu"))


def mfu_text(fig: dict) -> str:
    if fig.get("mfu_invalid") is not None:
        return f"MFU INVALID ({fig.get('mfu_invalid_reason') or 'above 1: a bug in the FLOP count or the peak'})"
    return f"MFU {fig['mfu']:.2%}" if fig.get("mfu") is not None else "MFU n/a"


def sane_share(value, what: str) -> float:
    if value is None or not 0 <= value <= 1:
        raise CheckError(f"{what} is {value!r}: a share must lie in [0, 1]")
    return float(value)


def sane_rate(value, what: str) -> float:
    if value is None or not value > 0:
        raise CheckError(f"{what} is {value!r}: expected a rate above 0")
    return float(value)


def read_json(path: Path):
    if not path.exists():
        raise CheckError(f"{path} was not written")
    return json.loads(path.read_text())


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(statistics.median(values)) if values else None


# -- the stages: a command, and what is read back from its outputs ---------------------------------------------------
PACKAGES = ("torch", "numpy", "pandas", "pyarrow", "PyYAML", "tqdm", "matplotlib", "seaborn", "nvidia-ml-py",
            "pytest", "hypothesis", "papermill")


def collect_env(ctx: Ctx, lines: list[str]) -> dict:
    info = read_json(ctx.work / "env.json")
    if ctx.plan.device.startswith("cuda") and not info["cuda_available"]:
        raise CheckError("CUDA is not available to torch on this machine")
    if info["packages"].get("pytest") is None:
        raise CheckError("pytest is not importable: carry its wheel (see the device tool's notes)")
    return info


def collect_prepare(ctx: Ctx, lines: list[str]) -> dict:
    text = "\n".join(lines)
    built = re.search(r"features built in ([\d.]+)s", text)
    rows = re.search(r"([\d,]+) feature rows", text)
    if rows is None:
        raise CheckError("prepare printed no feature-row count")
    return {"rows": int(rows.group(1).replace(",", "")), "cache_hit": built is None,
            "build_s": float(built.group(1)) if built else None}


def tests_command(ctx: Ctx) -> list[str]:
    """-v: each test's outcome is in the log as it ends (the XML is written only by a pytest that finishes)."""
    return [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--durations=10", "tests/test_cuda.py",
            *ctx.plan.tests, f"--junitxml={ctx.work / 'cuda-tests.xml'}"]


def collect_tests(ctx: Ctx, lines: list[str]) -> dict:
    root = ET.parse(ctx.work / "cuda-tests.xml").getroot()
    tests = []
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        tests.append({"name": case.get("name"), "outcome": outcome, "duration_s": float(case.get("time", 0))})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failure", "error", "skipped")}
    if counts["failure"] or counts["error"] or not counts["passed"]:
        raise CheckError(f"CUDA tests: {counts}")
    if ctx.plan.device.startswith("cuda") and counts["skipped"]:
        raise CheckError(f"{counts['skipped']} CUDA tests were skipped on a CUDA machine")
    return {**counts, "tests": tests}


def bench_command(ctx: Ctx) -> list[str]:
    plan = ctx.plan
    measured = {"bench_models": plan.bench_models, "loaders": "dataloader,device,dense", "graph_modes": "eager,graph",
                "num_workers": plan.workers, **plan.bench}
    return ctx.tradelib("bench", *flags(measured), "--json", str(ctx.work / f"bench-{ctx.stamp}.json"))


BENCH_KEYS = ("label", "spec", "mode", "graph_speedup", "graph_refused", "graph_steps", "grad_accum_steps", "loader",
              "model", "batch_size", "batch_unit", "targets_per_step", "unlike", "dense_chunk", "samples_per_s",
              "samples_per_s_runs",
              "data_wait_share", "it_per_s", "gpu_busy_pct", "peak_mem_bytes", "speedup", "compiled", "precision",
              "num_workers", "n_params", "flops_per_sample", "flops_per_item", "items_per_s", "peak_flops",
              "peak_flops_source",
              "train_items_per_epoch", "steps", "warmup", "repeats", "load_avg", "other_cores", "busy_note")


def ratio(by: dict, num: str, den: str) -> tuple[float | None, list[float] | None]:
    """samples/s of row `num` over row `den` (the medians, and per interleaved repetition); None where either is
    absent (the graph rows on a CPU)."""
    if num not in by or den not in by:
        return None, None
    a, b = by[num], by[den]
    return a["samples_per_s"] / b["samples_per_s"], [x / y for x, y in zip(a["samples_per_s_runs"],
                                                                           b["samples_per_s_runs"])]


def collect_bench(ctx: Ctx, lines: list[str]) -> dict:
    records = read_json(ctx.work / f"bench-{ctx.stamp}.json")
    out = []
    for r in records:
        sane_rate(r["samples_per_s"], f"bench {r['label']} samples/s")
        sane_share(r["data_wait_share"], f"bench {r['label']} data-wait share")
        out.append({**{k: r.get(k) for k in BENCH_KEYS}, **measured_mfu(r)})
    by = {r["label"]: r for r in records}
    modes = ("eager", "graph") if ctx.plan.device.startswith("cuda") else ("eager",)  # graph rows: CUDA only
    rows = ("lstm/dataloader", "lstm/device", "lstm-accum/device", "transformer/device")
    missing = ({f"{row}/{mode}" for row in rows for mode in modes} | {"tcn/device/eager", "tcn/dense/eager"}) - set(by)
    if missing:
        raise CheckError(f"bench records missing: {sorted(missing)}")
    figures = {"records": out}
    for name, num, den in [
        ("lstm_device_over_dataloader", "lstm/device/eager", "lstm/dataloader/eager"),
        ("lstm_graph_device_over_dataloader", "lstm/device/graph", "lstm/dataloader/graph"),  # the loader's own gain
        ("lstm_graph_over_eager_device", "lstm/device/graph", "lstm/device/eager"),  # the graph's own gain
        ("lstm_graph_over_eager_dataloader", "lstm/dataloader/graph", "lstm/dataloader/eager"),
        ("lstm_accum_over_single", "lstm-accum/device/graph", "lstm/device/graph"),  # 512 x 2 against 1024 x 1
        ("lstm_accum_over_single_eager", "lstm-accum/device/eager", "lstm/device/eager"),
        ("tcn_dense_over_per_window", "tcn/dense/eager", "tcn/device/eager"),
    ]:
        figures[name], figures[name + "_runs"] = ratio(by, num, den)
    tf = by.get("transformer/device/graph") or by["transformer/device/eager"]
    figures.update(transformer_label=tf["label"], transformer_mfu=measured_mfu(tf)["mfu"],
                   transformer_gpu_busy_pct=tf.get("gpu_busy_pct"))
    return figures


def stream_command(ctx: Ctx) -> list[str]:
    measured = {"bench_models": "lstm", **ctx.plan.bench}
    return ctx.tradelib("bench", "--stream", *flags(measured), "--json", str(ctx.work / f"stream-{ctx.stamp}.json"))


def collect_stream(ctx: Ctx, lines: list[str]) -> dict:
    records = read_json(ctx.work / f"stream-{ctx.stamp}.json")
    by = {r["label"]: r for r in records}
    plan = str(by.get("lstm/stream", {}).get("stream"))
    if set(by) != {"lstm/device", "lstm/stream"} or not plan.startswith("data streamed"):
        raise CheckError(f"stream bench records: {sorted(by)}, the streamed one's plan: {plan}")
    out = []
    for r in records:
        sane_rate(r["samples_per_s"], f"stream {r['label']} samples/s")
        sane_share(r["data_wait_share"], f"stream {r['label']} data-wait share")
        out.append({**{k: r.get(k) for k in BENCH_KEYS}, "stream": r.get("stream"), **measured_mfu(r)})
    ratios = by["lstm/stream"]["ratios"]
    return {"records": out, "streamed_data_wait_share": by["lstm/stream"]["data_wait_share"],
            "stream_over_resident": ratios["stream/resident"], "stream_over_resident_runs":
            ratios["stream/resident_runs"], "plan": by["lstm/stream"]["stream"]}


def epoch_command(ctx: Ctx) -> list[str]:
    """full.yaml with no flags: two whole epochs when the bench's device-loader LSTM (with the step graph, where
    there is one) says they take epoch_target_s or less (the second is an epoch's time without the first step's
    compilation: `epochs` sets how long the run is, not how it steps), one when one does; else the steps that fit
    in that time (the projected epoch time is read from samples/s either way, and said to be projected)."""
    plan, steps = ctx.plan, []
    records = (ctx.figures.get("bench") or {}).get("records", [])
    by = {r["label"]: r for r in records}
    lstm = by.get("lstm/device/graph") or by.get("lstm/device/eager")
    if plan.epoch_max_steps:
        steps = ["-p", "max_steps", str(plan.epoch_max_steps)]
    elif lstm is None:
        steps = ["-p", "max_steps", "1000"]  # no bench figure: about a third of a full.yaml epoch
    elif (one := lstm["train_items_per_epoch"] / lstm["samples_per_s"]) > plan.epoch_target_s:
        fit = int(plan.epoch_target_s * lstm["samples_per_s"] / lstm["batch_size"])
        steps = ["-p", "max_steps", str(max(100, fit))]
    elif 2 * one <= plan.epoch_target_s:
        steps = ["-p", "epochs", "2"]
    return ctx.tradelib("train", "-p", "run_id", f"gpu-check-{ctx.stamp}", *steps)  # no flags: the defaults


def collect_epoch(ctx: Ctx, lines: list[str]) -> dict:
    """The run's figures; `steady` leaves out the first log interval, which holds the first step's compilation."""
    run = ctx.outputs / f"gpu-check-{ctx.stamp}"
    summary = read_json(run / "summary.json")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    gpu = [r for r in rows if r["kind"] == "gpu"]
    epochs = [r for r in rows if r["kind"] == "epoch" and not r.get("partial")]  # a partial one: validation only
    steady, gpu_steady = steps[1:] or steps, gpu[1:] or gpu
    sps = sane_rate(median(steady, "samples_per_s"), "epoch samples/s (steady)")
    per_epoch = summary["train_samples_per_epoch"]
    peak = (ctx.figures.get("env") or {}).get("peak_flops")
    fig = {
        "run_id": summary["run_id"], "model": summary["model"], "loader": summary["loader"],
        "batch_size": summary["batch_size"], "compiled": summary["compiled"], "device_name": summary["device_name"],
        "graph_steps": summary.get("graph_steps"),
        "optimizer_steps": summary["optimizer_steps"], "batches_per_epoch": summary["batches_per_epoch"],
        "train_samples_per_epoch": per_epoch,
        "samples_per_s": sps, "samples_per_s_run_median": summary["samples_per_s"],
        "data_wait_share": sane_share(median(steady, "data_wait_share"), "epoch data-wait share"),
        "gpu_busy_pct": median(gpu_steady, "gpu_util_median"), "gpu_busy_pct_whole_run": summary["gpu_util"],
        "projected_epoch_s": per_epoch / sps,
        # wall time of the last whole epoch: the second's where two ran, the first's (compilation included) else
        "epoch_time_s": epochs[-1]["epoch_time_s"] if epochs else None, "epochs_complete": len(epochs),
        "first_epoch_time_s": epochs[0]["epoch_time_s"] if epochs else None,
        "train_time_s": summary["train_time_s"], "peak_mem_bytes": summary["peak_mem_bytes"],
        "flops_per_sample": summary["flops_per_sample"], "peak_flops": peak,
        "skipped_steps": summary["skipped_steps"], "pooled_ic": summary.get("pooled_ic"),
        "cuda_graphs": summary.get("cuda_graphs"), "cuda_graphs_reason": summary.get("cuda_graphs_reason"),
        **checked_mfu(sps * summary["flops_per_sample"] / peak if peak and summary["flops_per_sample"] else None),
    }
    if fig["gpu_busy_pct"] is not None and not 0 <= fig["gpu_busy_pct"] <= 100:
        raise CheckError(f"GPU busy {fig['gpu_busy_pct']} is not a percentage")
    fig["epoch_measured"] = epoch_measured(fig)
    return fig


def epoch_measured(e: dict) -> str:
    """What the epoch's measured time is, in words (kept in the JSON, which the log and docs/perf.md quote)."""
    if e["epoch_time_s"] is None:
        return f"not measured ({e['optimizer_steps']} of its {e['batches_per_epoch']} steps run)"
    if e["epochs_complete"] >= 2:
        return (f"{e['epoch_time_s']:.1f} s measured (the second epoch; the first, with the compilation and the step "
                f"graph's recording, {e['first_epoch_time_s']:.1f} s)")
    return f"{e['epoch_time_s']:.1f} s measured (wall, the first step's compilation included)"


def collect_sweep(ctx: Ctx, lines: list[str]) -> dict:
    data = read_json(ctx.work / "sweep.json")
    rows = []
    for r in data["rows"]:
        sane_rate(r["samples_per_s"], f"sweep {r['loader']}@{r['batch_size']} samples/s")
        sane_share(r["data_wait_share"], f"sweep {r['loader']}@{r['batch_size']} data-wait share")
        rows.append({**{k: v for k, v in r.items() if not k.startswith("mfu")}, **measured_mfu(r)})
    want = {(loader, b) for loader in ("device", "dataloader") for b in ctx.plan.sweep_sizes}
    missing = want - {(r["loader"], r["batch_size"]) for r in rows}
    if missing:
        raise CheckError(f"sweep rows missing: {sorted(missing)}")
    return {"rows": rows, "peak_flops_source": data["peak_flops_source"], "model": data["model"]}


@dataclass
class Spec:
    command: Callable[[Ctx], list[str]]
    collect: Callable[[Ctx, list[str]], dict]
    needs: tuple[str, ...] = ()


SPECS = {
    "env": Spec(lambda c: c.helper("env"), collect_env),
    "prepare": Spec(lambda c: c.tradelib("prepare"), collect_prepare),
    "cuda_tests": Spec(tests_command, collect_tests),
    "bench": Spec(bench_command, collect_bench, needs=("prepare",)),
    "epoch": Spec(epoch_command, collect_epoch, needs=("prepare",)),
    "stream": Spec(stream_command, collect_stream, needs=("prepare",)),
    "sweep": Spec(lambda c: c.helper("sweep"), collect_sweep, needs=("prepare",)),
}


# -- the --stage helpers: run as subprocesses of the check, they import torch and tradelib -------------------------
def git_commit() -> str | None:
    """HEAD, and whether the tracked files differ from it: a copied working tree may carry older git metadata
    (the device tool's copy named the session's first commit while running later code)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        diff = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or not head.stdout.strip():
        return None
    changed = len(diff.stdout.splitlines()) if diff.returncode == 0 else None
    return head.stdout.strip() + ("" if changed == 0 else f" + {changed or 'unknown'} changed tracked file(s)")


def nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return str(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no nvidia-ml-py, no driver: reported as None
        return None


def helper_env(plan: Plan, work: Path) -> None:
    import platform
    from importlib import metadata

    import torch

    from tradelib.hardware import device_name, mfu_peak, pick_device
    from tradelib.monitor import GpuMonitor

    dev = pick_device(plan.device)
    info = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "device": str(dev), "device_name": device_name(dev), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_avg": list(os.getloadavg()),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit()}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(capability=f"{p.major}.{p.minor}", gpu_memory_bytes=p.total_memory,
                    multiprocessors=p.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported())
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    mon = GpuMonitor(device=dev, interval_s=0.1).start()
    time.sleep(0.5)
    nv = mon.stop()
    peak = mfu_peak(dev, peak_tflops=0.0, max_other_load=1.0)  # the chip's own: the table's or measured
    info.update(packages=packages, peak_flops=peak.flops, peak_flops_source=peak.source,
                nvml={"available": nv["available"], "samples": nv["gpu_samples"], "reason": nv["reason"],
                      "driver": nvml_driver()})
    (work / "env.json").write_text(json.dumps(info, indent=1))
    for key in ("python", "torch", "cuda", "cudnn", "device_name", "capability", "gpu_memory_bytes", "cpu_count",
                "load_avg", "peak_flops_source", "nvml", "packages", "git_commit"):
        print(f"{key:18s} {info.get(key)}")


def helper_sweep(plan: Plan, work: Path) -> None:
    from tradelib.config import load_config
    from tradelib.perf.profiling import batch_size_sweep

    overrides = {"device": plan.device, **plan.data, "num_workers": plan.workers, **plan.sweep}
    cfg = load_config([FULL], list(overrides.items()))
    df = batch_size_sweep(cfg, list(plan.sweep_sizes), ["device", "dataloader"], verbose=True)
    print(df.to_string())
    records = df.attrs["records"]
    (work / "sweep.json").write_text(json.dumps({"model": cfg.model, "rows": df.to_dict("records"),
                                                 "peak_flops_source": records[0]["peak_flops_source"]},
                                                indent=1, default=str))


# -- the check -----------------------------------------------------------------------------------------------------
ABSENT_ON_GPU = ("papermill", "nbformat", "nbconvert", "ipykernel", "jupyter_client", "jupyterlab", "notebook",
                 "ipywidgets", "tensorboard")
BLOCKER = f"""# written by tools/gpu_check.py --quick: the dry run cannot import what the GPU machine lacks
import sys

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {ABSENT_ON_GPU!r}:
            raise ModuleNotFoundError(f"{{name}} is not on the GPU machine (blocked by gpu_check --quick)")

sys.meta_path.insert(0, Absent())
"""


def stage_env(ctx: Ctx) -> dict:
    """The environment every stage runs in: this checkout on the path, outputs in the work folder. The dry run
    also hides the packages the GPU machine does not have (a sitecustomize on the path), so that an import of
    one cannot pass here and fail there."""
    paths = [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    if ctx.plan.quick:
        block = ctx.work / "absent-on-gpu"
        block.mkdir(exist_ok=True)
        (block / "sitecustomize.py").write_text(BLOCKER)
        paths.insert(0, str(block))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TRADELIB_OUTPUTS": str(ctx.outputs),
            "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}


def run_stage(name: str, ctx: Ctx, log: Log, stages: dict, end: float) -> dict:
    spec, budget = SPECS[name], min(ctx.plan.budgets[name], end - time.monotonic())
    failed_needs = [n for n in spec.needs if stages.get(n, {}).get("status") not in (None, "passed", "not run")]
    if failed_needs:
        return {"status": "skipped", "reason": f"needs {', '.join(failed_needs)}"}
    if budget < 10:
        return {"status": "skipped", "reason": f"only {max(budget, 0):.0f} s left of the overall budget"}
    cmd = spec.command(ctx)
    log(f"\n=== stage {name} (budget {budget:.0f} s): {' '.join(cmd)}")
    rc, seconds, timed_out, lines = run_process(cmd, budget, log, stage_env(ctx))
    rec = {"status": "passed", "returncode": rc, "duration_s": round(seconds, 2), "budget_s": round(budget),
           "command": cmd}
    if timed_out:
        rec.update(status="timeout", reason=f"killed after its budget of {budget:.0f} s")
    elif rc != 0:
        rec.update(status="failed", reason=f"exit code {rc}")
    else:
        try:
            ctx.figures[name] = spec.collect(ctx, lines)
        except (CheckError, OSError, KeyError, ValueError, ET.ParseError) as exc:
            rec.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
    log(f"=== stage {name}: {rec['status']} in {seconds:.1f} s" + (f" ({rec['reason']})" if "reason" in rec else ""))
    return rec


# -- targets and the summary -----------------------------------------------------------------------------------------
def judge(result: dict) -> list[dict]:
    """The GPU targets (issue 19) against the figures; on a CPU they are shown but not judged."""
    f, gpu = result["figures"], result["device"].startswith("cuda")
    epoch, bench, streamed = f.get("epoch") or {}, f.get("bench") or {}, f.get("stream") or {}
    pct, share, times, secs = "{:.0f}%".format, "{:.2%}".format, "{:.2f}x".format, "{:.1f} s".format
    rows = [
        ("GPU busy training full.yaml with no flags (NVML, median after the first log interval)", ">= 90%",
         epoch.get("gpu_busy_pct"), lambda v: v >= 90, pct),
        ("data wait training full.yaml with no flags (CUDA events around each fetch)", "<= 2%",
         epoch.get("data_wait_share"), lambda v: v <= 0.02, share),
        ("one full.yaml epoch with no flags, measured (its wall time; the second epoch's where two ran)", "<= 5 s",
         epoch.get("epoch_time_s"), lambda v: v <= 5, secs),
        ("the loader's own gain: device + graph / dataloader + graph, LSTM at batch 1024", ">= 3x",
         bench.get("lstm_graph_device_over_dataloader"), lambda v: v >= 3, times),
        ("accumulation with the step graph: 512 x 2 / 1024 x 1 samples/s, LSTM", ">= 0.90x",
         bench.get("lstm_accum_over_single"), lambda v: v >= 0.9, times),
        ("transformer MFU at batch 1024 (window 64, hidden 512, 4 layers; NVML busy beside it in the table)", ">= 25%",
         bench.get("transformer_mfu"), lambda v: v >= 0.25, share),
        ("TCN dense / per window, same global batch, eager (issue 4)", ">= 30x",
         bench.get("tcn_dense_over_per_window"), lambda v: v >= 30, times),
        ("data wait of streamed data, LSTM at batch 1024, a quarter of the data on the GPU (issue 13)", "<= 2%",
         streamed.get("streamed_data_wait_share"), lambda v: v <= 0.02, share),
    ]
    return [{"target": name, "want": want, "value": value, "shown": fmt(value) if value is not None else "n/a",
             "met": (bool(ok(value)) if gpu else None) if value is not None else None,
             **({} if gpu else {"note": "not judged: the targets are a GPU's"})}
            for name, want, value, ok, fmt in rows]


def invalid_mfus(figures: dict) -> list[str]:
    out = [f"{kind} {r['label']}" for kind in ("bench", "stream") for r in (figures.get(kind) or {}).get("records", [])
           if "mfu_invalid" in r]
    out += [f"sweep {r['loader']}@{r['batch_size']}" for r in (figures.get("sweep") or {}).get("rows", [])
            if "mfu_invalid" in r]
    return out + (["epoch"] if "mfu_invalid" in (figures.get("epoch") or {}) else [])


def throughput_lines(figures: dict) -> list[str]:
    """Every throughput figure, each with its MFU beside it."""
    lines = []
    for kind, r in [("bench", r) for r in (figures.get("bench") or {}).get("records", [])] + \
            [("stream", r) for r in (figures.get("stream") or {}).get("records", [])]:
        busy = f"GPU busy {r['gpu_busy_pct']:.0f}%" if r.get("gpu_busy_pct") is not None else "GPU busy n/a"
        lines.append(f"{kind} {r['label']:16s} {r['batch_size']:>6} {r['batch_unit']:8s} {r['samples_per_s']:>12,.0f}"
                     f" samples/s  data wait {r['data_wait_share']:6.1%}  {busy}  {mfu_text(r)}")
    e = figures.get("epoch")
    if e:
        busy = f"{e['gpu_busy_pct']:.0f}%" if e.get("gpu_busy_pct") is not None else "n/a"
        graph = f"step graph replayed {e['graph_steps']} steps" if e.get("graph_steps") else "step graph NOT used"
        lines.append(f"epoch {e['model']}/{e['loader']} batch {e['batch_size']}, no flags ({graph}): "
                     f"{e['samples_per_s']:,.0f} samples/s "
                     f"(steady), PROJECTED epoch {e['projected_epoch_s']:.1f} s for "
                     f"{e['train_samples_per_epoch']:,.0f} windows ({e['epoch_measured']}), GPU busy {busy}, "
                     f"data wait {e['data_wait_share']:.1%}, {mfu_text(e)}")
    for r in (figures.get("sweep") or {}).get("rows", []):
        busy = r.get("gpu_busy_pct")
        busy = f"GPU busy {busy:.0f}%" if isinstance(busy, (int, float)) and busy == busy else "GPU busy n/a"
        lines.append(f"sweep {r['loader']:10s} batch {r['batch_size']:>6}: {r['samples_per_s']:>12,.0f} samples/s  "
                     f"data wait {r['data_wait_share']:6.1%}  {busy}  {mfu_text(r)}")
    return lines


def summarise(result: dict, log: Log) -> None:
    env = result["figures"].get("env") or {}
    log(f"\n=== summary: {result['device']} ({env.get('device_name', '?')}), torch {env.get('torch', '?')}, "
        f"CUDA {env.get('cuda')}, {result['duration_s']:.0f} s")
    for name, st in result["stages"].items():
        log(f"  {name:11s} {st['status']:8s} {st.get('duration_s', 0):7.1f} s  {st.get('reason', '')}")
    tests = result["figures"].get("cuda_tests")
    if tests:
        log(f"  CUDA tests: {tests['passed']} passed, {tests['failure']} failed, {tests['skipped']} skipped")
    for line in throughput_lines(result["figures"]):
        log("  " + line)
    for t in result["targets"]:
        mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        log(f"  [{mark:6s}] {t['target']}: {t['shown']} (target {t['want']})")
    for where in result["invalid_mfu"]:
        log(f"  !!! MFU invalid at {where} (above 1, or over a peak measured on a busy machine): not reported as "
            f"a figure")
    log(f"=== {'PASSED' if result['passed'] else 'FAILED'}: every stage passed" if result["passed"] else
        "=== FAILED: " + ", ".join(f"{n} {s['status']}" for n, s in result["stages"].items()
                                   if s["status"] not in ("passed", "not run")))


def write_result(result: dict, out: Path) -> None:
    tmp = out / ".gpu_check.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, out / "gpu_check.json")


def slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'"""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def run_name(result: dict) -> str:
    """<date>-<device>-<commit>: the name of a finished check's files (a commit with changes not committed says
    so: `-dirty`; a check of some stages only names them, so that it does not replace the whole check's files)."""
    env = result["figures"].get("env") or {}
    commit = str(env.get("git_commit") or "nocommit")
    short = commit.split()[0][:10] + ("-dirty" if "changed" in commit else "")
    ran = [name for name, stage in result["stages"].items() if stage.get("status") != "not run"]
    only = "" if len(ran) == len(STAGES) else "-only-" + "-".join(n for n in ran if n != "env")
    return f"{result['started'][:10]}-{slug(env.get('device_name') or result['device'])}-{short}{only}"


def file_result(result: dict, out: Path, log: Log) -> Path:
    """The finished check's JSON and log, renamed <date>-<device>-<commit>.{json,log} (a rerun the same day on
    the same commit replaces them); returns the JSON's path."""
    name = run_name(result)
    result["files"] = {"json": f"{name}.json", "log": f"{name}.log"}
    write_result(result, out)
    log(f"=== files: {out / name}.json and .log")
    log.file.close()
    os.replace(out / "gpu_check.json", out / f"{name}.json")
    os.replace(out / "gpu_check.log", out / f"{name}.log")
    return out / f"{name}.json"


def stages_to_run(only: str | None) -> set[str]:
    """`--only a,b`: those stages and env, whose figures name the files and record the versions; else all."""
    return set(only.split(",")) | {"env"} if only else set(STAGES)


def run_check(args: argparse.Namespace) -> int:
    plan = make_plan(args.device, args.quick)
    out = Path(args.outdir or RUNS).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "tradelib-gpu-check").resolve()
    work.mkdir(parents=True, exist_ok=True)
    log, ctx, t0 = Log(out / "gpu_check.log"), Ctx(plan, work), time.monotonic()
    only = stages_to_run(args.only)
    end = t0 + (args.budget_s or plan.total_s)
    result = {"check": "tools/gpu_check.py", "argv": sys.argv[1:], "device": plan.device, "quick": plan.quick,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": round(end - t0), "work": str(work),
              "load_avg_start": list(os.getloadavg()), "blocked_imports": list(ABSENT_ON_GPU) if plan.quick else [],
              "stages": {}, "figures": ctx.figures, "targets": [],
              "invalid_mfu": [], "passed": None}
    log(f"=== tradelib GPU check: device {plan.device}{' (quick)' if plan.quick else ''}, budget "
        f"{end - t0:.0f} s, work folder {work}, results in {out}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # the running stage's group goes too
    for name in STAGES:
        try:
            result["stages"][name] = run_stage(name, ctx, log, result["stages"], end) if name in only else \
                {"status": "not run"}
        except (KeyboardInterrupt, SystemExit):
            result["stages"][name] = {"status": "interrupted", "reason": "the check was stopped from outside"}
            write_result(result, out)
            raise
        result["duration_s"] = time.monotonic() - t0
        write_result(result, out)
    env = ctx.figures.get("env") or {}
    result.update(versions={k: env.get(k) for k in ("python", "torch", "cuda", "cudnn", "device_name", "capability")},
                  targets=judge(result), invalid_mfu=invalid_mfus(ctx.figures),
                  passed=all(s["status"] in ("passed", "not run") for s in result["stages"].values()),
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), load_avg_end=list(os.getloadavg()),
                  duration_s=time.monotonic() - t0)
    summarise(result, log)
    file_result(result, out, log)
    return 0 if result["passed"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir", nargs="?", help="folder for the <date>-<device>-<commit>.{json,log} files (default "
                                             "docs/gpu-runs, where they are committed)")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="the dry run: a tiny market, a few steps (minutes on a CPU)")
    p.add_argument("--work", help="folder for the feature cache and run outputs (default $TMPDIR/tradelib-gpu-check:"
                                  " a rerun on the same machine finds its cache)")
    p.add_argument("--only", help=f"comma list of stages to run ({','.join(STAGES)}), e.g. to rerun a failed one "
                                  f"(env always runs)")
    p.add_argument("--budget-s", type=float, default=0, help="overall budget in seconds (default 560; quick 300)")
    p.add_argument("--stage", choices=("env", "sweep"), help=argparse.SUPPRESS)  # the helpers, run by the check
    args = p.parse_args(argv)
    if args.only and not set(args.only.split(",")) <= set(STAGES):
        p.error(f"--only: unknown stage in {args.only!r}; stages: {', '.join(STAGES)}")
    if args.stage:
        helper = {"env": helper_env, "sweep": helper_sweep}[args.stage]
        helper(make_plan(args.device, args.quick), Path(args.work))
        return 0
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
