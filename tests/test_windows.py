"""Batch sources: device windows, dense chunks and the seed-style DataLoader give the same data, whichever way it
is batched, through one protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tradelib.config import Config
from tradelib.train.models import model_for
from tradelib.train.sources import (
    BatchSource,
    DataLoaderSource,
    DenseSource,
    Windows,
    WindowSource,
    dense_chunks,
    take_spans,
    window_ends,
)
from tradelib.train.trainer import seed_everything

CPU = torch.device("cpu")
W = 16  # TINY's window
CHUNK = 40


def naive_window(fs, end: int, window: int) -> np.ndarray:
    """The obvious slice: the reference the device gather is tested against."""
    return fs.X[end - window + 1 : end + 1]


def runs(fs) -> list[tuple[int, int]]:
    """Maximal blocks of rows with one segment and one split, as (first row, last row)."""
    out, a = [], 0
    for t in range(1, len(fs) + 1):
        if t == len(fs) or fs.segment[t] != fs.segment[a] or fs.split[t] != fs.split[a]:
            out.append((a, t - 1))
            a = t
    return out


def brute_force_ends(fs, split: int, window: int) -> np.ndarray:
    ok = []
    for t in range(window - 1, len(fs)):
        rows = slice(t - window + 1, t + 1)
        if (len(set(fs.segment[rows])) == 1 and len(set(fs.symbol_id[rows])) == 1
                and (fs.split[rows] == split).all() and np.isfinite(fs.y[t])):
            ok.append(t)
    return np.array(ok, dtype=np.int64)


@pytest.mark.parametrize("split", [0, 1, 2])
def test_window_ends_never_cross_a_symbol_segment_or_split(tiny_fs, split):
    fs = tiny_fs
    assert len(runs(fs)) > 3 * 3, "the tiny market should hold several runs (symbols x splits, plus gaps)"
    np.testing.assert_array_equal(window_ends(fs, split, W), brute_force_ends(fs, split, W))


def test_device_windows_equal_naive_slices(tiny_fs):
    fs = tiny_fs
    scale = fs.meta.get("target_scale", 1.0)
    data = Windows(fs, W, CPU)
    rng = np.random.default_rng(0)
    for split in (0, 1, 2):
        ends = data.ends(split)
        pick = ends[torch.from_numpy(rng.integers(0, len(ends), 300))]
        x, y = data.gather(pick)
        assert x.shape == (300, W, fs.n_features)
        for i, e in enumerate(pick.tolist()):
            assert torch.equal(x[i], torch.from_numpy(naive_window(fs, e, W)))
            assert y[i] == np.float32(fs.y[e] / scale)
            rows = slice(e - W + 1, e + 1)
            assert len(set(fs.segment[rows])) == 1 and (fs.split[rows] == split).all()


def dense_targets(fs, rf: int, length: int) -> tuple[set[int], set[int]]:
    """(rows dense training must cover once: train split, known target, full history inside a run of at
    least `length` rows; train rows with a known target in runs too short for one chunk)."""
    want, short = set(), set()
    for a, b in runs(fs):
        if fs.split[a] != 0:
            continue
        rows = [r for r in range(a, b + 1) if np.isfinite(fs.y[r])]
        if b - a + 1 >= length:
            want |= {r for r in rows if r - a >= rf - 1}
        else:
            short |= set(rows)
    return want, short


def chunk_rows(data: DenseSource, ids: torch.Tensor) -> torch.Tensor:
    """The rows [B, L] of these chunks."""
    return data.chunk_starts[ids][:, None] + data.chunk_offsets


@pytest.mark.parametrize("length", [CHUNK, 300])  # 300: longer than one training run (277 rows), left out
def test_dense_chunks_cover_every_training_target_once_per_epoch(tiny_fs, length):
    fs = tiny_fs
    rf = model_for(Config(model="tcn", window=W, hidden=8, layers=2), fs.n_features).receptive_field
    data = DenseSource(Windows(fs, W, CPU), length, rf)
    ids = data.epoch(epoch=0, seed=0)
    rows, mask = chunk_rows(data, ids), data.fetch(ids).mask
    covered = rows[mask].tolist()
    want, short = dense_targets(fs, rf, length)
    assert bool(short) == (length == 300)
    assert len(covered) == len(set(covered)), "a target is trained twice in one epoch"
    assert set(covered) == want
    assert not set(covered) & short
    assert int(data.count(torch.arange(len(data)))) == len(want)
    # every per-window training target in a long-enough run is trained by dense mode too
    long_rows = {r for a, b in runs(fs) if b - a + 1 >= length for r in range(a, b + 1)}
    assert {int(e) for e in window_ends(fs, 0, W) if e in long_rows} <= want
    # chunks are contiguous rows of one run
    starts, _ = dense_chunks(fs, 0, length, rf)
    for s in starts:
        blk = slice(s, s + length)
        assert len(set(fs.segment[blk])) == 1 and (fs.split[blk] == 0).all()


def test_dense_predictions_equal_per_window_predictions(tiny_fs):
    fs = tiny_fs
    torch.manual_seed(0)
    model = model_for(Config(model="tcn", window=W, hidden=8, layers=2, init_gain=1.0), fs.n_features).eval()
    rf = model.receptive_field
    data = DenseSource(Windows(fs, W, CPU), CHUNK, rf)
    ids = torch.arange(len(data))
    x, _, mask = data.fetch(ids)
    rows = chunk_rows(data, ids)
    with torch.no_grad():
        dense = model.forward_dense(x)[mask]
        trained = rows[mask].numpy()
        # the per-window function on the last receptive field of every trained row ...
        xw = torch.from_numpy(np.stack([fs.X[r - rf + 1 : r + 1] for r in trained]))
        torch.testing.assert_close(dense, model(xw), rtol=1e-4, atol=1e-5)
        # ... and on the full windows the per-window loader trains on, where those are valid
        ends = set(window_ends(fs, 0, W).tolist())
        sel = np.array([r in ends for r in trained])
        full = torch.from_numpy(np.stack([naive_window(fs, r, W) for r in trained[sel]]))
        torch.testing.assert_close(dense[torch.from_numpy(sel)], model(full), rtol=1e-4, atol=1e-5)
        assert sel.sum() > 1000


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_yields_the_device_loaders_batches(tiny_fs, workers):
    fs, B, seed = tiny_fs, 64, 3
    dev = WindowSource(Windows(fs, W, CPU))
    src = DataLoaderSource(fs, W, CPU, B, num_workers=workers, pin_memory=False, prefetch_factor=2,
                           persistent_workers=workers > 0)
    assert len(src) == len(dev)
    for epoch in (0, 1):
        ids, ids_dev = src.epoch(epoch, seed), dev.epoch(epoch, seed)
        assert torch.equal(ids, ids_dev)
        src.begin(ids)
        n = 0
        for part in ids.split(B):
            x, y, mask = src.fetch(part)
            xd, yd, _ = dev.fetch(part)
            assert mask is None and torch.equal(x, xd) and torch.equal(y, yd)
            assert float(src.count(part)) == float(dev.count(part)) == len(part)
            n += 1
        assert n == -(-len(ids) // B)
        with pytest.raises(StopIteration):
            src.fetch(ids[:B])
    src.close()


@pytest.mark.parametrize("seed", [10**10, 10**14, 2**63, 10**30, -(10**30)])
def test_any_int_seed_shuffles_and_seeds_torch(tiny_fs, seed):
    """seed is any int; torch refuses one outside -2**63 .. 2**64 - 1, and the epoch's seed (seed x 1_000_003 +
    epoch, and x 1_009 for the DataLoader's workers) left it from seed 2e10 (the DataLoader) or 2e13 on: 'Overflow
    when unpacking long long' at the first epoch, after the features were built. Every seed works, and a seed
    torch took (here -1) still gives the order it gave."""
    seed_everything(seed)
    src = DataLoaderSource(tiny_fs, W, CPU, 8, num_workers=0, pin_memory=False, prefetch_factor=2,
                           persistent_workers=False)
    ids = src.epoch(2, seed)[:8]
    src.begin(ids)
    assert src.fetch(ids).x.shape[0] == 8
    assert sorted(WindowSource(Windows(tiny_fs, W, CPU)).epoch(2, seed).tolist()) == list(range(len(src)))
    was = torch.randperm(len(src), generator=torch.Generator().manual_seed(-1 * 1_000_003 + 2))
    assert torch.equal(src.epoch(2, -1), was)


def test_every_source_implements_the_protocol(tiny_fs):
    windows = Windows(tiny_fs, W, CPU)
    rf = model_for(Config(model="tcn", window=W, hidden=8, layers=2), tiny_fs.n_features).receptive_field
    sources = [WindowSource(windows), DenseSource(windows, CHUNK, rf),
               DataLoaderSource(tiny_fs, W, CPU, 8, num_workers=0, pin_memory=False, prefetch_factor=2,
                                persistent_workers=False)]
    for src in sources:
        assert isinstance(src, BatchSource)
        ids = src.epoch(0, seed=1)[:8]
        src.begin(ids)
        batch = src.fetch(ids)
        count = src.count(ids)
        assert batch.x.shape[0] == 8 and count.dtype == torch.float64 and count.dim() == 0
        if batch.mask is None:
            assert float(count) == 8 and batch.y.shape == (8,)
        else:
            assert float(count) == float(batch.mask.sum()) and batch.y.shape == batch.mask.shape
        # ranks share an epoch: equal, disjoint shares of one permutation
        shares = [src.epoch(0, 1, rank, 2) for rank in (0, 1)]
        assert len(shares[0]) == len(shares[1]) == len(src) // 2
        assert not set(shares[0].tolist()) & set(shares[1].tolist())



@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), length=st.integers(1, 8), width=st.integers(0, 3), kind=st.sampled_from(["f", "b"]),
       seed=st.integers(0, 2**16))
def test_take_spans_equals_stacked_slices(n, length, width, kind, seed):
    """One index_select over the overlapping view of every span gives what slicing each span gives."""
    assume(length <= n)
    g = torch.Generator().manual_seed(seed)
    shape = (n,) if width == 0 else (n, width)
    t = torch.randn(shape, generator=g) if kind == "f" else torch.rand(shape, generator=g) < 0.5
    starts = torch.randint(0, n - length + 1, (5,), generator=g)
    want = torch.stack([t[s : s + length] for s in starts.tolist()])
    assert torch.equal(take_spans(t, starts, length), want)


def test_take_spans_refuses_a_strided_tensor():
    with pytest.raises(ValueError, match="contiguous"):
        take_spans(torch.zeros(4, 3).t(), torch.zeros(1, dtype=torch.long), 1)
