"""RSS and PSS must agree with the kernel's own smaps_rollup for a quiet process."""

from __future__ import annotations

import os

import polars as pl

import dedupx
from helpers import PAGE, LayoutProcess, footprint_from_elsewhere, rollup


def test_rss_pss_match_smaps_rollup(layout: LayoutProcess) -> None:
    # Scanned elsewhere: this process maps libc too, and the kernel counts it while it runs.
    fp = footprint_from_elsewhere(layout.pid)
    kernel = rollup(layout.pid)
    assert fp["pid"] == layout.pid
    assert abs(fp["rss_bytes"] - kernel["Rss"]) <= 0.005 * kernel["Rss"]
    assert abs(fp["pss_bytes"] - kernel["Pss"]) <= 0.005 * kernel["Pss"]
    assert abs(fp["anon_pss_bytes"] - kernel["Pss_Anon"]) <= 0.005 * kernel["Pss_Anon"] + PAGE
    assert abs(fp["shmem_pss_bytes"] - kernel["Pss_Shmem"]) <= 0.005 * kernel["Pss_Shmem"] + PAGE
    # The parts add up to the whole.
    for m in ("rss", "pss", "uss"):
        parts = sum(fp[f"{c}_{m}_bytes"] for c in ("anon", "file", "shmem"))
        assert abs(parts - fp[f"{m}_bytes"]) <= 3, m


def test_uss_counts_pages_only_this_process_maps(layout: LayoutProcess) -> None:
    fp = footprint_from_elsewhere(layout.pid)
    kernel = rollup(layout.pid)
    private = kernel["Private_Clean"] + kernel["Private_Dirty"]
    assert abs(fp["uss_bytes"] - private) <= 0.005 * private
    # Every laid-out anonymous page is private to the fixture.
    anon_pages = sum(len(layout.spec[r]) for r in ("anon.bin", "mergeable.bin"))
    assert fp["anon_uss_bytes"] >= anon_pages * PAGE


def test_footprint_of_a_narrowed_capture(layout: LayoutProcess) -> None:
    scan = dedupx.scan(layout.pid)
    frames = scan.to_frames()
    assert dedupx.footprint(frames).equals(dedupx.footprint(scan))
    assert dedupx.footprint(frames.restrict(pl.lit(False))).height == 0
    # One region alone: its RSS is its pages, counted by hand.
    start, n = layout.regions["anon.bin"]
    only = frames.restrict(pl.col("vaddr").is_between(start, start + n * PAGE, closed="left"))
    assert dedupx.footprint(only)["rss_bytes"].to_list() == [n * PAGE]


def test_map_counts_equal_kpagecount(layout: LayoutProcess) -> None:
    """A scan reads /proc/kpagecount only for pages pagemap does not show mapped once
    (exclusive, not part of a large folio: those have a count of exactly 1). Every count it
    gives equals the kernel's, read here for each of the quiet fixture's frames, and the
    fixture's many private pages did spare reads."""
    scan = dedupx.scan(layout.pid)
    frames = scan.pages.filter(pl.col("present")).select("pfn", "mapcount", "exclusive").unique()
    fd = os.open("/proc/kpagecount", os.O_RDONLY)
    try:
        kernel = [int.from_bytes(os.pread(fd, 8, pfn * 8), "little") for pfn in frames["pfn"]]
    finally:
        os.close(fd)
    frames = frames.with_columns(kernel=pl.Series(kernel, dtype=pl.UInt64))
    exclusive = frames.filter(pl.col("exclusive"))
    print(f"{frames.height} frames, {exclusive.height} exclusive")
    assert exclusive.height >= 20
    assert exclusive.filter(pl.col("mapcount") != pl.col("kernel")).height == 0
    assert (exclusive["kernel"] == 1).all()
    # The others, read from the kernel, are lowered at most by dedupx's own mappings.
    shared = frames.filter(~pl.col("exclusive"))
    assert (shared["mapcount"] <= shared["kernel"]).all()
