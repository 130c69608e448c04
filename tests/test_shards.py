"""Cleaning and features in shards of whole symbols, and the feature cache built in shards: however the rows are
cut (shard_rows, threads, torchrun processes), the result is the one-shard result, and a build that fails resumes
from the shards already done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradelib.config import Config
from tradelib.data import cache, clean, dataset, load, shards
from tradelib.data.dataset import features_of
from tradelib.data.features import fold_bounds, split_bounds
from tradelib.data.synth import generate_market

ROOT = Path(__file__).resolve().parents[1]


def hostile_raw() -> pd.DataFrame:
    """Five symbols, out of order, a missing and an empty symbol, duplicates, spikes, a short symbol."""
    raw = generate_market(n_symbols=5, n_bars=900, seed=4)
    raw.loc[7, "symbol"] = None
    raw.loc[8, "symbol"] = ""
    raw = pd.concat([raw.iloc[300:], raw.iloc[:300], raw.iloc[[5, 6]]]).reset_index(drop=True)
    short = raw[raw["symbol"] == "SYM01"].head(20).assign(symbol="TINY")
    return pd.concat([raw, short]).reset_index(drop=True)


def assert_same_features(a, b) -> None:
    for name in a.ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.symbols == b.symbols
    keep = lambda m: {k: v for k, v in m.items() if k not in ("rows", "rows_total", "cache_key", "cache_dir")}
    assert keep(a.meta) == keep(b.meta)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shard_rows=st.integers(1, 5000), workers=st.integers(1, 3))
def test_cleaning_and_features_do_not_depend_on_the_shards(shard_rows, workers):
    """clean_ohlcv and the features of its frame, cut into shards of whole symbols (one symbol a shard, up to one
    shard) on 1-3 threads, give the one-shard frame, report and FeatureSet exactly."""
    raw = hostile_raw()
    one, rep_one = clean.clean_ohlcv(raw, "x", min_rows=40, keep=("oracle",), shard_rows=10**9, workers=1)
    cut, rep_cut = clean.clean_ohlcv(raw, "x", min_rows=40, keep=("oracle",), shard_rows=shard_rows, workers=workers)
    pd.testing.assert_frame_equal(one, cut)
    assert rep_one.to_dict() == rep_cut.to_dict()
    assert {"bad_symbol", "unsorted", "duplicate", "too_short"} <= set(rep_one.totals())
    cfg = Config(window=16)
    assert_same_features(features_of(one, cfg.replace(shard_rows=10**9, build_workers=1)),
                         features_of(cut, cfg.replace(shard_rows=shard_rows, build_workers=workers)))


def test_the_cache_built_in_shards_is_the_in_memory_build(outputs):
    """prepare (shards on disk, several of them) gives exactly dataset.build's FeatureSet; the manifest records
    every shard, and a run of shards loads alone, checked by its own checksums."""
    cfg = Config(synth_symbols=5, synth_bars=1200, window=16, shard_rows=1000)
    fs = dataset.prepare(cfg, verbose=False)
    assert_same_features(fs, dataset.build(cfg)[0])
    folder = Path(fs.meta["cache_dir"])
    table = cache.shards_of(folder)
    assert len(table) == 5 and table[-1]["rows"][1] == len(fs)  # one symbol each
    part = cache.load(folder, (1, 3), mmap=True)
    lo, hi = part.meta["rows"]
    assert (lo, hi) == (table[1]["rows"][0], table[2]["rows"][1]) and isinstance(part.X, np.memmap)
    np.testing.assert_array_equal(part.X, fs.X[lo:hi])
    assert [p.name for p in folder.parent.iterdir() if p.is_dir()] == [folder.name]  # no build folder left


def test_the_cache_build_says_each_stage_as_it_begins(outputs, capsys):
    """Building the cache of years of minute bars takes minutes: prepare prints a line as it reads the data and as
    each stage begins, in order, before the summary; an in-memory build prints none of them."""
    cfg = Config(synth_symbols=3, synth_bars=1200, window=16, shard_rows=1000, build_workers=1)
    rows = len(dataset.load_raw(cfg))
    dataset.prepare(cfg)
    lines = capsys.readouterr().out.splitlines()
    stages = ["reading the data", f"cleaning {rows:,} rows of 3 symbols, 3 shards on 1 thread", "cleaned: ",
              "fitting the scaling", "scaling, then writing the cache ("]
    at = [next(i for i, line in enumerate(lines) if stage in line) for stage in stages]
    assert at == sorted(at) and at[-1] < next(i for i, line in enumerate(lines) if "features built in" in line)
    assert all(line.startswith("feature build, ") for line in lines[at[1] : at[-1] + 1])
    assert sum("cache: " in line for line in lines) == 0  # `tradelib prepare`'s last line, "cache: PATH", stays unique
    dataset.build(cfg)
    assert "feature build" not in capsys.readouterr().out


def test_the_stage_lines_count_from_the_read_as_the_total_does(outputs, monkeypatch, capsys):
    """The `feature build, Ns` lines and "features built in" run on one clock, from before the data is read: the
    lines once started after the read (minutes on a 20 GB CSV), so the first said 0s while the total held it."""
    read = dataset.load_raw

    def slow_read(cfg, processes=1):  # the real read, made to take over a second
        time.sleep(1.2)
        return read(cfg, processes)

    monkeypatch.setattr(dataset, "load_raw", slow_read)
    dataset.prepare(Config(synth_symbols=2, synth_bars=600, window=16, build_workers=1))
    lines = capsys.readouterr().out.splitlines()
    first = next(line for line in lines if line.startswith("feature build, "))
    total = next(line for line in lines if line.startswith("features built in "))
    seconds = int(first.split(",")[1].split("s:")[0])
    assert 1 <= seconds <= float(total.split()[3].rstrip("s,")), (first, total)


def test_a_failed_build_resumes_from_the_shards_done(outputs, monkeypatch, capsys):
    """The features of the third of four shards fail: prepare fails, the shards done stay; the next prepare
    builds only the rest and gives exactly a fresh build's cache."""
    cfg = Config(synth_symbols=4, synth_bars=1200, window=16, shard_rows=1000, build_workers=1)
    built, failed = [], []
    make = shards.shard_features
    symbols = sorted(dataset.load_raw(cfg)["symbol"].unique())

    def flaky(shard, rows, *args):
        k = symbols.index(rows.names[0])  # one symbol a shard
        if k == 2 and not failed:
            failed.append(k)
            raise RuntimeError("disk unplugged")
        built.append(k)
        return make(shard, rows, *args)

    monkeypatch.setattr(shards, "shard_features", flaky)
    with pytest.raises(RuntimeError, match="disk unplugged"):
        dataset.prepare(cfg, verbose=False)
    first = set(built)  # the threads may have finished the shard after it
    assert {0, 1} <= first and 2 not in first
    built.clear()
    fs = dataset.prepare(cfg)
    out = capsys.readouterr().out
    assert "resuming the feature build" in out and f"{len(first)} of 4 shards done" in out
    assert sorted(built) == sorted({0, 1, 2, 3} - first)
    assert_same_features(fs, dataset.build(cfg)[0])
    cache.load(Path(fs.meta["cache_dir"]))


