"""Duplicate page contents within one scope, counted as DESIGN.md defines them.

A duplicate group is every distinct PFN in scope with the same hash. For a group of ``a``
anon and ``f`` file frames, perfect merging saves ``a + f - 1`` pages: anon/anon
``max(a-1, 0)``, file/file ``max(f-1, 0)``, anon/file 1 when both kinds hold it. KSM can
reach only the anon/anon part among KSM-eligible frames (private anon in a mergeable VMA).
The kernel's shared zero page is already shared: it is never part of a group.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from dedupx.analysis.frames_input import FrameLike, pages_and_vmas, with_vma_columns
from dedupx.kpageflags import KPF_ANON, KPF_THP, flag, is_anon, is_zero_page

SAVING_COLUMNS = ("anon_anon", "file_file", "anon_file", "total")


def hashed_frames(data: Any, vmas: FrameLike | None = None) -> pl.LazyFrame:
    """Distinct hashed PFNs in scope: ``pfn``, ``hash``, ``kpageflags``, ``zero``, ``anon``,
    ``ksm_eligible``, and the ``paths``/``kinds`` of the VMAs that map them.

    For a snapshot that has a ``frames`` frame (a host or an image), every hashed frame is
    in scope, mapped or not; otherwise the frames its pages map."""
    if isinstance(getattr(data, "frames", None), pl.LazyFrame):
        return _snapshot_frames(data)
    pages, vmas_lf = pages_and_vmas(data, vmas)
    return _mapped_frames(pages, vmas_lf)


def _mapped_frames(pages: pl.LazyFrame, vmas: pl.LazyFrame | None) -> pl.LazyFrame:
    pages = with_vma_columns(pages, vmas)
    return (
        pages.filter(pl.col("present") & pl.col("hash").is_not_null() & ~is_zero_page())
        .with_columns((flag(KPF_ANON) & pl.col("mergeable").fill_null(False)).alias("ksm_eligible"))
        .group_by("pfn")
        .agg(
            pl.col("hash", "kpageflags", "zero").first(),
            pl.col("ksm_eligible").any(),
            pl.col("path").replace("", "[anon]").unique().alias("paths"),
            pl.col("kind").unique().alias("kinds"),
        )
        .with_columns(is_anon().alias("anon"))
    )


def _snapshot_frames(snap: Any) -> pl.LazyFrame:
    frames = snap.frames.filter(pl.col("hash").is_not_null())
    if "kpageflags" not in frames.collect_schema().names():  # an image: no flags, no mappings
        return frames.select(
            "pfn",
            "hash",
            "zero",
            pl.lit(None, dtype=pl.UInt64).alias("kpageflags"),
            pl.lit(False).alias("ksm_eligible"),
            pl.lit(["[image]"]).alias("paths"),
            pl.lit(["image"]).alias("kinds"),
            pl.lit(None, dtype=pl.Boolean).alias("anon"),
        )
    frames = frames.filter(~is_zero_page())
    if snap.pages is None:
        return frames.select(
            "pfn",
            "hash",
            "kpageflags",
            "zero",
            pl.lit(False).alias("ksm_eligible"),
            pl.lit(["[unmapped]"]).alias("paths"),
            pl.lit(["unmapped"]).alias("kinds"),
            is_anon().alias("anon"),
        )
    where = _mapped_frames(snap.pages, snap.vmas).select("pfn", "ksm_eligible", "paths", "kinds")
    return (
        frames.select("pfn", "hash", "kpageflags", "zero")
        .join(where, on="pfn", how="left")
        .with_columns(
            pl.col("ksm_eligible").fill_null(False),
            pl.col("paths").fill_null(pl.lit(["[unmapped]"])),
            pl.col("kinds").fill_null(pl.lit(["unmapped"])),
            is_anon().alias("anon"),
        )
    )


def duplicate_groups(frames: pl.LazyFrame) -> pl.LazyFrame:
    """One row per content: frame counts by kind and what merging its copies would save."""
    return (
        frames.group_by("hash")
        .agg(
            pl.len().alias("frames"),
            pl.col("anon").sum().alias("anon"),
            (~pl.col("anon")).sum().alias("file"),
            pl.col("ksm_eligible").sum().alias("eligible"),
            (pl.col("ksm_eligible") & flag(KPF_THP)).sum().alias("eligible_thp"),
            pl.col("zero").first(),
            pl.col("paths").list.explode(keep_nulls=False, empty_as_null=False).unique().sort(),
            pl.col("kinds").list.explode(keep_nulls=False, empty_as_null=False).unique().sort(),
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


def duplicates(data: Any, vmas: FrameLike | None = None) -> pl.DataFrame:
    """One row of page counts: ``anon_anon``, ``file_file``, ``anon_file``, ``total`` (pages
    perfect merging would save), ``ksm_reachable`` (of those, what KSM can merge),
    ``ksm_missed_file`` (file-backed copies), ``ksm_missed_not_mergeable`` (anon copies KSM
    does not scan), ``ksm_reachable_thp`` (of ``ksm_reachable``, copies held in a THP that
    KSM must split first), ``zero_content`` (savings from all-zero pages), ``frames``
    (distinct hashed PFNs), ``groups`` (contents held by two or more frames)."""
    frames = hashed_frames(data, vmas)
    groups = duplicate_groups(frames)
    row = groups.select(
        *(pl.col(c).sum() for c in SAVING_COLUMNS),
        pl.col("ksm_reachable").sum(),
        (pl.col("file_file") + pl.col("anon_file")).sum().alias("ksm_missed_file"),
        (pl.col("anon_anon") - pl.col("ksm_reachable")).sum().alias("ksm_missed_not_mergeable"),
        # Of the copies KSM would merge, those sitting in a THP it must split first.
        pl.min_horizontal(pl.col("eligible_thp").cast(pl.Int64), pl.col("ksm_reachable"))
        .sum()
        .alias("ksm_reachable_thp"),
        pl.col("total").filter(pl.col("zero")).sum().alias("zero_content"),
        pl.col("frames").sum(),
        (pl.col("frames") > 1).sum().alias("groups"),
    )
    return row.collect().with_columns(pl.all().fill_null(0).cast(pl.Int64))


def top_duplicates(data: Any, n: int = 10, vmas: FrameLike | None = None) -> pl.DataFrame:
    """The ``n`` contents whose merging saves the most pages, with where they live."""
    groups = duplicate_groups(hashed_frames(data, vmas))
    return (
        groups.filter(pl.col("frames") > 1)
        .sort(["total", "hash"], descending=[True, False])
        .head(n)
        .select(
            pl.col("hash").bin.encode("hex"),
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
