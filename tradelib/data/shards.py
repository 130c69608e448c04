"""Preparing at scale: the feature cache built in shards of whole symbols, each stage on every core, resumable,
and shared out over torchrun's processes (on one machine or several) when `tradelib prepare` runs under torchrun.

`build` runs the stages of `features.build_from_shards` with files between them, in a build folder beside the
cache (`.<key>.build/`), so that a build that fails or is killed resumes from the shards already done:

1. clean: each shard's clean rows (`clean-K/`) and what the whole data set must learn of it (`facts-K.npz`: the
   distinct timestamps, bar sizes, days traded, symbols, segments, and its part of the quality report);
2. features: with the facts of all shards merged, each shard's arrays, X unscaled (`shard-K/`); its clean rows
   are then deleted;
3. assemble (rank 0): the normalisation fitted on the training rows of all shards, the cache's arrays written (X
   scaled) with a checksum per shard (`cache.write`), the folder renamed into place, the build folder deleted.

Every folder is written under a temporary name and renamed whole, so what a killed build leaves is either whole
or swept. Under torchrun, rank r builds shards r, r + world, ...: the ranks meet at barriers between the stages
and read each other's files, so the outputs folder must be one they share (TRADELIB_OUTPUTS on a shared file
system when they run on several machines). The result does not depend on the shards or the ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from tradelib import distributed
from tradelib.data import cache, clean, load
from tradelib.data.features import (
    Facts,
    FeatureSet,
    check_cut,
    empty_feature_set,
    feature_meta,
    fit_shards,
    fold_bound,
    fold_bounds,
    merge_cuts,
    offsets,
    place,
    shard_features,
    shard_layout,
)
from tradelib.paths import atomic_write_bytes, left_by_dead_writer, writing

CLEAN = ("ts", "code", "open", "high", "low", "close", "volume")


def build(cfg, raw: pd.DataFrame, folder: Path, source: str, verbose: bool = True, spread: bool = False,
          fold: int = 0) -> clean.QualityReport:
    """Build the feature cache of `cfg` (walk-forward fold `fold`) from `raw` into `folder` and return the quality
    report; `spread`: this is one of torchrun's processes, which all run this together, each building its share.
    The caller holds the key's build lock (rank 0 does)."""
    env = distributed.dist_env() if spread else distributed.DistEnv()
    barrier = distributed.barrier if spread else (lambda: None)
    work = folder.with_name(f".{folder.name}.build")
    keep = ("oracle",) if "oracle" in raw else ()
    _, codes, symbols = load.symbol_codes(raw["symbol"])
    plan = clean.symbol_shards(codes, len(symbols), cfg.shard_rows)
    if env.rank == 0:
        _start(work, {"rows": len(raw), "shards": [[own.start, own.stop] for _, own in plan]}, verbose)
    barrier()
    mine = [k for k in range(len(plan)) if k % env.world == env.rank]
    workers = cfg.build_workers or os.cpu_count() or 1
    opts = dict(cfg=cfg, min_rows=cfg.window + cfg.horizon + 1, keep=keep, workers=workers)
    todo = {k for k in mine if not (work / f"facts-{k}.npz").exists()}
    with load.freed_memory_reused(), ThreadPoolExecutor(max_workers=workers) as pool:
        done = clean.clean_parts(raw, source, only=todo, **opts) if todo else [None] * len(plan)
        list(pool.map(lambda k: _clean_stage(work, k, *done[k], cfg), sorted(todo)))
        barrier()
        parts = [_read_facts(work, k) for k in range(len(plan))]
        report = clean.quality_report([p[1] for p in parts], raw, source, keep)
        if report.rows_kept == 0:
            return report  # dataset names the rules that dropped every row
        facts = Facts.merge([p[0] for p in parts if p[0] is not None])
        bound, cal = fold_bound(fold_bounds(facts.times, cfg, facts.counts), fold, cfg), facts.calendar()
        segs, syms = offsets([p[0] for p in parts if p[0] is not None])
        at = {k: i for i, k in enumerate(k for k, p in enumerate(parts) if p[0] is not None)}
        left = [k for k in mine if k in at and not (work / f"shard-{k}").exists()]
        list(pool.map(lambda k: _feature_stage(work, k, facts, bound, cal.continuous, segs[at[k]], syms[at[k]],
                                               cfg), left))
        barrier()
        if env.rank == 0:
            _assemble(work, folder, sorted(at), facts, cal, cfg, report, pool, fold)
    barrier()
    return report


def _start(work: Path, plan: dict, verbose: bool) -> None:
    """The build folder of this plan: resumed where it holds the same plan, else started afresh; the temporary
    folders of a dead builder swept."""
    plan_file = work / "plan.json"
    if work.exists() and (not plan_file.exists() or json.loads(plan_file.read_text()) != plan):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for tmp in work.glob("*.tmp"):
        if left_by_dead_writer(tmp):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    if not plan_file.exists():
        atomic_write_bytes(json.dumps(plan).encode(), plan_file)
    elif verbose:
        n = len(plan["shards"])
        done = sum((work / f"shard-{k}").exists() for k in range(n))
        print(f"resuming the feature build in {work}: {done} of {n} shards done", flush=True)


