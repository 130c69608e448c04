"""Training progress where the researcher is looking, and never as a wall of redraws.

A run's progress (step, epoch, samples/s, loss, ETA) shows as a bar in a terminal, as one widget in JupyterLab,
or as a few lines (at the start, each quarter and the end) where neither fits: a notebook run headless by
papermill, a log file. Rank 0 also keeps `progress.json` in the run folder up to date (at most once a second),
which the pipeline follows to show 03_train's progress in its own terminal while the notebook runs in a kernel.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from tradelib.config import Config
from tradelib.paths import pid_alive

PROGRESS_FILE = "progress.json"
GONE = "stopped (process gone)"  # what a reader makes of "running" written by a process that no longer exists
MODES = Config.__dataclass_fields__["progress"].metadata["choices"]  # auto, bar, widget, lines, off
LINE_FRACTIONS = (0.25, 0.5, 0.75)  # lines mode: a line at the start, at these shares of the steps, at the end


class _Bar(tqdm):
    """tqdm without its monitor thread (a thread that would outlive the run)."""

    monitor_interval = 0


def _widget_bar() -> type:
    from tqdm.notebook import tqdm as notebook_tqdm

    class _WidgetBar(notebook_tqdm):
        """tqdm's widget, which draws a bar closed short of its total red, as an error: `ended` (a run that ended
        as it should, by max_minutes or early stopping before its last step) closes it green. Closed, it shows the
        run's own rate (steps over elapsed time), as tqdm's terminal bar does, not its last redraw's (a slow first
        step read as the rate of the whole run, with an ETA of minutes)."""

        monitor_interval = 0
        ended = False

        def close(self) -> None:
            self._ema_dt = lambda: None  # (tqdm's own way: no rate of its own, so the display takes n / elapsed)
            if not (self.ended and not self.disable):
                return super().close()
            super(notebook_tqdm, self).close()
            self.disp(bar_style="success", check_delay=False)

    return _WidgetBar


def _shell():
    """IPython's running shell, None outside IPython."""
    get = getattr(sys.modules.get("IPython"), "get_ipython", None)
    return get() if get else None


def in_kernel() -> bool:
    """Inside a Jupyter kernel (JupyterLab, or papermill's)."""
    shell = _shell()
    return shell is not None and "IPKernelApp" in shell.config


HEADLESS_HISTORY = "--HistoryManager.hist_file=:memory:"


def headless_kernel() -> bool:
    """A kernel that nbclient started: papermill or `jupyter nbconvert --execute`, where no one watches a widget
    and the saved notebook would keep it half drawn. nbclient starts every ipykernel with an in-memory history
    (`--HistoryManager.hist_file=:memory:`, its `ipython_hist_file` default); JupyterLab's kernels keep a file."""
    shell = _shell()
    hist = shell.config.get("HistoryManager", {}).get("hist_file") if shell is not None else None
    return HEADLESS_HISTORY in sys.argv or str(hist) == ":memory:"


def has_widgets() -> bool:
    return importlib.util.find_spec("ipywidgets") is not None


def choose_mode(mode: str) -> str:
    """`auto`: a widget in a Jupyter kernel that has ipywidgets, lines in one without or in one that papermill or
    nbconvert runs headless; a bar on a terminal; lines when the output is a file or a pipe (where every redraw
    would be kept). `widget` where no widget can show is `auto`."""
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}; allowed: {' | '.join(MODES)}")
    if mode == "widget" and not (in_kernel() and has_widgets()):  # no widget without Jupyter and ipywidgets
        mode = "auto"
    if mode != "auto":
        return mode
    if in_kernel():
        return "widget" if has_widgets() and not headless_kernel() else "lines"
    return "bar" if sys.stderr.isatty() else "lines"


def to_terminal(line: str) -> None:
    """A line on the terminal that started the kernel (papermill's, nbconvert's), not into the notebook: ipykernel
    hands out the original stream's descriptor as sys.stderr.fileno(). On a terminal it starts by clearing the
    line it is on, where papermill's bar of cells stands (the bar draws itself again below)."""
    try:
        fd = sys.stderr.fileno()
        os.write(fd, (("\r\x1b[K" if os.isatty(fd) else "") + line + "\n").encode())
    except (OSError, ValueError, AttributeError):  # (io.UnsupportedOperation is an OSError and a ValueError)
        pass


