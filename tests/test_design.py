"""docs/design.md's module map is the code's: every module listed once, each row's imports the real ones, and no
module importing one listed below it (the layering the map claims)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from module_map import import_map  # noqa: E402

ROW = re.compile(r"^\| `([\w/]+)` \| .* \| ([^|]*) \|$")


def module_rows() -> list[tuple[str, set[str]]]:
    text = (ROOT / "docs" / "design.md").read_text()
    section = text[text.index("## Module map") : text.index("## Where do I change")]
    rows = []
    for line in section.splitlines():
        m = ROW.match(line)
        if m and m.group(1) != "module":
            deps = {d.strip() for d in m.group(2).split(",")} - {"-", ""}
            rows.append((m.group(1), deps))
    return rows


def test_every_module_is_listed_once_with_its_real_imports():
    rows = module_rows()
    names = [name for name, _ in rows]
    real = import_map()
    assert sorted(names) == sorted(real), "docs/design.md's module map does not list exactly the modules of tradelib/"
    wrong = {name: (sorted(deps), sorted(real[name])) for name, deps in rows if deps != real[name]}
    assert not wrong, f"rows whose imports are not the code's (listed, real): {wrong}"


def test_no_module_imports_one_listed_below_it():
    rows = module_rows()
    pos = {name: i for i, (name, _) in enumerate(rows)}
    upward = [(name, dep) for name, deps in rows for dep in deps if pos[dep] > pos[name]]
    assert not upward, f"imports of a module listed below: {upward}"


def test_the_check_sees_lazy_imports(tmp_path, monkeypatch):
    """An import inside a function counts as much as one at the top (a planted one is found)."""
    import module_map

    pkg = tmp_path / "tradelib"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("def f():\n    from tradelib.sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text("from tradelib.a import f\n")
    monkeypatch.setattr(module_map, "PACKAGE", pkg)
    assert module_map.import_map() == {"a": {"sub/b"}, "sub/b": {"a"}}
