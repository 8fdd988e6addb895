"""What one more guest costs given the rest of the host (the study's Figures 6.3 and 6.4).

The frame view: PFNs the guest's QEMU process maps and no other process maps, split into
QEMU's own memory and guest RAM (by RAM block); guest RAM further by what the guest says of
each page when ``guest_frames`` (gfn, class) is given. The content view: distinct contents
of the guest's frames that occur nowhere else on the host.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from dedupx.analysis.duplicates import hashed_frames
from dedupx.exceptions import NotAGuest
from dedupx.qemu.cmdline import is_qemu, parse_qemu_cmdline
from dedupx.qemu.gpa_map import gpa_map as build_gpa_map
from dedupx.qemu.gpa_map import layout_from_cmdline

PAGE = 4096


def _lazy(x: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    return x.lazy()


def guest_ram_map(snap: Any, pid: int) -> pl.DataFrame:
    """The gpa map of guest ``pid`` from what a snapshot holds (its command line and VMAs)."""
    procs = _lazy(snap.processes).filter(pl.col("pid") == pid).collect()
    if procs.height == 0:
        raise NotAGuest(f"PID {pid} is not in this snapshot")
    argv = procs["cmdline"][0].split(" ")
    if not is_qemu(argv):
        raise NotAGuest(f"PID {pid} ({procs['comm'][0]}) is not a QEMU guest")
    vmas = _lazy(snap.vmas).filter(pl.col("pid") == pid).collect()
    pages = _lazy(snap.pages).filter(pl.col("pid") == pid).collect()
    layout = layout_from_cmdline(parse_qemu_cmdline(argv), vmas)
    return build_gpa_map(pid, layout, pages)


def incremental_cost(
    snap: Any,
    pid: int,
    gpa_map: pl.DataFrame | None = None,
    guest_frames: pl.DataFrame | None = None,
) -> dict[str, Any]:
    """``pages``: the guest's exclusive PFNs; ``qemu_pages`` and ``guest_ram_pages`` of them;
    ``guest_ram_by_block``; ``guest_ram_by_class`` (from ``guest_frames``' ``class`` column
    by gfn, "not told" where the guest said nothing) and ``guest_not_backed`` (guest pages
    with no host page at all); ``unique_contents`` (distinct contents found nowhere else)."""
    gm = gpa_map if gpa_map is not None else guest_ram_map(snap, pid)
    pages = _lazy(snap.pages).filter(pl.col("present"))
    others = pages.filter(pl.col("pid") != pid).select("pfn").unique()
    mine = (
        pages.filter(pl.col("pid") == pid)
        .join(others, on="pfn", how="anti")
        .select("pfn", "vaddr")
        .collect()
    )
    exclusive = mine.join(
        gm.select(pl.col("hva").alias("vaddr"), "gpa", "block"), on="vaddr", how="left"
    )
    ram = exclusive.filter(pl.col("gpa").is_not_null())
    ram_pfns = ram["pfn"].n_unique()
    out: dict[str, Any] = {
        "pid": pid,
        "pages": exclusive["pfn"].n_unique(),
        "guest_ram_pages": ram_pfns,
        "qemu_pages": exclusive.filter(pl.col("gpa").is_null())["pfn"].n_unique(),
        "guest_ram_by_block": dict(
            ram.group_by("block").agg(pl.col("pfn").n_unique()).sort("block").iter_rows()
        ),
        "guest_not_backed": gm.filter(pl.col("pfn").is_null()).height,
    }
    if guest_frames is not None:
        cls = ram.with_columns((pl.col("gpa") // PAGE).alias("gfn")).join(
            guest_frames.select("gfn", "class"), on="gfn", how="left"
        )
        out["guest_ram_by_class"] = dict(
            cls.with_columns(pl.col("class").fill_null("not told"))
            .group_by("class")
            .agg(pl.col("pfn").n_unique())
            .sort("class")
            .iter_rows()
        )
    frames = hashed_frames(snap)
    owners = pages.select("pid", "pfn")
    mine_h = frames.join(owners.filter(pl.col("pid") == pid).select("pfn").unique(), on="pfn")
    rest_h = frames.join(mine_h.select("pfn"), on="pfn", how="anti").select("hash").unique()
    out["unique_contents"] = (
        mine_h.select("hash")
        .unique()
        .join(rest_h, on="hash", how="anti")
        .select(pl.len())
        .collect()
        .item()
    )
    out["mib"] = out["pages"] * PAGE / (1 << 20)
    return out
