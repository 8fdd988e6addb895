"""Units every figure is counted in: the page size of the core, and MiB for people."""

from __future__ import annotations

from dedupx._dedupx import PAGE_SIZE

MIB = 1 << 20


def pages_to_mib(pages: float) -> float:
    """``pages`` 4 KiB pages in MiB."""
    return pages * PAGE_SIZE / MIB


__all__ = ["MIB", "PAGE_SIZE", "pages_to_mib"]
