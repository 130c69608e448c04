"""`tradelib doctor`: about `doctor_seconds` of the current configuration on the current device, then what limits
it, in plain words, and the one change that would help, with its expected gain.

    tradelib doctor -f params/full.yaml
    launch-bound: 6.1 ms on the host per 2.0 ms on the GPU: set cuda_graphs true (about 3.0x)

The verdict is a pure function of the measured figures (`verdict(Measured)`), so each rule is tested on made-up
figures; `examine(cfg)` does the measuring: the real training step (measure.py's Runner), its data wait (the
fetch synchronised on both sides), the host's time to issue a step and the GPU's kernel time for it (CUDA),
MFU, and the MFU the model's largest matmul reaches alone on this device (what the model allows).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from tradelib.config import Config, load_config
from tradelib.hardware import (
    AUTOCAST_DTYPES,
    MfuPeak,
    device_memory,
    device_name,
    measured_matmul_flops,
    mfu,
    mfu_peak,
    peak_memory_bytes,
    sync,
    torch_flags,
)
from tradelib.perf.measure import Runner, device_events, mfu_fields, quiet_profiler
from tradelib.perf.profiling import _runner

# where a figure tips the verdict (shares of step time, ratios of times, shares of memory)
INPUT_BOUND = 0.2  # data wait share from which the input pipeline is the limit
LAUNCH_BOUND = 1.2  # host time per step over GPU time per step from which launches are the limit
COMPUTE_BOUND = 0.5  # MFU over what the model's largest matmul reaches alone, from which arithmetic is the limit
SMALL_MATMULS = 0.1  # a largest matmul below this share of the peak alone: the model is small for the device
MEMORY_FULL = 0.85  # share of device memory from which the batch cannot grow
MEMORY_ROOM = 0.5  # share below which a larger batch fits


@dataclass
class Measured:
    """The figures a verdict is made of: `examine` measures them; a test can state them."""

    device: str  # cuda | cpu
    device_name: str
    model: str
    loader: str
    batch_size: int
    grad_accum_steps: int
    graphs: bool  # the step graph in use
    graphs_refused: str | None  # why not, where it was asked for or would be chosen
    precision: str  # bf16 | fp32 (what autocast runs)
    samples_per_s: float
    step_s: float  # wall seconds per optimizer step
    wait_share: float  # share of step time waiting for data
    host_s: float | None = None  # host seconds to issue one step (CUDA)
    device_s: float | None = None  # GPU kernel seconds per step (CUDA)
    mfu: float | None = None
    mfu_ceiling: float | None = None  # the MFU of the model's largest matmul alone on this device
    mfu_note: str = ""  # why MFU is n/a
    largest_matmul: str = ""  # e.g. "[65536 x 512] @ [512 x 1536]"
    mem_peak_bytes: int | None = None
    mem_total_bytes: int | None = None
    streamed: bool = False  # the data streamed in blocks: loader stream, or the device loader over its budget


@dataclass
class Finding:
    kind: str  # input-bound | launch-bound | compute-bound | between bounds | memory-full | memory headroom | memory
    text: str  # the sentence a user reads
    change: dict = field(default_factory=dict)  # the parameters that would help
    gain: float | None = None  # the expected speed-up of that change


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB"


def bound(m: Measured) -> Finding:
    """What limits the step, first match wins: the data, the host's launches, the arithmetic; else between."""
    if m.wait_share >= INPUT_BOUND:
        gain = 1 / max(1 - m.wait_share, 1e-3)  # the step without its wait
        over = ", the data streamed: it exceeds device_memory_budget" if m.streamed and m.loader == "device" else ""
        head = f"input-bound: {m.wait_share:.0%} of each step waits for data ({m.loader} loader{over})"
        if m.loader == "dataloader":
            return Finding("input-bound", f"{head}: set loader device (about {gain:.1f}x: windows gathered on the "
                                          f"device, no per-window Python)", {"loader": "device"}, gain)
        if m.loader == "stream":  # always streams, whatever the budget
            return Finding("input-bound", f"{head}: set loader device, which keeps the data resident where it fits "
                                          f"device_memory_budget (up to about {gain:.1f}x)", {"loader": "device"}, gain)
        if m.streamed:
            return Finding("input-bound", f"{head}: raise device_memory_budget so the data stays resident (up to "
                                          f"about {gain:.1f}x)", {"device_memory_budget": 1.0}, gain)
        return Finding("input-bound", f"{head}: the batch source itself is slow; a larger batch_size gathers "
                                      f"fewer, larger batches (up to about {gain:.1f}x)",
                       {"batch_size": 2 * m.batch_size}, gain)
    if m.host_s is not None and m.device_s and m.host_s > LAUNCH_BOUND * m.device_s:
        head = f"launch-bound: {ms(m.host_s)} on the host per {ms(m.device_s)} on the GPU"
        if not m.graphs and m.graphs_refused is None:
            gain = m.host_s / m.device_s
            return Finding("launch-bound", f"{head}: set cuda_graphs true (about {gain:.1f}x)",
                           {"cuda_graphs": "true"}, gain)
        # the host's work is per step, the GPU's per sample: a double batch costs the host the same
        gain = 2 * m.host_s / max(m.host_s, 2 * m.device_s)
        why = "with the step graph already" if m.graphs else f"the step graph is off here ({m.graphs_refused})"
        return Finding("launch-bound", f"{head}, {why}: set batch_size {2 * m.batch_size} (about {gain:.1f}x, "
                                       f"where memory allows)", {"batch_size": 2 * m.batch_size}, gain)
    if m.mfu is not None and m.mfu_ceiling and m.mfu >= COMPUTE_BOUND * m.mfu_ceiling:
        head = (f"compute-bound: MFU {m.mfu:.1%}, where the model's largest matmul {m.largest_matmul} alone reaches "
                f"{m.mfu_ceiling:.1%} here")
        if m.mfu_ceiling < SMALL_MATMULS:
            return Finding("compute-bound", f"{head}: the model's matmuls are too small for this device; a larger "
                                            f"batch_size (matmuls of more rows) or hidden uses it better",
                           {"batch_size": 2 * m.batch_size})
        if m.device == "cuda" and m.precision == "fp32":
            return Finding("compute-bound", f"{head}: set precision auto (bf16 tensor cores: about 2x)",
                           {"precision": "auto"}, 2.0)
        return Finding("compute-bound", f"{head}: the step is the model's own arithmetic; nothing in the pipeline "
                                        f"to fix (a wider model uses the chip better per FLOP)")
    figures = [f"data wait {m.wait_share:.0%}"]
    if m.host_s is not None and m.device_s:
        figures.append(f"{ms(m.host_s)} on the host per {ms(m.device_s)} on the GPU")
    figures.append(f"MFU {m.mfu:.1%} of the {m.mfu_ceiling:.1%} its largest matmul reaches" if m.mfu is not None
                   and m.mfu_ceiling else f"MFU n/a ({m.mfu_note})")
    return Finding("between bounds", f"between bounds ({', '.join(figures)}): the kernels are small or limited by "
                                     f"memory bandwidth (elementwise work, one recurrent step at a time); a larger "
                                     f"batch_size or a model of larger matmuls (transformer) uses the device better")


