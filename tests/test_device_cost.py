"""Device cost as an oracle (the study's Table 6.5): the memory dedupx attributes to a
device's RAM blocks is memory the guest stops costing when it boots without the device."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import polars as pl

import dedupx
from guest_kit import Guest, ensure_packages, guest_assets
from helpers import rollup

PAGE = 4096
WITHOUT = ("-vga", "none", "-nic", "none")


def present_pages(pid: int, start: int, end: int) -> int:
    """Pages of [start, end) that the kernel's pagemap shows present, read here."""
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        raw = os.pread(fd, (end - start) // PAGE * 8, start // PAGE * 8)
    finally:
        os.close(fd)
    return sum(e >> 63 for e in struct.unpack(f"<{len(raw) // 8}Q", raw))


def test_vga_costs_what_removing_it_saves(tmp_path: Path) -> None:
    ensure_packages()
    assets = guest_assets(variant="a")
    with (
        Guest(assets, mem_mib=256, name="with-vga", workdir=tmp_path) as a,
        Guest(assets, mem_mib=256, name="no-vga", workdir=tmp_path, extra_args=WITHOUT) as b,
    ):
        a.stop()
        b.stop()
        snap = dedupx.open_snapshot(dedupx.snapshot(tmp_path / "snap"))
        devices = dedupx.device_costs(snap, a.pid)
        print(devices)
        vga = devices.filter(pl.col("device") == "VGA display")
        assert vga.height >= 1
        assert dedupx.device_costs(snap, b.pid).filter(pl.col("device") == "VGA display").is_empty()
        # Resident pages of the block, against the kernel's pagemap over its host range.
        gm = snap.gpa_map
        assert gm is not None
        for block, resident in vga.select("block", "resident_pages").iter_rows():
            rng = (
                gm.filter((pl.col("pid") == a.pid) & (pl.col("block") == block))
                .select(pl.col("hva").min().alias("lo"), (pl.col("hva").max() + PAGE).alias("hi"))
                .collect()
                .row(0)
            )
            assert resident == present_pages(a.pid, *rng), block
        attributed = int(vga["pss_bytes"].sum())
        saved = rollup(a.pid)["Pss"] - rollup(b.pid)["Pss"]
        print(
            f"VGA: dedupx attributes {attributed / 2**20:.2f} MiB; without it the guest's "
            f"PSS is {saved / 2**20:.2f} MiB lower"
        )
        assert attributed > 0
        assert saved >= attributed
        # The analysis report carries the same rows, and the incremental cost counts the
        # device's block as QEMU's own, not as guest RAM.
        report = dedupx.snapshot_report(snap)
        (vm,) = [v for v in report["vms"] if v["pid"] == a.pid]
        assert pl.DataFrame(vm["devices"]).equals(devices)
        assert "guest RAM" in vm["incremental_cost"]["by_part"]
        assert vm["uss"]["device_ram_by_block"].keys() <= set(devices["block"])
