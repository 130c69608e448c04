"""Run folders: `outputs/<run_id>/` and the files in it, written and read here and nowhere else.

    metrics.jsonl        one JSON row per log interval ("step"), per epoch ("epoch") and GPU reading ("gpu")
    events.out.tfevents.*  the same figures as TensorBoard events (`tensorboard --logdir outputs/`)
    progress.json        the training's progress (step, total, epoch, loss, samples/s), see progress.py
    summary.json         the run's configuration, throughput, memory and test figures
    predictions.parquet  the test split: row, timestamp, symbol, prediction, target, ...
    checkpoints/         see checkpoint.py
    .lock                held (fcntl.flock) by the process that trains or runs the pipeline into the folder

Every file is written whole or not at all (paths.atomic_write_bytes), except metrics.jsonl, appended a row
at a time by the one process that holds the folder's lock.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from tradelib.config import written_problem
from tradelib.paths import Busy, FileLock, atomic_write_bytes, outputs_dir, writing

# "<pid>:<lock path>": the run folder a parent process (the pipeline) holds on behalf of the processes it starts
RUN_LOCK_ENV = "TRADELIB_RUN_LOCK"

STEP_COLUMNS = ["step", "epoch", "samples", "loss", "lr", "grad_norm", "samples_per_s", "it_per_s",
                "data_wait_share", "skipped_steps", "elapsed_s"]  # fmt: skip
EPOCH_COLUMNS = ["epoch", "train_loss", "val_loss", "epoch_time_s", "samples_per_s"]
_NUMERIC_RUN_COLUMNS = [
    "batch_size", "grad_accum_steps", "samples_per_s", "it_per_s", "batches_per_epoch", "data_wait_share",
    "gpu_util", "peak_mem_gb", "mfu", "epoch_time_s", "ic_lag", "cross_sectional_ic", "cross_sectional_rank_ic",
    "daily_ic", "pooled_ic",
]  # fmt: skip
RUN_COLUMNS = ["run_id", "model", "loader", "device", "device_name", *_NUMERIC_RUN_COLUMNS, "finished"]


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def run_path(run_id: str, what: str = "run_id") -> Path:
    """outputs/<run_id>, the folder a run, a pipeline or a sweep writes into. A run id names a folder under outputs/
    (a sweep's runs and a walk-forward's folds hold a '/'); an absolute path, a '..' part or '.' would put the run's
    files (summary.json, checkpoints, ...) over whatever folder it names, as a colleague's parameter file could ask,
    and is refused (`what`: the parameter that gave it). (`tradelib report` and compare_with take a run folder's
    path: they read it.)"""
    parts = Path(run_id).parts
    if Path(run_id).is_absolute() or not parts or ".." in parts:
        raise ValueError(f"{what} {run_id!r}: a run id names a folder under outputs/ ({outputs_dir()}), not an "
                         f"absolute path, '.' or a path with '..': choose a name such as 'my-run'")
    return outputs_dir() / run_id


def run_dir(run_id: str) -> Path:
    path = run_path(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunBusy(RuntimeError):
    """Another live process trains (or runs the pipeline) into this run folder."""


def check_no_links(folder: Path) -> None:
    """Refuse a run folder that holds symbolic links (one unpacked from a colleague's tar, or copied with rsync -a):
    tradelib writes its files by name (the lock, the notebooks, the figures, the checkpoints), and a write through a
    link lands on whatever file it names, outside the folder. Raises ValueError naming them."""
    links = []
    for top, dirs, files in os.walk(folder):  # (a linked folder is listed, not entered)
        links += [Path(top) / name for name in dirs + files if os.path.islink(Path(top) / name)]
    if links:
        named = ", ".join(f"{p.relative_to(folder)} -> {os.readlink(p)}" for p in sorted(links)[:3])
        more = ", ..." if len(links) > 3 else ""
        raise ValueError(f"run folder {folder} holds {len(links)} symbolic link(s) ({named}{more}): tradelib would "
                         f"write through them, outside the folder; copy it without links (cp -rL, tar -h) or remove "
                         f"them")


def lock_run(folder: Path) -> FileLock | None:
    """Hold `folder`/.lock for the run's life, so that a second run with the same run_id stops at once with one
    line naming the holder, instead of interleaving its metrics and checkpoints with the first's. Returns the
    lock (release it at the end; a killed process releases it by dying), or None when the process that started
    this one holds it on our behalf (the pipeline for its notebooks; RUN_LOCK_ENV says so). A folder holding
    symbolic links is refused first (`check_no_links`)."""
    check_no_links(Path(folder))
    lock = FileLock(Path(folder) / ".lock")
    try:
        return lock.acquire()
    except Busy as busy:
        if busy.holder is not None and os.environ.get(RUN_LOCK_ENV) == f"{busy.holder}:{lock.path.resolve()}":
            return None
        raise RunBusy(f"run {Path(folder).name!r} is in use by process {busy.holder} ({lock.path}): wait for it to "
                      f"end, or choose another run_id") from None


def remove_if_unused(folder: Path, lock: FileLock | None, also: tuple[str, ...] = ()) -> None:
    """Remove `folder`, which this process created and holds `lock` on, if nothing was written in it (only the
    lock, an empty checkpoints/ and the files named in `also`, which the caller wrote): a run that fails to start
    leaves no empty folder in outputs/. Never raises: it runs while another error is on its way to the user, and
    a folder it cannot remove just stays."""
    if lock is None or lock.fd is None:
        return
    try:
        if {p.name for p in folder.iterdir()} - {".lock", "checkpoints", *also}:
            return
        ckpt = folder / "checkpoints"
        if ckpt.is_dir():
            if any(ckpt.iterdir()):
                return
            ckpt.rmdir()
        for name in also:
            (folder / name).unlink(missing_ok=True)
        lock.path.unlink(missing_ok=True)  # while held: no other process takes the run meanwhile
        folder.rmdir()  # (not empty: another process with this run_id wrote into it since; the folder is its)
    except OSError:
        pass


def check_run_free(folder: Path) -> None:
    """Raise RunBusy now if another process holds `folder` (a check, the lock is not kept)."""
    lock = lock_run(folder)
    if lock is not None:
        lock.release()


@contextlib.contextmanager
def holding_run(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock for the block and hand it down to the processes started in it (RUN_LOCK_ENV)."""
    lock = lock_run(folder)
    previous = os.environ.get(RUN_LOCK_ENV)
    if lock is not None:
        os.environ[RUN_LOCK_ENV] = f"{os.getpid()}:{lock.path.resolve()}"
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
            if previous is None:
                os.environ.pop(RUN_LOCK_ENV, None)
            else:
                os.environ[RUN_LOCK_ENV] = previous


def run_folders(root: Path | None = None) -> list[Path]:
    """The run folders directly under outputs/: those a training wrote metrics.jsonl into, and a walk-forward's,
    whose own metrics.jsonl is written once its folds are done (a stopped one has only its folds')."""
    root = Path(root) if root is not None else outputs_dir()
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and ((p / "metrics.jsonl").exists() or _fold_metrics(p))]


