"""RSS and PSS must agree with the kernel's own smaps_rollup for a quiet process."""

from __future__ import annotations

from pathlib import Path

import polars as pl

import dedupx

from conftest import PAGE, LayoutProcess


def rollup(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def test_rss_pss_match_smaps_rollup(layout: LayoutProcess) -> None:
    scan = dedupx.scan(layout.pid)
    fp = dedupx.footprint(scan).row(0, named=True)
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
    scan = dedupx.scan(layout.pid)
    fp = dedupx.footprint(scan).row(0, named=True)
    kernel = rollup(layout.pid)
    private = kernel["Private_Clean"] + kernel["Private_Dirty"]
    assert abs(fp["uss_bytes"] - private) <= 0.005 * private
    # Every laid-out anonymous page is private to the fixture.
    anon_pages = sum(len(layout.spec[r]) for r in ("anon.bin", "mergeable.bin"))
    assert fp["anon_uss_bytes"] >= anon_pages * PAGE


def test_footprint_of_a_bare_pages_frame(layout: LayoutProcess) -> None:
    scan = dedupx.scan(layout.pid)
    assert dedupx.footprint(scan.pages).equals(dedupx.footprint(scan))
    assert dedupx.footprint(scan.pages.filter(pl.lit(False))).height == 0
