"""Everything `dedupx scan` says about one process, as one plain dict (what --json prints)."""

from __future__ import annotations

from typing import Any

import polars as pl

from dedupx.analysis.dedup_matrix import dedup_matrix
from dedupx.analysis.duplicates import SAVING_COLUMNS, duplicates, top_duplicates
from dedupx.analysis.footprint import footprint
from dedupx.analysis.guest_backing import guest_backing
from dedupx.analysis.guest_memory import guest_classes, inactive_bloat
from dedupx.analysis.page_counts import page_counts
from dedupx.model.read_changes import scan_changes
from dedupx.model.units import PAGE_SIZE, pages_to_mib
from dedupx.qemu.cmdline import parse_qemu_cmdline
from dedupx.qemu.ram_backing import describe_ram
from dedupx.sources.guest_view import GuestView
from dedupx.sources.process import ProcessScan


def guest_summary(
    scan: ProcessScan,
    view: GuestView | None = None,
    gpa_map: pl.DataFrame | None = None,
    gpa_map_error: str | None = None,
) -> dict[str, Any] | None:
    """For a QEMU process: its configuration, the dedup matrix within the guest, what the
    guest says of its pages (``view``), and how its guest-physical pages map to host pages
    (``gpa_map``, or why it could not be made); None for other processes."""
    if not scan.is_guest:
        return None
    cfg = parse_qemu_cmdline(scan.cmdline)
    out: dict[str, Any] = {
        "name": cfg.name,
        "ram_bytes": cfg.mem_bytes,
        "machine": cfg.machine,
        "accel": cfg.accel,
        "mem_merge": cfg.mem_merge,
        "ram": describe_ram(cfg, scan.vmas),
        "backends": [b.__dict__ for b in cfg.backends],
        "drives": [str(d) for d in cfg.drives],
    }
    # Within the guest only: the host and other VMs are in a host snapshot (dedupx analyze).
    out["dedup_matrix"] = dedup_matrix(scan, scan.pid).to_dicts()
    if view is not None:
        out["guest_classes"] = guest_classes(view)
        out["bloat"] = inactive_bloat(view)
    if gpa_map is None:
        out["gpa_map_error"] = gpa_map_error or "no guest-physical map"
    else:
        out.update(guest_backing(gpa_map, scan.frames))
    return out


def process_report(
    scan: ProcessScan,
    top: int = 10,
    guest: GuestView | None = None,
    gpa_map: pl.DataFrame | None = None,
    gpa_map_error: str | None = None,
) -> dict[str, Any]:
    frames = scan.to_frames()
    fp_rows = footprint(frames).to_dicts()
    fp = fp_rows[0] if fp_rows else {}
    dup = duplicates(frames).row(0, named=True)
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
        "page_classes": page_counts(frames),
        "duplicates": dup,
        "duplicates_mib": {k: pages_to_mib(dup[k]) for k in (*SAVING_COLUMNS, "ksm_reachable")},
        "top_duplicates": top_duplicates(frames, top).to_dicts(),
        "coverage": frames.provenance.coverage,
        "changed_while_read": scan_changes(scan.stats),
        # Pages whose map count dedupx's own mappings raised, counted as if it were absent.
        "observer_corrected_pfns": int(scan.stats.get("observer_pfns", 0)),
        "guest": guest_summary(scan, guest, gpa_map, gpa_map_error),
        "vmas": scan.vmas.height,
        "threads": scan.stats.get("threads", 0),
    }


__all__ = ["guest_summary", "process_report"]