def _fold_metrics(folder: Path) -> list[Path]:
    return list(folder.glob("fold-*/metrics.jsonl"))


def run_state(folder: Path) -> str:
    """"finished" (summary.json), else what progress.json (a walk-forward: its latest fold's) says: "running
    (process N)", "stopped (process gone)" (it says running but its writer is dead: killed, or its machine went
    down), "interrupted", "stopped", "failed", a walk-forward's with its fold ("done in fold-0": stopped before
    the next); "not started" without either file."""
    from tradelib.progress import PROGRESS_FILE, read_progress

    if (Path(folder) / "summary.json").exists():
        return "finished"
    path, fold = Path(folder) / PROGRESS_FILE, ""
    if not path.exists():  # a walk-forward: its folds' progress, the latest one's
        folds = sorted(Path(folder).glob(f"fold-*/{PROGRESS_FILE}"), key=lambda p: p.stat().st_mtime)
        path, fold = (folds[-1], f" in {folds[-1].parent.name}") if folds else (path, "")
    data = read_progress(path)
    if data is None:
        return "not started"
    return (f"running (process {data['pid']})" if data["state"] == "running" else str(data["state"])) + fold


# what says a run finished, and with what: set aside (renamed <name>.superseded) while a resume trains on
RESULTS = ("summary.json", "predictions.parquet", "checkpoints/last.pt")


def set_aside_results(folder: Path) -> list[str]:
    """Rename a finished run's results to `<name>.superseded` (summary.json first) when a resume trains it further:
    until it finishes again it reads as running or stopped, never as finished with the old model's results."""
    moved = []
    for name in RESULTS:
        path = Path(folder) / name
        if path.exists():
            path.replace(path.with_name(path.name + ".superseded"))
            moved.append(name)
    return moved


# the checkpoints a run goes on from (checkpoint.resume_candidates): a training state, which best.pt is not
RESUMABLE = ("step-*.pt", "last.pt")


