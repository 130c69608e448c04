"""One flat config for everything a run, a measurement or a report can change: the one truth.

Every knob is a field of `Config` with its help text, group and rules in the field's metadata. From those
fields come the notebooks' parameter cells (`tools/make_notebooks.py`), the CLI's `--help`, what may change
on resume, and the checks that refuse a bad value with one line. Values come from defaults, then YAML files
(`-f`), then `-p NAME VALUE` overrides, as with papermill.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import math
import os
import re
import shlex
import zoneinfo
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from tradelib.paths import data_places, is_synthetic, resolve_data_path

# which groups of fields each numbered notebook declares in its parameters cell (plus single names)
NOTEBOOK_PARAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "01_data_cleaning": (("data", "features"), ("run_id",)),
    "02_profiling": (("data", "features", "model", "training", "system", "measure", "profile"), ()),
    "03_train": (("data", "features", "model", "training", "system"), ()),
    "04_report": (("report",), ("run_id",)),
}
# groups whose fields never change what a run trains: free to change on resume
FREE_GROUPS = ("measure", "profile", "bench", "report")
MAX_COST_BPS = 10_000.0  # a cost of all of the value traded: beyond it a "cost" is no longer one


def knob(default: Any, help: str, group: str, *, resume: bool = False, choices: tuple = (),
         lo: float | None = None, lo_open: bool = False, hi: float | None = None, hi_open: bool = False,
         finite: bool = False, pattern: str = "", allowed: str = "") -> Any:
    """A Config field. `resume`: may change when a run is resumed. `choices`: the allowed values. `lo`/`hi`:
    bounds (inclusive unless `lo_open`/`hi_open`). `finite`: refuse inf and NaN. `pattern`: a regular
    expression a string value must match in full, described to the user as `allowed`."""
    meta = {"help": help, "group": group, "resume": resume or group in FREE_GROUPS, "choices": choices,
            "lo": lo, "lo_open": lo_open, "hi": hi, "hi_open": hi_open, "finite": finite, "pattern": pattern,
            "allowed": allowed}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # data: where the bars come from and how they are cleaned
    data_path: str = knob("synthetic", "synthetic (the embedded market) or a CSV/Parquet file or folder (relative: to "
                          "the working directory, else the checkout's root)", "data", resume=True)
    synth_symbols: int = knob(8, "synthetic market: number of symbols", "data", lo=1)
    synth_bars: int = knob(30_000, "synthetic market: 5-minute bars per symbol (30,000: about 104 days)", "data",
                           lo=2)
    data_seed: int = knob(7, "synthetic market: seed", "data", lo=0)
    force_recreate: bool = knob(False, "rebuild the feature cache even if a valid one exists", "data",
                                resume=True)
    date_format: str = knob("", "strftime format of text timestamps, e.g. %d/%m/%Y (empty: inferred; needed when "
                            "dates read both day-first and month-first)", "data", pattern=r"|.*%.*",
                            allowed="empty, or a strftime format such as %d/%m/%Y %H:%M")
    data_timezone: str = knob("UTC", "time zone of timestamps written without one: UTC, or an IANA name such as "
                              "America/New_York (exchange-local exports) or Europe/Berlin (CET/CEST); DST's skipped "
                              "and repeated local hours are dropped as bad_timestamp", "data")
    market_timezone: str = knob("", "the market's clock, whose local time of day the tod_sin/tod_cos features read: an "
                                "IANA name such as America/New_York for an exchange that keeps local time in a file "
                                "written in UTC (empty: data_timezone)", "data")
    shard_rows: int = knob(1_000_000, "building features: rows per shard of whole symbols, cleaned and made in "
                           "parallel and cached apart (the features do not depend on it)", "data", lo=1, resume=True)
    build_workers: int = knob(0, "building features: threads (0: every core)", "data", lo=0, resume=True)
    memory_check: bool = knob(True, "refuse a feature build whose estimated peak memory exceeds what the process can "
                              "take, before the data is read (false: try anyway, where the estimate is wrong)",
                              "data", resume=True)
    # features: what the model sees and predicts, and the splits (the feature cache is keyed on these)
    spike_sigmas: float = knob(12.0, "a reverting one-bar spike beyond this many trailing sigmas masks its targets "
                                     "(inf: off)", "features", lo=0, lo_open=True)
    bad_print_decades: float = knob(3.0, "a price this many powers of ten from its symbol's trailing median close "
                                    "is a bad print, masked as missing (inf: off)", "features", lo=0, lo_open=True)
    bad_volume_decades: float = knob(6.0, "a volume this many powers of ten above its symbol's trailing median "
                                     "volume is a bad print, masked as missing (inf: off)", "features", lo=0,
                                     lo_open=True)
    corporate_actions: str = knob("mask", "a split-like jump that stays: flag (count it), mask (the series restarts "
                                  "there: no feature, window or target spans it) or adjust (back-adjust the prices "
                                  "before it, volumes inversely)", "features", choices=("flag", "mask", "adjust"))
    split_sigmas: float = knob(math.inf, "a jump to the open that stays, beyond this many trailing sigmas of a move "
                               "over its step, is a corporate action even when its ratio is not a split's, as a "
                               "spin-off's (inf: split ratios only, since a quiet stock's real 30% move is 20 sigmas "
                               "too)", "features", lo=0, lo_open=True)
    window: int = knob(32, "bars of history per sample", "features", lo=1)
    horizon: int = knob(1, "target: forward log return over this many bars", "features", lo=1)
    target_delay: int = knob(1, "target: starts this many of its symbol's rows (bars) after t: the return a book "
                             "trading that many bars after its signal earns (1: t+1 to t+1+horizon, as trade_delay 1 "
                             "trades; 0: from t itself)", "features", lo=0)
    vol_scaled_target: bool = knob(False, "divide the target by trailing realised volatility", "features")
    clip: float = knob(5.0, "normalised features are clipped to +-clip", "features", lo=0, lo_open=True,
                       finite=True)
    max_gap_bars: int = knob(50, "a gap longer than this many bars of the market's calendar (by the clock inside a "
                             "session and on a 24/7 market; a night, a lunch break or a weekend on an exchange is one "
                             "bar, a missing session its bars) splits a series; windows never cross it",
                             "features", lo=0)
    train_frac: float = knob(0.7, "chronological split by time across all symbols", "features", lo=0,
                             lo_open=True, hi=1, hi_open=True)
    val_frac: float = knob(0.15, "validation share of time; the rest after a purge gap is the test split",
                           "features", lo=0, lo_open=True, hi=1, hi_open=True)
    train_end: str = knob("", "last training time, e.g. 2022-12-31 (whole day, UTC); with val_end (empty: fractions)",
                          "features")
    val_end: str = knob("", "last validation time, e.g. 2023-12-31; the test split follows (empty: fractions)",
                        "features")
    folds: int = knob(0, "walk-forward: test periods the out-of-sample span is cut into, one model per fold (0 or 1: "
                      "the single split above)", "features", lo=0)
    fold_window: str = knob("expanding", "walk-forward training window: expanding (from the start of the data) or "
                            "rolling (the first fold's length)", "features", choices=("expanding", "rolling"))
    # model
    model: str = knob("lstm", "mlp | lstm | gru | tcn | transformer, or your own class as package.module:Class "
                      "(importable from the working directory or PYTHONPATH; the protocol: tradelib/train/models.py)",
                      "model", pattern=r"mlp|lstm|gru|tcn|transformer|[A-Za-z_][\w.]*:[A-Za-z_]\w*",
                      allowed="mlp | lstm | gru | tcn | transformer | package.module:Class")
    hidden: int = knob(64, "hidden width / channels", "model", lo=1)
    layers: int = knob(2, "recurrent layers, MLP hidden layers, or TCN blocks", "model", lo=1)
    dropout: float = knob(0.0, "dropout probability between layers", "model", lo=0, hi=1, hi_open=True)
    init_gain: float = knob(0.5, "xavier gain of the weights (the seed's 0.5)", "model", lo=0, lo_open=True,
                            finite=True)
    output_clip: float = knob(0.0, "soft-clip the model's output to +-output_clip in units of the target's training "
                              "scale (meta target_scale; predictions within +-output_clip x target_scale; 0: off)",
                              "model", lo=0, finite=True)
    heads: int = knob(8, "transformer: attention heads (hidden must be a multiple)", "model", lo=1)
    positions: str = knob("learned", "transformer: learned | sinusoidal position embeddings", "model",
                          choices=("learned", "sinusoidal"))
    # training
    batch_size: int = knob(256, "micro-batch size (windows; chunks with dense)", "training", lo=1)
    grad_accum_steps: int = knob(1, "micro-batches per optimizer step", "training", lo=1)
    lr: float = knob(2e-3, "peak learning rate", "training", lo=0, lo_open=True, finite=True)
    lr_scaling: str = knob("none", "none | linear | sqrt: scale lr with the global batch against reference_batch",
                           "training", choices=("none", "linear", "sqrt"))
    reference_batch: int = knob(256, "global batch that `lr` was tuned for", "training", lo=1)
    weight_decay: float = knob(0.01, "AdamW weight decay (not on biases and norms)", "training", lo=0,
                               finite=True)
    warmup_steps: int = knob(50, "optimizer steps of linear warm-up, then cosine decay; capped at a tenth of "
                             "the run's optimizer steps (at least 1)", "training", lo=0)
    min_lr_ratio: float = knob(0.1, "cosine decays to lr * min_lr_ratio", "training", lo=0, hi=1)
    epochs: int = knob(3, "passes over the training windows", "training", lo=1, resume=True)
    max_steps: int = knob(0, "stop after this many optimizer steps (0: no limit)", "training", lo=0, resume=True)
    grad_clip: float = knob(1.0, "clip the gradient norm (0: off)", "training", lo=0)
    loader: str = knob("device", "device (windows gathered on the device; streamed in blocks when the data exceeds "
                       "device_memory_budget) | stream (always streamed) | dataloader (seed-style baseline)",
                       "training", choices=("device", "stream", "dataloader"), resume=True)
    num_workers: int = knob(8, "dataloader loader only: worker processes (the seed's 8, capped at the cores)",
                            "training", lo=0, resume=True)
    prefetch_factor: int = knob(4, "dataloader loader only: batches prefetched per worker", "training", lo=1,
                                resume=True)
    pin_memory: bool = knob(True, "dataloader loader only: page-locked host batches (CUDA)", "training",
                            resume=True)
    persistent_workers: bool = knob(True, "dataloader loader only: keep workers across epochs", "training",
                                    resume=True)
    dense: bool = knob(False, "causal models (tcn, transformer): a prediction and a loss at every position of a chunk",
                       "training")
    dense_chunk: int = knob(512, "dense mode: rows per chunk (each chunk trains on length - receptive_field + 1; "
                            "a transformer's chunk is its window)", "training", lo=2)
    seed: int = knob(0, "seeds weights, shuffling and dropout: CPU runs repeat bit for bit", "training")
    log_every: int = knob(25, "optimizer steps between metric rows (the only host syncs)", "training", lo=1,
                          resume=True)
    eval_batch_size: int = knob(4096, "windows per forward pass when evaluating", "training", lo=1, resume=True)
    checkpoint_every: int = knob(0, "optimizer steps between step checkpoints (0: none by count; "
                                 "checkpoint_minutes still writes them by time, and each epoch's end has one)",
                                 "training", lo=0, resume=True)
    checkpoint_minutes: float = knob(10.0, "minutes of training between step checkpoints, checked at log points, so "
                                     "a kill loses at most about that much (0: off)", "training", lo=0, finite=True,
                                     resume=True)
    max_minutes: float = knob(0.0, "training budget: at the first log point past it the run stops cleanly with a "
                              "checkpoint, a validation and its results (0: none)", "training", lo=0, finite=True,
                              resume=True)
    keep_checkpoints: int = knob(3, "step checkpoints kept besides last.pt and best.pt", "training", lo=1,
                                 resume=True)
    resume: bool = knob(False, "continue the run `run_id` from its latest checkpoint", "training", resume=True)
    patience: int = knob(0, "early stopping: epochs without a better val loss (0: off)", "training", lo=0,
                         resume=True)
    max_bad_steps: int = knob(20, "consecutive non-finite steps before the run stops", "training", lo=1,
                              resume=True)
    tensorboard: bool = knob(True, "also write the logged figures as TensorBoard events in the run folder "
                             "(tensorboard --logdir outputs/; needs the tensorboard package)", "training",
                             resume=True)
    fold_init: str = knob("scratch", "walk-forward: each fold's model starts from new weights (scratch) or from the "
                          "previous fold's final weights (warm)", "training", choices=("scratch", "warm"))
    # system: where and how it runs
    device: str = knob("auto", "auto | cpu | cuda | cuda:N", "system", resume=True, pattern=r"auto|cpu|cuda(:\d+)?",
                       allowed="auto | cpu | cuda | cuda:N")
    precision: str = knob("auto", "auto (bf16 on a CUDA card with native bf16, else fp16 with a GradScaler; fp32 on "
                          "the CPU) | fp32 | bf16 | fp16", "system", choices=("auto", "fp32", "bf16", "fp16"))
    compile: str = knob("auto", "auto (on for CUDA) | on | off | reduce-overhead (adds CUDA graphs, small models)",
                        "system", choices=("auto", "on", "off", "reduce-overhead"), resume=True)
    deterministic: bool = knob(False, "CUDA: deterministic algorithms (slower), CUBLAS_WORKSPACE_CONFIG set",
                               "system", resume=True)
    n_gpus: int = knob(1, ">1: train launches torchrun with this many processes", "system", lo=1, resume=True)
    run_id: str = knob("", "run folder name under outputs/ (empty: a new time-stamped id; 04_report: the latest "
                       "finished run)", "system", resume=True)
    device_memory_budget: float = knob(0.5, "device memory the data may take, a fraction of the device's memory (up "
                                       "to 1) or bytes: above it the data is streamed in blocks", "system", lo=0,
                                       lo_open=True, finite=True)
    stream_block_rows: int = knob(262_144, "streamed data: rows per block copied to the device (blocks are "
                                  "shuffled, then the windows of the resident ones)", "system", lo=1)
    shard_data: bool = knob(False, "DDP: each process holds only its share of the rows (whole symbols), so the data "
                            "can be the number of processes times one device's", "system")
    progress: str = knob("auto", "training progress: auto (a bar in a terminal, a widget in Jupyter, a line each "
                         "quarter in a log or headless notebook) | bar | widget | lines | off", "system",
                         choices=("auto", "bar", "widget", "lines", "off"), resume=True)
    cuda_graphs: str = knob("auto", "CUDA: record the whole optimizer step (its micro-batches' forward and backward, "
                            "clipping, AdamW) once as a CUDA graph and replay it, one launch a step instead of "
                            "hundreds (on an H200 3.3x the eager LSTM at batch 1024): auto (wherever it is allowed: "
                            "one CUDA process) | true | false", "system", resume=True,
                            choices=("auto", "true", "false"))
    peak_tflops: float = knob(0.0, "MFU: the device's dense bf16/fp16 peak in TFLOP/s, for a card not in "
                              "hardware.PEAKS (0: from that table)", "system", lo=0, finite=True, resume=True)
    # measure: the timed steps of 02_profiling's sweep and of `tradelib bench`
    loaders: str = knob("device,dataloader,dense", "comma list of loaders to measure: device, dataloader (the "
                        "seed's pipeline), dense (causal models only), stream (streamed through stream_budget)",
                        "measure", pattern=r"\s*(device|dataloader|dense|stream)"
                                           r"([\s,]+(device|dataloader|dense|stream))*\s*",
                        allowed="a comma list of device, dataloader, dense, stream")
    graph_modes: str = knob("eager,graph", "bench: comma list of step modes measured for each loader: eager (the "
                            "step's kernels launched one by one) and graph (the step graph, cuda_graphs true; CUDA "
                            "only, skipped elsewhere with the reason)", "measure",
                            pattern=r"\s*(eager|graph)([\s,]+(eager|graph))*\s*", allowed="eager, graph or eager,graph")
    steps: int = knob(20, "timed optimizer steps per configuration and repetition", "measure", lo=1)
    warmup: int = knob(5, "untimed steps before each timed stretch (worker start-up, compilation)", "measure",
                       lo=0)
    repeats: int = knob(1, "interleaved repetitions of every configuration (medians are reported)", "measure",
                        lo=1)
    max_other_load: float = knob(0.1, "a CPU peak FLOP/s measured while other processes kept more than this share "
                                 "of the cores busy is not trusted: MFU is flagged invalid, not reported", "measure",
                                 lo=0, hi=1)
    doctor_seconds: float = knob(30.0, "tradelib doctor: seconds of timed training steps before the verdict",
                                 "measure", lo=0, lo_open=True, finite=True)
    # profile: 02_profiling only
    batch_sizes: str = knob("64,256,1024", "comma list of micro-batch sizes to sweep (windows; chunks for dense)",
                            "profile", pattern=r"\s*[1-9]\d*([\s,]+[1-9]\d*)*\s*",
                            allowed="a comma list of sizes >= 1, e.g. 64,256,1024")
    profile_seconds: float = knob(20.0, "02_profiling's time budget for its batch-size sweep, largest-batch search "
                                  "and profiler trace together: each sized to its share (0: no budget)", "profile",
                                  lo=0, finite=True)
    profile_steps: int = knob(5, "training steps recorded by torch.profiler", "profile", lo=1)
    max_batch_limit: int = knob(65_536, "search the largest micro-batch that fits, up to this (0: skip)",
                                "profile", lo=0)
    cpu_budget_mb: int = knob(256, "CPU only: the largest-batch search bounds one step's tensor memory by this",
                              "profile", lo=1)
    # bench: `tradelib bench` only
    bench_models: str = knob("lstm tcn:window=64,layers=4 transformer:window=64,hidden=512,layers=4,heads=8",
                             "space-separated model specs NAME or "
                             "NAME:key=value,... measured side by side (a spec's loaders=a+b: its own loaders)",
                             "bench")
    dense_batch: int = knob(0, "chunks per dense batch (0: chunks of at most dense_chunk rows that train exactly "
                            "batch_size targets)", "bench", lo=0)
    stream_budget: float = knob(0.25, "bench --stream: the streamed configuration's device_memory_budget, as a share "
                                "of the data's size on the device", "bench", lo=0, lo_open=True, hi=1)
    ingest_files: bool = knob(True, "bench --features: also time reading the raw rows from CSV and Parquet files to "
                              "the clean frame", "bench")
    # report: 04_report and `tradelib report`
    compare_with: str = knob("", "another run id or folder to set beside this one (empty: none)", "report")
    cost_bps: float = knob(5.0, "transaction cost per unit of position change, in basis points (at most "
                           "10,000: all of what is traded)", "report", lo=0, hi=MAX_COST_BPS, finite=True)
    position_mode: str = knob("auto", "backtest positions: auto (neutral with at least min_symbols_cs symbols, else "
                              "sign), sign, scaled (capped at 1), or neutral (demeaned, gross 1)", "report",
                              choices=("auto", "sign", "scaled", "neutral"))
    min_symbols_cs: int = knob(5, "symbols at a typical timestamp for a cross-section: position_mode auto trades it "
                               "neutral, led by the cross-sectional IC, from here, and fewer as a sign book led by "
                               "the pooled IC", "report", lo=2)
    periods_per_year: float = knob(0.0, "annualisation (0: from the data's calendar, ~252 for daily stock bars)",
                                   "report", lo=0, finite=True)
    trade_delay: int = knob(1, "bars between a signal and its trade (1: the signal at the close of t trades at "
                            "the close of t+1)", "report", lo=0)
    cost_grid_bps: str = knob("0,1,2,5,10,20", "comma list of costs (bps) at which the net Sharpe is reported",
                              "report")
    bootstrap_samples: int = knob(1000, "block-bootstrap resamples of the break-even cost's 95% interval", "report",
                                  lo=1)
    bootstrap_seed: int = knob(0, "seed of the break-even cost's block bootstrap (the interval repeats exactly)",
                               "report", lo=0)
    extra: dict = knob({}, "free-form notes kept with the run", "system", resume=True)

    def __post_init__(self) -> None:
        for f in fields(self):
            check_value(f, getattr(self, f.name))
        # one spelling wherever the Config is made (a notebook's kernel runs in notebooks/); a resume checks the
        # data's bytes by the cache key, not this path
        self.data_path = resolve_data_path(self.data_path)
        if self.train_frac + self.val_frac >= 1:
            raise ConfigError(f"train_frac + val_frac must be below 1 (the test split is the rest), got "
                              f"{self.train_frac} + {self.val_frac}")
        _check_split_dates(self.train_end, self.val_end)
        cost_grid(self.cost_grid_bps)
        _check_timezone("data_timezone", self.data_timezone)
        if self.market_timezone:
            _check_timezone("market_timezone", self.market_timezone)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str | dict[str, str] = "parameters") -> Config:
        """Build from a mapping, coercing types and refusing unknown names with a suggestion. `source` names
        where the values came from, in errors: one place, or each name's (`read_params`' `origins`)."""
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for name, value in values.items():
            where = source.get(name, "parameters") if isinstance(source, dict) else source
            if name not in known:
                raise ConfigError(f"{where}: {unknown_message(name, known)}")
            kwargs[name] = _coerce(name, value, known[name].type, where)
            if where not in ("-p", "parameters"):  # a value out of range names its file (a -p names itself)
                try:
                    check_value(known[name], kwargs[name])
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc}") from None
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @property
    def target_reach(self) -> int:
        """Rows after t at which t's target ends (target_delay + horizon; more bars if one is missing): what a
        purge and a symbol's length must allow for."""
        return self.target_delay + self.horizon

    @property
    def min_symbol_rows(self) -> int:
        """Rows a symbol needs to keep (window + target_reach + 1): cleaning drops a shorter one."""
        return self.window + self.target_reach + 1

    @property
    def market_zone(self) -> str:
        """The zone of the market's clock (market_timezone, else data_timezone): what a time of day is read in."""
        return self.market_timezone or self.data_timezone

    def group(self, *names: str) -> dict[str, Any]:
        """The values of the fields in these groups, e.g. cfg.group("features"): what the feature cache keys on."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["group"] in names}


class ConfigError(ValueError):
    """A bad parameter: one line naming it, the value and what is allowed."""


def _check_split_dates(train_end: str, val_end: str) -> None:
    """Both split dates or neither; each a timestamp pandas reads; train_end before val_end."""
    if not train_end and not val_end:
        return
    if not (train_end and val_end):
        raise ConfigError(f"train_end and val_end go together (got train_end={train_end!r}, val_end={val_end!r}); "
                          f"leave both empty to split by train_frac / val_frac")
    import pandas as pd

    when = {}
    for name, text in (("train_end", train_end), ("val_end", val_end)):
        if str(text).strip().lower() in ("now", "today"):  # pandas reads them: splits that move with the clock
            raise ConfigError(f"parameter {name!r} is {text!r}, which moves with the clock while the feature cache "
                              f"keys on the text: give the date, e.g. 2022-12-31")
        if re.fullmatch(r"\s*\d{4}(-\d{1,2})?\s*", str(text)):  # pandas reads 2024 as 2024-01-01, not its end
            raise ConfigError(f"parameter {name!r} is {text!r}, a year or month that pandas reads as its first day "
                              f"only: give the last day, e.g. {str(text).strip()[:4]}-12-31")
        try:
            when[name] = pd.Timestamp(text)
        except (ValueError, TypeError):
            raise ConfigError(f"parameter {name!r} is {text!r}; expected a date or timestamp such as 2022-12-31") \
                from None
    if when["train_end"].tzinfo is not None or when["val_end"].tzinfo is not None:
        when = {k: (v.tz_localize("UTC") if v.tzinfo is None else v) for k, v in when.items()}
    if when["train_end"] >= when["val_end"]:
        raise ConfigError(f"train_end {train_end!r} must come before val_end {val_end!r}")


def _check_timezone(param: str, name: str) -> None:
    """An IANA time zone name the system's zone database knows (the tz database: America/New_York, UTC)."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(f"parameter {param!r} is {name!r}; expected an IANA time zone name such as UTC, "
                          f"America/New_York or Europe/Berlin") from None


