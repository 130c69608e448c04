"""Stopping a run on a signal the way Ctrl-C does: at the next optimizer step, with a checkpoint of the exact state.

SIGINT is Ctrl-C and Jupyter's interrupt; SIGTERM is what a cluster scheduler, `docker stop` or systemd send
before they kill; SIGHUP a closed terminal or ssh session. Each asks the run to stop between two optimizer
steps (one process: the next one; under DDP: the next log point, where the ranks agree on the step), where
the checkpoint is exact. The run then raises StopRequested, which the CLI turns into exit code 128 + the signal
(130, 143, 129).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(KeyboardInterrupt):
    """A run stopped on a signal (`signum`); a KeyboardInterrupt, so whatever stops on Ctrl-C stops on it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum
        self.resume_said = False  # whether the resume command was printed (the run's checkpoint written)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def progress_state(signum: int) -> str:
    """What progress.json says of a run stopped by `signum`."""
    return "interrupted" if signum == signal.SIGINT else "stopped"


def stopped_by(signum: int) -> str:
    """How a stop on `signum` is told: "interrupted" (Ctrl-C), else "stopped by SIGTERM" (SIGHUP)."""
    return "interrupted" if signum == signal.SIGINT else f"stopped by {signal_name(signum)}"


def caught(signals: tuple[int, ...]) -> list[int]:
    """The signals a stop handler takes over: not one this process was started ignoring (`nohup` ignores SIGHUP,
    so a run under it goes on when the terminal closes, as its user asked)."""
    return [s for s in signals if signal.getsignal(s) is not signal.SIG_IGN]


@contextlib.contextmanager
def signals_interrupt(waiting: str = "") -> Iterator[None]:
    """While entered (main thread), the first SIGINT, SIGTERM or SIGHUP raises StopRequested, a KeyboardInterrupt,
    after saying `waiting` (what happens next): for a process whose training runs in a child, which it stops the
    way Ctrl-C does (the pipeline's papermill kernels, interrupted on a KeyboardInterrupt, stop their run at a
    step with a checkpoint, and the pipeline waits for them). Later SIGTERM / SIGHUP wait with it (a scheduler
    that signals again, a closed ssh session); a second Ctrl-C stops at once, without the checkpoint. Unhandled,
    SIGTERM ended the pipeline at once and its kernel with it, without one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first: list[int] = []

    def handler(signum, frame) -> None:
        if first:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        first.append(signum)
        print(f"\n{signal_name(signum)}: {waiting or 'stopping'} (Ctrl-C to stop at once, without it)", flush=True)
        raise StopRequested(signum)

    previous = {s: signal.signal(s, handler) for s in caught(STOP_SIGNALS)}
    try:
        yield
    finally:
        for s, p in previous.items():
            signal.signal(s, p if p is not None else signal.SIG_DFL)


class StopRequests:
    """While entered (main thread only), SIGINT / SIGTERM / SIGHUP set `requested` (the signal's number) instead of
    ending the process. A second Ctrl-C (SIGINT) stops at once when `escalate` (one process, watched by a person);
    a second SIGTERM or SIGHUP waits for the step and its checkpoint (a scheduler that signals again, a wrapper
    passing its own SIGTERM on). Without `escalate` every second signal waits: under DDP, where torchrun passes
    its own signal on again and kills late workers after its timeout, and in a notebook's kernel that papermill
    runs, which a scheduler's SIGTERM to every process and then the pipeline's interrupt reach one after the other
    (the pipeline's kernel manager kills it after KERNEL_STOP_S, papermill's own command's after 5 s)."""

    def __init__(self, enabled: bool, escalate: bool = True, waits: str = "") -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.escalate, self.waits = escalate, waits  # `waits`: said, without escalation, of a second signal
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if self.enabled:
            for s in caught(STOP_SIGNALS):
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        if self.requested is not None:
            if self.escalate and signum == signal.SIGINT:
                raise StopRequested(signum)
            return
        self.requested = signum
        again = ("interrupt again to stop at once" if signum == signal.SIGINT else
                 "Ctrl-C to stop at once, without it") if self.escalate else self.waits
        print(f"\n{signal_name(signum)}: stopping after this optimizer step with a checkpoint ({again})", flush=True)