def _clean_stage(work: Path, k: int, part: dict, shard: clean.CleanShard, cfg) -> None:
    """Stage 1 of shard k: its clean rows (symbols recoded 0.. within the shard) and its facts, each written
    whole."""
    code = shard.a["code"]
    first = clean.run_starts(code)
    present = code[first]
    arrays = {name: shard.a[name] for name in CLEAN} | {f"keep_{n}": v for n, v in shard.keep.items()}
    arrays |= {"code": (np.cumsum(first) - 1).astype(np.int32), "bar": shard.bar[present],
               "symbols": np.frombuffer(json.dumps([str(shard.symbols[c]) for c in present]).encode(), np.uint8)}
    if shard.restart is not None:
        arrays["restart"] = shard.restart
    _write_folder(work / f"clean-{k}", arrays)
    facts = None
    if len(shard):
        out = {"timestamp": np.empty(len(shard), dtype=np.int64), "symbol_id": np.empty(len(shard), np.int32),
               "segment": np.empty(len(shard), dtype=np.int32)}
        facts = Facts.of(shard_layout(_clean_shard(arrays), cfg.max_gap_bars, out))
    tmp = work / f"facts-{k}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    with writing(tmp), open(tmp, "wb") as f:
        np.savez(f, **_facts_arrays(facts), part=np.frombuffer(json.dumps(part).encode(), dtype=np.uint8))
    tmp.rename(work / f"facts-{k}.npz")


def _clean_shard(arrays: dict[str, np.ndarray]) -> clean.CleanShard:
    """A shard's clean rows as stage 1 wrote them (symbol codes local to the shard)."""
    names = np.asarray(json.loads(np.asarray(arrays["symbols"]).tobytes()), dtype=object)
    keep = {n[5:]: v for n, v in arrays.items() if n.startswith("keep_")}
    restart = np.asarray(arrays["restart"]) if "restart" in arrays else None
    return clean.CleanShard({n: arrays[n] for n in CLEAN}, names, keep, np.asarray(arrays["bar"]), restart=restart)


def _facts_arrays(facts: Facts | None) -> dict:
    if facts is None:
        return {"empty": np.ones(1)}
    days = sorted(facts.days.items())
    return {"times": facts.times, "counts": facts.counts, "bars": facts.bars,
            "day_bar": np.concatenate([np.full(len(d), b, dtype=np.int64) for b, d in days]),
            "day": np.concatenate([d for _, d in days]), "segments": np.array([facts.segments]),
            "names": np.frombuffer(json.dumps(facts.names).encode(), dtype=np.uint8)}


def _read_facts(work: Path, k: int) -> tuple[Facts | None, dict]:
    with np.load(work / f"facts-{k}.npz") as z:
        part = json.loads(z["part"].tobytes())
        if "empty" in z:
            return None, part
        day_bar, day = z["day_bar"], z["day"]
        days = {int(b): day[day_bar == b] for b in np.unique(day_bar)}
        return Facts(z["times"], z["counts"], z["bars"], days, json.loads(z["names"].tobytes()),
                     int(z["segments"][0])), part


def _feature_stage(work: Path, k: int, facts: Facts, bound: dict, continuous: bool, seg_offset: int,
                   sym_offset: int, cfg) -> None:
    """Stage 2 of shard k: its FeatureSet arrays (X unscaled) from its clean rows, written whole; then its clean
    rows deleted."""
    shard = _clean_shard(_read_folder(work / f"clean-{k}"))
    tmp = work / f"shard-{k}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    tmp.mkdir()
    template = empty_feature_set(0, [])
    out = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=getattr(template, name).dtype,
                                           shape=(len(shard), *getattr(template, name).shape[1:]))
           for name in FeatureSet.ARRAYS}
    lay = shard_layout(shard, cfg.max_gap_bars, out)
    place(lay, bound, seg_offset, sym_offset, out, cfg)
    made = shard_features(shard, lay, facts, continuous, cfg, out)
    for a in out.values():
        a.flush()
    (tmp / "made.json").write_text(json.dumps({**made, "cut": lay.cut}))
    tmp.rename(work / f"shard-{k}")
    shutil.rmtree(work / f"clean-{k}", ignore_errors=True)


def _assemble(work: Path, folder: Path, ks: list[int], facts: Facts, cal, cfg, report: clean.QualityReport,
              pool: ThreadPoolExecutor, fold: int = 0) -> None:
    """Stage 3: fit on the training rows of all shards, write the cache (X scaled), delete the build folder."""
    shards = [_read_folder(work / f"shard-{k}") for k in ks]
    made = [json.loads((work / f"shard-{k}" / "made.json").read_text()) for k in ks]
    cut = merge_cuts([m["cut"] for m in made])
    check_cut(cut, cfg)
    norm, target_scale = fit_shards([s["X"] for s in shards], [s["y"] for s in shards],
                                    [s["split"] for s in shards], cut, pool)
    meta = feature_meta(cfg, facts, cal, cut, made, norm, target_scale, report.to_dict(), fold)
    meta["cache_key"] = folder.name
    cache.write(folder, facts.names, meta, shards, norm, cfg.clip)
    shutil.rmtree(work, ignore_errors=True)


def _write_folder(dest: Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays as .npy files in a folder that appears whole (renamed from a temporary name)."""
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.mkdir()
    for name, a in arrays.items():
        with writing(tmp / f"{name}.npy"):
            np.save(tmp / f"{name}.npy", a)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def _read_folder(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p, mmap_mode="r") for p in folder.glob("*.npy")}
