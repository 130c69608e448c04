"""The CUDA trainer's promises, checked where they matter: on the device. `tools/gpu_check.sh` runs this module.

Every test takes a `device`: "cpu" always runs, so that the tests' own logic runs in every CI run and cannot rot
while no GPU is at hand; "cuda" runs where CUDA is available and is skipped elsewhere. The marks `on_cpu` and
`on_cuda` select a side (the GPU check runs `-m on_cuda`). What is checked:

- device windows and dense chunks equal naive numpy slices; the seed-style DataLoader (pinned memory and
  non-blocking copies on CUDA) yields the same batches;
- the accumulated gradient equals the one-big-batch gradient: fp32 (TF32 off) to rounding, bf16 autocast within
  a stated tolerance, both against an independent float64 computation;
- a non-finite step is skipped on the device with no host sync: `torch.cuda.set_sync_debug_mode("error")` on
  CUDA, and on both devices a dispatch mode that refuses every op that reads a tensor's value into Python;
- `compile=on` (torch.compile) and `compile=reduce-overhead` (CUDA graphs) give eager's losses;
- resume after SIGKILL is bit-exact with deterministic=True.

No hypothesis here: the GPU machine may not have it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tradelib.config import Config
from tradelib.train import stream
from tradelib.train.models import MODELS, model_for
from tradelib.train.sources import DataLoaderSource, DenseSource, Windows, WindowSource, dense_chunks, resident_sources
from tradelib.train.trainer import StepGraph, Trainer, cudnn_dropout_rnns, graphs_refused, seed_everything

ROOT = Path(__file__).resolve().parents[1]
W, CHUNK = 16, 40  # conftest's TINY window; dense chunk rows
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.on_cpu),
    pytest.param("cuda", marks=[pytest.mark.on_cuda,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]),
]
BASE = dict(synth_symbols=3, synth_bars=1500, window=W, hidden=8, layers=1, batch_size=8, epochs=1,
            compile="off", precision="fp32", dropout=0.0, seed=0, cuda_graphs="false")  # eager unless a test asks


def make_trainer(fs, device: str, **changes) -> Trainer:
    """A Trainer on `device` for this FeatureSet: what TrainingRun builds, without a run folder."""
    cfg = Config(**{**BASE, "device": device, **changes})
    dev = torch.device(device)
    seed_everything(cfg.seed)
    model = model_for(cfg, fs.n_features).to(dev)
    windows, source = resident_sources(fs, model, cfg, dev)
    return Trainer(cfg, model, windows, source, dev, verbose=False)


def snapshot(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise(a: dict, b: dict) -> None:
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and not unequal, f"tensors differ: {unequal}"


@contextlib.contextmanager
def exact_fp32():
    """fp32 matmuls and convolutions in full fp32 (no TF32), put back afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def holey_fs(tiny_fs):
    """tiny_fs with 30% of the targets unknown: micro-batches of dense chunks then differ in valid targets."""
    fs = dataclasses.replace(tiny_fs, y=tiny_fs.y.copy(), meta=dict(tiny_fs.meta))
    fs.y[np.random.default_rng(0).random(len(fs.y)) < 0.3] = np.nan
    return fs


# ---------------------------------------------------------------------------------------------------------
# device windows


@pytest.mark.parametrize("device", DEVICES)
def test_device_windows_chunks_and_the_dataloader_equal_naive_slices(tiny_fs, device):
    fs, dev = tiny_fs, torch.device(device)
    scale = float(fs.meta.get("target_scale", 1.0))
    y_scaled = np.nan_to_num(fs.y / scale, nan=0.0).astype(np.float32)
    windows = Windows(fs, W, dev)
    assert windows.X.device.type == dev.type
    gen = torch.Generator().manual_seed(0)
    for split in (0, 1, 2):
        ends = windows.ends(split)
        pick = ends[torch.randint(0, len(ends), (512,), generator=gen).to(dev)]
        x, y = windows.gather(pick)
        rows = pick.cpu().numpy()
        assert torch.equal(x.cpu(), torch.from_numpy(np.stack([fs.X[e - W + 1 : e + 1] for e in rows])))
        assert torch.equal(y.cpu(), torch.from_numpy(y_scaled[rows]))

    rf = model_for(Config(model="tcn", window=W, hidden=8, layers=2), fs.n_features).receptive_field
    dense = DenseSource(windows, CHUNK, rf)
    ids = torch.arange(len(dense), device=dev)
    x, y, mask = dense.fetch(ids)
    starts, first = dense_chunks(fs, 0, CHUNK, rf)
    rows = starts[:, None] + np.arange(CHUNK)
    want_mask = (rows >= first[:, None]) & np.isfinite(fs.y[rows])
    assert torch.equal(x.cpu(), torch.from_numpy(fs.X[rows]))
    assert torch.equal(y.cpu(), torch.from_numpy(y_scaled[rows]))
    assert torch.equal(mask.cpu(), torch.from_numpy(want_mask))
    assert float(dense.count(ids)) == want_mask.sum()

    # the seed-style pipeline: worker processes, pinned host batches, non-blocking copies to the device
    loader = DataLoaderSource(fs, W, dev, 64, num_workers=2, pin_memory=True, prefetch_factor=2,
                              persistent_workers=True)
    per_window = WindowSource(windows)
    try:
        order = loader.epoch(0, seed=3)
        loader.begin(order)
        for part in order.split(64):
            xl, yl, _ = loader.fetch(part)
            xd, yd, _ = per_window.fetch(part.to(dev))
            assert xl.device.type == dev.type and torch.equal(xl, xd) and torch.equal(yl, yd)
    finally:
        loader.close()


# ---------------------------------------------------------------------------------------------------------
# exact accumulation

