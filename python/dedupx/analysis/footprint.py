"""RSS, PSS and USS per process, split into anon, file and shmem, from the pages frame.

Counted per mapped page (a PFN mapped twice counts twice, as the kernel's smaps does) and
without the kernel's shared zero page, which smaps does not count either.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from dedupx.analysis.frames_input import pages_and_vmas
from dedupx.kpageflags import KPF_ANON, KPF_KSM, flag, is_shmem, is_zero_page

PAGE_SIZE = 4096


def footprint(data: Any) -> pl.DataFrame:
    """One row per PID: ``rss_bytes``, ``pss_bytes``, ``uss_bytes``, each also split as
    ``anon_*``, ``file_*`` and ``shmem_*``; ``pss_without_ksm_bytes`` (PSS were KSM's current
    merges undone: each KSM page mapped here would be a private copy again); ``swap_bytes``."""
    pages, _ = pages_and_vmas(data)
    resident = pages.filter(pl.col("present") & ~is_zero_page())
    share = PAGE_SIZE / pl.max_horizontal(pl.col("mapcount"), pl.lit(1))
    unique = (pl.col("mapcount") <= 1).cast(pl.UInt64) * PAGE_SIZE
    classes = {
        "anon": flag(KPF_ANON),
        "shmem": is_shmem(),
        "file": ~flag(KPF_ANON) & ~is_shmem(),
    }
    unmerged = pl.when(flag(KPF_KSM)).then(pl.lit(float(PAGE_SIZE))).otherwise(share)
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
    out = (
        resident.group_by("pid")
        .agg(aggs)
        .join(swap, on="pid", how="full", coalesce=True)
        .with_columns(pl.exclude("pid").fill_null(0))
        .sort("pid")
    )
    return out.collect()
