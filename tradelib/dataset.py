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
    return data.load_ohlcv(Path(cfg.data_path).expanduser())


def build(cfg, raw: pd.DataFrame | None = None) -> tuple[FeatureSet, data.QualityReport]:
    """Raw -> clean -> features, no cache involved. A symbol too short for one window and its target is
    dropped by cleaning (rule too_short)."""
    raw = load_raw(cfg) if raw is None else raw
    source = "synthetic" if cache.is_synthetic(cfg.data_path) else str(cfg.data_path)
    clean, report = data.clean_ohlcv(
        raw, source, min_rows=cfg.window + cfg.horizon + 1, max_gap_bars=cfg.max_gap_bars,
        spike_sigmas=cfg.spike_sigmas, keep=("oracle",) if "oracle" in raw else (),
    )
    return build_features(clean, cfg, quality=report.to_dict()), report


def prepare(cfg, force: bool | None = None, verbose: bool = True) -> FeatureSet:
    """The cached FeatureSet for this data, feature parameters and code; built when missing (or when
    `force`, which defaults to cfg.force_recreate)."""
    force = cfg.force_recreate if force is None else force
    key = cache.cache_key(cfg)
    folder = cache.folder_for(key)
    if cache.has(folder) and not force:
        fs = cache.load(folder)
        if verbose:
            print(f"feature cache hit: {folder}")
    else:
        t0 = time.perf_counter()
        fs, report = build(cfg)
        fs.meta["cache_key"] = key
        cache.save(fs, folder)
        if verbose:
            print(report.summary())
            print(f"features built in {time.perf_counter() - t0:.1f}s, cached at {folder}")
    fs.meta["cache_key"] = key
    fs.meta["cache_dir"] = str(folder)
    return fs
