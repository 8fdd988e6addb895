"""Placing the RAM blocks a guest does not map (option ROMs) in QEMU's memory, on the
`x-query-ramblock` table and the mappings of a real QEMU 10 process."""

from __future__ import annotations

import polars as pl

from dedupx.qemu.ramblocks import HostBlock, RamBlock, parse_ramblocks, place_unmapped

TABLE = """\
              Block Name    PSize              Offset               Used              Total
                  pc.ram    4 KiB  0x0000000000000000 0x0000000010000000 0x0000000010000000
   0000:00:02.0/vga.vram    4 KiB  0x0000000010080000 0x0000000001000000 0x0000000001000000
    /rom@etc/acpi/tables    4 KiB  0x0000000011100000 0x0000000000020000 0x0000000000200000
                 pc.bios    4 KiB  0x0000000010000000 0x0000000000040000 0x0000000000040000
  0000:00:03.0/e1000.rom    4 KiB  0x00000000110c0000 0x0000000000040000 0x0000000000040000
                  pc.rom    4 KiB  0x0000000010040000 0x0000000000020000 0x0000000000020000
    0000:00:02.0/vga.rom    4 KiB  0x0000000011080000 0x0000000000010000 0x0000000000010000
   /rom@etc/table-loader    4 KiB  0x0000000011300000 0x0000000000001000 0x0000000000010000
      /rom@etc/acpi/rsdp    4 KiB  0x0000000011340000 0x0000000000001000 0x0000000000001000
"""
# (start, end, perms, path) of that process, as /proc/PID/maps listed them.
MAPS = [
    (0x7FC911200000, 0x7FC911201000, "rw-p", ""),  # rsdp
    (0x7FC911201000, 0x7FC911202000, "---p", ""),
    (0x7FC911400000, 0x7FC911410000, "rw-p", ""),  # 64 KiB: vga.rom or table-loader
    (0x7FC911410000, 0x7FC911411000, "---p", ""),
    (0x7FC911600000, 0x7FC911800000, "rw-p", ""),  # acpi tables
    (0x7FC911800000, 0x7FC911801000, "---p", ""),
    (0x7FC911A00000, 0x7FC911A40000, "rw-p", ""),  # e1000.rom
    (0x7FC911A40000, 0x7FC911A41000, "---p", ""),
    (0x7FC911C00000, 0x7FC912C00000, "rw-p", ""),  # vga.vram (mapped into the guest)
    (0x7FC912C00000, 0x7FC912C01000, "---p", ""),
    (0x7FC912E00000, 0x7FC912E10000, "rw-p", ""),  # 64 KiB: the other one
    (0x7FC912E10000, 0x7FC912E11000, "---p", ""),
    (0x7FC924000000, 0x7FC924021000, "rw-p", ""),  # a malloc arena: a long PROT_NONE tail
    (0x7FC924021000, 0x7FC928000000, "---p", ""),
    (0x7FC970200000, 0x7FC970240000, "rw-p", ""),  # pc.bios (mapped into the guest)
    (0x7FC970240000, 0x7FC970241000, "---p", ""),
    (0x7FC971400000, 0x7FC971C00000, "rw-p", ""),
    (0x7FC971C00000, 0x7FC971CC5000, "r--p", "/usr/bin/qemu-system-x86_64"),
]


def test_parse_names_blocks_as_mtree_does() -> None:
    blocks = parse_ramblocks(TABLE)
    assert len(blocks) == 9
    assert blocks[1] == RamBlock("vga.vram", 0x1000000, 0x1000000)
    assert RamBlock("e1000.rom", 0x40000, 0x40000) in blocks
    assert RamBlock("/rom@etc/table-loader", 0x1000, 0x10000) in blocks


def test_unmapped_blocks_are_placed_only_where_unambiguous() -> None:
    vmas = pl.DataFrame(MAPS, schema=["start", "end", "perms", "path"], orient="row")
    mapped = {"pc.ram", "vga.vram", "pc.bios"}
    blocks = [b for b in parse_ramblocks(TABLE) if b.name not in mapped]
    # pc.ram is not among these maps; vga.vram and pc.bios are, at their gpa2hva addresses.
    placed = place_unmapped(blocks, [0x7FC911C00000, 0x7FC970200000], vmas)
    assert placed == [
        HostBlock("/rom@etc/acpi/tables", 0x7FC911600000, 0x20000),
        HostBlock("e1000.rom", 0x7FC911A00000, 0x40000),
        HostBlock("/rom@etc/acpi/rsdp", 0x7FC911200000, 0x1000),
    ]  # pc.rom has no mapping of its size here; the two 64 KiB blocks cannot be told apart
