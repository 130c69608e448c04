"""`tradelib COMMAND` (or `python -m tradelib COMMAND`): prepare, train, pipeline, bench.

Bad input (a missing file, a column, a parameter) ends with one line naming the problem and exit code 2;
set TRADELIB_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from tradelib import bench
from tradelib.config import add_param_args, load_config


def cmd_prepare(args: argparse.Namespace) -> int:
    from tradelib.dataset import prepare

    overrides = [tuple(p) for p in args.params]
    if args.data:
        overrides.append(("data_path", args.data))
    if args.force_recreate:
        overrides.append(("force_recreate", "True"))
    fs = prepare(load_config(args.files, overrides))
    q = fs.meta.get("quality", {})
    print(f"{len(fs):,} feature rows x {fs.n_features} features; rows per split {fs.meta['rows_per_split']}; "
          f"rows in {q.get('rows_in', 0):,}, kept {q.get('rows_kept', 0):,}, dropped {q.get('rows_dropped', 0):,}")
    print(f"cache: {fs.meta['cache_dir']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tradelib.train import train_or_launch

    train_or_launch(load_config(args.files, [tuple(p) for p in args.params]))
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from tradelib.pipeline import run_pipeline

    paths = run_pipeline(args.files, [tuple(p) for p in args.params])
    print("\noutputs:")
    for name, path in paths.items():
        print(f"  {name:18s} {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tradelib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="clean the data, build and cache the features, print the quality summary")
    p.add_argument("--data", help="CSV/Parquet file or folder, or 'synthetic' (default: the data_path parameter)")
    p.add_argument("--force-recreate", action="store_true", help="rebuild the cache even if a valid one exists")
    add_param_args(p, ("data", "features"))
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one run (the function 03_train calls)")
    add_param_args(p, ("data", "features", "model", "training", "system"))
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pipeline", help="run notebooks 01-04 with papermill into outputs/<run_id>/, render the report")
    add_param_args(p, ("data", "features", "model", "training", "system", "measure", "profile", "report"))
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("bench", help="training throughput: seed-style DataLoader vs device loader vs dense")
    bench.add_bench_args(p)
    p.set_defaults(func=bench.bench_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tradelib.data import DataError
    from tradelib.pipeline import NotebookFailed
    from tradelib.train import TrainingDiverged

    try:
        return args.func(args)
    except (DataError, ValueError, FileNotFoundError, TrainingDiverged, NotebookFailed) as exc:
        if os.environ.get("TRADELIB_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, (TrainingDiverged, NotebookFailed)) else 2
