"""Containers' footprints and sharing, on real containers the test starts itself
(tests/container_kit.py: namespaces, a cgroup each, a busybox root; no engine).

Checked against what dedupx does not compute: the kernel's smaps_rollup PSS of each
container's processes, and docs/metrics.md's matrix counted by hand from the snapshot's
frames. Then the study's shared-versus-copied root (chapter 6): containers chrooted into one
root share its binary's page cache as frames; containers on copies hold the same content in
frames of their own, which only deduplication (file/file) could merge.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from rich.console import Console

import dedupx
from container_kit import FULL, FULL_PROCESSES, SINGLE, Container, Containers, unavailable
from dedupx.report.snapshot import snapshot_report
from dedupx.report.terminal import render_snapshot_report
from helpers import matrix_by_hand, rollup

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

# The containers are idle, but the snapshot reads the kernel's counts a moment apart from
# smaps_rollup: the container's PSS must lie within the kernel's values read just before and
# just after, give or take 1% (a page touched in between) and 1 KiB per process
# (smaps_rollup truncates each process's PSS to whole kB; dedupx sums exact fractions).
PSS_TOLERANCE = (0.01, 1024)


def kernel_pss(c: Container) -> int:
    return sum(rollup(pid)["Pss"] for pid in c.pids)


def pair_sharing(snap: dedupx.Frames, a: Container, b: Container) -> tuple[int, int]:
    """By hand, over the frames of the two containers' busybox mappings: (frames both map,
    contents both hold in frames only one of them maps): sharing as frames, and duplicate
    content (file/file)."""
    assert snap.pages is not None and snap.vmas is not None
    busybox = snap.vmas.filter(pl.col("path").str.ends_with("/bin/busybox")).select("pid", "vma_id")
    mapped = (
        snap.pages.filter(pl.col("present"))
        .join(busybox, on=["pid", "vma_id"])
        .select("pid", "pfn", "hash")
        .collect()
    )
    frames = {
        side: dict(mapped.filter(pl.col("pid").is_in(c.pids)).select("pfn", "hash").iter_rows())
        for side, c in (("a", a), ("b", b))
    }
    both = frames["a"].keys() & frames["b"].keys()

    def contents(side: str) -> set[bytes]:
        return {h for p, h in frames[side].items() if p not in both and h is not None}

    return len(both), len(contents("a") & contents("b"))


def check_containers(snap: dedupx.Frames, started: list[Container], before: dict[str, int]):
    """Each container's footprint against smaps_rollup, its matrix against by_hand."""
    kinds = dict(snap.processes.select("pid", "kind").collect().iter_rows())  # type: ignore[union-attr]
    assert kinds[os.getppid()] == "process"  # pytest's parent: a host process
    groups = {g["group"]: g for g in dedupx.group_footprints(snap).iter_rows(named=True)}
    listed = {c["cgroup"]: c for c in dedupx.containers(snap).iter_rows(named=True)}
    after = {c.name: kernel_pss(c) for c in started}
    for c in started:
        assert all(kinds[p] == "container" for p in c.pids), (c.name, kinds)
        g = groups[f"container {c.cgroup_path}"]
        assert g["processes"] == len(c.pids)
        assert listed[c.cgroup_path]["pids"] == c.pids
        assert listed[c.cgroup_path]["pss_bytes"] == g["pss_bytes"]
        lo, hi = sorted((before[c.name], after[c.name]))
        slack = PSS_TOLERANCE[0] * hi + PSS_TOLERANCE[1] * len(c.pids)
        print(
            f"{c.name}: {len(c.pids)} processes, PSS dedupx {g['pss_bytes']:,} B, "
            f"smaps_rollup {before[c.name]:,} / {after[c.name]:,} B"
        )
        assert lo - slack <= g["pss_bytes"] <= hi + slack, (c.name, g["pss_bytes"], lo, hi)

        got = {r["row"]: r for r in dedupx.group_matrix(snap, c.pids).iter_rows(named=True)}
        want = matrix_by_hand(snap, set(c.pids), "container")
        for row in ("within", "host", "container"):
            for col in ("anon_anon", "file_file", "anon_file", "zero"):
                assert got[row][col] == want[row][col], (c.name, row, col)
            assert got[row]["ksm_reachable"] == want[row]["ksm"], (c.name, row)
        for col in ("anon_anon", "file_file", "anon_file", "zero"):
            assert got["total"][col] == sum(want[r][col] for r in want), (c.name, col)


