"""The build's memory: whether it fits before it starts (the kernel's OOM killer ends a process without a word), and
no transparent huge pages for numpy's big arrays while it runs."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import psutil

# peak RSS of `prepare` (read a CSV, clean, features, cache) over the process's RSS before it, per row: 407, 383,
# 291 and 254 bytes at 1M, 2M, 4M and 8M rows of 40-80 symbols, 217 a row more from 4M to 8M (a fixed part, the
# shards in flight, spread over more rows); 206 on 16M (docs/data.md). At the low end: a refusal is for data that
# does not fit
BUILD_BYTES_PER_ROW = 200
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "inactive_file"),  # v2
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                 "total_inactive_file"))  # v1
NO_LIMIT = 1 << 60  # cgroup v1's "unlimited" is about 2**63


def build_bytes(rows: int) -> int:
    """About the memory a feature build of `rows` raw rows takes at its peak (BUILD_BYTES_PER_ROW)."""
    return int(rows) * BUILD_BYTES_PER_ROW


def available_bytes() -> tuple[int, str]:
    """The memory this process can still take before the kernel ends it, and what sets it: the RAM available
    plus free swap, or, where lower, the container's cgroup limit less what the cgroup holds (its reclaimable
    page cache not counted)."""
    vm = psutil.virtual_memory()
    best = (vm.available + psutil.swap_memory().free, "RAM available and free swap")
    for limit_file, usage_file, inactive in CGROUP_FILES:
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text())
            stat = dict(line.split() for line in Path(limit_file).with_name(
                "memory.stat").read_text().splitlines() if len(line.split()) == 2)
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < NO_LIMIT:
            left = int(limit) - usage + int(stat.get(inactive, 0))
            if left < best[0]:
                best = (max(left, 0), f"the container's memory limit ({int(limit) / 2**30:.1f} GiB) less its use")
    return best


@contextlib.contextmanager
def without_huge_pages():
    """numpy does not ask for transparent huge pages (madvise) inside, and asks again as before afterwards. The
    build makes and frees many arrays of a shard's size; where the kernel compacts memory to find huge pages,
    the first touch of each stalls: the features bench's build took about twice as long with them (docs/perf.md).
    Nothing else changes; a no-op where numpy has no such switch."""
    switch = _hugepage_switch()
    was = switch(False) if switch else None
    try:
        yield
    finally:
        if switch:
            switch(was)


def _hugepage_switch():
    """numpy's switch for madvise(MADV_HUGEPAGE) on big arrays (private: None where it is missing); it returns
    the setting it replaces."""
    for where in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(importlib.import_module(where), "_set_madvise_hugepage", None)
        except ImportError:
            continue
    return None