# fp32 with TF32 off: the accumulated and the one-big-batch gradients differ only in the order of the sums
# over windows and micro-batches. fp32's unit roundoff is 6e-8; through these few layers and <= 40 windows
# the relative error stays near 1e-6, so 1e-5 is a tight bound (the pitfall below is off by > 1e-2).
FP32_TOL = 1e-5
# bf16 autocast: every matmul output is rounded to 8 mantissa bits (unit roundoff 2^-9 = 2e-3), each
# micro-batch's weight gradient is rounded before it is summed in fp32, and on CUDA the LSTM keeps its state in
# bf16 through the 16 steps of a window. The two gradients then differ by a few bf16 roundings, compounded by
# the recurrence: 5e-2 relative (L2 over all parameters) bounds it; the CPU measured 2e-3 to 6e-3. A wrongly
# weighted sum (the pitfall) is off by 0.3 to 0.5, still more than 5x the bound.
BF16_TOL = 5e-2
CASES = {  # micro-batches of 8, 8 and 1 windows (the pitfall weighs the one window 17/3 times too much),
    # or of 2, 2 and 1 dense chunks
    "mlp": dict(model="mlp", batch_size=8, n=17),
    "lstm": dict(model="lstm", batch_size=8, n=17),
    "tcn-dense": dict(model="tcn", layers=2, dense=True, dense_chunk=CHUNK, batch_size=2, n=5),
}


def flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().double().flatten().cpu() for p in model.parameters()])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def reference_grads(trainer: Trainer, ids: torch.Tensor, per_micro: bool = False) -> torch.Tensor:
    """The mean squared error's gradient computed independently, in float64 on a copy of the model. With
    `per_micro`, the pitfall instead: each micro-batch's own mean, divided by the number of micro-batches."""
    model = copy.deepcopy(trainer.model).double()
    parts = ids.split(trainer.cfg.batch_size) if per_micro else [ids]
    for part in parts:
        x, y, mask = trainer.source.fetch(part)
        pred = model.forward_dense(x.double()) if mask is not None else model(x.double())
        err = (pred - y.double()) ** 2
        (err[mask].mean() if mask is not None else err.mean()).div(len(parts)).backward()
    return flat_grads(model)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_accumulated_gradients_equal_the_one_big_batch_gradient(holey_fs, device, precision, case):
    spec = dict(CASES[case])
    n = spec.pop("n")
    with exact_fp32():
        small = make_trainer(holey_fs, device, precision=precision, grad_accum_steps=3, **spec)
        big = make_trainer(holey_fs, device, precision=precision, **{**spec, "batch_size": n})
        assert_bitwise(snapshot(small.model), snapshot(big.model))
        ids = small.source.epoch(0, seed=3)[:n]
        if spec.get("dense"):  # micro-batches with different numbers of valid targets
            assert len({float(small.source.count(p)) for p in ids.split(spec["batch_size"])}) > 1
        small.accumulate(ids)
        big.accumulate(ids)
        acc, one, truth = flat_grads(small.model), flat_grads(big.model), reference_grads(small, ids)
        pitfall = reference_grads(small, ids, per_micro=True)
    tol = FP32_TOL if precision == "fp32" else BF16_TOL
    errs = {"acc/one": rel_err(acc, one), "acc/f64": rel_err(acc, truth), "one/f64": rel_err(one, truth),
            "pitfall/f64": rel_err(pitfall, truth)}
    assert max(errs["acc/one"], errs["acc/f64"], errs["one/f64"]) <= tol, errs
    assert errs["pitfall/f64"] > 5 * tol, errs  # the test can tell a wrongly weighted sum


# ---------------------------------------------------------------------------------------------------------
# the on-device skip, with no host sync


class HostSync(RuntimeError):
    pass


class RefuseHostReads(TorchDispatchMode):
    """Raises on any op that hands a tensor's value to Python (`.item()`, `bool()`, `float()`, `nonzero`,
    masked selection, `torch.equal`): the host syncs a training step may not make, on any device. On CUDA,
    `torch.cuda.set_sync_debug_mode("error")` also catches the syncs made inside C++ (a blocking copy)."""

    READS = {torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero, torch.ops.aten.masked_select,
             torch.ops.aten.equal, torch.ops.aten._unique2, torch.ops.aten.unique_consecutive}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in self.READS:
            raise HostSync(f"host sync: {func} reads a tensor's value on the host")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_sync(device: torch.device):
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
    try:
        with RefuseHostReads():
            yield
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")


def adam_state(trainer: Trainer) -> list[torch.Tensor]:
    return [t.clone() for s in trainer.opt.state.values() for t in (s["step"], s["exp_avg"], s["exp_avg_sq"])]


def a_row_read_by(source, item: torch.Tensor) -> int:
    """A feature row that this item's batch reads: a window's last row, or a chunk's."""
    if isinstance(source, DenseSource):
        return int(source.chunk_starts[item]) + source.length - 1
    return int(source.ends[item])


SKIP_CASES = {  # the default precision (bf16 autocast on CUDA), two micro-batches per step, eager
    "mlp": dict(model="mlp", batch_size=16),
    "lstm": dict(model="lstm", batch_size=16),
    "tcn-dense": dict(model="tcn", layers=2, dense=True, dense_chunk=CHUNK, batch_size=2),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(SKIP_CASES))
