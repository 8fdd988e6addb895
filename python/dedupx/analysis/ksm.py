"""What KSM would merge: a prediction to hold against its own counters.

KSM merges private anonymous pages of MADV_MERGEABLE regions with equal content. A content
held by E eligible frames ends as ⌈E / max_page_sharing⌉ KSM pages (each shared by at most
max_page_sharing mappings), so KSM's ``pages_sharing`` gains E - ⌈E / max_page_sharing⌉.

Transparent huge pages change what it reaches (measured on kernel 6.18, docs/metrics.md):
KSM splits a THP to merge a subpage whose non-zero content has a copy elsewhere; a THP
without such a subpage stays whole while the guests hold still (paused), though KSM goes on
to split those too as guests run or start. When a THP is split, the kernel maps its
zero-filled subpages to the shared zero page: they cost nothing afterwards, but KSM does not
count them as merged.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from dedupx.analysis.hashed_frames import hashed_frames
from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.page_classes import is_thp

KSM_SYSFS = Path("/sys/kernel/mm/ksm")
HUGE_PAGE_FRAMES = 512  # 4 KiB frames in a 2 MiB THP: a THP is 512 aligned frames


def max_page_sharing(sysfs: Path = KSM_SYSFS) -> int:
    try:
        return int((sysfs / "max_page_sharing").read_text())
    except (OSError, ValueError):
        return 256  # the kernel's default


def ksm_fates(data: Frames | HasFrames) -> pl.LazyFrame:
    """Each KSM-eligible frame with its content's copy count ``e``, whether it is held in a
    THP (``thp``) and what KSM will do with it (``fate``): ``merge`` (a candidate like any
    small page), ``zero_page`` (a zero-filled subpage of a THP KSM splits), ``thp_kept``
    (a subpage of a THP KSM leaves whole)."""
    eligible = (
        hashed_frames(as_frames(data))
        .filter(pl.col("ksm_eligible"))
        .select(
            "pfn",
            "hash",
            pl.col("zero").fill_null(False),
            is_thp().fill_null(False).alias("thp"),
            (pl.col("pfn") // HUGE_PAGE_FRAMES).alias("huge_page"),
        )
        .with_columns(pl.len().over("hash").alias("e"))
    )
    split = (
        eligible.filter(pl.col("thp") & ~pl.col("zero") & (pl.col("e") > 1))
        .select("huge_page")
        .unique()
        .with_columns(pl.lit(True).alias("split"))
    )
    eligible = eligible.join(split, on="huge_page", how="left")
    fate = (
        pl.when(~pl.col("thp"))
        .then(pl.lit("merge"))
        .when(pl.col("split").is_null())
        .then(pl.lit("thp_kept"))
        .when(pl.col("zero"))
        .then(pl.lit("zero_page"))
        .otherwise(pl.lit("merge"))
    )
    return eligible.with_columns(fate.alias("fate"))


def _merges(e: pl.Expr, m: int) -> pl.Expr:
    """Mappings that share a KSM page once E copies merge: E - ⌈E / m⌉."""
    return (e - (e + m - 1) // m).filter(e > 1).sum()


def ksm_prediction(data: Frames | HasFrames, max_sharing: int | None = None) -> pl.DataFrame:
    """One row: ``eligible_frames``; ``pages_sharing`` and ``pages_shared``, what KSM's
    counters of those names reach once it has converged over guests that hold still, THPs
    as the kernel treats them (the module's docstring); ``zero_page_remaps``, zero-filled
    subpages of THPs KSM splits, which end on the shared zero page (free, not counted by
    KSM); ``thp_kept_copies``, copies of a content held elsewhere that stay in THPs KSM
    leaves whole meanwhile; ``thp_frames``, eligible frames now in THPs; and
    ``pages_sharing_if_split``, what ``pages_sharing`` reaches once KSM has split every
    THP it can merge into (at once with THP off; as guests run, with THP on);
    ``barred_hugetlb`` and ``barred_shared_backend``: anon frames (guest RAM among them) KSM
    never scans, whatever was asked, because they are hugetlb or shared memory."""
    m = max_sharing or max_page_sharing()
    fates = ksm_fates(data)
    merging = fates.filter(pl.col("fate") == "merge").group_by("hash").agg(pl.len().alias("e"))
    every = fates.group_by("hash").agg(pl.len().alias("e"))
    counts = fates.select(
        pl.len().alias("eligible_frames"),
        (pl.col("fate") == "zero_page").sum().alias("zero_page_remaps"),
        ((pl.col("fate") == "thp_kept") & (pl.col("e") > 1)).sum().alias("thp_kept_copies"),
        pl.col("thp").sum().alias("thp_frames"),
    )
    row = pl.concat(
        [
            counts,
            merging.select(
                _merges(pl.col("e"), m).alias("pages_sharing"),
                ((pl.col("e") + m - 1) // m).filter(pl.col("e") > 1).sum().alias("pages_shared"),
            ),
            every.select(_merges(pl.col("e"), m).alias("pages_sharing_if_split")),
        ],
        how="horizontal",
    ).collect()
    frames = hashed_frames(as_frames(data))
    barred = frames.filter(pl.col("anon").fill_null(False) & ~pl.col("ksm_eligible")).select(
        (pl.col("ksm_barrier") == "hugetlb").sum().alias("barred_hugetlb"),
        (pl.col("ksm_barrier") == "shared backend").sum().alias("barred_shared_backend"),
    )
    row = pl.concat([row, barred.collect()], how="horizontal")
    return row.select(
        pl.col(
            "eligible_frames",
            "pages_sharing",
            "pages_shared",
            "zero_page_remaps",
            "thp_kept_copies",
            "thp_frames",
            "pages_sharing_if_split",
            "barred_hugetlb",
            "barred_shared_backend",
        )
        .fill_null(0)
        .cast(pl.Int64)
    )


__all__ = ["HUGE_PAGE_FRAMES", "ksm_fates", "ksm_prediction", "max_page_sharing"]
