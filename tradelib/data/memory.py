"""The build's memory setting: no transparent huge pages for numpy's big arrays while it runs."""

from __future__ import annotations

import contextlib
import importlib


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
