"""The seed's input pipeline, kept as the baseline the device loader is measured against.

A torch Dataset whose `__getitem__` slices one window, batched by a DataLoader with worker processes,
pinned memory and prefetching: the setup that left the seed's GPU idle 77-86% of the time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tradelib.features import FeatureSet
from tradelib.windows import epoch_order, window_ends


class WindowDataset(Dataset):
    """One window per `__getitem__`, in Python: what the seed did."""

    def __init__(self, X: np.ndarray, y: np.ndarray, ends: np.ndarray, window: int) -> None:
        self.X, self.y, self.ends, self.window = X, y, ends, window

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        e = int(self.ends[i])
        return torch.from_numpy(self.X[e - self.window + 1 : e + 1]), torch.tensor(self.y[e])


class ListSampler(Sampler[int]):
    """Yields the indices it is given; set anew each epoch so persistent workers survive epochs."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def loader_settings(num_workers: int, pin_memory: bool, prefetch_factor: int, persistent_workers: bool,
                    device: torch.device) -> dict:
    """The seed's settings where the machine allows them (workers capped at the cores)."""
    workers = max(0, min(num_workers, os.cpu_count() or 1))
    kw: dict = {"num_workers": workers, "pin_memory": pin_memory and device.type == "cuda"}
    if workers > 0:
        kw.update(prefetch_factor=prefetch_factor, persistent_workers=persistent_workers)
    return kw


class DataLoaderData:
    """Same interface as windows.DeviceData (order / count / batch), fed by a DataLoader."""

    def __init__(self, fs: FeatureSet, window: int, device: torch.device, target_scale: float, batch_size: int,
                 num_workers: int = 8, pin_memory: bool = True, prefetch_factor: int = 4,
                 persistent_workers: bool = True) -> None:
        self.device, self.window, self.target_scale = device, window, target_scale
        y = np.nan_to_num(fs.y / target_scale, nan=0.0).astype(np.float32)
        self.ends_np = window_ends(fs, 0, window)
        self.dataset = WindowDataset(fs.X, y, self.ends_np, window)
        self.sampler = ListSampler()
        self.settings = loader_settings(num_workers, pin_memory, prefetch_factor, persistent_workers, device)
        self.loader = DataLoader(self.dataset, batch_size=batch_size, sampler=self.sampler, **self.settings)
        self._it: Iterator | None = None

    def order(self, split: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """Positions into the training windows, in the same shuffled order as the device loader."""
        return epoch_order(len(self.ends_np), epoch, seed, rank, world)

    def start(self, ids: torch.Tensor) -> None:
        """Begin iterating the DataLoader over these dataset positions (an epoch, or its rest on resume)."""
        self.sampler.ids = ids.tolist()
        self._it = iter(self.loader)

    def count(self, ids: torch.Tensor) -> int:
        return len(ids)

    def batch(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """The next DataLoader batch (it holds exactly `ids`, the sampler yields them in order), on the device."""
        x, y = next(self._it)
        nb = self.settings["pin_memory"]
        return x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb), None

    def n_items(self) -> int:
        return len(self.ends_np)
