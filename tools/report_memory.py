"""The report's memory on a large feature cache, this checkout against an older commit, side by side: each
`load_featureset` + `load_inputs` (what 04_report computes) in a fresh process under tracemalloc, the two in turn,
`--rounds` times, on one run folder over the cache of `-f` (its test rows predicted by the target plus noise).

    python tools/report_memory.py -f params/full.yaml --old 601b05c --rounds 3

Prints one JSON line per process (seconds, the traced peak of Python and numpy allocations, the peak RSS over the
imports, which counts mapped cache pages too, the ridge baseline's IC, the load average) and the medians. The
older commit's `tradelib/` is extracted with `git archive` into a temporary folder and imported from there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tradelib import runs  # noqa: E402
from tradelib.config import load_config  # noqa: E402
from tradelib.data import dataset  # noqa: E402

MEASURE = """
import json, os, resource, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import tradelib
from tradelib.report.inputs import ReportSettings, load_featureset, load_inputs
assert Path(tradelib.__file__).is_relative_to(sys.argv[1]), tradelib.__file__
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
t = time.perf_counter()
fs = load_featureset(Path(sys.argv[2]))
inputs = load_inputs(Path(sys.argv[2]), ReportSettings.of(), fs=fs)
seconds = time.perf_counter() - t
peak = tracemalloc.get_traced_memory()[1]
p = inputs.predictors.set_index("predictor")
print(json.dumps({"seconds": seconds, "traced_peak_gb": peak / 1e9, "X_gb": fs.X.nbytes / 1e9,
                  "rss_growth_gb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1e6,
                  "ridge_ic": float(p.loc["ridge", "cross_sectional_ic"]), "load": os.getloadavg()[0]}))
"""


def make_run(folder: Path, files: list[str]) -> None:
    """A run folder as training writes it over `files`' feature cache: the test rows with a target, predicted
    by that target plus noise."""
    cfg = load_config(files)
    fs = dataset.prepare(cfg, verbose=False, mmap=True)
    rows = np.flatnonzero((np.asarray(fs.split) == 2) & np.isfinite(fs.y))
    noise = np.random.default_rng(0).standard_normal(len(rows))
    runs.write_predictions(folder, fs, rows, np.asarray(fs.y[rows], dtype=np.float64) + noise)
    runs.write_summary(folder, {"run_id": folder.name, "config": cfg.to_dict(), "test_windows": len(rows),
                                "cache_dir": fs.meta["cache_dir"]})
    print(f"run folder {folder}: {len(rows):,} predictions over {fs.meta['cache_dir']} "
          f"(X {fs.X.nbytes / 1e9:.2f} GB)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-f", dest="files", action="append", default=[], help="parameter file(s) naming the data")
    ap.add_argument("--old", required=True, help="the commit to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        make_run(run, args.files)
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old, "tradelib"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        out: dict[str, list[dict]] = {"old": [], "new": []}
        for _ in range(args.rounds):
            for name, tree in (("old", old), ("new", ROOT)):
                done = subprocess.run([sys.executable, "-c", MEASURE, str(tree), str(run)], capture_output=True,
                                      text=True, check=True)
                out[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps({"which": name, **out[name][-1]}), flush=True)
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("seconds", "traced_peak_gb", "rss_growth_gb")}
           for k, v in out.items()}
    x = out["new"][0]["X_gb"]
    for k in ("old", "new"):
        m = med[k]
        print(f"{k}: traced peak {m['traced_peak_gb']:.3f} GB ({m['traced_peak_gb'] / x:.2f}x X), RSS growth "
              f"{m['rss_growth_gb']:.3f} GB, {m['seconds']:.1f} s (medians)")


if __name__ == "__main__":
    main()
