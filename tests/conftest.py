"""Shared fixtures: every test writes under its own outputs folder, never into the checkout's outputs/."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tradelib.config import Config
from tradelib.data import dataset
from tradelib.paths import repo_root

TINY = dict(synth_symbols=3, synth_bars=1500, window=16, hidden=16, layers=1, batch_size=64, epochs=1,
            log_every=4, device="cpu", compile="off")


@pytest.fixture(autouse=True)
def outputs(tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    monkeypatch.setenv("TRADELIB_OUTPUTS", str(out))
    return out


@pytest.fixture(scope="module")
def module_outputs(tmp_path_factory):
    """One outputs/ for a whole module, for modules that override `outputs` with it to share runs and feature
    caches between their tests; subprocesses inherit it through the environment."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("outputs")
        mp.setenv("TRADELIB_OUTPUTS", str(path))
        yield path


@pytest.fixture
def tiny_cfg() -> Config:
    return Config(**TINY)


@pytest.fixture(scope="session")
def tiny_fs(tmp_path_factory):
    """A small synthetic FeatureSet built once per session (no cache involved)."""
    return dataset.build(Config(**TINY))[0]


def fit_until_interrupted(run, step: int) -> None:
    """Fit `run` until it has taken `step` optimizer steps, then stop it as Ctrl-C would (a KeyboardInterrupt
    out of `on_step`): what a resume test starts from."""

    def interrupt(t) -> None:
        if t.step == step:
            raise KeyboardInterrupt

    run.on_step = interrupt
    with pytest.raises(KeyboardInterrupt):
        run.fit()


def older_commit(commit: str) -> Path:
    """The checkout's root, for a tool that runs `commit`'s code beside this one's; the test is skipped where the
    clone does not have that commit (a shallow one)."""
    root = repo_root()
    if subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{commit}^{{commit}}"]).returncode:
        pytest.skip(f"commit {commit} is not in this clone (shallow)")
    return root
