"""Where things live, independent of the working directory (notebooks run from the root or notebooks/), and
how a file is written so that a kill never leaves half of it."""

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


def unique_tmp(path: Path) -> Path:
    """A temporary name beside `path` that no other process or call uses (pid and a clock in it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")


def atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write to a unique temporary file, flush it to disk, then rename: a kill mid-write leaves the old file."""
    tmp = unique_tmp(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
