"""Where things live, independent of the working directory (notebooks run from the root or notebooks/)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def repo_root() -> Path:
    """The checkout holding this package (installed editable), else the current directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "notebooks").is_dir() else Path.cwd()


def outputs_dir() -> Path:
    """`outputs/` of the checkout; TRADELIB_OUTPUTS overrides it (tests use a temporary one)."""
    env = os.environ.get("TRADELIB_OUTPUTS")
    path = Path(env) if env else repo_root() / "outputs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def run_dir(run_id: str) -> Path:
    path = outputs_dir() / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def latest_run() -> Path:
    """The most recently finished (else started) run folder under outputs/."""
    runs = [p for p in outputs_dir().iterdir() if p.is_dir() and (p / "metrics.jsonl").exists()]
    if not runs:
        raise FileNotFoundError(f"no run folder with metrics.jsonl under {outputs_dir()}: train a model first")

    def stamp(p: Path) -> float:
        s = p / "summary.json"
        return (s if s.exists() else p / "metrics.jsonl").stat().st_mtime

    return max(runs, key=stamp)


def resolve_run(run: str | os.PathLike | None) -> Path:
    """A run id, a path, or '' / None for the latest run."""
    if not run:
        return latest_run()
    p = Path(run)
    if p.is_dir():
        return p
    if (outputs_dir() / str(run)).is_dir():
        return outputs_dir() / str(run)
    raise FileNotFoundError(f"run {run!r} not found (looked for {p} and {outputs_dir() / str(run)})")
