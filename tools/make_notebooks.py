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

# notebook -> (Config fields it takes, extra parameter lines of its own)
PARAMS = {
    "01_data_cleaning": (
        ["data_path", "synth_symbols", "synth_bars", "data_seed", "window", "horizon", "vol_scaled_target",
         "clip", "max_gap_bars", "train_frac", "val_frac", "run_id"],
        ["force_recreate: bool = False  # rebuild the feature cache even if a valid one exists"],
    ),
    "03_train": (None, []),  # None: every Config field
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


def parameters_source(names: list[str] | None, extra: list[str]) -> str:
    lines = config_lines()
    chosen = list(lines) if names is None else names
    return "\n".join([lines[n] for n in chosen] + extra)


def main() -> int:
    for nb_name, (names, extra) in PARAMS.items():
        path = ROOT / "notebooks" / f"{nb_name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        if len(cells) != 1:
            print(f"{path}: expected one cell tagged parameters, found {len(cells)}", file=sys.stderr)
            return 1
        cells[0].source = parameters_source(names, extra)
        nbformat.write(nb, path)
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
