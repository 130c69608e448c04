"""Memory settings for the build: many arrays of a shard's size made and freed in a row.

On the 2-core machine the kernel's work to hand out fresh pages took more time than the arithmetic
(docs/perf.md); these settings keep it small. None changes a value.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import importlib
import threading

_BUILDING = threading.local()  # how deep in freed_memory_reused this thread is


@contextlib.contextmanager
def freed_memory_reused(top_pad: int = 1 << 30):
    """Settings for making many arrays fast, put back afterwards (the outermost of nested uses decides).

    Cleaning and features allocate many short-lived arrays of a shard's size; on the 2-core machine the kernel's
    work to hand out fresh pages took more time than the arithmetic (docs/perf.md). Inside: glibc's malloc keeps
    the memory numpy frees (up to `top_pad` bytes) for the next array instead of returning it and faulting it in
    again; numpy does not ask for transparent huge pages (where the kernel compacts memory to find them, the
    first touch of each big array stalls); Python's cyclic garbage collector pauses (nothing here makes cycles).
    Afterwards the kept memory is returned. glibc's part is a no-op where malloc is not glibc's."""
    depth = getattr(_BUILDING, "depth", 0)
    _BUILDING.depth = depth + 1
    if depth:
        try:
            yield
        finally:
            _BUILDING.depth = depth
        return
    libc, huge, collecting = _glibc(), _hugepage_switch(), gc.isenabled()
    gc.disable()
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
        if collecting:
            gc.enable()


def _hugepage_switch():
    """numpy's switch for madvise(MADV_HUGEPAGE) on big arrays (private: None where it is missing); it returns
    the setting it replaces."""
    for where in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(importlib.import_module(where), "_set_madvise_hugepage", None)
        except ImportError:
            continue
    return None


def prefault(arrays) -> None:
    """Ask the kernel for the pages of fresh arrays in one call each (madvise MADV_POPULATE_WRITE, Linux 5.14+)
    before they are written: it maps and zeroes them in a loop instead of taking a fault on every 4 KiB page at
    the first write, a third less kernel time (docs/perf.md). Called by the thread that fills those rows, so the
    cores fault in their own shards at once. Values are untouched; a no-op where the call is missing."""
    libc = _glibc()
    if libc is None:
        return
    for a in arrays:
        if a.nbytes < 1 << 16 or not a.flags.c_contiguous:
            continue
        start = (a.ctypes.data + 4095) & ~4095  # whole pages inside the array only
        end = (a.ctypes.data + a.nbytes) & ~4095
        if end > start:
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 23)  # MADV_POPULATE_WRITE


@functools.cache
def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None
