"""The bench runs end to end on the CPU and writes honest records; the GPU monitor is off without a GPU."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tradelib import monitor
from tradelib.cli import main
from tradelib.config import Config
from tradelib.hardware import CpuElsewhere, MfuPeak, busy_elsewhere, busy_fields, mfu_peak
from tradelib.monitor import GpuMonitor, summarise
from tradelib.perf.measure import (
    REQUIRED_KEYS,
    Runner,
    Setup,
    add_ratios,
    format_table,
    make_record,
    make_setups,
    mfu_fields,
    parse_model_spec,
    summary_lines,
)
from tradelib.train.models import model_for


@pytest.mark.slow
def test_bench_cli_end_to_end_on_cpu(tmp_path, capsys):
    path = tmp_path / "bench.json"
    params = {"device": "cpu", "bench_models": "mlp tcn:window=16,layers=2", "synth_symbols": 3,
              "synth_bars": 1500, "window": 16, "hidden": 8, "batch_size": 64, "steps": 2, "warmup": 1,
              "repeats": 2, "num_workers": 2}
    rc = main(["bench", *[a for k, v in params.items() for a in ("-p", k, str(v))], "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "samples/s" in out and str(path) in out
    records = json.loads(path.read_text())
    # eager rows named as such; the graph rows need CUDA and are skipped here with the reason
    assert {r["label"] for r in records} == {"mlp/dataloader/eager", "mlp/device/eager", "tcn/dataloader/eager",
                                             "tcn/device/eager", "tcn/dense/eager"}
    assert "graph rows skipped: the step graph is a CUDA graph and this runs on cpu" in out
    for r in records:
        assert set(REQUIRED_KEYS) <= set(r), set(REQUIRED_KEYS) - set(r)
        assert r["samples_per_s"] > 0 and r["it_per_s"] > 0 and r["batches_per_epoch"] > 0
        assert 0 <= r["data_wait_share"] <= 1
        assert r["peak_mem_bytes"] > 0 and r["peak_mem_kind"].startswith("cpu")
        assert r["peak_flops_source"].startswith("measured")
        # a figure in (0, 1], or, over a peak measured while other processes were busy, flagged and kept out
        assert (r["mfu"] is not None and 0 < r["mfu"] <= 1) or (r["mfu"] is None and r["mfu_invalid_reason"]), r
        assert r["device"] == "cpu" and r["gpu_busy_pct"] is None
        assert len(r["samples_per_s_runs"]) == 2
    by = {r["label"].removesuffix("/eager"): r for r in records}
    assert all(r["mode"] == "eager" and r["graph_speedup"] is None for r in records)
    assert by["mlp/dataloader"]["num_workers"] == min(2, os.cpu_count() or 1)  # the seed's workers, capped
    assert by["mlp/device"]["speedup"] == pytest.approx(
        by["mlp/device"]["samples_per_s"] / by["mlp/dataloader"]["samples_per_s"])
    assert by["tcn/dense"]["speedup"] == pytest.approx(
        by["tcn/dense"]["samples_per_s"] / by["tcn/device"]["samples_per_s"])
    assert set(by["tcn/device"]["ratios"]) >= {"device/dataloader", "dense/per_window"}
    # same data, same model and the same global batch (in trained targets) side by side
    assert by["tcn/device"]["receptive_field"] == 13 and by["tcn/device"]["window"] == 16
    assert by["tcn/dense"]["batch_unit"] == "chunks"
    assert by["mlp/device"]["data"] == by["mlp/dataloader"]["data"]


def test_model_specs_and_the_dense_batch_in_targets(capsys):
    assert parse_model_spec("tcn:window=64,layers=4") == ("tcn", {"window": "64", "layers": "4"})
    assert parse_model_spec("my_pkg.nets:Net") == ("my_pkg.nets:Net", {})
    assert parse_model_spec("my_pkg.nets:Net:window=64") == ("my_pkg.nets:Net", {"window": "64"})
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_model_spec("tcn:window")
    setups = make_setups(Config(batch_size=1024, dense_chunk=256), "tcn:window=64,layers=4")
    dense = {s.loader: s for s in setups}["dense"]
    # receptive field 61, chunks of at most 256 rows train at most 196 targets: 8 chunks of 188 rows train 128 each
    assert dense.cfg.batch_size == 8 and dense.cfg.dense_chunk == 188 and dense.targets_per_step == 1024
    assert dense.cfg.dense and dense.cfg.window == 64 and dense.cfg.layers == 4
    assert [s.loader for s in make_setups(Config(), "lstm")] == ["dataloader", "device"]
    assert "no dense mode for lstm" in capsys.readouterr().out
    # the transformer trains dense on window-long chunks, every position a target: 1024 / 64 = 16 chunks
    tf = {s.loader: s for s in make_setups(Config(batch_size=1024), "transformer:window=64,hidden=32,heads=4")}
    assert tf["dense"].cfg.dense_chunk == 64 and tf["dense"].cfg.batch_size == 16


SIZED = """
from torch import nn


