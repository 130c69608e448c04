"""The feature build: raw frame -> FeatureSet, or the feature cache, in one sequence of stages over shards of whole
symbols, each stage on every core. `dataset.build` (in memory), `dataset.prepare` (the cache), the data bench and
the tests all run this one `build`.

1. clean: each shard's clean rows (`clean.clean_parts`, the calendar rules left for stage 2) and what all rows
   must learn of it (`SharedFacts`: the distinct timestamps, bar sizes, days traded, symbols);
2. features: with the facts of all shards merged, each shard's rows placed (symbol ids, splits: `ShardRows`),
   its segments (long gaps counted on the calendar of all shards: `sessions.bar_steps`; they and the spikes
   found with them are counted into the quality report), then its features and targets, X unscaled
   (`shard_features`);
3. fit: the robust normalisation on the training rows of all shards (`fit_shards`);
4. scale: X scaled with it (`scale_rows`);
5. assemble: the FeatureSet with its meta, or (`folder`) the cache's arrays with their checksums (`cache.write`).

Every row's values depend on its own symbol's rows and on the facts alone, so the result does not depend on how
the rows were cut. Building the cache, the stages leave files between them in a build folder beside it
(`.<key>.build/`: `clean-K/` and `facts-K/` after stage 1, `shard-K/` after stage 2, each written under a
temporary name and renamed whole), so a build that fails or is killed resumes from the shards done (one that
fails as it would on every rerun, a ValueError, deletes it). Under torchrun
(`spread`) rank r builds shards r, r + world, ...: the ranks meet at barriers between the stages and read each
other's files (the outputs folder must be one they share: TRADELIB_OUTPUTS on a shared file system across
machines), and rank 0 fits, scales and writes the cache.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tradelib import distributed
from tradelib.data import cache, clean, detect, load, memory, quality, sessions
from tradelib.data.features import (
    FEATURE_NAMES,
    LOOKBACK,
    FeatureSet,
    check_cut,
    feature_makers,
    feature_params,
    fit_robust,
    fold_bound,
    fold_bounds,
    merge_cuts,
    split_rows,
    targets,
)
from tradelib.data.segments import Segments, segment_ids, segment_rank
from tradelib.paths import atomic_write_bytes, left_by_dead_writer, writable_map, writing
from tradelib.progress import stage_lines

CLEAN = ("ts", "code", "open", "high", "low", "close", "volume")
BARS = ("open", "high", "low", "close", "volume")


def build(cfg, raw: pd.DataFrame, source: str, fold: int = 0, folder: Path | None = None, verbose: bool = True,
          spread: bool = False, cleaned: bool = False, started: float | None = None
          ) -> tuple[FeatureSet | None, quality.QualityReport | None]:
    """The FeatureSet of `cfg` (walk-forward fold `fold`) from `raw`, and the quality report; (None, report) when
    cleaning left no row. `folder`: write the feature cache there instead (None returned); the caller holds the
    key's build lock (rank 0 does). `spread`: this is one of torchrun's processes, which all run this together,
    each building its share. `cleaned`: `raw` is a clean frame already, cut into shards as it is (no report).
    `started`: the perf_counter time the build began (before `raw` was read), the stage lines' zero.
    The report's price_spike and long_gap counts are found with the segments (stage 2) and merged by rank 0: under
    torchrun, only rank 0's report holds them (the one printed; the cache's meta holds rank 0's).

    A build that ends in a ValueError (a split left empty, no training rows, cleaning that left nothing) ends so
    every time for this key, so its build folder is deleted: kept, nothing would resume it, and a corrected
    setting is another key, which left the shards of the whole data behind in a hidden folder for good."""
    try:
        fs, report = _stages(cfg, raw, source, fold, folder, verbose, spread, cleaned, started)
    except ValueError:
        _drop_work(folder, spread)
        raise
    if report is not None and report.rows_kept == 0:
        _drop_work(folder, spread)
    return fs, report


def _drop_work(folder: Path | None, spread: bool) -> None:
    """Delete the build folder of the cache `folder` (rank 0 of a spread build)."""
    if folder is not None and (not spread or distributed.dist_env().rank == 0):
        shutil.rmtree(work_folder(folder), ignore_errors=True)


def work_folder(folder: Path) -> Path:
    """Where the build of the cache `folder` keeps its stages' files."""
    return folder.with_name(f".{folder.name}.build")


