"""What KSM would merge: a prediction to hold against its own counters.

KSM merges private anonymous pages of MADV_MERGEABLE regions with equal content. A content
held by E eligible frames ends as ⌈E / max_page_sharing⌉ KSM pages (each shared by at most
max_page_sharing mappings), so KSM's ``pages_sharing`` gains E - ⌈E / max_page_sharing⌉.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from dedupx.analysis.hashed_frames import hashed_frames
from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.page_classes import is_thp

KSM_SYSFS = Path("/sys/kernel/mm/ksm")


def max_page_sharing(sysfs: Path = KSM_SYSFS) -> int:
    try:
        return int((sysfs / "max_page_sharing").read_text())
    except (OSError, ValueError):
        return 256  # the kernel's default


def ksm_prediction(data: Frames | HasFrames, max_sharing: int | None = None) -> pl.DataFrame:
    """One row: ``eligible_frames``, ``pages_sharing`` (what KSM's counter of that name
    should reach once it has converged, if it can split THPs as it needs), ``pages_shared``
    (KSM pages it would keep), ``thp_frames`` (eligible frames now in THPs) and
    ``pages_sharing_thp`` (of ``pages_sharing``, merges of copies held in THPs: KSM must
    split those first, and where many are it falls short by up to this much);
    ``barred_hugetlb`` and ``barred_shared_backend``: anon frames (guest RAM among them) KSM
    never scans, whatever was asked, because they are hugetlb or shared memory."""
    m = max_sharing or max_page_sharing()
    frames = hashed_frames(as_frames(data))
    barred = frames.filter(pl.col("anon").fill_null(False) & ~pl.col("ksm_eligible")).select(
        (pl.col("ksm_barrier") == "hugetlb").sum().cast(pl.Int64).alias("barred_hugetlb"),
        (pl.col("ksm_barrier") == "shared backend")
        .sum()
        .cast(pl.Int64)
        .alias("barred_shared_backend"),
    )
    eligible = frames.filter(pl.col("ksm_eligible"))
    groups = eligible.group_by("hash").agg(
        pl.len().cast(pl.Int64).alias("e"), is_thp().fill_null(False).sum().alias("thp")
    )
    row = groups.select(
        pl.col("e").sum().alias("eligible_frames"),
        (pl.col("e") - (pl.col("e") + m - 1) // m)
        .filter(pl.col("e") > 1)
        .sum()
        .alias("pages_sharing"),
        ((pl.col("e") + m - 1) // m).filter(pl.col("e") > 1).sum().alias("pages_shared"),
        pl.col("thp").sum().cast(pl.Int64).alias("thp_frames"),
        pl.min_horizontal(pl.col("thp").cast(pl.Int64), pl.col("e") - (pl.col("e") + m - 1) // m)
        .filter(pl.col("e") > 1)
        .sum()
        .alias("pages_sharing_thp"),
    ).collect()
    return pl.concat([row, barred.collect()], how="horizontal").with_columns(
        pl.all().fill_null(0).cast(pl.Int64)
    )


__all__ = ["ksm_prediction", "max_page_sharing"]