def has_checkpoints(folder: Path) -> bool:
    """Whether a run (or a walk-forward's folds) has a checkpoint to resume from: a step file or last.pt. best.pt
    alone (a kill between it and the first epoch's step file) is none: counted, its resume failed for want of a
    training state and a fresh start was refused for the checkpoint it had, and a sweep or walk-forward stuck."""
    folder = Path(folder)
    return any(any(folder.glob(f"{where}checkpoints/{name}")) for where in ("", "fold-*/") for name in RESUMABLE)


def has_runs() -> bool:
    """Whether outputs/ holds a finished run."""
    return any((p / "summary.json").exists() for p in run_folders())


def _stamp(p: Path) -> float:
    """When the run last wrote: its summary.json, else its metrics.jsonl, else its folds' (a walk-forward's)."""
    for f in (p / "summary.json", p / "metrics.jsonl"):
        if f.exists():
            return f.stat().st_mtime
    return max((f.stat().st_mtime for f in _fold_metrics(p)), default=0.0)


def latest_run() -> Path:
    """The most recently finished run folder under outputs/ (a run that stopped or still trains is no report's)."""
    folders = run_folders()
    finished = [p for p in folders if (p / "summary.json").exists()]
    if not finished:
        others = ", ".join(f"{p.name} {run_state(p)}" for p in sorted(folders, key=_stamp)[-3:])
        raise FileNotFoundError(f"no finished run under {outputs_dir()}" + (f" ({others})" if others else "") +
                                ": train a model first (notebook 03_train, or `tradelib train`), or resume one")
    return max(finished, key=_stamp)


def unfinished(root: Path | None = None) -> list[Path]:
    """The run folders under `root` (outputs/) that have not finished: no summary.json."""
    return [p for p in run_folders(root) if not (p / "summary.json").exists()]


def unfinished_hint() -> str:
    """For a resume that names no run (03 stopped with run_id empty, its id a new time-stamped one): the newest
    run under outputs/ that has not finished, the run_id to give."""
    left = unfinished()
    if not left:
        return ""
    newest = max(left, key=_stamp)
    return f": the newest unfinished run here is {newest.name!r} ({run_state(newest)})"


def newer_unfinished(than: Path) -> list[tuple[Path, str]]:
    """Run folders started after `than` finished that have not finished, with their state (newest first)."""
    t = _stamp(than)
    later = [p for p in unfinished(Path(than).parent) if _stamp(p) > t]
    return [(p, run_state(p)) for p in sorted(later, key=_stamp, reverse=True)]


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


def report_run(run: str | os.PathLike | None) -> Path:
    """The run a report is of (`resolve_run`'s). With none named, the latest finished one, and each newer run
    that has not finished is named: 04 in JupyterLab after 03 was stopped reported an older run in silence."""
    folder = resolve_run(run)
    if not run:
        for other, state in newer_unfinished(folder):
            print(f"run {other.name!r} is newer but {state}: reporting the latest finished run, {folder.name!r}",
                  flush=True)
    return folder


# -- metrics.jsonl --------------------------------------------------------------------------------------------
def append_metrics(run: Path, row: dict) -> None:
    """One row at the end of metrics.jsonl; a full disk names the file (`writing`), not "a file"."""
    path = Path(run) / "metrics.jsonl"
    with writing(path), path.open("a") as f:
        f.write(json.dumps(row) + "\n")


# metrics.jsonl's figures that go to TensorBoard too: {row kind: {key: tag}}; the x axis is the optimizer step
TENSORBOARD_TAGS = {
    "step": {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
             "samples_per_s": "train/samples_per_s", "data_wait_share": "train/data_wait_share"},
    "epoch": {"train_loss": "epoch/train_loss", "val_loss": "epoch/val_loss"},
    "gpu": {"gpu_util_median": "gpu/busy_pct", "gpu_mem_used_max_bytes": "gpu/mem_used_max_bytes"},
}  # fmt: skip