def _stages(cfg, raw: pd.DataFrame, source: str, fold: int, folder: Path | None, verbose: bool, spread: bool,
            cleaned: bool, started: float | None) -> tuple[FeatureSet | None, quality.QualityReport | None]:
    """`build`'s stages."""
    env = distributed.dist_env() if spread else distributed.DistEnv()
    barrier = distributed.barrier if spread else (lambda: None)
    work = None if folder is None else work_folder(folder)
    keep = ("oracle",) if "oracle" in raw else ()
    _, codes, symbols = load.symbol_codes(raw["symbol"])
    plan = clean.symbol_shards(codes, len(symbols), cfg.shard_rows)
    if work is not None and env.rank == 0:
        _start(work, {"rows": len(raw), "shards": [[sym.start, sym.stop] for _, sym in plan]}, verbose)
    barrier()
    mine = [k for k in range(len(plan)) if k % env.world == env.rank]
    workers = cfg.build_workers or os.cpu_count() or 1
    say = stage_lines("feature build", verbose and folder is not None and env.rank == 0, started)
    say(f"cleaning {len(raw):,} rows of {len(symbols):,} symbols, {len(plan)} shards on {workers} "
        f"thread{'s' * (workers > 1)}")
    with memory.without_huge_pages(), ThreadPoolExecutor(max_workers=workers) as pool:
        # 1. clean, and each shard's facts
        todo = [k for k in mine if work is None or not (work / f"facts-{k}").exists()]
        if cleaned:
            done = _frame_shards(raw, codes, symbols, plan, keep)
        else:
            done = clean.clean_parts(raw, source, cfg, only=set(todo), min_rows=cfg.min_symbol_rows,
                                     keep=keep, workers=workers, plan=(codes, symbols, plan),
                                     defer=True) if todo else []
        fs = None
        if work is None:
            at_row = np.cumsum([0] + [len(d[1]) for d in done])
            fs = FeatureSet.empty(int(at_row[-1]))
            views = lambda k: {n: getattr(fs, n)[at_row[k] : at_row[k + 1]] for n in FeatureSet.ARRAYS}  # noqa: E731
        held = {}  # in memory: each shard's clean rows, placed rows and output arrays, for stage 2

        def stage_1(k: int) -> tuple[SharedFacts | None, dict | None]:
            part, shard = done[k]
            if work is not None:
                _write_clean(work, k, shard)  # (before locate_rows takes the times and codes over)
            out = views(k) if work is None else vars(FeatureSet.empty(len(shard)))  # (only the facts are kept)
            rows = locate_rows(shard, out) if len(shard) else None
            facts = SharedFacts.of(rows, cfg.market_zone) if rows is not None else None
            if work is None:
                held[k] = shard, rows, out
            else:
                _write_facts(work, k, facts, part)
            return facts, part

        firsts = dict(zip(todo, pool.map(stage_1, todo)))
        barrier()
        parts = [firsts[k] if k in firsts else _read_facts(work, k) for k in range(len(plan))]
        report = None if cleaned else quality.quality_report([p for _, p in parts], raw, source, keep)
        present = [k for k, (f, _) in enumerate(parts) if f is not None]
        if report is not None and report.rows_kept == 0:
            return None, report  # dataset names the rules that dropped every row
        if not present:
            raise ValueError("no rows left after cleaning: nothing to build features from")
        facts = SharedFacts.merge([parts[k][0] for k in present])
        bound = fold_bound(fold_bounds(facts.times, cfg, facts.counts), fold, cfg)
        calendar = pool.submit(facts.calendar, cfg.market_zone)  # made beside the placing, not before it
        at = {k: i for i, k in enumerate(present)}
        sym_at = offsets([parts[k][0] for k in present])

        # 2. features of each shard, X unscaled
        say(f"cleaned: {report.rows_kept:,} rows kept; the features of each shard" if report is not None
            else "the features of each shard")
        left = [k for k in mine if k in at and (work is None or not (work / f"shard-{k}").exists())]
        opened = dict(zip(left, pool.map(lambda k: held.pop(k) if work is None else _open_shard(work, k, cfg), left)))
        list(pool.map(lambda k: assign_splits(opened[k][1], bound, sym_at[at[k]], opened[k][2], cfg), left))
        cal = calendar.result()

        def stage_2(k: int) -> dict:
            shard, rows, out = opened[k]
            made = shard_features(shard, rows, facts, cal.continuous, cfg, out)
            made["cut"] = rows.cut
            if work is not None:
                _close_shard(work, k, out, made)
            return made

        made = dict(zip(left, pool.map(stage_2, left)))
        barrier()
        if env.rank == 0:
            # 3. fit, 4. scale, 5. assemble
            if work is not None:
                opened = {k: (None, None, _read_folder(work / f"shard-{k}")) for k in present}
                made = {k: json.loads((work / f"shard-{k}" / "made.json").read_text()) for k in present}
            outs, made = [opened[k][2] for k in present], [made[k] for k in present]
            seg_at = np.cumsum([0] + [m["segments"] for m in made])  # segments were numbered within each shard
            if report is not None:  # the calendar rules' counts, found with the segments
                for k, m in zip(present, made):
                    for rule in clean.CALENDAR_RULES:
                        clean.add_kept(parts[k][1], rule, m[rule])
                report = quality.quality_report([p for _, p in parts], raw, source, keep)
            cut = merge_cuts([m["cut"] for m in made])
            check_cut(cut, cfg)
            say("fitting the scaling on the training rows")
            norm, target_scale = fit_shards([o["X"] for o in outs], [o["y"] for o in outs],
                                            [o["split"] for o in outs], cut, pool)
            meta = feature_meta(cfg, facts, cal, cut, made, norm, target_scale, report, fold)
            if work is None:
                list(pool.map(lambda o: scale_rows(o["X"], norm, cfg.clip), outs))
                for o, first in zip(outs, seg_at.tolist()):
                    o["segment"] += np.int32(first)
                fs.symbols, fs.meta = facts.names, meta
                return fs, report

            def fill(name: str, i: int, dest: np.ndarray) -> None:
                dest[...] = outs[i][name]
                if name == "X":
                    scale_rows(dest, norm, cfg.clip)
                elif name == "segment":
                    dest += np.int32(seg_at[i])

            rows = sum(len(o["y"]) for o in outs)
            say(f"scaling, then writing the cache ({rows:,} rows x {len(FEATURE_NAMES)} features)")
            cache.write(folder, facts.names, {**meta, "cache_key": folder.name}, [len(o["y"]) for o in outs], fill)
            shutil.rmtree(work, ignore_errors=True)
    barrier()
    return None, report


