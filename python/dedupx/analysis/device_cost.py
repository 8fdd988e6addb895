"""What each emulated device's memory costs (the study's Table 6.5): the RAM blocks of a
guest other than its main memory (``vga.vram``, ``pc.bios``, option ROMs), from the guest's
QMP map. Heap a device allocates inside QEMU cannot be told apart from other heap by its
pages, and is not counted here."""

from __future__ import annotations

import polars as pl

from dedupx.analysis.incremental_cost import guest_ram_map, main_blocks
from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.page_classes import is_zero_page
from dedupx.model.units import MIB, PAGE_SIZE

# What a block belongs to, by the start of its name (QEMU's RAM block names).
DEVICES = {
    "vga": "VGA display",
    "cirrus": "Cirrus VGA display",
    "qxl": "QXL display",
    "virtio-vga": "virtio VGA display",
    "e1000": "e1000 network card",
    "virtio-net": "virtio network card",
    "rtl8139": "RTL8139 network card",
    "pc.bios": "BIOS",
    "isa-bios": "BIOS",
    "pc.rom": "option ROMs",
    "/rom@": "firmware config ROMs",
}


def device_of(block: pl.Expr) -> pl.Expr:
    out = pl.lit("other device")
    for prefix, name in reversed(DEVICES.items()):
        out = pl.when(block.str.starts_with(prefix)).then(pl.lit(name)).otherwise(out)
    return out


def device_costs(data: Frames | HasFrames, pid: int) -> pl.DataFrame:
    """One row per device RAM block of guest ``pid``: ``block``, ``device``,
    ``guest_pages`` (the block's size in pages), ``resident_pages`` (backed by a host
    page), ``pss_bytes`` (their share of memory now), ``uss_pages`` (those no other mapping
    shares: what removing the device frees) and ``pss_mib``. Needs a guest map with device
    blocks: a snapshot's (taken over QMP) or ``Frames.with_gpa_map(scan.guest_map())``."""
    f = as_frames(data)
    gm = guest_ram_map(f, pid)
    assert f.pages is not None
    mine = (
        f.pages.filter((pl.col("pid") == pid) & pl.col("present") & ~is_zero_page())
        .select(pl.col("vaddr").alias("hva"), "mapcount", "pfn")
        .collect()
    )
    return costs_of_devices(gm, main_blocks(f, pid), mine)


def costs_of_devices(gm: pl.DataFrame, main: list[str], mine: pl.DataFrame) -> pl.DataFrame:
    """``device_costs``' rows from the guest's gpa map ``gm``, the names of its ``main``
    RAM blocks and its present pages (``hva``, ``mapcount``, ``pfn``; the zero page aside)."""
    devices = gm.filter(~pl.col("block").is_in(main))
    # Mappings of each frame by this process: a frame mapped only by it is its own.
    mine = mine.with_columns(pl.len().over("pfn").alias("own"))
    rows = devices.select("block", "hva").join(mine, on="hva", how="left")
    share = PAGE_SIZE / pl.max_horizontal(pl.col("mapcount"), pl.lit(1))
    return (
        rows.group_by("block")
        .agg(
            pl.len().alias("guest_pages"),
            pl.col("pfn").is_not_null().sum().alias("resident_pages"),
            share.filter(pl.col("pfn").is_not_null())
            .sum()
            .round()
            .cast(pl.Int64)
            .alias("pss_bytes"),
            (pl.col("mapcount") <= pl.col("own")).sum().alias("uss_pages"),
        )
        .with_columns(
            device_of(pl.col("block")).alias("device"),
            (pl.col("pss_bytes") / MIB).alias("pss_mib"),
        )
        .select(
            "block", "device", "guest_pages", "resident_pages", "pss_bytes", "uss_pages", "pss_mib"
        )
        .sort("block")
    )


__all__ = ["DEVICES", "costs_of_devices", "device_costs", "device_of"]
