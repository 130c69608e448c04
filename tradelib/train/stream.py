"""Data larger than the device: the feature arrays stay on the host (memory-mapped from the cache) and contiguous
blocks of rows are copied to the device ahead of use, where windows are gathered inside them.

The device holds two slots of `K` blocks each (`BlockStream`): training reads one while a loader thread fills the
other (on CUDA: from pinned host buffers on a side stream, ordered by events, so the training thread never waits
on the host for a copy). A block carries the rows before it (`halo_rows`), so every window (or dense chunk) ending
in it is whole there. `device_memory_budget` decides: the data resident when it fits (`sources.resident_sources`),
streamed otherwise; `make_sources` here says which and why.

Shuffling is on two levels: an epoch permutes the blocks, takes them `K` at a time (a group, resident together),
and permutes the items of each group. Unlike a full shuffle, consecutive batches draw from the same `K` blocks
(rows close in time, or the same symbols) until the group is used up: batches within a group are more alike
than uniformly shuffled ones, and an item's neighbours in the epoch are drawn from K x block_rows rows, not from
all. When one group holds every block, the order is the resident path's own: both train alike, step for step.
"""

from __future__ import annotations

import math
import queue
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tradelib.data.features import FeatureSet
from tradelib.hardware import device_memory
from tradelib.train.sources import (
    Batch,
    BatchSource,
    Windows,
    dense_chunks,
    dense_left_out,
    epoch_order,
    resident_sources,
    take_spans,
    torch_seed,
    window_ends,
)


def row_bytes(fs: FeatureSet, cfg) -> int:
    """Device bytes per slot row: its features and scaled target (float32), the target's validity, and the index
    of the items a slot's group trains (at most one item per row): the device row each ends at (int64), and in
    dense mode the offset of its first trained row (int64)."""
    return fs.n_features * 4 + 4 + 1 + (16 if cfg.dense else 8)


def budget_bytes(value: float, device: torch.device) -> int:
    """`device_memory_budget` in bytes: a fraction of the device's memory when at most 1, else bytes."""
    return int(value * device_memory(device)) if value <= 1 else int(value)


