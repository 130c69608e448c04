"""Are two runs' report figures the same? Compares two report.json files value by value, exactly.

For a refactor that must not change the report: run `TRADELIB_OUTPUTS=/tmp/before python -m tradelib pipeline
-f params/tiny.yaml` on the old commit and again (into /tmp/after) on the new one, then
`python tools/compare_reports.py /tmp/before/<run>/report.json /tmp/after/<run>/report.json`.
Paths, run ids, times and what measures the machine (throughput, memory, the load of other processes) are
left out: they differ between any two runs. Exit code 1 when anything else differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SKIPPED = {"generated", "run_dir", "cache_dir", "finished", "started"}  # paths and times
MACHINE = ("samples_per_s", "data_wait_share", "epoch_time_s", "peak_mem", "mfu", "gpu_util", "it_per_s",
           "step_time_s", "speedup", "other_cores", "busy_note", "_time_s", "wall_s")  # fmt: skip


def differences(a, b, path: str = "") -> list[tuple[str, object, object]]:
    """(where, this, that) for every value that differs, recursing through dicts and lists."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in SKIPPED:
                out += differences(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (u, v) in enumerate(zip(a, b)) for d in differences(u, v, f"{path}[{i}]")]
    return [] if a == b else [(path, a, b)]


def main(first: str, second: str) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (first, second))
    runs = (str(a.get("run_id")), str(b.get("run_id")))
    found = [(p, x, y) for p, x, y in differences(a, b)
             if not any(m in p for m in MACHINE) and str(x).replace(runs[0], "RUN") != str(y).replace(runs[1], "RUN")]
    for where, x, y in found:
        print(f"{where}: {x!r} != {y!r}")
    print(f"{len(found)} report figures differ" if found else "the report figures are the same")
    return 1 if found else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python tools/compare_reports.py BEFORE/report.json AFTER/report.json")
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