class Net(nn.Module):
    receptive_field = 1

    def __init__(self, n_features, window):
        super().__init__()
        assert n_features == {n}, n_features
        self.lin = nn.Linear(n_features, 1)

    def forward(self, x):
        return self.lin(x[:, -1]).squeeze(-1)

    def forward_dense(self, x):
        return self.lin(x).squeeze(-1)
"""


def test_the_dense_row_trains_the_per_window_row_s_targets_a_step():
    """The dense/per_window ratio compares like with like: at batch 256 the TCN's dense row was 1 chunk of 512 rows,
    452 targets a step against 256 windows."""
    by = {s.loader: s for s in make_setups(Config(batch_size=256, grad_accum_steps=2), "tcn:window=64,layers=4",
                                           ["device", "dense"], verbose=False)}
    dense, rf = by["dense"].cfg, 61
    assert dense.batch_size * (dense.dense_chunk - rf + 1) == 256 and dense.dense_chunk <= Config().dense_chunk
    assert by["dense"].targets_per_step == by["device"].targets_per_step == 512
    # an explicit dense_batch, or a transformer's window that does not divide the batch: not the same batch, and said
    tf = {s.loader: s for s in make_setups(Config(batch_size=100), "transformer:window=64,hidden=32,heads=4",
                                           ["device", "dense"], verbose=False)}
    assert (tf["dense"].cfg.batch_size, tf["device"].targets_per_step, tf["dense"].targets_per_step) == (2, 100, 128)
    rec = lambda s, sps: {"group": "g", "loader": s.loader, "label": s.label, "repeats": 1, "mode": "",
                          "targets_per_step": s.targets_per_step, "samples_per_s": sps, "samples_per_s_runs": [sps]}
    records = [rec(tf["device"], 10.0), rec(tf["dense"], 30.0)]
    add_ratios(records)
    assert records[1]["unlike"] == "128 targets a step against 100 for the device row"
    assert "NOT the same batch: 128 targets a step against 100" in summary_lines(
        [{**r, "peak_mem_kind": "", "peak_flops_source": ""} for r in records])[0]
    same = [rec(by["device"], 10.0), rec(by["dense"], 30.0)]
    add_ratios(same)
    assert same[1]["speedup"] == 3.0 and "unlike" not in same[1]


def test_dense_mfu_counts_every_row_of_its_chunks_whatever_their_targets(tiny_fs, tiny_cfg):
    """MFU's rate and FLOPs count the same thing: a dense chunk computes all its rows, known targets or not. With
    half the targets unknown the bench's dense MFU read half what ran (valid targets/s x FLOPs per trained row)."""
    fs = dataclasses.replace(tiny_fs, y=tiny_fs.y.copy())
    fs.y[::2] = np.nan
    cfg = tiny_cfg.replace(model="tcn", layers=2, dense=True, dense_chunk=32, batch_size=4)
    runner = Runner(Setup("tcn/dense", "dense", cfg, "tcn", "g"), fs)
    try:
        out = {**runner.run(0, 2), "gpu": {}}  # (no GPU monitor on a CPU)
        peak = MfuPeak(1e12, "given")
        record = make_record(runner, [out], 1, "", peak, 2, 0, 1)
    finally:
        runner.close()
    model = model_for(cfg, fs.n_features)
    with FlopCounterMode(display=False) as counter:
        model.forward_dense(torch.randn(1, 32, fs.n_features)).sum().backward()
    per_chunk = counter.get_total_flops() - 2.0 * fs.n_features * cfg.hidden * 32  # no gradient for the data
    assert out["samples"] < 0.6 * 2 * 4 * (32 - model.receptive_field + 1)  # half the trained rows have no target
    assert record["mfu"] == pytest.approx(2 * 4 / out["seconds"] * per_chunk / peak.flops, rel=0.03)


