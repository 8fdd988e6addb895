"""Turning what a caller hands an analysis (a scan, or bare frames) into the frames it needs."""

from __future__ import annotations

from typing import Any

import polars as pl

FrameLike = pl.DataFrame | pl.LazyFrame


def pages_and_vmas(
    data: Any, vmas: FrameLike | None = None
) -> tuple[pl.LazyFrame, pl.LazyFrame | None]:
    """Accepts a ProcessScan (or anything with ``.pages``/``.vmas``) or a pages frame."""
    if isinstance(data, pl.DataFrame | pl.LazyFrame):
        pages = data.lazy()
    elif hasattr(data, "pages"):
        pages = data.pages.lazy()
        if vmas is None:
            vmas = getattr(data, "vmas", None)
    else:
        raise TypeError(f"expected a scan or a pages frame, got {type(data).__name__}")
    return pages, (vmas.lazy() if vmas is not None else None)


def with_vma_columns(pages: pl.LazyFrame, vmas: pl.LazyFrame | None) -> pl.LazyFrame:
    """Adds the VMA's ``mergeable``, ``path`` and ``kind`` to each page (nulls without vmas)."""
    have = set(pages.collect_schema().names())
    wanted = [c for c in ("mergeable", "path", "kind") if c not in have]
    if not wanted:
        return pages
    if vmas is None:
        return pages.with_columns(
            pl.lit(None, dtype=pl.Boolean).alias("mergeable")
            if c == "mergeable"
            else pl.lit(None, dtype=pl.String).alias(c)
            for c in wanted
        )
    cols = vmas.select("pid", "vma_id", *wanted)
    return pages.join(cols, on=["pid", "vma_id"], how="left")
