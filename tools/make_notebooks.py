"""Regenerate the parameter cells of the numbered notebooks from tradelib/config.py.

The notebooks' `parameters` cells mirror Config (names, types, defaults, comments) so that
`papermill --help-notebook` documents them; tests/test_notebooks.py checks they stay in sync. Run this after
changing Config: `python tools/make_notebooks.py` (it rewrites only the cells tagged `parameters`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
FIELD = re.compile(r"^    (\w+): (\w+) = (.+?)(\s+#\s*(.*))?$")

DATA = ["data_path", "synth_symbols", "synth_bars", "data_seed", "window", "horizon", "vol_scaled_target", "clip",
        "max_gap_bars", "train_frac", "val_frac"]

# notebook -> (Config fields it takes, extra parameter lines of its own, comments that differ from Config's)
PARAMS = {
    "01_data_cleaning": (
        DATA + ["run_id"],
        ["force_recreate: bool = False  # rebuild the feature cache even if a valid one exists"],
        {},
    ),
    "02_profiling": (
        DATA + ["model", "hidden", "layers", "dense_chunk", "batch_size"],
        [
            'batch_sizes: str = "64,256,1024"  # comma list of micro-batch sizes to sweep (windows; chunks for dense)',
            'loaders: str = "device,dataloader"  # comma list: device, dataloader (the seed\'s pipeline), dense (tcn)',
            "num_workers: int = 8  # seed-style DataLoader workers (capped at the CPU cores)",
            'device: str = "auto"  # auto | cpu | cuda | cuda:N',
            'precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16',
            'compile: str = "auto"  # torch.compile: auto (on for CUDA) | on | off',
            "steps: int = 20  # timed optimizer steps per configuration in the sweep",
            "warmup: int = 5  # untimed steps before each timed stretch (worker start-up, compilation)",
            "repeats: int = 1  # interleaved repetitions of the sweep (medians are reported)",
            "profile_steps: int = 5  # training steps recorded by torch.profiler",
            "max_batch_limit: int = 65_536  # search the largest micro-batch that fits, up to this (0: skip)",
            "cpu_budget_mb: int = 256  # CPU only: the largest-batch search bounds one step's tensor memory by this",
            'run_id: str = ""  # when set, tables, figures and the trace go to outputs/<run_id>/ '
            '(else outputs/profiling/)',
        ],
        {"batch_size": "micro-batch of the torch.profiler trace (the training run's batch)"},
    ),
    "03_train": (None, [], {}),  # None: every Config field
}


def config_lines() -> dict[str, str]:
    lines = {}
    for line in (ROOT / "tradelib" / "config.py").read_text().splitlines():
        m = FIELD.match(line)
        if m and m.group(2) in {"int", "float", "str", "bool"}:
            name, typ, default, _, comment = m.groups()
            comment = comment or ""
            lines[name] = f"{name}: {typ} = {default}" + (f"  # {comment}" if comment else "")
    return lines


def parameters_source(names: list[str] | None, extra: list[str], comments: dict[str, str]) -> str:
    lines = config_lines()
    for name, comment in comments.items():
        lines[name] = lines[name].split("  # ")[0] + f"  # {comment}"
    chosen = list(lines) if names is None else names
    return "\n".join([lines[n] for n in chosen] + extra)


def main() -> int:
    for nb_name, (names, extra, comments) in PARAMS.items():
        path = ROOT / "notebooks" / f"{nb_name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        if len(cells) != 1:
            print(f"{path}: expected one cell tagged parameters, found {len(cells)}", file=sys.stderr)
            return 1
        cells[0].source = parameters_source(names, extra, comments)
        nbformat.write(nb, path)
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