def _frame_shards(frame: pd.DataFrame, codes: np.ndarray, symbols: np.ndarray, plan: list, keep: tuple[str, ...]
                  ) -> list[tuple[None, clean.CleanShard]]:
    """A clean frame (sorted by symbol, timestamp) cut into the shards of `plan`, as cleaning leaves them."""
    ts = load.ns_since_epoch(frame["timestamp"])
    bars = {k: frame[k].to_numpy(np.float64) for k in BARS}
    kept = {k: frame[k].to_numpy(np.float32) for k in keep}
    restart = frame["restart"].to_numpy(bool) if "restart" in frame else None
    return [(None, clean.CleanShard({"ts": ts[rows], "code": codes[rows]} | {k: v[rows] for k, v in bars.items()},
                                    symbols, {k: v[rows] for k, v in kept.items()},
                                    restart=None if restart is None else restart[rows])) for rows, _ in plan]


# ----------------------------------------------------------------------------------------------------------
# the stages of one shard


@dataclass
class ShardRows:
    """Where each row of some whole symbols sits: its symbol, time, contiguous segment, split and bar number.
    The arrays are the shard's rows of the FeatureSet's own (written once, read in place)."""

    codes: np.ndarray  # int32 symbol id per row (an index into the FeatureSet's symbols)
    ts: np.ndarray  # int64 ns since the epoch, UTC
    bar_of_code: np.ndarray  # int64 bar size of each of the shard's symbols, in order
    seg: np.ndarray  # int32 segment id: breaks at a symbol change or a gap longer than max_gap_bars (stage 2)
    split: np.ndarray | None = None  # int8: 0 train, 1 val, 2 test, -1 purged
    cut: dict | None = None  # split_rows' cut of these rows
    names: list[str] = field(default_factory=list)  # the shard's symbols, in order