def resident_bytes(fs: FeatureSet, cfg) -> int:
    """What the resident path puts on the device: the features and scaled targets of every row, the window
    ends of the three splits (int64), and in dense mode a validity flag per row and two int64 per chunk."""
    n = len(fs)
    total = n * (fs.n_features * 4 + 4)
    total += 8 * sum(len(window_ends(fs, s, cfg.window)) for s in (0, 1, 2))
    if cfg.dense:
        total += n + 16 * (n // max(1, cfg.dense_chunk // 2) + 1)
    return total


class Ledger:
    """Bytes of every device tensor the stream allocates, counted while each one lives (released when it is
    garbage collected), and their peak: the measured data footprint the budget bounds."""

    def __init__(self) -> None:
        self.now = self.peak = 0
        self._lock = threading.Lock()

    def track(self, t: torch.Tensor) -> torch.Tensor:
        n = t.numel() * t.element_size()
        with self._lock:
            self.now += n
            self.peak = max(self.peak, self.now)
        weakref.finalize(t, self._release, n)
        return t

    def _release(self, n: int) -> None:
        with self._lock:
            self.now -= n


@dataclass
class Slot:
    """One half of the device buffer: the blocks it holds (or is loading) and the events that order its use."""

    index: int
    group: tuple = ()
    issued: threading.Event | None = None  # set once its copy is enqueued (CPU: done)
    copied: object = None  # CUDA event recorded on the copy stream after the copy
    released: object = None  # CUDA event recorded on the compute stream once training left the slot


class BlockStream:
    """Two device slots of `blocks_per_slot` blocks of `block_rows` rows (each block with the `halo` rows before
    it), filled from host arrays by a loader thread. `request(group)` makes a group of blocks resident and returns
    where each block's rows start on the device; `prefetch(group)` starts loading the next one."""

    def __init__(self, fs: FeatureSet, halo: int, block_rows: int, blocks_per_slot: int, device: torch.device,
                 ledger: Ledger) -> None:
        self.fs, self.halo, self.block_rows, self.k, self.device = fs, halo, block_rows, blocks_per_slot, device
        if device.type == "cuda" and device.index is None:  # the loader thread must name the device it copies to
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.scale = float(fs.meta.get("target_scale", 1.0))
        self.n_blocks = max(1, math.ceil(len(fs) / block_rows))
        self.slot_rows = blocks_per_slot * (block_rows + halo)
        cuda = device.type == "cuda"
        self.X = ledger.track(torch.empty(2 * self.slot_rows, fs.n_features, device=device))
        self.y = ledger.track(torch.empty(2 * self.slot_rows, device=device))
        self.valid = ledger.track(torch.zeros(2 * self.slot_rows, dtype=torch.bool, device=device))
        pin = {"pin_memory": True} if cuda else {}  # host staging, one per slot, page-locked for async copies
        self.staging = [(torch.empty(self.slot_rows, fs.n_features, **pin), torch.empty(self.slot_rows, **pin),
                         torch.empty(self.slot_rows, dtype=torch.bool, **pin)) for _ in range(2)] if cuda else None
        self.copy_stream = torch.cuda.Stream(device) if cuda else None
        self.slots = [Slot(0), Slot(1)]
        self.base = np.full((2, self.n_blocks), -1, dtype=np.int64)  # per slot: device row of each block's first
        self.current: Slot | None = None
        self.loads = 0  # groups loaded (a measure of the stream's traffic)
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="tradelib-stream", daemon=True)
        self._thread.start()

    # -- rows ------------------------------------------------------------------------------------------------
    def rows_of(self, block: int) -> tuple[int, int]:
        """The host rows block `block` brings to the device: its own and the `halo` before them."""
        return max(0, block * self.block_rows - self.halo), min(len(self.fs), (block + 1) * self.block_rows)

    def local(self, rows: np.ndarray, blocks: np.ndarray, slot: Slot) -> np.ndarray:
        """Device rows of host `rows`, each read from block `blocks` as `slot` holds it."""
        starts = np.maximum(0, blocks * self.block_rows - self.halo)
        return self.base[slot.index, blocks] + rows - starts

    # -- residency -------------------------------------------------------------------------------------------
    def request(self, group: tuple, keep: tuple = ()) -> Slot:
        """Make `group` resident (loading it into a slot that holds neither it nor `keep` when needed) and return
        its slot; on CUDA the compute stream then waits for its copy (no host wait on the device)."""
        if self.current is not None and self.current.group == group:  # resident, and waited for already
            return self.current
        slot = self._holding(group) or self._load(group, avoid=keep)
        slot.issued.wait()
        if slot.copied is not None:
            torch.cuda.current_stream(self.device).wait_event(slot.copied)
        self.current = slot
        return slot

    def prefetch(self, group: tuple, keep: tuple) -> Slot | None:
        """Start loading `group` into the slot that does not hold `keep` (the group in use); its slot."""
        if not group:
            return None
        return self._holding(group) or self._load(group, avoid=keep)

    def layout(self, group: tuple) -> np.ndarray:
        """Where each block of `group` starts within a slot that holds the group (the slot's first row: 0)."""
        sizes = [z - a for a, z in map(self.rows_of, group)]
        return np.cumsum([0, *sizes[:-1]]).astype(np.int64)

    def _holding(self, group: tuple) -> Slot | None:
        return next((s for s in self.slots if s.group == group), None)

    def _load(self, group: tuple, avoid: tuple) -> Slot:
        free = [s for s in self.slots if not avoid or s.group != avoid]
        slot = next((s for s in free if s is not self.current), free[0])
        if slot.issued is not None:
            slot.issued.wait()  # its previous load is enqueued before it is overwritten
        if slot is self.current:
            self.current = None  # the next request of the group it held waits for a reload
        if self.device.type == "cuda":  # training may still read it: the copy waits for that, on the device
            slot.released = torch.cuda.Event()
            slot.released.record(torch.cuda.current_stream(self.device))
        self.base[slot.index] = -1
        slot.group, slot.issued = group, threading.Event()
        self.base[slot.index, list(group)] = slot.index * self.slot_rows + self.layout(group)
        self.loads += 1
        self._jobs.put((slot, group))
        return slot

    def upload(self, a: np.ndarray, ledger: Ledger) -> torch.Tensor:
        """A small host array (indices) on the device, copied without a host sync: through page-locked memory
        on CUDA (PyTorch's caching host allocator reuses it once the copy is done)."""
        t = torch.from_numpy(np.ascontiguousarray(a))
        if self.device.type == "cuda":
            t = torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)
        return ledger.track(t.to(self.device, non_blocking=True))

    def _work(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        while (job := self._jobs.get()) is not None:
            slot, group = job
            try:
                self._copy(slot, group)
            finally:
                slot.issued.set()

    def _copy(self, slot: Slot, group: tuple) -> None:
        """Host rows of the group's blocks -> the slot: straight into the buffer on a CPU; through the slot's
        pinned staging and the copy stream on CUDA."""
        if self.copy_stream is None:
            dst = (self.X[slot.index * self.slot_rows:], self.y[slot.index * self.slot_rows:],
                   self.valid[slot.index * self.slot_rows:])
        else:
            while slot.copied is not None and not slot.copied.query():  # the staging's last copy is done
                time.sleep(0.0002)  # (polled: no synchronising call, on the loader thread only)
            dst = self.staging[slot.index]
        pos = 0
        for b in group:
            a, z = self.rows_of(b)
            y = np.asarray(self.fs.y[a:z], dtype=np.float32)
            ok = np.isfinite(y)
            dst[0][pos : pos + z - a].numpy()[:] = self.fs.X[a:z]
            dst[1][pos : pos + z - a].numpy()[:] = np.where(ok, y / self.scale, 0.0)
            dst[2][pos : pos + z - a].numpy()[:] = ok
            pos += z - a
        if self.copy_stream is not None:
            start = slot.index * self.slot_rows
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(slot.released)
                for buf, src in zip((self.X, self.y, self.valid), dst):
                    buf[start : start + pos].copy_(src[:pos], non_blocking=True)
                slot.copied = torch.cuda.Event()
                slot.copied.record(self.copy_stream)

    def close(self) -> None:
        """Stop the loader thread (after the load it is doing)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()


class Items:
    """Training items (windows or dense chunks) of a stream: the row each ends at (its anchor, ascending), and
    their blocks."""

    def __init__(self, anchors: np.ndarray, block_rows: int, n_blocks: int) -> None:
        self.anchors = anchors
        self.block = (anchors // block_rows).astype(np.int64)
        self.first = np.searchsorted(self.block, np.arange(n_blocks + 1))  # items of block b: first[b]..first[b+1]
        self.n_blocks = n_blocks


class StreamSource:
    """The BatchSource of streamed data: items numbered in row order, shuffled on two levels (module doc).

    `begin(ids)` cuts the order into runs (stretches of items of one group) and computes, once, the row each item
    ends at within its group's slot; each run's rows go to the device once (pinned, non-blocking on CUDA) when its
    group becomes current or is prefetched. A fetch of the next items of that order is then a slice of the run's
    device index and the gather kernels: no per-batch upload, no host sync, O(1) bookkeeping beyond checking that
    the ids are the announced ones. Other ids (a probe, or no `begin`) take the general path, one upload a batch."""

    def __init__(self, stream: BlockStream, items: Items, span: int, ledger: Ledger,
                 dense_first: np.ndarray | None = None) -> None:
        self.stream, self.items, self.span, self.ledger = stream, items, span, ledger
        self.device = stream.device
        self.ids_device = torch.device("cpu")  # items are announced and cut into runs on the host
        self.dense_first = dense_first  # dense mode: the first row each chunk trains on
        if dense_first is not None:  # its valid targets: known targets from its first trained row to its anchor
            known = np.r_[0, np.cumsum(np.isfinite(stream.fs.y))]
            self.n_valid = known[items.anchors + 1] - known[dense_first]
        self.offsets = torch.arange(-span + 1, 1, device=self.device)
        self.group_of_block = np.zeros(items.n_blocks, dtype=np.int64)
        self.groups: list[tuple] = []
        k, nb = stream.k, items.n_blocks  # until an epoch shuffles them: consecutive blocks, k a group
        self._set_groups([tuple(range(i, min(i + k, nb))) for i in range(0, nb, k)])
        self.pos, self.run, self.index = 0, 0, {}

    def __len__(self) -> int:
        return len(self.items.anchors)

    @property
    def n_groups(self) -> int:
        return math.ceil(self.items.n_blocks / self.stream.k)

    @property
    def order_key(self) -> tuple[int, int] | None:
        """What the epoch's order depends on beyond (seed, epoch): None when it is the resident path's."""
        return None if self.n_groups == 1 else (self.stream.block_rows, self.stream.k)

    def epoch(self, epoch: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """This rank's share of the epoch's order: each group's permuted items, group after group (the resident
        order when one group holds every block), dealt out as the resident path deals its order: `len // world`
        items to each rank, the last `len % world` left out. The trainer counts an epoch's steps from that (cut
        per group, the remainders of all groups left out made an epoch a step shorter than its schedule)."""
        k, nb = self.stream.k, self.items.n_blocks
        if self.n_groups == 1:
            self._set_groups([tuple(range(nb))])
            return epoch_order(len(self), epoch, seed, rank, world)
        g = torch.Generator().manual_seed(torch_seed(seed * 1_000_003 + epoch))
        blocks = torch.randperm(nb, generator=g).numpy()
        self._set_groups([tuple(sorted(blocks[i : i + k].tolist())) for i in range(0, nb, k)])
        parts = []
        for group in self.groups:
            ids = np.concatenate([np.arange(self.items.first[b], self.items.first[b + 1]) for b in group])
            perm = torch.from_numpy(ids)[torch.randperm(len(ids), generator=g)]
            parts.append(perm)
        order = torch.cat(parts)
        return order[rank : (len(order) // world) * world : world]

    def _set_groups(self, groups: list[tuple]) -> None:
        self.groups = groups
        for j, group in enumerate(groups):
            self.group_of_block[list(group)] = j
        self.order, self.index = None, {}  # an order announced before was cut by the groups it had: no longer

    # -- the announced order ---------------------------------------------------------------------------------
    def begin(self, ids: torch.Tensor) -> None:
        """The order these items come in: its runs (each at most its group's items long, so that a run's index
        fits the room the budget leaves it), each item's row within its group's slot, and the first group's load."""
        i = ids.cpu().numpy().astype(np.int64)  # a copy: the indices below hold for it, whatever becomes of `ids`
        blocks = self.items.block[i]
        g = self.group_of_block[blocks]
        cap = np.bincount(self.group_of_block[self.items.block], minlength=len(self.groups))  # items of each group
        change = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if len(g) else np.zeros(0, np.int64)
        starts = [np.arange(a, z, cap[g[a]]) for a, z in zip(change, np.r_[change[1:], len(g)])]
        starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.run_start, self.run_group = [*starts.tolist(), len(g)], g[starts].tolist()  # (Python ints: cheap)
        place = np.zeros(self.items.n_blocks, dtype=np.int64)  # each block's first row within its group's slot
        for group in {self.groups[j] for j in self.run_group}:
            place[list(group)] = self.stream.layout(group)
        self.within = place[blocks] + self.items.anchors[i] - np.maximum(0, blocks * self.stream.block_rows
                                                                          - self.stream.halo)
        self.first = None if self.dense_first is None else self.dense_first[i] - self.items.anchors[i]  # <= 0
        self.order, self.pos, self.run, self.index = i, 0, 0, {}
        if len(i):
            self._enter(0)

    def _enter(self, r: int) -> None:
        """Run `r` is current: the indices of the runs before it go; its group (loaded already, unless this is the
        first run or evaluation took the slots) and then the next run's are prefetched, each run's index uploaded
        for the slot its group goes to."""
        self.run = r
        for done in [j for j in self.index if j < r]:
            del self.index[done]
        group = lambda j: self.groups[self.run_group[j]]
        self._run_index(r, self.stream.prefetch(group(r), keep=()))
        if r + 1 < len(self.run_group):
            self._run_index(r + 1, self.stream.prefetch(group(r + 1), keep=group(r)))

    def _run_index(self, r: int, slot: Slot) -> tuple:
        """(device rows the items of run `r` end at, as `slot` holds the run's group; dense: their first trained
        offsets), uploaded once per run and slot."""
        have = self.index.get(r)
        if have is None or have[0] != slot.index:
            self.index.pop(r, None)  # the old one goes before the new one comes (the ledger's peak)
            a, z = self.run_start[r], self.run_start[r + 1]
            ends = self.stream.upload(self.within[a:z] + slot.index * self.stream.slot_rows, self.ledger)
            first = None if self.first is None else self.stream.upload(self.first[a:z], self.ledger)
            self.index[r] = have = (slot.index, ends, first)
        return have

    def _part(self, r: int, a: int, n: int) -> Batch:
        """Items a..a+n of run `r` (positions within the run), gathered with its group resident."""
        slot = self.stream.request(self.groups[self.run_group[r]])
        _, ends, first = self._run_index(r, slot)
        return self._batch(ends[a : a + n], None if first is None else first[a : a + n])

    # -- batches ---------------------------------------------------------------------------------------------
    def fetch(self, ids: torch.Tensor) -> Batch:
        """The batch of these items. The next ones of the announced order: slices of their runs' device indices
        (a batch across runs gathers each part while its group is resident). Any others: the general path."""
        i = ids.cpu().numpy()  # items live on the host (the trainer's start-up probe passes device ids)
        p, n = self.pos, len(i)
        if self.order is None or not n or p + n > len(self.order) or not np.array_equal(i, self.order[p : p + n]):
            return self._fetch_any(i)
        self.pos, parts = p + n, []
        while p < self.pos:
            r = self.run
            while self.run_start[r + 1] <= p:
                r += 1
            if r != self.run:
                self._enter(r)
            z = min(self.pos, self.run_start[r + 1])
            parts.append(self._part(r, p - self.run_start[r], z - p))
            p = z
        if len(parts) == 1:
            return parts[0]
        cat = lambda k: self.ledger.track(torch.cat([getattr(b, k) for b in parts]))
        return Batch(cat("x"), cat("y"), cat("mask") if self.dense_first is not None else None)

    def _fetch_any(self, i: np.ndarray) -> Batch:
        """Any items: each group's part with its group resident (its rows uploaded), then put back in order."""
        blocks = self.items.block[i]
        g = self.group_of_block[blocks]
        used = list(dict.fromkeys(g.tolist()))
        parts = []
        for gid in used:
            slot = self.stream.request(self.groups[gid])
            at = np.flatnonzero(g == gid) if len(used) > 1 else slice(None)
            ends = self.stream.upload(self.stream.local(self.items.anchors[i[at]], blocks[at], slot), self.ledger)
            first = None
            if self.dense_first is not None:
                first = self.stream.upload(self.dense_first[i[at]] - self.items.anchors[i[at]], self.ledger)
            parts.append((at, self._batch(ends, first)))
        if len(parts) == 1:
            return parts[0][1]
        order = self.stream.upload(np.argsort(np.concatenate([p[0] for p in parts]), kind="stable"), self.ledger)
        cat = lambda k: self.ledger.track(torch.cat([getattr(p[1], k) for p in parts])[order])
        return Batch(cat("x"), cat("y"), cat("mask") if self.dense_first is not None else None)

    def _batch(self, ends: torch.Tensor, first: torch.Tensor | None) -> Batch:
        """Items whose anchors sit at device rows `ends`: windows (x, y), or chunks (x, y, mask), `first` the
        offset of each chunk's first trained row from its anchor."""
        s, starts = self.stream, self.ledger.track(ends - (self.span - 1))
        x = self.ledger.track(take_spans(s.X, starts, self.span))
        if first is None:
            return Batch(x, self.ledger.track(s.y[ends]), None)
        valid = self.ledger.track(take_spans(s.valid, starts, self.span))
        mask = self.ledger.track((self.offsets[None, :] >= first[:, None]) & valid)
        return Batch(x, self.ledger.track(take_spans(s.y, starts, self.span)), mask)

    def count(self, ids: torch.Tensor) -> torch.Tensor:
        """Valid targets of these items, from host tables (no device sync)."""
        n = len(ids) if self.dense_first is None else int(self.n_valid[ids.cpu().numpy()].sum())
        return torch.full((), float(n), dtype=torch.float64, device=self.device)

    def close(self) -> None:
        self.stream.close()