def test_a_non_finite_step_is_skipped_on_the_device_without_a_host_sync(tiny_fs, device, case):
    dev = torch.device(device)
    with pytest.raises(HostSync), no_host_sync(dev):  # the detector detects
        bool(torch.ones((), device=dev))
    if dev.type == "cuda":
        with pytest.raises(RuntimeError, match="synchroniz"), no_host_sync(dev):
            torch.ones(3, device=dev).cpu()
    tr = make_trainer(tiny_fs, device, precision="auto", grad_accum_steps=2, **SKIP_CASES[case])
    assert tr.fused, "fused AdamW is what skips on the device"
    groups = tr.source.epoch(0, seed=0).split(tr.global_batch)
    tr.step(groups[0])  # warm-up: optimizer state, lazy CUDA initialisation
    weights, state, lr_steps = snapshot(tr.model), adam_state(tr), tr.sched.last_epoch
    row = a_row_read_by(tr.source, groups[1][-1])
    clean_row = tr.windows.X[row].clone()
    tr.windows.X[row, 0] = float("nan")

    with no_host_sync(dev):
        bad = tr.step(groups[1])
    assert bool(bad.skipped) and not torch.isfinite(bad.norm)
    assert_bitwise(snapshot(tr.model), weights)
    assert all(torch.equal(a, b) for a, b in zip(adam_state(tr), state))  # moments and Adam's step count
    assert tr.sched.last_epoch == lr_steps + 1  # the schedule follows the optimizer-step counter

    tr.windows.X[row] = clean_row
    with no_host_sync(dev):
        good = tr.step(groups[2])
    assert not bool(good.skipped) and torch.isfinite(good.norm)
    changed = snapshot(tr.model)
    assert not any(torch.equal(changed[k], weights[k]) for k in weights if k.endswith("weight"))
    assert {float(s["step"]) for s in tr.opt.state.values()} == {2.0}


# ---------------------------------------------------------------------------------------------------------
# torch.compile and CUDA graphs against eager

# fp32 with TF32 off: compiled kernels fuse ops and reorder reductions (relative error ~1e-7 per op); over five
# AdamW steps the losses and gradient norms stay within 1e-4. bf16: both round to bf16, at different places.
COMPILE_TOL = {"fp32": 1e-4, "bf16": 3e-2}
COMPILE_CASES = [  # (compile, precision, grad_accum_steps)
    pytest.param("on", "fp32", 1, id="on-fp32"),
    pytest.param("reduce-overhead", "fp32", 1, id="graphs-fp32"),
    pytest.param("reduce-overhead", "bf16", 1, id="graphs-bf16"),
    pytest.param("reduce-overhead", "fp32", 2, id="graphs-fp32-accum"),
]


def losses_and_norms(tr: Trainer, groups) -> list[tuple[float, float]]:
    out = []
    for g in groups:
        s = tr.step(g)
        out.append((float(s.sse / s.n_valid), float(s.norm)))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,precision,accum", COMPILE_CASES)
def test_compiled_and_cuda_graph_paths_give_the_eager_loss(tiny_fs, monkeypatch, device, mode, precision, accum):
    """Five training steps and the validation loss (the compiled forward over several evaluation batches, whose
    outputs CUDA graphs overwrite at the next replay) equal eager's. With gradient accumulation the trainer
    compiles without CUDA graphs (which would overwrite the gradient accumulated so far), and says so."""
    if device == "cpu":
        if (mode, precision, accum) != ("on", "fp32", 1):
            pytest.skip("CUDA graphs and bf16 autocast are the GPU's: the CPU side runs the on-fp32 case")
        # inductor's C++ code generation takes ~30 s on a 2-core CPU: here dynamo's and AOT autograd's graphs
        # run as traced (backend aot_eager), which checks the trainer's compiled path and this test's logic;
        # inductor's kernels and CUDA graphs are checked on the CUDA side
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    spec = dict(model="mlp", precision=precision, batch_size=32, grad_accum_steps=accum, eval_batch_size=128,
                layers=2, hidden=16)
    with exact_fp32():
        eager = make_trainer(tiny_fs, device, compile="off", **spec)
        compiled = make_trainer(tiny_fs, device, compile=mode, **spec)
        graphs_with_accumulation = mode == "reduce-overhead" and accum > 1 and device == "cuda"
        assert compiled.compiled == ("on" if graphs_with_accumulation else mode), compiled.compiled
        assert_bitwise(snapshot(compiled.model), snapshot(eager.model))
        groups = eager.source.epoch(0, seed=1).split(eager.global_batch)[:5]
        want, got = losses_and_norms(eager, groups), losses_and_norms(compiled, groups)
        val = eager.loss(1), compiled.loss(1)  # evaluation: the compiled forward over several eval batches
    tol = COMPILE_TOL[precision]
    rel = max(abs(a - b) / abs(a) for w, g in zip(want, got) for a, b in zip(w, g))
    assert rel <= tol, (want, got)
    assert abs(val[0] - val[1]) <= tol * abs(val[0]), val


# ---------------------------------------------------------------------------------------------------------
# the step graph (cuda_graphs): the whole optimizer step recorded once and replayed

GRAPH_CASES = {  # eager forward (compile off) without dropout: the graph replays eager's very kernels
    "lstm-fp32": dict(model="lstm", precision="fp32", batch_size=32),
    "lstm-bf16": dict(model="lstm", precision="bf16", batch_size=32),
    "tcn-dense": dict(model="tcn", layers=2, dense=True, dense_chunk=CHUNK, batch_size=4),
}
GRAPH_TOL = {"fp32": 1e-5, "bf16": 1e-3}  # CUDA; the CPU side runs the same operations: bit for bit


