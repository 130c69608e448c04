"""Streamed data: blocks of rows copied to the device, windows gathered inside them, shuffled on two levels.

When the budget covers the data the streamed path trains exactly as the resident one (the same loss curve and
weights); with data ten times the budget, the bytes the stream holds on the device, counted tensor by tensor
while each lives, stay within it; every window is trained once an epoch, and evaluation streams too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tradelib import hardware
from tradelib.config import Config
from tradelib.data import dataset
from tradelib.train import stream
from tradelib.train.models import model_for
from tradelib.train.run import TrainingRun, train
from tradelib.train.sources import DenseSource, Windows, WindowSource, window_ends

CPU = torch.device("cpu")
BASE = dict(synth_symbols=6, synth_bars=6000, window=16, hidden=16, layers=1, batch_size=32, eval_batch_size=32,
            device="cpu", compile="off", seed=3, log_every=5)


def curve(run_dir) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r.get("loss", r.get("val_loss"))) for r in rows if r["kind"] in ("step", "epoch")]


def weights(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("case", [dict(model="mlp"), dict(model="tcn", layers=2, dense=True, dense_chunk=48)])
def test_the_streamed_path_trains_exactly_as_the_resident_one_when_the_budget_covers_the_data(outputs, case):
    """loader=stream with blocks of 500 rows (several blocks, all in one resident group): the same batches from
    other device buffers, so the same loss at every log point, the same validation losses and the same final
    weights and test predictions, bit for bit."""
    cfg = Config(**{**BASE, **case, "synth_symbols": 3, "synth_bars": 800, "batch_size": 64}, epochs=2)
    a = train(cfg.replace(run_id="resident", loader="device"), progress=False)
    b = train(cfg.replace(run_id="streamed", loader="stream", stream_block_rows=500), progress=False)
    assert curve(a.run_dir) == curve(b.run_dir) and sum(k == "epoch" for k, _ in curve(a.run_dir)) == 2
    wa, wb = weights(a.run_dir), weights(b.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.summary["pooled_ic"] == b.summary["pooled_ic"]


@pytest.mark.slow
def test_data_ten_times_the_budget_trains_within_it(outputs, capsys):
    """A whole epoch and the evaluations on data ten times `device_memory_budget`: the path is chosen by itself
    and said; the peak of the bytes the stream holds on the device (every buffer, index and batch tensor it
    allocates, counted while it lives) stays within the budget; every training window is fetched exactly once."""
    cfg = Config(**{**BASE, "synth_symbols": 3, "synth_bars": 3000, "window": 8, "hidden": 8, "batch_size": 16,
                    "eval_batch_size": 16}, epochs=1, run_id="small", stream_block_rows=128, model="mlp")
    fs = dataset.prepare(cfg, verbose=False)
    data = stream.resident_bytes(fs, cfg)
    cfg = cfg.replace(device_memory_budget=data / 10)
    run = TrainingRun(cfg, fs=fs, progress=False)
    assert "data streamed to cpu (the data (" in capsys.readouterr().out
    src = run.trainer.source
    assert isinstance(src, stream.StreamSource) and src.n_groups > 3
    seen = []
    fetch = src.fetch
    src.fetch = lambda ids: seen.append(ids.numpy().copy()) or fetch(ids)
    summary = run.fit()
    assert src.ledger.peak <= data / 10, (src.ledger.peak, data / 10)
    assert src.ledger.peak > data / 40  # it did hold blocks, batches and indices
    fetched = np.sort(np.concatenate(seen))
    np.testing.assert_array_equal(fetched, np.arange(len(window_ends(fs, 0, cfg.window))))
    assert summary["test_windows"] == len(window_ends(fs, 2, cfg.window)) and np.isfinite(summary["pooled_ic"])


@settings(max_examples=25, deadline=None)
@given(n_blocks=st.integers(1, 12), k=st.integers(1, 5), world=st.integers(1, 3), seed=st.integers(0, 99),
       epoch=st.integers(0, 3))
def test_the_two_level_shuffle_visits_every_item_once(n_blocks, k, world, seed, epoch):
    """Blocks permuted and taken k at a time, then the items of each group permuted: over the ranks every item at
    most once an epoch, each rank `len // world` of them (what the trainer counts an epoch's steps from: cut per
    group, each rank had up to a remainder per group fewer, and an epoch a step fewer than its schedule), none left
    out but the order's last `len % world`; groups are contiguous in the order (what the two resident slots rely
    on)."""
    rng = np.random.default_rng(n_blocks * 100 + k)
    anchors = np.sort(rng.choice(n_blocks * 50, size=n_blocks * 20, replace=False))
    items = stream.Items(anchors, 50, n_blocks)
    src = stream.StreamSource.__new__(stream.StreamSource)
    src.items, src.stream = items, type("S", (), {"k": k})()
    src.group_of_block = np.zeros(n_blocks, dtype=np.int64)
    orders = [src.epoch(epoch, seed, r, world).numpy() for r in range(world)]
    assert [len(o) for o in orders] == [len(anchors) // world] * world
    union = np.concatenate(orders)
    assert len(np.unique(union)) == len(union)
    groups = [src.group_of_block[items.block[o]] for o in orders]
    assert all((np.diff(g) >= 0).all() or len(src.groups) == 1 for g in groups)  # group after group
    assert len(anchors) - len(union) == len(anchors) % world
    if world == 1:
        np.testing.assert_array_equal(np.sort(union), np.arange(len(anchors)))


def test_streamed_batches_equal_resident_gathers(tiny_fs):
    """Evaluation's and training's streamed batches, with two slots of one small block each, against the resident
    gathers of the same windows and chunks."""
    fs = tiny_fs
    ledger = stream.Ledger()
    blocks = stream.BlockStream(fs, 39, 300, 1, CPU, ledger)
    try:
        res = Windows(fs, 16, CPU)
        sw = stream.StreamWindows(fs, 16, blocks, ledger)
        for split in (0, 1, 2):
            ends = sw.ends(split)
            got = list(sw.batches(ends, 37))
            x = torch.cat([b[0] for b in got])
            y = torch.cat([b[1] for b in got])
            want_x, want_y = res.gather(ends)
            assert torch.equal(x, want_x) and torch.equal(y, want_y)
            assert torch.equal(sw.targets(ends), res.targets(ends))
        rf = model_for(Config(model="tcn", window=16, hidden=8, layers=2), fs.n_features).receptive_field
        dense = DenseSource(res, 40, rf)
        starts, first = stream.dense_chunks(fs, 0, 40, rf)
        streamed = stream.StreamSource(blocks, stream.Items(starts + 39, 300, blocks.n_blocks), 40, ledger,
                                       dense_first=first)
        order = streamed.epoch(0, 1)
        streamed.begin(order)
        for ids in order.split(5):
            a, b = dense.fetch(ids), streamed.fetch(ids)
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.mask, b.mask)
            assert float(dense.count(ids)) == float(streamed.count(ids))
        windows = stream.StreamSource(blocks, stream.Items(window_ends(fs, 0, 16), 300, blocks.n_blocks), 16, ledger)
        resident = WindowSource(res, 0)
        order = windows.epoch(1, 2)
        windows.begin(order)
        for ids in order.split(64):
            a, b = resident.fetch(ids), windows.fetch(ids)
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    finally:
        blocks.close()


@pytest.mark.parametrize("name", ["transformer", "tcn"])
def test_dense_chunks_shorter_than_the_window_stream_whole_evaluation_windows(tiny_fs, name):
    """dense_chunk 8 under window 16 (a tcn's chunks may be shorter than its window; a transformer's run refuses
    them in check_model, but the stream does not depend on the model): a block carries the window's 15 rows before
    it, not the chunk's 7, so each validation and test window streams whole, with one block per slot too (a window
    near a block's start read another block's rows, or past its slot)."""
    cfg = Config(model=name, window=16, hidden=8, layers=1, heads=2, dense=True, dense_chunk=8, loader="stream",
                 stream_block_rows=300, batch_size=32, eval_batch_size=64)
    model = model_for(cfg, tiny_fs.n_features)
    cfg = cfg.replace(device_memory_budget=float(stream.min_budget(tiny_fs, cfg, 8)))  # one block per slot
    windows, source = stream.make_sources(tiny_fs, model, cfg, CPU)
    try:
        assert source.plan.blocks_per_slot == 1 and windows.stream.halo == 15
        res = Windows(tiny_fs, 16, CPU)
        for split in (0, 1, 2):
            ends = windows.ends(split)
            x = torch.cat([b[0] for b in windows.batches(ends, 64)])
            assert torch.equal(x, res.gather(ends)[0])
    finally:
        source.close()


def test_a_budget_too_small_for_one_block_is_one_clear_line(tiny_fs):
    cfg = Config(window=16, batch_size=64, loader="stream", device_memory_budget=10_000)
    with pytest.raises(ValueError, match=r"parameter 'device_memory_budget' .* holds not even one block"):
        stream.plan(tiny_fs, cfg, CPU, 16)


def test_the_budget_chooses_resident_or_streamed(tiny_fs):
    cfg = Config(window=16, stream_block_rows=256, batch_size=64, eval_batch_size=64)
    data = stream.resident_bytes(tiny_fs, cfg)
    assert not stream.plan(tiny_fs, cfg.replace(device_memory_budget=data + 1), CPU, 16).streamed
    assert stream.plan(tiny_fs, cfg.replace(device_memory_budget=data - 1), CPU, 16).streamed
    assert stream.budget_bytes(0.5, CPU) == hardware.device_memory(CPU) // 2


@settings(max_examples=12, deadline=None)
@given(block_rows=st.integers(60, 700), k=st.integers(1, 3), batch=st.integers(4, 90), world=st.integers(1, 2),
       epochs=st.integers(1, 2), skip=st.integers(0, 50), dense=st.booleans())
def test_an_announced_order_is_fetched_from_one_index_upload_per_run(tiny_fs, block_rows, k, batch, world, epochs,
                                                                     skip, dense):
    """`begin` announces the order (here as the bench does: several epochs at once, the groups being the last
    one's; and as a resume does: from part-way in); its batches, fetched in turn, equal the resident gathers of
    the same items, and the stream uploads each run's index once (rows; dense: and the first trained offsets),
    not once a batch. A run is never longer than its group's items: what the budget leaves room for."""
    fs, ledger = tiny_fs, stream.Ledger()
    rf = model_for(Config(model="tcn", window=16, hidden=8, layers=2), fs.n_features).receptive_field
    span = 40 if dense else 16
    blocks = stream.BlockStream(fs, span - 1, block_rows, k, CPU, ledger)
    try:
        res = Windows(fs, 16, CPU)
        if dense:
            starts, first = stream.dense_chunks(fs, 0, 40, rf)
            items, resident = stream.Items(starts + 39, block_rows, blocks.n_blocks), DenseSource(res, 40, rf)
        else:
            items, first = stream.Items(window_ends(fs, 0, 16), block_rows, blocks.n_blocks), None
            resident = WindowSource(res, 0)
        src = stream.StreamSource(blocks, items, span, ledger, dense_first=first)
        order = torch.cat([src.epoch(e, 7, world - 1, world) for e in range(epochs)])[skip:]
        uploads = []
        upload = blocks.upload
        blocks.upload = lambda a, led: uploads.append(len(a)) or upload(a, led)
        src.begin(order)
        for ids in order.split(batch):
            a, b = resident.fetch(ids), src.fetch(ids)
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
            assert (a.mask is None and b.mask is None) or torch.equal(a.mask, b.mask)
            assert float(resident.count(ids)) == float(src.count(ids))
        runs = len(src.run_group)
        assert len(uploads) == runs * (2 if dense else 1) and src.pos == len(order)
        in_group = np.bincount(src.group_of_block[items.block], minlength=len(src.groups))
        assert (np.diff(src.run_start) <= in_group[src.run_group]).all()
    finally:
        blocks.close()


def test_evaluation_between_fetches_of_an_announced_order_leaves_the_batches_right(tiny_fs):
    """Streamed evaluation in the middle of an announced order (its blocks take both slots, and the run's index
    was uploaded for a slot that now holds other rows): the batches after it still equal the resident ones."""
    fs, ledger = tiny_fs, stream.Ledger()
    blocks = stream.BlockStream(fs, 15, 250, 2, CPU, ledger)
    try:
        res = Windows(fs, 16, CPU)
        src = stream.StreamSource(blocks, stream.Items(window_ends(fs, 0, 16), 250, blocks.n_blocks), 16, ledger)
        sw, resident = stream.StreamWindows(fs, 16, blocks, ledger), WindowSource(res, 0)
        order = src.epoch(3, 1)
        src.begin(order)
        assert len(src.run_group) > 2
        for j, ids in enumerate(order.split(40)):
            if j in (3, 11):
                list(sw.batches(sw.ends(1), 64))
                list(sw.batches(sw.ends(0)[-100:], 64))
            a, b = resident.fetch(ids), src.fetch(ids)
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y), j
    finally:
        blocks.close()


