"""The feature cache: keyed on the raw data, the feature parameters and the feature code itself.

The seed's stale cache survived a fix to feature_engineering.py. Here the key hashes the source of the
modules that shape features (cleaning, features, the generator, the composition in dataset.py) and of the few
functions of config.py that do (`CONFIG_CODE`), so a code fix invalidates old caches by itself; and the
numpy and pandas releases (major.minor) that compute them. `force_recreate` rebuilds anyway. This module only
stores and finds; dataset.py builds.

A cache is written to a temporary folder and renamed into place (a kill leaves no half cache), one builder
per key at a time (`build_lock`). Its manifest records each array's file size, dtype and shape, and per shard of
whole symbols (shards.py builds them) its rows, symbols and the CRC-32 of its rows of each array. `load` maps
the arrays from disk (nothing is read twice into memory) and checks them by those checksums, whole or a run of
shards (`part`: what one DDP rank reads), and that the features are finite and within +-clip: a damaged cache
is never used.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from tradelib.config import Config, settings_values
from tradelib.data.features import FEATURE_NAMES, FeatureSet, feature_params
from tradelib.data.load import UTC, DataError, data_files
from tradelib.paths import Busy, FileLock, is_synthetic, left_by_dead_writer, outputs_dir, writable_map, writing

CODE_MODULES = ("tradelib.data.load", "tradelib.data.clean", "tradelib.data.detect", "tradelib.data.quality",
                "tradelib.data.features", "tradelib.data.segments", "tradelib.data.sessions", "tradelib.data.synth",
                "tradelib.data.dataset", "tradelib.data.shards")
# config.py's code that shapes the features: the purge and the rows a symbol needs (target_reach, min_symbol_rows),
# and cleaning's settings taken from the Config; not the rest of it (a knob's help changes no feature)
CONFIG_CODE = (Config.target_reach.fget, Config.min_symbol_rows.fget, settings_values)
LIBRARIES = (np, pd, pa)  # what computes the features, and what reads the files: a new release may change a
# rolling sum or a parse
CACHE_VERSION = 4  # 2: checksums in the manifest; 3: shards; 4: checksums per shard only
SAY_HASH_BYTES = 1 << 30  # data files larger than this together: the key's hashing of them is said (tens of s)
SETTLED_NS = 2_000_000_000  # a hash is reused only for files last written this long before it began: file times
#   come from a coarse clock, so a write within its tick of the hash would leave the stamp as it was
_HASHED: dict[tuple, str] = {}  # this process's data hashes by file_stamps: a walk-forward's folds hash once


class CacheError(ValueError):
    """A damaged feature cache: names the file and what is wrong with it."""

    def __init__(self, file: Path, why: str) -> None:
        super().__init__(f"{file}: {why}: the feature cache is damaged; rebuild it with `tradelib prepare "
                         f"--force-recreate` and the same parameters")
        self.file, self.why = Path(file), why


def code_fingerprint() -> str:
    """A hash of the source of CODE_MODULES and CONFIG_CODE."""
    h = hashlib.sha256()
    for name in CODE_MODULES:
        h.update(inspect.getsource(importlib.import_module(name)).encode())
    for fn in CONFIG_CODE:
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """numpy's, pandas' and pyarrow's (the CSV and Parquet reader) major.minor: a feature-changing fix comes in a
    minor release, and a patch release alone should not refuse a run's resume."""
    return {lib.__name__: ".".join(lib.__version__.split(".")[:2]) for lib in LIBRARIES}


def synth_params(cfg) -> dict:
    return {"n_symbols": cfg.synth_symbols, "n_bars": cfg.synth_bars, "seed": cfg.data_seed}