def cost_grid(text: str) -> tuple[float, ...]:
    """The costs (bps) of a `cost_grid_bps` comma list; ConfigError unless every one is a number from 0 to
    MAX_COST_BPS."""
    try:
        costs = [float(c) for c in str(text).split(",") if c.strip()]
    except ValueError:
        costs = []
    if not costs or any(not 0 <= c <= MAX_COST_BPS for c in costs):
        raise ConfigError(f"parameter 'cost_grid_bps' is {text!r}; expected a comma list of costs from 0 to "
                          f"{MAX_COST_BPS:g} bps")
    return tuple(costs)


def settings_values(cls: type, cfg: Config | None, overrides: dict[str, Any], what: str) -> dict[str, Any]:
    """The values of the settings dataclass `cls`: its fields that are Config fields from `cfg` (default: Config's
    defaults), then `overrides` by name; a name `cls` does not have is a TypeError."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"unknown {what} setting(s) {', '.join(unknown)} (known: {', '.join(names)})")
    cfg = Config() if cfg is None else cfg
    known = {f.name for f in fields(cfg)}
    return {n: getattr(cfg, n) for n in names if n in known} | overrides


def unknown_message(name: str, known) -> str:
    hint = difflib.get_close_matches(str(name), list(known), n=1)  # (a YAML key may be a number, a date)
    return f"unknown parameter {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")


def check_value(f: dataclasses.Field, value: Any) -> None:
    """Refuse a value outside the field's choices or bounds."""
    m = f.metadata
    if m["choices"] and value not in m["choices"]:
        raise ConfigError(f"parameter {f.name!r} is {value!r}; allowed: {' | '.join(map(str, m['choices']))}")
    if m["pattern"] and isinstance(value, str) and not re.fullmatch(m["pattern"], value):
        raise ConfigError(f"parameter {f.name!r} is {value!r}; allowed: {m['allowed']}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if m["finite"] and not math.isfinite(value):
        raise ConfigError(f"parameter {f.name!r} is {value!r}; it must be a finite number")
    lo, hi = m["lo"], m["hi"]
    bad_lo = lo is not None and (value <= lo if m["lo_open"] else value < lo)
    bad_hi = hi is not None and (value >= hi if m["hi_open"] else value > hi)
    if bad_lo or bad_hi or value != value:
        raise ConfigError(f"parameter {f.name!r} is {value!r}; it must be {' and '.join(_bounds(m, ' '))}")


def _coerce(name: str, value: Any, typ: Any, source: str) -> Any:
    typ = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if typ == "bool":
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                return low in {"true", "1", "yes"}
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise ValueError(value)
            return bool(value)
        if typ == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if typ == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if typ == "str":
            if isinstance(value, bool):  # YAML's and papermill's true/false, for a choice such as cuda_graphs
                return "true" if value else "false"
            return "" if value is None else str(value)
        if typ == "dict":
            return dict(value or {})
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{source}: parameter {name!r} expects {typ}, got {value!r}") from None
    return value


def parse_value(text: str) -> Any:
    """A -p value as papermill reads it: int, then float, then True/False/None, else the string itself."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None, "true": True, "false": False}.get(text, text)


class ParamsLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing aliases (`*name`): nine nested levels of them expand to billions of values
    once a value is printed or saved (a "billion laughs" file), which hung `-f` on a colleague's file. A parameter
    file holds NAME: VALUE pairs, which never need one."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "an alias (*name): parameter files may not use them",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def read_params(files: list[str] | None = None, overrides: list[tuple[str, str]] | None = None,
                origins: dict[str, str] | None = None) -> dict:
    """Merge YAML parameter files then NAME VALUE overrides into one dict (not yet validated). `origins`, when
    given, is filled with where each value came from (its file, or "-p"), for the errors to name."""
    origins = {} if origins is None else origins
    merged: dict[str, Any] = {}
    for f in files or []:
        try:
            data = yaml.load(Path(f).read_text(), Loader=ParamsLoader) or {}
        except OSError as exc:
            raise ConfigError(f"{f}: cannot read the parameter file ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            raise ConfigError(f"{f}: not valid YAML{at} ({getattr(exc, 'problem', None) or exc})") from None
        except RecursionError:
            raise ConfigError(f"{f}: not a parameter file: its values are nested too deeply to read") from None
        except ValueError as exc:  # a scalar YAML reads as a date that does not exist (2024-13-45)
            raise ConfigError(f"{f}: not valid YAML ({exc}: a date that does not exist; quote it to pass it as text)") \
                from None
        if not isinstance(data, dict):
            raise ConfigError(f"{f}: a parameter file must hold a mapping of NAME: VALUE")
        merged.update(data)
        origins.update(dict.fromkeys(data, str(f)))
    for name, value in overrides or []:
        merged[name] = parse_value(value) if isinstance(value, str) else value
        origins[name] = "-p"
    return merged


def add_param_args(parser: argparse.ArgumentParser, groups: tuple[str, ...] = ()) -> None:
    """`-f FILE` and `-p NAME VALUE`, as papermill takes them; `--help` lists the fields of `groups`."""
    parser.add_argument("-f", "--parameters-file", dest="files", action="append", default=[], metavar="FILE",
                        help="YAML parameter file (repeatable; later files win), as with papermill -f")
    parser.add_argument("-p", "--parameter", dest="params", action="append", nargs=2, default=[],
                        metavar=("NAME", "VALUE"), help="one parameter, as with papermill -p (repeatable)")
    if groups:
        parser.epilog = parameters_help(groups)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.set_defaults(param_groups=groups)


def unused_params(params: list[tuple[str, str]] | list[list[str]], groups: tuple[str, ...]) -> list[str]:
    """`NAME (group)` for each `-p NAME` of a parameter outside `groups`, the ones a command reads: it changes
    nothing there (`train -p cost_bps 2` trains as without it; the report takes it). Unknown names are left to
    load_config's error."""
    group = {f.name: f.metadata["group"] for f in fields(Config)}
    return [f"{name} ({group[name]})" for name, _ in params if name in group and group[name] not in groups]


GROUP_TITLES = {
    "data": "data: where the bars come from and how they are cleaned",
    "features": "features: what the model sees and predicts, and the splits (the feature cache is keyed on these)",
    "model": "model", "training": "training", "system": "system: where and how it runs",
    "measure": "measure: the timed steps of 02_profiling's sweep and of `tradelib bench`",
    "profile": "profile: 02_profiling only", "bench": "bench: `tradelib bench` only",
    "report": "report: 04_report and `tradelib report`",
}  # fmt: skip


def _bounds(m: dict, space: str = "") -> list[str]:
    """A field's bounds, ['>=1'] or ['>0', '<1'] (`space` between sign and number: `--help` has none, so that
    wrapping never splits one)."""
    parts = []
    if m["lo"] is not None:
        parts.append(f"{'>' if m['lo_open'] else '>='}{space}{m['lo']:g}")
    if m["hi"] is not None:
        parts.append(f"{'<' if m['hi_open'] else '<='}{space}{m['hi']:g}")
    return parts


def parameters_help(groups: tuple[str, ...], width: int = 100, exclude: tuple[str, ...] = ()) -> str:
    """The parameters a command takes, by group (less `exclude`): `name: type = default`, then the help (with the
    allowed values or bounds where the help does not give them), wrapped: the CLI's --help, from Config's fields."""
    import textwrap

    out = ["parameters (-p NAME VALUE, repeatable; or -f FILE, a YAML file of NAME: VALUE lines):"]
    for group in dict.fromkeys(f.metadata["group"] for f in fields(Config)):
        if group not in groups:
            continue
        out += ["", f"  {GROUP_TITLES.get(group, group)}"]
        for f in fields(Config):
            if f.metadata["group"] != group or f.type not in ("int", "float", "str", "bool") or f.name in exclude:
                continue
            m, text = f.metadata, f.metadata["help"]
            if m["choices"] and not all(str(c) in text for c in m["choices"]):
                text += f" (one of: {' | '.join(map(str, m['choices']))})"
            if _bounds(m):
                text += f" [{','.join(_bounds(m))}]"
            out.append(f"    {f.name}: {f.type} = {_literal(f.default, python=False)}")
            out += textwrap.wrap(text, width, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return "\n".join(out)


def load_config(files: list[str] | None = None, overrides: list[tuple[str, str]] | None = None) -> Config:
    origins: dict[str, str] = {}
    return Config.from_dict(read_params(files, overrides, origins), source=origins)


# -- notebooks ----------------------------------------------------------------------------------------------
def _literal(value: Any, python: bool = True) -> str:
    """A default as the notebooks' parameter cells write it (`python`: inf as float('inf')), else as -p takes it."""
    if python and isinstance(value, float) and math.isinf(value):
        return "float('inf')" if value > 0 else "float('-inf')"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:_}"
    return repr(value)


def parameter_lines(groups: tuple[str, ...], names: tuple[str, ...]) -> list[str]:
    """`name: type = default  # help` for the fields in `groups` or `names`, in Config's order: the lines of a
    notebook's parameters cell (papermill reads type, default and help from them) and of the CLI's --help."""
    return [f"{f.name}: {f.type} = {_literal(f.default)}  # {f.metadata['help']}" for f in fields(Config)
            if f.type in ("int", "float", "str", "bool") and (f.metadata["group"] in groups or f.name in names)]


def declared_parameters(notebook: str) -> list[str]:
    """The names a numbered notebook's parameters cell declares."""
    return [line.split(":")[0] for line in parameter_lines(*NOTEBOOK_PARAMS[notebook])]


def injected_parameters(ns: dict[str, Any]) -> list[str]:
    """The names papermill assigned in its `injected-parameters` cell ("# Parameters" then NAME = VALUE lines),
    read from IPython's input history `In`; none outside a papermill run."""
    names: list[str] = []
    for source in ns.get("In", []) or []:
        if not isinstance(source, str) or not source.lstrip().startswith("# Parameters"):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        names += [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                  if isinstance(t, ast.Name)]
    return names


def declaring_notebooks(name: str) -> list[str]:
    """The numbered notebooks whose parameters cell declares `name`."""
    return [nb for nb in NOTEBOOK_PARAMS if name in declared_parameters(nb)]


def notebook_config(ns: dict[str, Any], notebook: str) -> Config:
    """The first code cell of a numbered notebook: build and check the Config from the notebook's globals() `ns`
    (its names that are Config's). What papermill injected (`-p`, `-f`) that this notebook does not declare: a
    Config field (another notebook's, as the repo's profiles in params/ hold them for every notebook) is ignored
    with one printed note; any other name is refused with the nearest name, as the CLI does (papermill only warns
    about one and runs on with the default)."""
    declared = declared_parameters(notebook)
    names = {f.name for f in fields(Config)}
    foreign = [n for n in dict.fromkeys(injected_parameters(ns)) if n not in declared]
    for name in foreign:
        if name not in names:
            near = unknown_message(name, declared)
            raise ConfigError(f"{notebook}: {near if '(did you mean' in near else unknown_message(name, names)}; "
                              f"this notebook's parameters: papermill --help-notebook notebooks/{notebook}.ipynb")
    if foreign:
        print(f"{notebook} ignores {', '.join(foreign)}: other notebooks' or commands' parameters, not its own")
    for name in near_misses(ns, names):  # typed into a cell in JupyterLab, where papermill's check never runs
        print(f"{notebook}: {name} = {ns[name]!r} is no parameter and changes nothing "
              f"({unknown_message(name, names).split('(', 1)[1]}")
    cfg = Config.from_dict({k: v for k, v in ns.items() if k in names and k not in foreign},
                           source=f"{notebook} parameters")
    given = str(ns.get("data_path", "synthetic"))
    if "data_path" in declared and not is_synthetic(given) and not Path(cfg.data_path).exists():
        # said here as the CLI says it: the kernel's DataError later named only notebooks/<path>, not the root
        raise ConfigError(f"{notebook}: data_path {given!r} does not exist (looked for at "
                          f"{' and at '.join(data_places(given))})")
    return cfg


def near_misses(ns: dict[str, Any], names: set[str]) -> list[str]:
    """The notebook's own plain values (a number, a string, a bool) whose names are no parameter but nearly one
    (`batchsize` for batch_size): set in a cell, they would change nothing without a word."""
    return [n for n, v in ns.items() if not n.startswith("_") and n not in names
            and isinstance(v, (bool, int, float, str)) and difflib.get_close_matches(n, names, n=1, cutoff=0.85)]


# what a run did before a setting existed, where that differs from the setting's default
BEFORE_SETTING: dict[str, Any] = {"target_delay": 0}


def as_written(config: dict[str, Any]) -> dict[str, Any]:
    """A config read from a run, checkpoint or summary, completed with today's settings: one added since takes
    the value that says what the run did (BEFORE_SETTING), else its default."""
    return {**Config().to_dict(), **BEFORE_SETTING, **config}


def written_problem(config: dict[str, Any]) -> str:
    """What keeps a config read from a file (a checkpoint's, a summary.json's) from being one a run wrote: a setting
    of another type than its field's (a crafted or hand-edited file), or ""; names unknown today are let be."""
    kinds = {"int": int, "float": (int, float), "str": str, "bool": bool, "dict": dict}
    for f in fields(Config):
        value = config.get(f.name)
        if f.name in config and (not isinstance(value, kinds[f.type]) or f.type in ("int", "float") and
                                 isinstance(value, bool)):
            return f"its config's {f.name} is {repr(value)[:60]}, not a {f.type}"
    return ""


def run_setting(config: dict[str, Any], name: str) -> Any:
    """One setting of a config read from a run (`as_written`'s value when the run predates it)."""
    return as_written(config)[name]


def run_market_zone(config: dict[str, Any]) -> str:
    """`Config.market_zone` of a config read from a run, as written (a run from before the time zone settings reads
    as UTC): the clock its sessions were read on, so the report reads its days on it too."""
    return Config.market_zone.fget(SimpleNamespace(**as_written(config)))


def resume_may_change() -> frozenset[str]:
    """Settings a resumed run may change: length, bookkeeping, hardware, loader plumbing, reporting."""
    return frozenset(f.name for f in fields(Config) if f.metadata["resume"])


# never in a printed resume command: the command names the run and the resume itself, and these only rebuild the
# cache or choose how progress is shown
NOT_IN_RESUME = ("run_id", "resume", "force_recreate", "progress")


def nondefault_params(config: Config | dict[str, Any], names: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """`-p NAME VALUE` words for a run's settings that differ from Config's defaults, in Config's order: among
    `names` (default: what 03_train declares, so the same list serves the CLI and papermill), never NOT_IN_RESUME.
    `config`: a Config, or a config read from a run or checkpoint."""
    values = as_written(config) if isinstance(config, dict) else config.to_dict()
    names = set(declared_parameters("03_train") if names is None else names)
    words: list[str] = []
    for f in fields(Config):
        if f.name not in names or f.name in NOT_IN_RESUME or f.type not in ("int", "float", "str", "bool"):
            continue
        value = values.get(f.name, f.default)
        if value != f.default:
            words += ["-p", f.name, str(value)]  # str(): what -p (parse_value) and papermill's -p read back
    return words


def resume_command(config: Config | dict[str, Any], run_id: str, command: str = "train",
                   names: tuple[str, ...] | list[str] | None = None) -> str:
    """The shell command that resumes run `run_id` as it was started: `python -m tradelib COMMAND` (or torchrun's,
    `launcher`), its settings that differ from the defaults (nondefault_params), then `-p run_id RUN -p resume
    True`, quoted for a shell."""
    words = [*nondefault_params(config, names), "-p", "run_id", run_id, "-p", "resume", "True"]
    return f"{launcher(config)} {command} " + " ".join(shlex.quote(w) for w in words)


def launcher(config: Config | dict[str, Any]) -> str:
    """How a resume starts tradelib: `python -m tradelib`, or, in a process torchrun started itself (not launched
    by `n_gpus`, which the resume's own -p n_gpus does again), torchrun with as many processes, since a resume
    with another number is refused; across nodes its rendezvous options are the user's to repeat."""
    world, local = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_WORLD_SIZE", 0))
    n_gpus = (as_written(config) if isinstance(config, dict) else config.to_dict()).get("n_gpus", 1)
    if world <= 1 or (n_gpus == world and local in (0, world)):
        return "python -m tradelib"
    if local in (0, world):
        return f"torchrun --standalone --nproc_per_node {world} -m tradelib"
    return (f"torchrun --nnodes {world // local} --nproc_per_node {local} [its rendezvous options, on every node] "
            f"-m tradelib")
