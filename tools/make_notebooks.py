"""Regenerate the parameter cells of the numbered notebooks from tradelib.config.Config.

Each notebook's `parameters` cell holds the Config fields of the groups config.NOTEBOOK_PARAMS names, one
`name: type = default  # help` line each, so that papermill (and `papermill --help-notebook`) reads their
types, defaults and help; tests/test_notebooks.py checks they stay in sync. Run this after changing Config:
`python tools/make_notebooks.py` (it rewrites only the cells tagged `parameters`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from tradelib.config import NOTEBOOK_PARAMS, parameter_lines

ROOT = Path(__file__).resolve().parents[1]


def parameters_source(notebook: str) -> str:
    groups, names = NOTEBOOK_PARAMS[notebook]
    return "\n".join(parameter_lines(groups, names))


def main() -> int:
    for name in NOTEBOOK_PARAMS:
        path = ROOT / "notebooks" / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        if len(cells) != 1:
            print(f"{path}: expected one cell tagged parameters, found {len(cells)}", file=sys.stderr)
            return 1
        cells[0].source = parameters_source(name)
        nbformat.write(nb, path)
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