def data_fingerprint(cfg) -> str:
    """Content hash of the raw files the loader reads (name, size and bytes), or the generator's parameters. It
    reads every byte on every command (the key must follow any edit), so on large data it says so: a 20 GB CSV
    took half a minute of silence. Within one process the files are hashed once while none of them changes
    (`_HASHED`): a walk-forward's folds each ask for their key."""
    if is_synthetic(cfg.data_path):
        return "synthetic:" + json.dumps(synth_params(cfg), sort_keys=True)
    path = Path(cfg.data_path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: path does not exist")
    files = data_files(path)[0]  # what load_ohlcv reads, nothing else
    stamp = file_stamps(files)
    if stamp in _HASHED:
        return _HASHED[stamp]
    started = time.time_ns()
    size = sum(f.stat().st_size for f in files)
    say = size > SAY_HASH_BYTES
    if say:
        print(f"{path}: hashing {size / 1e9:.1f} GB of data for the feature cache's key", flush=True)
    t0 = time.perf_counter()
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}".encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    if say:
        print(f"{path}: hashed in {time.perf_counter() - t0:.0f}s", flush=True)
    digest = "file:" + h.hexdigest()
    if max((max(s[3:]) for s in stamp), default=started) < started - SETTLED_NS:  # (SETTLED_NS: why not sooner)
        _HASHED[stamp] = digest
    return digest


def file_stamps(files: list[Path]) -> tuple:
    """What the kernel changes on any write to a file or any swap of it: path, inode, size, mtime and ctime (ns;
    ctime cannot be set back by a program, as mtime can)."""
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def cache_key(cfg, fold: int = 0) -> str:
    """The key of `cfg`'s features (walk-forward fold `fold` of them when `folds` > 1)."""
    return hashlib.sha256(json.dumps(key_parts(cfg, fold), sort_keys=True).encode()).hexdigest()[:20]


def key_parts(cfg, fold: int = 0) -> dict:
    """What `cache_key` hashes: everything that shapes the features."""
    parts = {"data": data_fingerprint(cfg), "features": feature_params(cfg, fold), "code": code_fingerprint(),
             "libraries": library_versions(), "v": CACHE_VERSION}
    if not is_synthetic(cfg.data_path) and cfg.date_format:  # it changes how the files are read
        parts["date_format"] = cfg.date_format
    if not is_synthetic(cfg.data_path) and cfg.data_timezone != UTC:  # so does it (UTC: the keys made before it)
        parts["data_timezone"] = cfg.data_timezone
    if cfg.market_zone != UTC:  # the time-of-day features read its clock, synthetic data's too
        parts["market_timezone"] = cfg.market_zone
    return parts


def folder_for(key: str) -> Path:
    return outputs_dir() / "cache" / key


def checksum(a: np.ndarray) -> str:
    """CRC-32 of an array's bytes: about 2 GB/s, so the verified warm load stays fast (docs/perf.md)."""
    return f"{zlib.crc32(memoryview(np.ascontiguousarray(a)).cast('B')):08x}"


