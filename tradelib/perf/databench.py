"""The data-side benchmark (`tradelib bench --features`): cleaning + features on 10M rows, peak
memory against the raw frame, reading the same rows from CSV and Parquet files to the clean frame, and the warm
load of a cached full-profile dataset."""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from tradelib.config import Config, load_config
from tradelib.data import cache, dataset, load, synth
from tradelib.paths import outputs_dir, repo_root


def bench_data(n_symbols: int = 100, n_bars: int = 100_000, repeats: int = 3, full_profile: bool = True,
               verbose: bool = True, ingest: bool = False) -> dict:
    """Rows/s of raw -> clean -> features (median of `repeats`), peak traced memory over the raw frame's
    size, (`ingest`) rows/s from a CSV and a Parquet file of the same rows to the clean frame, and the
    warm-cache load time of params/full.yaml (median of `repeats`). Every figure with the load average of the
    machine over the minute before it."""
    say = print if verbose else (lambda *a, **k: None)
    say(f"generating {n_symbols} x {n_bars:,} synthetic bars ...")
    raw = synth.generate_market(n_symbols=n_symbols, n_bars=n_bars, seed=1)
    raw_bytes = int(raw.memory_usage(deep=True).sum())
    cfg = Config()  # the default feature parameters; dataset.build is the path prepare() takes, minus the cache
    dataset.build(cfg, raw.head(50_000))  # warm-up: imports and first-call costs
    times = []
    for i in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fs = dataset.build(cfg, raw)[0]
        times.append(time.perf_counter() - t0)
        say(f"  run {i + 1}: {len(raw) / times[-1]:,.0f} rows/s")
        del fs
    gc.collect()
    tracemalloc.start()
    fs = dataset.build(cfg, raw)[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result = {
        "rows": len(raw), "symbols": n_symbols, "seconds_median": statistics.median(times),
        "rows_per_s": len(raw) / statistics.median(times), "rows_per_s_runs": [len(raw) / t for t in times],
        "raw_frame_bytes": raw_bytes, "peak_traced_bytes": int(peak), "peak_over_raw": peak / raw_bytes,
        "feature_rows": len(fs), "cores": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    del fs
    if ingest:
        result["ingest"] = ingest_rates(raw, repeats, say)
    del raw
    gc.collect()
    if full_profile:
        cfg = load_config([str(repo_root() / "params" / "full.yaml")])
        t0 = time.perf_counter()
        fs = dataset.prepare(cfg, verbose=False)
        result["full_build_s"] = time.perf_counter() - t0
        folder = fs.meta["cache_dir"]
        del fs
        result.update(full_cache_dir=folder, **warm_load(Path(folder), repeats))
    say(f"clean + features: {result['rows']:,} rows in {result['seconds_median']:.2f} s "
        f"= {result['rows_per_s']:,.0f} rows/s (median of {repeats}); peak memory {peak / 1e9:.2f} GB = "
        f"{result['peak_over_raw']:.2f} x the raw frame ({raw_bytes / 1e9:.2f} GB)")
    if full_profile:
        say(f"full.yaml cache: {result['full_rows']:,} rows, warm load {result['warm_load_s_median']:.2f} s "
            f"(median of {repeats}; load average {result['warm_load_load_avg_1min']:.1f})")
    if ingest:
        for kind, r in result["ingest"].items():
            say(f"{kind} file -> clean frame: {r['rows_per_s']:,.0f} rows/s (read {r['read_s']:.1f} s, clean "
                f"{r['clean_s']:.1f} s; {r['file_bytes'] / 1e9:.2f} GB file)")
    return result


def warm_load(folder: Path, repeats: int) -> dict:
    """The cache in `folder` loaded `repeats` times: its rows, the median seconds, and the load average of the
    minute before the last load."""
    loads = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fs = cache.load(folder)
        loads.append(time.perf_counter() - t0)
        n = len(fs)
        del fs
    return {"full_rows": n, "warm_load_s_median": statistics.median(loads),
            "warm_load_load_avg_1min": os.getloadavg()[0]}


# One read and clean of a file in a fresh process, as a notebook does it (reads repeated in the process that built
# the features are not what anyone runs, and there they varied 0.4-1.2 s from run to run). The flat layout is an
# older commit's, which tools/ingest_compare.py runs with this script.
INGEST_ONCE = r"""
import inspect, json, os, resource, sys, time
path = sys.argv[1]
try:
    from tradelib.data.load import load_ohlcv
    from tradelib.data.clean import clean_ohlcv
except ImportError:  # before tradelib/data became a package
    from tradelib.data import clean_ohlcv, load_ohlcv
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
base, load = rss(), os.getloadavg()[0]
c0, t0 = time.process_time(), time.perf_counter()
zone = {"data_timezone": "UTC"} if "data_timezone" in inspect.signature(load_ohlcv).parameters else {}  # (older)
raw = load_ohlcv(path, date_format="", **zone)
read, peak = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
clean_ohlcv(raw, path)
total = time.perf_counter() - t0
print(json.dumps({"module": load_ohlcv.__module__, "rows": len(raw), "read_s": read, "seconds": total,
                  "clean_s": total - read, "cpu_s": time.process_time() - c0, "read_peak_bytes": peak - base,
                  "rows_per_s": len(raw) / total, "load_avg_1min": load}))
"""


def fresh_json(script: str, args: list[str], tree: Path | None, what: str) -> dict:
    """`script` run in a fresh Python that imports tradelib from `tree` (default: this checkout), run in `tree`
    since `-c` puts the working folder first on the path; the JSON of its last line."""
    tree = tree or repo_root()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=tree, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{what} in a fresh process failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of the tools that time this checkout against an older commit over the data of parameter
    files: `-f FILE` (repeatable), `--old COMMIT`, `--rounds N` (3)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("-f", dest="files", action="append", default=[], help="parameter file(s) naming the data")
    ap.add_argument("--old", required=True, help="the commit to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    return ap


def side_by_side(measure: Callable[[Path | None], dict], old: Path, rounds: int) -> dict[str, list[dict]]:
    """`measure(tree)` under the older commit's tree (`commit_tree`) and this checkout's (None), in turn, `rounds`
    times: each result printed as a JSON line tagged with its side ("which": old or new), and returned by side.
    The loop of the tools that time a change against the code before it (tools/ingest_compare.py,
    report_memory.py, notebook01_time.py, report_figures_time.py)."""
    out: dict[str, list[dict]] = {"old": [], "new": []}
    for _ in range(rounds):
        for name, tree in (("old", old), ("new", None)):
            out[name].append(measure(tree))
            print(json.dumps({"which": name, **out[name][-1]}), flush=True)
    return out


def ingest_once(path: Path, tree: Path | None = None) -> dict:
    """`INGEST_ONCE` of `path` with the Config's default cleaning, in a fresh process (`fresh_json`)."""
    return fresh_json(INGEST_ONCE, [str(Path(path).resolve())], tree, f"reading {path}")


def commit_tree(commit: str, dest: Path) -> Path:
    """`commit`'s tradelib/ extracted into `dest` with `git archive`, for `fresh_json` (the tools that measure
    this checkout against an older commit side by side)."""
    archive = subprocess.run(["git", "-C", str(repo_root()), "archive", commit, "tradelib"], capture_output=True,
                             check=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def ingest_rates(raw, repeats: int, say) -> dict:
    """The raw rows written once as a CSV and a Parquet file (a temporary folder under outputs/bench), then read
    and cleaned `repeats` times, each in a fresh process (`ingest_once`): rows/s file -> clean frame (median),
    and the read and clean seconds of that run."""
    (outputs_dir() / "bench").mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="ingest-", dir=outputs_dir() / "bench"))
    out = {}
    try:
        frame = raw.drop(columns=[c for c in raw.columns if c not in load.COLUMNS])
        for kind, write in (("parquet", lambda p: frame.to_parquet(p, index=False)),
                            ("csv", lambda p: frame.to_csv(p, index=False))):
            path = folder / f"prices.{kind}"
            say(f"writing {len(frame):,} rows as {kind} ...")
            write(path)
            runs = sorted((ingest_once(path) for _ in range(repeats)), key=lambda r: r["seconds"])
            out[kind] = {**runs[len(runs) // 2], "file_bytes": path.stat().st_size}
            say(f"  {kind}: {out[kind]['rows_per_s']:,.0f} rows/s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out
