"""02_profiling's functions on the CPU: the sweep, the trace, the largest batch within a budget; and the LR
scaling rule recorded in a run's summary."""

from __future__ import annotations

import json

import pytest

from tradelib.perf.profiling import SWEEP_COLUMNS, StepProbe, batch_size_sweep, find_max_batch, profile_step
from tradelib.report import tables
from tradelib.train.run import train


@pytest.mark.slow
def test_batch_size_sweep(tiny_cfg):
    df = batch_size_sweep(tiny_cfg.replace(steps=2, warmup=1, loaders="device,dataloader"), [32, 128])
    assert list(df.columns) == SWEEP_COLUMNS
    assert sorted(zip(df["loader"], df["batch_size"])) == [("dataloader", 32), ("dataloader", 128),
                                                          ("device", 32), ("device", 128)]
    assert (df["samples_per_s"] > 0).all() and df["data_wait_share"].between(0, 1).all()
    per_epoch = df.set_index(["loader", "batch_size"])["batches_per_epoch"]
    assert per_epoch["device", 32] > per_epoch["device", 128] == per_epoch["dataloader", 128]
    speedup = df.set_index(["loader", "batch_size"])["speedup"]
    assert speedup["device", 32] == pytest.approx(
        df.set_index(["loader", "batch_size"])["samples_per_s"].pipe(lambda s: s["device", 32] / s["dataloader", 32]))


def test_profile_step_writes_a_trace_and_a_top_ops_table(tiny_cfg, tmp_path):
    path = tmp_path / "trace" / "step.json"
    df = profile_step(tiny_cfg.replace(profile_steps=2, warmup=1), trace_path=path)
    names = {e.get("name") for e in json.loads(path.read_text())["traceEvents"]}
    assert {"train step", "fetch batch"} <= names
    assert len(df) > 3 and {"op", "calls", "self_cpu_ms", "share_of_self_time"} <= set(df.columns)
    assert df["self_cpu_ms"].is_monotonic_decreasing
    # a CPU run profiles no device activity: 02's table shows its device columns as unknown, never as 0.00 ms
    shown = tables.ops_table(df)
    assert df["self_device_ms"].isna().all() and set(shown["self device (ms)"]) == set(shown["device total (ms)"]) == {
        tables.NA}


@pytest.mark.slow
def test_the_top_ops_of_a_cuda_trace_share_its_kernel_time():
    """On a GPU the table ranks the kernels and shares their time, as torch's own table: the rows of CPU ops and of
    the record_function spans on the device repeat it (gemm read 29% of 1,020 us, not 91% of 330)."""
    from tradelib.perf.profiling import top_ops

    from .conftest import cuda_trace

    df = top_ops(cuda_trace().key_averages(), on_device=True, top=10)
    assert df["op"].tolist() == ["gemm", "adamw"]
    assert df["share_of_self_time"].tolist() == pytest.approx([300 / 330, 30 / 330])


def test_the_timed_steps_start_after_the_warm_up(tiny_cfg, outputs):
    """What measure reads the GPU monitor at, so that a row's GPU busy % is its timed steps' (the warm-up holds
    compilation and the step graph's recording, a GPU idle for seconds): once the 3 warm-up steps of 2
    micro-batches are done, before the first timed fetch."""
    from tradelib.perf.profiling import _runner

    runner = _runner(tiny_cfg.replace(device="cpu", grad_accum_steps=2))
    try:
        fetched = []
        runner.run(3, 2, timed=lambda: fetched.append(len(runner.source.host)))
        assert fetched == [6] and len(runner.source.host) == 4
    finally:
        runner.close()


def test_find_max_batch_on_cpu_respects_its_budget(tiny_cfg):
    cfg = tiny_cfg.replace(model="mlp")
    probe = StepProbe(cfg)
    try:
        step_bytes = probe.peak_bytes
        budget = 2 * step_bytes(256)
        best = find_max_batch(cfg, start=64, limit=1 << 14, budget_bytes=budget, verbose=False)
        assert 256 <= best < 1 << 14
        assert step_bytes(best) <= budget < step_bytes(2 * best)
    finally:
        probe.close()
    assert find_max_batch(cfg, start=64, limit=100, budget_bytes=1 << 40, verbose=False) == 100
    with pytest.raises(RuntimeError, match="not even a batch of 1"):
        find_max_batch(cfg, start=4, limit=64, budget_bytes=1, verbose=False)


def test_lr_scaling_is_logged_in_the_summary(tiny_cfg):
    cfg = tiny_cfg.replace(model="mlp", batch_size=32, grad_accum_steps=2, reference_batch=16, lr=1e-3,
                           lr_scaling="sqrt", max_steps=2, run_id="lr-scaling")
    res = train(cfg, progress=False)
    s = json.loads((res.run_dir / "summary.json").read_text())
    assert s["lr_scaling"] == "sqrt" and s["base_lr"] == 1e-3 and s["reference_batch"] == 16
    assert s["lr"] == pytest.approx(2e-3)  # sqrt(64 / 16) = 2
    rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r["lr"] for r in rows if r["kind"] == "step") <= 2e-3 + 1e-12
    assert "gpu_util" in s and (s["gpu_util"] is None) == (not any(r["kind"] == "gpu" for r in rows))