def write(folder: Path, symbols: list[str], meta: dict, shard_rows: list[int],
          fill: Callable[[str, int, np.ndarray], None]) -> None:
    """The cache of a FeatureSet built in shards of these row counts, in row order: `fill(name, i, rows)` writes
    shard i's final values of array `name` into `rows`, the file's rows of it. Each shard's CRC-32 of each array
    is recorded; the folder is written under a temporary name and renamed into place."""
    _sweep(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.mkdir(parents=True)
    try:
        rows = np.cumsum([0] + list(shard_rows))
        table = [{"rows": [int(rows[i]), int(rows[i + 1])], "symbols": None, "crc32": {}}
                 for i in range(len(shard_rows))]
        arrays = {}
        template = FeatureSet.empty(0)
        for name in FeatureSet.ARRAYS:
            like = getattr(template, name)
            shape = (int(rows[-1]), *like.shape[1:])
            dest = writable_map(tmp / f"{name}.npy", like.dtype, shape)
            for i, entry in enumerate(table):
                part = dest[rows[i] : rows[i + 1]]
                fill(name, i, part)
                if name == "symbol_id":
                    entry["symbols"] = [int(part[0]), int(part[-1]) + 1]
                entry["crc32"][name] = checksum(part)
            dest.flush()
            del dest
            arrays[name] = {"bytes": (tmp / f"{name}.npy").stat().st_size, "dtype": like.dtype.str,
                            "shape": list(shape)}
        manifest = {"symbols": symbols, "feature_names": list(FEATURE_NAMES), "meta": meta, "rows": int(rows[-1]),
                    "arrays": arrays, "shards": table}
        with writing(tmp / "manifest.json"):
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        _swap_in(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sweep(folder: Path) -> None:
    """Delete what a killed builder of this key left: `.<key>.<pid>.<ns>.tmp` / `.old` folders of a dead pid."""
    for p in list(folder.parent.glob(f".{folder.name}.*.tmp")) + list(folder.parent.glob(f".{folder.name}.*.old")):
        if left_by_dead_writer(p):
            shutil.rmtree(p, ignore_errors=True)


def _swap_in(tmp: Path, folder: Path) -> None:
    """Rename `tmp` to `folder`, moving an existing one aside first and deleting it after."""
    old = folder.with_name(f".{folder.name}.{os.getpid()}.{time.monotonic_ns()}.old")
    try:
        folder.rename(old)
    except FileNotFoundError:
        old = None
    tmp.rename(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_lock(folder: Path, verbose: bool = True) -> FileLock:
    """The lock one builder of this cache key holds (`<key>.lock` beside it): a second process building the same
    key waits for the first, then finds its cache. Dropped by the kernel if the builder dies."""
    lock = FileLock(folder.with_name(folder.name + ".lock"))
    try:
        return lock.acquire()
    except Busy as busy:
        if verbose:
            print(f"waiting for process {busy.holder}, which is building the feature cache {folder} ...", flush=True)
        return lock.acquire(wait=True)


# a manifest's entries and their types: valid JSON of another structure is a damaged cache, rebuilt
MANIFEST_ENTRIES = {"symbols": list, "feature_names": list, "meta": dict, "rows": int, "arrays": dict, "shards": list}


def _read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except OSError as exc:
        raise CacheError(path, f"unreadable ({exc.strerror or exc})") from None
    except ValueError:
        raise CacheError(path, "not valid JSON (truncated?)") from None
    if not isinstance(manifest, dict):
        raise CacheError(path, f"a JSON {type(manifest).__name__}, not an object")
    if not MANIFEST_ENTRIES.keys() <= set(manifest):
        raise CacheError(path, f"missing entries ({', '.join(sorted(MANIFEST_ENTRIES.keys() - set(manifest)))})")
    wrong = [k for k, kind in MANIFEST_ENTRIES.items() if not isinstance(manifest[k], kind)]
    if "shards" not in wrong and not all(_is_shard(s) for s in manifest["shards"]):
        wrong.append("shards")
    if wrong:
        raise CacheError(path, f"entries of the wrong type ({', '.join(wrong)})")
    return manifest


def _is_shard(entry) -> bool:
    rows = entry.get("rows") if isinstance(entry, dict) else None
    return isinstance(rows, list) and len(rows) == 2 and all(isinstance(r, int) for r in rows)


def _load_array(path: Path, entry: dict, rows: int, mmap: bool) -> np.ndarray:
    """One array, read (or mapped, `mmap`) from disk and checked against its manifest entry: size, a readable
    .npy, dtype and shape."""
    try:
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CacheError(path, f"{size:,} bytes, the manifest says {entry['bytes']:,} (truncated?)")
        a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except CacheError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # a zeroed or garbled header, a missing file
        raise CacheError(path, f"not a readable array ({type(exc).__name__})") from None
    if a.dtype.str != entry["dtype"] or list(a.shape) != entry["shape"] or (a.ndim and len(a) != rows):
        raise CacheError(path, f"holds {a.dtype.str} {list(a.shape)}, the manifest says {entry['dtype']} "
                               f"{entry['shape']}")
    return a


def shards_of(folder: Path) -> list[dict]:
    """The cache's shards: rows [lo, hi), symbol ids [lo, hi) and checksums of each."""
    return _read_manifest(folder)["shards"]


def rank_part(table: list[dict], rank: int, world: int) -> tuple[int, int]:
    """(first, end) shard of rank `rank` of `world`: a contiguous run of shards with about a world-th of the rows
    (each shard whole symbols), so the ranks' shares are whole symbols and cover every row once."""
    ends = np.array([s["rows"][1] for s in table])
    if len(table) < world:
        raise ValueError(f"shard_data: {world} processes but the cache has {len(table)} shards (of whole symbols): "
                         f"lower shard_rows and rebuild it (--force-recreate), or use fewer processes")
    cuts = [0]
    for k in range(1, world):  # the shard boundary nearest k/world of the rows, at least one shard per rank
        at = int(np.argmin(np.abs(ends - k * ends[-1] / world))) + 1
        cuts.append(min(max(at, cuts[-1] + 1), len(table) - (world - k)))
    cuts.append(len(table))
    return cuts[rank], cuts[rank + 1]


def load(folder: Path, part: tuple[int, int] | None = None, mmap: bool = False, verify: bool = True) -> FeatureSet:
    """The FeatureSet of a cache folder, verified: every array against the manifest, the features finite and
    within +-clip, symbols and splits in range. `part` = (first, end) shard: only those shards' rows
    (`meta["rows"]` says which rows); each shard read is checked by its own checksums. `mmap`: the arrays mapped
    from disk, read-only, not read into memory (what streaming reads from; a run holds only the pages it
    touches). `verify=False` skips the checksums and the range check (rows other processes verified). Raises
    CacheError naming the file and what is wrong (a manifest of the wrong structure included)."""
    try:
        return _load(folder, part, mmap, verify)
    except (AttributeError, TypeError, KeyError, IndexError) as exc:  # an entry deeper in the manifest
        raise CacheError(folder / "manifest.json", f"entries of the wrong structure ({type(exc).__name__}: "
                                                   f"{str(exc)[:100]})") from None


def _load(folder: Path, part: tuple[int, int] | None, mmap: bool, verify: bool) -> FeatureSet:
    manifest = _read_manifest(folder)
    rows, table = int(manifest["rows"]), manifest["shards"]
    part = (0, len(table)) if part is None else part
    whole = part == (0, len(table))
    lo, hi = (0, rows) if whole else (table[part[0]]["rows"][0], table[part[1] - 1]["rows"][1])
    arrays = {}
    for name in FeatureSet.ARRAYS:
        entry = manifest["arrays"].get(name)
        if not isinstance(entry, dict) or not {"bytes", "dtype", "shape"} <= set(entry):
            raise CacheError(folder / "manifest.json", f"no complete entry for {name}.npy")
        a = _load_array(folder / f"{name}.npy", entry, rows, mmap or not whole)
        for shard in table[part[0] : part[1]] if verify else []:
            a_lo, a_hi = shard["rows"]
            if checksum(a[a_lo:a_hi]) != shard.get("crc32", {}).get(name):  # (none recorded: damaged)
                raise CacheError(folder / f"{name}.npy", f"checksum differs from the manifest in rows "
                                                         f"{a_lo:,}..{a_hi:,} (the bytes changed)")
        arrays[name] = a[lo:hi] if mmap or whole else np.array(a[lo:hi])
    clip = float(manifest["meta"].get("feature_config", {}).get("clip", np.inf))
    X = arrays["X"]
    lo_x, hi_x = (float(X.min()), float(X.max())) if X.size and verify else (0.0, 0.0)  # NaN propagates
    if not (-clip <= lo_x and hi_x <= clip):
        raise CacheError(folder / "X.npy", f"features range over [{lo_x:g}, {hi_x:g}], outside +-clip ({clip:g}) "
                                           f"or not finite")
    sid, split = arrays["symbol_id"], arrays["split"]
    if len(sid) and (sid.min() < 0 or sid.max() >= len(manifest["symbols"])):
        raise CacheError(folder / "symbol_id.npy", "a symbol id out of range")
    if len(split) and (split.min() < -1 or split.max() > 2):
        raise CacheError(folder / "split.npy", "a split code other than -1, 0, 1, 2")
    meta = {**manifest["meta"], "rows": [lo, hi], "rows_total": rows}
    return FeatureSet(**arrays, symbols=manifest["symbols"], feature_names=manifest["feature_names"], meta=meta)


def has(folder: Path) -> bool:
    return (folder / "manifest.json").exists()
