"""The machine: which device, which precision, the torch flags a run sets (and puts back), peak FLOP/s for MFU,
peak memory. Each rule lives here once; the trainer, the bench and the report ask.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Peak:
    """One card's dense (no sparsity) bf16/fp16 tensor-core peak, FP32 accumulate, as its vendor datasheet gives
    it; `memory_gb` (decimal GB, as the datasheet) tells apart the variants a name alone does not, and a partition
    or a variant whose memory is far from it is not matched."""

    tflops: float
    memory_gb: float
    source: str


# keyed on the exact torch.cuda.get_device_name string (never a substring: "NVIDIA L4" is not "NVIDIA L40S")
H100_DS = "NVIDIA H100 datasheet"
PEAKS: dict[str, Peak] = {
    "NVIDIA B200": Peak(2250, 180, "NVIDIA HGX B200 datasheet (4.5 PFLOPS sparse per GPU)"),
    "NVIDIA H200": Peak(989.5, 141, "NVIDIA H200 datasheet, SXM (1,979 sparse)"),
    "NVIDIA H200 NVL": Peak(835.5, 141, "NVIDIA H200 datasheet, NVL (1,671 sparse)"),
    "NVIDIA H100 80GB HBM3": Peak(989.5, 80, f"{H100_DS}, SXM (1,979 sparse)"),
    "NVIDIA H100 PCIe": Peak(756.5, 80, f"{H100_DS}, PCIe (1,513 sparse)"),
    "NVIDIA H100 NVL": Peak(835.5, 94, f"{H100_DS}, NVL (1,671 sparse)"),
    "NVIDIA GH200 480GB": Peak(989.5, 96, "NVIDIA GH200 Grace Hopper Superchip datasheet, its 96 GB HBM3 GPU "
                                          "(1,979 sparse; the 480 GB is the CPU's LPDDR5X)"),
    "NVIDIA A100-SXM4-40GB": Peak(312, 40, "NVIDIA A100 datasheet, SXM 40GB (624 sparse)"),
    "NVIDIA A100-SXM4-80GB": Peak(312, 80, "NVIDIA A100 datasheet, SXM 80GB (624 sparse)"),
    "NVIDIA A100-PCIE-40GB": Peak(312, 40, "NVIDIA A100 datasheet, PCIe 40GB (624 sparse)"),
    "NVIDIA A100 80GB PCIe": Peak(312, 80, "NVIDIA A100 datasheet, PCIe 80GB (624 sparse)"),
    "NVIDIA A10": Peak(125, 24, "NVIDIA A10 datasheet (250 sparse)"),
    "NVIDIA L4": Peak(121, 24, "NVIDIA L4 datasheet (242 sparse)"),
    "NVIDIA L40": Peak(181.05, 48, "NVIDIA L40 datasheet (362.1 sparse)"),
    "NVIDIA L40S": Peak(362.05, 48, "NVIDIA L40S datasheet (733 sparse)"),
    "NVIDIA RTX 6000 Ada Generation": Peak(364.2, 48, "NVIDIA Ada Lovelace architecture whitepaper (728.5 sparse)"),
    "NVIDIA GeForce RTX 4090": Peak(165.2, 24, "NVIDIA Ada Lovelace architecture whitepaper, FP32 accumulate "
                                              "(330.4 sparse)"),
    "NVIDIA GeForce RTX 5090": Peak(209.5, 32, "NVIDIA RTX Blackwell GPU architecture whitepaper, FP32 accumulate "
                                              "(419 sparse)"),
    "NVIDIA GeForce RTX 3090": Peak(71, 24, "NVIDIA Ampere GA102 whitepaper, FP32 accumulate (142 sparse)"),
    "Tesla T4": Peak(65, 16, "NVIDIA T4 datasheet, FP16 mixed precision (no bf16)"),
    "Tesla V100-SXM2-16GB": Peak(125, 16, "NVIDIA V100 datasheet, SXM2 FP16 tensor (no bf16)"),
    "Tesla V100-SXM2-32GB": Peak(125, 32, "NVIDIA V100 datasheet, SXM2 FP16 tensor (no bf16)"),
    "Tesla V100-PCIE-16GB": Peak(112, 16, "NVIDIA V100 datasheet, PCIe FP16 tensor (no bf16)"),
    "Tesla V100-PCIE-32GB": Peak(112, 32, "NVIDIA V100 datasheet, PCIe FP16 tensor (no bf16)"),
    "Tesla V100S-PCIE-32GB": Peak(130, 32, "NVIDIA V100S datasheet, FP16 tensor (no bf16)"),
}
MEMORY_TOLERANCE = 0.15  # torch reports the usable bytes (GiB-rounded by the driver), the datasheet decimal GB


def pick_device(name: str = "auto", verbose: bool = True) -> torch.device:
    """CUDA when asked or available; says so when it falls back to the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        else:
            device = torch.device("cpu")
            if verbose:
                print(f"CUDA is not available: running on the CPU ({torch.get_num_threads()} threads)")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"parameter 'device' is {name!r}; allowed: auto | cpu | cuda | cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"parameter 'device' is {name!r} but CUDA is not available on this machine: "
                             f"use -p device cpu (or auto)")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"parameter 'device' is {name!r} but this machine has {torch.cuda.device_count()} "
                             f"GPU(s)")
    if verbose and device.type == "cuda":
        print(f"running on {torch.cuda.get_device_name(device)} ({device})")
    return device


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # fp32: no autocast