def snapshot_of(tmp_path: Path, name: str, started: list[Container]):
    before = {c.name: kernel_pss(c) for c in started}
    snap = dedupx.open_snapshot(dedupx.snapshot(tmp_path / name))
    return snap, before


def container_row(snap: dedupx.Frames, c: Container) -> dict[str, Any]:
    """The matrix's row with other containers, taken before the host's (``order``): what
    else runs on the host (a guest booted from a busybox initramfs) may hold busybox too."""
    m = dedupx.group_matrix(snap, c.pids, order=("container", "host"))
    return m.filter(pl.col("row") == "container").row(0, named=True)


def test_containers_on_shared_and_copied_roots(tmp_path: Path) -> None:
    with Containers(tmp_path / "shared") as kit:
        root = kit.shared_root()
        s1 = kit.start("full1", FULL, root)
        s2 = kit.start("full2", FULL, root)
        app = kit.start("app", SINGLE, root)
        assert len(s1.pids) == FULL_PROCESSES and len(app.pids) == 1
        shared, before = snapshot_of(tmp_path, "snap-shared", [s1, s2, app])
        check_containers(shared, [s1, s2, app], before)
        shared_frames, shared_dups = pair_sharing(shared, s1, s2)
        shared_row = container_row(shared, s1)
        check_report(shared, tmp_path / "snap-shared", [s1, s2, app])
    with Containers(tmp_path / "copied") as kit:
        c1 = kit.start("full1", FULL, kit.copied_root("full1"))
        c2 = kit.start("full2", FULL, kit.copied_root("full2"))
        copied, before = snapshot_of(tmp_path, "snap-copied", [c1, c2])
        check_containers(copied, [c1, c2], before)
        copied_frames, copied_dups = pair_sharing(copied, c1, c2)
        copied_row = container_row(copied, c1)
    print(
        f"shared root: {shared_frames} file frames mapped by both, {shared_dups} duplicate "
        f"contents; matrix of full1 with other containers: file/file {shared_row['file_file']}"
    )
    print(
        f"copied roots: {copied_frames} file frames mapped by both, {copied_dups} duplicate "
        f"contents; matrix of full1 with other containers: file/file {copied_row['file_file']}"
    )
    # On one root, the two containers map the same page cache of busybox: shared frames,
    # nothing to deduplicate. On copies, no frame is shared, and as many contents are held
    # twice: file/file duplicates KSM cannot merge.
    assert shared_frames > 50
    assert shared_dups <= shared_frames // 10
    assert copied_frames == 0
    assert copied_dups > 50
    assert copied_dups >= 0.8 * shared_frames
    # A content busybox holds at two offsets counts once; one C1 also holds in an anon
    # (copied-on-write) frame may count as anon/anon.
    assert copied_row["file_file"] >= 0.95 * copied_dups
    assert shared_row["file_file"] < copied_row["file_file"] // 5


def check_report(snap: dedupx.Frames, path: Path, started: list[Container]) -> None:
    """``dedupx analyze`` lists each container with its PSS and matrix, in JSON and in
    terminal tables within 80 columns."""
    res = subprocess.run(
        [sys.executable, "-m", "dedupx", "analyze", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    listed = {c["cgroup"]: c for c in json.loads(res.stdout)["containers"]}
    for c in started:
        r = listed[c.cgroup_path]
        assert r["pids"] == c.pids
        assert [m["row"] for m in r["dedup_matrix"]] == ["within", "host", "container", "total"]
        want = dedupx.group_matrix(snap, c.pids).to_dicts()
        assert r["dedup_matrix"] == json.loads(json.dumps(want, default=str))
    console = Console(width=80, record=True, color_system=None)
    render_snapshot_report(snapshot_report(snap), console)
    text = console.export_text()
    for c in started:
        assert f"Container {c.cgroup_path}" in text
    assert "with other containers" in text
    assert max(len(line) for line in text.splitlines()) <= 80