def stage_lines(name: str, on: bool, started: float | None = None):
    """`say(what)`: a line `NAME, Ns: what` as each stage of long work begins (the feature build, a report of
    millions of predictions, its figures), with the seconds since `started` (a perf_counter time; the first line
    when None): minutes would pass without a word (a no-op when `on` is false). In a kernel that papermill or
    nbconvert runs (the pipeline's notebooks) the line also reaches the terminal that started it, where only
    papermill's count of cells shows (`to_terminal`): a few lines, not the notebook's output."""
    t0 = time.perf_counter() if started is None else started
    echo = on and in_kernel() and headless_kernel()

    def say(what: str) -> None:
        if on:
            line = f"{name}, {time.perf_counter() - t0:.0f}s: {what}"
            print(line, flush=True)
            if echo:
                to_terminal(line)

    return say


def clock(seconds: float) -> str:
    """12s, 3m05s, 2h04m."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def rate(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "?"
    return f"{value / 1e3:,.1f}k" if value >= 1e4 else f"{value:,.0f}"


class Progress:
    """One run's progress. `advance()` after every optimizer step (host counters only: no device sync),
    `figures()` at log points (the loss and samples/s read there), `close()` at the end."""

    def __init__(self, total: int, initial: int = 0, desc: str = "train", mode: str = "auto", epochs: int = 0,
                 path: Path | None = None, file_interval_s: float = 1.0, epoch: int = 0) -> None:
        self.total, self.step, self.desc, self.epochs = int(total), int(initial), desc, epochs
        self.mode = choose_mode(mode)
        # papermill / nbconvert run by hand (`auto`; the pipeline asks for `lines`): the lines reach their terminal too
        self.echo = mode == "auto" and self.mode == "lines" and in_kernel() and headless_kernel()
        self.epoch, self.loss, self.samples_per_s = epoch, float("nan"), float("nan")  # a resumed run's epoch
        self.path, self.file_interval_s, self._written = path, file_interval_s, 0.0
        self.t0, self.step0 = time.perf_counter(), self.step
        self._next_line = 0  # lines mode: index into the marks still to print
        self.bar = None
        if self.mode in ("bar", "widget"):  # a terminal bar redraws at most once a second
            bar_class = _widget_bar() if self.mode == "widget" else _Bar
            self.bar = bar_class(total=self.total, initial=self.step, desc=desc, unit="step", dynamic_ncols=True,
                                 mininterval=1.0, **({} if self.mode == "widget" else {"file": sys.stderr}))
            self.bar.set_postfix_str(self._postfix(), refresh=False)
        elif self.mode == "lines":
            if self.step < self.total:
                self._say()
            self._next_line = sum(self.step >= f * self.total for f in LINE_FRACTIONS)
        self._write("running", force=True)

    # -- what the run tells it ---------------------------------------------------------------------------------
    def advance(self, n: int = 1) -> None:
        self.step += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "lines" and self._next_line < len(LINE_FRACTIONS):
            if self.step >= LINE_FRACTIONS[self._next_line] * self.total and self.step < self.total:
                self._next_line = sum(self.step >= f * self.total for f in LINE_FRACTIONS)
                self._say()
        self._write("running")

    def figures(self, epoch: int, loss: float, samples_per_s: float) -> None:
        self.epoch, self.loss, self.samples_per_s = epoch, loss, samples_per_s
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(), refresh=False)
        self._write("running")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def note(self, what: str) -> None:
        """A line on work between the steps (a validation, the test predictions: minutes on a large set, where the
        bar would stand still), above a terminal bar; none when progress is off."""
        if self.mode == "off":
            return
        if self.bar is not None and self.mode == "bar":
            self.bar.write(what, file=sys.stderr)
            return
        print(what, flush=True)
        if self.echo:
            to_terminal(what)

    def close(self, state: str = "done") -> None:
        """End the display (`state`: done, interrupted, failed) and write the last figures to the file."""
        if self.bar is not None:  # (a widget short of its total closes red unless the run ended as it should)
            if self.mode == "widget":
                self.bar.ended = state == "done"
            self.bar.set_postfix_str(self._postfix(), refresh=False)
            self.bar.close()
            self.bar = None
        elif self.mode == "lines":  # (a run ended short of its total, by a budget or early stopping: "(done)")
            self._say("" if state == "done" and self.step >= self.total else state)
        self._write(state, force=True)

    def mark(self, state: str) -> None:
        """`state` in the file after close(): a run stopped while it wrote its results is not "done"."""
        self._write(state, force=True)

    # -- rendering ---------------------------------------------------------------------------------------------
    def _postfix(self) -> str:
        """epoch 2/3, loss 0.9876, 12.3k samples/s (what is known so far)."""
        shown = min(self.epoch + 1, self.epochs) if self.epochs else self.epoch + 1
        parts = [f"epoch {shown}/{self.epochs}" if self.epochs else f"epoch {shown}"]
        if math.isfinite(self.loss):
            parts.append(f"loss {self.loss:.4f}")
        if math.isfinite(self.samples_per_s):
            parts.append(f"{rate(self.samples_per_s)} samples/s")
        return ", ".join(parts)

    def eta_s(self) -> float:
        done, elapsed = self.step - self.step0, time.perf_counter() - self.t0
        return (self.total - self.step) * elapsed / done if done > 0 else float("nan")

    def _say(self, state: str = "") -> None:
        share = self.step / self.total if self.total else 1.0
        elapsed = time.perf_counter() - self.t0
        eta = self.eta_s()
        eta = f", ETA {clock(eta)}" if math.isfinite(eta) and self.step < self.total and not state else ""
        first_or_last = self.step == self.step0 or self.step >= self.total or state
        where = f", run folder {self.path.parent}" if self.path is not None and first_or_last else ""
        line = (f"{self.desc}: {share:4.0%} {self.step}/{self.total} steps, {self._postfix()}, {clock(elapsed)} "
                f"elapsed{eta}{f' ({state})' if state else ''}{where}")
        print(line, flush=True)
        if self.echo:
            to_terminal(line)

    def _write(self, state: str, force: bool = False) -> None:
        """progress.json, replaced whole (a reader never sees half of it), at most once per file_interval_s."""
        now = time.perf_counter()
        if self.path is None or (not force and now - self._written < self.file_interval_s):
            return
        self._written = now
        data = {"desc": self.desc, "step": self.step, "total": self.total, "epoch": self.epoch,
                "epochs": self.epochs, "loss": self.loss if math.isfinite(self.loss) else None,
                "samples_per_s": self.samples_per_s if math.isfinite(self.samples_per_s) else None,
                "elapsed_s": now - self.t0, "state": state, "pid": os.getpid(), "time": time.time()}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError:  # a full or read-only disk is reported by the run's own writes, not by its progress
            tmp.unlink(missing_ok=True)


def read_progress(path: Path) -> dict | None:
    """progress.json; a "running" whose writing process is gone (killed, or its kernel died) reads "stopped
    (process gone)": nothing will write it again."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and {"step", "total", "state"} <= set(data)):
        return None
    if data["state"] == "running" and isinstance(data.get("pid"), int) and not pid_alive(data["pid"]):
        data["state"] = GONE
    return data


