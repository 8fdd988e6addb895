"""What `dedupx analyze` says about a snapshot, as one plain dict (what --json prints)."""

from __future__ import annotations

from typing import Any

import polars as pl

from dedupx.analysis.duplicates import SAVING_COLUMNS, duplicates, top_duplicates
from dedupx.analysis.footprint import PAGE_SIZE, footprint
from dedupx.guest_agent import GuestView
from dedupx.snapshot import Snapshot

MIB = 1024 * 1024


def group_footprints(fp: pl.DataFrame, processes: pl.DataFrame) -> pl.DataFrame:
    """Footprint per group: each VM on its own, containers by cgroup, the rest as host."""
    leaf = pl.col("cgroup").str.split("\n").list.last().str.split(":").list.last()
    group = (
        pl.when(pl.col("kind") == "vm")
        .then(pl.format("vm {} ({})", pl.col("pid"), pl.col("comm")))
        .when(pl.col("kind") == "container")
        .then(pl.format("container {}", leaf))
        .otherwise(pl.lit("host processes"))
    )
    sums = ["rss_bytes", "pss_bytes", "uss_bytes", "swap_bytes"]
    return (
        fp.join(processes.select("pid", "comm", "kind", "cgroup"), on="pid", how="left")
        .with_columns(group.alias("group"))
        .group_by("group", "kind")
        .agg(pl.len().alias("processes"), *(pl.col(c).sum() for c in sums))
        .sort("pss_bytes", descending=True)
    )


def vm_reports(
    snap: Snapshot, procs: pl.DataFrame, guests: dict[int, GuestView] | None = None
) -> list[dict[str, Any]]:
    """Per VM: its dedup matrix, incremental cost given the rest, and with a guest agent
    file, its pages by guest class and its inactive-LRU bloat."""
    from dedupx.analysis.dedup_matrix import dedup_matrix
    from dedupx.analysis.incremental_cost import incremental_cost
    from dedupx.exceptions import DedupxError
    from dedupx.guest_agent import inactive_bloat

    out = []
    for pid, comm in procs.filter(pl.col("kind") == "vm").select("pid", "comm").iter_rows():
        r: dict[str, Any] = {"pid": pid, "comm": comm}
        view = (guests or {}).get(pid)
        r["dedup_matrix"] = dedup_matrix(snap, pid).to_dicts()
        try:
            r["incremental_cost"] = incremental_cost(
                snap, pid, guest_frames=view.guest_frames(pid) if view else None
            )
        except DedupxError as e:
            r["incremental_cost_error"] = str(e)
        if view is not None:
            r["guest_classes"] = dict(view.frames.group_by("class").len().sort("class").iter_rows())
            r["bloat"] = inactive_bloat(view)
        out.append(r)
    return out


def snapshot_report(
    snap: Snapshot, top: int = 10, guests: dict[int, GuestView] | None = None
) -> dict[str, Any]:
    m = snap.manifest
    report: dict[str, Any] = {
        "path": str(snap.path),
        "kind": m.get("kind"),
        "source": snap.source,
        "created": m.get("created"),
        "hostname": m.get("hostname"),
        "kernel": m.get("kernel"),
        "coverage": m.get("coverage", {}),
    }
    image = "kpageflags" not in snap.frames.collect_schema().names()
    dup = duplicates(snap).row(0, named=True)
    if image:  # no flags: anon and file cannot be told apart
        for k in ("anon_anon", "file_file", "anon_file", "ksm_reachable"):
            dup[k] = None
    report["duplicates"] = dup
    report["duplicates_mib"] = {
        k: (dup[k] * PAGE_SIZE / MIB if dup[k] is not None else None)
        for k in (*SAVING_COLUMNS, "ksm_reachable")
    }
    report["top_duplicates"] = top_duplicates(snap, top).to_dicts()
    if snap.pages is not None and snap.processes is not None:
        fp = footprint(snap)
        procs = snap.processes.collect()
        per_proc = (
            fp.join(procs.select("pid", "comm", "kind"), on="pid", how="left")
            .sort("pss_bytes", descending=True)
            .select("pid", "comm", "kind", "rss_bytes", "pss_bytes", "uss_bytes", "swap_bytes")
        )
        report["processes"] = per_proc.head(top).to_dicts()
        report["process_count"] = procs.height
        report["groups"] = group_footprints(fp, procs).to_dicts()
        report["total_pss_bytes"] = int(fp["pss_bytes"].sum())
        report["vms"] = vm_reports(snap, procs, guests)
    return report
