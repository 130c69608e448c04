"""What training knows that the report needs, written into the run folder at train time (`train_facts.json`),
so that the report reads it there and never imports training: the learning rate at every optimizer step (the
trainer's own schedule, warm-up included) and, per split, the windows and what predicting 0 scores on them
(the loss's yardstick)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tradelib.config import Config
from tradelib.data.features import FeatureSet
from tradelib.paths import atomic_write_bytes
from tradelib.train.sources import window_ends
from tradelib.train.trainer import Trainer, lr_factor

FACTS_FILE = "train_facts.json"  # report.FACTS_FILE reads it


def train_facts(trainer: Trainer, fs: FeatureSet, cfg: Config) -> dict:
    """The LR at steps 0..total_steps, and per split the window count and the mean squared target in units of
    its training scale over those windows (the loss of predicting 0)."""
    total = int(trainer.total_steps)
    lr = [trainer.lr * lr_factor(s, trainer.warmup, total, cfg.min_lr_ratio) for s in range(total + 1)]
    scale = float(fs.meta.get("target_scale", 1.0))
    windows, zero = {}, {}
    for name, split in (("train", 0), ("val", 1), ("test", 2)):
        ends = window_ends(fs, split, cfg.window)
        windows[name] = int(len(ends))
        y = np.asarray(fs.y[ends], dtype=np.float64) / scale
        zero[name] = float(np.mean(y**2)) if len(y) else None
    return {"lr": lr, "warmup": int(trainer.warmup), "total_steps": total, "target_scale": scale,
            "windows": windows, "zero_mse": zero}


def write_train_facts(run_dir: Path, trainer: Trainer, fs: FeatureSet, cfg: Config) -> None:
    """train_facts.json in the run folder (atomic)."""
    atomic_write_bytes(json.dumps(train_facts(trainer, fs, cfg)).encode(), Path(run_dir) / FACTS_FILE)
