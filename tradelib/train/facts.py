"""What training knows that the report needs, written into the run folder at train time (`train_facts.json`),
so that the report reads it there and never imports training: the learning rate of every optimizer step (the
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
from tradelib.train.trainer import Trainer

FACTS_FILE = "train_facts.json"  # report/inputs.py FACTS_FILE reads it


def lr_by_step(trainer: Trainer) -> list[float]:
    """The learning rate of optimizer steps 1..total_steps (entry i: step i + 1), from the trainer's own schedule."""
    return [trainer.step_lr(s) for s in range(1, int(trainer.total_steps) + 1)]


def split_windows(fs: FeatureSet, window: int) -> dict:
    """Per split: the windows training and evaluation use (`window_ends`), and the mean squared target in units
    of its training scale over them (the loss of predicting 0: the yardstick of the loss curves)."""
    scale = float(fs.meta.get("target_scale", 1.0))
    windows, zero = {}, {}
    for name, split in (("train", 0), ("val", 1), ("test", 2)):
        ends = window_ends(fs, split, window)
        windows[name] = int(len(ends))
        y = fs.y[ends] / scale
        zero[name] = float(np.mean(y.astype(np.float64) ** 2)) if len(y) else None
    return {"target_scale": scale, "windows": windows, "zero_mse": zero}


def train_facts(trainer: Trainer, fs: FeatureSet, cfg: Config) -> dict:
    """Everything train_facts.json holds."""
    return {"lr": lr_by_step(trainer), "warmup": int(trainer.warmup),
            "total_steps": int(trainer.total_steps), **split_windows(fs, cfg.window)}


def write_train_facts(run_dir: Path, trainer: Trainer, fs: FeatureSet, cfg: Config) -> None:
    """train_facts.json in the run folder (atomic)."""
    atomic_write_bytes(json.dumps(train_facts(trainer, fs, cfg)).encode(), Path(run_dir) / FACTS_FILE)
