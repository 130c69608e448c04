"""The feature cache: keyed on the raw data, the feature parameters and the feature code itself.

The seed's stale cache survived a fix to feature_engineering.py. Here the key hashes the source of the
modules that shape features (cleaning, features, the generator, the composition in dataset.py), so a code
fix invalidates old caches by itself; `force_recreate` rebuilds anyway. This module only stores and finds;
dataset.py builds.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import shutil
import time
from pathlib import Path

import numpy as np

from tradelib import data
from tradelib.features import FeatureSet, feature_params
from tradelib.paths import outputs_dir

CODE_MODULES = ("tradelib.data", "tradelib.features", "tradelib.sessions", "tradelib.synth", "tradelib.dataset")
CACHE_VERSION = 1


def code_fingerprint() -> str:
    h = hashlib.sha256()
    for name in CODE_MODULES:
        h.update(inspect.getsource(importlib.import_module(name)).encode())
    return h.hexdigest()[:16]


def is_synthetic(data_path: str) -> bool:
    return str(data_path).strip().lower() in {"", "synthetic"}


def synth_params(cfg) -> dict:
    return {"n_symbols": cfg.synth_symbols, "n_bars": cfg.synth_bars, "seed": cfg.data_seed}


def data_fingerprint(cfg) -> str:
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


def cache_key(cfg) -> str:
    parts = {"data": data_fingerprint(cfg), "features": feature_params(cfg), "code": code_fingerprint(),
             "v": CACHE_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def folder_for(key: str) -> Path:
    return outputs_dir() / "cache" / key


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


def has(folder: Path) -> bool:
    return (folder / "manifest.json").exists()
