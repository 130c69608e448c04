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


def cuda_trace():
    """A CUDA step's trace as torch's profiler parses it (its own FunctionEvent class; the events a GPU gives):
    a CPU op carrying its kernel's time, the kernels (300 + 30 us), and the record_function ranges `train step` and
    `Optimizer.step#AdamW.step` on the CPU and again on the GPU (gpu_user_annotation spans over those kernels)."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import EventList, FunctionEvent

    def ev(i, name, start, end, device=DeviceType.CPU, annotation=False):
        return FunctionEvent(i, name, thread=0, start_us=start, end_us=end, stack=[], use_device="cuda",
                             device_type=device, is_user_annotation=annotation)

    mm = ev(1, "aten::mm", 10, 12)
    mm.append_kernel("gemm", 0, 300)
    events = EventList([ev(0, "train step", 0, 500, annotation=True), mm, ev(2, "gemm", 100, 400, DeviceType.CUDA),
                        ev(3, "Optimizer.step#AdamW.step", 400, 450, annotation=True),
                        ev(4, "adamw", 410, 440, DeviceType.CUDA),
                        ev(5, "train step", 90, 450, DeviceType.CUDA, annotation=True),
                        ev(6, "Optimizer.step#AdamW.step", 410, 440, DeviceType.CUDA, annotation=True)],
                       use_device="cuda")
    events._build_tree()
    return events
