"""Everything `dedupx scan` says about one process, as one plain dict (what --json prints)."""

from __future__ import annotations

from typing import Any

import polars as pl

from dedupx.analysis.duplicates import SAVING_COLUMNS, duplicates, top_duplicates
from dedupx.analysis.footprint import PAGE_SIZE, footprint
from dedupx.guest_agent import GuestView
from dedupx.kpageflags import (
    KPF_ANON,
    KPF_KSM,
    KPF_THP,
    flag,
    is_shmem,
    is_zero_page,
)
from dedupx.process_scan import ProcessScan

MIB = 1024 * 1024


def page_classes(scan: ProcessScan) -> dict[str, int]:
    """Mapped pages by class (a page mapped twice counts twice, as in RSS)."""
    p = scan.pages
    present = pl.col("present")
    row = p.select(
        (present & flag(KPF_ANON)).sum().alias("anon"),
        (present & is_shmem()).sum().alias("shmem"),
        (present & ~flag(KPF_ANON) & ~is_shmem() & ~is_zero_page()).sum().alias("file"),
        (present & is_zero_page()).sum().alias("zero_page"),
        (present & pl.col("zero").fill_null(False) & ~is_zero_page()).sum().alias("zero_content"),
        (present & flag(KPF_KSM)).sum().alias("ksm"),
        (present & flag(KPF_THP)).sum().alias("thp"),
        pl.col("swapped").sum().alias("swapped"),
    )
    return {k: int(v or 0) for k, v in row.row(0, named=True).items()}


def coverage(scan: ProcessScan) -> dict[str, Any]:
    s = scan.stats
    distinct = s.get("distinct_pfns", 0)
    return {
        "source": "process_vm_readv",
        "present_pages": s.get("present_pages", 0),
        "distinct_pfns": distinct,
        "hashed_pfns": s.get("hashed_pfns", 0),
        "unreadable_pfns": s.get("unreadable_pfns", 0),
        "vanished_pfns": s.get("vanished_pfns", 0),
        "hashed_share": (s.get("hashed_pfns", 0) / distinct) if distinct else 1.0,
    }


def guest_summary(
    scan: ProcessScan,
    view: GuestView | None = None,
    qmp: str | None = None,
    ept: str | None = None,
) -> dict[str, Any] | None:
    """For a QEMU process: its configuration and how its guest-physical pages map to host
    pages; None for other processes. A map that cannot be made is reported, not raised."""
    from dedupx.exceptions import DedupxError
    from dedupx.qemu.cmdline import is_qemu, parse_qemu_cmdline

    if not is_qemu(scan.cmdline):
        return None
    cfg = parse_qemu_cmdline(scan.cmdline)
    out: dict[str, Any] = {
        "name": cfg.name,
        "ram_bytes": cfg.mem_bytes,
        "machine": cfg.machine,
        "accel": cfg.accel,
        "mem_merge": cfg.mem_merge,
        "backends": [b.__dict__ for b in cfg.backends],
        "drives": [str(d) for d in cfg.drives],
    }
    from dedupx.analysis.dedup_matrix import dedup_matrix

    # Within the guest only: the host and other VMs are in a host snapshot (dedupx analyze).
    out["dedup_matrix"] = dedup_matrix(scan, scan.pid).to_dicts()
    if view is not None:
        from dedupx.guest_agent import inactive_bloat

        out["guest_classes"] = dict(view.frames.group_by("class").len().sort("class").iter_rows())
        out["bloat"] = inactive_bloat(view)
    try:
        gm = scan.guest_map(qmp=qmp, ept=ept) if qmp or ept else scan.gpa_map
    except DedupxError as e:
        out["gpa_map_error"] = str(e)
        return out
    backed = gm.filter(pl.col("pfn").is_not_null())
    out["gpa_map_source"] = gm["source"][0] if gm.height else None
    out["guest_pages"] = gm.height
    out["backed_pages"] = backed.height
    out["blocks"] = {
        r["block"]: {"pages": r["pages"], "backed": r["backed"]}
        for r in gm.group_by("block")
        .agg(pl.len().alias("pages"), pl.col("pfn").is_not_null().sum().alias("backed"))
        .sort("block")
        .iter_rows(named=True)
    }
    return out


def process_report(
    scan: ProcessScan,
    top: int = 10,
    guest: GuestView | None = None,
    qmp: str | None = None,
    ept: str | None = None,
) -> dict[str, Any]:
    fp_rows = footprint(scan).to_dicts()
    fp = fp_rows[0] if fp_rows else {}
    dup = duplicates(scan).row(0, named=True)
    tops = top_duplicates(scan, top).to_dicts()
    return {
        "pid": scan.pid,
        "comm": scan.comm,
        "cmdline": scan.cmdline,
        "page_size": PAGE_SIZE,
        "rss_bytes": fp.get("rss_bytes", 0),
        "pss_bytes": fp.get("pss_bytes", 0),
        "uss_bytes": fp.get("uss_bytes", 0),
        "swap_bytes": fp.get("swap_bytes", 0),
        "footprint": {k: v for k, v in fp.items() if k != "pid"},
        "page_classes": page_classes(scan),
        "duplicates": dup,
        "duplicates_mib": {k: dup[k] * PAGE_SIZE / MIB for k in (*SAVING_COLUMNS, "ksm_reachable")},
        "top_duplicates": tops,
        "coverage": coverage(scan),
        "guest": guest_summary(scan, guest, qmp, ept),
        "vmas": scan.vmas.height,
        "threads": scan.stats.get("threads", 0),
    }
