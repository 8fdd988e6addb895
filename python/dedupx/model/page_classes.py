"""The one definition of each page class, as polars expressions over ``kpageflags``.

Two notions of "anonymous" are in use, and both are named here:

- **anon** (the dedup analyses' kind, as docs/metrics.md defines it): ``KPF_ANON`` or
  ``KPF_SWAPBACKED``: private anonymous, shmem/tmpfs/memfd and KSM pages. Its opposite is
  **file**: page cache of a regular file.
- **private anon** (the footprint's ``anon`` split, as smaps' ``Anonymous``): ``KPF_ANON``
  only. Beside it the footprint counts **shmem** (swap-backed, not anonymous) and file.

**KSM-eligible** is a private anonymous page in a ``MADV_MERGEABLE`` VMA; the kernel's
shared **zero page** (``KPF_ZERO_PAGE``) is already shared and never a duplicate; a
**zero-content** page is any other page whose bytes are all zero (the ``zero`` column).
"""

from __future__ import annotations

import polars as pl

from dedupx.model.kpageflags import (
    KPF_ACTIVE,
    KPF_ANON,
    KPF_BUDDY,
    KPF_HUGE,
    KPF_KSM,
    KPF_LRU,
    KPF_REFERENCED,
    KPF_SWAPBACKED,
    KPF_THP,
    KPF_ZERO_PAGE,
    flag,
)

FLAGS = "kpageflags"


def is_anon(column: str = FLAGS) -> pl.Expr:
    """anon: KPF_ANON or KPF_SWAPBACKED (private anon, shmem/tmpfs, KSM)."""
    return flag(KPF_ANON, column) | flag(KPF_SWAPBACKED, column)


def is_private_anon(column: str = FLAGS) -> pl.Expr:
    """private anon: KPF_ANON (the footprint's ``anon``, smaps' ``Anonymous``)."""
    return flag(KPF_ANON, column)


def is_shmem(column: str = FLAGS) -> pl.Expr:
    """Swap-backed but not anonymous: shmem, tmpfs, memfd, SysV shared memory."""
    return flag(KPF_SWAPBACKED, column) & ~flag(KPF_ANON, column)


def is_mapped_file(column: str = FLAGS) -> pl.Expr:
    """The footprint's ``file``: neither private anon nor shmem (the zero page aside)."""
    return ~flag(KPF_ANON, column) & ~is_shmem(column)


# A swap slot's frame: its key in the ``pfn`` column sits above every real PFN.
SWAP_FRAME = 1 << 63


def is_swap_slot(pfn: str = "pfn") -> pl.Expr:
    """A frame that is a swap slot (a swapped-out page read from its swap area), not RAM."""
    return pl.col(pfn) >= SWAP_FRAME


def holds_frame() -> pl.Expr:
    """A page (row of ``pages``) that holds a frame with a content: present, or swapped
    out to a slot the scan resolved. The content views (duplicates, the dedup matrix,
    fingerprints) count these; the cost views (footprint, density, incremental cost)
    count present pages only, as swapped pages take no RAM."""
    return pl.col("present") | (pl.col("swapped") & pl.col("pfn").is_not_null())


def is_ksm_eligible(mergeable: pl.Expr, column: str = FLAGS) -> pl.Expr:
    """KSM-eligible: private anon in a MADV_MERGEABLE VMA (``mergeable``)."""
    return is_private_anon(column) & mergeable


def is_zero_page(column: str = FLAGS) -> pl.Expr:
    """The kernel's shared zero page: already shared, never a duplicate."""
    return flag(KPF_ZERO_PAGE, column)


def is_hugetlb(column: str = FLAGS) -> pl.Expr:
    """Part of a hugetlb page (hugetlbfs, MAP_HUGETLB): mapped, freed and counted whole; smaps
    leaves it out of Rss and Pss, and KSM never merges it."""
    return flag(KPF_HUGE, column)


def is_ksm(column: str = FLAGS) -> pl.Expr:
    """A page KSM has merged."""
    return flag(KPF_KSM, column)


def is_thp(column: str = FLAGS) -> pl.Expr:
    """Part of a transparent huge page (KSM must split it to merge it)."""
    return flag(KPF_THP, column)


def guest_class(column: str = FLAGS) -> pl.Expr:
    """What a guest's page frame is by the guest's own flags: ``anon`` (as above), ``file``
    (on an LRU list), ``free`` (in the buddy allocator; the tails of a free block carry no
    flags at all) or ``kernel`` (slab, page tables, reserved, ...)."""
    return (
        pl.when(is_anon(column))
        .then(pl.lit("anon"))
        .when(flag(KPF_LRU, column))
        .then(pl.lit("file"))
        .when(flag(KPF_BUDDY, column) | (pl.col(column) == 0))
        .then(pl.lit("free"))
        .otherwise(pl.lit("kernel"))
    )


def is_cold(column: str = FLAGS) -> pl.Expr:
    """On the inactive LRU and not referenced since the last scan of the list."""
    return flag(KPF_LRU, column) & ~flag(KPF_ACTIVE, column) & ~flag(KPF_REFERENCED, column)


__all__ = [
    "SWAP_FRAME",
    "guest_class",
    "holds_frame",
    "is_anon",
    "is_cold",
    "is_hugetlb",
    "is_ksm",
    "is_ksm_eligible",
    "is_mapped_file",
    "is_private_anon",
    "is_shmem",
    "is_swap_slot",
    "is_thp",
    "is_zero_page",
]