@dataclass
class SharedFacts:
    """What only all the rows together know and every shard's features need: the distinct timestamps and their
    row counts (the split quantiles, the calendar), each symbol's bar size, and the days each bar size traded
    (bar numbers and long gaps across a missing day). The facts of parts of the rows merge into the whole's exactly."""

    times: np.ndarray  # int64 distinct timestamps, sorted
    counts: np.ndarray  # int64 rows at each
    bars: np.ndarray  # int64 bar size of each symbol, in symbol order
    days: dict[int, np.ndarray]  # bar size (ns) -> sorted distinct sessions (`sessions.traded_days`) of that size
    names: list[str]  # the symbols, in order

    @staticmethod
    def of(rows: ShardRows, zone: str) -> SharedFacts:
        """The facts of these rows, their sessions on the market's clock `zone` (Config.market_zone)."""
        times, counts = _distinct(rows.ts)
        first = detect.run_starts(rows.codes)
        days = sessions.traded_days(rows.ts, rows.codes, rows.bar_of_code[rows.codes], zone)
        return SharedFacts(times, counts, rows.bar_of_code[rows.codes[first]], days, list(rows.names))

    @staticmethod
    def merge(parts: list[SharedFacts]) -> SharedFacts:
        times, counts = _distinct(np.concatenate([p.times for p in parts]), np.concatenate([p.counts for p in parts]))
        return SharedFacts(times, counts, np.concatenate([p.bars for p in parts]),
                           sessions.merge_days([p.days for p in parts]), [n for p in parts for n in p.names])

    def calendar(self, zone: str) -> sessions.Calendar:
        return sessions.calendar(self.times, float(np.median(self.bars)) / 1e9, zone)