def graph_run(tr: Trainer, groups, bad_step: int) -> list[tuple[float, float, bool]]:
    """(loss, gradient norm, skipped) of each step; a NaN feature in the batch of step `bad_step`. Every step
    after the first (the one that records) is checked for host syncs."""
    out = []
    for i, g in enumerate(groups):
        row = a_row_read_by(tr.source, g[-1])
        clean = tr.windows.X[row].clone()
        if i == bad_step:
            tr.windows.X[row, 0] = float("nan")
        with no_host_sync(tr.device) if i > 0 else contextlib.nullcontext():
            s = tr.step(g)
        tr.windows.X[row] = clean
        out.append((float(s.sse / s.n_valid), float(s.norm), bool(s.skipped)))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_the_step_graph_gives_the_eager_steps(tiny_fs, device, case):
    """Full batches replayed, a last partial batch stepped eagerly, the learning rate changing at every step, a
    non-finite step skipped inside the graph, and a state loaded mid-run (the graph is recorded again): losses,
    norms, skips, weights and AdamW's moments equal eager's, and replays make no host sync. On the CPU nothing
    can be recorded (CUDA graphs are CUDA's): the same fixed-buffer steps run eagerly, which checks that the
    recording's warm-up steps are undone exactly, that the learning rates reach the step, and the fallback."""
    spec = GRAPH_CASES[case]
    precision = spec.get("precision", "fp32")
    if device == "cpu" and precision == "bf16":
        pytest.skip("bf16 autocast is the GPU's: the CPU side runs the fp32 cases")
    spec = {**spec, "precision": precision, "warmup_steps": 3}
    with exact_fp32():
        eager = make_trainer(tiny_fs, device, **spec)
        graphed = make_trainer(tiny_fs, device, cuda_graphs="true" if device == "cuda" else "false", **spec)
        if device == "cpu":
            graphed.graphs = True  # refused on the CPU (no CUDA): the fixed-buffer steps without the recording
        order = eager.source.epoch(0, seed=1)
        size = eager.global_batch
        groups = list(order[: 5 * size + size // 2].split(size))  # five full batches, then a partial one
        want, got = graph_run(eager, groups, bad_step=2), graph_run(graphed, groups, bad_step=2)
        assert graphed.graph is not None and graphed.graph_steps == 5, graphed.graph_steps
        assert [w[2] for w in want] == [g[2] for g in got] == [False, False, True, False, False, False]
        graphed.load_state_dict(copy.deepcopy(eager.state_dict()))  # resume-like: new optimizer state tensors
        assert graphed.graph is None
        more = list(order[6 * size : 8 * size].split(size))
        want += graph_run(eager, more, bad_step=-1)
        got += graph_run(graphed, more, bad_step=-1)
        assert graphed.graph_steps == 7
    nan_equal = lambda a, b, tol=0.0: a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tol)
    if device == "cpu":
        for i, (w, g) in enumerate(zip(want, got)):
            assert w[2] == g[2] and nan_equal(w[0], g[0]) and nan_equal(w[1], g[1]), (i, w, g)
        assert_bitwise(snapshot(graphed.model), snapshot(eager.model))
        assert all(torch.equal(a, b) for a, b in zip(adam_state(graphed), adam_state(eager)))
        return
    tol = GRAPH_TOL[precision]
    for w, g in zip(want, got):
        assert w[2] == g[2] and all(nan_equal(a, b, tol) for a, b in zip(w[:2], g[:2])), (want, got)
    for k, v in snapshot(eager.model).items():
        torch.testing.assert_close(snapshot(graphed.model)[k], v, rtol=tol * 10, atol=tol * 1e-2)


ACCUM_CASES = {  # (spec, micro-batch, K): the seed report's 512 x 2, and dense chunks with masked targets
    "lstm": (dict(model="lstm"), 512, 2),
    "tcn-dense": (dict(model="tcn", layers=2, dense=True, dense_chunk=CHUNK), 8, 2),
}


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [pytest.param("lstm", marks=pytest.mark.slow), "tcn-dense"])  # lstm: ~10 s on a CPU
def test_the_step_graph_with_accumulation_gives_the_eager_accumulating_steps(holey_fs, device, case):
    """K micro-batches an optimizer step through the step graph (on the CPU its fixed-buffer steps): four full
    steps replayed (a non-finite one among them, skipped in the graph), then an epoch's partial step taken
    eagerly. Against eager K x B: the same losses, norms, skips, weights and AdamW state (CPU: bit for bit).
    Against eager one batch of K x B: the losses and gradient norms within the accumulation test's tolerance
    (the micro-batches hold different numbers of valid targets, so a wrongly weighted sum would show)."""
    spec, b, k = ACCUM_CASES[case]
    spec = {**spec, "warmup_steps": 3}
    cuda = device == "cuda"
    with exact_fp32():
        eager = make_trainer(holey_fs, device, batch_size=b, grad_accum_steps=k, **spec)
        graphed = make_trainer(holey_fs, device, batch_size=b, grad_accum_steps=k,
                               cuda_graphs="true" if cuda else "false", **spec)
        graphed.graphs = True  # (refused on the CPU: the fixed-buffer steps without the recording)
        one = make_trainer(holey_fs, device, batch_size=b * k, **spec)
        order = torch.cat([eager.source.epoch(e, seed=1) for e in range(3)])
        size = eager.global_batch
        groups = list(order[: 4 * size + size // 3].split(size))
        if spec.get("dense"):
            counts = {float(eager.source.count(p)) for g in groups[:4] for p in g.split(b)}
            assert len(counts) > 1, counts  # micro-batches with different numbers of valid targets
        want, got, big = (graph_run(tr, groups, bad_step=2) for tr in (eager, graphed, one))
        assert graphed.graph is not None and graphed.graph_steps == 4 and len(graphed.graph.batches) == k
    assert [w[2] for w in want] == [g[2] for g in got] == [x[2] for x in big] == [False, False, True, False, False]
    nan_equal = lambda a, b, tol=0.0: a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tol)
    for i, (w, g) in enumerate(zip(want, got)):
        assert all(nan_equal(a, b, GRAPH_TOL["fp32"] if cuda else 0.0) for a, b in zip(w[:2], g[:2])), (i, w, g)
    if not cuda:
        assert_bitwise(snapshot(graphed.model), snapshot(eager.model))
        assert all(torch.equal(a, b) for a, b in zip(adam_state(graphed), adam_state(eager)))
    else:
        for key, v in snapshot(eager.model).items():
            torch.testing.assert_close(snapshot(graphed.model)[key], v, rtol=1e-4, atol=1e-7)
    for w, x in zip(got, big):
        if not w[2]:
            assert rel_diff(w[0], x[0]) <= FP32_TOL and rel_diff(w[1], x[1]) <= FP32_TOL, (got, big)


FP16 = dict(model="mlp", layers=2, hidden=16, batch_size=16, grad_accum_steps=2, precision="fp16")


def scaler_state(tr: Trainer) -> tuple[float, int]:
    state = tr.scaler.state_dict()
    return state["scale"], state["_growth_tracker"]


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_scales_the_loss_and_an_overflow_joins_the_on_device_skip(tiny_fs, device):
    """fp16 autocast with a GradScaler (torch.amp's, on the CPU too): the gradients are unscaled before clipping
    (a clean step's norm is fp32's within fp16 rounding, not 2^16 times it); a factor so large that the fp16
    backward overflows gives inf gradients, and that step is skipped on the device like a non-finite loss
    (weights and AdamW state untouched, with no host sync) while the scaler halves its factor; the next step
    trains. The scaler's state is part of the trainer's state dict."""
    dev = torch.device(device)
    tr, ref = make_trainer(tiny_fs, device, **FP16), make_trainer(tiny_fs, device, **{**FP16, "precision": "fp32"})
    assert tr.precision == "fp16" and tr.scaler is not None and ref.scaler is None and tr.fused
    groups = tr.source.epoch(0, seed=0).split(tr.global_batch)
    clean, want = tr.step(groups[0]), ref.step(groups[0])
    assert not bool(clean.skipped) and rel_diff(float(clean.norm), float(want.norm)) < 3e-2, (clean.norm, want.norm)
    assert scaler_state(tr) == (2.0**16, 1)  # grows only after growth_interval (2000) clean steps

    tr.scaler.load_state_dict({**tr.scaler.state_dict(), "scale": 2.0**40})  # the fp16 backward overflows
    weights, state = snapshot(tr.model), adam_state(tr)
    with no_host_sync(dev):
        over = tr.step(groups[1])
    assert bool(over.skipped) and torch.isfinite(over.sse) and not torch.isfinite(over.norm)
    assert_bitwise(snapshot(tr.model), weights)
    assert all(torch.equal(a, b) for a, b in zip(adam_state(tr), state))
    assert scaler_state(tr) == (2.0**39, 0)  # backed off, on the device

    tr.scaler.load_state_dict({**tr.scaler.state_dict(), "scale": 2.0**16})
    with no_host_sync(dev):
        good = tr.step(groups[2])
    assert not bool(good.skipped) and scaler_state(tr) == (2.0**16, 1)
    assert not any(torch.equal(snapshot(tr.model)[k], weights[k]) for k in weights if k.endswith("weight"))
    assert tr.state_dict()["scaler"]["scale"] == 2.0**16 and "scaler" not in ref.state_dict()


@pytest.mark.parametrize("device", DEVICES)
def test_the_step_graph_with_fp16_gives_the_eager_steps_and_scaler_state(tiny_fs, device):
    """fp16 through the step graph (CPU: its fixed-buffer steps): the warm-up's scaler updates are undone, and
    the replays scale, unscale, skip and update the factor as eager steps do (an overflowing step among them)."""
    cuda = device == "cuda"
    eager = make_trainer(tiny_fs, device, **FP16)
    graphed = make_trainer(tiny_fs, device, **{**FP16, "cuda_graphs": "true" if cuda else "false"})
    graphed.graphs = True
    size = eager.global_batch
    groups = list(eager.source.epoch(0, seed=1)[: 5 * size].split(size))
    out = {}
    calm = 2.0**10  # a scale at which these gradients (elements up to a few units) fit in fp16; 2**16 need not
    for name, tr in (("eager", eager), ("graphed", graphed)):
        tr.scaler.load_state_dict({**tr.scaler.state_dict(), "scale": calm})
        out[name] = graph_run(tr, groups[:2], bad_step=-1)
        tr.scaler.load_state_dict({**tr.scaler.state_dict(), "scale": 2.0**40})  # the next step overflows
        out[name] += graph_run(tr, groups[2:3], bad_step=-1)
        tr.scaler.load_state_dict({**tr.scaler.state_dict(), "scale": calm})
        out[name] += graph_run(tr, groups[3:], bad_step=-1)
    assert graphed.graph is not None and graphed.graph_steps == 5
    assert [w[2] for w in out["eager"]] == [g[2] for g in out["graphed"]] == [False, False, True, False, False]
    assert scaler_state(graphed) == scaler_state(eager) == (calm, 2)
    tol = 1e-3 if cuda else 0.0
    for w, g in zip(out["eager"], out["graphed"]):
        assert all(a == b or math.isclose(a, b, rel_tol=tol) or (math.isnan(a) and math.isnan(b))
                   for a, b in zip(w, g)), (out["eager"], out["graphed"])
    if not cuda:
        assert_bitwise(snapshot(graphed.model), snapshot(eager.model))
        assert all(torch.equal(a, b) for a, b in zip(adam_state(graphed), adam_state(eager)))


@pytest.mark.on_cpu
def test_a_failed_recording_trains_on_eagerly_from_the_state_it_had(tiny_fs, monkeypatch, capsys):
    """A recording that fails part-way through its warm-up (its steps partly taken) says why, and the run goes on
    eagerly as if the graph had never been tried: the same losses, weights and AdamW state as an eager run."""
    spec = dict(model="lstm", precision="fp32", batch_size=32, warmup_steps=3)
    eager, graphed = make_trainer(tiny_fs, "cpu", **spec), make_trainer(tiny_fs, "cpu", **spec)
    graphed.graphs = True  # (refused on the CPU: the fixed-buffer steps without the recording)
    calls, body = [], StepGraph.body

    def fails_second(self, capturing):
        calls.append(capturing)
        if len(calls) == 2:
            raise RuntimeError("operation not permitted when stream is capturing\nthe rest of the message")
        return body(self, capturing)

    monkeypatch.setattr(StepGraph, "body", fails_second)
    groups = list(eager.source.epoch(0, seed=1)[: 3 * 32].split(32))
    want, got = graph_run(eager, groups, bad_step=-1), graph_run(graphed, groups, bad_step=-1)
    out = capsys.readouterr().out
    assert ("cuda_graphs: recording the step failed, training without the step graph: RuntimeError: operation not "
            "permitted when stream is capturing\n") in out
    assert len(calls) == 2 and not graphed.graphs and graphed.graph is None and graphed.graph_steps == 0
    assert want == got
    assert_bitwise(snapshot(graphed.model), snapshot(eager.model))
    assert all(torch.equal(a, b) for a, b in zip(adam_state(graphed), adam_state(eager)))


def test_the_step_graph_is_refused_where_it_cannot_work(tiny_fs, capsys):
    """cuda_graphs=true where no graph can be recorded trains eagerly and says why."""
    tr = make_trainer(tiny_fs, "cpu", cuda_graphs="true")
    assert not tr.graphs and "cuda_graphs: off (CUDA graphs need a CUDA device" in capsys.readouterr().out
    cuda = torch.device("cuda")
    small = Config(window=W, hidden=8, layers=2)
    lstm = model_for(small.replace(model="lstm"), 4)
    # the rule reads no setting: accumulation, and compile=reduce-overhead whose graphs were dropped (compiled
    # "on"), are allowed like any run (test_train checks both through use_step_graph's Config)
    assert graphs_refused(cuda, 1, True, lstm, "on") is None
    assert "DDP" in graphs_refused(cuda, 2, True, lstm, "on")
    assert "reduce-overhead" in graphs_refused(cuda, 1, True, lstm, "reduce-overhead")
    assert "fused AdamW" in graphs_refused(cuda, 1, False, lstm, "on")
    dropped = {m: model_for(small.replace(model=m, dropout=0.1), 4) for m in ("lstm", "mlp")}
    assert "cuDNN's LSTM/GRU dropout (rnn" in graphs_refused(cuda, 1, True, dropped["lstm"], "on")
    assert graphs_refused(cuda, 1, True, dropped["mlp"], "on") is None  # torch's own dropout


# ---------------------------------------------------------------------------------------------------------
# resume after a kill

RESUME = dict(synth_symbols=3, synth_bars=400, window=W, hidden=8, layers=2, batch_size=16, grad_accum_steps=2,
              epochs=1, compile="off", precision="auto", log_every=2, checkpoint_every=5, seed=3, warmup_steps=5,
              deterministic=True)
RESUME_CASES = [
    # the default model (cuDNN's LSTM) without dropout: cuDNN keeps the RNG of the LSTM's own inter-layer
    # dropout in a buffer of its own, re-seeded from torch's CUDA generator after a restore, which no
    # checkpoint holds; a resumed LSTM with dropout > 0 cannot repeat the uninterrupted run's masks on CUDA
    pytest.param("lstm", 0.0, id="lstm"),
    # dropout through torch's own CUDA generator, whose state the checkpoint restores; cuDNN convolutions
    pytest.param("tcn", 0.1, id="tcn-dropout"),
]
KILLED_CHILD = r"""
import json, sys, time
from tradelib.config import Config
from tradelib.hardware import torch_flags
from tradelib.train.run import TrainingRun
cfg = Config.from_dict(json.loads(sys.argv[1]))
pause_at, marker = int(sys.argv[2]), sys.argv[3]

def hold(run):
    if run.step == pause_at:
        open(marker, "w").close()
        time.sleep(600)  # the test kills this process here, two steps past the step-5 checkpoint

with torch_flags(cfg.deterministic):  # as train() runs it: deterministic kernels, CUBLAS_WORKSPACE_CONFIG
    run = TrainingRun(cfg, progress=False)
    run.on_step = hold
    run.fit()
"""


def train_cli(params: dict) -> subprocess.CompletedProcess:
    args = [a for k, v in params.items() for a in ("-p", k, str(v))]
    done = subprocess.run([sys.executable, "-m", "tradelib", "train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_rows(outputs: Path, run_id: str) -> list[tuple]:
    keys = ("kind", "step", "epoch", "samples", "loss", "lr", "grad_norm", "skipped_steps", "train_loss", "val_loss")
    rows = [json.loads(line) for line in (outputs / run_id / "metrics.jsonl").read_text().splitlines()]
    return [tuple(r.get(k) for k in keys) for r in rows if r["kind"] != "gpu"]


def final_weights(outputs: Path, run_id: str) -> dict:
    return torch.load(outputs / run_id / "checkpoints" / "last.pt", weights_only=False, map_location="cpu")["model"]


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model,dropout", RESUME_CASES)
def test_resume_after_sigkill_is_exact_with_deterministic(outputs, tmp_path, device, model, dropout):
    """Three fresh processes, as a user has them: an uninterrupted run, a run killed (SIGKILL) two steps after
    its step-5 checkpoint, and its resume. The resumed run's weights and metric rows equal the uninterrupted
    run's bit for bit: the model, AdamW, the schedule, the loop's position and the RNG (dropout) all come
    back. compile=off (compiled kernels may be chosen by timing, so exactness is not claimed); on CUDA with the
    default step graph (cuda_graphs auto), which the resumed run records anew from the checkpoint's state."""
    if device == "cpu" and model == "lstm":
        pytest.skip("the CPU side runs the TCN case (tests/test_train.py resumes the CPU runs)")
    base = {**RESUME, "device": device, "model": model, "dropout": dropout}
    train_cli({**base, "run_id": "reference"})
    cfg = Config(**{**base, "run_id": "killed"})
    marker = tmp_path / "paused"
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, json.dumps(cfg.to_dict()), "7", str(marker)],
                             cwd=ROOT)
    deadline = time.monotonic() + 120
    try:
        while not marker.exists():
            assert child.poll() is None, "the training process ended before the kill"
            assert time.monotonic() < deadline, "the training process never reached step 7"
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    folder = outputs / "killed" / "checkpoints"
    assert not (folder / "last.pt").exists() and (folder / "step-5.pt").exists()
    done = train_cli({**base, "run_id": "killed", "resume": True})
    assert "resumed killed from step-5.pt at step 5" in done.stdout
    assert_bitwise(final_weights(outputs, "killed"), final_weights(outputs, "reference"))
    assert run_rows(outputs, "killed") == run_rows(outputs, "reference")


# ---------------------------------------------------------------------------------------------------------
# streamed data


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["windows", "dense"])
def test_streamed_steps_equal_resident_steps_without_a_host_sync(tiny_fs, device, case):
    """Data streamed through two slots of one 300-row block each, the smallest budget that streams (on CUDA the
    loader thread copies through pinned buffers on a side stream, ordered by events). Fed the resident order's
    items, nearly every micro-batch spans several blocks, loaded one after the other into slots a gather may
    still be reading: the steps leave the weights the resident source's steps leave, bit for bit (fp32 without
    TF32), and so does evaluation; a step reads no value on the host (on CUDA: makes no blocking copy either);
    the device bytes the stream holds, counted tensor by tensor, stay within the budget."""
    spec = ({"model": "mlp", "batch_size": 16} if case == "windows" else
            {"model": "tcn", "layers": 2, "dense": True, "dense_chunk": CHUNK, "batch_size": 2})
    dev = torch.device(device)
    cfg = Config(**{**BASE, "device": device, **spec, "eval_batch_size": 16, "grad_accum_steps": 2,
                    "stream_block_rows": 300, "loader": "stream"})
    budget = stream.min_budget(tiny_fs, cfg, CHUNK if case == "dense" else W)
    with exact_fp32():
        res = make_trainer(tiny_fs, device, eval_batch_size=16, grad_accum_steps=2, **spec)
        seed_everything(cfg.seed)
        model = model_for(cfg, tiny_fs.n_features).to(dev)
        cfg = cfg.replace(device_memory_budget=float(budget))
        windows, src = stream.make_sources(tiny_fs, model, cfg, dev)
        try:
            st = Trainer(cfg, model, windows, src, dev, verbose=False)
            assert isinstance(src, stream.StreamSource) and src.n_groups > 3
            groups = res.source.epoch(0, seed=0).split(res.global_batch)[:4]
            for i, ids in enumerate(groups):
                res.step(ids)
                host_ids = ids.cpu()  # the streamed source's items are on the host (a copy back is a sync)
                with no_host_sync(dev) if i else contextlib.nullcontext():  # (the first step warms up)
                    st.step(host_ids)
                assert_bitwise(snapshot(st.model), snapshot(res.model))
            assert st.loss(1) == res.loss(1) and torch.equal(st.predict(windows.ends(2)),
                                                               res.predict(res.windows.ends(2)))
            assert src.ledger.peak <= budget, (src.ledger.peak, budget)
        finally:
            src.close()


