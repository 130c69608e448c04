"""Shared fixtures: every test writes under its own outputs folder, never into the checkout's outputs/."""

from __future__ import annotations

import pytest

from tradelib import dataset
from tradelib.config import Config

TINY = dict(synth_symbols=3, synth_bars=1500, window=16, hidden=16, layers=1, batch_size=64, epochs=1,
            log_every=4, device="cpu", compile="off")


@pytest.fixture(autouse=True)
def outputs(tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    monkeypatch.setenv("TRADELIB_OUTPUTS", str(out))
    return out


@pytest.fixture
def tiny_cfg() -> Config:
    return Config(**TINY)


@pytest.fixture(scope="session")
def tiny_fs(tmp_path_factory):
    """A small synthetic FeatureSet built once per session (no cache involved)."""
    return dataset.build(Config(**TINY))[0]