def test_a_time_budget_sizes_the_sweep_and_the_search(tiny_cfg, capsys):
    """profile_seconds: with a budget nothing fits in, the sweep times the smallest size with the fewest steps
    and names the sizes it left out; the search stops after its first fit, saying so."""
    cfg = tiny_cfg.replace(steps=20, warmup=1, loaders="device")
    df = batch_size_sweep(cfg, [32, 64, 128], seconds=1e-6)
    assert df["batch_size"].tolist() == [32] and df.attrs["skipped_sizes"] == [64, 128]
    out = capsys.readouterr().out
    assert "3 timed steps per configuration" in out and "batch sizes 64, 128 left out" in out
    assert "profile_seconds 0 s" not in out and "share of profile_seconds 20 s" in out  # not called its budget
    assert [r["steps"] for r in df.attrs["records"]] == [3]
    found = find_max_batch(cfg.replace(model="mlp"), start=32, limit=4096, budget_bytes=1 << 40, seconds=1e-6,
                           verbose=False)
    assert found == 32 and "at least 32 fits" in capsys.readouterr().out


def test_a_budgeted_sweep_gives_every_batch_size_the_same_mfu_peak(tiny_cfg):
    """With a budget each batch size is its own measure() call; their MFUs are still over one peak (on a CPU a
    matmul rate measured once), so the sizes' MFUs compare."""
    df = batch_size_sweep(tiny_cfg.replace(steps=3, warmup=1, loaders="device"), [32, 64], seconds=600)
    records = df.attrs["records"]
    assert sorted(r["batch_size"] for r in records) == [32, 64]
    assert len({(r["peak_flops"], r["peak_flops_source"]) for r in records}) == 1
    assert records[0]["peak_flops"] > 0


def test_quiet_profiler_passes_on_everything_but_the_profilers_own_chatter(capfd):
    """Kineto's start/stop lines, its no-driver error (a CUDA build of torch on a machine without a GPU) and
    torch 2.11's one-cycle warning are held back; any other line or warning reaches the user."""
    import os
    import warnings

    from tradelib.perf.measure import quiet_profiler

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_profiler():
            os.write(2, b"STAGE:2026-12-07 02:59:15 10079:10079 ActivityProfilerController.cpp:312] Completed Stage\n")
            os.write(2, b"ERROR:2026-12-07 02:59:15 10079:10079 DeviceProperties.cpp:48] gpuGetDeviceCount failed "
                        b"with code 35\n")
            os.write(2, b"a real error from the profiled step\n")
            warnings.warn("Warning: Profiler clears events at the end of each cycle.Only events from the current "
                          "cycle will be reported.", UserWarning, stacklevel=1)
            warnings.warn("a real warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a real warning"]
    assert capfd.readouterr().err == "a real error from the profiled step\n"


def test_02_stopped_while_writing_its_sweep_leaves_the_csv_it_had(tmp_path):
    """02 wrote batch_size_sweep.csv, which the report reads back, straight onto its name: a stop (the pipeline's
    interrupt of the kernel) in the middle left half a new file or an empty one. Run 02's own cell with a sweep
    whose second row stops the write."""
    import nbformat
    import pandas as pd

    from tradelib.paths import notebooks_dir
    from tradelib.report.inputs import loader_sweep

    class Stop:
        def __str__(self) -> str:
            raise KeyboardInterrupt

    first = pd.DataFrame({"loader": ["device"], "batch_size": [64], "samples_per_s": [1000.0]})
    first.to_csv(tmp_path / "batch_size_sweep.csv", index=False)
    cell = next(c.source for c in nbformat.read(notebooks_dir() / "02_profiling.ipynb", as_version=4).cells
                if "batch_size_sweep(cfg" in c.source)
    stopping = pd.DataFrame({"loader": ["device"] * 2000 + [Stop()], "batch_size": 64, "samples_per_s": 1.0})
    from tradelib.perf import profiling

    namespace = {"write_sweep": getattr(profiling, "write_sweep", None), "out": tmp_path,
                 "cfg": type("Cfg", (), {"profile_seconds": 0})(), "batch_size_sweep": lambda cfg, seconds: stopping}
    with pytest.raises(KeyboardInterrupt):
        exec(cell.split("for note in")[0], namespace)
    pd.testing.assert_frame_equal(loader_sweep(tmp_path), first)


def test_the_sweep_s_dense_rows_say_they_train_another_batch_than_the_per_window_rows(tiny_cfg):
    """The sweep's dense batch is in chunks (8 chunks of 64 rows, 8 x 52 targets, against 8 windows): its speed-up
    over the per-window row compares different batches, which its table now says."""
    cfg = tiny_cfg.replace(model="tcn", layers=2, dense_chunk=64, steps=1, warmup=0, loaders="device,dense")
    df = batch_size_sweep(cfg, [8]).set_index("loader")
    assert df.loc["device", "targets_per_step"] == 8 and df.loc["dense", "targets_per_step"] == 8 * (64 - 13 + 1)
    assert df.loc["dense", "unlike"] == "416 targets a step against 8 for the device row"


def test_02s_sweep_says_once_that_it_skipped_the_dense_loader_for_a_model_without_one(tiny_cfg, capsys):
    """02 printed 'loaders device,dataloader,dense' and then a table without dense rows, saying nothing."""
    df = batch_size_sweep(tiny_cfg.replace(steps=1, warmup=0, loaders="device,dense"), [32, 64])
    assert set(df["loader"]) == {"device"}
    out = capsys.readouterr().out
    assert out.count("no dense mode for lstm") == 1, out
