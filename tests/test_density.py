"""Density as an oracle: the average PSS per instance that dedupx predicts for N instances
from a capture of two must match what N real instances measure (smaps_rollup)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import dedupx
from container_kit import FULL, Container, Containers, unavailable
from dedupx.analysis.density import instances_of
from guest_kit import Guest, ensure_packages, guest_assets
from helpers import (
    KSM,
    THP,
    LayoutProcess,
    fixture_spec,
    ksm_running,
    read,
    rollup,
    run_cli,
    snapshot_elsewhere,
    start_layout,
    stop,
    sysfs,
    wait_converged,
)

TOLERANCE = 0.05


def measured_avg_pss(pids: Sequence[int]) -> float:
    return sum(rollup(p)["Pss"] for p in pids) / len(pids)


def predicted(curve: pl.DataFrame, policy: str, n: int) -> float:
    row = curve.filter((pl.col("policy") == policy) & (pl.col("n") == n))
    return float(row["avg_pss_bytes"].item())


def check(curve: pl.DataFrame, policy: str, measured: dict[int, float], asserted: set[int]) -> None:
    for n, got in sorted(measured.items()):
        want = predicted(curve, policy, n)
        print(f"N={n}: measured {got / 2**20:9.3f} MiB, predicted {want / 2**20:9.3f} MiB")
    for n in sorted(asserted):
        want, got = predicted(curve, policy, n), measured[n]
        assert abs(want - got) <= TOLERANCE * got, (n, want, got)


@pytest.fixture
def layouts(page_layout_bin: Path, tmp_path: Path) -> Iterator[list[LayoutProcess]]:
    started: list[LayoutProcess] = []
    try:
        yield started
    finally:
        for lp in started:
            stop(lp.proc)


def test_processes_without_merging(
    page_layout_bin: Path, tmp_path: Path, layouts: list[LayoutProcess]
) -> None:
    """N copies of a process whose pages the test wrote, each with its own files: what
    they share is page cache (libraries) and nothing else."""

    # Which library pages a process maps is up to fault-around: two instances started
    # back to back mapped 310 libc pages in common and 65 and 51 of their own, and the
    # prediction from two such instances missed eight by 5-8%. Each instance maps every
    # page of its libraries.
    def grow(n: int) -> list[int]:
        while len(layouts) < n:
            work = tmp_path / f"p{len(layouts)}"
            lp = start_layout(page_layout_bin, work, fixture_spec(), zeroread=3, populate_libs=True)
            layouts.append(lp)
        return [lp.pid for lp in layouts]

    pids = grow(2)
    snap_dir = snapshot_elsewhere(tmp_path / "snap2")
    measured = {2: measured_avg_pss(pids)}
    for n in (4, 8):
        measured[n] = measured_avg_pss(grow(n))
    snap = dedupx.open_snapshot(snap_dir)
    curve = dedupx.density(snap, instances=[[p] for p in pids], n_max=8)
    check(curve, "none", measured, {2, 4, 8})
    # The command gives the same curve, for scripts and for people (in 80 columns).
    args = ("density", str(snap_dir), "--instance", str(pids[0]), "--instance", str(pids[1]))
    res = run_cli(*args, "--n-max", "8", "--json")
    assert res.returncode == 0, res.stderr
    assert_frame_equal(pl.DataFrame(json.loads(res.stdout)["curve"]), curve, check_dtypes=False)
    res = run_cli(*args, "--n-max", "8", env={"COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    assert "perfect merging" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
    # Merging can only lower the cost, and perfect merging more than KSM.
    for n in (2, 4, 8):
        assert predicted(curve, "perfect", n) <= predicted(curve, "ksm", n)
        assert predicted(curve, "ksm", n) <= predicted(curve, "none", n)


@pytest.mark.skipif(not KSM.exists(), reason="kernel without KSM")
@pytest.mark.parametrize("thp", ["never", "madvise"])
def test_guests_with_ksm(tmp_path: Path, thp: str) -> None:
    """1, 2, 4 and 8 identical TCG guests, paused once booted, KSM converged, THP off and
    on. With THP on, KSM at first leaves whole the THPs that hold no non-zero duplicate
    (docs/metrics.md), so the 2-guest measurement sits above the curve; as guests start,
    it splits them too, and the curve is what it reaches at 4 and 8."""
    ensure_packages()
    assets = guest_assets(variant="a")
    assert read(KSM / "run") == "0", "KSM must be off before the test (someone else uses it)"
    with ExitStack() as stack:
        stack.enter_context(sysfs(THP, thp))  # before the guests allocate their RAM
        stack.enter_context(ksm_running())
        guests: list[Guest] = []

        def grow(n: int) -> list[int]:
            """N guests, KSM converged over them, then held still: a converged KSM keeps
            reshuffling its chains of shared pages, which moves PSS by a few percent from
            one instant to the next; stopped (run=0), it keeps what it merged."""
            (KSM / "run").write_text("1")
            while len(guests) < n:
                g = Guest(assets, mem_mib=256, name=f"d{len(guests)}", workdir=tmp_path)
                guests.append(stack.enter_context(g))
                g.stop()
            wait_converged()
            (KSM / "run").write_text("0")
            return [g.pid for g in guests]

        measured = {1: measured_avg_pss(grow(1))}
        pids = grow(2)
        measured[2] = measured_avg_pss(pids)
        snap = dedupx.open_snapshot(dedupx.snapshot(tmp_path / "snap2"))
        curve = dedupx.density(snap, n_max=8)
        assert sorted(instances_of(snap, "vm")) == sorted([p] for p in pids)
        for n in (4, 8):
            measured[n] = measured_avg_pss(grow(n))
        print(f"THP {thp}")
        check(curve, "ksm", measured, {4, 8})
    assert read(KSM / "run") == "0"


@pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")
def test_containers(tmp_path: Path) -> None:
    """1, 2, 4 and 8 full busybox containers on one shared root (the study's best case for
    containers): they share the root's page cache and nothing else merges them."""
    with Containers(tmp_path / "containers") as kit:
        root = kit.shared_root()
        started: list[Container] = []

        def grow(n: int) -> list[list[int]]:
            while len(started) < n:
                started.append(kit.start(f"c{len(started)}", FULL, root))
            return [c.cgroup_pids() for c in started]

        def avg_pss(groups: list[list[int]]) -> float:
            return sum(sum(rollup(p)["Pss"] for p in g) for g in groups) / len(groups)

        measured = {1: avg_pss(grow(1))}
        two = grow(2)
        snap = dedupx.open_snapshot(snapshot_elsewhere(tmp_path / "snap2"))
        measured[2] = avg_pss(two)
        for n in (4, 8):
            measured[n] = avg_pss(grow(n))
        # The capture's containers are found as such, one instance per cgroup.
        found = [sorted(g) for g in instances_of(snap, "container")]
        assert all(sorted(g) in found for g in two), (two, found)
        curve = dedupx.density(snap, instances=two, n_max=8)
        check(curve, "none", measured, {4, 8})
