"""Mapped pages by class, counted as RSS counts them (a page mapped twice counts twice)."""

from __future__ import annotations

import polars as pl

from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.page_classes import (
    is_hugetlb,
    is_ksm,
    is_mapped_file,
    is_private_anon,
    is_shmem,
    is_thp,
    is_zero_page,
)


def page_counts(data: Frames | HasFrames) -> dict[str, int]:
    """Pages by class: ``anon`` (private), ``shmem``, ``file``, ``hugetlb`` (apart from the
    three, as smaps counts it), ``zero_page`` (the kernel's),
    ``zero_content`` (other all-zero pages), ``ksm`` (merged), ``thp`` (in transparent huge
    pages), ``swapped``."""
    f = as_frames(data)
    f.require("page_counts", "pages")
    assert f.pages is not None
    present = pl.col("present")
    small = present & ~is_hugetlb().fill_null(False)
    row = (
        f.pages.select(
            (small & is_private_anon()).sum().alias("anon"),
            (small & is_shmem()).sum().alias("shmem"),
            (small & is_mapped_file() & ~is_zero_page()).sum().alias("file"),
            (present & is_hugetlb()).sum().alias("hugetlb"),
            (present & is_zero_page()).sum().alias("zero_page"),
            (present & pl.col("zero").fill_null(False) & ~is_zero_page())
            .sum()
            .alias("zero_content"),
            (present & is_ksm()).sum().alias("ksm"),
            (present & is_thp()).sum().alias("thp"),
            pl.col("swapped").sum().alias("swapped"),
        )
        .collect()
        .row(0, named=True)
    )
    return {k: int(v or 0) for k, v in row.items()}


__all__ = ["page_counts"]
