"""Which mappings of a QEMU process hold its guest's main RAM, and what backs them.

Guest RAM is one mapping per RAM backend (QEMU's default ``pc.ram``, or each
``memory-backend-*`` object), of exactly the backend's size (``-m`` for the default): an
anonymous mapping, a memfd, a file in /dev/shm, a file on hugetlbfs, or any regular file.
The TCG translation cache can be as large, but it is executable; guest RAM never is.
Whatever backs it, guest RAM is the guest's memory: the analyses count it as anonymous
(docs/metrics.md), with the backing shown beside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from dedupx.model.backing import ksm_barrier, vma_backing, vma_page_size
from dedupx.qemu.cmdline import QemuConfig, parse_qemu_cmdline

RAM_BACKINGS = ("anon", "shmem", "hugetlb", "file")


def ram_sizes(cfg: QemuConfig) -> list[int]:
    """The sizes of the guest's RAM mappings: its memory backends', else ``-m``."""
    sizes = [b.size for b in cfg.backends if b.size]
    return sizes or [cfg.mem_bytes]


def guest_ram_rows(cfg: QemuConfig, vmas: pl.DataFrame) -> pl.DataFrame:
    """The VMAs (of one QEMU process) that hold guest RAM, with ``backing``,
    ``page_size`` and ``ksm_barrier`` (see dedupx.model.backing)."""
    return _ram_rows(ram_sizes(cfg), vmas)


def _ram_rows(sizes: list[int], vmas: pl.DataFrame) -> pl.DataFrame:
    """``guest_ram_rows`` of QEMU processes whose RAM mappings have these ``sizes``."""
    schema = vmas.columns
    return vmas.with_columns(
        vma_backing().alias("backing"),
        vma_page_size(schema).alias("page_size"),
        ksm_barrier().alias("ksm_barrier"),
    ).filter(
        (pl.col("end") - pl.col("start")).is_in(sizes)
        & ~pl.col("perms").str.contains("x")
        & pl.col("backing").is_in(RAM_BACKINGS)
    )


def guest_ram_vmas(processes: pl.LazyFrame, vmas: pl.LazyFrame) -> pl.DataFrame:
    """``pid``, ``vma_id`` of every QEMU process's guest-RAM mappings in a capture."""
    guests = processes.filter(pl.col("kind") == "vm").select("pid", "cmdline").collect()
    schema = {"pid": pl.UInt32, "vma_id": pl.UInt32}
    if guests.height == 0:
        return pl.DataFrame(schema=schema)
    # Guests mostly have RAM of one size: those are looked for together.
    by_sizes: dict[tuple[int, ...], list[int]] = {}
    for pid, argv in guests.iter_rows():
        by_sizes.setdefault(tuple(ram_sizes(parse_qemu_cmdline(list(argv)))), []).append(pid)
    mine = vmas.filter(pl.col("pid").is_in(guests["pid"].to_list())).collect()
    parts = [
        _ram_rows(list(sizes), mine.filter(pl.col("pid").is_in(pids))).select("pid", "vma_id")
        for sizes, pids in by_sizes.items()
    ]
    return pl.concat(parts).cast(schema)  # type: ignore[arg-type]


def with_backing(layout: pl.DataFrame, vmas: pl.DataFrame) -> pl.DataFrame:
    """A gpa map or layout (``hva`` per guest page, one process) with ``backing``: what backs
    the host mapping holding each guest page (null where no mapping holds it)."""
    spans = (
        vmas.select("start", "end", vma_backing().alias("backing"))
        .sort("start")
        .with_columns(pl.col("start").cast(pl.UInt64))
    )
    joined = (
        layout.with_row_index("_row")
        .sort("hva")
        .join_asof(spans, left_on="hva", right_on="start", strategy="backward")
        .with_columns(
            pl.when(pl.col("hva") < pl.col("end")).then(pl.col("backing")).alias("backing")
        )
        .sort("_row")
    )
    return joined.select(*layout.columns, "backing")


