"""What one more guest costs given the rest of the host (the study's Figures 6.3 and 6.4).

The frame view: PFNs the guest's QEMU process maps and no other process maps, split into
QEMU's own memory and guest RAM (by RAM block); guest RAM further by what the guest says of
each page when ``guest_frames`` (gfn, class) is given. The content view: distinct contents
of the guest's frames that occur nowhere else on the host.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from dedupx.analysis.hashed_frames import hashed_frames
from dedupx.exceptions import NotAGuest
from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.units import PAGE_SIZE, pages_to_mib
from dedupx.qemu.cmdline import is_qemu, parse_qemu_cmdline
from dedupx.qemu.gpa_map import gpa_map, layout_from_cmdline


def guest_ram_map(f: Frames, pid: int) -> pl.DataFrame:
    """The gpa map of guest ``pid``: the capture's own (``f.gpa_map``) when it has one for
    that PID, else made from its command line and VMAs."""
    f.require("incremental_cost", "pages", "vmas", "processes")
    assert f.pages is not None and f.vmas is not None and f.processes is not None
    if f.gpa_map is not None:
        gm = f.gpa_map.filter(pl.col("pid") == pid).collect()
        if gm.height:
            return gm
    procs = f.processes.filter(pl.col("pid") == pid).collect()
    if procs.height == 0:
        raise NotAGuest(f"PID {pid} is not in this capture")
    argv = list(procs["cmdline"][0])
    if not is_qemu(argv):
        raise NotAGuest(f"PID {pid} ({procs['comm'][0]}) is not a QEMU guest")
    vmas = f.vmas.filter(pl.col("pid") == pid).collect()
    pages = f.pages.filter(pl.col("pid") == pid).collect()
    return gpa_map(pid, layout_from_cmdline(parse_qemu_cmdline(argv), vmas), pages)


def incremental_cost(
    data: Frames | HasFrames, pid: int, guest_frames: pl.DataFrame | None = None
) -> dict[str, Any]:
    """``pages``: the guest's exclusive PFNs; ``qemu_pages`` and ``guest_ram_pages`` of them;
    ``guest_ram_by_block``; ``guest_ram_by_class`` (from ``guest_frames``' ``class`` column
    by gfn, "not told" where the guest said nothing) and ``guest_not_backed`` (guest pages
    with no host page at all); ``unique_contents`` (distinct contents found nowhere else).
    The guest map is the capture's (``Frames.with_gpa_map``) or made from its command line.
    """
    f = as_frames(data)
    gm = guest_ram_map(f, pid)
    assert f.pages is not None
    pages = f.pages.filter(pl.col("present"))
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
    out: dict[str, Any] = {
        "pid": pid,
        "pages": exclusive["pfn"].n_unique(),
        "guest_ram_pages": ram["pfn"].n_unique(),
        "qemu_pages": exclusive.filter(pl.col("gpa").is_null())["pfn"].n_unique(),
        "guest_ram_by_block": dict(
            ram.group_by("block").agg(pl.col("pfn").n_unique()).sort("block").iter_rows()
        ),
        "guest_not_backed": gm.filter(pl.col("pfn").is_null()).height,
    }
    if guest_frames is not None:
        cls = ram.with_columns((pl.col("gpa") // PAGE_SIZE).alias("gfn")).join(
            guest_frames.select("gfn", "class"), on="gfn", how="left"
        )
        out["guest_ram_by_class"] = dict(
            cls.with_columns(pl.col("class").fill_null("not told"))
            .group_by("class")
            .agg(pl.col("pfn").n_unique())
            .sort("class")
            .iter_rows()
        )
    frames = hashed_frames(f)
    mine_h = frames.join(pages.filter(pl.col("pid") == pid).select("pfn").unique(), on="pfn")
    rest_h = frames.join(mine_h.select("pfn"), on="pfn", how="anti").select("hash").unique()
    out["unique_contents"] = (
        mine_h.select("hash")
        .unique()
        .join(rest_h, on="hash", how="anti")
        .select(pl.len())
        .collect()
        .item()
    )
    out["mib"] = pages_to_mib(out["pages"])
    return out


__all__ = ["guest_ram_map", "incremental_cost"]
