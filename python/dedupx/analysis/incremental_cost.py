"""What a guest costs, two ways (docs/metrics.md):

- its **USS** (``uss_breakdown``): the frames its QEMU process maps and no other process
  maps, as they stand in the capture, split by cause: QEMU's own memory and guest RAM (by
  RAM block, and by what the guest says of each page when told); and the content view,
  its distinct contents found nowhere else;
- its **incremental cost** (``incremental_cost``, the study's Figures 6.3 and 6.4): what
  one more such guest adds given everything else present, once a merging policy has done
  its work (KSM as configured by default), predicted from one capture whether KSM has run
  or not. With KSM converged, it is what the guest's USS becomes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from dedupx.analysis.density import use_zero_pages
from dedupx.analysis.hashed_frames import hashed_frames
from dedupx.analysis.ksm import max_page_sharing
from dedupx.exceptions import NotAGuest, UsageError
from dedupx.model.content_key import unique_by_frame
from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.page_classes import is_ksm, is_ksm_eligible, is_zero_page
from dedupx.model.row_keys import process_key, vma_key
from dedupx.model.units import PAGE_SIZE, pages_to_mib
from dedupx.qemu.cmdline import is_qemu, parse_qemu_cmdline
from dedupx.qemu.gpa_map import gpa_map, layout_from_cmdline, main_ram_blocks, with_host_frames
from dedupx.sources.guest_view import GuestView


def guest_ram_map(f: Frames, pid: int) -> pl.DataFrame:
    """The gpa map of guest ``pid``: the capture's own (``f.gpa_map``) when it has one for
    that PID, else made from its command line and VMAs."""
    f.require("the cost of a guest", "pages", "vmas", "processes")
    assert f.pages is not None and f.vmas is not None and f.processes is not None
    if f.gpa_map is not None:
        gm = f.gpa_map.filter(pl.col("pid") == pid).collect()
        if gm.height and "pfn" in gm.columns:
            return gm
        if gm.height:  # a snapshot keeps the layout: the host frames are in its pages
            return with_host_frames(gm, f.pages.filter(pl.col("pid") == pid).collect())
    procs = f.processes.filter(pl.col("pid") == pid).collect()
    if procs.height == 0:
        raise NotAGuest(f"PID {pid} is not in this capture")
    argv = list(procs["cmdline"][0])
    if not is_qemu(argv):
        raise NotAGuest(f"PID {pid} ({procs['comm'][0]}) is not a QEMU guest")
    vmas = f.vmas.filter(pl.col("pid") == pid).collect()
    pages = f.pages.filter(pl.col("pid") == pid).collect()
    return gpa_map(pid, layout_from_cmdline(parse_qemu_cmdline(argv), vmas), pages)


def by_guest_class(ram: pl.DataFrame, guest_frames: pl.DataFrame, pages: pl.Expr) -> dict[str, int]:
    """Guest-RAM rows (with ``gpa``) counted by what the guest says of each page (``pages``
    aggregates a class's rows), "not told" where it said nothing."""
    told = ram.with_columns((pl.col("gpa") // PAGE_SIZE).alias("gfn")).join(
        guest_frames.select("gfn", "class"), on="gfn", how="left"
    )
    return dict(
        told.with_columns(pl.col("class").fill_null("not told"))
        .group_by("class")
        .agg(pages)
        .sort("class")
        .iter_rows()
    )


def main_blocks(f: Frames, pid: int) -> list[str]:
    """The RAM blocks that hold guest ``pid``'s main memory (the others are devices')."""
    return guests_main_blocks(f, [pid])[pid]


def guests_main_blocks(f: Frames, pids: Sequence[int]) -> dict[int, list[str]]:
    """``main_blocks`` of each guest of ``pids``, by PID: their command lines read once."""
    assert f.processes is not None
    argv = dict(
        f.processes.filter(pl.col("pid").is_in(list(pids)))
        .select("pid", "cmdline")
        .collect()
        .iter_rows()
    )
    return {pid: main_ram_blocks(parse_qemu_cmdline(list(argv.get(pid) or []))) for pid in pids}


def told_frames(
    pid: int, guest: GuestView | None, guest_frames: pl.DataFrame | None
) -> pl.DataFrame | None:
    """What the guest says of its pages, from its view (``guest``, as read_guest_agent or
    read_guest_qga give it) or as a ``guest_frames`` frame: one of them, or neither."""
    if guest is not None and guest_frames is not None:
        raise UsageError("give guest= or guest_frames=, not both")
    if guest is not None and not isinstance(guest, GuestView):
        raise UsageError(
            f"guest= takes a GuestView (dedupx.read_guest_agent or read_guest_qga), "
            f"not {type(guest).__name__}"
        )
    return guest.guest_frames(pid) if guest is not None else guest_frames


def uss_breakdown(
    data: Frames | HasFrames,
    pid: int,
    guest_frames: pl.DataFrame | None = None,
    *,
    guest: GuestView | None = None,
) -> dict[str, Any]:
    """The guest's USS as it stands, by cause. ``pages``: the guest's exclusive PFNs;
    ``qemu_pages`` and ``guest_ram_pages`` of them; ``guest_ram_by_block``;
    ``guest_ram_by_class`` (by what the guest says of each page: from its view ``guest``
    or from ``guest_frames``' ``class`` column by gfn, "not told" where the guest said
    nothing) and ``guest_not_backed`` (guest pages
    with no host page at all); ``unique_contents`` (distinct contents found nowhere else).
    The guest map is the capture's (``Frames.with_gpa_map``) or made from its command line.
    """
    guest_frames = told_frames(pid, guest, guest_frames)
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
    frames = hashed_frames(f)
    mine_h = frames.join(pages.filter(pl.col("pid") == pid).select("pfn").unique(), on="pfn")
    rest_h = frames.join(mine_h.select("pfn"), on="pfn", how="anti").select("hash").unique()
    unique = (
        mine_h.select("hash")
        .unique()
        .join(rest_h, on="hash", how="anti")
        .select(pl.len())
        .collect()
        .item()
    )
    return uss_summary(pid, mine, gm, main_blocks(f, pid), guest_frames, unique)


def uss_summary(
    pid: int,
    mine: pl.DataFrame,
    gm: pl.DataFrame,
    main_blocks: list[str],
    guest_frames: pl.DataFrame | None,
    unique_contents: int,
) -> dict[str, Any]:
    """``uss_breakdown``'s figures from the guest's exclusive pages (``mine``: ``pfn``,
    ``vaddr``), its gpa map ``gm`` and the names of its ``main_blocks``."""
    in_main = pl.col("block").is_in(main_blocks)
    exclusive = mine.join(
        gm.select(pl.col("hva").alias("vaddr"), "gpa", "block"), on="vaddr", how="left"
    ).with_columns(in_main.fill_null(False).alias("main"))
    main, frames = pl.col("main"), pl.col("pfn").n_unique()
    out: dict[str, Any] = {"pid": pid}
    out |= exclusive.select(
        frames.alias("pages"),
        pl.col("pfn").filter(main).n_unique().alias("guest_ram_pages"),
        pl.col("pfn").filter(~main).n_unique().alias("qemu_pages"),
    ).row(0, named=True)
    blocks = (
        exclusive.filter(pl.col("block").is_not_null())
        .group_by("main", "block")
        .agg(frames)
        .sort("block")
    )
    out["guest_ram_by_block"] = {b: n for m, b, n in blocks.iter_rows() if m}
    out["device_ram_by_block"] = {b: n for m, b, n in blocks.iter_rows() if not m}
    out["guest_not_backed"] = gm.filter(in_main & pl.col("pfn").is_null()).height
    ram = exclusive.filter(main)
    if guest_frames is not None:
        out["guest_ram_by_class"] = by_guest_class(ram, guest_frames, pl.col("pfn").n_unique())
    out["unique_contents"] = unique_contents
    out["mib"] = pages_to_mib(out["pages"])
    return out


QEMU_PARTS = {
    "heap": "QEMU heap",
    "stack": "QEMU stack",
    "anon": "QEMU anonymous (thread stacks, TCG code, buffers)",
    "file": "QEMU binary, libraries and files",
    "shmem": "QEMU shared memory",
    "special": "QEMU other",
}


def cost_rows(f: Frames, gm: pl.DataFrame, main: Mapping[int, list[str]]) -> pl.LazyFrame:
    """The guests' present pages (the zero page aside), each with its VMA, its guest page
    (if any) and what a policy may merge it with: ``copy`` (it stands for a page of its
    own: each mapping of a KSM page, the first mapping of a frame only this process maps),
    ``eligible`` (KSM could merge it) and ``part`` (what it is to QEMU or the guest). The
    guests are the PIDs of ``main`` (PID -> the blocks of its main RAM); ``gm`` holds
    their gpa maps."""
    assert f.pages is not None and f.vmas is not None
    # A filter on the PIDs, not a join: it skips other processes' row groups of Parquet.
    mine = f.pages.filter(pl.col("present") & ~is_zero_page() & pl.col("pid").is_in(list(main)))
    vmas = f.vmas.select(vma_key(), "mergeable", "kind")
    ram = gm.lazy().select(process_key("hva").alias("pid_vaddr"), "gpa", "block")
    mine = (
        mine.with_columns(vma_key(), process_key("vaddr"))
        .join(vmas, on="vma_key", how="left")
        .join(ram, on="pid_vaddr", how="left")
        .drop("vma_key", "pid_vaddr")
    )
    # (A window on the two columns is faster than on one 128-bit key made of them.)
    frame = ["pid", "pfn"]
    m_v = pl.len().over(frame)
    first = pl.col("vaddr") == pl.col("vaddr").min().over(frame)
    exclusive = pl.col("mapcount") <= m_v
    part = (
        pl.when(_in_main(main))
        .then(pl.lit("guest RAM"))
        .when(pl.col("block").is_not_null())
        .then(pl.format("device RAM {}", pl.col("block")))
        .otherwise(pl.col("kind").replace_strict(QEMU_PARTS, default="QEMU other"))
    )
    return mine.with_columns(
        (is_ksm() | (exclusive & first)).alias("copy"),
        (is_ksm() | is_ksm_eligible(pl.col("mergeable").fill_null(False))).alias("eligible"),
        pl.coalesce(pl.col("hash"), unique_by_frame(pl.col("pfn"))).alias("content"),
        part.alias("part"),
        pl.col("zero").fill_null(False),
    ).filter(pl.col("copy"))


def _in_main(main: Mapping[int, list[str]]) -> pl.Expr:
    """A row of one of ``main``'s guests whose ``block`` is one of that guest's main RAM
    blocks. Guests mostly name their main RAM alike: one test per distinct set of names,
    not a join."""
    by_blocks: dict[tuple[str, ...], list[int]] = {}
    for pid, blocks in main.items():
        by_blocks.setdefault(tuple(blocks), []).append(pid)
    out = pl.lit(False)
    for names, pids in by_blocks.items():
        out = out | (pl.col("pid").is_in(pids) & pl.col("block").is_in(list(names)))
    return out.fill_null(False)


def with_ksm_cost(rows: pl.LazyFrame, m: int, zero_free: bool) -> pl.LazyFrame:
    """``cost_rows``'s rows with what each costs under KSM (``cost``), ``seen`` being
    non-null where another process holds the content KSM-eligibly. Equal eligible copies
    of the guest's own merge into ceil(copies / m) KSM pages (none if another process
    holds the content: they join its KSM page); the first of them in address order carry
    the cost. Rows come out in no particular order."""
    group = ["pid", "content", "eligible"]
    rows = rows.with_columns(pl.len().over(group).alias("_n"))
    # Ranking every group by address took 90% of the costing; a group of at most m copies
    # keeps one page, its first, found by a minimum. Only larger groups (zero-filled
    # guest pages, mostly) are ranked.
    small = rows.filter(pl.col("_n") <= m).with_columns(
        (pl.col("vaddr") == pl.col("vaddr").min().over(group)).alias("_kept")
    )
    large = rows.filter(pl.col("_n") > m).with_columns(
        (pl.col("vaddr").rank("ordinal").over(group) <= (pl.col("_n") + m - 1) // m).alias("_kept")
    )
    merged_cost = pl.col("seen").is_null() & pl.col("_kept")
    if zero_free:
        merged_cost = merged_cost & ~pl.col("zero")
    cost = pl.when(pl.col("eligible")).then(merged_cost.cast(pl.Int64)).otherwise(1)
    return pl.concat([small, large]).with_columns(cost.alias("cost")).drop("_n", "_kept")


def _elsewhere(f: Frames, pid: int, eligible_only: bool) -> pl.LazyFrame:
    """Contents some other process holds (KSM-eligible copies only, for KSM), or any frame
    of the capture that is not the guest's alone (for perfect merging)."""
    assert f.pages is not None and f.vmas is not None
    if eligible_only:
        others = f.pages.filter((pl.col("pid") != pid) & pl.col("present"))
        others = others.join(
            f.vmas.select("pid", "vma_id", "mergeable"), on=["pid", "vma_id"], how="left"
        ).filter(is_ksm() | is_ksm_eligible(pl.col("mergeable").fill_null(False)))
        return others.select(pl.col("hash").alias("content")).drop_nulls().unique()
    own = (
        f.pages.filter(pl.col("present"))
        .group_by("pfn")
        .agg((pl.col("pid") == pid).all().alias("only_v"))
        .filter(pl.col("only_v"))
        .select("pfn")
    )
    return (
        hashed_frames(f)
        .join(own, on="pfn", how="anti")
        .select(pl.col("hash").alias("content"))
        .unique()
    )


def incremental_cost(
    data: Frames | HasFrames,
    pid: int,
    guest_frames: pl.DataFrame | None = None,
    *,
    guest: GuestView | None = None,
    policy: str = "ksm",
    max_sharing: int | None = None,
    zero_pages_free: bool | None = None,
) -> dict[str, Any]:
    """What guest ``pid`` costs given everything else in the capture, once ``policy``
    (``none``, ``ksm`` as configured on this host, ``perfect``) has merged what it can:
    ``pages`` (and ``mib``), split ``by_part`` (guest RAM, QEMU heap, stacks, libraries,
    ...), guest RAM ``by_block`` and, with the guest's view ``guest`` (or its
    ``guest_frames``), ``by_class`` (what the guest says of each page: anon, file, free,
    kernel, or "not told")."""
    guest_frames = told_frames(pid, guest, guest_frames)
    if policy not in ("none", "ksm", "perfect"):
        raise UsageError(f"policy must be none, ksm or perfect, not {policy!r}")
    f = as_frames(data)
    gm = guest_ram_map(f, pid)
    rows = cost_rows(f, gm, {pid: main_blocks(f, pid)})
    if policy == "none":
        rows = rows.with_columns(pl.lit(1).alias("cost"))
    elif policy == "perfect":
        rows = rows.join(
            _elsewhere(f, pid, eligible_only=False).with_columns(pl.lit(True).alias("seen")),
            on="content",
            how="left",
        )
        first = pl.col("vaddr") == pl.col("vaddr").min().over("content")
        rows = rows.with_columns((pl.col("seen").is_null() & first).cast(pl.Int64).alias("cost"))
    else:
        m = max_sharing or max_page_sharing()
        zero_free = use_zero_pages() if zero_pages_free is None else zero_pages_free
        rows = rows.join(
            _elsewhere(f, pid, eligible_only=True).with_columns(pl.lit(True).alias("seen")),
            on="content",
            how="left",
        )
        rows = with_ksm_cost(rows, m, zero_free)
    costed = rows.filter(pl.col("cost") > 0).collect()
    return cost_summary(pid, policy, costed, guest_frames)


def cost_summary(
    pid: int, policy: str, costed: pl.DataFrame, guest_frames: pl.DataFrame | None
) -> dict[str, Any]:
    """``incremental_cost``'s figures from the guest's ``cost_rows`` that cost (``cost``)."""
    ram = costed.filter(pl.col("part") == "guest RAM")
    out: dict[str, Any] = {
        "pid": pid,
        "policy": policy,
        "pages": int(costed["cost"].sum()),
        "guest_ram_pages": int(ram["cost"].sum()),
        "qemu_pages": int(costed.filter(pl.col("part") != "guest RAM")["cost"].sum()),
        "by_part": dict(costed.group_by("part").agg(pl.col("cost").sum()).sort("part").iter_rows()),
        "guest_ram_by_block": dict(
            ram.group_by("block").agg(pl.col("cost").sum()).sort("block").iter_rows()
        ),
    }
    if guest_frames is not None:
        out["guest_ram_by_class"] = by_guest_class(ram, guest_frames, pl.col("cost").sum())
    out["mib"] = pages_to_mib(out["pages"])
    return out


__all__ = ["QEMU_PARTS", "guest_ram_map", "incremental_cost", "uss_breakdown"]
