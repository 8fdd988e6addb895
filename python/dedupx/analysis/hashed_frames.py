"""The content view of a capture: its distinct hashed physical pages, with what maps them.

Every frame of the capture's ``frames`` that has a hash is in scope, mapped or not (a
process scan's frames are the PFNs it maps; a host snapshot's, every hashed PFN of RAM).
The kernel's shared zero page is left out: it is already shared, never a duplicate.
A guest's RAM counts as anon whatever backs it (memfd, hugetlbfs, a file): the study's
convention, and what the guest sees (dedupx.qemu.ram_backing).
"""

from __future__ import annotations

import polars as pl

from dedupx.exceptions import MissingFrames
from dedupx.model.backing import DEFAULT_HUGE_PAGE, ksm_barrier, vma_backing, vma_page_size
from dedupx.model.frames import Frames
from dedupx.model.page_classes import (
    holds_frame,
    is_anon,
    is_hugetlb,
    is_ksm_eligible,
    is_shmem,
    is_swap_slot,
    is_zero_page,
)
from dedupx.model.units import PAGE_SIZE
from dedupx.qemu.ram_backing import guest_ram_vmas


def hashed_frames(f: Frames) -> pl.LazyFrame:
    """One row per distinct hashed PFN: ``pfn``, ``hash``, ``kpageflags``, ``zero``,
    ``anon`` (null for images, which carry no flags; true for a guest's RAM whatever backs
    it), ``ksm_eligible``, ``guest_ram``, ``hugetlb`` (in a hugetlb page) and its
    ``page_size`` (the huge page's, else 4 KiB), ``ksm_barrier`` (why KSM cannot merge it:
    "hugetlb", "shared backend", else null). Where each is mapped is ``where_mapped``'s:
    lists per frame cost as much as the rest of the view, and only a few frames are shown
    with theirs. The capture's own (``Frames.hashed``) where it was computed already."""
    if f.hashed is not None:
        return f.hashed
    frames = f.frames.filter(pl.col("hash").is_not_null())
    if not f.has_flags():
        return frames.select(
            "pfn",
            "hash",
            "zero",
            pl.lit(None, dtype=pl.UInt64).alias("kpageflags"),
            pl.lit(False).alias("ksm_eligible"),
            pl.lit(None, dtype=pl.Boolean).alias("anon"),
            *_no_mapping(),
        ).with_columns(_unmapped_hugetlb())
    frames = frames.filter(~is_zero_page()).select("pfn", "hash", "kpageflags", "zero")
    if f.pages is None:
        return (
            frames.with_columns(
                pl.lit(False).alias("ksm_eligible"),
                is_anon().alias("anon"),
                *_no_mapping(),
            )
            .with_columns(is_hugetlb().fill_null(False).alias("hugetlb"))
            .with_columns(_unmapped_hugetlb())
        )
    return (
        frames.join(mapped_by(f), on="pfn", how="left")
        .with_columns(
            pl.col("ksm_eligible").fill_null(False),
            pl.col("guest_ram").fill_null(False),
        )
        .with_columns(
            (is_anon() | pl.col("guest_ram")).alias("anon"),
            (pl.col("hugetlb").fill_null(False) | is_hugetlb().fill_null(False)).alias("hugetlb"),
        )
        .with_columns(_unmapped_hugetlb())
        .with_columns(_shmem_barrier())
    )


def _no_mapping() -> list[pl.Expr]:
    return [
        pl.lit(False).alias("guest_ram"),
        pl.lit(False).alias("hugetlb"),
        pl.lit(None, dtype=pl.UInt64).alias("page_size"),
        pl.lit(None, dtype=pl.String).alias("ksm_barrier"),
    ]


def _unmapped_hugetlb() -> list[pl.Expr]:
    """A hugetlb page no mapping names (a host snapshot's): KSM cannot merge it either, and
    its size is hugetlbfs's default, as no KernelPageSize says otherwise."""
    huge = pl.col("hugetlb")
    return [
        pl.when(huge).then(pl.lit("hugetlb")).otherwise(pl.col("ksm_barrier")).alias("ksm_barrier"),
        pl.when(pl.col("page_size").is_null() & huge)
        .then(pl.lit(DEFAULT_HUGE_PAGE, dtype=pl.UInt64))
        .otherwise(pl.col("page_size").fill_null(PAGE_SIZE))
        .alias("page_size"),
    ]