class Follower:
    """Shows the progress of a run that another process trains (03_train in papermill's kernel) in this
    terminal, from its progress.json: a thread polls the file and drives a `Progress` of its own. A walk-forward
    trains one fold at a time in `fold-k/` beside the file: the newest of those files is followed, a bar each."""

    def __init__(self, path: Path, label: str, mode: str = "auto", poll_s: float = 0.5) -> None:
        self.path, self.label, self.mode, self.poll_s = Path(path), label, mode, poll_s
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tradelib-progress", daemon=True)
        self.shown: Progress | None = None
        self.source: Path | None = None  # the file the shown bar follows

    def _files(self) -> list[Path]:
        return [self.path, *self.path.parent.glob(f"fold-*/{self.path.name}")]

    def _newest(self) -> Path | None:
        times = {}
        for f in self._files():
            try:
                times[f] = f.stat().st_mtime_ns
            except OSError:  # not written yet, or replaced just now
                continue
        return max(times, key=times.get) if times else None

    def __enter__(self) -> Follower:
        for f in self._files():  # a previous run's files in the same folder are not this run's progress
            f.unlink(missing_ok=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)
        data = self._poll()
        if self.shown is not None:  # the run's own last word, else: its notebook stopped while it ran
            state = (data or {}).get("state", "running")
            self.shown.close("stopped" if state == "running" else state)

    def _run(self) -> None:
        while not self.stop_event.wait(self.poll_s):
            self._poll()

    def _poll(self) -> dict | None:
        path = self._newest()
        data = read_progress(path) if path is not None else None
        if data is None:
            return None
        if self.shown is not None and path != self.source:  # the next fold started: the last one's bar ends
            last = read_progress(self.source)
            if last is not None:
                self._show(last, "")
            self.shown.close((last or {}).get("state", "done"))
            self.shown = None
        self.source = path
        self._show(data, path.parent.name if path.parent != self.path.parent else "")
        return data

    def _show(self, data: dict, fold: str) -> None:
        if self.shown is None:
            desc = f"{self.label}: {fold + ' ' if fold else ''}{data.get('desc', 'train')}"
            self.shown = Progress(data["total"], data["step"], desc, self.mode, data.get("epochs") or 0,
                                  epoch=int(data.get("epoch") or 0))
        gap = int(data["step"]) - self.shown.step
        if gap > 0:
            self.shown.advance(gap)
        if data.get("loss") is not None or data.get("samples_per_s") is not None:
            self.shown.figures(int(data.get("epoch") or 0), _float(data.get("loss")),
                               _float(data.get("samples_per_s")))


def _float(value) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")
