"""How a guest's physical pages are backed by host pages, by RAM block."""

from __future__ import annotations

from typing import Any

import polars as pl

from dedupx.model.page_classes import is_zero_page


def guest_backing(gpa_map: pl.DataFrame, frames: pl.DataFrame | None = None) -> dict[str, Any]:
    """From one guest's gpa map: ``guest_pages``, ``backed_pages`` (those with a host
    page), the map's ``source``, and per RAM block its ``pages``, ``backed`` pages and
    ``backing`` (what backs the host mappings that hold it, where the map says). With the
    capture's ``frames`` (``pfn``, ``zero``, ``kpageflags``), ``backed_zero_pages`` and per
    block ``zero``: backed guest pages that hold only zeros (the kernel's zero page or a
    zero-filled frame), memory the guest was given and never used (or freed and zeroed):
    all of its untouched RAM when preallocated, whatever backs it."""
    gm = gpa_map.with_columns(pl.lit(False).alias("zero"))
    if frames is not None:
        zeros = frames.filter(pl.col("zero").fill_null(False) | is_zero_page().fill_null(False))
        gm = gm.with_columns(pl.col("pfn").is_in(zeros["pfn"].implode()).alias("zero"))
    backed = gm.filter(pl.col("pfn").is_not_null())
    has_source = "source" in gm.columns and gm.height > 0
    aggs = [pl.len().alias("pages"), pl.col("pfn").is_not_null().sum().alias("backed")]
    if frames is not None:
        aggs.append(pl.col("zero").sum())
    if "backing" in gm.columns:
        aggs.append(pl.col("backing").drop_nulls().unique().sort().str.join("+"))
    out: dict[str, Any] = {
        "gpa_map_source": gm["source"][0] if has_source else None,
        "guest_pages": gm.height,
        "backed_pages": backed.height,
        "blocks": {
            r.pop("block"): r
            for r in gm.group_by("block").agg(aggs).sort("block").iter_rows(named=True)
        },
    }
    if frames is not None:
        out["backed_zero_pages"] = int(backed["zero"].sum())
    return out


__all__ = ["guest_backing"]
