"""Every VM's dedup matrix in one pass over the frames (``dedup_matrix`` for each VM).

Matrix by matrix, each VM's frames are its own scope and every other hashed frame is a
peer's (mapped by another VM) or the host's (mapped by no VM). So the host's copies of a
content are the same for every VM, and a VM's peers' copies are those of all VMs less its
own: counted once per content, and once per (content, VM) for the VMs' frames, the matrix
of every VM comes out of one grouping of the frames instead of one per VM.
"""

from __future__ import annotations

import dataclasses

import polars as pl

from dedupx.analysis.dedup_matrix import matrix_rows, scope_counts
from dedupx.analysis.hashed_frames import hashed_frames
from dedupx.model.content_key import KEY
from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.page_classes import holds_frame, is_thp, is_zero_page

PEER = "vm"


def vm_matrices(
    data: Frames | HasFrames, order: tuple[str, str] = ("host", PEER)
) -> dict[int, pl.DataFrame]:
    """Each VM's (each process of kind ``vm``'s) dedup matrix, by PID: the same frame as
    ``dedup_matrix(data, pid, order)`` gives."""
    f = as_frames(data)
    f.require("dedup_matrix", "pages", "processes")
    assert f.pages is not None and f.processes is not None
    vms = f.processes.filter(pl.col("kind") == PEER).select("pid")
    pids = [int(p) for p in vms.collect()["pid"]]
    if not pids:
        return {}
    copied = copied_frames(f)
    owners = _owners(copied, vms).collect()
    mapped = owners.select("pfn").unique().with_columns(pl.lit(True).alias("vm"))
    frames = (
        hashed_frames(copied)
        .select(
            "pfn",
            "hash",
            "anon",
            "ksm_eligible",
            "ksm_barrier",
            "zero",
            "hugetlb",
            "page_size",
            (pl.col("ksm_eligible") & is_thp().fill_null(False)).alias("thp"),
        )
        .join(mapped.lazy(), on="pfn", how="left")
        .collect()
    )
    everywhere = pl.lit(True)
    host = (
        frames.lazy()
        .filter(pl.col("vm").is_null())
        .group_by("hash")
        .agg(*scope_counts(everywhere, "host"))
    )
    # Copies of all VMs, one each: a frame two VMs map is one copy.
    all_vms = (
        frames.lazy()
        .filter(pl.col("vm").is_not_null())
        .group_by("hash")
        .agg(*scope_counts(everywhere, "all"))
    )
    mine = frames.lazy().join(owners.lazy(), on="pfn")
    per = (
        mine.group_by("hash", "target")
        .agg(
            *scope_counts(everywhere, "v"),
            pl.col("thp").sum().alias("t_v"),
            pl.col("zero").first(),
        )
        .join(host, on="hash", how="left")
        .join(all_vms, on="hash", how="left")
        .with_columns(
            *(pl.col(f"{c}_host").fill_null(0) for c in "afehs"),
            *(
                (pl.col(f"{c}_all").cast(pl.Int64) - pl.col(f"{c}_v").cast(pl.Int64)).alias(
                    f"{c}_{PEER}"
                )
                for c in "afehs"
            ),
        )
        .drop(*(f"{c}_all" for c in "afehs"))
        .collect()
    )
    # Huge page savings (rare: hugetlb-backed guests) need all of a VM's frames, single
    # copies too: whether a huge page is freed whole depends on every subpage of it.
    if frames["hugetlb"].any():
        v_frames = (
            hashed_frames(f)
            .join(_owners(f, vms), on="pfn")
            .select("target", "pfn", "hash", "hugetlb", "page_size")
            .collect()
        )
    else:
        v_frames = pl.DataFrame(
            schema={
                "target": pl.UInt32,
                "pfn": pl.UInt64,
                "hash": KEY,
                "hugetlb": pl.Boolean,
                "page_size": pl.UInt64,
            }
        )
    parts = v_frames.partition_by("target", as_dict=True, include_key=False)
    empty = v_frames.clear().drop("target")
    by_pid = {p: parts.get((p,), empty) for p in pids}
    return matrix_rows(per, by_pid, PEER, order)


def _owners(f: Frames, vms: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (frame, VM that maps it): most frames have one VM or none."""
    assert f.pages is not None
    return (
        f.pages.filter(holds_frame())
        .select(pl.col("pid").alias("target"), "pfn")
        .join(vms.select(pl.col("pid").alias("target")), on="target", how="semi")
        .unique()
    )


def copied_frames(f: Frames) -> Frames:
    """The capture narrowed to the frames of its content view whose content another frame
    holds too, and the pages that map them. A content held by one frame only counts in no
    row of any matrix (no copy to save): most contents of a host are such, and the rest is
    what needs grouping by VM."""
    if f.hashed is not None:
        return dataclasses.replace(f, hashed=f.hashed.filter(pl.len().over("hash") > 1))
    assert f.pages is not None
    # The frames hashed_frames keeps: hashed, and not the kernel's zero page.
    view = f.frames.filter(pl.col("hash").is_not_null())
    if f.has_flags():
        view = view.filter(~is_zero_page())
    copied = view.group_by("hash").len().filter(pl.col("len") > 1).select("hash")
    pfns = view.join(copied, on="hash", how="semi").select("pfn").collect(engine="streaming")
    return f.narrowed_to(pfns.lazy())


__all__ = ["copied_frames", "vm_matrices"]
