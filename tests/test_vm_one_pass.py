"""Every VM's matrix, USS and incremental cost computed in one pass (what `dedupx analyze`
does) against the same computed one VM at a time, cell for cell, on a snapshot of real
guests: twins, a guest on another kernel (fewer peers' copies), one on memfd (a backend KSM
never scans) and, where hugepages can be reserved, one on hugetlbfs (huge page savings)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import dedupx
from dedupx.analysis.dedup_matrix import dedup_matrix
from dedupx.analysis.device_cost import device_costs
from dedupx.analysis.incremental_cost import incremental_cost, uss_breakdown
from dedupx.analysis.vm_costs import guest_maps, vm_incremental_costs, vm_uss
from dedupx.analysis.vm_matrices import vm_matrices
from dedupx.report.snapshot import vm_reports
from guest_kit import Guest, ensure_packages, guest_assets
from helpers import as_root

MEM_MIB = 128

pytestmark = pytest.mark.skipif(not as_root(), reason="scanning QEMU needs root")


@contextmanager
def hugetlbfs_or_none(work: Path) -> Iterator[Path | None]:
    """A hugetlbfs mount with room for one guest, or None where none can be had."""
    from test_backends import hugepages_reserved  # the one way the tests reserve hugepages

    try:
        with hugepages_reserved(MEM_MIB // 2, work) as mount:
            yield mount
    except pytest.skip.Exception:
        yield None


def test_every_vm_at_once_equals_one_at_a_time(tmp_path: Path) -> None:
    ensure_packages()
    a = guest_assets(variant="a")
    other = guest_assets(variant="a", generic_kernel=True)
    size = f"size={MEM_MIB}M"
    with ExitStack() as stack:
        huge = stack.enter_context(hugetlbfs_or_none(tmp_path))
        specs = [
            (a, "twin1", ()),
            (a, "twin2", ()),
            (other, "other", ()),
            (a, "memfd", ("-object", f"memory-backend-memfd,id=mem,{size},share=on")),
        ]
        if huge is not None:
            obj = f"memory-backend-file,id=mem,{size},mem-path={huge},share=on"
            specs.append((a, "huge", ("-object", obj)))
        guests = []
        for assets, name, obj in specs:
            args = (*obj, "-machine", "memory-backend=mem") if obj else ()
            g = Guest(assets, mem_mib=MEM_MIB, name=name, workdir=tmp_path, extra_args=args)
            guests.append(stack.enter_context(g))
        for g in guests:
            g.stop()
        snap = dedupx.open_snapshot(dedupx.snapshot(tmp_path / "snap", page_cache=False))
        pids = [g.pid for g in guests]
        vms = snap.processes.filter(pl.col("kind") == "vm").collect()["pid"].to_list()
        assert sorted(vms) == sorted(pids)

        for order in (("host", "vm"), ("vm", "host")):
            together = vm_matrices(snap, order)
            assert sorted(together) == sorted(pids)
            for pid in pids:
                assert_frame_equal(together[pid], dedup_matrix(snap, pid, order))
        twin = together[guests[1].pid].row(2, named=True)  # the "vm" row, peers first
        assert twin["row"] == "vm" and twin["anon_anon"] > 1_000
        print("with a hugetlbfs guest" if huge is not None else "no hugepages to be had")
        if huge is not None:
            within = together[guests[-1].pid].row(0, named=True)
            assert within["hugetlb"] > 0

        maps, errors = guest_maps(snap, pids)
        assert not errors
        # What one guest says of its pages (by gfn; every seventh page it says nothing of).
        gfn = pl.int_range(0, MEM_MIB * 256, eager=True, dtype=pl.UInt64)
        classes = pl.Series(["anon", "file", "free", "kernel"]).gather(gfn % 4)
        said = pl.DataFrame({"gfn": gfn, "class": classes}).filter(pl.col("gfn") % 7 != 0)
        told = {pids[0]: said}
        uss = vm_uss(snap, maps, told)
        for pid in pids:
            assert uss[pid] == uss_breakdown(snap, pid, told.get(pid))
        for m, zero_free in ((256, False), (256, True), (2, False)):
            costs = vm_incremental_costs(snap, maps, told, max_sharing=m, zero_pages_free=zero_free)
            for pid in pids:
                want = incremental_cost(
                    snap, pid, told.get(pid), max_sharing=m, zero_pages_free=zero_free
                )
                assert costs[pid] == want, (pid, m, zero_free)
        assert "guest_ram_by_class" in costs[pids[0]]

        # What analyze shows per VM is each of them, as computed one VM at a time.
        for r in vm_reports(snap):
            pid = r["pid"]
            assert r["dedup_matrix"] == dedup_matrix(snap, pid).to_dicts()
            assert r["uss"] == uss_breakdown(snap, pid)
            assert r["incremental_cost"] == incremental_cost(snap, pid)
            assert r["devices"] == device_costs(snap, pid).to_dicts()
