"""KSM as an oracle: with guests paused and THP off, what KSM merges once it has converged
must equal what dedupx predicts from a snapshot taken just before KSM was turned on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

import dedupx
from guest_kit import Guest, ensure_packages, guest_assets
from helpers import rollup

KSM = Path("/sys/kernel/mm/ksm")
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def read(path: Path) -> str:
    text = path.read_text().strip()
    if "[" in text:  # "always [madvise] never": the bracketed one is in force
        return text.split("[", 1)[1].split("]", 1)[0]
    return text


@contextmanager
def sysfs(path: Path, value: str) -> Iterator[None]:
    """Sets a sysfs knob and puts the previous value back, whatever happens."""
    before = read(path)
    path.write_text(value)
    try:
        yield
    finally:
        path.write_text(before)


@contextmanager
def ksm_running() -> Iterator[None]:
    with ExitStack() as stack:
        stack.enter_context(sysfs(KSM / "pages_to_scan", "5000"))
        stack.enter_context(sysfs(KSM / "sleep_millisecs", "5"))
        stack.enter_context(sysfs(KSM / "run", "1"))
        try:
            yield
        finally:
            (KSM / "run").write_text("2")  # unmerge everything before `run` is restored


def merged_pages() -> int:
    return int(read(KSM / "pages_sharing")) + int(read(KSM / "ksm_zero_pages"))


def wait_converged(timeout: float = 180.0) -> int:
    """Until pages_sharing stops changing across two more full scans."""
    deadline = time.monotonic() + timeout
    last, since_scans = -1, 0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now, scans = merged_pages(), int(read(KSM / "full_scans"))
        if now != last:
            last, since_scans = now, scans
        elif now > 0 and scans >= since_scans + 2:
            return now
    raise TimeoutError(f"KSM did not converge in {timeout} s (at {last} pages)")


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
            fp = dedupx.footprint(dedupx.scan(guests[0].pid)).row(0, named=True)
        assert fp["pss_bytes"] < fp["pss_without_ksm_bytes"]
        if thp == "never":
            # A guest's PSS without KSM's merges is what it was before KSM ran. (With THPs,
            # splitting them for KSM frees their zero-filled subpages: RSS itself drops.)
            assert abs(fp["pss_without_ksm_bytes"] - pss_before) <= 0.005 * pss_before
        print(f"THP {thp}: KSM merged {merged}, dedupx predicted {pred}")
        if thp == "never":
            assert pred["thp_frames"] == 0
            assert abs(merged - pred["pages_sharing"]) <= 0.02 * pred["pages_sharing"]
        else:
            # QEMU asks for huge pages on guest RAM: KSM merges less, and what it leaves is
            # no more than the merges that need a THP split first.
            assert pred["thp_frames"] > 0
            assert merged <= pred["pages_sharing"] * 1.02
            assert pred["pages_sharing"] - merged <= pred["pages_sharing_thp"] * 1.02
    assert read(KSM / "run") == "0"
