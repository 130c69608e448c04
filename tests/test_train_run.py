"""A real training run on the planted-signal market: it writes its run folder and beats a zero prediction."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tradelib.config import Config, ConfigError
from tradelib.hardware import pick_device
from tradelib.train.run import train
from tradelib.train.trainer import lr_factor, scaled_lr

from .conftest import TINY


@pytest.mark.slow
def test_training_beats_zero_on_planted_signal():
    cfg = Config(**{**TINY, "synth_symbols": 4, "synth_bars": 4000, "hidden": 32, "epochs": 2, "model": "lstm",
                    "batch_size": 128, "log_every": 20, "run_id": "beat-zero"})
    res = train(cfg, progress=False)
    d = res.run_dir
    for name in ("metrics.jsonl", "summary.json", "predictions.parquet", "checkpoints/last.pt"):
        assert (d / name).exists(), name
    pred = pd.read_parquet(d / "predictions.parquet")
    assert list(pred.columns[:6]) == ["row", "timestamp", "symbol", "prediction", "target", "fwd_return"]
    # a zero prediction has IC 0 (undefined) and MSE equal to E[y^2]; the model must do better on both counts
    ic = pred["prediction"].corr(pred["target"])
    assert ic > 0.04, ic
    assert ((pred["prediction"] - pred["target"]) ** 2).mean() < (pred["target"] ** 2).mean()
    summary = json.loads((d / "summary.json").read_text())
    assert summary["pooled_ic_lag0"] == ic or np.isclose(summary["pooled_ic_lag0"], ic)  # before the trade delay
    assert summary["ic_lag"] == 1 and summary["pooled_ic"] > 0.04  # the planted signal lasts past the delay
    assert summary["oracle_pooled_ic"] > 0
    ckpt = torch.load(d / "checkpoints" / "last.pt", weights_only=False)
    assert set(ckpt["model"]) == set(res.model.state_dict())
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in rows}
    assert {"step", "epoch"} <= kinds
    assert all(r["samples_per_s"] > 0 for r in rows if r["kind"] == "step")


def test_lr_schedule_warmup_then_cosine():
    f = [lr_factor(s, warmup=10, total=100, min_ratio=0.1) for s in range(100)]
    assert f[0] == 0.1 and f[9] == 1.0
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert abs(lr_factor(100, 10, 100, 0.1) - 0.1) < 1e-12


def test_lr_scaling_rule_is_opt_in():
    base = Config(lr=1e-3, batch_size=256, grad_accum_steps=4, reference_batch=256)
    assert scaled_lr(base) == 1e-3
    assert scaled_lr(base.replace(lr_scaling="linear")) == 4e-3
    assert abs(scaled_lr(base.replace(lr_scaling="sqrt")) - 2e-3) < 1e-15


def test_cpu_device_is_said(capsys):
    if torch.cuda.is_available():
        return
    assert pick_device("auto").type == "cpu"
    assert "CUDA is not available" in capsys.readouterr().out


def test_unknown_compile_mode_is_refused(tiny_cfg):
    import pytest

    with pytest.raises(ConfigError, match="reduce-overhead"):
        tiny_cfg.replace(compile="fast")


def test_a_split_without_windows_is_refused_before_training(outputs):
    """A window longer than the test split's bars once purged used to train, exit 0 with NaN ICs and 0
    predictions, and leave a report that failed on the calendar: now it is refused first, naming the split,
    its bars, the window and purge it needs and what to change; no run folder is left."""
    cfg = Config(**{**TINY, "synth_bars": 1500, "window": 64, "train_frac": 0.8, "val_frac": 0.15,
                    "run_id": "no-test"})  # test: ~75 bars per symbol < purge 66 + window 64
    with pytest.raises(ValueError) as err:
        train(cfg, progress=False)
    text = str(err.value)
    assert text.startswith("test split: at most ") and "validation" not in text, text
    assert "purge of 66 (target 2 + window 64) plus one window of 64 bars (130 in all): no test windows" in text
    assert "use a smaller window, or lower train_frac + val_frac" in text
    assert not (outputs / "no-test").exists()


def test_each_ic_has_the_oracle_of_its_own_family_beside_it():
    """The line a finished training ends with (`train.run.done_line`)."""
    from pathlib import Path

    from tradelib.train.run import done_line

    # the 03_train line of a tiny synthetic run: the cross-sectional oracle (0.0726) stood after the pooled IC
    summary = {"samples_per_s": 307.0, "ic_lag": 1, "cross_sectional_ic": 0.0096, "pooled_ic": -0.0014,
               "oracle_cross_sectional_ic": 0.0726, "oracle_daily_ic": 0.1601, "oracle_pooled_ic": 0.1601}
    line = done_line(summary, Path("/runs/r"))
    assert "cross-sectional 0.0096 (oracle 0.0726), pooled -0.0014 (oracle 0.1601)" in line, line
    real = {**summary, "oracle_cross_sectional_ic": None, "oracle_pooled_ic": None}  # data without a planted signal
    assert "oracle" not in done_line(real, Path("/runs/r"))
    flat = {**summary, "cross_sectional_ic": float("nan"), "pooled_ic": float("nan"), "test_rows": 512,
            "constant_predictions": True}  # a model that outputs one value: NaN said, not left to guess
    assert "the model's 512 test predictions are one value, so every IC is undefined" in done_line(flat, Path("/r"))
    assert "one value" not in line