def test_dense_training_says_what_chunks_longer_than_a_stretch_leave_untrained(tiny_fs, capsys):
    """A stretch of one segment in the training split shorter than dense_chunk trains nothing: said with the
    positions it holds (those with a full receptive field), counted here row by row; nothing said when chunks fit."""
    from .conftest import TINY

    cfg = Config(**{**TINY, "model": "tcn", "dense": True, "dense_chunk": 300, "layers": 2})
    model = model_for(cfg, tiny_fs.n_features)
    rf, runs, run = model.receptive_field, [], 0
    for i in range(len(tiny_fs)):  # the training split's stretches, row by row
        same = i > 0 and tiny_fs.segment[i] == tiny_fs.segment[i - 1] and tiny_fs.split[i] == tiny_fs.split[i - 1]
        if not same and run:
            runs.append(run)
        run = (run + 1 if same else 1) if tiny_fs.split[i] == 0 else 0
    runs.append(run)
    positions = [max(n - rf + 1, 0) for n in runs if n]
    left = sum(p for p, n in zip(positions, [n for n in runs if n]) if n < 300)
    assert left > 0
    stream.make_sources(tiny_fs, model, cfg, CPU, verbose=True)
    assert f"dense: {left:,} of {sum(positions):,} training positions" in capsys.readouterr().out
    stream.make_sources(tiny_fs, model, cfg.replace(dense_chunk=64), CPU, verbose=True)
    assert "dense:" not in capsys.readouterr().out
