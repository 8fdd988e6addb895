"""Fleet analysis: fingerprints of real guests, and the fleet matrix on Dask equal to the
same computation on one node, with sampled fingerprints within the error they state."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import dedupx
from dedupx.analysis.fingerprint import SCHEMA, fingerprint, in_sample
from dedupx.analysis.fleet_matrix import fleet_matrix
from dedupx.analysis.placement import place
from dedupx.fleet.cluster import client_for, fleet_on_dask
from dedupx.fleet.inputs import load
from fleet_kit import as_format_1, by_host, planted, remix
from guest_kit import Guest, ensure_packages, guest_assets
from helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def guests_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[int]]]:
    """Two real guests (the cloud kernel and Debian's generic one), paused, and a snapshot."""
    ensure_packages()
    work = tmp_path_factory.mktemp("fleet")
    with ExitStack() as stack:
        guests = [
            stack.enter_context(
                Guest(guest_assets(variant="a", generic_kernel=g), name=f"f{i}", workdir=work)
            )
            for i, g in enumerate((False, True))
        ]
        for g in guests:
            g.stop()
        yield dedupx.snapshot(work / "snap"), [g.pid for g in guests]


def test_fingerprint_pairs_match_compare(guests_snapshot: tuple[Path, list[int]]) -> None:
    """What two guests share by their fingerprints is what `compare` finds between the
    same capture narrowed to each guest: their distinct shared contents, zero-filled ones
    aside (and the same, within 1%, between live scans of the two)."""
    snap_dir, (a, b) = guests_snapshot
    snap = dedupx.open_snapshot(snap_dir)
    fp = fingerprint(snap, host="h")
    m = fleet_matrix(fp)
    names = {r["instance"]: r for r in fp.select("instance", "name").unique().iter_rows(named=True)}
    assert {"h/vm:f0", "h/vm:f1", "h/host"} <= set(names)
    pair = m.filter((pl.col("instance_a") == "h/vm:f0") & (pl.col("instance_b") == "h/vm:f1"))
    got = int(pair["total"].item())

    def shared(row: dict[str, int]) -> int:
        return row["shared_contents"] - (1 if row["shared_zero"] else 0)

    each = [snap.restrict(pl.col("pid") == p) for p in (a, b)]
    want = shared(dedupx.compare(*each).row(0, named=True))
    live = shared(dedupx.compare(dedupx.scan(a), dedupx.scan(b)).row(0, named=True))
    print(f"guests share {got:,} contents by fingerprint, {want:,} by compare, {live:,} live")
    assert got == want
    assert abs(got - live) <= 0.01 * live
    assert pair["anon_anon"].item() + pair["file_file"].item() + pair["anon_file"].item() == got
    assert 0 < pair["ksm"].item() <= pair["anon_anon"].item()


@pytest.fixture(scope="module")
def fleet(guests_snapshot: tuple[Path, list[int]]) -> pl.DataFrame:
    """12 hosts x 3 VMs remixed from the two real guests."""
    fp = fingerprint(dedupx.open_snapshot(guests_snapshot[0]), host="h")
    templates = [fp.filter(pl.col("instance") == f"h/vm:f{i}") for i in (0, 1)]
    return remix(templates, hosts=12, vms_per_host=3)


def test_dask_equals_one_node(fleet: pl.DataFrame, tmp_path: Path) -> None:
    """The matrix from a LocalCluster of 2 worker processes, from one fingerprint file per
    host (and a damaged one, left out and named), equals polars on one node cell for cell."""
    paths = []
    for host, rows in by_host(fleet).items():
        paths.append(str(tmp_path / f"{host}.parquet"))
        rows.write_parquet(paths[-1])
    (tmp_path / "damaged.parquet").write_bytes(b"PAR1 not really")
    with client_for(None, workers=2, timeout=10) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        result = fleet_on_dask([*paths, str(tmp_path / "damaged.parquet")], client=client)
        worker_pids = list(client.run(os.getpid).values())
    # Leaving the block stops the cluster's worker processes, not just the client.
    assert [p for p in worker_pids if Path(f"/proc/{p}").exists()] == []
    assert len(result.errors) == 1 and "damaged.parquet" in result.errors[0]
    one = fleet_matrix(fleet)
    assert one.height == 36 * 35 // 2  # every pair shares the kernel's pages at least
    assert_frame_equal(result.matrix, one)


def test_mixed_and_damaged_snapshots(
    guests_snapshot: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """Snapshot directories among the inputs: one of today's format, one of format 1, one
    whose frames file is damaged and one from a newer dedupx. The two readable ones give the
    matrix polars gives on one node; the others are named with why, and cost only
    themselves."""
    snap = guests_snapshot[0]
    old = as_format_1(snap, tmp_path / "old", hostname="oldhost")
    damaged = shutil.copytree(snap, tmp_path / "damaged")
    frames = damaged / json.loads((damaged / "manifest.json").read_text())["files"]["frames"]
    target = frames if frames.is_file() else sorted(frames.rglob("*.parquet"))[0]
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    newer = shutil.copytree(snap, tmp_path / "newer")
    m = json.loads((newer / "manifest.json").read_text())
    m["format_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(m))
    paths = [str(p) for p in (snap, old, damaged, newer)]
    with client_for(None, workers=2, timeout=10) as client:
        result = fleet_on_dask(paths, client=client)
    assert len(result.errors) == 2, result.errors
    assert str(damaged) in result.errors[0] and str(newer) in result.errors[1]
    assert "format 99" in result.errors[1]
    opened = dedupx.open_snapshot(snap)
    both = pl.concat([fingerprint(opened), fingerprint(opened, host="oldhost")])
    assert_frame_equal(result.matrix, fleet_matrix(both))
    # The format 1 copy is the same capture: each guest shares all it holds with its twin.
    assert {"oldhost/vm:f0", "oldhost/vm:f1"} <= set(result.instances["instance"])


def test_fingerprint_with_bytes_is_read_as_keys(tmp_path: Path) -> None:
    """A fingerprint file written with 16-byte hashes reads as keys, the bytes' big-endian
    number; one whose hash is not 16 bytes is named as unreadable, not turned into nulls."""
    row = {k: pl.Series([None], dtype=t) for k, t in SCHEMA.items() if k != "hash"}
    h = bytes(range(16))
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    pl.DataFrame({**row, "hash": pl.Series([h], dtype=pl.Binary)}).write_parquet(good)
    pl.DataFrame({**row, "hash": pl.Series([b"abc"], dtype=pl.Binary)}).write_parquet(bad)
    loaded = load(str(good))
    assert loaded.rows is not None and loaded.rows["hash"].to_list() == [int.from_bytes(h)]
    broken = load(str(bad))
    assert broken.rows is None and broken.error == f"{bad}: a hash is not 16 bytes"


def test_samples_are_within_their_stated_error(fleet: pl.DataFrame) -> None:
    exact = fleet_matrix(fleet)
    for rate in (0.5, 0.25):
        sampled = fleet.with_columns(pl.lit(rate).alias("rate")).filter(in_sample(pl.col("rate")))
        est = fleet_matrix(sampled).join(
            exact.select("instance_a", "instance_b", pl.col("total").alias("exact")),
            on=["instance_a", "instance_b"],
        )
        err = (est["total"] - est["exact"]).abs() / est["exact"]
        big = est["exact"] >= 1000
        print(
            f"rate {rate}: worst {err.max():.2%}, worst where >= 1,000 {err.filter(big).max():.2%}"
        )
        assert (err <= 3 * est["rel_error"]).all()
        assert (err.filter(big) <= 0.05).all()


def test_fleet_cli(fleet: pl.DataFrame, tmp_path: Path) -> None:
    for host, rows in list(by_host(fleet).items())[:3]:
        rows.write_parquet(tmp_path / f"{host}.parquet")
    res = run_cli("fleet", str(tmp_path / "*.parquet"), "--json", "-o", str(tmp_path / "m.pq"))
    assert res.returncode == 0, res.stderr
    assert pl.read_parquet(tmp_path / "m.pq").height == 9 * 8 // 2
    res = run_cli("fleet", str(tmp_path / "*.parquet"), env={"COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    wide = [x for x in res.stdout.splitlines() if len(x) > 80]
    assert not wide, wide
    # Placement needs each host's RAM: the remixed hosts state none.
    res = run_cli("fleet", str(tmp_path / "host*.parquet"), "--place")
    assert_one_line_error(res, 2, "--capacity-gib")
    res = run_cli(
        "fleet", str(tmp_path / "host*.parquet"), "--place", "--capacity-gib", "1", "--json"
    )
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)["placement"]
    assert plan["fits"], plan
    assert plan["proposed"] >= max(plan["current"], plan["greedy"]), plan
    res = run_cli("fleet", str(tmp_path / "h*.parquet"), "--scheduler", "tcp://127.0.0.1:9")
    assert_one_line_error(res, 1, "tcp://127.0.0.1:9")


def test_placement_recovers_planted_groups(guests_snapshot: tuple[Path, list[int]]) -> None:
    """Groups of VMs that share contents of their own, spread one per host: the proposed
    placement co-locates every group, within each host's RAM, and says what that saves."""
    fp = fingerprint(dedupx.open_snapshot(guests_snapshot[0]), host="h")
    fleet, planted_pages = planted(
        fp.filter(pl.col("instance") == "h/vm:f0"), hosts=8, per_host=3, group_contents=500
    )
    plan = place(fleet)
    print(
        f"saved now {plan['current']:,}, Memory Buddies {plan['greedy']:,}, proposed "
        f"{plan['proposed']:,} pages; {plan['vms_moved']} VMs moved; planted {planted_pages:,}"
    )
    assert plan["fits"]
    gained = plan["proposed"] - plan["current"]
    assert abs(gained - planted_pages) <= 0.05 * planted_pages
    assert plan["proposed"] >= plan["greedy"]
    # Each group ends on one host.
    to = {m["vm"]: m["to"] for m in plan["moves"]}
    where = {
        i: to.get(i, h)
        for i, h in fleet.filter(pl.col("kind") == "vm")
        .select("instance", "host")
        .unique()
        .iter_rows()
    }
    for g in range(8):
        members = [f"host{(g + k) % 8:03d}/vm:vm{(g + k) % 8:03d}-{k:02d}" for k in range(3)]
        assert len({where[m] for m in members}) == 1, (g, [where[m] for m in members])
