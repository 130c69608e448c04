"""`tradelib doctor`: each verdict from figures stated on purpose (the verdict is a pure function of them), and
measured on the CPU: a batch source that sleeps reads input-bound; a user's model is diagnosed like a built-in."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from tradelib.cli import main
from tradelib.config import Config
from tradelib.hardware import MIN_BURST_S, sustained_rate
from tradelib.perf.doctor import INPUT_BOUND, Measured, examine, largest_matmul, verdict
from tradelib.perf.profiling import _runner
from tradelib.train.models import model_for

GPU = Measured(device="cuda", device_name="NVIDIA H100 80GB HBM3", model="lstm", loader="device", batch_size=1024,
               grad_accum_steps=1, graphs=False, graphs_refused=None, precision="bf16", samples_per_s=100_000.0,
               step_s=0.01, wait_share=0.01, host_s=0.002, device_s=0.008, mfu=0.05, mfu_ceiling=0.6,
               largest_matmul="[1024 x 128] @ [128 x 512]", mem_peak_bytes=int(50e9), mem_total_bytes=int(80e9))


def case(**changes) -> Measured:
    return dataclasses.replace(GPU, **changes)


def test_input_bound_names_the_loader_and_the_gain():
    first, _ = verdict(case(loader="dataloader", wait_share=0.6))
    assert first.kind == "input-bound" and first.change == {"loader": "device"}
    assert first.gain == pytest.approx(2.5)
    assert first.text.startswith("input-bound: 60% of each step waits for data (dataloader loader): set loader "
                                 "device (about 2.5x")
    streamed, _ = verdict(case(loader="stream", wait_share=0.3))  # loader stream streams whatever the budget
    assert streamed.change == {"loader": "device"} and "keeps the data resident" in streamed.text
    # the device loader streams data above device_memory_budget: its wait is the stream's, not the gather's
    over, _ = verdict(case(loader="device", streamed=True, wait_share=0.3))
    assert over.change == {"device_memory_budget": 1.0}
    assert "(device loader, the data streamed: it exceeds device_memory_budget)" in over.text


def test_launch_bound_says_set_cuda_graphs_with_the_ratio():
    first, _ = verdict(case(host_s=0.0062, device_s=0.0020))
    assert first.text == "launch-bound: 6.2 ms on the host per 2.0 ms on the GPU: set cuda_graphs true (about 3.1x)"
    assert first.change == {"cuda_graphs": "true"} and first.gain == pytest.approx(3.1)


def test_launch_bound_with_the_graph_refused_or_on_asks_for_a_larger_batch():
    refused, _ = verdict(case(host_s=0.006, device_s=0.002, graphs_refused="not with DDP"))
    assert refused.kind == "launch-bound" and "the step graph is off here (not with DDP)" in refused.text
    assert refused.change == {"batch_size": 2048} and refused.gain == pytest.approx(2 * 6 / 6)
    on, _ = verdict(case(host_s=0.003, device_s=0.002, graphs=True))
    assert "with the step graph already" in on.text and on.gain == pytest.approx(2 * 3 / 4)


def test_compute_bound_near_what_the_models_matmul_allows():
    first, _ = verdict(case(mfu=0.31, mfu_ceiling=0.45))
    assert first.kind == "compute-bound" and "MFU 31.0%" in first.text and "45.0%" in first.text
    assert first.change == {}
    fp32, _ = verdict(case(mfu=0.31, mfu_ceiling=0.45, precision="fp32"))
    assert fp32.change == {"precision": "auto"} and fp32.gain == 2.0
    small, _ = verdict(case(mfu=0.02, mfu_ceiling=0.03))
    assert small.kind == "compute-bound" and "too small for this device" in small.text


def test_between_bounds_when_nothing_dominates_and_mfu_na_is_said():
    first, _ = verdict(case(mfu=0.05, mfu_ceiling=0.6))
    assert first.kind == "between bounds" and "MFU 5.0% of the 60.0%" in first.text
    na, _ = verdict(case(mfu=None, mfu_ceiling=None, mfu_note="mine:Net gives no flops_per_sample"))
    assert "MFU n/a (mine:Net gives no flops_per_sample)" in na.text


def test_memory_full_and_headroom():
    _, full = verdict(case(mem_peak_bytes=int(76e9)))
    assert full.kind == "memory-full" and full.change == {"batch_size": 512, "grad_accum_steps": 2}
    assert "95% of 80.0 GB at batch 1024" in full.text
    _, room = verdict(case(mem_peak_bytes=int(8e9)))
    assert room.kind == "memory headroom" and "a larger batch_size fits" in room.text
    _, room_input = verdict(case(mem_peak_bytes=int(8e9), wait_share=0.5))
    assert "no speed to gain from a larger batch while input-bound" in room_input.text
    _, mid = verdict(case())
    assert mid.kind == "memory"


def test_device_seconds_count_each_kernel_once():
    """Neither a CPU op's device time nor a record_function range's span on the GPU (which counted the step's
    kernels twice: 720 us for 330, and the launch-bound rule compares the host's time with this)."""
    from tradelib.perf.doctor import device_seconds

    from .conftest import cuda_trace

    assert device_seconds(cuda_trace()) == pytest.approx(330e-6)


def test_largest_matmul_of_each_family():
    x = torch.randn(8, 16, 5)
    assert largest_matmul(model_for(Config(model="mlp", window=16, hidden=32, layers=2), 5), x) == (8, 80, 32)
    assert largest_matmul(model_for(Config(model="lstm", window=16, hidden=32, layers=1), 5), x) == (8, 32, 128)
    transformer = model_for(Config(model="transformer", window=16, hidden=32, layers=1, heads=4), 5)
    assert largest_matmul(transformer, x) == (128, 32, 128)


def test_the_largest_matmul_of_a_dense_run_is_its_step_s_over_chunks(tiny_cfg, outputs):
    """Dense, a step's convolutions run over batch x chunk rows: the doctor's largest matmul (and the MFU ceiling
    read from it) is that one, not the per-window forward's over batch x receptive field rows ([68 x 48] where the
    step's is [272 x 48] for 4 chunks of 64 rows, 2 blocks of hidden 16)."""
    from tradelib.perf.doctor import examine

    cfg = tiny_cfg.replace(model="tcn", layers=2, dense=True, dense_chunk=64, batch_size=4, warmup=1)
    measured = examine(cfg, seconds=0.2, verbose=False)
    pad = 2 * 2  # the widest block's causal padding: (kernel 3 - 1) x dilation 2
    assert measured.largest_matmul == f"[{4 * (64 + pad)} x 48] @ [48 x 16]"


class Sleepy:
    """A batch source whose fetch sleeps: the input pipeline made slow on purpose."""

    def __init__(self, inner, seconds: float) -> None:
        self.inner, self.seconds, self.device = inner, seconds, inner.device

    def __len__(self) -> int:
        return len(self.inner)

    def epoch(self, *args):
        return self.inner.epoch(*args)

    def begin(self, ids) -> None:
        self.inner.begin(ids)

    def fetch(self, ids):
        time.sleep(self.seconds)
        return self.inner.fetch(ids)

    def count(self, ids):
        return self.inner.count(ids)


def test_a_sleeping_source_reads_input_bound(tiny_cfg, outputs):
    cfg = tiny_cfg.replace(device="cpu", warmup=1, model="mlp", hidden=8)
    runner = _runner(cfg)
    runner.source.inner = Sleepy(runner.source.inner, 0.2)
    try:
        measured = examine(cfg, seconds=1.0, runner=runner, verbose=False)
    finally:
        runner.close()
    assert measured.wait_share >= INPUT_BOUND and measured.samples_per_s > 0 and measured.host_s is None
    first, mem = verdict(measured)
    assert first.kind == "input-bound" and first.change == {"batch_size": 2 * cfg.batch_size}
    assert mem.kind in ("memory headroom", "memory")


def streaming_cfg(tiny_cfg, loader: str, budget: float) -> Config:
    return tiny_cfg.replace(device="cpu", warmup=1, loader=loader, device_memory_budget=budget, eval_batch_size=64,
                            stream_block_rows=256)


@pytest.mark.parametrize("loader,budget", [("stream", 1.0), ("device", 230_000.0)])
def test_the_doctor_streams_as_a_run_of_the_config_does(tiny_cfg, outputs, loader, budget):
    """loader stream, or the device loader over its budget: the doctor (and 02's trace) stream with the config's
    own budget and blocks, not the bench's quarter of the data in 32 blocks."""
    runner = _runner(streaming_cfg(tiny_cfg, loader, budget))
    try:
        plan = runner.source.inner.plan
        assert plan.streamed and plan.block_rows == 256
        assert runner.trainer.cfg.device_memory_budget == budget
    finally:
        runner.close()


def test_a_device_loader_over_its_budget_is_diagnosed_as_streamed(tiny_cfg, outputs):
    """Its wait is the stream's: the change that helps is the budget, not a larger batch for a slow gather."""
    cfg = streaming_cfg(tiny_cfg, "device", 230_000.0)
    measured = examine(cfg, seconds=0.5, verbose=False)
    assert measured.streamed and measured.loader == "device"
    first, _ = verdict(dataclasses.replace(measured, wait_share=0.3))
    assert first.kind == "input-bound" and first.change == {"device_memory_budget": 1.0}


USER_MODULE = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, n_features, window):
        super().__init__()
        self.lin = nn.Linear(n_features, 1)

    def forward(self, x):
        return self.lin(x[:, -1]).squeeze(-1)
