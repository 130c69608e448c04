"""Host time per fetch of the streamed training source, now against a git revision's, in one process.

    python tools/fetch_host_times.py [--before REV] [--batches N] [-f params/full.yaml] [-p NAME VALUE ...]

The data of the config files (default params/full.yaml) on the CPU, one torch thread, batch_size windows, the
streamed budget `bench --stream` uses (stream_budget of the data, at least 32 blocks). Fetched batch by batch,
interleaved: the resident source, REV's streamed source (its stream.py, read with `git show`), this checkout's.
Medians in us, after 20 untimed batches; the streamed sources' batches are checked equal. On a CPU a fetch holds
the gather itself (about 1 ms of it at batch 1024 on full.yaml); what a streamed source adds is its excess over
the resident one, beside which its own steps are timed one by one: this checkout's steady state (a batch inside
one run) and, for REV = 063ec7f (the source before issue 13's per-run index), that fetch's steps. On CUDA the
gather is a launch: `bench --stream` reports the host time per fetch there (`host us/fetch`).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tradelib import dataset
from tradelib import stream as new
from tradelib.config import load_config
from tradelib.models import model_for
from tradelib.sources import make_sources as resident_sources

T = time.perf_counter
WARM = 20


def load_stream_at(rev: str):
    """tradelib/stream.py as it was at `rev`, imported as module `stream_at_rev`."""
    text = subprocess.run(["git", "show", f"{rev}:tradelib/stream.py"], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / "stream_at_rev.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("stream_at_rev", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["stream_at_rev"] = mod
    spec.loader.exec_module(mod)
    return mod


def median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6


def old_steps(src, batches: list[torch.Tensor]) -> dict[str, list[float]]:
    """The steps of the fetch before the per-run index (063ec7f), timed one by one, batches within one group."""
    names = ("ids to numpy", "item and block tables", "groups used (dict.fromkeys)", "request the slot",
             "local rows (numpy)", "upload the local rows", "gather (rows, X, y)", "seq.index + prefetch")
    out: dict[str, list[float]] = {k: [] for k in names}
    for j, ids in enumerate(batches):
        t = [T()]
        i = ids.cpu().numpy()
        t.append(T())
        blocks = src.items.block[i]
        g = src.group_of_block[blocks]
        t.append(T())
        used = list(dict.fromkeys(g.tolist()))
        if len(used) > 1:
            src.fetch(ids)
            continue
        t.append(T())
        slot = src.stream.request(src.groups[used[0]])
        t.append(T())
        local = src.stream.local(src.items.anchors[i], blocks, slot)
        t.append(T())
        ends = src.stream.upload(local, src.ledger)
        t.append(T())
        rows = src.ledger.track(ends[:, None] + src.offsets)
        src.ledger.track(src.stream.X[rows]), src.ledger.track(src.stream.y[ends])
        t.append(T())
        if used[-1] in src.seq and (nxt := src.seq.index(used[-1]) + 1) < len(src.seq):
            src.stream.prefetch(src.groups[src.seq[nxt]], keep=src.groups[used[-1]])
        t.append(T())
        if j >= WARM:
            for k, a, b in zip(names, t, t[1:]):
                out[k].append(b - a)
    return out


def new_steps(src, batches: list[torch.Tensor]) -> dict[str, list[float]]:
    """This checkout's steady state (a batch inside one run), step by step; other batches fetched untimed."""
    names = ("ids to numpy", "check the ids against the order", "request the slot (resident: at once)",
             "slice of the run's device index", "gather (rows, X, y)")
    out: dict[str, list[float]] = {k: [] for k in names}
    for j, ids in enumerate(batches):
        p, r = src.pos, src.run
        if not src.run_start[r] < p or p + len(ids) > src.run_start[r + 1]:
            src.fetch(ids)
            continue
        t = [T()]
        i = ids.cpu().numpy()
        t.append(T())
        assert np.array_equal(i, src.order[p : p + len(i)])
        src.pos = p + len(i)
        t.append(T())
        slot = src.stream.request(src.groups[src.run_group[r]])
        t.append(T())
        _, ends, _ = src._run_index(r, slot)
        a = p - src.run_start[r]
        e = ends[a : a + len(i)]
        t.append(T())
        src._batch(e, None)
        t.append(T())
        if j >= WARM:
            for k, a, b in zip(names, t, t[1:]):
                out[k].append(b - a)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="063ec7f", help="git revision of the streamed source to compare")
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("-f", dest="files", action="append", default=None)
    ap.add_argument("-p", dest="params", nargs=2, action="append", default=[])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    old = load_stream_at(args.before)
    cfg = load_config(args.files or ["params/full.yaml"], [("device", "cpu"), *map(tuple, args.params)])
    fs = dataset.prepare(cfg, verbose=False)
    cpu = torch.device("cpu")
    scfg = cfg.replace(stream_block_rows=max(1, min(cfg.stream_block_rows, len(fs) // 32)), loader="stream",
                       eval_batch_size=cfg.batch_size)
    budget = max(scfg.stream_budget * new.resident_bytes(fs, scfg), new.min_budget(fs, scfg, scfg.window))
    scfg = scfg.replace(device_memory_budget=float(budget))
    model = model_for(cfg, fs.n_features)
    res = resident_sources(fs, model, cfg, cpu)[1]
    so, sn = old.make_sources(fs, model, scfg, cpu)[1], new.make_sources(fs, model, scfg, cpu)[1]
    print(f"{len(fs):,} rows, batch {cfg.batch_size}, {sn.plan.reason}")
    try:
        order, n = so.epoch(0, 0), args.batches + WARM
        assert torch.equal(order, sn.epoch(0, 0))
        so.begin(order)
        sn.begin(order)
        times: dict[str, list[float]] = {"resident": [], f"streamed at {args.before}": [], "streamed now": []}
        for ids, rids in zip(order.split(cfg.batch_size)[:n], res.epoch(0, 0).split(cfg.batch_size)[:n]):
            t0 = T()
            res.fetch(rids)
            t1 = T()
            a = so.fetch(ids)
            t2 = T()
            b = sn.fetch(ids)
            t3 = T()
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[k].append(v)
        med = {k: median_us(v[WARM:]) for k, v in times.items()}
        print(f"whole fetch, median us over {args.batches} batches: "
              + ", ".join(f"{k} {v:,.1f}" for k, v in med.items()))
        print("  excess over resident: " + ", ".join(f"{k} {v - med['resident']:+,.1f} us"
                                                      for k, v in med.items() if k != "resident"))
        rest = order.split(cfg.batch_size)[n : 2 * n]
        sn.begin(torch.cat(rest))
        for title, steps in ((f"steps of the fetch at {args.before}", old_steps(so, rest)),
                             ("steps of this checkout's fetch, steady state", new_steps(sn, rest))):
            print(f"{title}, median us:")
            for k, v in steps.items():
                print(f"  {k:40s} {median_us(v):8.1f}  (n={len(v)})")
            besides = sum(median_us(v) for k, v in steps.items() if "gather" not in k)
            print(f"  {'sum besides the gather':40s} {besides:8.1f}")
    finally:
        so.close()
        sn.close()


if __name__ == "__main__":
    main()