def test_the_dense_rows_of_a_user_model_build_it_with_the_features_runs_have(tmp_path, monkeypatch):
    """The dense setup reads the model's receptive_field from a model built for the run's features: it was built
    with 1 feature, and a user's model sized for the real ones failed the doctor and the bench ('Net(n_features 1,
    ...) raised AssertionError')."""
    from tradelib.data.features import FEATURE_NAMES

    (tmp_path / "mine_bench_a.py").write_text(SIZED.format(n=len(FEATURE_NAMES)))
    monkeypatch.syspath_prepend(str(tmp_path))
    (setup,) = make_setups(Config(batch_size=64, dense_chunk=32, window=16), "mine_bench_a:Net", ["dense"])
    assert setup.cfg.dense and setup.cfg.dense_chunk == 32 and setup.cfg.batch_size == 2


def test_the_bench_sets_eager_and_graph_rows_of_each_loader_on_cuda():
    """The loader's gain and the graph's apart: dataloader, dataloader + graph, device, device + graph (built for a
    CUDA device without needing one: the setups are configurations)."""
    base = Config(device="cuda", batch_size=64)
    setups = make_setups(base, "lstm", ["dataloader", "device"], modes=["eager", "graph"], verbose=False)
    assert [(s.label, s.mode) for s in setups] == [("lstm/dataloader/eager", "eager"),
                                                   ("lstm/dataloader/graph", "graph"),
                                                   ("lstm/device/eager", "eager"), ("lstm/device/graph", "graph")]
    assert [str(s.cfg.cuda_graphs).lower() for s in setups] == ["false", "true", "false", "true"]
    # a spec that sets the graph itself keeps it
    own = make_setups(base, "lstm:cuda_graphs=true", ["device"], modes=["eager", "graph"], verbose=False)
    assert [s.label for s in own] == ["lstm/device/graph"]
    with pytest.raises(ValueError, match="unknown step mode"):
        make_setups(base, "lstm", ["device"], modes=["compiled"])


def test_ratios_are_taken_within_a_step_mode_and_graph_over_eager_per_loader():
    rec = lambda loader, mode, sps: {"group": "g", "loader": loader, "mode": mode, "samples_per_s": sps,
                                     "samples_per_s_runs": [sps]}
    records = [rec("dataloader", "eager", 100.0), rec("dataloader", "graph", 150.0), rec("device", "eager", 300.0),
               rec("device", "graph", 900.0)]
    add_ratios(records)
    assert [r["speedup"] for r in records] == [None, None, 3.0, 6.0]  # the loader's gain, eager and under the graph
    assert [r["graph_speedup"] for r in records] == [None, 1.5, None, 3.0]  # the graph's gain, per loader


def test_ratios_pair_each_loader_with_its_baseline_within_a_group():
    rec = lambda group, loader, sps: {"group": group, "loader": loader, "samples_per_s": sps,
                                      "samples_per_s_runs": [sps, sps]}
    records = [rec("@64", "dataloader", 100.0), rec("@64", "device", 400.0), rec("@256", "dataloader", 200.0),
               rec("@256", "device", 300.0), rec("@256", "dense", 600.0)]
    add_ratios(records)
    assert [r["speedup"] for r in records] == [None, 4.0, None, 1.5, 2.0]
    assert records[3]["ratios"]["device/dataloader_runs"] == [1.5, 1.5]


