"""`tradelib COMMAND` (or `python -m tradelib COMMAND`): prepare, train, pipeline, sweep, report, bench, doctor.

Every failure ends with one line on stderr, `error: ...`, naming the file or parameter and what to do, and an
exit code: 2 for bad input or an unusable environment (a parameter, a data file, a damaged cache, a busy run
folder, a read-only or full disk, CUDA asked for but absent), 1 for a run that failed (training diverged or
trained nothing, a notebook raised, torchrun failed, an internal error), 130 when interrupted (Ctrl-C), 143 when
stopped by SIGTERM, 129 by SIGHUP, whatever the command (training stops at a step with a checkpoint first). Set
TRADELIB_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import re
import signal
import sys
from pathlib import Path

from tradelib.config import add_param_args, load_config, unused_params
from tradelib.perf import bench, doctor
from tradelib.sweep import add_sweep_args, sweep_command


def cmd_prepare(args: argparse.Namespace) -> int:
    from tradelib.data.dataset import prepare
    from tradelib.distributed import cpu_group, is_worker

    overrides = [tuple(p) for p in args.params]
    if args.data:
        overrides.append(("data_path", args.data))
    if args.force_recreate:
        overrides.append(("force_recreate", "True"))
    cfg = load_config(args.files, overrides)
    if is_worker():  # under torchrun: every process builds its share of the shards
        with cpu_group() as env:
            fs = prepare(cfg, spread=True, verbose=env.main, share=(env.rank, env.world))
        if not env.main:
            return 0
    else:
        fs = prepare(cfg)
    q = fs.meta.get("quality", {})
    whole = f"{len(fs):,}" if fs.meta.get("rows", [0])[0] == 0 and len(fs) == q.get("rows_kept", len(fs)) else \
        f"{len(fs):,} of {q.get('rows_kept', 0):,} (this process's shards)"
    print(f"{whole} feature rows x {fs.n_features} features; rows per split {fs.meta['rows_per_split']}; "
          f"rows in {q.get('rows_in', 0):,}, kept {q.get('rows_kept', 0):,}, dropped {q.get('rows_dropped', 0):,}")
    print(f"cache: {fs.meta['cache_dir']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tradelib.data.load import existing_data_path
    from tradelib.train.walkforward import train_or_walk

    cfg = load_config(args.files, [tuple(p) for p in args.params])
    existing_data_path(cfg.data_path)  # data that is nowhere: said before the device or anything else
    train_or_walk(cfg)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from tradelib.pipeline import headline, run_pipeline, select_notebooks

    paths = run_pipeline(args.files, [tuple(p) for p in args.params], select_notebooks(args.skip, args.only))
    print("\noutputs:")
    for name, path in paths.items():
        print(f"  {name:18s} {path}")
    if "report.json" in paths:
        print("\n" + "\n".join([*headline(paths["report.json"]), f"open: {paths['report.html']}"]))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tradelib.pipeline import headline, run_report

    overrides = [tuple(p) for p in args.params]
    if args.compare_with:
        overrides.append(("compare_with", args.compare_with))
    paths = run_report(args.run, args.files, overrides)
    print("\n" + "\n".join(headline(paths["report.json"])))
    print(f"report: {paths['report.html']}\nnumbers: {paths['report.json']}")
    return 0


def nearest(word: str, names) -> str | None:
    """The name a typo most likely meant: one it starts, else the closest by spelling."""
    names = sorted(set(names))
    starts = [n for n in names if n.startswith(word) or word.startswith(n)] if len(word) > 2 else []
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.5)
    return (starts or close or [None])[0]


def suggestion(message: str, options) -> str:
    """' (did you mean ...?)' for argparse's invalid-choice and unrecognized-argument messages."""
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        hint = nearest(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
        return f" (did you mean {hint!r}?)" if hint else ""
    extra = re.match(r"unrecognized arguments: (.*)", message)
    if extra:
        typos = {arg: hint for arg in extra.group(1).split() if arg.startswith("-") and (hint := nearest(arg, options))}
        if len(typos) == 1:
            return f" (did you mean {next(iter(typos.values()))}?)"
        return f" (did you mean {', '.join(f'{a} -> {h}' for a, h in typos.items())}?)" if typos else ""
    return ""


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line, naming the nearest command or option to a typo."""

    commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> None:
        message += suggestion(message, [o for o in self._option_string_actions if o.startswith("--")])
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        """An option the command does not have is reported by that command (its options, its --help)."""
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            (self.commands.get(getattr(ns, "command", None)) or self).error(
                f"unrecognized arguments: {' '.join(extra)}")
        return ns


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tradelib", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("prepare", help="clean the data, build and cache the features, print the quality summary")
    p.add_argument("--data", help="CSV/Parquet file or folder, or 'synthetic' (default: the data_path parameter)")
    p.add_argument("--force-recreate", action="store_true", help="rebuild the cache even if a valid one exists")
    add_param_args(p, ("data", "features"))
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one run, or a walk-forward with folds > 1 (what 03_train calls)")
    add_param_args(p, ("data", "features", "model", "training", "system"))
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pipeline", help="run notebooks 01-04 with papermill into outputs/<run_id>/, render the report")
    p.add_argument("--skip", default="", metavar="NB", help="notebooks to leave out, by number or name: e.g. 02 or "
                                                           "02,04 or profiling")
    p.add_argument("--only", default="", metavar="NB", help="the notebooks to run, by number or name: e.g. 01,03")
    add_param_args(p, ("data", "features", "model", "training", "system", "measure", "profile", "report"))
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("sweep", help="a grid of training runs (notebook 03 each) into one folder, and their "
                                     "comparison table and figure")
    add_sweep_args(p)
    p.set_defaults(func=sweep_command)

    p = sub.add_parser("report", help="render 04_report for a run into its folder: report.html and report.json")
    p.add_argument("run", nargs="?", default="", metavar="RUN",
                   help="run id or folder (default: the latest finished run under outputs/)")
    p.add_argument("--compare-with", default="", metavar="RUN", help="another run id or folder to set beside it")
    add_param_args(p, ("report",))
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="training throughput: seed-style DataLoader vs device loader vs dense "
                                     "(--stream: resident vs streamed data; --features: the data side)")
    bench.add_bench_args(p)
    p.set_defaults(func=bench.bench_command)
    p = sub.add_parser("doctor", help="about doctor_seconds of this configuration on this device, then what limits "
                                      "it (input, launches, compute, memory) and the change that would help")
    p.add_argument("--json", default=None, help="also write the measured figures and the verdict to this file")
    add_param_args(p, ("data", "features", "model", "training", "system", "measure"))
    p.set_defaults(func=doctor.doctor_command)
    parser.commands = dict(sub.choices)
    return parser


def _os_error(exc: OSError) -> str:
    """An operating-system error as one line: the file, the system's reason, and what to do about it."""
    if exc.errno is None:  # raised by tradelib with its own message
        return str(exc)
    where = exc.filename or "a file"
    outputs = Path(os.environ.get("TRADELIB_OUTPUTS") or Path(__file__).resolve().parents[1] / "outputs")
    ours = str(where).startswith(str(outputs)) or str(where).startswith(str(outputs.resolve()))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{where}: disk full ({exc.strerror or exc}): free some space, or set TRADELIB_OUTPUTS to a folder "
                f"on another disk (now {outputs})")
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        todo = ("the outputs folder must be writable: fix its permissions, or set TRADELIB_OUTPUTS to a writable "
                f"folder (now {outputs})") if ours else "check the file's permissions"
    else:
        todo = "check the path"
    return f"{where}: {exc.strerror or exc}: {todo}"


