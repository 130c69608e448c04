"""File -> clean frame, this checkout against an older commit, side by side: each `load_ohlcv` + `clean_ohlcv` of
one file in a fresh process (one read and clean, as a notebook or `prepare` does), the two in turn, `--rounds` times.

    python tools/ingest_compare.py outputs/bench/prices.csv --old 9cbeb95 --rounds 5

Prints one JSON line per process (read and total seconds, CPU seconds, peak RSS over the imports, the load
average) and the medians with the per-round ratios. The older commit's `tradelib/` is extracted with `git archive`
into a temporary folder; its modules are found whether they are the flat `tradelib.data` or the package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE = r"""
import json, os, resource, sys, time
path = sys.argv[1]
try:
    from tradelib.data.load import load_ohlcv
    from tradelib.data.clean import clean_ohlcv
except ImportError:  # before tradelib/data became a package
    from tradelib.data import clean_ohlcv, load_ohlcv
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
base, load = rss(), os.getloadavg()[0]
c0, t0 = time.process_time(), time.perf_counter()
raw = load_ohlcv(path, date_format="")  # (the default: ISO timestamps or epoch numbers)
read, peak = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
clean_ohlcv(raw, path)
total = time.perf_counter() - t0
print(json.dumps({"module": load_ohlcv.__module__, "rows": len(raw), "read_s": round(read, 2),
                  "total_s": round(total, 2), "cpu_s": round(time.process_time() - c0, 2),
                  "read_peak_gb": round((peak - base) / 1e9, 2),
                  "rows_per_s": len(raw) / total, "load": round(load, 2)}))
"""


def run_one(tree: Path, path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # and run in `tree`: `-c` puts the working folder first
    out = subprocess.run([sys.executable, "-c", ONE, str(path)], env=env, cwd=tree, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path, help="a CSV or Parquet file of OHLCV rows")
    ap.add_argument("--old", required=True, help="the commit to compare with (e.g. 9cbeb95)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old, "tradelib"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        for _ in range(args.rounds):
            for name, tree in (("old", Path(tmp)), ("new", ROOT)):
                runs[name].append(run_one(tree, args.file.resolve()))
                print(json.dumps({"which": name, **runs[name][-1]}), flush=True)
    med = {k: statistics.median(r["rows_per_s"] for r in v) for k, v in runs.items()}
    pairs = [n["rows_per_s"] / o["rows_per_s"] for o, n in zip(runs["old"], runs["new"])]
    print(f"old {args.old}: {med['old'] / 1e6:.2f}M rows/s, new: {med['new'] / 1e6:.2f}M rows/s (medians); "
          f"ratio of the medians {med['new'] / med['old']:.2f}x, per round {min(pairs):.2f}-{max(pairs):.2f}x")


if __name__ == "__main__":
    main()
