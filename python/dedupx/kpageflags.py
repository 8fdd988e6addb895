"""Bit numbers of /proc/kpageflags (include/uapi/linux/kernel-page-flags.h) as polars tests."""

from __future__ import annotations

import polars as pl

KPF_LOCKED = 0
KPF_REFERENCED = 2
KPF_DIRTY = 4
KPF_LRU = 5
KPF_ACTIVE = 6
KPF_SLAB = 7
KPF_BUDDY = 10
KPF_MMAP = 11
KPF_ANON = 12
KPF_SWAPCACHE = 13
KPF_SWAPBACKED = 14
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_HUGE = 17
KPF_UNEVICTABLE = 18
KPF_NOPAGE = 20
KPF_KSM = 21
KPF_THP = 22
KPF_ZERO_PAGE = 24
KPF_PGTABLE = 26


def flag(bit: int, column: str = "kpageflags") -> pl.Expr:
    """True where the page has flag ``bit``."""
    return (pl.col(column) & (1 << bit)) != 0


def is_anon(column: str = "kpageflags") -> pl.Expr:
    """DESIGN.md's *anon*: KPF_ANON or KPF_SWAPBACKED (private anon, shmem/tmpfs, KSM)."""
    return flag(KPF_ANON, column) | flag(KPF_SWAPBACKED, column)


def is_shmem(column: str = "kpageflags") -> pl.Expr:
    """Swap-backed but not anonymous: shmem, tmpfs, memfd, SysV shared memory."""
    return flag(KPF_SWAPBACKED, column) & ~flag(KPF_ANON, column)


def is_zero_page(column: str = "kpageflags") -> pl.Expr:
    """The kernel's shared zero page: already shared, never a duplicate."""
    return flag(KPF_ZERO_PAGE, column)
