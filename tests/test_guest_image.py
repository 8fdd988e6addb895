"""A real QEMU guest (TCG): its dump-guest-memory image against a live scan of its RAM."""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import blake3
import polars as pl
import pytest

import dedupx
from guest_kit import Guest, GuestAssets, ensure_packages, guest_assets

MEM_MIB = 256
PAGE = 4096
ZERO = blake3.blake3(bytes(PAGE)).digest()[:16]


@pytest.fixture(scope="session")
def assets_a() -> GuestAssets:
    ensure_packages()
    return guest_assets(variant="a")


@pytest.fixture
def paused_guest(assets_a: GuestAssets, tmp_path: Path) -> Iterator[Guest]:
    with Guest(assets_a, mem_mib=MEM_MIB, name="dump", workdir=tmp_path) as g:
        g.stop()
        yield g


def test_dump_matches_live_scan_of_guest_ram(paused_guest: Guest, tmp_path: Path) -> None:
    g = paused_guest
    dump = g.dump_guest_memory(tmp_path / "guest.elf")
    start, end = g.ram_vma()
    assert end - start == MEM_MIB << 20
    scan = dedupx.scan(g.pid)
    live = dict(
        scan.pages.filter(pl.col("vaddr").is_between(start, end, closed="left") & pl.col("present"))
        .select(((pl.col("vaddr") - start) // PAGE).alias("gfn"), "hash")
        .iter_rows()
    )
    res = dedupx.read_image(dump)
    assert res.format == "elf"
    # pc.ram below the -m size maps 1:1 (gpa = offset in the RAM block); the VGA hole and
    # the vram/BIOS blocks above it are other RAM blocks.
    ram = res.frames.filter(pl.col("pfn") < (MEM_MIB << 20) // PAGE)
    assert ram.height == (MEM_MIB << 20) // PAGE - (0xC0000 - 0xA0000) // PAGE
    dumped = dict(ram.select("pfn", "hash").iter_rows())
    # An untouched guest page is not present in QEMU: it reads as zeros in the dump.
    live_view = {gfn: live.get(gfn, ZERO) for gfn in dumped}
    assert Counter(live_view.values()) == Counter(dumped.values())
    assert live_view == dumped
    assert sum(1 for h in dumped.values() if h != ZERO) > 1000, "the guest kernel is in RAM"


def test_image_cli_and_compare_with_itself(paused_guest: Guest, tmp_path: Path) -> None:
    dump = paused_guest.dump_guest_memory(tmp_path / "guest.elf")
    res = dedupx.compare(dedupx.load(dump), dedupx.load(dump)).row(0, named=True)
    assert res["b_only"] == 0 and res["shared"] == res["b_frames"] == res["a_frames"]


def live_hashes_by_hva(scan: dedupx.ProcessScan) -> pl.DataFrame:
    return scan.pages.filter(pl.col("present")).select(pl.col("vaddr").alias("hva"), "hash")


def test_gpa_map_from_qmp_agrees_with_dump_on_every_page(
    paused_guest: Guest, tmp_path: Path
) -> None:
    g = paused_guest
    dump = g.dump_guest_memory(tmp_path / "guest.elf")
    scan = dedupx.scan(g.pid)
    gm = scan.guest_map()  # from the QMP socket on QEMU's command line
    assert gm["source"][0].startswith("qmp:")
    assert set(gm.columns) >= {"pid", "gpa", "hva", "pfn", "block"}
    img = dedupx.read_image(dump).frames.select((pl.col("pfn") * PAGE).alias("gpa"), "hash")
    joined = (
        img.join(gm.select("gpa", "hva", "block"), on="gpa", how="left")
        .join(live_hashes_by_hva(scan), on="hva", how="left", suffix="_live")
        .with_columns(pl.col("hash_live").fill_null(ZERO))
    )
    # Every page QEMU dumped is in the map, and holds what the map says it holds.
    assert joined["hva"].null_count() == 0
    assert (joined["hash"] == joined["hash_live"]).all()
    assert set(joined["block"]) >= {"pc.ram", "vga.vram", "pc.bios"}
    # Where the host has a page, the map's PFN is the one the kernel's pagemap gives for
    # that host address, read here without dedupx (the guest is paused: nothing moves).
    with_pfn = gm.filter(pl.col("pfn").is_not_null())
    assert with_pfn.height > 1000
    fd = os.open(f"/proc/{g.pid}/pagemap", os.O_RDONLY)
    try:
        for hva, pfn in with_pfn.select("hva", "pfn").iter_rows():
            (entry,) = struct.unpack("<Q", os.pread(fd, 8, hva // PAGE * 8))
            assert entry >> 63, hex(hva)
            assert entry & ((1 << 55) - 1) == pfn, hex(hva)
    finally:
        os.close(fd)


def test_gpa_map_from_cmdline_agrees_with_dump(paused_guest: Guest, tmp_path: Path) -> None:
    from dedupx.qemu.cmdline import parse_qemu_cmdline
    from dedupx.qemu.gpa_map import gpa_map, layout_from_cmdline

    g = paused_guest
    dump = g.dump_guest_memory(tmp_path / "guest.elf")
    scan = dedupx.scan(g.pid)
    layout = layout_from_cmdline(parse_qemu_cmdline(scan.cmdline), scan.vmas)
    assert "assumed pc layout" in layout.source
    gm = gpa_map(g.pid, layout, scan.pages)
    assert gm.height == (MEM_MIB << 20) // PAGE - 0x20000 // PAGE
    img = dedupx.read_image(dump).frames.select((pl.col("pfn") * PAGE).alias("gpa"), "hash")
    joined = (
        gm.join(img, on="gpa", how="left")
        .join(live_hashes_by_hva(scan), on="hva", how="left", suffix="_live")
        .with_columns(pl.col("hash_live").fill_null(ZERO))
    )
    assert joined["hash"].null_count() == 0
    assert (joined["hash"] == joined["hash_live"]).all()


def test_not_a_guest(layout_pid_not_qemu: int) -> None:
    with pytest.raises(dedupx.NotAGuest):
        dedupx.scan(layout_pid_not_qemu).guest_map()


@pytest.fixture
def layout_pid_not_qemu() -> Iterator[int]:
    import subprocess

    p = subprocess.Popen(["sleep", "60"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()
