"""Every guest's USS and incremental cost in one pass over the pages and frames
(``uss_breakdown`` and ``incremental_cost`` for each guest, KSM as the policy).

One guest's figures need what the others hold: the frames no other process maps (USS), the
contents no other process holds (its unique contents), and the contents another process
holds KSM-eligibly (its cost under KSM). Each is counted once for all guests, by who holds
a frame or content, instead of once per guest against everything else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from dedupx.analysis.density import use_zero_pages
from dedupx.analysis.device_cost import costs_of_devices
from dedupx.analysis.hashed_frames import hashed_frames
from dedupx.analysis.incremental_cost import (
    cost_rows,
    cost_summary,
    guest_ram_map,
    guests_main_blocks,
    uss_summary,
    with_ksm_cost,
)
from dedupx.analysis.ksm import max_page_sharing
from dedupx.exceptions import DedupxError
from dedupx.model.frames import Frames, as_frames
from dedupx.model.page_classes import is_ksm, is_ksm_eligible, is_zero_page


def guest_maps(f: Frames, pids: Sequence[int]) -> tuple[dict[int, pl.DataFrame], dict[int, str]]:
    """Each guest's gpa map and main RAM blocks, and for the guests that have none, why.
    The guests' pages, VMAs and maps are read once for all of them."""
    if f.pages is not None and f.vmas is not None and f.processes is not None:
        guests = _of_pids(pids)
        f = dataclasses.replace(
            f,
            pages=f.pages.filter(guests).select("pid", "vaddr", "pfn", "present").collect().lazy(),
            vmas=f.vmas.filter(guests).collect().lazy(),
            processes=f.processes.filter(guests).collect().lazy(),
            gpa_map=None if f.gpa_map is None else f.gpa_map.collect().lazy(),
        )
    maps, errors = {}, {}
    for pid in pids:
        try:
            maps[pid] = guest_ram_map(f, pid)
        except DedupxError as e:
            errors[pid] = str(e)
    return maps, errors


def _of_pids(pids: Sequence[int]) -> pl.Expr:
    """Rows of these PIDs. A filter, not a join: on a snapshot's Parquet it skips the row
    groups of other processes (10 of 100 guests' pages: 0.72 -> 0.08 s)."""
    return pl.col("pid").is_in(list(pids))


def vm_uss(
    f: Frames,
    maps: Mapping[int, pl.DataFrame],
    guest_frames: Mapping[int, pl.DataFrame | None] | None = None,
) -> dict[int, dict[str, Any]]:
    """``uss_breakdown`` of each guest of ``maps`` (their gpa maps, as ``guest_maps``
    gives them), by PID."""
    f = as_frames(f)
    assert f.pages is not None
    pids = list(maps)
    if not pids:
        return {}
    pages = f.pages.filter(pl.col("present"))
    # A frame is a guest's own when it alone maps it: one holder, and that is the guest.
    # (One holder: its least PID is its greatest, half the work of counting them. A
    # guest's page of such a frame is the one holder's: the PFN alone finds them.)
    own = (
        pages.group_by("pfn")
        .agg((pl.col("pid").min() == pl.col("pid").max()).alias("one"))
        .filter(pl.col("one"))
        .select("pfn")
    )
    theirs = pages.filter(_of_pids(pids)).select("pid", "pfn", "vaddr").collect()
    mine = (
        theirs.lazy()
        .join(own, on="pfn", how="semi")
        .collect()
        .partition_by("pid", as_dict=True, include_key=False)
    )
    # A content is a guest's alone when all the frames that hold it are frames it maps.
    # Most contents have one frame: that it maps it says so, without grouping by content.
    frames = (
        hashed_frames(f)
        .select("pfn", "hash")
        .drop_nulls()
        .with_columns(pl.len().over("hash").alias("all"))
    )
    held = frames.join(theirs.lazy().select("pid", "pfn").unique(), on="pfn")
    single = held.filter(pl.col("all") == 1).group_by("pid").len()
    shared = (
        held.filter(pl.col("all") > 1)
        .group_by("pid", "hash")
        .agg(pl.len().alias("mine"), pl.col("all").first())
        .filter(pl.col("mine") == pl.col("all"))
        .group_by("pid")
        .len()
    )
    unique = pl.concat([single, shared]).group_by("pid").agg(pl.col("len").sum()).collect()
    unique_by_pid = dict(unique.iter_rows())
    empty = pl.DataFrame(schema={"pfn": pl.UInt64, "vaddr": pl.UInt64})
    told = guest_frames or {}
    main = guests_main_blocks(f, pids)
    return {
        pid: uss_summary(
            pid,
            mine.get((pid,), empty),
            maps[pid],
            main[pid],
            told.get(pid),
            int(unique_by_pid.get(pid, 0)),
        )
        for pid in pids
    }