class StreamWindows:
    """Evaluation's view of streamed data (Windows' interface): the window ends of each split on the host, and
    batches of windows streamed through the same device slots, block after block in row order."""

    def __init__(self, fs: FeatureSet, window: int, stream: BlockStream, ledger: Ledger) -> None:
        self.fs, self.window, self.stream, self.ledger = fs, window, stream, ledger
        self.device = stream.device
        self.target_scale = stream.scale
        self._ends = {s: torch.from_numpy(window_ends(fs, s, window)) for s in (0, 1, 2)}

    def ends(self, split: int) -> torch.Tensor:
        return self._ends[split]

    def batches(self, ends: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) for these window ends (ascending), `size` at a time as the resident Windows cuts them (so the
        model sees the same batches); the blocks that hold them go through the slots k at a time, in row order,
        the next group loading while one is read."""
        e = ends.cpu().numpy()
        if not len(e):
            return
        s = self.stream
        block = e // s.block_rows
        present = np.unique(block)
        groups = [tuple(present[i : i + s.k].tolist()) for i in range(0, len(present), s.k)]
        gid = np.searchsorted(present, block) // s.k  # ascending, as the ends are
        for a in range(0, len(e), size):
            z, parts = min(a + size, len(e)), []
            for j in range(int(gid[a]), int(gid[z - 1]) + 1):
                slot = s.request(groups[j])
                if j + 1 < len(groups):
                    s.prefetch(groups[j + 1], keep=groups[j])
                lo, hi = a + np.searchsorted(gid[a:z], [j, j + 1])
                local = s.upload(s.local(e[lo:hi], block[lo:hi], slot), self.ledger)
                x = take_spans(s.X, self.ledger.track(local - (self.window - 1)), self.window)
                parts.append((self.ledger.track(x), self.ledger.track(s.y[local])))
            if len(parts) == 1:
                yield parts[0]
            else:  # a batch across groups: each part gathered while its group was resident
                yield (self.ledger.track(torch.cat([p[0] for p in parts])),
                       self.ledger.track(torch.cat([p[1] for p in parts])))

    def targets(self, ends: torch.Tensor) -> torch.Tensor:
        """Scaled targets at these ends, on the device (0 where unknown, as in training)."""
        y = np.asarray(self.fs.y[ends.cpu().numpy()], dtype=np.float32)
        y = np.where(np.isfinite(y), y / self.target_scale, 0.0).astype(np.float32)
        return self.stream.upload(y, self.ledger)


@dataclass
class Plan:
    """How the data goes to the device: resident or streamed, and why."""

    streamed: bool
    block_rows: int = 0
    blocks_per_slot: int = 0
    reason: str = ""


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


def batch_bytes(fs: FeatureSet, cfg, span: int) -> int:
    """Device bytes of the larger of a training and an evaluation batch: x, row indices, targets (and mask)."""
    f4 = fs.n_features * 4
    train = cfg.batch_size * (span * (f4 + 8 + (5 if cfg.dense else 0)) + 16)
    return max(train, cfg.eval_batch_size * (cfg.window * (f4 + 8) + 12))


def halo_rows(cfg, span: int) -> int:
    """The rows a block carries from before it: enough for a training item (a window, or a dense chunk of `span`)
    and for an evaluation window (`window`: a dense chunk may be shorter) that ends on its first row."""
    return max(span, cfg.window) - 1


def min_budget(fs: FeatureSet, cfg, span: int) -> int:
    """The smallest budget that streams: three batches and two slots of one block each (with their items' index)."""
    rows = min(cfg.stream_block_rows, max(1, len(fs))) + halo_rows(cfg, span)
    return 3 * batch_bytes(fs, cfg, span) + 2 * rows * row_bytes(fs, cfg)


def plan(fs: FeatureSet, cfg, device: torch.device, span: int) -> Plan:
    """Resident when the data fits the budget (unless loader=stream), else streamed with as many blocks per slot
    as the budget holds after room for three batches of the larger of a training and an evaluation batch."""
    data, budget = resident_bytes(fs, cfg), budget_bytes(cfg.device_memory_budget, device)
    gb = human_bytes
    if cfg.loader != "stream" and data <= budget:
        return Plan(False, reason=f"data resident on {device}: {gb(data)} within the budget {gb(budget)}")
    block_rows = min(cfg.stream_block_rows, max(1, len(fs)))
    row, halo, batch = row_bytes(fs, cfg), halo_rows(cfg, span), batch_bytes(fs, cfg, span)
    free = budget - 3 * batch
    k = min(free // (2 * (block_rows + halo) * row) if free > 0 else 0, math.ceil(len(fs) / block_rows))
    if k < 1:
        raise ValueError(f"parameter 'device_memory_budget' ({gb(budget)}) holds not even one block of "
                         f"{block_rows:,} rows per slot and three batches ({gb(min_budget(fs, cfg, span))} needed): "
                         f"raise it, or lower stream_block_rows, batch_size or eval_batch_size")
    why = "loader=stream" if cfg.loader == "stream" else f"the data ({gb(data)}) exceeds the budget {gb(budget)}"
    return Plan(True, block_rows, int(k),
                f"data streamed to {device} ({why}): 2 slots of {int(k)} blocks of {block_rows:,} rows, "
                f"{gb(2 * int(k) * (block_rows + halo) * row)} resident")


def make_sources(fs: FeatureSet, model: torch.nn.Module, cfg, device: torch.device, verbose: bool = False,
                 windows: Windows | None = None) -> tuple[Windows | StreamWindows, BatchSource]:
    """(evaluation windows, training source) for `cfg`: resident (`sources.resident_sources`, reusing `windows`
    when given) when the data fits `device_memory_budget`, else streamed; says which when `verbose`."""
    if cfg.dense and not hasattr(model, "forward_dense"):
        raise ValueError(f"dense=True needs a causal model with forward_dense (tcn, transformer), not {cfg.model!r}")
    span = cfg.dense_chunk if cfg.dense else cfg.window
    p = plan(fs, cfg, device, span)
    if verbose:
        print(p.reason)
        # (not for a model whose chunks are its window: the stretches shorter than one hold no window either)
        if cfg.dense and not hasattr(model, "max_chunk") and (
                left := dense_left_out(fs, 0, cfg.dense_chunk, model.receptive_field)):
            print(left)
    if not p.streamed:
        return resident_sources(fs, model, cfg, device, windows)
    ledger = Ledger()
    stream = BlockStream(fs, halo_rows(cfg, span), p.block_rows, p.blocks_per_slot, device, ledger)
    windows = StreamWindows(fs, cfg.window, stream, ledger)
    if cfg.dense:  # items end at their chunk's last row
        starts, first = dense_chunks(fs, 0, cfg.dense_chunk, model.receptive_field)
        anchors = starts + cfg.dense_chunk - 1
    else:
        anchors, first = window_ends(fs, 0, cfg.window), None
    source = StreamSource(stream, Items(anchors, p.block_rows, stream.n_blocks), span, ledger, first)
    source.plan = p  # (the bench reports its reason)
    return windows, source
