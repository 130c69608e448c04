"""01_data_cleaning's steps on the data of `-f`, this checkout against an older commit, side by side: each run in
a fresh process (the raw frame read, the feature cache loaded, the feature table, the raw-vs-features figure
drawn and saved), the two in turn, `--rounds` times. The cache is built once first, so both load it.

    python tools/notebook01_time.py -f params/features-bench.yaml --old 94c6aad --rounds 3

Prints one JSON line per process (seconds per step, the load average) and the medians. The older commit's
`tradelib/` is extracted with `git archive` into a temporary folder and imported from there.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tradelib.config import load_config  # noqa: E402
from tradelib.data import dataset  # noqa: E402
from tradelib.perf.databench import commit_tree, compare_parser, fresh_json, side_by_side  # noqa: E402

STEPS = ("read", "cache", "feature_table", "figure")
MEASURE = """
import json, os, sys, time
from pathlib import Path
import tradelib
from tradelib.config import load_config
from tradelib.data import dataset
from tradelib.report import explore, plots
assert Path(tradelib.__file__).is_relative_to(os.getcwd()), tradelib.__file__  # the tree fresh_json runs in
cfg = load_config(sys.argv[1:-1])
out, t = {}, time.perf_counter()
raw = dataset.load_raw(cfg)
out["read"] = time.perf_counter() - t
t = time.perf_counter()
fs = dataset.prepare(cfg, verbose=False)
out["cache"] = time.perf_counter() - t
t = time.perf_counter()
explore.feature_table(fs)
out["feature_table"] = time.perf_counter() - t
t = time.perf_counter()
plots.plot_raw_vs_features(raw, fs, save_to=Path(sys.argv[-1]))
out["figure"] = time.perf_counter() - t
print(json.dumps({**out, "rows": len(raw), "load": os.getloadavg()[0]}))
"""


def main() -> None:
    ap = compare_parser(__doc__)
    args = ap.parse_args()
    files = [str(Path(f).resolve()) for f in args.files]
    dataset.prepare(load_config(files), verbose=True)  # built once: both trees load the same cache
    with tempfile.TemporaryDirectory() as tmp:
        old = commit_tree(args.old, Path(tmp) / "old")
        out = side_by_side(lambda tree: fresh_json(MEASURE, [*files, str(Path(tmp) / "figure.png")], tree,
                                                   "01's steps"), old, args.rounds)
    for k, v in out.items():
        med = {s: statistics.median(r[s] for r in v) for s in STEPS}
        print(f"{k}: " + ", ".join(f"{s} {med[s]:.2f} s" for s in STEPS) + f" (medians of {len(v)}, "
              f"{v[0]['rows']:,} rows)")


if __name__ == "__main__":
    main()
