"""Comparing two captures: which of B's frames hold content that A also holds.

``b_only`` is B's incremental cost given A: the frames B would still need if every page
with content already in A were shared. The kernel's zero page is left out of both sides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl

from dedupx.kpageflags import is_zero_page


def content_frames(data: Any) -> pl.LazyFrame:
    """Distinct hashed frames (``pfn``, ``hash``, ``zero``) of a snapshot, memory image,
    process scan, or a path to a snapshot directory or image file."""
    from dedupx.analysis.duplicates import hashed_frames
    from dedupx.memory_image import MemoryImage, read_image
    from dedupx.snapshot import Snapshot, open_snapshot

    if isinstance(data, str | os.PathLike):
        p = Path(data)
        data = open_snapshot(p) if p.is_dir() else read_image(p)
    if isinstance(data, MemoryImage):
        return data.frames.lazy().select("pfn", "hash", "zero")
    if isinstance(data, Snapshot):
        f = data.frames.filter(pl.col("hash").is_not_null())
        if "kpageflags" in f.collect_schema().names():
            f = f.filter(~is_zero_page().fill_null(False))
        return f.select("pfn", "hash", "zero")
    if hasattr(data, "pages"):
        return hashed_frames(data).select("pfn", "hash", "zero")
    raise TypeError(f"cannot compare a {type(data).__name__}")


def compare(a: Any, b: Any) -> pl.DataFrame:
    """One row: ``a_frames``, ``b_frames``, ``shared`` (frames of B whose content also
    occurs in A), ``b_only`` (frames of B whose content does not), the same for distinct
    contents (``a_contents``, ``b_contents``, ``shared_contents``, ``b_only_contents``) and
    ``b_only_zero`` (how many of B's frames with zero content A lacks: 0 whenever A has any
    zero page)."""
    fa, fb = content_frames(a), content_frames(b)
    a_hashes = fa.select("hash").unique()
    b_marked = fb.join(
        a_hashes.with_columns(pl.lit(True).alias("in_a")), on="hash", how="left"
    ).with_columns(pl.col("in_a").fill_null(False))
    row = pl.concat(
        [
            fa.select(pl.len().alias("a_frames"), pl.col("hash").n_unique().alias("a_contents")),
            b_marked.select(
                pl.len().alias("b_frames"),
                pl.col("in_a").sum().alias("shared"),
                (~pl.col("in_a")).sum().alias("b_only"),
                pl.col("hash").n_unique().alias("b_contents"),
                pl.col("hash").filter(pl.col("in_a")).n_unique().alias("shared_contents"),
                pl.col("hash").filter(~pl.col("in_a")).n_unique().alias("b_only_contents"),
                (~pl.col("in_a") & pl.col("zero")).sum().alias("b_only_zero"),
            ),
        ],
        how="horizontal",
    )
    return row.collect().with_columns(pl.all().cast(pl.Int64))
