"""DDP on the CPU: two gloo processes started by launch_distributed (torchrun) against one process.

Dense TCN chunks with unknown targets give the two ranks different numbers of valid targets per step, so
the parameters match the one-process run only if the loss is normalised by the global count. The window
case is the default path (an MLP on windows, every rank the same count).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tradelib.config import Config
from tradelib.data import dataset
from tradelib.distributed import launch_distributed, needs_launch
from tradelib.train import stream
from tradelib.train.models import model_for
from tradelib.train.run import train
from tradelib.train.sources import window_ends
from tradelib.train.trainer import seed_everything

BASE = dict(synth_symbols=3, synth_bars=400, window=16, hidden=8, layers=2, device="cpu", compile="off",
            precision="fp32", dropout=0.0, epochs=1, max_steps=3, log_every=1, warmup_steps=2, seed=5)
CASES = {"dense": dict(model="tcn", dense=True, dense_chunk=32), "windows": dict(model="mlp")}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_processes_match_one_process_with_the_same_global_batch(outputs, capfd, case):
    base = {**BASE, **CASES[case]}
    # 2 ranks x micro-batch 2 x 2 micro-steps = 1 process x micro-batch 4 x 2 micro-steps: 8 per optimizer step
    two = Config(**base, batch_size=2, grad_accum_steps=2, n_gpus=2, run_id="ddp", peak_tflops=1.0)
    assert needs_launch(two)
    folder = launch_distributed(two)
    out = capfd.readouterr().out  # torchrun's output, streamed through
    assert out.count("global batch 8 (2 x 2 accumulation x 2 ranks)") == 1  # rank 0 alone prints
    one = train(Config(**base, batch_size=4, grad_accum_steps=2, run_id="single"), progress=False)

    ddp = torch.load(folder / "checkpoints" / "last.pt", weights_only=False)
    single = torch.load(one.run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ddp["step"] == single["step"] == 3
    for k, v in single["model"].items():
        assert torch.allclose(ddp["model"][k], v, rtol=1e-5, atol=1e-6), k
    seed_everything(5)
    small = Config(model=base["model"], window=16, hidden=8, layers=2)
    start = model_for(small, len(single["feature_names"])).state_dict()
    assert not any(torch.equal(start[k], v) for k, v in ddp["model"].items() if v.dim() >= 2)  # it did train

    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == [1, 2, 3]  # rank 0 alone writes
    one_rows = [json.loads(line) for line in (one.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = lambda rs: [r for r in rs if r["kind"] == "step"]  # (then the one validation of a run ended mid-epoch)
    for a, b in zip(steps(rows), steps(one_rows), strict=True):  # the loss and the sample count are global
        assert a["samples"] == b["samples"] and abs(a["loss"] - b["loss"]) < 1e-5
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 8
    # samples/s counts both ranks; the peak is one device's, so the MFU is each rank's share over it; dense, a rank's
    # chunks a second (micro-batches x chunks) x a chunk's FLOPs, every row computed whether its target is known
    if case == "dense":
        from tradelib.train.models import training_flops_per_item

        chunk = training_flops_per_item(model_for(two, len(single["feature_names"])), True, two.dense_chunk)
        assert summary["mfu"] == pytest.approx(summary["it_per_s"] * two.batch_size * chunk / 1e12)
    else:
        assert summary["mfu"] == pytest.approx(summary["samples_per_s"] / 2 * summary["flops_per_sample"] / 1e12)


@pytest.mark.slow
def test_repeated_two_rank_torchrun_launches_all_exit_0(outputs):
    """The issue: 2 of 8 two-rank runs trained, printed "done", then one rank aborted at exit ("terminate called
    without an active exception") and torchrun failed the job. Every rank now meets the others at a barrier,
    stops its threads and leaves the process group before exiting. Ten launches, two at a time (contention is
    what exposed the race), every one exits 0 with one "done"."""
    params = dict(synth_symbols=2, synth_bars=300, window=8, hidden=4, layers=1, model="mlp", device="cpu",
                  compile="off", batch_size=8, max_steps=2, log_every=1)
    dataset.prepare(Config(**params), verbose=False)  # the ranks find the cache
    args = [a for k, v in params.items() for a in ("-p", k, str(v))]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for pair in range(5):
        procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                   "2", "-m", "tradelib", "train", *args, "-p", "run_id", f"launch-{pair}-{i}"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(2)]
        for p in procs:
            out = p.communicate(timeout=300)[0]
            assert p.returncode == 0, out[-3000:]
            assert out.count("done: ") == 1 and "terminate called" not in out
    assert len(list(outputs.glob("launch-*/summary.json"))) == 10


def run_two_ranks(script: str, params: dict, out: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`script` run by torchrun on two CPU ranks with `params` as its argument (it writes rank<r>.json into OUT);
    returns the finished process and what each rank wrote."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OUT=str(out))
    path = out / "script.py"
    path.write_text(script)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(path), json.dumps(params)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


SHARDED = """
import json, os, sys
import numpy as np
from tradelib.config import Config
from tradelib.train.run import TrainingRun
from tradelib.distributed import cleanup_distributed

run = TrainingRun(Config(**json.loads(sys.argv[1])), progress=False)
src, seen = run.trainer.source, []
fetch = src.fetch
src.fetch = lambda ids: seen.append(ids[ids < src.n].cpu().numpy().copy()) or fetch(ids)
summary = run.fit()
ends = run.windows.ends(0).cpu().numpy()
out = {"rows": (run.row0 + ends[np.concatenate(seen)]).tolist(), "lo": run.row0, "n": len(run.fs),
       "steps": run.step, "val_loss": run.best_val, "summary": sorted(summary)}
json.dump(out, open(os.path.join(os.environ["OUT"], f"rank{run.rank}.json"), "w"))
cleanup_distributed()
"""


@pytest.mark.slow
@pytest.mark.parametrize("path", ["resident", "streamed"])
def test_sharded_ranks_visit_every_window_of_an_epoch_once(outputs, tmp_path, path):
    """shard_data: 2 gloo ranks, each mapping only its own run of whole-symbol shards of the cache (streamed, too,
    with a budget below its share). Over one epoch the windows the two ranks fetch are, together, the
    single-process epoch's windows, each once; the ranks take the same steps, agree on the validation loss,
    and rank 0 writes the predictions of every test window."""
    params = dict(synth_symbols=4, synth_bars=1000, window=16, hidden=8, layers=1, model="mlp", device="cpu",
                  compile="off", batch_size=16, eval_batch_size=16, epochs=1, log_every=5, shard_rows=1000,
                  shard_data=True, run_id="sharded", stream_block_rows=200)
    fs = dataset.prepare(Config(**params), verbose=False)
    if path == "streamed":
        params["device_memory_budget"] = 0.35 * stream.resident_bytes(fs, Config(**params))  # 70% of a share
    res, ranks = run_two_ranks(SHARDED, params, tmp_path)
    assert ("data streamed to cpu (the data" in res.stdout) == (path == "streamed")  # the budget chose
    rows = np.concatenate([r["rows"] for r in ranks])
    np.testing.assert_array_equal(np.sort(rows), window_ends(fs, 0, 16))  # all of them, each once
    assert ranks[0]["lo"] == 0 and ranks[1]["lo"] == ranks[0]["n"] and ranks[1]["lo"] + ranks[1]["n"] == len(fs)
    assert ranks[0]["steps"] == ranks[1]["steps"] and ranks[0]["val_loss"] == ranks[1]["val_loss"]
    summary = json.loads((outputs / "sharded" / "summary.json").read_text())
    assert summary["shard_data"] and summary["test_windows"] == len(window_ends(fs, 2, 16))
    predictions = pd.read_parquet(outputs / "sharded" / "predictions.parquet")
    np.testing.assert_array_equal(predictions["row"], window_ends(fs, 2, 16))


STOPPED = """
import json, os, signal, sys
from tradelib.config import Config
from tradelib.distributed import cleanup_distributed
from tradelib.train.run import TrainingRun
from tradelib.train.stops import StopRequested

run = TrainingRun(Config(**json.loads(sys.argv[1])), progress=False)
run.on_step = lambda t: os.kill(os.getpid(), signal.SIGTERM) if t.rank == 1 and t.step == 3 else None
try:
    run.fit()
    stopped = None
except StopRequested as exc:
    stopped = exc.signum
json.dump({"step": run.step, "signal": stopped}, open(os.path.join(os.environ["OUT"], f"rank{run.rank}.json"), "w"))
cleanup_distributed()
"""


@pytest.mark.slow
def test_a_sigterm_on_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(outputs, tmp_path):
    """Under DDP the ranks agree at the next log point: rank 1 alone gets SIGTERM after step 3; with a log point
    every 2 steps all ranks stop after step 4, and rank 0 writes that step's checkpoint."""
    params = {**BASE, "model": "mlp", "batch_size": 4, "max_steps": 0, "log_every": 2, "checkpoint_every": 0,
              "run_id": "ddp-stopped"}
    res, ranks = run_two_ranks(STOPPED, params, tmp_path)
    assert ranks == [{"step": 4, "signal": 15}] * 2
    assert "stopped by SIGTERM at step 4" in res.stdout
    assert "Resume: torchrun --standalone --nproc_per_node 2 -m tradelib train " in res.stdout  # as many processes
    assert (outputs / "ddp-stopped" / "checkpoints" / "step-4.pt").exists()


@pytest.mark.slow
def test_a_launch_whose_ranks_all_fail_at_setup_leaves_no_run_folder(outputs, tmp_path, capfd):
    """Every rank stops at the data (a file that is not OHLCV) before writing anything: the launch says so and
    removes the folder it made for its launch.yaml; a run folder that was there before stays."""
    from tradelib.distributed import LaunchFailed

    bad = tmp_path / "prices.csv"
    bad.write_text("when,what\n2024-01-01,1\n")
    cfg = Config(data_path=str(bad), window=8, hidden=4, layers=1, model="mlp", device="cpu", compile="off",
                 batch_size=8, max_steps=2, n_gpus=2, run_id="bad-launch")
    with pytest.raises(LaunchFailed, match="torchrun exited with code 1"):
        launch_distributed(cfg)
    assert str(bad) in capfd.readouterr().out  # the ranks' one-line data error, passed on
    assert not (outputs / "bad-launch").exists()
    (outputs / "kept").mkdir()  # empty, but the researcher's: not the launch's to remove
    with pytest.raises(LaunchFailed):
        launch_distributed(cfg.replace(run_id="kept"))
    assert (outputs / "kept" / "launch.yaml").exists()


SIBLINGS = """
import json, os, sys, time
from pathlib import Path
from tradelib import hardware
from tradelib.config import Config
from tradelib.distributed import cleanup_distributed
from tradelib.train.run import TrainingRun

def ranks_cpu_seconds():  # the machine as if it ran nothing but this job's ranks (torchrun's children)
    agent, total = str(os.getppid()), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == agent:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")

def spin(run):
    if run.rank == 1 and run.step == 1:
        t0 = time.process_time()
        while time.process_time() - t0 < 0.6:
            pass

hardware.busy_cpu_seconds = ranks_cpu_seconds
run = TrainingRun(Config(**json.loads(sys.argv[1])), progress=False)
run.on_step = spin
run.fit()
json.dump({"other_cores": run.other_cores},
          open(os.path.join(os.environ["OUT"], f"rank{run.rank}.json"), "w"))
cleanup_distributed()
"""


@pytest.mark.slow
def test_the_other_ranks_of_a_cpu_run_are_not_counted_as_load_from_other_processes(outputs, tmp_path):
    """Rank 0 flags samples/s timed while other processes kept the cores busy (`other_cores`, `busy_note`): the
    machine's busy CPU time less its own and its children's. The other ranks are torchrun's children, not rank
    0's, so their training counted as load from elsewhere and every CPU run of several processes was flagged busy
    (2 ranks on 2 idle cores: about 1 core 'elsewhere'). On a machine that runs nothing but the two ranks (its busy
    time faked as theirs), with rank 1 spinning 0.6 CPU seconds more, rank 0 now sees no other load."""
    params = {**BASE, "model": "mlp", "batch_size": 4, "max_steps": 4, "run_id": "ddp-siblings"}
    _, ranks = run_two_ranks(SIBLINGS, params, tmp_path)
    assert ranks[0]["other_cores"] < 0.1, ranks  # none but the rounding of /proc's ticks of 10 ms
    summary = json.loads((outputs / "ddp-siblings" / "summary.json").read_text())
    assert summary["busy_note"] is None and summary["other_cores"] == ranks[0]["other_cores"]
