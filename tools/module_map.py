"""What each tradelib module imports from tradelib, read from the code (top-level and function-level imports).

`python tools/module_map.py` prints one line per module: its name (as docs/design.md's module map writes it,
e.g. `data/load`) and the modules it imports. tests/test_design.py checks the map against this: every module is
listed once, each row's imports are the real ones, and no module imports one listed below it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tradelib"


def module_name(path: Path) -> str:
    """tradelib/data/load.py -> data/load; tradelib/cli.py -> cli."""
    return path.relative_to(PACKAGE).with_suffix("").as_posix()


def modules() -> list[str]:
    return sorted(module_name(p) for p in PACKAGE.rglob("*.py")
                  if p.name not in ("__init__.py", "__main__.py") and "__pycache__" not in p.parts)


def imports_of(name: str, known: set[str]) -> set[str]:
    """The tradelib modules `name` imports: `from tradelib.x import y` counts y when y is a module, else x."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tradelib":
            base = node.module.split(".")[1:]
            for alias in node.names:
                whole = "/".join([*base, alias.name])
                found.add(whole if whole in known else "/".join(base))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tradelib."):
                    found.add("/".join(alias.name.split(".")[1:]))
    return {m for m in found if m in known and m != name}


def import_map() -> dict[str, set[str]]:
    known = set(modules())
    return {m: imports_of(m, known) for m in sorted(known)}


if __name__ == "__main__":
    for mod, deps in import_map().items():
        print(f"{mod}: {', '.join(sorted(deps)) or '-'}")
    sys.exit(0)