# real torch.cuda.get_device_name strings, with their total memory as torch reports it (bytes), and the dense
# bf16/fp16 peak each must get (TFLOP/s), or None: not matched, MFU n/a with the reason
DEVICES = [
    ("NVIDIA H100 80GB HBM3", 85_520_809_984, 989.5),  # SXM
    ("NVIDIA H100 PCIe", 85_520_809_984, 756.5),
    ("NVIDIA H100 NVL", 100_485_038_080, 835.5),
    ("NVIDIA H200", 150_754_820_096, 989.5),
    ("NVIDIA GH200 480GB", 101_877_514_240, 989.5),  # 94.88 GiB: the GPU's HBM3, not the superchip's 480 GB
    ("NVIDIA A100-SXM4-80GB", 85_198_045_184, 312),
    ("NVIDIA A100-SXM4-40GB", 42_505_273_344, 312),
    ("NVIDIA A100-PCIE-40GB", 42_505_273_344, 312),
    ("NVIDIA A100 80GB PCIe", 85_198_045_184, 312),
    ("NVIDIA L4", 23_580_639_232, 121),
    ("NVIDIA L40S", 47_697_362_944, 362.05),
    ("NVIDIA L40", 47_697_362_944, 181.05),
    ("NVIDIA GeForce RTX 4090", 25_386_352_640, 165.2),
    ("NVIDIA GeForce RTX 5090", 34_190_458_880, 209.5),
    ("NVIDIA RTX 6000 Ada Generation", 51_527_024_640, 364.2),
    ("NVIDIA A10", 23_836_098_560, 125),
    ("NVIDIA B200", 191_537_037_312, 2250),
    ("Tesla T4", 15_828_320_256, 65),
    ("Tesla V100-SXM2-16GB", 16_935_682_048, 125),
    ("Tesla V100-PCIE-32GB", 34_089_730_048, 112),
    ("NVIDIA A10G", 23_836_098_560, None),  # AWS's card: no vendor datasheet gives its tensor peak
    ("NVIDIA GeForce RTX 4090 D", 25_386_352_640, None),  # a cut-down 4090: not the 4090's peak
    ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", 5_100_000_000, None),  # a partition: a seventh of the chip
    ("NVIDIA A100-SXM4-80GB", 42_505_273_344, None),  # the name and the memory disagree
]


@pytest.mark.parametrize("name,memory,tflops", DEVICES)
def test_the_mfu_peak_is_the_exact_cards(name, memory, tflops):
    from tradelib.hardware import lookup_peak

    peak, source = lookup_peak(name, memory)
    if tflops is None:
        assert peak is None and "peak_tflops" in source and repr(name) in source
    else:
        assert peak == pytest.approx(tflops * 1e12) and source.startswith(f"table: {name}, dense")
        assert "datasheet" in source or "whitepaper" in source


def test_the_user_peak_wins_and_no_peak_gives_no_mfu():
    from tradelib.hardware import mfu, peak_flops

    peak, source = peak_flops(torch.device("cpu"), peak_tflops=2.5)
    assert peak == 2.5e12 and source.startswith("peak_tflops: 2.5 TFLOP/s, set by the user")
    assert peak_flops(torch.device("cpu"), peak_tflops=0.0)[0] is None
    assert mfu(1000.0, None, 1e12) is None and mfu(1000.0, 1e6, None) is None
    assert mfu(1000.0, 1e6, 1e12) == pytest.approx(1e-3)


def test_monitor_is_off_without_a_gpu_and_says_so_once(monkeypatch, capsys):
    monkeypatch.setattr(monitor, "_reported", set())
    for _ in range(2):
        with GpuMonitor(device="cpu") as mon:
            pass
        stats = mon.stop()
        assert not mon.available
        assert stats["gpu_util_median"] is None and stats["gpu_samples"] == 0 and stats["reason"]
        assert mon.read()["gpu_samples"] == 0
    assert capsys.readouterr().out.count("GPU monitor off") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_monitor_without_cuda_names_the_reason(monkeypatch, capsys):
    monkeypatch.setattr(monitor, "_reported", set())
    mon = GpuMonitor().start()
    stats = mon.stop()
    if not mon.available:  # NVML without a driver, or no nvidia-ml-py
        assert "GPU monitor off" in capsys.readouterr().out
        assert stats["reason"]


