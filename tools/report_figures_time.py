"""04_report's figures on a large run folder, this checkout against an older commit, side by side: each side in a
fresh process loads the report's inputs (untimed) and draws every figure (`figures.make_figures`), each `plots`
function timed; the two in turn, `--rounds` times, on one run folder over the cache of `-f` (tools/report_memory.py's:
its test rows predicted by the target plus noise).

    python tools/report_figures_time.py -f params/full.yaml --old eabe78f --rounds 3

Prints one JSON line per process (seconds per figure and in all, the load average) and the medians. The older
commit's `tradelib/` is extracted with `git archive` into a temporary folder and imported from there.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from report_memory import make_run  # noqa: E402

from tradelib.perf.databench import commit_tree, compare_parser, fresh_json, side_by_side  # noqa: E402

MEASURE = """
import json, os, sys, time
from pathlib import Path
import tradelib
from tradelib.report import figures, plots
from tradelib.report.inputs import ReportSettings, load_featureset, load_inputs
assert Path(tradelib.__file__).is_relative_to(os.getcwd()), tradelib.__file__  # the tree fresh_json runs in
run = Path(sys.argv[1])
inputs = load_inputs(run, ReportSettings.of(), fs=load_featureset(run))
seconds = {}
def timed(name, draw):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        out = draw(*args, **kwargs)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t
        return out
    return wrapper
for name in [n for n in dir(plots) if n.startswith("plot_")]:
    setattr(plots, name, timed(name[5:], getattr(plots, name)))
t = time.perf_counter()
figures.make_figures(inputs, run)
print(json.dumps({"all": time.perf_counter() - t, **seconds, "periods": len(inputs.ic_series),
                  "load": os.getloadavg()[0]}))
"""


def main() -> None:
    ap = compare_parser(__doc__)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", args.files)
        old = commit_tree(args.old, Path(tmp) / "old")
        out = side_by_side(lambda tree: fresh_json(MEASURE, [str(run)], tree, f"the figures of {run}"), old,
                           args.rounds)
    for k, v in out.items():
        keys = [f for f in v[0] if f not in ("periods", "load")]
        med = {f: statistics.median(r[f] for r in v) for f in keys}
        print(f"{k}: " + ", ".join(f"{f} {s:.2f} s" for f, s in med.items()) + f" (medians of {len(v)}, "
              f"{v[0]['periods']:,} IC periods)")


if __name__ == "__main__":
    main()
