"""One flat config for a run: data, features, model, training. The notebooks' parameter cells mirror it.

Values come from defaults, then YAML files (`-f`), then `-p NAME VALUE` overrides, as with papermill.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Config:
    # data
    data_path: str = "synthetic"  # synthetic (the embedded market) or a CSV/Parquet file or folder
    synth_symbols: int = 8  # synthetic market: number of symbols
    synth_bars: int = 30_000  # synthetic market: 5-minute bars per symbol (30,000: about 104 days)
    data_seed: int = 7  # synthetic market: seed
    # features
    window: int = 32  # bars of history per sample
    horizon: int = 1  # target: forward log return over this many bars
    vol_scaled_target: bool = False  # divide the target by trailing realised volatility
    clip: float = 5.0  # normalised features are clipped to +-clip
    max_gap_bars: int = 50  # a gap longer than this many bars splits a series; windows never cross it
    train_frac: float = 0.7  # chronological split by time across all symbols
    val_frac: float = 0.15  # validation share of time; the rest after a purge gap is the test split
    # model
    model: str = "lstm"  # mlp | lstm | gru | tcn
    hidden: int = 64  # hidden width / channels
    layers: int = 2  # recurrent layers, MLP hidden layers, or TCN blocks
    dropout: float = 0.0  # dropout probability between layers
    init_gain: float = 0.5  # xavier gain of the weights (the seed's 0.5)
    output_clip: float = 0.0  # clip predictions to +-output_clip (0: off)
    # training
    batch_size: int = 256  # micro-batch size
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 2e-3  # peak learning rate
    lr_scaling: str = "none"  # none | linear | sqrt: scale lr with the global batch against reference_batch
    reference_batch: int = 256  # global batch that `lr` was tuned for
    weight_decay: float = 0.01  # AdamW weight decay (not on biases and norms)
    warmup_steps: int = 50  # optimizer steps of linear warm-up, then cosine decay
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    epochs: int = 3  # passes over the training windows
    max_steps: int = 0  # stop after this many optimizer steps (0: no limit)
    grad_clip: float = 1.0  # clip the gradient norm (0: off)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: str = "auto"  # auto (on for CUDA) | on | off | reduce-overhead (adds CUDA graphs, small models)
    loader: str = "device"  # device (windows gathered on the device) | dataloader (seed-style baseline)
    num_workers: int = 8  # dataloader loader only: worker processes (the seed's 8, capped at the cores)
    prefetch_factor: int = 4  # dataloader loader only: batches prefetched per worker
    pin_memory: bool = True  # dataloader loader only: page-locked host batches (CUDA)
    persistent_workers: bool = True  # dataloader loader only: keep workers across epochs
    dense: bool = False  # causal models (tcn): a prediction and a loss at every position of a chunk
    dense_chunk: int = 512  # dense mode: rows per chunk (each chunk trains on length - receptive_field + 1)
    seed: int = 0  # seeds weights, shuffling and dropout: CPU runs repeat bit for bit
    deterministic: bool = False  # CUDA: deterministic algorithms (slower), CUBLAS_WORKSPACE_CONFIG set
    run_id: str = ""  # run folder name under outputs/ (empty: a new time-stamped id)
    log_every: int = 25  # optimizer steps between metric rows (the only host syncs)
    eval_batch_size: int = 4096  # windows per forward pass when evaluating
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: only at epoch ends)
    keep_checkpoints: int = 3  # step checkpoints kept besides last.pt and best.pt
    resume: bool = False  # continue the run `run_id` from its latest checkpoint
    patience: int = 0  # early stopping: epochs without a better val loss (0: off)
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    n_gpus: int = 1  # >1: 03_train launches torchrun with this many processes
    extra: dict = field(default_factory=dict)  # free-form notes kept with the run

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "parameters") -> Config:
        """Build from a mapping, coercing types and refusing unknown names with a suggestion."""
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for name, value in values.items():
            if name not in known:
                hint = difflib.get_close_matches(name, known, n=1)
                raise ValueError(
                    f"{source}: unknown parameter {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                )
            kwargs[name] = _coerce(name, value, known[name].type, source)
        return cls(**kwargs)

    @classmethod
    def from_namespace(cls, ns: dict[str, Any]) -> Config:
        """The notebook path: pick this config's names out of a notebook's globals()."""
        names = {f.name for f in fields(cls)}
        return cls.from_dict({k: v for k, v in ns.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, value: Any, typ: Any, source: str) -> Any:
    typ = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if typ == "bool":
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                return low in {"true", "1", "yes"}
            return bool(value)
        if typ == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if typ == "float":
            return float(value)
        if typ == "str":
            return "" if value is None else str(value)
        if typ == "dict":
            return dict(value or {})
    except (TypeError, ValueError):
        raise ValueError(f"{source}: parameter {name!r} expects {typ}, got {value!r}") from None
    return value


def parse_value(text: str) -> Any:
    """A -p value as papermill reads it: int, then float, then True/False/None, else the string itself."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None, "true": True, "false": False}.get(text, text)


def read_params(files: list[str] | None = None, overrides: list[tuple[str, str]] | None = None) -> dict:
    """Merge YAML parameter files then NAME VALUE overrides into one dict (not yet validated)."""
    merged: dict[str, Any] = {}
    for f in files or []:
        data = yaml.safe_load(Path(f).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{f}: a parameter file must hold a mapping of NAME: VALUE")
        merged.update(data)
    for name, value in overrides or []:
        merged[name] = parse_value(value) if isinstance(value, str) else value
    return merged


def add_param_args(parser: argparse.ArgumentParser) -> None:
    """`-f FILE` and `-p NAME VALUE`, as papermill takes them, for every command that takes a config."""
    parser.add_argument("-f", "--parameters-file", dest="files", action="append", default=[], metavar="FILE",
                        help="YAML parameter file (repeatable; later files win), as with papermill -f")
    parser.add_argument("-p", "--parameter", dest="params", action="append", nargs=2, default=[],
                        metavar=("NAME", "VALUE"), help="one parameter, as with papermill -p (repeatable)")


def load_config(files: list[str] | None = None, overrides: list[tuple[str, str]] | None = None) -> Config:
    return Config.from_dict(read_params(files, overrides), source=", ".join(files or []) or "parameters")