def test_a_forced_rebuild_does_not_resume_a_failed_build(outputs, monkeypatch, capsys):
    """force_recreate is for a cache the key cannot tell is stale (a library upgraded, code outside the key's
    modules): it builds every shard again, not only those a failed build of the same key left undone."""
    cfg = Config(synth_symbols=4, synth_bars=1200, window=16, shard_rows=1000, build_workers=1)
    built, fail = [], [True]
    make = shards.shard_features

    def flaky(shard, rows, *args):
        if fail[0] and len(built) == 2:
            raise RuntimeError("disk unplugged")
        built.append(rows.names[0])
        return make(shard, rows, *args)

    monkeypatch.setattr(shards, "shard_features", flaky)
    with pytest.raises(RuntimeError, match="disk unplugged"):
        dataset.prepare(cfg, verbose=False)
    built.clear()
    fail[0] = False
    capsys.readouterr()
    fs = dataset.prepare(cfg, force=True)
    assert "resuming" not in capsys.readouterr().out and len(built) == 4
    assert_same_features(fs, dataset.build(cfg)[0])


@pytest.mark.parametrize("settings, says", [
    ({"train_end": "2024-01-02", "val_end": "2025-01-01"}, "the test split is empty"),
    ({"window": 2000}, "no rows left after cleaning"),
])
def test_a_build_that_fails_the_same_way_every_time_leaves_no_build_folder(outputs, settings, says):
    """Split dates that leave the test split empty, or a window longer than every symbol: the build fails after
    its shards are made, and would fail so on every rerun of the key. Its build folder (the shards of the whole
    data) is deleted, not left hidden beside the cache once the setting is corrected (another key)."""
    cfg = Config(**{"synth_symbols": 3, "synth_bars": 1200, "window": 16, "shard_rows": 1000, **settings})
    with pytest.raises(load.DataError, match=says):
        dataset.prepare(cfg, verbose=False)
    assert [p.name for p in (outputs / "cache").iterdir() if p.is_dir()] == []


@pytest.mark.slow
def test_two_torchrun_processes_build_the_same_cache_as_one(tmp_path):
    """`tradelib prepare` under torchrun (2 gloo processes, each its share of the shards, meeting at barriers)
    writes byte for byte the cache one process writes."""
    args = ["prepare", "-p", "synth_symbols", "5", "-p", "synth_bars", "1500", "-p", "window", "16",
            "-p", "shard_rows", "2000"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    one = subprocess.run([sys.executable, "-m", "tradelib", *args], capture_output=True, text=True, timeout=300,
                         env={**env, "TRADELIB_OUTPUTS": str(tmp_path / "a")})
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "tradelib", *args], env={**env, "TRADELIB_OUTPUTS": str(tmp_path / "b")},
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    assert "this process's shards" in two.stdout  # rank 0 loads its own shards only
    (a,), (b,) = [list((tmp_path / side / "cache").glob("*/manifest.json")) for side in ("a", "b")]
    assert a.parent.name == b.parent.name and json.loads(a.read_text()) == json.loads(b.read_text())
    assert len(json.loads(a.read_text())["shards"]) == 3  # shards 0 and 2 on rank 0, 1 on rank 1
    for npy in a.parent.glob("*.npy"):
        assert npy.read_bytes() == (b.parent / npy.name).read_bytes(), npy.name
    assert [p.name for p in b.parent.parent.iterdir() if p.is_dir()] == [b.parent.name]