def vm_incremental_costs(
    f: Frames,
    maps: Mapping[int, pl.DataFrame],
    guest_frames: Mapping[int, pl.DataFrame | None] | None = None,
    *,
    max_sharing: int | None = None,
    zero_pages_free: bool | None = None,
) -> dict[int, dict[str, Any]]:
    """``incremental_cost`` of each guest of ``maps`` under KSM, by PID."""
    f = as_frames(f)
    assert f.pages is not None and f.vmas is not None
    pids = list(maps)
    if not pids:
        return {}
    m = max_sharing or max_page_sharing()
    zero_free = use_zero_pages() if zero_pages_free is None else zero_pages_free
    main = guests_main_blocks(f, pids)
    # Who holds each content KSM-eligibly: a guest's copy is seen elsewhere when another
    # process does (more than one holder, or one that is not the guest).
    eligible = (
        f.pages.filter(pl.col("present"))
        .join(f.vmas.select("pid", "vma_id", "mergeable"), on=["pid", "vma_id"], how="left")
        .filter(is_ksm() | is_ksm_eligible(pl.col("mergeable").fill_null(False)))
        .select("pid", pl.col("hash").alias("content"))
        .drop_nulls()
        .group_by("content")
        .agg(pl.col("pid").min().alias("least"), pl.col("pid").max().alias("most"))
    )
    batches = guest_batches(maps)
    if len(batches) > 1:  # a scan of every page: not once per batch
        eligible = eligible.collect().lazy()
    # (Several holders when the least PID is not the greatest; else the one is the least.)
    seen = (pl.col("least") != pl.col("most")) | (pl.col("least") != pl.col("pid"))
    told = {pid: g for pid, g in (guest_frames or {}).items() if g is not None}
    # The summary adds costs up by part and block, and by guest page for the guests that
    # say what their pages are: added up by those here, the rows need not be kept.
    told_pids = pl.LazyFrame({"pid": list(told)}, schema={"pid": pl.UInt32})
    out = {}
    for batch in batches:
        gm = pl.concat(
            [maps[p].select(pl.col("pid").cast(pl.UInt32), "hva", "gpa", "block") for p in batch]
        )
        rows = (
            cost_rows(f, gm, {p: main[p] for p in batch})
            .join(eligible, on="content", how="left")
            .with_columns(pl.when(seen).then(pl.lit(True)).alias("seen"))
        )
        costed = (
            with_ksm_cost(rows, m, zero_free)
            .filter(pl.col("cost") > 0)
            .join(told_pids.with_columns(pl.lit(True).alias("told")), on="pid", how="left")
            .with_columns(pl.when(pl.col("told")).then(pl.col("gpa")).alias("gpa"))
            .group_by("pid", "part", "block", "gpa")
            .agg(pl.col("cost").sum())
            .collect()
        )
        parts = costed.partition_by("pid", as_dict=True)
        empty = costed.clear()
        for p in batch:
            out[p] = cost_summary(p, "ksm", parts.get((p,), empty), told.get(p))
    return out


# Guest pages costed at once. The costing holds about 200 bytes per page of the guests it
# costs together (measured on 100 guests, 80 M pages), so a host of many large guests is
# costed a batch of guests at a time: at most this many guest pages (38 GiB of guest RAM).
BATCH_PAGES = 10_000_000


def guest_batches(maps: Mapping[int, pl.DataFrame], limit: int | None = None) -> list[list[int]]:
    """The guests of ``maps`` (their gpa maps) in batches of at most ``limit`` guest pages
    (``BATCH_PAGES``), in their order; a guest larger than that is a batch of its own."""
    limit = BATCH_PAGES if limit is None else limit
    batches: list[list[int]] = []
    size = 0
    for pid, gm in maps.items():
        if not batches or size + gm.height > limit:
            batches.append([])
            size = 0
        batches[-1].append(pid)
        size += gm.height
    return batches


def vm_device_costs(f: Frames, maps: Mapping[int, pl.DataFrame]) -> dict[int, pl.DataFrame]:
    """``device_costs`` of each guest of ``maps``, by PID: the guests' pages read once."""
    assert f.pages is not None
    pids = list(maps)
    if not pids:
        return {}
    pages = (
        f.pages.filter(pl.col("present") & ~is_zero_page() & _of_pids(pids))
        .select("pid", pl.col("vaddr").alias("hva"), "mapcount", "pfn")
        .collect()
    )
    parts = pages.partition_by("pid", as_dict=True, include_key=False)
    empty = pages.clear().drop("pid")
    main = guests_main_blocks(f, pids)
    return {pid: costs_of_devices(maps[pid], main[pid], parts.get((pid,), empty)) for pid in pids}


__all__ = ["guest_maps", "vm_device_costs", "vm_incremental_costs", "vm_uss"]