STREAM_SPECS = {"windows": {"model": "mlp", "batch_size": 16},
                "dense": {"model": "tcn", "layers": 2, "dense": True, "dense_chunk": CHUNK, "batch_size": 2}}


def streamed_and_resident(fs, device: str, case: str):
    """The streamed training source of the smallest budget that streams (two slots of one 300-row block), the
    resident source of the same items, on `device`, and the uploads the stream makes (each call's length)."""
    dev = torch.device(device)
    cfg = Config(**{**BASE, "device": device, **STREAM_SPECS[case], "eval_batch_size": 16,
                    "stream_block_rows": 300, "loader": "stream"})
    cfg = cfg.replace(device_memory_budget=float(stream.min_budget(fs, cfg, CHUNK if case == "dense" else W)))
    model = model_for(cfg, fs.n_features).to(dev)
    _, src = stream.make_sources(fs, model, cfg, dev)
    res = Windows(fs, W, dev)
    resident = DenseSource(res, CHUNK, model.receptive_field) if case == "dense" else WindowSource(res, 0)
    uploads, upload = [], src.stream.upload
    src.stream.upload = lambda a, ledger: uploads.append(len(a)) or upload(a, ledger)
    return src, resident, cfg.batch_size, uploads


def assert_same_batch(a, b) -> None:
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert (a.mask is None and b.mask is None) or torch.equal(a.mask, b.mask)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["windows", "dense"])
def test_a_streamed_fetch_in_steady_state_uploads_nothing_and_makes_no_host_sync(tiny_fs, device, case):
    """The epoch announced by `begin`: within one run (items of one resident group), after the batch that entered
    it, a fetch is a slice of the run's device index and the gather kernels. No upload (the rows were uploaded
    once, pinned and non-blocking, when the group was prefetched), no host sync (CUDA: sync debug mode "error";
    both devices: no tensor value read into Python); the batches equal the resident source's."""
    src, resident, batch_size, uploads = streamed_and_resident(tiny_fs, device, case)
    dev = torch.device(device)
    try:
        assert isinstance(src, stream.StreamSource) and src.n_groups > 3
        order = src.epoch(0, seed=0)
        src.begin(order)
        a, z = int(src.run_start[1]), int(src.run_start[2])  # the second run: prefetched while the first was read
        pos, steady = 0, []
        for ids in order.split(batch_size):
            if a < pos and pos + len(ids) <= z:
                before = len(uploads)
                with no_host_sync(dev):
                    got = src.fetch(ids)
                assert len(uploads) == before, "a steady-state fetch uploaded"
                steady.append((ids, got))
            elif pos >= z:
                break
            else:
                src.fetch(ids)
            pos += len(ids)
        assert len(steady) >= 3, len(steady)
        for ids, got in steady:
            assert_same_batch(resident.fetch(ids.to(dev)), got)
    finally:
        src.close()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["windows", "dense"])