def _shmem_barrier() -> pl.Expr:
    """Shared memory however it is mapped: KSM merges only private anonymous pages."""
    return (
        pl.when(pl.col("ksm_barrier").is_null() & is_shmem())
        .then(pl.lit("shared backend"))
        .otherwise(pl.col("ksm_barrier"))
        .alias("ksm_barrier")
    )


def _hashed_pages(pages: pl.LazyFrame) -> pl.LazyFrame:
    """The mappings of the frames in the content view: hashed, not the zero page. (A page
    whose PFN was remapped after its hash was taken carries no hash: it says nothing about
    the frame.)"""
    return pages.filter(holds_frame() & pl.col("hash").is_not_null() & ~is_zero_page())


def where_mapped(f: Frames, frames: pl.LazyFrame) -> pl.LazyFrame:
    """``frames`` (rows with a ``pfn``) with the ``paths`` and ``kinds`` of the VMAs that
    map each (``[unmapped]`` where none does, ``[image]`` in an image)."""
    if not f.has_flags():
        return frames.with_columns(
            pl.lit(["[image]"]).alias("paths"), pl.lit(["image"]).alias("kinds")
        )
    unmapped = [pl.lit(["[unmapped]"]).alias("paths"), pl.lit(["unmapped"]).alias("kinds")]
    if f.pages is None:
        return frames.with_columns(unmapped)
    pages = _hashed_pages(f.pages).join(frames.select("pfn"), on="pfn", how="semi")
    if f.vmas is not None:
        vmas = f.vmas.select("pid", "vma_id", "path", "kind")
        pages = pages.join(vmas, on=["pid", "vma_id"], how="left")
    else:
        pages = pages.with_columns(
            pl.lit(None, dtype=pl.String).alias("path"), pl.lit(None, dtype=pl.String).alias("kind")
        )
    lists = pages.group_by("pfn").agg(
        pl.col("path").replace("", "[anon]").unique().alias("paths"),
        pl.col("kind").unique().alias("kinds"),
    )
    return frames.join(lists, on="pfn", how="left").with_columns(
        pl.col("paths").fill_null(pl.lit(["[unmapped]"])),
        pl.col("kinds").fill_null(pl.lit(["unmapped"])),
    )


def mapped_by(f: Frames) -> pl.LazyFrame:
    """Per mapped, hashed PFN: ``ksm_eligible`` (some mapping of it is), whether it is a
    guest's RAM, its huge page and what bars KSM."""
    if f.pages is None:
        raise MissingFrames("mapped_by needs pages")
    pages = _hashed_pages(f.pages)
    if f.vmas is not None:
        schema = f.vmas.collect_schema().names()
        vmas = f.vmas.select(
            "pid",
            "vma_id",
            "mergeable",
            (vma_backing() == "hugetlb").alias("hugetlb"),
            vma_page_size(schema).alias("page_size"),
            ksm_barrier().alias("ksm_barrier"),
        )
        if f.processes is not None:
            ram = guest_ram_vmas(f.processes, f.vmas).with_columns(pl.lit(True).alias("guest_ram"))
            vmas = vmas.join(ram.lazy(), on=["pid", "vma_id"], how="left")
        else:
            vmas = vmas.with_columns(pl.lit(None, dtype=pl.Boolean).alias("guest_ram"))
        pages = pages.join(vmas, on=["pid", "vma_id"], how="left")
    else:
        pages = pages.with_columns(
            pl.lit(None, dtype=pl.Boolean).alias("mergeable"),
            pl.lit(None, dtype=pl.Boolean).alias("hugetlb"),
            pl.lit(None, dtype=pl.UInt64).alias("page_size"),
            pl.lit(None, dtype=pl.String).alias("ksm_barrier"),
            pl.lit(None, dtype=pl.Boolean).alias("guest_ram"),
        )
    return pages.group_by("pfn").agg(
        # KSM scans pages in memory only: a swapped-out page is merged once back, not now.
        (is_ksm_eligible(pl.col("mergeable").fill_null(False)) & ~is_swap_slot())
        .any()
        .alias("ksm_eligible"),
        pl.col("guest_ram").fill_null(False).any().alias("guest_ram"),
        pl.col("hugetlb").fill_null(False).any().alias("hugetlb"),
        pl.col("page_size").max().alias("page_size"),
        # "hugetlb" sorts before "shared backend": the stronger reason wins.
        pl.col("ksm_barrier").drop_nulls().min().alias("ksm_barrier"),
    )


__all__ = ["hashed_frames", "mapped_by", "where_mapped"]