def explain(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line) for an exception that ends a command."""
    from tradelib.distributed import LaunchFailed
    from tradelib.paths import Busy
    from tradelib.pipeline import NotebookFailed
    from tradelib.runs import RunBusy
    from tradelib.train.run import TrainingFailed

    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or a stop on SIGTERM / SIGHUP (train.stops): 128 + signal
        from tradelib.train.stops import stopped_by

        signum = getattr(exc, "signum", signal.SIGINT)
        said = getattr(exc, "resume_said", False)  # (not where a second Ctrl-C stopped before it was printed)
        return 128 + signum, stopped_by(signum) + (" (the resume command is above)" if said else "")
    if isinstance(exc, (TrainingFailed, NotebookFailed, LaunchFailed)):
        code, text = 1, str(exc)
    elif isinstance(exc, (ValueError, RunBusy, Busy)):  # ConfigError, DataError, CacheError are ValueErrors
        code, text = 2, str(exc)
    elif isinstance(exc, OSError):
        code, text = 2, _os_error(exc)
    else:
        code, text = 1, (f"internal error: {type(exc).__name__}: {str(exc).strip()[:300]} (set TRADELIB_DEBUG=1 "
                         f"for the traceback)")
    return code, " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run a command. SIGTERM and SIGHUP end it as Ctrl-C does, with its one line and exit code, wherever the
    command has no handler of its own (a training stops at a step with a checkpoint, the pipeline waits for its
    kernel): unhandled, they ended `prepare` mid-build in silence."""
    from tradelib.train.stops import signals_interrupt

    args = build_parser().parse_args(argv)
    groups = getattr(args, "param_groups", None)  # (a sweep's parameters are its own)
    unused = unused_params(args.params, groups) if groups else []
    if unused and args.command != "report":  # (report refuses them, saying whose they are)
        print(f"note: {args.command} does not use -p {', '.join(unused)}: ignored (`tradelib {args.command} --help` "
              f"lists what it reads)", file=sys.stderr)
    try:
        with signals_interrupt():
            return args.func(args)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every failure becomes one line and an exit code
        if os.environ.get("TRADELIB_DEBUG"):
            raise
        code, text = explain(exc)
    rank = int(os.environ.get("RANK", 0))
    print(f"error: {'' if rank == 0 else f'[rank {rank}] '}{text}", file=sys.stderr)
    return code


def run() -> None:
    """The process entry point. A torchrun worker leaves with os._exit once its work is flushed and its process
    group destroyed: torch 2.13's gloo threads, kept alive by DDP past destroy_process_group, otherwise race the
    interpreter's teardown and can abort an otherwise finished rank (SIGABRT, and torchrun fails the job)."""
    code = main()
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