"""


def test_the_doctor_diagnoses_a_users_model(tmp_path, monkeypatch, tiny_cfg, outputs, capsys):
    (tmp_path / "mine_doctor.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "doctor.json"
    params = {"synth_symbols": 3, "synth_bars": 1500, "window": 16, "batch_size": 64, "device": "cpu",
              "model": "mine_doctor:Tiny", "doctor_seconds": 0.5, "warmup": 1}
    assert main(["doctor", *[a for k, v in params.items() for a in ("-p", k, str(v))], "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "doctor: mine_doctor:Tiny on cpu, batch 64 x 1, device loader" in out
    report = json.loads(path.read_text())
    assert report["measured"]["model"] == "mine_doctor:Tiny" and report["measured"]["mfu"] is None
    assert report["measured"]["mfu_note"] == "mine_doctor:Tiny gives no flops_per_sample"
    assert report["findings"][0]["kind"] in ("input-bound", "compute-bound", "between bounds")
    assert report["findings"][0]["text"] in out


def test_the_matmul_rate_is_a_sustained_one_not_the_luckiest_burst():
    """A small matmul's bursts of 4 calls took microseconds, some in the gaps between other processes' time slices:
    their best read 45 GFLOP/s where the matmul sustained 16, and the doctor's ceiling with it. The rate is the
    median burst's, bursts shorter than MIN_BURST_S left out."""
    lucky = [(4e6, 4e6 / 45e9)] * 20  # tiny bursts in the gaps: 45 GFLOP/s
    bursts = [(16e9 * MIN_BURST_S, MIN_BURST_S), (17e9 * 0.03, 0.03), (15e9 * 0.05, 0.05), (40e9 * 0.02, 0.02)]
    assert sustained_rate(lucky + bursts) == pytest.approx(16.5e9)  # the median of 15, 16, 17 and 40
    assert sustained_rate(bursts[:3]) == pytest.approx(16e9)
    with pytest.raises(ValueError, match="no burst of at least"):
        sustained_rate(lucky)
