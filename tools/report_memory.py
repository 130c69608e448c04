"""The report's memory on a large feature cache, this checkout against an older commit, side by side: each
`load_featureset` + `load_inputs` (what 04_report computes) in a fresh process under tracemalloc, the two in turn,
`--rounds` times, on one run folder over the cache of `-f` (its test rows predicted by the target plus noise).

    python tools/report_memory.py -f params/full.yaml --old 601b05c --rounds 3
    python tools/report_memory.py -f params/full.yaml --old f888d8d --rounds 3 --headline-only

`--headline-only`: `load_inputs(headline_only=True)`, what a sweep's table and a comparison compute of a run.

Prints one JSON line per process (seconds, the traced peak of Python and numpy allocations, the peak RSS over the
imports, which counts mapped cache pages too, the ridge baseline's IC, the load average) and the medians. The
older commit's `tradelib/` is extracted with `git archive` into a temporary folder and imported from there.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tradelib import runs  # noqa: E402
from tradelib.config import load_config  # noqa: E402
from tradelib.data import dataset  # noqa: E402
from tradelib.perf.databench import commit_tree, compare_parser, fresh_json, side_by_side  # noqa: E402

MEASURE = """
import json, os, resource, sys, time, tracemalloc
from pathlib import Path
import tradelib
from tradelib.report.inputs import ReportSettings, load_featureset, load_inputs
assert Path(tradelib.__file__).is_relative_to(os.getcwd()), tradelib.__file__  # the tree fresh_json runs in
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
t = time.perf_counter()
fs = load_featureset(Path(sys.argv[1]))
inputs = load_inputs(Path(sys.argv[1]), ReportSettings.of(), fs=fs, headline_only=sys.argv[2] == "headline")
seconds = time.perf_counter() - t
peak = tracemalloc.get_traced_memory()[1]
p = inputs.predictors.set_index("predictor")
print(json.dumps({"seconds": seconds, "traced_peak_gb": peak / 1e9, "X_gb": fs.X.nbytes / 1e9,
                  "rss_growth_gb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1e6,
                  "ridge_ic": float(p.loc["ridge", "cross_sectional_ic"]) if "ridge" in p.index else None,
                  "model_ic": float(p.loc["model", "cross_sectional_ic"]), "load": os.getloadavg()[0]}))
"""


def make_run(folder: Path, files: list[str]) -> Path:
    """A run folder (made here) as training writes it over `files`' feature cache: the test rows with a target,
    predicted by that target plus noise."""
    folder.mkdir(parents=True)
    cfg = load_config(files)
    fs = dataset.prepare(cfg, verbose=False, mmap=True)
    rows = np.flatnonzero((np.asarray(fs.split) == 2) & np.isfinite(fs.y))
    noise = np.random.default_rng(0).standard_normal(len(rows))
    runs.write_predictions(folder, fs, rows, np.asarray(fs.y[rows], dtype=np.float64) + noise)
    runs.write_summary(folder, {"run_id": folder.name, "config": cfg.to_dict(), "test_windows": len(rows),
                                "cache_dir": fs.meta["cache_dir"]})
    print(f"run folder {folder}: {len(rows):,} predictions over {fs.meta['cache_dir']} "
          f"(X {fs.X.nbytes / 1e9:.2f} GB)", flush=True)
    return folder


def main() -> None:
    ap = compare_parser(__doc__)
    ap.add_argument("--headline-only", action="store_true", help="what a sweep's table computes of a run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", args.files)
        old = commit_tree(args.old, Path(tmp) / "old")
        what = "headline" if args.headline_only else "all"
        out = side_by_side(lambda tree: fresh_json(MEASURE, [str(run), what], tree, f"the report of {run}"), old,
                           args.rounds)
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("seconds", "traced_peak_gb", "rss_growth_gb")}
           for k, v in out.items()}
    x = out["new"][0]["X_gb"]
    for k in ("old", "new"):
        m = med[k]
        print(f"{k}: traced peak {m['traced_peak_gb']:.3f} GB ({m['traced_peak_gb'] / x:.2f}x X), RSS growth "
              f"{m['rss_growth_gb']:.3f} GB, {m['seconds']:.1f} s (medians)")


if __name__ == "__main__":
    main()
