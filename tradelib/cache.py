"""The feature cache: keyed on the raw data, the feature parameters and the feature code itself.

The seed's stale cache survived a fix to feature_engineering.py. Here the key hashes the source of the
modules that shape features (cleaning, features, the generator), so a code fix invalidates old caches by
itself; `force=True` (`prepare --force-recreate`) rebuilds anyway.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from tradelib import data, features, synth
from tradelib.config import Config
from tradelib.features import FeatureConfig, FeatureSet
from tradelib.paths import outputs_dir

CODE_MODULES = (data, features, synth)
CACHE_VERSION = 1


def code_fingerprint() -> str:
    h = hashlib.sha256()
    for mod in CODE_MODULES:
        h.update(inspect.getsource(mod).encode())
    return h.hexdigest()[:16]


def is_synthetic(data_path: str) -> bool:
    return str(data_path).strip().lower() in {"", "synthetic"}


def synth_params(cfg: Config) -> dict:
    return {"n_symbols": cfg.synth_symbols, "n_bars": cfg.synth_bars, "seed": cfg.data_seed}


def data_fingerprint(cfg: Config) -> str:
    """Content hash of the raw files the loader reads (name, size and bytes), or the generator's parameters."""
    if is_synthetic(cfg.data_path):
        return "synthetic:" + json.dumps(synth_params(cfg), sort_keys=True)
    path = Path(cfg.data_path).expanduser()
    if not path.exists():
        raise data.DataError(f"{path}: path does not exist")
    h = hashlib.sha256()
    for f in data.data_files(path)[0]:  # what load_ohlcv reads, nothing else
        h.update(f"{f.name}:{f.stat().st_size}".encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return "file:" + h.hexdigest()


def cache_key(cfg: Config) -> str:
    fcfg = FeatureConfig.from_config(cfg)
    parts = {"data": data_fingerprint(cfg), "features": asdict(fcfg), "code": code_fingerprint(), "v": CACHE_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def load_raw(cfg: Config) -> pd.DataFrame:
    """The raw frame, untouched: the generator's output or the researcher's files as read."""
    if is_synthetic(cfg.data_path):
        return synth.generate_market(**synth_params(cfg))
    return data.load_ohlcv(Path(cfg.data_path).expanduser())


def build(cfg: Config, raw: pd.DataFrame | None = None) -> tuple[FeatureSet, data.QualityReport]:
    """Raw -> clean -> features, no cache involved."""
    fcfg = FeatureConfig.from_config(cfg)
    raw = load_raw(cfg) if raw is None else raw
    source = "synthetic" if is_synthetic(cfg.data_path) else str(cfg.data_path)
    clean, report = data.clean_ohlcv(
        raw, source, min_rows=fcfg.window + fcfg.horizon + 1, max_gap_bars=fcfg.max_gap_bars,
        keep=("oracle",) if "oracle" in raw else (),
    )
    return features.build_features(clean, fcfg, quality=report.to_dict()), report


def save(fs: FeatureSet, folder: Path) -> None:
    """Arrays as .npy plus a JSON manifest, written to a temp folder then renamed (no half caches)."""
    tmp = folder.with_name(folder.name + f".tmp{time.time_ns()}")
    tmp.mkdir(parents=True)
    for name in FeatureSet.ARRAYS:
        np.save(tmp / f"{name}.npy", getattr(fs, name))
    manifest = {"symbols": fs.symbols, "feature_names": fs.feature_names, "meta": fs.meta, "rows": len(fs)}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def load(folder: Path) -> FeatureSet:
    manifest = json.loads((folder / "manifest.json").read_text())
    arrays = {name: np.load(folder / f"{name}.npy") for name in FeatureSet.ARRAYS}
    return FeatureSet(**arrays, symbols=manifest["symbols"], feature_names=manifest["feature_names"],
                      meta=manifest["meta"])


def prepare(cfg: Config, force: bool = False, verbose: bool = True) -> FeatureSet:
    """The cached FeatureSet for this data, feature parameters and code; built when missing."""
    key = cache_key(cfg)
    folder = outputs_dir() / "cache" / key
    if (folder / "manifest.json").exists() and not force:
        fs = load(folder)
        if verbose:
            print(f"feature cache hit: {folder}")
    else:
        t0 = time.perf_counter()
        fs, report = build(cfg)
        fs.meta["cache_key"] = key
        save(fs, folder)
        if verbose:
            print(report.summary())
            print(f"features built in {time.perf_counter() - t0:.1f}s, cached at {folder}")
    fs.meta["cache_key"] = key
    fs.meta["cache_dir"] = str(folder)
    return fs