def precision_for(precision: str, device_type: str, bf16_native: bool) -> str:
    """The precision a run computes in: fp32, bf16 or fp16 (autocast). `auto`: bf16 on a CUDA card that computes
    it natively (Ampere and later), else fp16 (V100, T4), whose narrow range needs a GradScaler; fp32 on the CPU."""
    if precision != "auto":
        return precision
    if device_type != "cuda":
        return "fp32"
    return "bf16" if bf16_native else "fp16"


def resolved_precision(precision: str, device: torch.device) -> str:
    """`precision_for` on this device: asks the card whether it has native bf16 (emulated bf16 is slow)."""
    native = False
    if device.type == "cuda" and precision == "auto":
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
    return precision_for(precision, device.type, native)


def autocast(device: torch.device, precision: str, cache: bool = True):
    """Autocast to the precision's dtype (off for fp32). `cache=False` while recording a CUDA graph: autocast's
    cache of cast weights would outlive the recording and be read stale at replay."""
    dtype = AUTOCAST_DTYPES.get(resolved_precision(precision, device))
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None,
                          cache_enabled=cache)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def torch_flags(deterministic: bool) -> Iterator[None]:
    """TF32 matmuls, and deterministic kernels when asked, for the duration of a run; the previous settings
    come back on exit, so a notebook kernel is left as it was."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if deterministic:
        # read when cuBLAS first starts in this process: too late if CUDA already ran matmuls (a notebook kernel)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)  # warn_only: name an op without one, do not fail
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
        if saved[6] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[6]


_said_nondeterminism: list[bool] = []  # the CUDA note is printed once per process


def say_determinism(device: torch.device, deterministic: bool) -> None:
    """CPU runs with a seed repeat bit for bit; on CUDA say once what does not."""
    if device.type != "cuda" or _said_nondeterminism:
        return
    _said_nondeterminism.append(True)
    if deterministic:
        print("deterministic=True: deterministic CUDA kernels (a warning names any op without one); "
              "torch.compile's kernel choice and, under DDP, NCCL's reduction order can still vary, and cuDNN "
              "keeps the RNG of an LSTM/GRU's own dropout (layers > 1) to itself, so a resumed run draws other "
              "masks there")
    else:
        print("GPU runs are not bit-for-bit reproducible: cuDNN/cuBLAS pick kernels and split reductions "
              "at run time (LSTM/GRU, the TCN's convolutions, matmul workspaces), torch.compile may choose "
              "kernels by timing, and under DDP NCCL's all-reduce order can change. The window gather needs no "
              "gradient, so no scatter-add atomics. deterministic=True narrows this, at some speed")


def device_memory(device: torch.device) -> int:
    """The device's memory in bytes (on a CPU: the machine's physical memory)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the allocator's peak; CPU: the process's peak resident set (Linux reports KiB)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def lookup_peak(name: str, memory_bytes: int | None) -> tuple[float | None, str]:
    """(dense bf16/fp16 peak FLOP/s, its source) for a device name as torch.cuda.get_device_name gives it, and
    its total memory; (None, why) for a name not in PEAKS or a memory the datasheet's variant does not have
    (a MIG partition reports another name, and is not matched either)."""
    peak = PEAKS.get(name.strip())
    if peak is None:
        return None, (f"{name!r} is not in hardware.PEAKS (matched on the exact device name): set peak_tflops to "
                      f"its dense bf16 peak in TFLOP/s from its datasheet")
    if memory_bytes:
        gb = memory_bytes / 1e9
        if abs(gb - peak.memory_gb) > MEMORY_TOLERANCE * peak.memory_gb:
            return None, (f"{name!r} reports {gb:.0f} GB of memory, the datasheet's card {peak.memory_gb:g} GB: "
                          f"another variant or a partition; set peak_tflops to its dense bf16 peak in TFLOP/s")
    return peak.tflops * 1e12, f"table: {name}, dense bf16/fp16 tensor peak {peak.tflops:g} TFLOP/s ({peak.source})"


