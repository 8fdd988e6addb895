"""Bit numbers of /proc/kpageflags (include/uapi/linux/kernel-page-flags.h) as polars tests.

The page classes built from them are defined once, in dedupx.model.page_classes.
"""

from __future__ import annotations

import polars as pl

KPF_REFERENCED = 2
KPF_LRU = 5
KPF_ACTIVE = 6
KPF_BUDDY = 10
KPF_ANON = 12
KPF_SWAPBACKED = 14
KPF_HUGE = 17
KPF_NOPAGE = 20
KPF_KSM = 21
KPF_THP = 22
KPF_ZERO_PAGE = 24


def flag(bit: int, column: str = "kpageflags") -> pl.Expr:
    """True where the page has flag ``bit``."""
    return (pl.col(column) & (1 << bit)) != 0