def _distinct(t: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values of t, rows (or summed weights) at each). A stable sort merges the sorted runs of
    rows in (symbol, time) order quickly."""
    if not len(t):
        return t.astype(np.int64), np.zeros(0, dtype=np.int64)
    if weights is None:
        t = np.sort(t, kind="stable")
    else:
        order = np.argsort(t, kind="stable")
        t, weights = t[order], weights[order]
    at = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
    counts = np.diff(np.r_[at, len(t)]) if weights is None else np.add.reduceat(weights, at)
    return t[at], counts.astype(np.int64)


def locate_rows(shard: clean.CleanShard, out: dict[str, np.ndarray]) -> ShardRows:
    """The rows of a shard as far as they alone tell it (symbol ids numbered from 0 within the shard, bar
    sizes), written into `out`, the shard's rows of the FeatureSet's arrays. The shard's timestamps
    and codes are taken over (released from the shard)."""
    ts, codes = out["timestamp"], out["symbol_id"]
    ts[:] = shard.a.pop("ts")
    raw_codes = shard.a.pop("code")
    first = detect.run_starts(raw_codes)
    np.cumsum(first, out=codes)
    codes -= 1
    present = raw_codes[first]
    if shard.bar is not None:  # cleaning found them on these very rows
        bar_of_code = shard.bar[present].astype(np.int64)
    else:
        bar_of_code = detect.bar_sizes_ns(codes, ts, len(present))
    names = [str(shard.symbols[c]) for c in present]
    if (bar_of_code <= 0).any():
        short = [names[i] for i in np.flatnonzero(bar_of_code <= 0)]
        raise ValueError(f"symbol(s) {', '.join(short)}: fewer than two timestamps, no bar size")
    return ShardRows(codes, ts, bar_of_code, out["segment"], names=names)


def assign_splits(rows: ShardRows, bound: dict, sym_offset: int, out: dict[str, np.ndarray], cfg) -> None:
    """Complete a shard's rows with what needs all rows: their splits (`bound`: the fold's bounds of all rows,
    `fold_bounds`), and symbol ids counted from the offset (the symbols of the shards before)."""
    split, rows.cut = split_rows(rows.ts, rows.codes, cfg, bound)
    out["split"][:] = split
    rows.split = out["split"]
    rows.codes += np.int32(sym_offset)


def shard_features(shard: clean.CleanShard, rows: ShardRows, facts: SharedFacts, continuous: bool, cfg,
                   out: dict[str, np.ndarray], block: int = 1 << 16) -> dict:
    """Fill `out` (this shard's rows of the FeatureSet's arrays; X unscaled) and return what the meta needs:
    each feature's range before scaling, the masked-target counts, the rows per split. Features are made a block
    of rows at a time (with the LOOKBACK rows before it), so that every temporary stays in the cache. The shard
    is released afterwards. The segments come first: they break at the long gaps counted on the calendar of all
    shards (`facts.days`, `continuous`: the positions' own count, `sessions.bar_steps`), numbered from 0 within
    the shard (the assembly adds the segments of the shards before); the long gaps and the spikes found with them
    are counted per symbol for the report."""
    bar = facts.bars[rows.codes]
    steps = sessions.bar_steps(rows.ts, rows.codes, bar, continuous, facts.days, cfg.market_zone)  # gaps, positions
    gap = sessions.long_gap_rows(rows.ts, rows.codes, bar, cfg.max_gap_bars, continuous, facts.days, steps)
    rows.seg[:] = segment_ids(rows.codes, gap, shard.restart)
    rank = segment_rank(rows.seg)
    X, n = out["X"], len(rows.ts)
    ranges: list[dict] = []
    cols_t = np.empty((X.shape[1], min(block, n)), dtype=np.float32)  # the block's columns, each contiguous
    for b0 in range(0, n, block):
        lo, b1 = max(b0 - LOOKBACK, 0), min(b0 + block, n)
        bars = {k: shard.a[k][lo:b1] for k in BARS} | {"timestamp": rows.ts[lo:b1]}
        for j, make in enumerate(feature_makers(bars, Segments(rank[lo:b1]), cfg.market_zone).values()):
            col = make()[b0 - lo :]
            ranges.append(_finite_range(col))
            cols_t[j, : b1 - b0] = col
        X[b0:b1] = cols_t[:, : b1 - b0].T
    pos = sessions.bar_positions(rows.ts, rows.codes, bar, continuous, facts.days, steps)
    t = targets({k: shard.a[k] for k in BARS} | {"timestamp": rows.ts}, Segments(rank), rows.codes, pos, cfg)
    y = out["y"]
    y[:] = t["target"]
    y[~np.isfinite(y)] = np.nan  # also a target too large for float32
    for k in ("fwd_return", "ret_next", "last_return"):
        out[k][:] = t[k]
    oracle = shard.keep.get("oracle")
    out["oracle"][:] = oracle if oracle is not None and cfg.horizon == 1 else np.nan  # planted: one bar ahead only
    shard.a.clear()
    shard.keep.clear()
    per = len(FEATURE_NAMES)
    return {"ranges": {name: _merge_range(ranges[j::per]) for j, name in enumerate(FEATURE_NAMES)},
            "spike_rows": int(t["spike"].sum()), "spans_missing_bar": int(t["spans_missing_bar"].sum()),
            "rows_per_split": [int(np.count_nonzero(rows.split == i)) for i in (-1, 0, 1, 2)],
            "segments": int(rows.seg[-1]) + 1 if n else 0,
            "long_gap": _per_symbol(gap, rows.codes, facts.names), "price_spike": _per_symbol(t["spike"], rows.codes,
                                                                                          facts.names)}


def _per_symbol(flag: np.ndarray, codes: np.ndarray, names: list[str]) -> dict[str, int]:
    """The rows of `flag` per symbol name (only symbols with any)."""
    per = np.bincount(codes[flag], minlength=len(names))
    return {names[i]: int(per[i]) for i in np.flatnonzero(per)}


def _merge_range(parts: list[dict]) -> dict:
    return {"min": min(p["min"] for p in parts), "max": max(p["max"] for p in parts),
            "unknown": sum(p["unknown"] for p in parts)}


def _finite_range(col: np.ndarray) -> dict:
    """min and max over the finite values, and how many are not finite."""
    if not len(col):
        return {"min": np.inf, "max": -np.inf, "unknown": 0}
    lo = float(col.min())  # NaN propagates: a NaN (most blocks have none) is known from one pass
    hi = float(col.max()) if not math.isnan(lo) else lo
    if math.isfinite(lo) and math.isfinite(hi):
        return {"min": lo, "max": hi, "unknown": 0}
    finite = col[np.isfinite(col)]
    return {"min": float(np.min(finite, initial=np.inf)), "max": float(np.max(finite, initial=-np.inf)),
            "unknown": len(col) - len(finite)}


# ----------------------------------------------------------------------------------------------------------
# fit, scale, assemble


def offsets(parts: list[SharedFacts]) -> list[int]:
    """Per shard: the symbols of the shards before it."""
    return [int(x) for x in np.cumsum([0] + [len(p.names) for p in parts])[:-1]]


def fit_shards(xs: list[np.ndarray], ys: list[np.ndarray], splits: list[np.ndarray], cut: dict,
               pool: ThreadPoolExecutor, max_rows: int = 2_000_000) -> tuple[dict, float]:
    """(normalisation {median, scale} per feature, target scale) fitted on the training rows of all shards,
    whose unscaled X, targets and splits these are (in row order). Beyond `max_rows` training rows, on every
    step-th of them counted over all shards (as `fit_robust` samples one array)."""
    trains = list(pool.map(lambda split: np.flatnonzero(split == 0), splits))
    total = sum(len(t) for t in trains)
    if not total:
        raise ValueError(f"the training split is empty: too little data before the train end "
                         f"({pd.Timestamp(cut['train_end'], tz='UTC')}, set by {cut['method']})")
    step, before, rows = (-(-total // max_rows) if total > max_rows else 1), 0, []
    for t in trains:
        rows.append(t[(-before) % step :: step])
        before += len(t)
    at = np.cumsum([0] + [len(r) for r in rows])
    X = np.empty((xs[0].shape[1], int(at[-1])), dtype=np.float32)  # one contiguous row per feature

    def gather(i: int) -> None:
        X[:, at[i] : at[i + 1]] = xs[i][rows[i]].T

    list(pool.map(gather, range(len(xs))))
    target = np.concatenate([y[r] for y, r in zip(ys, rows)])
    # the target's fit is one more task beside the features'
    fits = list(pool.map(lambda j: fit_robust(target, scratch=True) if j < 0 else fit_robust(X[j], scratch=True),
                         range(-1, len(X))))
    return {"median": [f[0] for f in fits[1:]], "scale": [f[1] for f in fits[1:]]}, fits[0][1]


def scale_rows(X: np.ndarray, norm: dict, clip: float) -> None:
    """Robust-scale X in place: (x - median) / scale, clipped, and what is still unknown filled with 0 (the
    training median)."""
    np.subtract(X, np.asarray(norm["median"], dtype=np.float32), out=X)
    np.divide(X, np.asarray(norm["scale"], dtype=np.float32), out=X)
    np.clip(X, -clip, clip, out=X)
    np.copyto(X, 0.0, where=np.isnan(X))


def feature_meta(cfg, facts: SharedFacts, cal: sessions.Calendar, cut: dict, made: list[dict], norm: dict,
                 target_scale: float, report: quality.QualityReport | None, fold: int = 0) -> dict:
    """The FeatureSet's meta from what the stages found (see docs/design.md)."""
    per_split = np.sum([m["rows_per_split"] for m in made], axis=0)
    return {
        "feature_config": feature_params(cfg, fold),
        "norm": norm,
        "raw_ranges": {name: _merge_range([m["ranges"][name] for m in made]) for name in FEATURE_NAMES},
        "target_scale": target_scale,
        "bar_seconds": {name: int(b) / 1e9 for name, b in zip(facts.names, facts.bars)},
        "calendar": cal.to_dict(),  # periods a year, continuous or exchange: the data's own annualisation
        "splits": cut,
        "rows_per_split": {name: int(per_split[i + 1]) for i, name in ((0, "train"), (1, "val"), (2, "test"))},
        "purged_rows": int(per_split[0]) - cut.get("outside_rows", 0),  # not the rows outside a fold
        "masked_targets": {k: sum(m[k] for m in made) for k in ("spike_rows", "spans_missing_bar")},
        "n_segments": sum(m["segments"] for m in made),
        "quality": report.to_dict() if report is not None else {},
    }


# ----------------------------------------------------------------------------------------------------------
# the build folder (the cache's build only)


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


def _write_clean(work: Path, k: int, shard: clean.CleanShard) -> None:
    """Shard k's clean rows (symbols recoded 0.. within the shard), written whole."""
    code = shard.a["code"]
    first = detect.run_starts(code)
    present = code[first]
    arrays = {name: shard.a[name] for name in CLEAN} | {f"keep_{n}": v for n, v in shard.keep.items()}
    arrays |= {"code": (np.cumsum(first) - 1).astype(np.int32), "bar": shard.bar[present],
               "symbols": np.frombuffer(json.dumps([str(shard.symbols[c]) for c in present]).encode(), np.uint8)}
    if shard.restart is not None:
        arrays["restart"] = shard.restart
    _write_folder(work / f"clean-{k}", arrays)


def _write_facts(work: Path, k: int, facts: SharedFacts | None, part: dict) -> None:
    """Shard k's facts and report part, written whole as arrays and JSON (no pickle: nothing read back runs
    code)."""
    arrays = {"part": np.frombuffer(json.dumps(part).encode(), np.uint8)}
    if facts is not None:
        arrays |= {"times": facts.times, "counts": facts.counts, "bars": facts.bars,
                   "names": np.frombuffer(json.dumps(facts.names).encode(), np.uint8),
                   "day_bars": np.asarray(list(facts.days), np.int64)}
        arrays |= {f"days_{i}": d for i, d in enumerate(facts.days.values())}
    _write_folder(work / f"facts-{k}", arrays)


def _read_facts(work: Path, k: int) -> tuple[SharedFacts | None, dict]:
    z = _read_folder(work / f"facts-{k}")
    part = json.loads(z["part"].tobytes())
    if "times" not in z:
        return None, part
    days = {int(b): z[f"days_{i}"] for i, b in enumerate(z["day_bars"])}
    return SharedFacts(z["times"], z["counts"], z["bars"], days, json.loads(z["names"].tobytes())), part


def _open_shard(work: Path, k: int, cfg) -> tuple[clean.CleanShard, ShardRows, dict[str, np.ndarray]]:
    """Shard k's clean rows as stage 1 wrote them, and its FeatureSet arrays (files in `shard-K.<tmp>`) with
    its rows located in them."""
    arrays = _read_folder(work / f"clean-{k}")
    names = np.asarray(json.loads(np.asarray(arrays["symbols"]).tobytes()), dtype=object)
    keep = {n[5:]: v for n, v in arrays.items() if n.startswith("keep_")}
    restart = np.asarray(arrays["restart"]) if "restart" in arrays else None
    shard = clean.CleanShard({n: arrays[n] for n in CLEAN}, names, keep, np.asarray(arrays["bar"]), restart=restart)
    tmp = work / f"shard-{k}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    tmp.mkdir()
    template = FeatureSet.empty(0)
    out = {name: writable_map(tmp / f"{name}.npy", getattr(template, name).dtype,
                              (len(shard), *getattr(template, name).shape[1:]))
           for name in FeatureSet.ARRAYS}
    return shard, locate_rows(shard, out), out


def _close_shard(work: Path, k: int, out: dict[str, np.ndarray], made: dict) -> None:
    """Stage 2's files of shard k made whole (renamed into place); its clean rows deleted."""
    for array in out.values():
        array.flush()
    tmp = Path(next(iter(out.values())).filename).parent
    with writing(tmp / "made.json"):
        (tmp / "made.json").write_text(json.dumps(made))
    tmp.rename(work / f"shard-{k}")
    shutil.rmtree(work / f"clean-{k}", ignore_errors=True)


def _write_folder(dest: Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays as .npy files in a folder that appears whole (renamed from a temporary name)."""
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.mkdir()
    for name, array in arrays.items():
        with writing(tmp / f"{name}.npy"):
            np.save(tmp / f"{name}.npy", array)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def _read_folder(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p, mmap_mode="r") for p in folder.glob("*.npy")}
