"""Memory settings for the build, which makes and frees many arrays of a shard's size in a row: on the 2-core
machine the kernel's work to hand out fresh pages took more time than the arithmetic (docs/perf.md). None of it
changes a value.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import threading

_BUILDING = threading.local()  # how deep in freed_memory_reused this thread is


@contextlib.contextmanager
def freed_memory_reused(top_pad: int = 1 << 30):
    """Settings for making many arrays fast, put back afterwards (the outermost of nested uses decides): glibc's
    malloc keeps the memory numpy frees (up to `top_pad` bytes) for the next array instead of returning it and
    faulting it in again (a no-op where malloc is not glibc's); numpy does not ask for transparent huge pages
    (where the kernel compacts memory to find them, the first touch of each big array stalls)."""
    depth = getattr(_BUILDING, "depth", 0)
    _BUILDING.depth = depth + 1
    if depth:
        try:
            yield
        finally:
            _BUILDING.depth = depth
        return
    libc, huge = _glibc(), _hugepage_switch()
    was_huge = huge(False) if huge else None
    if libc is not None:
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: arrays up to 32 MB from the heap (glibc's largest)
        libc.mallopt(-1, top_pad)  # M_TRIM_THRESHOLD
    try:
        yield
    finally:
        _BUILDING.depth = depth
        if libc is not None:  # where glibc's own dynamic thresholds end once arrays of 32 MB were freed
            libc.mallopt(-1, 64 << 20)
            libc.malloc_trim(0)
        if huge:
            huge(was_huge)


def _hugepage_switch():
    """numpy's switch for madvise(MADV_HUGEPAGE) on big arrays (private: None where it is missing); it returns
    the setting it replaces."""
    for where in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(importlib.import_module(where), "_set_madvise_hugepage", None)
        except ImportError:
            continue
    return None


@functools.cache
def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None
