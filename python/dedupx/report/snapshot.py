"""What `dedupx analyze` says about a capture, as one plain dict (what --json prints)."""

from __future__ import annotations

from typing import Any

import polars as pl

from dedupx.analysis.containers import containers
from dedupx.analysis.dedup_matrix import group_matrix
from dedupx.analysis.duplicates import SAVING_COLUMNS, duplicates, top_duplicates
from dedupx.analysis.footprint import footprint, group_footprints
from dedupx.analysis.guest_memory import guest_classes, inactive_bloat
from dedupx.analysis.hashed_frames import hashed_frames
from dedupx.analysis.incremental_cost import told_frames
from dedupx.analysis.vm_costs import guest_maps, vm_device_costs, vm_incremental_costs, vm_uss
from dedupx.analysis.vm_matrices import vm_matrices
from dedupx.exceptions import DedupxError
from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.read_changes import CHANGE_COLUMNS, with_change_columns
from dedupx.model.units import pages_to_mib
from dedupx.qemu.cmdline import parse_qemu_cmdline
from dedupx.qemu.ram_backing import describe_ram
from dedupx.sources.guest_view import GuestView


def vm_reports(f: Frames, guests: dict[int, GuestView] | None = None) -> list[dict[str, Any]]:
    """Per VM: its dedup matrix, its USS by cause, its incremental cost given the rest
    (KSM as configured), and with a guest's own view, its pages by guest class and its
    inactive-LRU bloat. Each is computed for every VM at once: one pass over the frames,
    not one per VM."""
    f = as_frames(f)
    assert f.processes is not None
    vms = f.processes.filter(pl.col("kind") == "vm").select("pid", "comm", "cmdline").collect()
    views = guests or {}
    matrices = vm_matrices(f)
    maps, errors = guest_maps(f, list(vms["pid"]))
    told = {}
    for pid in list(maps):
        try:
            told[pid] = told_frames(pid, views.get(pid), None)
        except DedupxError as e:
            errors[pid] = str(e)
            del maps[pid]
    uss = vm_uss(f, maps, told)
    costs = vm_incremental_costs(f, maps, told)
    devices = vm_device_costs(f, maps)
    vm_vmas = (
        {}
        if f.vmas is None
        else f.vmas.filter(pl.col("pid").is_in(vms["pid"].implode()))
        .collect()
        .partition_by("pid", as_dict=True)
    )
    empty_vmas = None if f.vmas is None else f.vmas.clear().collect()
    out = []
    for pid, comm, argv in vms.iter_rows():
        r: dict[str, Any] = {"pid": pid, "comm": comm}
        if empty_vmas is not None:  # what backs its RAM, shown beside what is counted as anon
            vmas = vm_vmas.get((pid,), empty_vmas)
            r["ram"] = describe_ram(parse_qemu_cmdline(list(argv)), vmas)
        view = views.get(pid)
        r["dedup_matrix"] = matrices[pid].to_dicts()
        if pid in errors:
            r["incremental_cost_error"] = errors[pid]
        else:
            r["uss"] = uss[pid]
            r["incremental_cost"] = costs[pid]
            r["devices"] = devices[pid].to_dicts()
        if view is not None:
            r["guest_classes"] = guest_classes(view)
            r["bloat"] = inactive_bloat(view)
        out.append(r)
    return out


def container_reports(f: Frames, fp: pl.DataFrame | None = None) -> list[dict[str, Any]]:
    """Per container (the processes of one cgroup): its processes, its footprint (the sum of
    theirs) and its dedup matrix (within itself, with the host, with other containers)."""
    out = []
    for c in containers(f, fp).iter_rows(named=True):
        c["dedup_matrix"] = group_matrix(f, c["pids"]).to_dicts()
        out.append(c)
    return out


def snapshot_report(
    data: Frames | HasFrames, top: int = 10, guests: dict[int, GuestView] | None = None
) -> dict[str, Any]:
    f = as_frames(data)
    # Every analysis below reads the content view: computed once, here.
    f = f.with_hashed(hashed_frames(f).collect())
    m = f.provenance.manifest
    report: dict[str, Any] = {
        "path": str(f.provenance.path),
        "kind": f.provenance.kind,
        "source": f.provenance.source,
        "created": m.get("created"),
        "hostname": m.get("hostname"),
        "kernel": m.get("kernel"),
        "coverage": f.provenance.coverage,
    }
    dup = duplicates(f).row(0, named=True)
    report["duplicates"] = dup
    report["duplicates_mib"] = {
        k: (pages_to_mib(dup[k]) if dup[k] is not None else None)
        for k in (*SAVING_COLUMNS, "ksm_reachable")
    }
    report["top_duplicates"] = top_duplicates(f, top).to_dicts()
    if f.pages is not None and f.processes is not None:
        fp = footprint(f)
        procs = with_change_columns(f.processes.collect())
        per_proc = (
            fp.join(
                procs.select("pid", "comm", "kind", *CHANGE_COLUMNS, "changed"),
                on="pid",
                how="left",
            )
            .sort("pss_bytes", descending=True)
            .select(
                "pid",
                "comm",
                "kind",
                "rss_bytes",
                "pss_bytes",
                "uss_bytes",
                "swap_bytes",
                *CHANGE_COLUMNS,
                "changed",
            )
        )
        report["processes"] = per_proc.head(top).to_dicts()
        # Every process that changed while it was read, not only the largest.
        report["changed_while_read"] = (
            procs.filter(pl.col("changed"))
            .select("pid", "comm", *CHANGE_COLUMNS)
            .sort("changed_pages", descending=True)
            .to_dicts()
        )
        report["process_count"] = procs.height
        report["groups"] = group_footprints(f, fp).to_dicts()
        report["total_pss_bytes"] = int(fp["pss_bytes"].sum())
        report["vms"] = vm_reports(f, guests)
        report["containers"] = container_reports(f, fp)
    return report


__all__ = ["container_reports", "snapshot_report", "vm_reports"]
