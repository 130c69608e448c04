"""The fast evaluation under the definitions, against the definitions: the segment operations the features are
written with (segments.py), bar sizes from the majority step, and bad prints judged a block of rows at a
time."""

import numpy as np
import pytest

from tradelib.data import detect, load, segments


def _runs(n: int, n_runs: int, rng) -> np.ndarray:
    new = np.zeros(n, dtype=bool)
    new[0] = True
    new[rng.choice(np.arange(1, n), n_runs - 1, replace=False)] = True
    return new


@pytest.mark.parametrize("n_runs", [1, 7, 300, 5000])
def test_run_ids_and_ranks_match_their_definitions(n_runs):
    rng = np.random.default_rng(n_runs)
    new = _runs(20_000, n_runs, rng)
    ids = np.cumsum(new) - 1
    assert np.array_equal(segments.run_ids(new), ids)
    rank = np.arange(len(new)) - np.flatnonzero(new)[ids]
    assert np.array_equal(segments.run_rank(new), rank)
    assert np.array_equal(segments.segment_rank(ids.astype(np.int32)), rank)


def _lag(x: np.ndarray, k: int, seg: np.ndarray, fill=np.nan) -> np.ndarray:
    """The definition: x[t-k] (k > 0) or x[t+|k|] (k < 0) where that row is in t's segment, else `fill`."""
    n, m = len(x), abs(k)
    out = np.full(n, fill, dtype=x.dtype if fill is False else np.float64)
    if m < n:
        if k > 0:
            out[k:] = np.where(seg[k:] == seg[:-k], x[:-k], fill)
        else:
            out[:-m] = np.where(seg[:-m] == seg[m:], x[m:], fill)
    return out


def _trailing_mean(x: np.ndarray, length: int, seg: np.ndarray) -> np.ndarray:
    """The definition: the mean of the finite x over the segment's last `length` rows up to t, NaN if none."""
    out = np.full(len(x), np.nan)
    for t in range(len(x)):
        lo = max(t - length + 1, 0)
        window = x[lo : t + 1][seg[lo : t + 1] == seg[t]]
        window = window[np.isfinite(window)]
        if len(window):
            out[t] = window.mean()
    return out


@pytest.mark.parametrize("n_runs", [1, 40, 900])
def test_segment_operations_match_their_definitions(n_runs):
    """Lags, leads and differences are the definitions exactly; trailing means (summed by doubling, NaN left out)
    equal the mean over each window to rounding. A block that begins inside a segment (given its rows' true ranks)
    gives the same values as all rows."""
    rng = np.random.default_rng(n_runs)
    seg = np.cumsum(_runs(3_000, n_runs, rng)) - 1
    x = rng.lognormal(size=len(seg)) * 10.0 ** rng.integers(-8, 15, len(seg))  # magnitudes of every size
    x[rng.choice(len(x), 30, replace=False)] = np.nan
    flag = rng.random(len(seg)) < 0.05
    s = segments.Segments.of(seg)
    for k in (1, 3, 16, 64, 5000):
        np.testing.assert_array_equal(s.diff(x, k), x - _lag(x, k, seg))
        np.testing.assert_array_equal(s.lead(x, k), _lag(x, -k, seg))
        np.testing.assert_array_equal(s.ahead(flag, k), _lag(flag, -k, seg, fill=False))
        assert np.array_equal(s.outside(k), np.flatnonzero(s.rank[k:] < k) + k)
    for lengths in ((8, 32), (64,), (5, 1, 3)):
        for mean, length in zip(s.trailing_means(x, lengths), lengths):
            np.testing.assert_allclose(mean, _trailing_mean(x, length, seg), rtol=1e-12)
    lo = 37  # a block of rows from inside a segment
    block = segments.Segments(s.rank[lo:])
    np.testing.assert_array_equal(block.trailing_means(x[lo:], (8, 32))[1][64:],
                                  s.trailing_means(x, (8, 32))[1][lo + 64 :])


@pytest.mark.parametrize("kind", ["regular", "gaps", "irregular", "tie", "one_step"])
def test_bar_sizes_from_the_majority_step_match_the_counting_path(kind, monkeypatch):
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
    monkeypatch.setattr(detect, "_majority_steps", lambda *a: None)
    assert np.array_equal(fast, detect.bar_sizes_ns(codes, ts, 6))


def _trailing_level(x: np.ndarray, code: np.ndarray) -> np.ndarray:
    """The definition: per row t, the median of the symbol's values in the last full block of LEVEL_BLOCK rows
    before t's own block, or in the first block, of all the symbol's earlier rows (NaN with fewer than
    LEVEL_MIN_ROWS)."""
    level = np.full(len(x), np.nan)
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(x)]):
        for t in range(a + detect.LEVEL_MIN_ROWS, b):
            j, block = t - a, detect.LEVEL_BLOCK
            lo = a + (j // block - 1) * block if j >= block else a
            level[t] = np.median(x[lo : lo + block] if j >= block else x[a:t])
    return level


def test_bad_print_rows_match_their_definition():
    """bad_print_rows compares a block of rows at a time against the per-row definition."""
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
        lev, vol = _trailing_level(a["close"], code), _trailing_level(a["volume"], code)
        for k in load.PRICE_COLS:
            want[k] = (a[k] > lev * 10**1.5) | (a[k] < lev * 10**-1.5)
        want["volume"] = (a["volume"] > vol * 100.0) & (vol > 0)
        got = detect.bad_print_rows(a, code, 1.5, 2.0)
        assert set(got) == {k for k, v in want.items() if v.any()}
        for k, v in got.items():
            np.testing.assert_array_equal(v, want[k], err_msg=k)