def test_summarise():
    s = summarise([(0.0, 10.0, 100), (0.5, 90.0, 300), (1.0, 80.0, 200)])
    assert s == {"gpu_util_median": 80.0, "gpu_util_mean": 60.0, "gpu_mem_used_max_bytes": 300, "gpu_samples": 3}


def test_features_bench_measures_rows_memory_and_warm_load(tmp_path, tiny_cfg):
    from tradelib.data import dataset
    from tradelib.perf.databench import bench_data, warm_load

    r = bench_data(n_symbols=2, n_bars=3000, repeats=1, full_profile=False, verbose=False)
    assert r["rows"] > 5000 and 0 < r["feature_rows"] <= r["rows"]
    assert r["rows_per_s"] > 0 and r["peak_traced_bytes"] > r["raw_frame_bytes"] * 0.5
    fs = dataset.prepare(tiny_cfg, verbose=False)
    warm = warm_load(Path(fs.meta["cache_dir"]), 2)  # (full.yaml's cache in `tradelib bench --features`)
    assert warm["full_rows"] == len(fs) and warm["warm_load_s_median"] > 0
    assert warm["warm_load_load_avg_1min"] >= 0  # like every figure of the data bench, with the machine's load


def test_bench_stream_sets_resident_and_streamed_side_by_side(tmp_path, capsys):
    """`bench --stream`: the same model on the same data, resident and streamed through a budget of a quarter
    of the data (at least what one block per slot needs), with the streamed path's data wait and the ratio."""
    path = tmp_path / "stream.json"
    params = {"device": "cpu", "bench_models": "mlp", "synth_symbols": 3, "synth_bars": 3000, "window": 16,
              "hidden": 8, "batch_size": 64, "steps": 3, "warmup": 1, "repeats": 2}
    rc = main(["bench", "--stream", *[a for k, v in params.items() for a in ("-p", k, str(v))], "--json", str(path)])
    assert rc == 0 and "mlp/stream:" in capsys.readouterr().out
    by = {r["label"]: r for r in json.loads(path.read_text())}
    assert set(by) == {"mlp/device", "mlp/stream"}
    assert by["mlp/device"]["stream"] is None and by["mlp/stream"]["stream"].startswith("data streamed to cpu")
    assert 0 <= by["mlp/stream"]["data_wait_share"] <= 1 and by["mlp/stream"]["samples_per_s"] > 0
    assert by["mlp/stream"]["speedup"] == pytest.approx(
        by["mlp/stream"]["samples_per_s"] / by["mlp/device"]["samples_per_s"])


def test_features_bench_times_csv_and_parquet_ingestion(outputs):
    from tradelib.perf.databench import bench_data

    r = bench_data(n_symbols=2, n_bars=2000, repeats=1, full_profile=False, verbose=False, ingest=True)
    for kind in ("csv", "parquet"):
        got = r["ingest"][kind]
        assert got["rows_per_s"] > 0 and got["file_bytes"] > 0 and 0 < got["read_s"] <= got["seconds"]
    assert not list((outputs / "bench").glob("ingest-*"))  # the files are gone


def test_an_mfu_that_cannot_be_right_is_flagged_never_a_figure():
    assert mfu_fields(0.3, None) == {"mfu": 0.3}
    assert mfu_fields(None, None) == {"mfu": None}
    above = mfu_fields(2.433, None)  # the seed DataLoader's figure in issue 12
    assert above["mfu"] is None and above["mfu_invalid"] == 2.433 and "above 1" in above["mfu_invalid_reason"]
    cores = os.cpu_count() or 1
    busy = busy_elsewhere(0.5 * cores, max_other_load=0.1)
    assert busy and f"of the {cores} cores busy" in busy
    assert busy_elsewhere(0.05 * cores, max_other_load=0.1) is None
    assert busy_fields([None, 0.5 * cores], 0.1)["busy_note"].startswith(f"timed while {busy}: samples/s")
    # only a peak measured here can be untrusted; one the user set is neither measured nor flagged
    user = mfu_peak(torch.device("cpu"), peak_tflops=2.5, max_other_load=0.0)
    assert user.flops == 2.5e12 and not user.measured and user.untrusted is None
    measured = mfu_peak(torch.device("cpu"), peak_tflops=0.0, max_other_load=1.0)
    assert measured.measured and measured.source.startswith("measured: fp32 1024x1024 matmul on this CPU")
    flagged = mfu_fields(0.2, busy)
    assert flagged["mfu"] is None and flagged["mfu_invalid_reason"] == busy
    table = format_table([{"label": "lstm/device", "batch_size": 64, "batch_unit": "windows", "samples_per_s": 1e4,
                           "data_wait_share": 0.01, "it_per_s": 150.0, "batches_per_epoch": 40,
                           "peak_mem_bytes": 2**20, "gpu_busy_pct": None, **flagged}])
    assert "invalid" in table and "20.00%" not in table


