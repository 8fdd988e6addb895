"""Analyses of a synthetic host (bench/synthetic_snapshot.py), small enough to compute whole.

The analyses that take a large host a part at a time (to stay within memory) give what
they give on it whole, with the parts made small enough to be many: density by parts of
the contents, the incremental costs of every VM by batches of guests, and one target's
dedup matrix from the frames holding its contents only. And a guest's cost does not
depend on what its RAM block is called."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import dedupx
import dedupx.analysis.density as density_module
import dedupx.analysis.vm_costs as vm_costs_module
from dedupx.analysis.incremental_cost import incremental_cost
from dedupx.analysis.vm_costs import guest_batches, guest_maps, vm_incremental_costs
from dedupx.analysis.vm_matrices import vm_matrices
from dedupx.model.frames import Frames

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Frames:
    out = tmp_path_factory.mktemp("synthetic") / "snap"
    generator = [sys.executable, str(ROOT / "bench/synthetic_snapshot.py"), str(out)]
    subprocess.run(
        [*generator, "--frames", "1000000", "--vms", "6", "--seed", "7"],
        check=True,
        capture_output=True,
    )
    return dedupx.open_snapshot(out)


def vms(f: Frames) -> list[int]:
    assert f.processes is not None
    return f.processes.filter(pl.col("kind") == "vm").collect()["pid"].to_list()


def test_density_by_parts_equals_density_whole(
    host: Frames, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = dedupx.density(host, max_sharing=256, zero_pages_free=False, n_max=16)
    assert host.pages is not None
    pages = host.pages.select(pl.len()).collect().item()
    monkeypatch.setattr(density_module, "PAGES_PER_PART", pages // 5)
    parts = dedupx.density(host, max_sharing=256, zero_pages_free=False, n_max=16)
    # Sums taken in another order: the bytes agree, the MiB to rounding.
    assert_frame_equal(whole.drop("avg_pss_mib"), parts.drop("avg_pss_mib"))
    assert_frame_equal(whole, parts, rel_tol=1e-12)
    assert whole.filter(pl.col("policy") == "ksm")["total_bytes"].min() > 0


def test_costs_by_batches_equal_costs_at_once(
    host: Frames, monkeypatch: pytest.MonkeyPatch
) -> None:
    maps, errors = guest_maps(host, vms(host))
    assert not errors and len(maps) == 6
    at_once = vm_incremental_costs(host, maps, max_sharing=256, zero_pages_free=True)
    size = max(g.height for g in maps.values())
    monkeypatch.setattr(vm_costs_module, "BATCH_PAGES", 2 * size)
    assert len(guest_batches(maps)) == 3
    batched = vm_incremental_costs(host, maps, max_sharing=256, zero_pages_free=True)
    assert batched == at_once
    assert all(c["pages"] > 0 for c in at_once.values())


def test_one_targets_matrix_equals_its_row_of_every_vms(host: Frames) -> None:
    every = vm_matrices(host)
    for pid in vms(host)[:2]:
        assert_frame_equal(dedupx.dedup_matrix(host, pid), every[pid])


def test_a_backend_named_pc_ram_costs_what_plain_ram_costs(host: Frames, tmp_path: Path) -> None:
    # libvirt gives a guest's memory backend QEMU's default name, pc.ram: the same memory
    # under the same name. (Listed twice among the main blocks, it once doubled the RAM.)
    assert host.provenance.path is not None
    snap = Path(shutil.copytree(host.provenance.path, tmp_path / "snap"))
    procs = pl.read_parquet(snap / "processes.parquet")
    pid = vms(host)[0]
    argv = procs.filter(pl.col("pid") == pid)["cmdline"].to_list()[0]
    mib = argv[argv.index("-m") + 1]
    backend = ["-object", f"memory-backend-ram,id=pc.ram,size={mib}M"]
    named = [*argv, *backend, "-machine", "memory-backend=pc.ram"]
    procs = procs.with_columns(
        pl.when(pl.col("pid") == pid)
        .then(pl.lit(pl.Series([named])))
        .otherwise(pl.col("cmdline"))
        .alias("cmdline")
    )
    procs.write_parquet(snap / "processes.parquet")
    renamed = dedupx.open_snapshot(snap)
    for policy in ("none", "ksm"):
        want = incremental_cost(host, pid, policy=policy, max_sharing=256, zero_pages_free=False)
        got = incremental_cost(renamed, pid, policy=policy, max_sharing=256, zero_pages_free=False)
        assert got == want, policy
        assert got["guest_ram_by_block"] == {"pc.ram": got["guest_ram_pages"]}, policy
    assert dedupx.uss_breakdown(renamed, pid) == dedupx.uss_breakdown(host, pid)
