"""The data path in one place: raw frame -> clean frame -> features, cached.

`prepare(cfg)` is what training, the bench and the notebooks call: the cached FeatureSet for this data,
these feature parameters and this code, built when missing. `load_raw` and `build` are its two halves, for
looking at the raw data (01) or building without the cache (tests, the data bench).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from tradelib import cache, data, synth
from tradelib.features import FeatureSet, build_features


def load_raw(cfg) -> pd.DataFrame:
    """The raw frame, untouched: the generator's output or the researcher's files as read."""
    if cache.is_synthetic(cfg.data_path):
        return synth.generate_market(**cache.synth_params(cfg))
    return data.load_ohlcv(Path(cfg.data_path).expanduser(), date_format=cfg.date_format)


def build(cfg, raw: pd.DataFrame | None = None, fold: int = 0) -> tuple[FeatureSet, data.QualityReport]:
    """Raw -> clean -> features (of walk-forward fold `fold`), no cache involved. A symbol too short for one
    window and its target is dropped by cleaning (rule too_short). Data that leaves nothing to learn from is a
    DataError naming the source and the rules that dropped its rows."""
    raw = load_raw(cfg) if raw is None else raw
    source = "synthetic" if cache.is_synthetic(cfg.data_path) else str(cfg.data_path)
    clean, report = data.clean_ohlcv(
        raw, source, min_rows=cfg.window + cfg.horizon + 1, max_gap_bars=cfg.max_gap_bars,
        spike_sigmas=cfg.spike_sigmas, keep=("oracle",) if "oracle" in raw else (),
    )
    dropped = ", ".join(f"{rule} {n:,}" for rule, n in report.totals().items()
                        if any(c["rule"] == rule and c["action"] == "dropped" for c in report.counts))
    if report.rows_kept == 0:
        raise data.DataError(f"{source}: no rows left after cleaning: {report.rows_in:,} rows in, dropped by "
                             f"{dropped or 'no rule'} (window + horizon + 1 = {cfg.window + cfg.horizon + 1} rows "
                             f"per symbol are needed; docs/data.md lists the rules)")
    try:
        fs = build_features(clean, cfg, quality=report.to_dict(), fold=fold)
    except ValueError as exc:  # too little data for a split or a bar size
        raise data.DataError(f"{source}: {exc} ({report.rows_kept:,} of {report.rows_in:,} rows kept after "
                             f"cleaning; dropped: {dropped or 'none'})") from None
    return fs, report


def _cached(folder: Path, source: str, verbose: bool) -> FeatureSet | None:
    """The cache in `folder` if it is there and intact; None when missing, or damaged (said: it is rebuilt)."""
    if not cache.has(folder):
        return None
    try:
        fs = cache.load(folder)
    except cache.CacheError as exc:
        print(f"{exc.file}: {exc.why}: the feature cache is damaged; rebuilding it from {source}", flush=True)
        return None
    if verbose:
        print(f"feature cache hit: {folder}")
    return fs


def prepare(cfg, force: bool | None = None, verbose: bool = True, fold: int = 0) -> FeatureSet:
    """The cached FeatureSet for this data, feature parameters and code (and walk-forward fold `fold` when
    `folds` > 1: each fold is scaled on its own training rows); built when missing or damaged (or when
    `force`, which defaults to cfg.force_recreate). One process builds a key at a time: another one waits for
    it, then loads its cache."""
    force = cfg.force_recreate if force is None else force
    key = cache.cache_key(cfg, fold)
    folder = cache.folder_for(key)
    source = "the synthetic market" if cache.is_synthetic(cfg.data_path) else str(cfg.data_path)
    fs = None if force else _cached(folder, source, verbose)
    if fs is None:
        with cache.build_lock(folder, verbose):
            fs = None if force else _cached(folder, source, verbose)  # built by the process we waited for
            if fs is None:
                t0 = time.perf_counter()
                fs, report = build(cfg, fold=fold)
                fs.meta["cache_key"] = key
                cache.save(fs, folder)
                if verbose:
                    print(report.summary())
                    print(f"features built in {time.perf_counter() - t0:.1f}s, cached at {folder}")
    fs.meta["cache_key"] = key
    fs.meta["cache_dir"] = str(folder)
    return fs
