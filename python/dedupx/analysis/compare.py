"""Comparing two captures: which of B's frames hold content that A also holds.

``b_only`` is B's incremental cost given A: the frames B would still need if every page
with content already in A were shared. The kernel's zero page is left out of both sides.
"""

from __future__ import annotations

import polars as pl

from dedupx.analysis.hashed_frames import hashed_frames
from dedupx.model.frames import Frames, HasFrames, as_frames


def content_frames(data: Frames | HasFrames) -> pl.LazyFrame:
    """Distinct hashed frames of a capture: ``pfn``, ``hash``, ``zero``."""
    return hashed_frames(as_frames(data)).select("pfn", "hash", "zero")


def compare(a: Frames | HasFrames, b: Frames | HasFrames) -> pl.DataFrame:
    """One row: ``a_frames``, ``b_frames``, ``shared`` (frames of B whose content also
    occurs in A), ``b_only`` (frames of B whose content does not), the same for distinct
    contents (``a_contents``, ``b_contents``, ``shared_contents``, ``b_only_contents``),
    ``shared_zero`` (of ``shared``, frames whose content is all zeros: untouched-looking
    RAM, not code or data two guests have in common) and ``shared_nonzero``, and
    ``b_only_zero`` (how many of B's frames with zero content A lacks: 0 whenever A has any
    zero page). Open paths with ``dedupx.load`` first."""
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
                (pl.col("in_a") & pl.col("zero")).sum().alias("shared_zero"),
                (pl.col("in_a") & ~pl.col("zero")).sum().alias("shared_nonzero"),
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


__all__ = ["compare", "content_frames"]
