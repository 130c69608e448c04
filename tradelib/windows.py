"""Windows on the device: the feature matrix and targets live there; a batch is gathered by index arithmetic.

The seed built each window in a Python `__getitem__` and copied it to the GPU, which left the GPU idle
77-86% of the time. Here a batch is `X[ends[:, None] + offsets]`: one gather kernel, no per-sample Python,
no host-to-device copy per step, no host sync.
"""

from __future__ import annotations

import numpy as np
import torch

from tradelib.features import FeatureSet


def window_ends(fs: FeatureSet, split: int, window: int, need_target: bool = True) -> np.ndarray:
    """Rows t whose window t-W+1..t lies in one segment and one split, with a known target at t."""
    t = np.arange(window - 1, len(fs), dtype=np.int64)
    start = t - window + 1
    ok = (fs.segment[start] == fs.segment[t]) & (fs.split[start] == split) & (fs.split[t] == split)
    if need_target:
        ok &= np.isfinite(fs.y[t])
    return t[ok]


def naive_window(fs: FeatureSet, end: int, window: int) -> np.ndarray:
    """The obvious slice, kept as the reference the device gather is tested against."""
    return fs.X[end - window + 1 : end + 1]


def epoch_order(n: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's share of a permutation of range(n) that is a pure function of (seed, epoch), so resume and
    DDP ranks agree on it. Shares are equal (the remainder is left out): every rank runs as many steps."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[rank : (n // world) * world : world]


class DeviceData:
    """X and the scaled targets on `device`; windows gathered there."""

    def __init__(self, fs: FeatureSet, window: int, device: torch.device, target_scale: float = 1.0) -> None:
        self.fs, self.window, self.device = fs, window, device
        self.target_scale = target_scale
        self.X = torch.from_numpy(fs.X).to(device)
        y = np.nan_to_num(fs.y / target_scale, nan=0.0).astype(np.float32)
        self.y = torch.from_numpy(y).to(device)
        self.offsets = torch.arange(-window + 1, 1, device=device)
        self._ends = {s: torch.from_numpy(window_ends(fs, s, window)).to(device) for s in (0, 1, 2)}

    def ends(self, split: int) -> torch.Tensor:
        return self._ends[split]

    def gather(self, ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B] window-end rows -> x [B, W, F], y [B]."""
        return self.X[ends[:, None] + self.offsets], self.y[ends]

    def order(self, split: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """This epoch's shuffled window ends (without replacement), this rank's share, on the device."""
        ends = self._ends[split]
        return ends[epoch_order(len(ends), epoch, seed, rank, world).to(self.device)]

    def count(self, ends: torch.Tensor) -> int:
        """Valid targets among these windows: all of them (ends are chosen with a known target)."""
        return len(ends)

    def batch(self, ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, y = self.gather(ends)
        return x, y, None

    def n_items(self) -> int:
        return len(self._ends[0])


def dense_chunks(fs: FeatureSet, split: int, length: int, receptive_field: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk starts and the first row each chunk trains on, for dense training of a causal model.

    A chunk is `length` contiguous rows of one segment and split; it predicts at every row from its
    (receptive_field - 1)-th on, where the model has its full history. Chunks step by the number of rows
    they predict, so every target of a run is trained once per epoch; the last chunk of a run is aligned
    to the run's end and predicts only the rows its predecessor left.
    """
    if length < receptive_field:
        raise ValueError(f"dense chunk length {length} is shorter than the receptive field {receptive_field}")
    n = len(fs)
    key_change = np.r_[True, (fs.segment[1:] != fs.segment[:-1]) | (fs.split[1:] != fs.split[:-1])]
    run_start = np.flatnonzero(key_change)
    run_end = np.r_[run_start[1:], n] - 1
    step = length - receptive_field + 1
    starts, first = [], []
    for a, b in zip(run_start, run_end):
        if fs.split[a] != split or b - a + 1 < length:
            continue
        s = np.arange(a, b - length + 2, step)
        starts.append(s)
        first.append(s + receptive_field - 1)
        covered = s[-1] + length - 1
        if covered < b:
            starts.append(np.array([b - length + 1]))
            first.append(np.array([covered + 1]))
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(starts).astype(np.int64), np.concatenate(first).astype(np.int64)


class DenseData(DeviceData):
    """Chunks for dense training: x [B, L, F], y [B, L] and a mask of the positions that train."""

    def __init__(self, fs: FeatureSet, window: int, device: torch.device, target_scale: float,
                 length: int, receptive_field: int) -> None:
        super().__init__(fs, window, device, target_scale)
        self.length = length
        starts, first = dense_chunks(fs, 0, length, receptive_field)
        self.chunk_starts = torch.from_numpy(starts).to(device)
        self.chunk_first = torch.from_numpy(first).to(device)
        self.valid = torch.from_numpy(np.isfinite(fs.y)).to(device)
        self.chunk_offsets = torch.arange(length, device=device)

    def order(self, split: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """Shuffled chunk ids (training split only) for this rank."""
        if split != 0:
            raise ValueError("dense chunks are built for the training split; evaluate per window")
        return epoch_order(len(self.chunk_starts), epoch, seed, rank, world).to(self.device)

    def chunk_mask(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.chunk_starts[ids, None] + self.chunk_offsets
        mask = (rows >= self.chunk_first[ids, None]) & self.valid[rows]
        return rows, mask

    def count(self, ids: torch.Tensor) -> torch.Tensor:
        """Valid targets in these chunks, on the device (no sync)."""
        return self.chunk_mask(ids)[1].sum()

    def batch(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, mask = self.chunk_mask(ids)
        return self.X[rows], self.y[rows], mask

    def n_items(self) -> int:
        return len(self.chunk_starts)
