"""The prepared GPU check (tools/gpu_check.sh) runs here as its CPU dry run, so it cannot rot while no GPU is at
hand: every stage, the same commands, a tiny market and a few steps."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(_spec)  # (dataclasses look it up)
_spec.loader.exec_module(gpu_check)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One CPU dry run of the whole check, as the one command a user types."""
    base = tmp_path_factory.mktemp("gpu-check")
    out, work = base / "out", base / "work"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", "tools/gpu_check.sh", str(out), "--device", "cpu", "--quick", "--work", str(work)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return done, out, next(out.glob("*.json"), out / "missing.json")


@pytest.mark.slow
def test_cpu_dry_run_passes_every_stage_and_writes_one_json_and_one_log(dry_run):
    done, out, path = dry_run
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    result = json.loads(path.read_text())
    name = gpu_check.run_name(result)  # <date>-<device>-<commit>
    assert re.fullmatch(r"\d{4}-\d\d-\d\d-cpu-[0-9a-f]{1,10}(-dirty)?|\d{4}-\d\d-\d\d-cpu-nocommit", name), name
    assert sorted(p.name for p in out.iterdir()) == [f"{name}.json", f"{name}.log"]
    assert result["files"] == {"json": f"{name}.json", "log": f"{name}.log"}
    assert list(result["stages"]) == list(gpu_check.STAGES) and result["passed"] is True
    for stage_name, stage in result["stages"].items():
        assert stage["status"] == "passed" and stage["returncode"] == 0, (stage_name, stage)
        assert 0 < stage["duration_s"] <= stage["budget_s"], (stage_name, stage)
    assert result["duration_s"] <= result["budget_s"]
    log = (out / f"{name}.log").read_text()
    assert all(f"=== stage {stage}: passed" in log for stage in gpu_check.STAGES)
    assert "=== PASSED: every stage passed" in log and log.strip().endswith(f"{name}.json and .log")
    assert result["versions"]["torch"] and result["versions"]["device_name"] == "cpu"
    assert "papermill" in result["blocked_imports"]  # the stages ran without what the GPU machine lacks


@pytest.mark.slow
def test_cpu_dry_run_figures_are_present_and_sane(dry_run):
    _, _, path = dry_run
    result = json.loads(path.read_text())
    f = result["figures"]
    assert f["env"]["cpu_count"] >= 1 and f["env"]["peak_flops"] > 0
    assert f["prepare"]["rows"] > 1000
    assert f["cuda_tests"]["passed"] >= 2 and f["cuda_tests"]["failure"] == 0
    throughputs = [*f["bench"]["records"], f["epoch"], *f["stream"]["records"], *f["sweep"]["rows"]]
    # the eager rows; the graph rows need CUDA and are skipped on the CPU with the reason
    assert {r["label"] for r in f["bench"]["records"]} == {
        "lstm/dataloader/eager", "lstm/device/eager", "lstm-accum/device/eager", "tcn/device/eager", "tcn/dense/eager",
        "transformer/device/eager"}
    assert {(r["loader"], r["batch_size"]) for r in f["sweep"]["rows"]} == {
        (loader, b) for loader in ("device", "dataloader") for b in (32, 128)}
    for r in throughputs:
        assert r["samples_per_s"] > 0 and 0 <= r["data_wait_share"] <= 1
        assert "mfu" in r  # beside every throughput: a figure in [0, 1], or flagged invalid and kept out
        assert (r["mfu"] is not None and 0 < r["mfu"] <= 1) or "mfu_invalid" in r, r
    b = f["bench"]
    assert b["lstm_device_over_dataloader"] > 0 and b["tcn_dense_over_per_window"] > 0
    assert b["lstm_accum_over_single_eager"] > 0 and b["transformer_label"] == "transformer/device/eager"
    assert b["lstm_graph_device_over_dataloader"] is None and b["lstm_accum_over_single"] is None  # CUDA's figures
    assert {r["label"] for r in f["stream"]["records"]} == {"lstm/device", "lstm/stream"}
    assert f["stream"]["plan"].startswith("data streamed to cpu") and f["stream"]["stream_over_resident"] > 0
    assert 0 <= f["stream"]["streamed_data_wait_share"] <= 1
    e = f["epoch"]
    assert e["optimizer_steps"] == 6 and e["epochs_complete"] == 0 and e["projected_epoch_s"] > 0
    assert e["epoch_time_s"] is None and e["batches_per_epoch"] > 6
    assert e["epoch_measured"] == f"not measured (6 of its {e['batches_per_epoch']} steps run)"
    assert e["projected_epoch_s"] == pytest.approx(e["train_samples_per_epoch"] / e["samples_per_s"])
    assert e["graph_steps"] == 0  # no step graph on a CPU
    assert len(result["targets"]) == 8 and all(t["met"] is None for t in result["targets"])  # a CPU is not judged