MIN_BURST_S = 0.02  # a timed burst of matmuls lasts at least this long: longer than a time slice of other load


def measured_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024,
                          seconds: float = 0.5, m: int | None = None, k: int | None = None) -> float:
    """FLOP/s of an [m, k] @ [k, n] matmul on this device (square n x n unless m, k are given), sustained
    (`sustained_rate` over bursts of at least MIN_BURST_S): the MFU denominator where no peak is known, and the
    doctor's rate of a model's own largest matmul."""
    m, k = m or n, k or n
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    calls, bursts, end = 1, [], time.perf_counter() + seconds
    while len(bursts) < 3 or time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(calls):
            a @ b
        sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed < MIN_BURST_S:  # too short to time honestly: a longer burst
            calls = max(2 * calls, int(calls * 1.2 * MIN_BURST_S / max(elapsed, 1e-9)))
            continue
        bursts.append((calls * 2.0 * m * k * n, elapsed))
    return sustained_rate(bursts)


def sustained_rate(bursts: Sequence[tuple[float, float]]) -> float:
    """FLOP/s of the median burst of (FLOPs, seconds), over bursts of at least MIN_BURST_S: a rate the device keeps
    up. The best of bursts of a few microseconds read a small matmul's rate in the gaps between other processes'
    time slices, on a loaded CPU 45 GFLOP/s for one that sustained 16."""
    rates = [f / s for f, s in bursts if s >= MIN_BURST_S]
    if not rates:
        raise ValueError(f"no burst of at least {MIN_BURST_S} s among {len(bursts)} to take a sustained rate from")
    return statistics.median(rates)


def peak_flops(device: torch.device, *, peak_tflops: float) -> tuple[float | None, str]:
    """(peak FLOP/s, where it came from) for MFU: `peak_tflops` when the user set it (Config.peak_tflops); else
    the chip's dense peak from PEAKS, by its exact name and memory; else (None, why). `mfu_peak` measures a CPU's."""
    if peak_tflops > 0:
        return peak_tflops * 1e12, f"peak_tflops: {peak_tflops:g} TFLOP/s, set by the user for {device_name(device)}"
    if device.type != "cuda":
        return None, f"no peak table for {device.type}"
    return lookup_peak(torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory)


def mfu(samples_per_s: float, flops_per_sample: float | None, peak: float | None) -> float | None:
    """Model-FLOP utilisation: achieved training FLOP/s over the peak (None without a peak or a FLOP count: a
    model of the user's that gives no flops_per_sample). The rate and the FLOPs must count the same thing: windows,
    or dense chunks (`Trainer.flops_per_item`)."""
    return samples_per_s * flops_per_sample / peak if peak and flops_per_sample else None


