"""`tradelib bench`: the seed's DataLoader pipeline, the device loader and dense chunks, side by side, each with
the step's kernels launched one by one (eager) and, on CUDA, replayed as the step graph (graph), so the loader's
gain and the graph's are seen apart.

Same data, same model, same global batch, one process, measured by measure.py (interleaved repetitions,
untimed warm-up, medians). Every knob is a Config parameter (-f FILE, -p NAME VALUE): the models measured
(`bench_models`), the loaders, steps, warm-up, repeats, the batch and the data.

    tradelib bench -p device cuda -p batch_size 1024 -p repeats 3 [--json FILE]
    tradelib bench --stream          # resident against streamed data, same data and model
    tradelib bench --features        # the data side: raw -> clean -> features, rows/s and memory
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tradelib.config import Config, add_param_args, load_config
from tradelib.hardware import pick_device
from tradelib.paths import outputs_dir, write_bytes
from tradelib.perf.measure import format_table, make_setups, measure, split_list, summary_lines


def run_bench(cfg: Config, json_path: str | Path | None = None, verbose: bool = True, modes: bool = True
              ) -> list[dict]:
    """Measure every (model spec, loader, step mode of graph_modes) configuration of `cfg` on the same data and
    global batch (`modes=False`: the config's own step, labelled NAME/LOADER); print a table and write the
    records as JSON (default outputs/bench/bench-<timestamp>.json). Returns the records."""
    cfg = cfg.replace(device=str(pick_device(cfg.device, verbose=verbose)))
    loaders = split_list(cfg.loaders)
    steps = split_list(cfg.graph_modes) if modes else None
    setups = [s for spec in cfg.bench_models.split() for s in make_setups(cfg, spec, loaders, verbose=verbose,
                                                                            modes=steps)]
    if not setups:
        raise ValueError("nothing to measure: no (model, loader) configuration applies")
    records = measure(setups, steps=cfg.steps, warmup=cfg.warmup, repeats=cfg.repeats, verbose=verbose,
                      max_other_load=cfg.max_other_load)
    if verbose:
        print("\n" + format_table(records) + "\n" + "\n".join(summary_lines(records)))
    write_json(records, json_path, "bench", verbose)
    return records


def write_json(result, json_path: str | Path | None, kind: str, verbose: bool = True) -> None:
    """The bench's result as JSON, to `json_path` or by default outputs/bench/<kind>-<timestamp>.json."""
    path = Path(json_path) if json_path else outputs_dir() / "bench" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(json.dumps(result, indent=1, default=str).encode(), path)
    if verbose:
        print(f"wrote {path}")


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default=None, help="output JSON (default outputs/bench/<kind>-<timestamp>.json)")
    p.add_argument("--stream", action="store_true",
                   help="resident against streamed data (a budget of stream_budget of the data): samples/s and the "
                        "streamed path's data-wait share, per model of bench_models")
    p.add_argument("--features", action="store_true",
                   help="measure the data side instead: raw -> clean -> features on synth_symbols x synth_bars "
                        "(use -p synth_symbols 100 -p synth_bars 100000 for 10M rows), its peak memory, and the "
                        "warm load of params/full.yaml's cache")
    add_param_args(p, ("data", "features", "model", "training", "system", "measure", "bench"))


def bench_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.files, [tuple(p) for p in args.params])
    if args.features:
        from tradelib.perf.databench import bench_data

        write_json(bench_data(cfg.synth_symbols, cfg.synth_bars, repeats=cfg.repeats, ingest=cfg.ingest_files),
                   args.json, "features")
    elif args.stream:  # resident against streamed, each with the config's own step
        run_bench(cfg.replace(loaders="device,stream"), args.json, modes=False)
    else:
        run_bench(cfg, args.json)
    return 0