def test_the_measured_epoch_says_which_epoch_it_is():
    e = {"epoch_time_s": 4.2, "first_epoch_time_s": 31.0, "epochs_complete": 2, "optimizer_steps": 5412,
         "batches_per_epoch": 2706}
    assert gpu_check.epoch_measured(e) == ("4.2 s measured (the second epoch; the first, with the compilation and "
                                           "the step graph's recording, 31.0 s)")
    one = {**e, "epoch_time_s": 31.0, "epochs_complete": 1}
    assert gpu_check.epoch_measured(one) == "31.0 s measured (wall, the first step's compilation included)"
    none = {**e, "epoch_time_s": None, "epochs_complete": 0, "optimizer_steps": 878}
    assert gpu_check.epoch_measured(none) == "not measured (878 of its 2706 steps run)"


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to read its status is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_hung_stage_is_killed_with_its_workers_at_its_budget(tmp_path):
    """A stage that hangs (here with a worker process of its own) is killed, whole process group, at its budget."""
    log = gpu_check.Log(tmp_path / "log")
    hang = ("import subprocess, sys, time\n"
            "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
            "print('worker', w.pid, flush=True)\n"
            "time.sleep(300)\n")
    rc, seconds, timed_out, lines = gpu_check.run_process([sys.executable, "-c", hang], 3, log, dict(os.environ))
    assert timed_out and rc != 0 and 3 <= seconds < 30
    worker = int(lines[0].split()[1])
    deadline = time.monotonic() + 10
    while alive(worker):
        assert time.monotonic() < deadline, "the stage's worker outlived the stage"
        time.sleep(0.1)
    assert "timed out after 3 s" in (tmp_path / "log").read_text()


def test_an_mfu_above_one_is_flagged_never_a_figure():
    assert gpu_check.checked_mfu(0.25) == {"mfu": 0.25}
    assert gpu_check.checked_mfu(None) == {"mfu": None}
    assert gpu_check.checked_mfu(float("nan")) == {"mfu": None}  # no MFU in that row: n/a, not invalid
    bad = gpu_check.checked_mfu(1.7)
    assert bad == {"mfu": None, "mfu_invalid": 1.7}
    assert "INVALID" in gpu_check.mfu_text(bad) and "170" not in gpu_check.mfu_text(bad)
    figures = {"bench": {"records": [{"label": "lstm/device", **bad}]}, "sweep": {"rows": []}, "epoch": {"mfu": 0.1}}
    assert gpu_check.invalid_mfus(figures) == ["bench lstm/device"]


def test_targets_are_judged_on_a_gpu_only():
    figures = {"epoch": {"gpu_busy_pct": 93.0, "data_wait_share": 0.031, "projected_epoch_s": 4.0,
                         "epoch_time_s": 5.6},
               "bench": {"lstm_graph_device_over_dataloader": 3.4, "lstm_accum_over_single": 0.93,
                         "transformer_mfu": 0.21, "tcn_dense_over_per_window": 31.0},
               "stream": {"streamed_data_wait_share": 0.015}}
    met = [(t["want"], t["met"]) for t in gpu_check.judge({"device": "cuda", "figures": figures})]
    # the epoch is judged on its measured time, not the projected one
    assert met == [(">= 90%", True), ("<= 2%", False), ("<= 5 s", False), (">= 3x", True), (">= 0.90x", True),
                   (">= 25%", False), (">= 30x", True), ("<= 2%", True)]
    on_cpu = gpu_check.judge({"device": "cpu", "figures": figures})
    assert all(t["met"] is None and t["note"] for t in on_cpu)
    assert [t["shown"] for t in on_cpu] == ["93%", "3.10%", "5.6 s", "3.40x", "0.93x", "21.00%", "31.00x", "1.50%"]


def test_a_rerun_of_some_stages_is_filed_beside_the_whole_check_not_over_it():
    """The device tool runs a command for at most 600 s: a stage that ran out is rerun alone (`--only`), and its
    files must not replace those of the check whose other figures they complete."""
    assert gpu_check.stages_to_run(None) == set(gpu_check.STAGES)
    assert gpu_check.stages_to_run("cuda_tests") == {"env", "cuda_tests"}  # env names the files
    env = {"device_name": "NVIDIA H100 80GB HBM3", "git_commit": "0123456789abcdef"}
    whole = {"started": "2026-12-07T10:00:00+0000", "device": "cuda", "figures": {"env": env},
             "stages": {name: {"status": "passed"} for name in gpu_check.STAGES}}
    assert gpu_check.run_name(whole) == "2026-12-07-nvidia-h100-80gb-hbm3-0123456789"
    part = {**whole, "stages": {name: {"status": "passed" if name in ("env", "cuda_tests") else "not run"}
                                for name in gpu_check.STAGES}}
    assert gpu_check.run_name(part) == "2026-12-07-nvidia-h100-80gb-hbm3-0123456789-only-cuda_tests"