# -- other processes on this machine: what makes a timing or a measured peak untrustworthy --------------------
def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine spent busy since boot (Linux /proc/stat: all but idle and iowait); None
    elsewhere."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and of its children: the live ones (the DataLoader's workers)
    from /proc, the exited and reaped ones (an epoch's workers without persistent_workers) from getrusage."""
    me, tick, children = os.getpid(), os.sysconf("SC_CLK_TCK"), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except (OSError, IndexError):
            continue
        if len(fields) > 12 and fields[1] == str(me):
            children += int(fields[11]) + int(fields[12])  # utime, stime
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children / tick + reaped.ru_utime + reaped.ru_stime


class CpuElsewhere:
    """`with CpuElsewhere() as other:` ... `other.cores`: the cores other processes kept busy while the block ran
    (the machine's busy CPU time less this process's and its children's, over the wall time); None where the
    machine does not say (not Linux)."""

    cores: float | None = None
    own: float = 0.0  # CPU seconds of this process and its children in the block
    wall: float = 0.0  # the block's wall seconds

    def __enter__(self) -> CpuElsewhere:
        self.t0, self.own0, self.busy0 = time.perf_counter(), own_cpu_seconds(), busy_cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        busy, own, wall = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter() - self.t0
        self.own, self.wall = own - self.own0, wall
        if busy is not None and self.busy0 is not None and wall > 0:
            self.cores = max(0.0, (busy - self.busy0 - self.own) / wall)


def busy_elsewhere(other_cores: float | None, max_other_load: float) -> str | None:
    """'other processes kept X of the N cores busy' when that is more than `max_other_load` of the machine (a
    timing or a peak measured then is not comparable), else None."""
    cores = os.cpu_count() or 1
    if other_cores is None or other_cores <= max_other_load * cores:
        return None
    return f"other processes kept {other_cores:.1f} of the {cores} cores busy"


def busy_fields(other_cores: list[float | None], max_other_load: float) -> dict:
    """`other_cores`: the most cores other processes kept busy during a configuration's timed steps; `busy_note`
    when above max_other_load of the machine: its samples/s (and every ratio to it) is not comparable."""
    known = [c for c in other_cores if c is not None]
    worst = max(known) if known else None
    busy = busy_elsewhere(worst, max_other_load)
    return {"other_cores": worst, "busy_note": busy and f"timed while {busy}: samples/s and its ratios are not "
                                                      f"comparable (rerun on an idle machine)"}


@dataclass(frozen=True)
class MfuPeak:
    """The MFU denominator: `flops` (None: MFU n/a) and where it came from; for a rate measured now on this CPU,
    the cores other processes kept busy meanwhile, and `untrusted`: why it cannot be trusted (they took cores
    from the matmul, so it reads low and every MFU over it high)."""

    flops: float | None
    source: str
    measured: bool = False
    other_cores: float | None = None
    untrusted: str | None = None


def mfu_peak(device: torch.device, peak_tflops: float, max_other_load: float) -> MfuPeak:
    """`peak_flops`; else, on a CPU, an fp32 matmul rate measured now, beside the load of other processes. A GPU
    not in the table gets no MFU rather than one over a matmul rate that is not its peak."""
    flops, source = peak_flops(device, peak_tflops=peak_tflops)
    if flops or device.type == "cuda":
        return MfuPeak(flops, source)
    with CpuElsewhere() as other:
        flops = measured_matmul_flops(device, torch.float32, 1024)
    busy = busy_elsewhere(other.cores, max_other_load)
    return MfuPeak(flops, f"measured: fp32 1024x1024 matmul on this CPU ({torch.get_num_threads()} threads)", True,
                   other.cores, busy and f"the CPU peak FLOP/s was measured while {busy} (more than max_other_load "
                                         f"{max_other_load:.0%}): it reads low and MFU high")