class burner:
    """Another process keeping one core busy for `seconds`. Not a child of this one: CpuElsewhere counts this
    process's children (the DataLoader's workers) as its own, so a child would not be "elsewhere"."""

    def __init__(self, seconds: float) -> None:
        code = f"import time; t = time.time(); [0 for _ in iter(lambda: time.time() - t < {seconds}, False)]"
        shell = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{code}" >/dev/null 2>&1 & echo $!'],
                               capture_output=True, text=True, check=True)
        self.pid, self.end = int(shell.stdout), time.time() + seconds

    def wait(self) -> None:
        time.sleep(max(0.0, self.end - time.time()))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.end = time.time()


def test_cpu_elsewhere_counts_other_processes_not_this_one():
    with CpuElsewhere() as idle:
        time.sleep(1.0)
    with CpuElsewhere() as mine:  # this process busy: not "elsewhere"
        t = time.perf_counter()
        while time.perf_counter() - t < 1.0:
            pass
    with CpuElsewhere() as reaped:  # a child that burns a core and exits inside the block: ours, not "elsewhere"
        code = "import time; t = time.time(); [0 for _ in iter(lambda: time.time() - t < 1.0, False)]"
        subprocess.run([sys.executable, "-c", code], check=True)
    proc = burner(2.5)
    time.sleep(0.3)
    with CpuElsewhere() as other:
        time.sleep(1.0)
    proc.wait()
    assert other.cores >= 0.5  # the burning process: most of a core (other sessions may add to it)
    assert mine.cores <= idle.cores + 0.5  # our own busy core is not counted
    assert reaped.cores <= idle.cores + 0.5  # nor an exited child's


def test_a_peak_measured_beside_a_busy_process_flags_every_mfu(tiny_cfg):
    from tradelib.perf.profiling import batch_size_sweep

    cfg = tiny_cfg.replace(steps=1, warmup=0, loaders="device", max_other_load=0.0)
    proc = burner(30)
    try:
        time.sleep(0.3)
        df = batch_size_sweep(cfg, [32])
    finally:
        proc.kill()
        proc.wait()
    rec = df.attrs["records"][0]
    assert rec["mfu"] is None and rec["mfu_invalid"] > 0 and rec["peak_other_cores"] >= 0.5
    assert "measured while other processes kept" in rec["mfu_invalid_reason"]
    assert df["mfu"].isna().all() and df["mfu_invalid_reason"].str.contains("other processes").all()


@pytest.mark.slow
def test_configurations_measured_together_put_the_data_on_the_device_once(tiny_cfg, outputs, monkeypatch):
    """Every configuration of a bench or sweep is alive at once (interleaved repetitions): each with its own copy of
    the data on the device, data that fits a run's device_memory_budget fills the device N times over."""
    from tradelib.perf.measure import measure
    from tradelib.train import sources

    made = []

    class Counted(sources.Windows):
        def __init__(self, *args) -> None:
            made.append(1)
            super().__init__(*args)

    monkeypatch.setattr(sources, "Windows", Counted)
    cfg = tiny_cfg.replace(device="cpu", num_workers=0)
    setups = [*make_setups(cfg, "lstm", ["device", "dataloader"], verbose=False),
              *make_setups(cfg, "tcn:layers=2", ["device", "dense"], verbose=False)]
    records = measure(setups, steps=1, warmup=0, repeats=1, max_other_load=1.0, verbose=False)
    assert len(records) == 4 and all(r["samples_per_s"] > 0 for r in records)
    assert len(made) == 1