class TensorBoardLog:
    """TensorBoard event files in the run folder, written from the rows metrics.jsonl gets (the same figures, no
    read of its own). Without the tensorboard package it says so in one line and writes nothing; a resumed run
    purges the events logged after its checkpoint (TensorBoard drops them, as metrics.jsonl is truncated)."""

    def __init__(self, run: Path, purge_step: int | None = None) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # (the GPU check's machine has no tensorboard)
            why = "the tensorboard package is not installed" if exc.name in ("tensorboard", None) else str(exc)
            print(f"TensorBoard events off: {why[:200]} (pip install tensorboard, or -p tensorboard False); "
                  f"metrics.jsonl holds every figure")
            return
        if purge_step is None:  # a fresh start: older events in the folder are not this run's
            for old in Path(run).glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(log_dir=str(run), purge_step=purge_step, flush_secs=10)

    def add(self, row: dict) -> None:
        if self.writer is None:
            return
        for key, tag in TENSORBOARD_TAGS.get(row.get("kind"), {}).items():
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                self.writer.add_scalar(tag, value, global_step=int(row["step"]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # flushes, and ends its writer thread
            self.writer = None


def read_metrics(run: Path) -> list[dict]:
    """metrics.jsonl rows; blank or truncated lines (a run killed mid-write) are skipped."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def truncate_metrics(run: Path, step: int) -> int:
    """Keep only the metric rows logged up to `step` (the rest will be logged again), atomically; rows kept."""
    keep = [r for r in read_metrics(run) if r.get("step", -1) <= step]
    write_metrics(run, keep)
    return len(keep)


def write_metrics(run: Path, rows: list[dict]) -> None:
    """metrics.jsonl made of these rows, written whole (a walk-forward's folds, one after another)."""
    atomic_write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode(), Path(run) / "metrics.jsonl")


def _rows_frame(rows: list[dict], kind: str, columns: list[str]) -> pd.DataFrame:
    """Rows of one kind with the design's columns always present (numeric, NaN when missing)."""
    frame = pd.DataFrame([r for r in rows if r.get("kind") == kind]).drop(columns="kind", errors="ignore")
    frame = frame.reindex(columns=list(dict.fromkeys(columns + list(frame.columns))))
    for c in columns:
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
    return frame


def training_curves(run: Path, ema_alpha: float = 0.1, rows: list[dict] | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(step rows, epoch rows) from metrics.jsonl; steps get `loss_ema`, a bias-corrected EMA of the loss.

    A resumed run logs again from its checkpoint: for a repeated step or epoch the last row wins.
    """
    rows = read_metrics(run) if rows is None else rows
    steps = _rows_frame(rows, "step", STEP_COLUMNS).drop_duplicates("step", keep="last")
    steps = steps.sort_values("step", kind="stable").reset_index(drop=True)
    steps["loss_ema"] = steps["loss"].ewm(alpha=ema_alpha, adjust=True, ignore_na=True).mean()
    epochs = _rows_frame(rows, "epoch", EPOCH_COLUMNS).drop_duplicates("epoch", keep="last")
    return steps, epochs.sort_values("epoch", kind="stable").reset_index(drop=True)


# -- summary.json and the runs table --------------------------------------------------------------------------
def write_summary(run: Path, summary: dict) -> None:
    atomic_write_bytes(json.dumps(summary, indent=1, default=str).encode(), Path(run) / "summary.json")


def read_summary(run: Path) -> dict | None:
    """summary.json as a dict; None when missing or unreadable (a run killed while writing it)."""
    try:
        data = json.loads((Path(run) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# summary.json's entries the report reads as text (or null)
SUMMARY_TEXT = ("run_id", "model", "loader", "device", "device_name", "precision", "cache_key", "cache_dir",
                "fold_window", "fold_init")


def summary_problem(s: dict) -> str:
    """What keeps a summary.json from being one a run writes, for the report that reads it: an entry of another
    kind (a crafted or hand-edited file), which otherwise failed 04 in a later cell as a TypeError; or ""."""
    text = next((k for k in SUMMARY_TEXT if s.get(k) is not None and not isinstance(s[k], str)), None)
    if text:
        return f"{text} is {repr(s[text])[:60]}, not text"
    key = s.get("cache_key")
    if key and (key in (".", "..") or Path(key).name != key):  # folder_for joins it under outputs/cache
        return f"cache_key is {key[:60]!r}, not a plain folder name (of outputs/cache)"
    if not isinstance(s.get("config", {}), dict):
        return "config is not an object"
    folds = s.get("folds", [])
    if not (isinstance(folds, list) and all(isinstance(f, dict) and isinstance(f.get("fold"), int) for f in folds)):
        return "folds is not a list of folds"
    return written_problem(s.get("config", {}))


def report_summary(run: Path) -> dict:
    """summary.json for the report: {} when missing or unreadable, a ValueError naming the file and the entry when
    an entry is not of the kind a run writes (`summary_problem`)."""
    s = read_summary(run) or {}
    problem = summary_problem(s)
    if problem:
        raise ValueError(f"{Path(run) / 'summary.json'}: {problem}: not the summary a run writes (edited or crafted?); "
                         f"the report is not made from it")
    return s


def runs_table(root: Path) -> pd.DataFrame:
    """One row per run folder with a readable summary.json, sorted by finish time. Missing keys are NaN;
    peak_mem_gb is peak_mem_bytes / 1e9."""
    rows = []
    root = Path(root)
    for run in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        s = read_summary(run)
        if s is None:
            continue
        row = {c: s.get(c) for c in RUN_COLUMNS}
        row["run_id"] = run.name
        mem = s.get("peak_mem_bytes")
        row["peak_mem_gb"] = mem / 1e9 if isinstance(mem, (int, float)) and not isinstance(mem, bool) else None
        rows.append(row)
    out = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for c in _NUMERIC_RUN_COLUMNS:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    out["finished"] = pd.to_datetime(out["finished"], utc=True, errors="coerce", format="ISO8601")
    return out.sort_values("finished", na_position="last", kind="stable").reset_index(drop=True)


# -- predictions.parquet --------------------------------------------------------------------------------------
def write_predictions(run: Path, fs, rows: np.ndarray, prediction: np.ndarray) -> Path:
    """The test split's predictions beside everything the report needs of those rows (written atomically).
    `target` is the return from t (lag 0), whatever delay the model was trained for: the report shifts it by its
    trade_delay."""
    return write_prediction_frame(run, pd.DataFrame({
        "row": rows,
        "timestamp": pd.to_datetime(fs.timestamp[rows], utc=True),
        "symbol": np.asarray(fs.symbols, dtype=object)[fs.symbol_id[rows]],
        "prediction": prediction,
        "target": fs.target_from_t(rows), "fwd_return": fs.fwd_return[rows], "ret_next": fs.ret_next[rows],
        "last_return": fs.last_return[rows], "oracle": fs.oracle[rows],
    }))


def write_prediction_frame(run: Path, frame: pd.DataFrame) -> Path:
    """predictions.parquet from a frame in that layout (a walk-forward adds `fold` and `ridge`), atomically."""
    path = Path(run) / "predictions.parquet"
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(buf.getvalue(), path)
    return path


# predictions.parquet's columns of numbers: those every run writes, and those some write (a walk-forward's fold
# and ridge, a run's row into its feature set)
PREDICTION_NUMBERS = ("prediction", "target", "ret_next")
PREDICTION_MAY_HAVE = ("row", "fwd_return", "last_return", "oracle", "ridge", "fold")


def predictions_problem(df: pd.DataFrame) -> str:
    """What keeps a predictions frame from being one a run writes: a column missing, or of another kind (numbers,
    times; `row` and `fold` whole numbers from 0), which otherwise failed 04 as a KeyError or IndexError, or read
    a negative `row` from the end of the feature set; or ""."""
    missing = [c for c in ("timestamp", "symbol", *PREDICTION_NUMBERS) if c not in df]
    if missing:
        return f"no column {', '.join(missing)}"
    if not pd.api.types.is_datetime64_any_dtype(df["timestamp"]):
        return f"column timestamp holds {df['timestamp'].dtype}, not times"
    for c in [c for c in (*PREDICTION_NUMBERS, *PREDICTION_MAY_HAVE) if c in df]:
        whole = c in ("row", "fold")
        kind = pd.api.types.is_integer_dtype if whole else pd.api.types.is_numeric_dtype
        if not kind(df[c]) or pd.api.types.is_bool_dtype(df[c]) or (whole and len(df) and df[c].min() < 0):
            return f"column {c} holds {df[c].dtype}{' below 0' if whole and kind(df[c]) else ''}, not " + \
                ("whole numbers from 0" if whole else "numbers")
    return ""


def read_predictions(run: Path) -> pd.DataFrame:
    """predictions.parquet, refused naming the file and column where it is not a frame a run writes."""
    path = Path(run) / "predictions.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the run has not finished (train writes it last)")
    df = pd.read_parquet(path)
    problem = predictions_problem(df) if len(df) else ""  # (none: check_predictions says the run has none)
    if problem:
        raise ValueError(f"{path}: {problem}: not the predictions a run writes (edited or crafted?); the report is not "
                         f"made from it")
    return df


class NoPredictions(ValueError):
    """A finished run whose predictions.parquet holds no row: nothing to report."""


def check_predictions(run: Path, rows: int | None = None) -> None:
    """NoPredictions, saying so, where the run's predictions.parquet holds no row (`rows`: its row count, else
    read from the file's footer): a run whose test split held no window (older runs were not refused for it)."""
    path = Path(run) / "predictions.parquet"
    if rows is None:
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).metadata.num_rows
    if rows == 0:
        s = read_summary(Path(run)) or {}
        raise NoPredictions(f"run {Path(run).name!r} has no test predictions ({path} holds 0 rows: its test split "
                            f"held no window of {s.get('window', '?')} bars): nothing to report; train it again with "
                            f"a smaller window or a longer test split")