def memory(m: Measured, first: Finding) -> Finding:
    """How full the device's memory is, and what that allows."""
    if not m.mem_peak_bytes or not m.mem_total_bytes:
        return Finding("memory", "memory: n/a (no peak or total memory measured)")
    share = m.mem_peak_bytes / m.mem_total_bytes
    used = f"{share:.0%} of {gb(m.mem_total_bytes)} at batch {m.batch_size}"
    if share >= MEMORY_FULL:
        half, k = max(1, m.batch_size // 2), 2 * m.grad_accum_steps
        return Finding("memory-full", f"memory-full: {used}: for headroom set batch_size {half} and "
                                      f"grad_accum_steps {k} (the same global batch)",
                       {"batch_size": half, "grad_accum_steps": k})
    if share < MEMORY_ROOM:
        helps = first.kind in ("launch-bound", "between bounds")
        return Finding("memory headroom", f"memory headroom: {used}" + (
            ": a larger batch_size fits (02_profiling's largest-batch search finds the limit)" if helps else
            f": no speed to gain from a larger batch while {first.kind}"))
    return Finding("memory", f"memory: {used}")


def verdict(m: Measured) -> list[Finding]:
    """What limits the step and the change that would help, then the memory: a pure function of the figures."""
    first = bound(m)
    return [first, memory(m, first)]


# -- measuring ---------------------------------------------------------------------------------------------
def largest_matmul(model: nn.Module, x: torch.Tensor) -> tuple[int, int, int] | None:
    """(m, k, n) of the model's largest matmul on this batch, from one forward with hooks: linear layers,
    convolutions (as their im2col matmul) and recurrent layers (one step's gates)."""
    shapes: list[tuple[int, int, int]] = []

    def hook(module: nn.Module, args, _out) -> None:
        inp = args[0]
        if isinstance(module, nn.Linear):
            shapes.append((inp.numel() // module.in_features, module.in_features, module.out_features))
        elif isinstance(module, nn.Conv1d):
            shapes.append((inp.shape[0] * inp.shape[-1], module.in_channels * module.kernel_size[0],
                           module.out_channels))
        elif isinstance(module, (nn.LSTM, nn.GRU)):
            gates = 4 if isinstance(module, nn.LSTM) else 3
            shapes.append((inp.shape[0], module.hidden_size, gates * module.hidden_size))

    handles = [mod.register_forward_hook(hook) for mod in model.modules()
               if isinstance(mod, (nn.Linear, nn.Conv1d, nn.LSTM, nn.GRU))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return max(shapes, key=lambda s: s[0] * s[1] * s[2]) if shapes else None


def step_input(tr) -> tuple[nn.Module, torch.Tensor]:
    """(the module a training step runs, a micro-batch of its input): the model on a batch of windows, or with dense
    its forward_dense on a batch of chunks (whose matmuls are batch x chunk rows, not batch x window)."""
    if not tr.cfg.dense:
        ends = tr.windows.ends(0)[: tr.cfg.batch_size]
        return tr.model, next(tr.windows.batches(ends, len(ends)))[0]
    from tradelib.train.trainer import DenseForward

    source = getattr(tr.source, "inner", tr.source)  # (not the timed wrapper: the measurement is over)
    ids = torch.arange(min(tr.cfg.batch_size, len(source)), device=source.ids_device)
    return DenseForward(tr.model), source.fetch(ids).x


def matmul_ceiling(device: torch.device, shape: tuple[int, int, int], dtype: torch.dtype, peak: MfuPeak) -> float:
    """The MFU the model's largest matmul [m, k] @ [k, n] reaches alone: its sustained rate over the peak. Where
    the peak was itself measured (a CPU), over a square matmul's rate measured in turns with it (the median turn's
    ratio), so that other load on the machine cancels; at most 1."""
    m, k, n = shape
    if not peak.measured:
        return min(1.0, measured_matmul_flops(device, dtype, n, 0.3, m=m, k=k) / peak.flops)
    ratios = [measured_matmul_flops(device, dtype, n, 0.1, m=m, k=k) / measured_matmul_flops(device, dtype, 1024, 0.1)
              for _ in range(3)]
    return min(1.0, statistics.median(ratios))


def timed_steps(runner: Runner, seconds: float) -> dict:
    """Steps of the real training step for about `seconds` of wall time, in stretches that grow while they fit:
    totals of time, wait, samples, items (windows or dense chunks) and steps."""
    tot = {"seconds": 0.0, "wait_s": 0.0, "samples": 0, "items": 0, "steps": 0}
    end, n = time.perf_counter() + seconds, 1
    while True:
        res = runner.run(0, n)
        for k in ("seconds", "wait_s", "samples", "items"):
            tot[k] += res[k]
        tot["steps"] += n
        left = end - time.perf_counter()
        if left <= 0:
            return tot
        n = max(1, min(2 * n, int(left / (res["seconds"] / n))))


def host_and_device(runner: Runner, n: int = 5) -> tuple[float, float]:
    """CUDA: (host seconds to issue one step, GPU kernel seconds per step). Issued with the device idle and the
    source unsynchronised, a step's host time is its launches (and the host's own work); the kernels' time is
    torch.profiler's device-side events over n more steps."""
    tr, device = runner.trainer, runner.device
    ids = runner.take(2 * n)
    runner.source.begin(torch.cat(ids))  # (the seed-style DataLoader serves the announced order)
    timed, tr.source = tr.source, runner.source.inner
    hosts = []
    try:
        for group in ids[:n]:
            sync(device)
            t0 = time.perf_counter()
            tr.step(group)
            hosts.append(time.perf_counter() - t0)
            sync(device)
        with quiet_profiler(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for group in ids[n:]:
                tr.step(group)
            sync(device)
    finally:
        tr.source = timed
    return statistics.median(hosts), device_seconds(prof.events()) / n


def device_seconds(events) -> float:
    """Seconds of the device-side events of a torch.profiler trace (kernels, copies, graph replays' kernels), each
    once (`device_events`)."""
    return sum(e.time_range.elapsed_us() for e in device_events(events)) / 1e6


def examine(cfg: Config, seconds: float | None = None, runner: Runner | None = None, verbose: bool = True
            ) -> Measured:
    """Measure `cfg` (its model, loader, batch and step) on its device for about `seconds` (cfg.doctor_seconds).
    A `runner` may be given (a test's, with a source made slow on purpose)."""
    seconds = cfg.doctor_seconds if seconds is None else seconds
    own = runner is None
    runner = runner or _runner(cfg)
    try:
        with torch_flags(cfg.deterministic):
            tr, device = runner.trainer, runner.device
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            runner.run(max(cfg.warmup, 1), 1)  # compilation, the step graph's recording, workers, allocations
            tot = timed_steps(runner, seconds)
            host_s = device_s = None
            if device.type == "cuda":
                host_s, device_s = host_and_device(runner)
            sps = tot["samples"] / tot["seconds"]
            flops = tr.flops_per_item()
            peak = mfu_peak(device, cfg.peak_tflops, cfg.max_other_load)
            checked = mfu_fields(mfu(tot["items"] / tot["seconds"], flops, peak.flops), peak.untrusted)
            value = checked["mfu"]
            note = checked.get("mfu_invalid_reason") or ("" if value is not None else peak.source if not peak.flops
                                                          else f"{tr.cfg.model} gives no flops_per_sample")
            precision = tr.precision  # fp32, bf16 or fp16, as the trainer resolved it
            shape = largest_matmul(*step_input(tr))
            ceiling, largest = None, ""
            if shape and peak.flops:
                ceiling = matmul_ceiling(device, shape, AUTOCAST_DTYPES.get(precision, torch.float32), peak)
                largest = f"[{shape[0]} x {shape[1]}] @ [{shape[1]} x {shape[2]}]"
            why_not = None if tr.graphs else graphs_reason(tr)
            measured = Measured(
                device=device.type, device_name=device_name(device), model=tr.cfg.model, loader=tr.cfg.loader,
                batch_size=tr.cfg.batch_size, grad_accum_steps=tr.cfg.grad_accum_steps, graphs=bool(tr.graphs),
                graphs_refused=why_not, precision=precision, samples_per_s=sps,
                step_s=tot["seconds"] / tot["steps"], wait_share=tot["wait_s"] / tot["seconds"], host_s=host_s,
                device_s=device_s, mfu=value, mfu_ceiling=ceiling, mfu_note=note, largest_matmul=largest,
                mem_peak_bytes=peak_memory_bytes(device), mem_total_bytes=device_memory(device),
                streamed=bool(getattr(getattr(runner.source.inner, "plan", None), "streamed", False)))
    finally:
        if own:
            runner.close()
    if verbose:
        streamed = " (data streamed)" if measured.streamed else ""
        print(f"doctor: {measured.model} on {measured.device_name}, batch {measured.batch_size} x "
              f"{measured.grad_accum_steps}, {measured.loader} loader{streamed}, step graph "
              f"{'on' if measured.graphs else 'off'}, {precision}: {measured.samples_per_s:,.0f} samples/s over "
              f"{tot['steps']} steps ({tot['seconds']:.1f} s)")
    return measured


def graphs_reason(tr) -> str | None:
    """Why the step graph is not used here, None where it could be: where the run turned it off
    (cuda_graphs false), the trainer's rule says whether it would be allowed; otherwise the trainer said why (it was
    refused, or its recording failed)."""
    from tradelib.train.trainer import graphs_refused

    if tr.cfg.cuda_graphs == "false":
        return graphs_refused(tr.device, tr.world, tr.fused, tr.model, tr.compiled)
    return tr.graphs_reason


def diagnose(cfg: Config, seconds: float | None = None, verbose: bool = True) -> tuple[Measured, list[Finding]]:
    """`tradelib doctor`: measure, then print the verdict. Returns both."""
    measured = examine(cfg, seconds, verbose=verbose)
    findings = verdict(measured)
    if verbose:
        for f in findings:
            print(f.text)
    return measured, findings


def doctor_command(args) -> int:
    cfg = load_config(args.files, [tuple(p) for p in args.params])
    measured, findings = diagnose(cfg)
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": asdict(measured),
                                               "findings": [asdict(f) for f in findings]}, indent=1, default=str))
    return 0