def test_streamed_batches_of_an_announced_order_equal_the_resident_ones(tiny_fs, device, case):
    """Two epochs of rank 1 of 2 announced at once from part-way in (what the bench and a resume do), fetched in
    turn through the run indices (batches across runs too): the resident source's batches and counts, exactly;
    one index upload per run (dense: two), whatever the number of batches."""
    src, resident, batch_size, uploads = streamed_and_resident(tiny_fs, device, case)
    dev = torch.device(device)
    try:
        order = torch.cat([src.epoch(e, seed=4, rank=1, world=2) for e in (0, 1)])[5:]
        src.begin(order)
        batches = order.split(batch_size)
        for ids in batches:
            assert_same_batch(resident.fetch(ids.to(dev)), src.fetch(ids))
            assert float(resident.count(ids.to(dev))) == float(src.count(ids))
        runs = len(src.run_group)
        assert len(uploads) == runs * (2 if case == "dense" else 1) and len(batches) > 2 * runs
    finally:
        src.close()

# ---------------------------------------------------------------------------------------------------------
# the step graph where it is used, last: minutes of compilation, so a GPU check that runs out of time in it has
# every other test's outcome in its log already

# The step graph where it is used: compile auto, bf16, full.yaml's LSTM size, dropout. Eager and graphed steps run
# the same kernels on the same batches with the same dropout masks (torch's Philox offsets); they differ by the
# learning rate's float32 rounding in the graph (~1e-8 relative), which 300 bf16 AdamW steps amplify: 3e-2
# relative is a few bf16 roundings (2^-8) on the losses and weight matrices. Vectors (biases, norms) start near 0
# and some are weakly determined (the last LayerNorm's bias before the one-output head matters only through
# w.b, which the head's own bias can take): 1e-1 for those. The same runs on the CPU (bf16 autocast, the lr
# rounded to float32 as CUDA's fused AdamW reads it) drifted by at most 4e-3 on the losses, 3e-3 on the
# matrices and 2.5e-2 on a vector (the LSTM's norm.bias); a bias a replay left untrained is 1 off (it starts at 0).
USED_STEPS, USED_TOL, USED_VECTOR_TOL = 300, 3e-2, 1e-1


