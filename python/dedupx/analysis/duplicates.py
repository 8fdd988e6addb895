"""Duplicate page contents within one capture, counted as docs/metrics.md defines them.

A duplicate group is every distinct PFN in scope with the same hash. For a group of ``a``
anon and ``f`` file frames, perfect merging saves ``a + f - 1`` pages: anon/anon
``max(a-1, 0)``, file/file ``max(f-1, 0)``, anon/file 1 when both kinds hold it. KSM can
reach only the anon/anon part among KSM-eligible frames (private anon in a mergeable VMA).
The kernel's shared zero page is already shared: it is never part of a group.
"""

from __future__ import annotations

import polars as pl

from dedupx.analysis.hashed_frames import hashed_frames, where_mapped
from dedupx.analysis.huge_pages import dropped_copies
from dedupx.model.content_key import hex_of
from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.page_classes import is_hugetlb, is_thp

SAVING_COLUMNS = ("anon_anon", "file_file", "anon_file", "total")


def duplicate_groups(frames: pl.LazyFrame) -> pl.LazyFrame:
    """One row per content: frame counts by kind and what merging its copies would save,
    and where its frames are mapped if they say (``where_mapped``)."""
    names = frames.collect_schema().names()
    where = [
        pl.col(c).list.explode(keep_nulls=False, empty_as_null=False).unique().sort()
        for c in ("paths", "kinds")
        if c in names
    ]
    return (
        frames.group_by("hash")
        .agg(
            pl.len().alias("frames"),
            pl.col("anon").sum().alias("anon"),
            (~pl.col("anon")).sum().alias("file"),
            pl.col("ksm_eligible").sum().alias("eligible"),
            (pl.col("ksm_eligible") & is_thp()).sum().alias("eligible_thp"),
            *(
                (pl.col("anon") & ~pl.col("ksm_eligible") & (pl.col("ksm_barrier") == why))
                .sum()
                .alias(name)
                for name, why in (
                    ("barred_hugetlb", "hugetlb"),
                    ("barred_shared", "shared backend"),
                )
            ),
            pl.col("zero").first(),
            *where,
        )
        .with_columns(
            (pl.col("anon").cast(pl.Int64) - 1).clip(0).alias("anon_anon"),
            (pl.col("file").cast(pl.Int64) - 1).clip(0).alias("file_file"),
            ((pl.col("anon") > 0) & (pl.col("file") > 0)).cast(pl.Int64).alias("anon_file"),
            (pl.col("eligible").cast(pl.Int64) - 1).clip(0).alias("ksm_reachable"),
        )
        # Every frame is anon or file, so a + f - 1 is frames - 1; written so it holds for
        # memory images too, whose frames carry no flags to tell anon from file.
        .with_columns((pl.col("frames").cast(pl.Int64) - 1).alias("total"))
    )


def duplicates(data: Frames | HasFrames) -> pl.DataFrame:
    """One row of page counts: ``anon_anon``, ``file_file``, ``anon_file``, ``total`` (pages
    perfect merging would save), ``ksm_reachable`` (of those, what KSM can merge),
    ``ksm_missed_file`` (file-backed copies), ``ksm_missed_not_mergeable`` (anon copies KSM
    does not scan; of them ``ksm_missed_hugetlb`` and ``ksm_missed_shared_backend``, on
    backends KSM never scans), ``ksm_reachable_thp`` (of ``ksm_reachable``, copies held in
    a THP that KSM must split first), ``hugetlb`` and ``hugetlb_whole`` (of the savings,
    copies in hugetlb pages, and of those what is reachable without splitting one),
    ``zero_content`` (savings from all-zero pages), ``frames``
    (distinct hashed PFNs), ``groups`` (contents held by two or more frames). For a memory
    image, whose frames carry no flags, the split by kind and KSM's part are null."""
    f = as_frames(data)
    groups = duplicate_groups(hashed_frames(f))
    missed = pl.col("anon_anon") - pl.col("ksm_reachable")
    missed_h = pl.min_horizontal(pl.col("barred_hugetlb").cast(pl.Int64), missed)
    row = groups.select(
        *(pl.col(c).sum() for c in SAVING_COLUMNS),
        pl.col("ksm_reachable").sum(),
        (pl.col("file_file") + pl.col("anon_file")).sum().alias("ksm_missed_file"),
        missed.sum().alias("ksm_missed_not_mergeable"),
        # Of those, copies on a backend KSM never scans (see dedupx.model.backing).
        missed_h.sum().alias("ksm_missed_hugetlb"),
        pl.min_horizontal(pl.col("barred_shared").cast(pl.Int64), missed - missed_h)
        .sum()
        .alias("ksm_missed_shared_backend"),
        # Of the copies KSM would merge, those sitting in a THP it must split first.
        pl.min_horizontal(pl.col("eligible_thp").cast(pl.Int64), pl.col("ksm_reachable"))
        .sum()
        .alias("ksm_reachable_thp"),
        pl.col("total").filter(pl.col("zero")).sum().alias("zero_content"),
        pl.col("frames").sum(),
        (pl.col("frames") > 1).sum().alias("groups"),
    )
    out = pl.concat([row.collect(), hugetlb_savings(f)], how="horizontal").with_columns(
        pl.all().fill_null(0).cast(pl.Int64)
    )
    if not f.has_flags():  # no flags: anon and file cannot be told apart
        unknown = ("anon_anon", "file_file", "anon_file", "ksm_reachable")
        out = out.with_columns(pl.lit(None, dtype=pl.Int64).alias(c) for c in unknown)
    return out


def hugetlb_savings(f: Frames) -> pl.DataFrame:
    """One row: ``hugetlb`` (of the savings, copies held in hugetlb pages, at 4 KiB) and
    ``hugetlb_whole`` (of those, in huge pages merging frees whole: reachable without
    splitting one; dedupx.analysis.huge_pages)."""
    none = pl.DataFrame({"hugetlb": [0], "hugetlb_whole": [0]})
    # A look at the flags first: most captures hold no hugetlb page at all.
    if not f.has_flags() or not f.frames.select(is_hugetlb().any()).collect().item():
        return none
    frames = (
        hashed_frames(f)
        .filter(pl.col("hugetlb").any().over("hash"))
        .select("pfn", "hash", "hugetlb", "page_size")
        .collect()
    )
    if frames.height == 0:
        return none
    return (
        dropped_copies(frames)
        .filter(pl.col("dropped") & pl.col("hugetlb"))
        .select(pl.len().alias("hugetlb"), pl.col("whole").sum().alias("hugetlb_whole"))
    )


def top_duplicates(data: Frames | HasFrames, n: int = 10) -> pl.DataFrame:
    """The ``n`` contents whose merging saves the most pages, with where they live."""
    f = as_frames(data)
    view = hashed_frames(f)
    # The order needs only each content's copies: the n first are found by a count, and
    # only their frames are grouped with the lists of paths and kinds (the costly part).
    first = (
        view.group_by("hash")
        .len()
        .filter(pl.col("len") > 1)
        .sort(["len", "hash"], descending=[True, False])
        .head(n)
        .select("hash")
    )
    groups = duplicate_groups(where_mapped(f, view.join(first, on="hash", how="semi")))
    return (
        groups.sort(["total", "hash"], descending=[True, False])
        .select(
            pl.col("hash").map_elements(hex_of, return_dtype=pl.String),
            "frames",
            "anon",
            "file",
            "total",
            "ksm_reachable",
            "zero",
            "kinds",
            "paths",
        )
        .collect()
    )


__all__ = ["SAVING_COLUMNS", "duplicate_groups", "duplicates", "top_duplicates"]
