"""The dedup matrix of a guest, against the definition computed by hand in plain Python."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import polars as pl

import dedupx
from dedupx.model.kpageflags import KPF_ZERO_PAGE
from guest_kit import Guest, ensure_packages, guest_assets
from helpers import matrix_by_hand


def as_dict(m: pl.DataFrame) -> dict[str, dict[str, Any]]:
    return {r["row"]: r for r in m.iter_rows(named=True)}


def test_matrix_of_identical_and_different_guests(tmp_path: Path) -> None:
    ensure_packages()
    a = guest_assets(variant="a")
    other_kernel = guest_assets(variant="a", generic_kernel=True)
    with (
        Guest(a, mem_mib=256, name="twin1", workdir=tmp_path) as g1,
        Guest(a, mem_mib=256, name="twin2", workdir=tmp_path) as g2,
        Guest(other_kernel, mem_mib=256, name="other", workdir=tmp_path) as g3,
    ):
        for g in (g1, g2, g3):
            g.stop()
        snap = dedupx.open_snapshot(dedupx.snapshot(tmp_path / "snap"))
        for v in (g1.pid, g3.pid):
            got = as_dict(dedupx.dedup_matrix(snap, v))
            want = matrix_by_hand(snap, {v}, "vm")
            for row in ("within", "host", "vm"):
                for col in ("anon_anon", "file_file", "anon_file", "zero"):
                    assert got[row][col] == want[row][col], (v, row, col)
                assert got[row]["ksm_reachable"] == want[row]["ksm"], (v, row)
                assert got[row]["total"] == sum(
                    want[row][c] for c in ("anon_anon", "file_file", "anon_file")
                )
            for col in ("anon_anon", "file_file", "anon_file", "zero"):
                assert got["total"][col] == sum(want[r][col] for r in ("within", "host", "vm"))
        check_uss_breakdown(snap, g2.pid, g2.ram_vma())
        # Peers first: the host's page cache holds the guests' kernel and initramfs files
        # too, and with the host first those copies would count in its row instead.
        twin = as_dict(dedupx.dedup_matrix(snap, g2.pid, order=("vm", "host")))
        other = as_dict(dedupx.dedup_matrix(snap, g3.pid, order=("vm", "host")))
        # Two guests booted from the same kernel and initramfs share thousands of pages; a
        # guest with another kernel shares markedly fewer with them.
        assert twin["vm"]["anon_anon"] > 5_000
        assert twin["vm"]["ksm_reachable"] > 5_000
        print("VM-VM pages: twin", twin["vm"]["total"], "other kernel", other["vm"]["total"])
        assert other["vm"]["total"] < 0.8 * twin["vm"]["total"]
        # The same from one compare of two guests, with zero pages apart on both sides:
        # what a guest on another kernel has in common with a twin, beyond zeros.
        for g, label in ((g2, "twin"), (g3, "other kernel")):
            a = snap.restrict(pl.col("pid") == g1.pid)
            b = snap.restrict(pl.col("pid") == g.pid)
            row = dedupx.compare(a, b).row(0, named=True)

            def zero_frames(f: dedupx.Frames) -> int:
                real = (pl.col("kpageflags") & (1 << KPF_ZERO_PAGE)) == 0
                return int(f.frames.filter(pl.col("zero") & real).select(pl.len()).collect().item())

            # Every zero-filled frame of B is shared once A has one; none otherwise.
            assert row["shared_zero"] == (zero_frames(b) if zero_frames(a) else 0)
            assert row["shared_zero"] + row["shared_nonzero"] == row["shared"]
            print(
                f"{label}: shares {row['shared_nonzero']:,} non-zero and "
                f"{row['shared_zero']:,} zero frames with twin1"
            )
        twin_row = dedupx.compare(
            snap.restrict(pl.col("pid") == g1.pid), snap.restrict(pl.col("pid") == g2.pid)
        ).row(0, named=True)
        other_row = dedupx.compare(
            snap.restrict(pl.col("pid") == g1.pid), snap.restrict(pl.col("pid") == g3.pid)
        ).row(0, named=True)
        assert other_row["shared_nonzero"] < 0.8 * twin_row["shared_nonzero"]


def check_uss_breakdown(snap: dedupx.Frames, v: int, ram: tuple[int, int]) -> None:
    """The guest's exclusive PFNs and unique contents, counted by hand."""
    assert snap.pages is not None
    owners: dict[int, set[int]] = defaultdict(set)
    vaddr_of: dict[int, list[int]] = defaultdict(list)
    for pid, pfn, va, present in (
        snap.pages.select("pid", "pfn", "vaddr", "present").collect().iter_rows()
    ):
        if present:
            owners[pfn].add(pid)
            if pid == v:
                vaddr_of[pfn].append(va)
    mine = {p for p, who in owners.items() if who == {v}}

    # pc.ram below the VGA hole and above it (the cmdline layout of a pc machine).
    def in_ram(va: int) -> bool:
        off = va - ram[0]
        return 0 <= off < ram[1] - ram[0] and not 0xA0000 <= off < 0xC0000

    in_guest = {p for p in mine if any(in_ram(va) for va in vaddr_of[p])}
    hashes = dict(
        snap.frames.filter(pl.col("hash").is_not_null()).select("pfn", "hash").collect().iter_rows()
    )
    zero_pfns = set(
        snap.frames.filter((pl.col("kpageflags") & (1 << KPF_ZERO_PAGE)) != 0)
        .select("pfn")
        .collect()["pfn"]
    )
    v_contents = {hashes[p] for p in vaddr_of if p in hashes and p not in zero_pfns}
    other_contents = {h for p, h in hashes.items() if p not in vaddr_of and p not in zero_pfns}
    got = dedupx.uss_breakdown(snap, v)
    # With nothing merged, what the guest adds given the rest is its USS. (The USS counts
    # frames no other process of the capture maps; the incremental cost, frames whose map
    # count is the guest's own: a frame also mapped by a process the snapshot could not
    # read, or whose count moved between two reads, tells them apart by a few pages.)
    none = dedupx.incremental_cost(snap, v, policy="none")["pages"]
    assert abs(none - got["pages"]) <= 0.001 * got["pages"], (none, got["pages"])
    assert got["pages"] == len(mine)
    assert got["guest_ram_pages"] == len(in_guest)
    assert got["qemu_pages"] == len(mine - in_guest)
    assert got["unique_contents"] == len(v_contents - other_contents)