@pytest.mark.on_cuda
@pytest.mark.slow  # two compilations and 600 steps a model family: minutes in all
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", MODELS)  # every family models.py has, the transformer included
def test_the_step_graph_gives_the_eager_run_where_it_is_used(tiny_fs, model):
    """300 optimizer steps of a 2-layer, hidden-128 model with dropout 0.1, compile auto and bf16, eager and with
    the step graph chosen by `auto` (an epoch's partial last step eager in both): per-step losses and final
    weights within USED_TOL (vectors USED_VECTOR_TOL), the validation loss within 1%. cuDNN's LSTM/GRU dropout
    is refused, with its reason: those families run full.yaml's own setting, dropout 0."""
    # compiled as in a fresh process: the compile tests leave entries of their own on MLP.forward (fp32, bf16, two
    # backends, inference and training), and past dynamo's recompile_limit (8) a frame runs eagerly, unsaid
    torch._dynamo.reset()
    spec = dict(model=model, hidden=128, layers=2, dropout=0.1, window=64, compile="auto", precision="bf16",
                batch_size=256, warmup_steps=30, eval_batch_size=4096)
    graphed = make_trainer(tiny_fs, "cuda", **{**spec, "cuda_graphs": "auto"})
    if cudnn_dropout_rnns(graphed.model):
        assert not graphed.graphs and "cuDNN's LSTM/GRU dropout" in graphed.graphs_reason
        spec["dropout"] = 0.0
        graphed = make_trainer(tiny_fs, "cuda", **{**spec, "cuda_graphs": "auto"})
    eager = make_trainer(tiny_fs, "cuda", **spec)
    assert graphed.graphs and not eager.graphs, graphed.graphs_reason
    groups, epoch = [], 0
    while len(groups) < USED_STEPS:
        groups += list(eager.source.epoch(epoch, seed=2).split(eager.global_batch))
        epoch += 1
    groups = groups[:USED_STEPS]
    losses, rng = {}, torch.cuda.get_rng_state()
    for name, tr in (("eager", eager), ("graphed", graphed)):
        torch.cuda.set_rng_state(rng)  # the same dropout masks
        stats = [tr.step(g) for g in groups]
        losses[name] = torch.stack([s.sse / s.n_valid for s in stats]).double().cpu()
        assert not any(bool(s.skipped) for s in stats)
    assert graphed.graph_steps == sum(len(g) == graphed.global_batch for g in groups)
    rel = ((losses["graphed"] - losses["eager"]).abs() / losses["eager"]).max()
    assert rel <= USED_TOL, (float(rel), losses["eager"][-5:], losses["graphed"][-5:])
    want = snapshot(eager.model)
    for key, got in snapshot(graphed.model).items():
        if got.is_floating_point():
            ref = want[key]
            err = float((got.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-12))
            assert err <= (USED_TOL if got.dim() > 1 else USED_VECTOR_TOL), (key, err)
    val = eager.loss(1), graphed.loss(1)
    assert abs(val[1] - val[0]) <= 0.01 * val[0], val
