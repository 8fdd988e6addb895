"""The content view of a capture: its distinct hashed physical pages, with what maps them.

Every frame of the capture's ``frames`` that has a hash is in scope, mapped or not (a
process scan's frames are the PFNs it maps; a host snapshot's, every hashed PFN of RAM).
The kernel's shared zero page is left out: it is already shared, never a duplicate.
"""

from __future__ import annotations

import polars as pl

from dedupx.exceptions import MissingFrames
from dedupx.model.frames import Frames
from dedupx.model.page_classes import is_anon, is_ksm_eligible, is_zero_page


def hashed_frames(f: Frames) -> pl.LazyFrame:
    """One row per distinct hashed PFN: ``pfn``, ``hash``, ``kpageflags``, ``zero``,
    ``anon`` (null for images, which carry no flags), ``ksm_eligible``, and the ``paths``
    and ``kinds`` of the VMAs that map it (``[unmapped]`` where none does, ``[image]`` in
    an image)."""
    frames = f.frames.filter(pl.col("hash").is_not_null())
    if not f.has_flags():
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
    frames = frames.filter(~is_zero_page()).select("pfn", "hash", "kpageflags", "zero")
    if f.pages is None:
        return frames.with_columns(
            pl.lit(False).alias("ksm_eligible"),
            pl.lit(["[unmapped]"]).alias("paths"),
            pl.lit(["unmapped"]).alias("kinds"),
            is_anon().alias("anon"),
        )
    return frames.join(mapped_by(f), on="pfn", how="left").with_columns(
        pl.col("ksm_eligible").fill_null(False),
        pl.col("paths").fill_null(pl.lit(["[unmapped]"])),
        pl.col("kinds").fill_null(pl.lit(["unmapped"])),
        is_anon().alias("anon"),
    )


def mapped_by(f: Frames) -> pl.LazyFrame:
    """Per mapped, hashed PFN: ``ksm_eligible`` (some mapping of it is), and the ``paths``
    and ``kinds`` of the VMAs that map it. (A page whose PFN was remapped after its hash
    was taken carries no hash: it says nothing about the frame.)"""
    if f.pages is None:
        raise MissingFrames("mapped_by needs pages")
    pages = f.pages.filter(pl.col("present") & pl.col("hash").is_not_null() & ~is_zero_page())
    if f.vmas is not None:
        pages = pages.join(
            f.vmas.select("pid", "vma_id", "mergeable", "path", "kind"),
            on=["pid", "vma_id"],
            how="left",
        )
    else:
        pages = pages.with_columns(
            pl.lit(None, dtype=pl.Boolean).alias("mergeable"),
            pl.lit(None, dtype=pl.String).alias("path"),
            pl.lit(None, dtype=pl.String).alias("kind"),
        )
    return pages.group_by("pfn").agg(
        is_ksm_eligible(pl.col("mergeable").fill_null(False)).any().alias("ksm_eligible"),
        pl.col("path").replace("", "[anon]").unique().alias("paths"),
        pl.col("kind").unique().alias("kinds"),
    )


__all__ = ["hashed_frames", "mapped_by"]
