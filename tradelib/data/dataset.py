"""The data path in one place: raw frame -> clean frame -> features, cached.

`prepare(cfg)` is what training, the bench and the notebooks call: the cached FeatureSet for this data,
these feature parameters and this code, built when missing. `load_raw` and `build` are its two halves, for
looking at the raw data (01) or building without the cache (tests, the data bench); all build with
`shards.build`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from tradelib import distributed
from tradelib.data import cache, load, memory, quality, shards, synth
from tradelib.data.features import FeatureSet


def load_raw(cfg, processes: int = 1) -> pd.DataFrame:
    """The raw frame, untouched: the generator's output or the researcher's files as read; refused first where
    their feature build would not fit in memory (`check_memory`: 01 reads the frame, then builds beside it), by
    `processes` on this machine each reading it (`tradelib prepare` under torchrun)."""
    check_memory(cfg, processes=processes)
    if cache.is_synthetic(cfg.data_path):
        return synth.generate_market(**cache.synth_params(cfg))
    return load.load_ohlcv(Path(cfg.data_path).expanduser(), date_format=cfg.date_format,
                           data_timezone=cfg.data_timezone)


def check_memory(cfg, available: tuple[int, str] | None = None, processes: int = 1) -> None:
    """Refuse a build that would not fit in memory, before the data is read: the whole raw frame is held while it
    is cleaned and its features made (about `memory.BUILD_BYTES_PER_ROW` a row at the peak), and past the memory
    left the kernel ends the process with no word but "Killed", minutes in. The rows are estimated from the files
    (`load.estimated_rows`), or the generator's size; `available` = (bytes, what sets them), by default
    `memory.available_bytes()`; `processes` on this machine each build beside the others. Off with memory_check
    false (an estimate is of data shaped like the bench's)."""
    if not cfg.memory_check:
        return
    if cache.is_synthetic(cfg.data_path):
        rows, what = cfg.synth_symbols * cfg.synth_bars, "the synthetic market"
    else:
        files = load.data_files(Path(cfg.data_path).expanduser())[0]
        rows, what = load.estimated_rows(files), str(cfg.data_path)
        what += f" ({sum(f.stat().st_size for f in files) / 1e9:.2f} GB on disk)"
    need = memory.build_bytes(rows) * processes
    free, bound = available or memory.available_bytes()
    if need > free:
        each = (f", x {processes} processes on this machine: torchrun's ranks each read the data, where "
                f"`tradelib prepare` alone reads it once" if processes > 1 else "")
        raise load.DataError(f"{what}: about {rows:,} rows, whose feature build takes about {need / 1e9:.1f} GB "
                             f"({memory.BUILD_BYTES_PER_ROW} bytes a row, docs/data.md{each}), more than the "
                             f"{free / 1e9:.1f} GB this process can take ({bound}): the kernel would end it without a "
                             f"word. Build from fewer rows: fewer symbols (a folder: fewer files) or fewer years (cut "
                             f"the files), at most about {free // memory.BUILD_BYTES_PER_ROW // processes:,} rows; or "
                             f"free memory, "
                             f"or run on a machine with more (a lower shard_rows trims only the shards in flight: "
                             f"14% of the peak on 4M rows at 250,000); memory_check false tries anyway")


def _build(cfg, raw: pd.DataFrame, source: str, fold: int, *args, **kwargs
           ) -> tuple[FeatureSet | None, quality.QualityReport]:
    """`shards.build`, where too little data for a split or a bar size (a ValueError) or cleaning that left no
    row is a DataError naming the source (and the rules that dropped the rows)."""
    try:
        fs, report = shards.build(cfg, raw, source, fold, *args, **kwargs)
    except load.DataError:
        raise
    except ValueError as exc:
        raise load.DataError(f"{source}: {exc}") from None
    if report.rows_kept == 0:
        dropped = ", ".join(f"{rule} {n:,}" for rule, n in report.totals("dropped").items())
        raise load.DataError(f"{source}: no rows left after cleaning: {report.rows_in:,} rows in, dropped by "
                             f"{dropped or 'no rule'} (window + target_delay + horizon + 1 = {cfg.min_symbol_rows} "
                             f"rows per symbol are needed; docs/data.md lists the rules)")
    return fs, report


def build(cfg, raw: pd.DataFrame | None = None, fold: int = 0) -> tuple[FeatureSet, quality.QualityReport]:
    """Raw -> clean -> features (of walk-forward fold `fold`), no cache involved: `shards.build` in memory. A
    symbol too short for one window and its target is dropped by cleaning (rule too_short). Data that leaves
    nothing to learn from is a DataError naming the source and the rules that dropped its rows."""
    return _build(cfg, load_raw(cfg) if raw is None else raw, _source(cfg), fold)


def features_of(clean_frame: pd.DataFrame, cfg, fold: int = 0) -> FeatureSet:
    """The FeatureSet of a clean frame (`clean.clean_ohlcv`'s; sorted by symbol, timestamp) by the same stages,
    cleaning skipped: for looking at what a change to clean rows does to the features."""
    return shards.build(cfg, clean_frame, "<clean frame>", fold, cleaned=True)[0]


def _source(cfg) -> str:
    return "synthetic" if cache.is_synthetic(cfg.data_path) else str(cfg.data_path)


def _cached(folder: Path, source: str, verbose: bool, share: tuple[int, int] | None = None, mmap: bool = False
            ) -> FeatureSet | None:
    """The cache in `folder` if it is there and intact (`share`: rank, world: that rank's shards of it); None
    when missing, or damaged (said: it is rebuilt)."""
    if not cache.has(folder):
        return None
    try:
        fs = _load(folder, share, mmap)
    except cache.CacheError as exc:
        print(f"{exc.file}: {exc.why}: the feature cache is damaged; rebuilding it from {source}", flush=True)
        return None
    if verbose:
        print(f"feature cache hit: {folder}")
    return fs


def _load(folder: Path, share: tuple[int, int] | None, mmap: bool) -> FeatureSet:
    part = cache.rank_part(cache.shards_of(folder), *share) if share else None
    return cache.load(folder, part, mmap)


def prepare(cfg, force: bool | None = None, verbose: bool = True, share: tuple[int, int] | None = None,
            spread: bool = False, mmap: bool = False, fold: int = 0) -> FeatureSet:
    """The cached FeatureSet for this data, feature parameters and code (and walk-forward fold `fold` when
    `folds` > 1: each fold is scaled on its own training rows); built when missing or damaged (or when `force`,
    which defaults to cfg.force_recreate, and then from the start: not resumed from a failed build's shards), in
    shards on every core (shards.py). One process builds a key at a
    time: another one waits for it, then loads its cache. `share` = (rank, world): only that rank's run of whole
    shards (shard_data: a DDP rank's rows; `meta["rows"]`). `spread`: every torchrun process runs this together
    and builds its share of the shards (`tradelib prepare` under torchrun). `mmap`: the arrays mapped from the
    cache, not read into memory."""
    force = cfg.force_recreate if force is None else force
    key = cache.cache_key(cfg, fold)
    folder = cache.folder_for(key)
    source = "the synthetic market" if cache.is_synthetic(cfg.data_path) else str(cfg.data_path)
    lead = not spread or distributed.dist_env().rank == 0
    say = verbose and lead
    fs = None if force else _cached(folder, source, say, share, mmap)
    if distributed.broadcast_object(fs is None) if spread else fs is None:
        with cache.build_lock(folder, say) if lead else contextlib.nullcontext():
            fs = None if force else _cached(folder, source, say, share, mmap)  # built by the process we waited for
            if distributed.broadcast_object(fs is None) if spread else fs is None:
                if force and lead:  # afresh: shards a failed build left are what a forced rebuild may be meant to redo
                    shutil.rmtree(shards.work_folder(folder), ignore_errors=True)
                t0 = time.perf_counter()
                if say:
                    print(f"building the feature cache {folder} from {source}: reading the data", flush=True)
                here = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if spread else 1  # (torchrun sets it)
                report = _build(cfg, load_raw(cfg, here), _source(cfg), fold, folder, say, spread, started=t0)[1]
                fs = _load(folder, share, mmap)
                if say:
                    print(report.summary())
                    print(f"features built in {time.perf_counter() - t0:.1f}s, cached at {folder}")
    fs.meta["cache_key"] = key
    fs.meta["cache_dir"] = str(folder)
    return fs
