"""File -> clean frame, this checkout against an older commit, side by side: each `load_ohlcv` + `clean_ohlcv` of
one file in a fresh process (`tradelib.perf.databench.ingest_once`, as the features bench times it), the two in
turn, `--rounds` times.

    python tools/ingest_compare.py outputs/bench/prices.csv --old 9cbeb95 --rounds 5

Prints one JSON line per process (read and total seconds, CPU seconds, peak RSS over the imports, the load
average, the module that read it) and the medians with the per-round ratios. The older commit's `tradelib/` is
extracted with `git archive` into a temporary folder and imported from there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tradelib.perf.databench import commit_tree, ingest_once, side_by_side  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path, help="a CSV or Parquet file of OHLCV rows")
    ap.add_argument("--old", required=True, help="the commit to compare with (e.g. 9cbeb95)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = commit_tree(args.old, Path(tmp))
        runs = side_by_side(lambda tree: ingest_once(args.file, tree), old, args.rounds)
    med = {k: statistics.median(r["rows_per_s"] for r in v) for k, v in runs.items()}
    pairs = [n["rows_per_s"] / o["rows_per_s"] for o, n in zip(runs["old"], runs["new"])]
    print(f"old {args.old}: {med['old'] / 1e6:.2f}M rows/s, new: {med['new'] / 1e6:.2f}M rows/s (medians); "
          f"ratio of the medians {med['new'] / med['old']:.2f}x, per round {min(pairs):.2f}-{max(pairs):.2f}x")


if __name__ == "__main__":
    main()
