"""Checkpoint files: atomic saves, rotation, verified loads with fallback, and the resume compatibility check.

A run folder's `checkpoints/` holds `step-N.pt` (the training state after N optimizer steps, the newest
`keep_checkpoints` kept), `best.pt` (the best validation loss) and `last.pt` (the final weights).
`manifest.json` beside them records each file's size and SHA-256, so a damaged file is recognised and skipped.

A checkpoint holds only tensors and plain values (dicts, lists, tuples, str, int, float, bool, None) and is
loaded with `torch.load(..., weights_only=True)`: a file from a colleague or a shared drive cannot run code
when loaded; one that would need more (a crafted pickle) is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from tradelib.config import Config, as_written, resume_command, resume_may_change, written_problem
from tradelib.paths import atomic_write_bytes

MANIFEST = "manifest.json"


def _manifest(folder: Path) -> dict:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(state: dict, path: Path) -> Path:
    """Write a checkpoint atomically and record its size and checksum in the folder's manifest."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    atomic_write_bytes(data, path)
    entries = _manifest(path.parent)
    entries[path.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    entries = {k: v for k, v in entries.items() if (path.parent / k).exists()}
    atomic_write_bytes(json.dumps(entries, indent=1).encode(), path.parent / MANIFEST)
    return path


def step_checkpoints(folder: Path) -> dict[int, Path]:
    """step-N.pt files by N."""
    found = {}
    for p in folder.glob("step-*.pt"):
        m = re.fullmatch(r"step-(\d+)", p.stem)
        if m:
            found[int(m.group(1))] = p
    return found


def rotate(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` step-N.pt files."""
    steps = sorted(step_checkpoints(folder).items())
    for _, old in steps[: max(0, len(steps) - max(1, keep))]:
        old.unlink(missing_ok=True)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint, verified against the manifest where it has an entry. Raises ValueError naming the file
    and what is wrong with it."""
    entry = _manifest(path.parent).get(path.name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if entry is not None:
        if len(data) != entry.get("bytes"):
            raise ValueError(f"{path}: {len(data):,} bytes, the manifest says {entry.get('bytes'):,} (truncated?)")
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise ValueError(f"{path}: checksum differs from the manifest (the file is damaged)")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(exc))
        raise ValueError(f"{path}: refused: it holds {found.group(1) if found else 'a Python object'}, not only "
                         f"tensors and plain values, and loading it could run code (a crafted file, another "
                         f"program's, or a tradelib checkpoint older than weights_only loading); not loaded") from None
    except Exception as exc:  # noqa: BLE001 - unpickling a damaged file raises many types
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    problem = schema_problem(state)
    if problem:
        raise ValueError(f"{path}: not a tradelib training checkpoint ({problem})")
    return state


# what every checkpoint a run writes holds (TrainingRun.state), and the type of each
REQUIRED = {"model": dict, "optimizer": dict, "scheduler": dict, "rng": dict, "config": dict, "cache_key": str}
# the loop's position and sums a resume sets back (run.LOOP_STATE)
LOOP_COUNTS = ("step", "epoch", "pos", "skipped", "epochs_since_best", "samples_seen")  # ints, at least 0
LOOP_NUMBERS = ("best_val", "train_time", "epoch_sse", "epoch_n", "epoch_time")  # real numbers
# the log interval's sums so far (run.Tally.state, with the interval's seconds `pending_s`): what a stop between log
# points carries, so that the resumed run logs the rows an uninterrupted one does
TALLY_COUNTS = ("steps", "micro_batches")
TALLY_NUMBERS = ("sse", "n_taken", "n", "skipped", "bad_max", "bad_loss", "norm_last", "wait_s")


def schema_problem(state) -> str:
    """What keeps a loaded file from being a training checkpoint (another program's weights, a hand-made dict),
    or "": checked at the load, so such a file is set aside like a damaged one rather than failing the resume."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a dict"
    for key, kind in REQUIRED.items():
        if key not in state:
            return f"no {key}"
        if not isinstance(state[key], kind):
            return f"{key} is a {type(state[key]).__name__}, not a {kind.__name__}"
    # (bad_run: the failure tally's run of bad steps, a number)
    problem = _numbers_problem(state, LOOP_COUNTS, LOOP_NUMBERS + ("bad_run",), "")
    if not problem and "tally" in state:
        tally = state["tally"]
        problem = (f"tally is a {type(tally).__name__}, not a dict" if not isinstance(tally, dict) else
                   _numbers_problem(tally, TALLY_COUNTS, TALLY_NUMBERS, "tally's ")
                   or _numbers_problem(state, (), ("pending_s",), ""))
    if problem:
        return problem
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        return "model holds something other than tensors"
    if any(v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in state["model"].values()):
        return "model holds weights that are not finite"  # (a run never writes them)
    return written_problem(state["config"]) or _rng_problem(state["rng"])


def _numbers_problem(state: dict, counts: tuple[str, ...], numbers: tuple[str, ...], whose: str) -> str:
    """The first of `counts` (ints, at least 0) and `numbers` (real numbers) in `state` that is not one, or ""."""
    for key in counts + numbers:
        value = state.get(key)
        count = key in counts
        if isinstance(value, bool) or not isinstance(value, int if count else (int, float)) or (count and value < 0):
            return f"{whose}{key} is {value!r}, not {'a count (an int, at least 0)' if count else 'a number'}"
    return ""


def _rng_problem(rng: dict) -> str:
    """What keeps `rng` from being rng_state's (set_rng_state would fail on it half-way, the run half restored)."""
    python, numpy, cpu = rng.get("python"), rng.get("numpy"), rng.get("torch")
    if not (isinstance(python, (tuple, list)) and len(python) == 3 and isinstance(python[1], (tuple, list))
            and len(python[1]) == 625 and all(isinstance(v, int) for v in python[1])):
        return "rng's python state is not random.getstate()'s"
    if not (isinstance(numpy, (tuple, list)) and len(numpy) == 5 and isinstance(numpy[1], torch.Tensor)
            and numpy[1].shape == (624,) and all(isinstance(v, (int, float)) for v in numpy[2:])):
        return "rng's numpy state is not np.random.get_state()'s"
    if not (isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8):
        return "rng's torch state is not a byte tensor"
    if not (rng.get("cuda") is None or isinstance(rng["cuda"], torch.Tensor) and rng["cuda"].dtype == torch.uint8):
        return "rng's cuda state is not a byte tensor"
    return ""


def check_fits(ck: dict, path: Path | str, model: torch.nn.Module, name: str) -> None:
    """Refuse weights that do not fit the model (its code changed since the checkpoint), naming the file and the
    first parameter that differs, before loading them."""
    own, theirs = model.state_dict(), ck["model"]
    problem = next((f"{k} is {list(theirs[k].shape)} in the file, {list(v.shape)} in the model" if
                    theirs[k].shape != v.shape else f"{k} is {theirs[k].dtype} in the file, {v.dtype} in the model"
                    for k, v in own.items()
                    if k in theirs and (theirs[k].shape != v.shape or theirs[k].dtype != v.dtype)), "")
    missing = [k for k in own if k not in theirs]
    extra = [k for k in theirs if k not in own]
    problem = problem or (f"the file has no {missing[0]}" if missing else f"the model has no {extra[0]}" if extra
                          else "")
    if problem:
        raise ValueError(f"resume refused: {path}: its weights do not fit model {name}: {problem}. The model's code "
                         f"changed since the checkpoint: go back to that code, or start a new run (another run_id)")


def rng_state(device: torch.device) -> dict:
    """Every random generator's state in plain types (weights_only loads them): Python's, numpy's, torch's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                   int(has_gauss), float(gauss)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(rng: dict, device: torch.device) -> None:
    """Put back what rng_state saved."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)


def resume_candidates(folder: Path) -> list[Path]:
    """Step files newest first: the real training states. last.pt may hold the restored best weights and
    best.pt an older state, so last.pt comes only after them (runs from before step files)."""
    steps = [p for _, p in sorted(step_checkpoints(folder).items(), reverse=True)]
    last = folder / "last.pt"
    return steps + ([last] if last.exists() else [])


# data parameters the feature cache's key leaves out (the features do not depend on them)
NOT_KEYED = ("force_recreate", "shard_rows", "build_workers")


def check_settings(ck: dict, path: Path | str, cfg: Config, run_id: str) -> None:
    """Refuse a resume whose settings would change the training, naming each (its checkpoint value and this
    run's) and printing the command with the run's own settings: checked before this run builds its features.
    `run_id`: the run the printed command resumes (a walk-forward's, for one of its folds)."""
    free = resume_may_change()
    old = as_written(ck["config"])  # settings added since the checkpoint: what the run did
    diff = {k: (old.get(k), v) for k, v in cfg.to_dict().items() if k not in free and old.get(k) != v}
    if diff:
        raise ValueError(f"resume refused: the config differs from {path} in settings that change the training: " +
                         ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()) +
                         f". Only these may change on resume: {', '.join(sorted(free))}. The run's own settings "
                         f"resume it: {resume_command(ck['config'], run_id)}")


def check_resumable(ck: dict, path: Path | str, cfg: Config, cache_key: str, world: int, run_id: str) -> None:
    """Refuse a resume that would not continue the same training: other settings, features or world size."""
    check_settings(ck, path, cfg, run_id)
    if ck["cache_key"] != cache_key:
        old = as_written(ck["config"])
        differ = [f"{k}: {old.get(k)!r} in the checkpoint vs {v!r} now"
                  for k, v in cfg.group("data", "features").items() if k not in NOT_KEYED and old.get(k) != v]
        why = (f"these data and feature parameters differ ({'; '.join(differ)})" if differ else
               "no data or feature parameter differs, so the data's contents, the feature code or the numpy or "
               "pandas release (major.minor) changed")
        raise ValueError(
            f"resume refused: {path} was trained on feature cache {ck['cache_key']}, but this run's data, feature "
            f"parameters and feature code give cache {cache_key}: {why}. Continuing would mix two feature "
            f"definitions: start a new run (another run_id), or go back to the data and code the run was started "
            f"with.")
    if ck.get("world", 1) != world:
        raise ValueError(f"resume refused: {path} was written by {ck.get('world', 1)} processes, this run has {world}: "
                         f"each process's place in the epoch depends on it; resume with the same number")
