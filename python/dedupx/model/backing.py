"""What backs a mapping's memory, as polars expressions over the ``vmas`` frame.

A mapping is backed by one of:

- **anon**: private anonymous memory (heap, stacks, QEMU's default guest RAM);
- **shmem**: shared memory the kernel keeps in shmem/tmpfs: memfd, files in /dev/shm,
  shared anonymous mappings, SysV segments;
- **hugetlb**: a hugetlbfs file (or MAP_HUGETLB), mapped with huge pages only (VmFlags
  ``ht``); its page size is smaps' ``KernelPageSize`` (2 MiB, 1 GiB);
- **file**: a regular file's page cache;
- **special**: what is not ordinary memory ([vdso], [vvar], device mappings).

KSM scans only private mappings that are not hugetlb (the kernel refuses MADV_MERGEABLE on
VM_SHARED and VM_HUGETLB), so a shared or hugetlb mapping is out of its reach whatever
QEMU asked; ``ksm_barrier`` names why.
"""

from __future__ import annotations

import polars as pl

from dedupx.model.units import PAGE_SIZE

BACKINGS = ("anon", "shmem", "hugetlb", "file", "special")
# hugetlbfs's default page size on x86_64: what an old snapshot (no KernelPageSize) means.
DEFAULT_HUGE_PAGE = 2 << 20


def _has_flag(code: str) -> pl.Expr:
    return pl.col("vm_flags").fill_null("").str.contains(rf"(^|\s){code}(\s|$)")


def vma_backing() -> pl.Expr:
    """``anon``, ``shmem``, ``hugetlb``, ``file`` or ``special`` (see above), from ``kind``
    and ``vm_flags``."""
    return (
        pl.when(_has_flag("ht"))
        .then(pl.lit("hugetlb"))
        .when(pl.col("kind") == "shmem")
        .then(pl.lit("shmem"))
        .when(pl.col("kind") == "file")
        .then(pl.lit("file"))
        .when(pl.col("kind") == "special")
        .then(pl.lit("special"))
        .otherwise(pl.lit("anon"))
    )


def vma_page_size(schema: list[str]) -> pl.Expr:
    """The page size the kernel maps the VMA with: smaps' ``KernelPageSize`` where the
    capture has it (``schema``: the vmas frame's columns), else 4 KiB, or hugetlbfs's
    default for a hugetlb mapping."""
    if "kernel_page_size" in schema:
        known = pl.col("kernel_page_size")
        return pl.when(known > 0).then(known).otherwise(PAGE_SIZE).cast(pl.UInt64)
    return pl.when(_has_flag("ht")).then(DEFAULT_HUGE_PAGE).otherwise(PAGE_SIZE).cast(pl.UInt64)


def is_shared_mapping() -> pl.Expr:
    """MAP_SHARED (VmFlags ``sh``): its pages are the file's or shmem's, never private."""
    return _has_flag("sh")


def ksm_barrier() -> pl.Expr:
    """Why KSM cannot merge this mapping's pages whatever QEMU asked: ``hugetlb``, ``shared
    backend`` (MAP_SHARED: memfd, /dev/shm, a shared file), else null (KSM may, if the
    mapping is MADV_MERGEABLE)."""
    return (
        pl.when(_has_flag("ht"))
        .then(pl.lit("hugetlb"))
        .when(is_shared_mapping() | (pl.col("kind") == "shmem"))
        .then(pl.lit("shared backend"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


__all__ = [
    "BACKINGS",
    "DEFAULT_HUGE_PAGE",
    "is_shared_mapping",
    "ksm_barrier",
    "vma_backing",
    "vma_page_size",
]