def fold_bounds_of_rows(ts: np.ndarray, cfg) -> list[dict]:
    """Walk-forward bounds straight from the rows, with numpy's quantile: the single-process definition."""
    distinct, counts = np.unique(ts, return_counts=True)
    t_train, t_val, how = split_bounds(distinct, cfg, counts)
    k_folds = max(cfg.folds, 1)
    at = lambda q: int(np.quantile(ts, min(max(q, 0.0), 1.0), method="inverted_cdf"))  # noqa: E731
    q_train, q_val = float(np.mean(ts <= t_train)), float(np.mean(ts <= t_val))
    step = (1.0 - q_val) / k_folds
    return [{"method": how if k_folds == 1 else f"walk-forward over {how}",
             "train_start": at(k * step) if cfg.fold_window == "rolling" and k > 0 else None,
             "train_end": t_train if k == 0 else at(q_train + k * step),
             "val_end": t_val if k == 0 else at(q_val + k * step),
             "test_end": int(ts.max()) if k == k_folds - 1 else at(q_val + (k + 1) * step)} for k in range(k_folds)]


@settings(max_examples=60, deadline=None)
@given(times=st.lists(st.integers(0, 60), min_size=1, max_size=300), folds=st.integers(0, 6),
       rolling=st.booleans(), train_frac=st.floats(0.05, 0.8), val_frac=st.floats(0.01, 0.19))
def test_fold_bounds_from_the_distinct_times_are_the_rows_own(times, folds, rolling, train_frac, val_frac):
    """What the shards of a build know of all rows (each distinct time and its row count) gives exactly the
    walk-forward bounds numpy's quantiles give on the rows themselves."""
    ts = np.sort(np.asarray(times, dtype=np.int64) * 300 * 10**9)
    cfg = Config(folds=folds, fold_window="rolling" if rolling else "expanding", train_frac=train_frac,
                 val_frac=val_frac)
    distinct, counts = np.unique(ts, return_counts=True)
    t_val = split_bounds(distinct, cfg, counts)[1]
    if max(folds, 1) > max(int((distinct > t_val).sum()), 1):  # a test period without a time: refused at once
        with pytest.raises(ValueError, match=f"folds={folds}: the out-of-sample span"):
            fold_bounds(distinct, cfg, counts)
        return
    assert fold_bounds(distinct, cfg, counts) == fold_bounds(ts, cfg) == fold_bounds_of_rows(ts, cfg)


def test_more_folds_than_out_of_sample_times_are_refused_at_once():
    """folds=1e300 (a valid int) looped over every fold before any check: prepare ran out of memory. More folds
    than timestamps after validation leave a test period empty: refused before the loop, naming folds."""
    ts = np.arange(100, dtype=np.int64) * 300 * 10**9
    for folds in (11, 10**300):
        with pytest.raises(ValueError, match=rf"folds={folds}: the out-of-sample span .* holds 10 timestamps"):
            fold_bounds(ts, Config(folds=folds, train_frac=0.7, val_frac=0.2))
    assert len(fold_bounds(ts, Config(folds=10, train_frac=0.7, val_frac=0.2))) == 10


@pytest.mark.parametrize("window", ["expanding", "rolling"])
def test_walk_forward_folds_do_not_depend_on_the_shards(outputs, window):
    """Every fold of a walk-forward built in shards of one symbol on 2 threads is the one-shard build, and the
    on-disk sharded cache of a fold is the in-memory build of that fold; a fold without a test window is the
    same one-line error either way."""
    cfg = Config(synth_symbols=4, synth_bars=1500, window=16, horizon=2, folds=3, fold_window=window,
                 train_frac=0.4, val_frac=0.1, shard_rows=1000)
    raw = hostile_raw()
    frame, _ = clean.clean_ohlcv(raw, "x", min_rows=40, keep=("oracle",))
    for k in range(3):
        assert_same_features(features_of(frame, cfg.replace(shard_rows=10**9, build_workers=1), fold=k),
                             features_of(frame, cfg.replace(shard_rows=1, build_workers=2), fold=k))
    fs = dataset.prepare(cfg, verbose=False, fold=1)
    assert len(cache.shards_of(Path(fs.meta["cache_dir"]))) == 4 and fs.meta["splits"]["fold"] == 1
    assert_same_features(fs, dataset.build(cfg, fold=1)[0])
    for shard_rows in (1, 10**9):
        with pytest.raises(ValueError, match="walk-forward fold 0 of 40: the test split holds no window of 16 bars"):
            features_of(frame, cfg.replace(folds=40, shard_rows=shard_rows))