def describe_ram(cfg: QemuConfig, vmas: pl.DataFrame) -> dict[str, Any]:
    """What backs a guest's RAM, for reports: ``backing`` (``anon``, ``shmem``, ``hugetlb``,
    ``file``; several joined by "+"), ``huge_page_size`` (hugetlb only), ``paths`` of its
    mappings, ``shared``, ``prealloc`` (asked on QEMU's command line), ``mem_merge`` (what
    QEMU asked: whether it marks guest RAM MADV_MERGEABLE), ``ksm_can_merge`` and
    ``ksm_barrier`` (why not: "hugetlb", "shared backend", "mem-merge=off", "not
    MADV_MERGEABLE"; null when it can)."""
    rows = guest_ram_rows(cfg, vmas)
    backings = sorted(set(rows["backing"])) if rows.height else []
    huge = rows.filter(pl.col("backing") == "hugetlb")["page_size"]
    barriers = [b for b in rows["ksm_barrier"] if b]
    mergeable = rows.height > 0 and bool(rows["mergeable"].all())
    barrier: str | None
    if barriers:
        barrier = sorted(set(barriers))[0]
    elif not cfg.mem_merge:
        barrier = "mem-merge=off"
    elif rows.height and not mergeable:
        barrier = "not MADV_MERGEABLE"
    else:
        barrier = None
    return {
        "backing": "+".join(backings) or None,
        "huge_page_size": int(huge.max()) if huge.len() else None,  # type: ignore[arg-type]
        "paths": sorted({p for p in rows["path"] if p}),
        "shared": any(b.share for b in cfg.backends) or "shmem" in backings,
        "prealloc": cfg.mem_prealloc,
        "mem_merge": cfg.mem_merge,
        "ksm_can_merge": barrier is None and rows.height > 0,
        "ksm_barrier": barrier,
    }


def hugetlbfs_mounts(proc_root: str = "/proc") -> list[str]:
    """Where hugetlbfs is mounted (from the mount table of ``proc_root``'s init)."""
    try:
        text = Path(proc_root, "1", "mounts").read_text()
    except OSError:
        return []
    return [
        f[1]
        for f in (line.split() for line in text.splitlines())
        if len(f) > 2 and f[2] == "hugetlbfs"
    ]


def cmdline_ksm_barrier(cfg: QemuConfig, hugetlbfs: list[str]) -> str | None:
    """Why KSM cannot merge the guest's RAM, by its command line alone (``dedupx vms``
    reads no mappings): "hugetlb" (a backend or -mem-path on a hugetlbfs mount, or a
    memfd with hugetlb=on), "shared backend" (share=on; memfd shares by default),
    "mem-merge=off"; None when KSM may."""

    def on_hugetlbfs(path: str | None) -> bool:
        return path is not None and any(
            path == m or path.startswith(m.rstrip("/") + "/") for m in hugetlbfs
        )

    if on_hugetlbfs(cfg.mem_path) or any(b.hugetlb or on_hugetlbfs(b.path) for b in cfg.backends):
        return "hugetlb"
    if any(b.share for b in cfg.backends):
        return "shared backend"
    if not cfg.mem_merge or (cfg.backends and not all(b.merge for b in cfg.backends)):
        return "mem-merge=off"
    return None


def backing_label(ram: dict[str, Any]) -> str:
    """One line for a report: "hugetlb 2 MiB, shared, preallocated"."""
    if not ram.get("backing"):
        return "not found"
    parts = [str(ram["backing"])]
    if ram.get("huge_page_size"):
        size = int(ram["huge_page_size"])
        parts[0] += f" {size >> 30} GiB" if size >= 1 << 30 else f" {size >> 20} MiB"
    if ram.get("shared"):
        parts.append("shared")
    if ram.get("prealloc"):
        parts.append("preallocated")
    return ", ".join(parts)


__all__ = [
    "RAM_BACKINGS",
    "backing_label",
    "cmdline_ksm_barrier",
    "describe_ram",
    "guest_ram_rows",
    "guest_ram_vmas",
    "hugetlbfs_mounts",
    "ram_sizes",
    "with_backing",
]
