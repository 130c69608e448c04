"""The machine: which device, which precision, the torch flags a run sets (and puts back), peak FLOP/s for MFU,
peak memory. Each rule lives here once; the trainer, the bench and the report ask.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterator

import torch

# dense bf16 tensor-core peaks (FLOP/s) by a substring of the device name
PEAK_FLOPS = {"h200": 989e12, "h100": 989e12, "a100": 312e12, "l4": 121e12, "4090": 165e12, "5090": 209e12}


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


def uses_bf16(precision: str, device: torch.device) -> bool:
    return resolved_precision(precision, device) == "bf16"


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
def torch_flags(deterministic: bool = False) -> Iterator[None]:
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


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the allocator's peak; CPU: the process's peak resident set (Linux reports KiB)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def table_peak_flops(device: torch.device) -> float | None:
    """The chip's dense bf16 peak from PEAK_FLOPS; None for a CPU or a chip not in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


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


def peak_flops(device: torch.device, measure: bool = False) -> tuple[float | None, str]:
    """(peak FLOP/s, where it came from) for MFU: the chip's table figure; else, with `measure`, a matmul
    rate measured now (bf16 on a GPU, fp32 on the CPU); else (None, why)."""
    table = table_peak_flops(device)
    if table:
        return table, f"table: dense bf16 peak of {torch.cuda.get_device_name(device)}"
    if not measure:
        return None, f"no peak known for {device_name(device)}"
    if device.type == "cuda":
        return (measured_matmul_flops(device, torch.bfloat16, 4096),
                "measured: bf16 4096x4096 matmul on this GPU (chip not in the peak table)")
    return (measured_matmul_flops(device, torch.float32, 1024),
            f"measured: fp32 1024x1024 matmul on this CPU ({torch.get_num_threads()} threads)")


def mfu(samples_per_s: float, flops_per_sample: float, peak: float | None) -> float | None:
    """Model-FLOP utilisation: achieved training FLOP/s over the peak (None without a peak)."""
    return samples_per_s * flops_per_sample / peak if peak else None
