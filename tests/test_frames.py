"""Every analysis takes a live scan, a snapshot directory and a memory image through the
one input model (Frames), and agrees with itself across them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import dedupx
from helpers import LayoutProcess, fixture_spec, start_layout, stop

Analysis = Callable[[dedupx.Frames, int], Any]

ANALYSES: dict[str, Analysis] = {
    "footprint": lambda f, pid: dedupx.footprint(f),
    "group_footprints": lambda f, pid: dedupx.group_footprints(f),
    "page_counts": lambda f, pid: dedupx.page_counts(f),
    "duplicates": lambda f, pid: dedupx.duplicates(f),
    "top_duplicates": lambda f, pid: dedupx.top_duplicates(f, 5),
    "ksm_prediction": lambda f, pid: dedupx.ksm_prediction(f),
    "compare": lambda f, pid: dedupx.compare(f, f),
    "dedup_matrix": lambda f, pid: dedupx.dedup_matrix(f, pid),
    "incremental_cost": lambda f, pid: dedupx.incremental_cost(f, pid),
    "uss_breakdown": lambda f, pid: dedupx.uss_breakdown(f, pid),
    "snapshot_report": lambda f, pid: dedupx.snapshot_report(f),
}
# What an image cannot answer: it has no processes, pages or mappings.
NEEDS_PAGES = {
    "footprint",
    "group_footprints",
    "page_counts",
    "dedup_matrix",
    "incremental_cost",
    "uss_breakdown",
}


@pytest.fixture(scope="module")
def captures(
    page_layout_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dedupx.Frames, LayoutProcess]]:
    work = tmp_path_factory.mktemp("frames")
    lp = start_layout(page_layout_bin, work / "layout", fixture_spec(), zeroread=3)
    try:
        scan = dedupx.scan(lp.pid)
        snap = dedupx.open_snapshot(dedupx.snapshot(work / "snap"))
    finally:
        stop(lp.proc)
    image = work / "fixture.raw"
    image.write_bytes(b"".join(p for pages in lp.spec.values() for p in pages))
    return {
        "scan": (scan.to_frames(), lp),
        "snapshot": (snap, lp),
        "image": (dedupx.load(image), lp),
    }


@pytest.mark.parametrize("source", ["scan", "snapshot", "image"])
@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_each_analysis_takes_each_source(
    captures: dict[str, tuple[dedupx.Frames, LayoutProcess]], source: str, name: str
) -> None:
    frames, lp = captures[source]
    run = ANALYSES[name]
    if source == "image" and name in NEEDS_PAGES:
        with pytest.raises(dedupx.MissingFrames, match="image capture has none"):
            run(frames, lp.pid)
    elif name in ("incremental_cost", "uss_breakdown"):  # the fixture is not a guest
        with pytest.raises(dedupx.NotAGuest, match="not a QEMU guest"):
            run(frames, lp.pid)
    else:
        result = run(frames, lp.pid)
        assert result is not None
        if isinstance(result, pl.DataFrame):
            assert result.height > 0


def test_the_sources_agree(captures: dict[str, tuple[dedupx.Frames, LayoutProcess]]) -> None:
    scan, lp = captures["scan"]
    snap, _ = captures["snapshot"]
    image, _ = captures["image"]
    # The image holds exactly the laid-out pages: every content's copies but one are
    # savings (14, counted by hand in test_scan_duplicates), and the scan has them all.
    assert dedupx.duplicates(image)["total"].item() == 14
    assert dedupx.compare(scan, image)["b_only"].item() == 0
    # The matrix's within row is the duplicates of the process's own frames, from a scan
    # and from a host snapshot narrowed to the process alike.
    for capture in (scan, snap):
        within = dedupx.dedup_matrix(capture, lp.pid).row(0, named=True)
        own = dedupx.duplicates(capture.restrict(pl.col("pid") == lp.pid)).row(0, named=True)
        assert within["row"] == "within"
        for key in ("anon_anon", "file_file", "anon_file", "total", "ksm_reachable"):
            assert within[key] == own[key], key
    # The footprint of the process is the same in the scan and in the host snapshot, taken
    # a moment apart: the kernel may unmap and fault back a few page-cache pages of an idle
    # process meantime (one fault-around window is 16 pages).
    a = dedupx.footprint(scan).row(0, named=True)
    b = dedupx.footprint(snap).filter(pl.col("pid") == lp.pid).row(0, named=True)
    assert abs(a["rss_bytes"] - b["rss_bytes"]) <= 32 * 4096, (a["rss_bytes"], b["rss_bytes"])
    assert a["swap_bytes"] == b["swap_bytes"]
