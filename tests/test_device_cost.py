"""Device cost as an oracle (the study's Table 6.5): the memory dedupx attributes to a
device's RAM blocks is memory the guest stops costing when it boots without the device."""

from __future__ import annotations

import os
import struct
from contextlib import ExitStack
from pathlib import Path

import polars as pl

import dedupx
from guest_kit import Guest, ensure_packages, guest_assets
from helpers import THP, rollup, sysfs

PAGE = 4096
# Each device, and the guest arguments that boot the same guest without it.
WITHOUT = {"VGA display": ("-vga", "none"), "e1000 network card": ("-nic", "none")}


def present_pages(pid: int, start: int, end: int) -> int:
    """Pages of [start, end) that the kernel's pagemap shows present, read here."""
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        raw = os.pread(fd, (end - start) // PAGE * 8, start // PAGE * 8)
    finally:
        os.close(fd)
    return sum(e >> 63 for e in struct.unpack(f"<{len(raw) // 8}Q", raw))


def block_range(snap: dedupx.Frames, pid: int, block: str) -> tuple[int, int]:
    gm = snap.gpa_map
    assert gm is not None
    return (
        gm.filter((pl.col("pid") == pid) & (pl.col("block") == block))
        .select(pl.col("hva").min().alias("lo"), (pl.col("hva").max() + PAGE).alias("hi"))
        .collect()
        .row(0)
    )


def test_devices_cost_what_removing_them_saves(tmp_path: Path) -> None:
    """The same guest booted whole and once without each device: its PSS falls by at least
    what dedupx attributed to that device's RAM blocks (QEMU's heap for the device goes
    too, and is not attributed, hence "at least"). THP off: with it, where the kernel finds
    a huge page decides whether a whole 2 MiB of guest RAM is backed, which moves two
    identical guests' PSS apart by more than a device costs."""
    ensure_packages()
    assets = guest_assets(variant="a")
    with ExitStack() as stack:
        stack.enter_context(sysfs(THP, "never"))  # before the guests allocate their RAM

        # Each guest is paused as soon as it has booted, as test_backends' twins are: a guest
        # left running while the others boot drifts. (Once in CI the guest without VGA had
        # 4.05 MiB more PSS than the whole one, against VGA's 0.06 MiB; not reproduced.)
        def booted(name: str, args: tuple[str, ...] = ()) -> Guest:
            g = stack.enter_context(
                Guest(assets, mem_mib=256, name=name, workdir=tmp_path, extra_args=args)
            )
            g.stop()
            return g

        whole = booted("whole")
        without = {
            device: booted(f"no-{i}", args) for i, (device, args) in enumerate(WITHOUT.items())
        }
        snap = dedupx.open_snapshot(dedupx.snapshot(tmp_path / "snap"))
        devices = dedupx.device_costs(snap, whole.pid)
        print(devices)
        for device, guest in without.items():
            rows = devices.filter(pl.col("device") == device)
            assert rows.height >= 1, device
            others = dedupx.device_costs(snap, guest.pid)
            assert others.filter(pl.col("device") == device).is_empty(), device
            # Resident pages of each block, against the kernel's pagemap over its range.
            for block, resident in rows.select("block", "resident_pages").iter_rows():
                assert resident == present_pages(whole.pid, *block_range(snap, whole.pid, block))
            attributed = int(rows["pss_bytes"].sum())
            saved = rollup(whole.pid)["Pss"] - rollup(guest.pid)["Pss"]
            print(
                f"{device}: dedupx attributes {attributed / 2**20:.2f} MiB; without it the "
                f"guest's PSS is {saved / 2**20:.2f} MiB lower"
            )
            assert attributed > 0, device
            assert saved >= attributed, device
        # The analysis report carries the same rows, and the incremental cost counts the
        # devices' blocks as QEMU's own, not as guest RAM.
        report = dedupx.snapshot_report(snap)
        (vm,) = [v for v in report["vms"] if v["pid"] == whole.pid]
        assert pl.DataFrame(vm["devices"]).equals(devices)
        assert "guest RAM" in vm["incremental_cost"]["by_part"]
        assert vm["uss"]["device_ram_by_block"].keys() <= set(devices["block"])
