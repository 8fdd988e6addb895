"""KSM as an oracle: with guests paused, what KSM merges once it has converged must equal
what dedupx predicts from a snapshot taken just before KSM was turned on, with THP off and
with THP on (madvise, as QEMU asks for huge pages)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import polars as pl
import pytest

import dedupx
from dedupx.model.page_classes import is_zero_page
from guest_kit import Guest, ensure_packages, guest_assets
from helpers import KSM, THP, ksm_running, read, rollup, sysfs, wait_converged


def zero_page_mappings(snap: dedupx.Frames, pids: list[int]) -> int:
    assert snap.pages is not None
    pages = snap.pages.filter(pl.col("pid").is_in(pids) & pl.col("present") & is_zero_page())
    return int(pages.select(pl.len()).collect().item())


@pytest.mark.skipif(not KSM.exists(), reason="kernel without KSM")
@pytest.mark.parametrize("thp", ["never", "madvise"])
def test_ksm_merges_what_dedupx_predicts(tmp_path: Path, thp: str) -> None:
    ensure_packages()
    assets = guest_assets(variant="a")
    assert read(KSM / "run") == "0", "KSM must be off before the test (someone else uses it)"
    with ExitStack() as stack:
        stack.enter_context(sysfs(THP, thp))  # before the guests allocate their RAM
        guests = [
            stack.enter_context(Guest(assets, mem_mib=256, name=f"k{i}", workdir=tmp_path))
            for i in range(3)
        ]
        for g in guests:
            g.stop()
        snap = dedupx.open_snapshot(dedupx.snapshot(tmp_path / "before-ksm"))
        pred = dedupx.ksm_prediction(snap).row(0, named=True)
        assert pred["pages_sharing"] > 10_000, pred
        pss_before = rollup(guests[0].pid)["Pss"]
        with ksm_running():
            merged = wait_converged()
            # Held still (run=0 keeps the merges): a converged KSM keeps reshuffling its
            # chains, which moves what a scan sees from one instant to the next.
            (KSM / "run").write_text("0")
            fp = dedupx.footprint(dedupx.scan(guests[0].pid)).row(0, named=True)
            # What each guest now has alone is what its incremental cost under KSM,
            # predicted before KSM ran, said it would be.
            after = dedupx.open_snapshot(dedupx.snapshot(tmp_path / "after-ksm"))
        assert fp["pss_bytes"] < fp["pss_without_ksm_bytes"]
        if thp == "never":
            # A guest's PSS without KSM's merges is what it was before KSM ran. (With THPs,
            # splitting them for KSM frees their zero-filled subpages: RSS itself drops.)
            assert abs(fp["pss_without_ksm_bytes"] - pss_before) <= 0.005 * pss_before
        print(f"THP {thp}: KSM merged {merged}, dedupx predicted {pred}")
        for g in guests:
            cost = dedupx.incremental_cost(snap, g.pid)["pages"]
            uss = dedupx.uss_breakdown(after, g.pid)["pages"]
            print(f"guest {g.pid}: incremental cost under KSM {cost:,}, USS once merged {uss:,}")
            if thp == "never":
                assert abs(cost - uss) <= 0.03 * uss, (cost, uss)
        if thp == "never":
            assert pred["thp_frames"] == 0
            assert abs(merged - pred["pages_sharing"]) <= 0.02 * pred["pages_sharing"]
        else:
            # QEMU asks for huge pages on guest RAM. KSM splits only the THPs that hold a
            # non-zero subpage with a copy elsewhere; their zero-filled subpages go to the
            # zero page, and the other THPs stay whole, their copies unmerged.
            assert pred["thp_frames"] > 0 and pred["thp_kept_copies"] > 0
            assert pred["pages_sharing"] < pred["pages_sharing_if_split"]
            assert abs(merged - pred["pages_sharing"]) <= 0.02 * pred["pages_sharing"]
            on_zero_page = zero_page_mappings(after, [g.pid for g in guests])
            print(f"guest pages now on the zero page: {on_zero_page:,}")
            low, high = pred["zero_page_remaps"], pred["zero_page_remaps"] + pred["thp_kept_copies"]
            assert 0.98 * low <= on_zero_page <= 1.02 * high
    assert read(KSM / "run") == "0"