def test_the_epoch_stage_runs_whole_epochs_when_the_bench_says_they_fit(tmp_path):
    """Two epochs where they fit (the second one's time holds no compilation), one where one fits, else steps."""
    ctx = gpu_check.Ctx(gpu_check.make_plan("cuda", quick=False), tmp_path)

    def length() -> tuple[str, str] | None:
        cmd = gpu_check.epoch_command(ctx)
        return next(((k, cmd[cmd.index(k) + 1]) for k in ("max_steps", "epochs") if k in cmd), None)

    assert length() == ("max_steps", "1000")  # no bench figure: about a third of an epoch
    lstm = {"label": "lstm/device/graph", "train_items_per_epoch": 2_771_000, "batch_size": 1024}
    ctx.figures["bench"] = {"records": [{**lstm, "samples_per_s": 300_000.0}]}  # 9 s an epoch
    assert length() == ("epochs", "2")
    ctx.figures["bench"] = {"records": [{**lstm, "samples_per_s": 100_000.0}]}  # 28 s an epoch
    assert length() is None  # full.yaml's own one epoch
    ctx.figures["bench"] = {"records": [{**lstm, "samples_per_s": 20_000.0}]}  # 139 s: 45 s of it
    assert length() == ("max_steps", str(int(45 * 20_000 / 1024)))
    cmd = gpu_check.epoch_command(ctx)
    assert cmd[cmd.index("-f") + 1] == "params/full.yaml" and cmd[cmd.index("device") + 1] == "cuda"
    assert "cuda_graphs" not in cmd  # full.yaml with no flags: the defaults choose the step


@pytest.mark.parametrize("device,quick", [("cuda", False), ("cpu", True)])
def test_every_stage_command_parses_into_a_valid_config(tmp_path, device, quick):
    """The GPU plan's commands only run on a GPU: their parameters are checked here, against the CLI and Config
    (an unknown name or a bad value would otherwise surface only there)."""
    from tradelib.cli import build_parser
    from tradelib.config import Config, load_config
    from tradelib.perf.measure import make_setups, split_list

    ctx = gpu_check.Ctx(gpu_check.make_plan(device, quick), tmp_path)
    for name in ("prepare", "bench", "epoch"):
        cmd = gpu_check.SPECS[name].command(ctx)
        assert cmd[1:3] == ["-m", "tradelib"], cmd
        args = build_parser().parse_args(cmd[3:])
        cfg = load_config(args.files, [tuple(p) for p in args.params])
        assert cfg.device == device and cfg.data_path == "synthetic"
        if name == "bench":
            loaders, modes = split_list(cfg.loaders), split_list(cfg.graph_modes)
            labels = [s.label for spec in cfg.bench_models.split()
                      for s in make_setups(cfg, spec, loaders, verbose=False, modes=modes)]
            steps = ("eager", "graph") if device == "cuda" else ("eager",)
            both = [f"{r}/{m}" for r in ("lstm/dataloader", "lstm/device", "lstm-accum/device") for m in steps]
            assert labels == [*both, "tcn/device/eager", "tcn/dense/eager", *[f"transformer/device/{m}" for m in steps]]
            assert cfg.num_workers == (2 if quick else 8) and cfg.batch_size == (64 if quick else 1024)
    plan = ctx.plan
    cfg = load_config([gpu_check.FULL], list({"device": device, **plan.data, **plan.sweep}.items()))
    assert isinstance(cfg, Config) and max(plan.sweep_sizes) == (128 if quick else 16_384)
    assert sum(plan.budgets.values()) >= plan.total_s  # the overall budget is what binds
    assert quick or plan.total_s <= 560  # within one device command (600 s at most), with time to spare


_tables = importlib.util.spec_from_file_location("make_perf_tables", ROOT / "tools" / "make_perf_tables.py")
make_perf_tables = importlib.util.module_from_spec(_tables)
_tables.loader.exec_module(make_perf_tables)


@pytest.mark.slow
def test_perf_md_tables_are_made_from_the_run_files(dry_run, tmp_path):
    """Every GPU figure of docs/perf.md traced to a file: the tables are made from the check's JSON, named by it,
    the projected epoch said to be projected, NVML busy beside MFU; the page in the repository is what its
    docs/gpu-runs gives."""
    _, out, path = dry_run
    doc = tmp_path / "perf.md"
    doc.write_text(f"# page\n\n{make_perf_tables.BEGIN}\nold\n{make_perf_tables.END}\n\nafter\n")
    assert make_perf_tables.main(["--runs", str(out), "--doc", str(doc), "--check"]) == 1
    assert make_perf_tables.main(["--runs", str(out), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# page\n") and text.endswith("\n\nafter\n") and "old" not in text
    assert f"### `{path.stem}.json` (quick dry run: not GPU figures)" in text and f"`{path.stem}.log`" in text
    assert "| bench row | batch | samples/s | data wait | MFU | NVML busy |" in text
    assert "| lstm/device/eager | 64 windows |" in text and "**projected** from the steady rate" in text
    assert make_perf_tables.main(["--runs", str(out), "--doc", str(doc), "--check"]) == 0
    assert make_perf_tables.main(["--check"]) == 0  # docs/perf.md as docs/gpu-runs/ makes it
