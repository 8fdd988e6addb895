"""Which copies merging drops, and which hugetlb pages that frees whole (docs/metrics.md).

A hugetlb page (2 MiB, 1 GiB) is hashed as 4 KiB subpages like any page, but the kernel
maps and frees it only whole: perfect merging at 4 KiB granularity may count its subpages
as saved while the huge page stays, unless every one of its subpages is a dropped copy.
Of the ``n`` copies of a content, one is kept: a copy outside hugetlb pages where there is
one (else the one at the lowest PFN), which frees no fewer huge pages than keeping any
other; none is kept where the content is ``held_elsewhere`` (a partner holds it).
"""

from __future__ import annotations

import polars as pl

from dedupx.model.units import PAGE_SIZE


def dropped_copies(frames: pl.DataFrame, held_elsewhere: pl.Expr | None = None) -> pl.DataFrame:
    """``frames`` (``pfn``, ``hash``, ``hugetlb``, ``page_size``, and any column
    ``held_elsewhere`` reads) with ``kept`` (the one copy of its content kept here),
    ``dropped`` (a copy merging frees) and ``whole`` (a subpage of a hugetlb page every
    subpage of which is dropped: freed without splitting it)."""
    elsewhere = pl.lit(False) if held_elsewhere is None else held_elsewhere.fill_null(False)
    out = (
        frames.sort("hugetlb", "pfn")
        .with_columns((pl.int_range(pl.len()).over("hash") == 0).alias("kept"))
        .with_columns(
            (~pl.col("kept") | elsewhere).alias("dropped"),
            (pl.col("pfn") // (pl.col("page_size") // PAGE_SIZE)).alias("_huge_page"),
        )
    )
    subpages = pl.col("page_size").first() // PAGE_SIZE
    whole = (
        out.filter(pl.col("hugetlb"))
        .group_by("_huge_page")
        .agg((pl.col("dropped").all() & (pl.len() == subpages)).alias("whole"))
    )
    return (
        out.join(whole, on="_huge_page", how="left")
        .with_columns((pl.col("whole").fill_null(False) & pl.col("hugetlb")).alias("whole"))
        .drop("_huge_page")
    )


__all__ = ["dropped_copies"]
