"""RSS, PSS and USS per process and per group, split into anon, file and shmem.

Counted per mapped page (a PFN mapped twice counts twice, as the kernel's smaps does) and
without the kernel's shared zero page, which smaps does not count either. The split
follows smaps: ``anon`` is private anonymous memory (dedupx.model.page_classes.is_private_anon),
``shmem`` swap-backed shared memory, ``file`` the rest. hugetlb pages are left out of all
of it and counted apart, as smaps does (``Shared_Hugetlb``, ``Private_Hugetlb``).
"""

from __future__ import annotations

import polars as pl

from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.page_classes import (
    is_hugetlb,
    is_ksm,
    is_mapped_file,
    is_private_anon,
    is_shmem,
    is_zero_page,
)
from dedupx.model.process_kinds import cgroup_leaf
from dedupx.model.units import PAGE_SIZE


def footprint(data: Frames | HasFrames) -> pl.DataFrame:
    """One row per PID: ``rss_bytes``, ``pss_bytes``, ``uss_bytes``, each also split as
    ``anon_*``, ``file_*`` and ``shmem_*``; ``pss_without_ksm_bytes`` (PSS were KSM's current
    merges undone: each KSM page mapped here would be a private copy again); ``swap_bytes``;
    ``shared_hugetlb_bytes`` and ``private_hugetlb_bytes`` (hugetlb pages, which smaps
    leaves out of RSS and PSS: mapped by more than this one mapping, or not)."""
    f = as_frames(data)
    f.require("footprint", "pages")
    assert f.pages is not None
    pages = f.pages
    present = pages.filter(pl.col("present") & ~is_zero_page())
    hugetlb = is_hugetlb().fill_null(False)
    resident = present.filter(~hugetlb)
    share = PAGE_SIZE / pl.max_horizontal(pl.col("mapcount"), pl.lit(1))
    unique = (pl.col("mapcount") <= 1).cast(pl.UInt64) * PAGE_SIZE
    classes = {"anon": is_private_anon(), "shmem": is_shmem(), "file": is_mapped_file()}
    unmerged = pl.when(is_ksm()).then(pl.lit(float(PAGE_SIZE))).otherwise(share)
    aggs = [
        pl.len().mul(PAGE_SIZE).cast(pl.UInt64).alias("rss_bytes"),
        share.sum().round().cast(pl.UInt64).alias("pss_bytes"),
        unmerged.sum().round().cast(pl.UInt64).alias("pss_without_ksm_bytes"),
        unique.sum().cast(pl.UInt64).alias("uss_bytes"),
    ]
    for name, cond in classes.items():
        aggs += [
            (cond.cast(pl.UInt64) * PAGE_SIZE).sum().alias(f"{name}_rss_bytes"),
            share.filter(cond).sum().round().cast(pl.UInt64).alias(f"{name}_pss_bytes"),
            unique.filter(cond).sum().cast(pl.UInt64).alias(f"{name}_uss_bytes"),
        ]
    swap = pages.group_by("pid").agg(
        (pl.col("swapped").cast(pl.UInt64).sum() * PAGE_SIZE).alias("swap_bytes")
    )
    # As smaps_hugetlb_range: a huge page mapped more than once may be another's too.
    shared = pl.col("mapcount").fill_null(1) > 1
    huge = (
        present.filter(hugetlb)
        .group_by("pid")
        .agg(
            (shared.cast(pl.UInt64).sum() * PAGE_SIZE).alias("shared_hugetlb_bytes"),
            ((~shared).cast(pl.UInt64).sum() * PAGE_SIZE).alias("private_hugetlb_bytes"),
        )
    )
    out = (
        resident.group_by("pid")
        .agg(aggs)
        .join(swap, on="pid", how="full", coalesce=True)
        .join(huge, on="pid", how="left")
        .with_columns(pl.exclude("pid").fill_null(0))
        .sort("pid")
    )
    return out.collect()


def group_footprints(data: Frames | HasFrames, fp: pl.DataFrame | None = None) -> pl.DataFrame:
    """Footprint per group: each VM on its own, containers by cgroup, the rest as host
    processes (``group``, ``kind``, ``processes`` and summed RSS/PSS/USS/swap). ``fp`` is
    ``footprint(data)`` when the caller has it already."""
    f = as_frames(data)
    f.require("group_footprints", "pages", "processes")
    assert f.processes is not None
    fp = footprint(f) if fp is None else fp
    procs = f.processes.select("pid", "comm", "kind", "cgroup").collect()
    leaf = cgroup_leaf()
    group = (
        pl.when(pl.col("kind") == "vm")
        .then(pl.format("vm {} ({})", pl.col("pid"), pl.col("comm")))
        .when(pl.col("kind") == "container")
        .then(pl.format("container {}", leaf))
        .otherwise(pl.lit("host processes"))
    )
    sums = ["rss_bytes", "pss_bytes", "uss_bytes", "swap_bytes"]
    return (
        fp.join(procs, on="pid", how="left")
        .with_columns(group.alias("group"))
        .group_by("group", "kind")
        .agg(pl.len().alias("processes"), *(pl.col(c).sum() for c in sums))
        .sort("pss_bytes", descending=True)
    )


__all__ = ["footprint", "group_footprints"]
