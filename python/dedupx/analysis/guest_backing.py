"""How a guest's physical pages are backed by host pages, by RAM block."""

from __future__ import annotations

from typing import Any

import polars as pl

from dedupx.model.page_classes import is_zero_page


def guest_backing(gpa_map: pl.DataFrame, frames: pl.DataFrame | None = None) -> dict[str, Any]:
    """From one guest's gpa map: ``guest_pages``, ``backed_pages`` (those with a host
    page), the map's ``source``, and per RAM block its pages, backed pages and ``backing``
    (what backs the host mappings that hold it, where the map says). With the
    capture's ``frames`` (``pfn``, ``zero``, ``kpageflags``), ``backed_zero_pages``: backed
    guest pages that hold only zeros (the kernel's zero page or a zero-filled frame):
    memory a preallocated guest, or any guest, has been given and never used (or freed and
    zeroed), whatever backs it."""
    backed = gpa_map.filter(pl.col("pfn").is_not_null())
    has_source = "source" in gpa_map.columns and gpa_map.height > 0
    extra: dict[str, Any] = {}
    if frames is not None:
        zero = frames.filter(pl.col("zero").fill_null(False) | is_zero_page().fill_null(False))
        extra["backed_zero_pages"] = backed.join(zero.select("pfn"), on="pfn", how="semi").height
    return {
        **extra,
        "gpa_map_source": gpa_map["source"][0] if has_source else None,
        "guest_pages": gpa_map.height,
        "backed_pages": backed.height,
        "blocks": {
            r.pop("block"): r
            for r in gpa_map.group_by("block")
            .agg(
                pl.len().alias("pages"),
                pl.col("pfn").is_not_null().sum().alias("backed"),
                *(
                    [pl.col("backing").drop_nulls().unique().sort().str.join("+")]
                    if "backing" in gpa_map.columns
                    else []
                ),
            )
            .sort("block")
            .iter_rows(named=True)
        },
    }


__all__ = ["guest_backing"]
