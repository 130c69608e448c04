"""The build's faster paths (docs/perf.md, issue 13's fourth pass) against the direct definitions they replace:
run ids and ranks filled per run, `_outside` from the segments' first rows, shifts without `np.where`, segments and
bar sizes a symbol at a time, the clean rows' range stats derived from the dropped rows, and bad prints judged a
block of rows at a time."""

import numpy as np
import pandas as pd
import pytest

from tradelib.data import clean, detect, features, load, quality, synth


def _runs(n: int, n_runs: int, rng) -> np.ndarray:
    new = np.zeros(n, dtype=bool)
    new[0] = True
    new[rng.choice(np.arange(1, n), n_runs - 1, replace=False)] = True
    return new


@pytest.mark.parametrize("n_runs", [1, 7, 300, 5000])
def test_run_ids_ranks_and_outside_match_their_definitions(n_runs):
    rng = np.random.default_rng(n_runs)
    new = _runs(20_000, n_runs, rng)
    ids = np.cumsum(new) - 1
    assert np.array_equal(features._run_ids(new), ids)
    starts = np.flatnonzero(new)
    rank = np.arange(len(new)) - starts[ids]
    assert np.array_equal(features._run_rank(new), rank)
    assert np.array_equal(features.segment_rank(ids.astype(np.int32)), rank)
    for lo in (0, 37):  # a block of rows may begin inside a segment
        cache: dict = {}
        for m in (1, 2, 3, 4, 8, 16, 32, 64):
            block = rank[lo:]
            assert np.array_equal(features._outside(block, m, cache), np.flatnonzero(block[m:] < m) + m)


def test_shift_matches_where():
    rng = np.random.default_rng(1)
    seg = np.cumsum(_runs(5_000, 40, rng)) - 1
    x = rng.normal(size=len(seg))
    for k in (1, 3, -1, -4, 6000):
        m = abs(k)
        ref = np.full(len(x), np.nan)
        if m < len(x):
            if k > 0:
                ref[k:] = np.where(seg[k:] == seg[:-k], x[:-k], np.nan)
            else:
                ref[:-m] = np.where(seg[:-m] == seg[m:], x[m:], np.nan)
        assert np.array_equal(features._shift(x, k, seg), ref, equal_nan=True)


@pytest.mark.parametrize("n_symbols", [3, 400])  # few symbols: a symbol at a time; many: over all rows at once
def test_segment_ids_match_the_per_row_rule(n_symbols):
    rng = np.random.default_rng(n_symbols)
    codes = np.sort(rng.integers(0, n_symbols, 30_000))
    bar_of_code = rng.choice([60, 300, 3600], n_symbols).astype(np.int64) * 10**9
    steps = bar_of_code[codes] * rng.choice([1, 1, 1, 2, 60], len(codes))
    ts = np.cumsum(steps)
    new = np.r_[True, (codes[1:] != codes[:-1]) | (np.diff(ts) > 50 * bar_of_code[codes][1:])]
    assert np.array_equal(features.segment_ids(codes, ts, bar_of_code, 50), np.cumsum(new) - 1)


@pytest.mark.parametrize("kind", ["regular", "gaps", "irregular", "tie", "one_step"])
def test_bar_sizes_a_symbol_at_a_time_match_the_counting_path(kind, monkeypatch):
    rng = np.random.default_rng(len(kind))
    per = 3 if kind == "one_step" else 2_000
    codes = np.repeat(np.arange(5), per)
    bar = np.array([60, 300, 900, 3600, 86400]) * 10**9
    steps = np.repeat(bar, per)
    if kind == "gaps":
        steps = steps * rng.choice([1] * 8 + [2, 7], len(steps))
    elif kind == "irregular":
        steps = rng.integers(1, 10**12, len(steps))
    elif kind == "tie":  # two steps equally common: no majority
        steps = steps * np.tile([1, 2], len(steps) // 2)
    ts = np.concatenate([np.cumsum(steps[codes == c]) for c in range(5)])
    fast = detect.bar_sizes_ns(codes, ts, 6)
    monkeypatch.setattr(detect, "_majority_by_symbol", lambda *a: None)
    monkeypatch.setattr(detect, "_majority_steps", lambda *a: None)
    assert np.array_equal(fast, detect.bar_sizes_ns(codes, ts, 6))


def test_clean_range_stats_derived_from_dropped_rows_match_a_fresh_pass():
    """Rows dropped holding a column's extreme, a zero of either sign, NaN and inf: the clean rows' range stats (from
    the stats before and the dropped values where no rule repaired the column) equal a pass over the clean rows."""
    derived = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        raw = synth.generate_market(n_symbols=3, n_bars=2_000, seed=seed)
        for col in load.NUM_COLS:
            v = raw[col].to_numpy().copy()
            at = rng.choice(len(v), 4, replace=False)
            v[at] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, np.nanmin(v), np.nanmax(v)], 4)
            raw[col] = v
        close = raw["close"].to_numpy().copy()
        close[int(np.nanargmax(np.where(np.isfinite(close), close, np.nan)))] = np.nan  # drops the largest close
        raw["close"] = close
        raw = pd.concat([raw.iloc[:1], raw]).reset_index(drop=True)  # a duplicate
        for part, shard in clean.clean_parts(raw, "x", min_rows=20, shard_rows=2_500):
            fresh = quality.range_stats({c: shard.a[c] for c in load.NUM_COLS}, shard.a["ts"])
            assert repr(part["after"]) == repr(fresh)  # values, None, ints and the sign of a zero alike
            derived += part["rows_in"] > part["rows_kept"]
    assert derived  # shards with dropped rows were checked


def test_bad_print_rows_match_their_definition():
    """bad_print_rows compares a block of rows at a time; trailing_level is the per-row definition."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        lens = rng.integers(1, 300, rng.integers(1, 6))
        code = np.repeat(np.arange(len(lens), dtype=np.int32), lens)
        n = len(code)
        close = np.exp(rng.normal(0, 0.3, n).cumsum())
        a = {k: close * np.exp(rng.normal(0, 0.01, n)) for k in ("open", "high", "low")}
        a |= {"close": close, "volume": rng.lognormal(5, 1, n) * (rng.random(n) > 0.3)}
        for k in a:
            a[k][rng.integers(0, n, 5)] *= 10.0 ** rng.choice([-6, -2, 2, 8], 5)
        want: dict[str, np.ndarray] = {}
        lev, vol = detect.trailing_level(a["close"], code), detect.trailing_level(a["volume"], code)
        for k in load.PRICE_COLS:
            want[k] = (a[k] > lev * 10**1.5) | (a[k] < lev * 10**-1.5)
        want["volume"] = (a["volume"] > vol * 100.0) & (vol > 0)
        got = detect.bad_print_rows(a, code, 1.5, 2.0)
        assert set(got) == {k for k, v in want.items() if v.any()}
        for k, v in got.items():
            np.testing.assert_array_equal(v, want[k], err_msg=k)
