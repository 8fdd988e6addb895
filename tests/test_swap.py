"""Swapped pages: counted in coverage, and hashed from the swap area without being swapped
back in. The test makes its own swap file (and removes it), pages out part of a fixture
whose pages it wrote, and compares with the same fixture scanned while all was present."""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

import dedupx
from helpers import PAGE, LayoutProcess, fill_page, random_page, start_layout, stop

SWAP_MIB = 64
MADV_PAGEOUT = 21
SYS_PROCESS_MADVISE = 440


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def page_out(pid: int, start: int, pages: int) -> None:
    """process_madvise(MADV_PAGEOUT) over [start, start + pages): the kernel writes those
    pages to swap and unmaps them, as memory pressure would."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.pidfd_open(pid)
    try:
        iov = IoVec(start, pages * PAGE)
        done = libc.syscall(SYS_PROCESS_MADVISE, fd, ctypes.byref(iov), 1, MADV_PAGEOUT, 0)
        if done < 0:
            raise OSError(ctypes.get_errno(), "process_madvise(MADV_PAGEOUT)")
    finally:
        os.close(fd)


def vm_swap_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSwap:"):
            return int(line.split()[1])
    raise AssertionError("no VmSwap")


@pytest.fixture
def swap_file(tmp_path: Path) -> Iterator[Path]:
    """A swap file of its own, on while the test runs; removed after."""
    if Path("/proc/swaps").read_text().count("\n") > 1:
        pytest.skip("the host already swaps: the test would share its areas")
    path = tmp_path / "swapfile"
    with path.open("wb") as f:  # written, not sparse: swapon refuses holes
        for _ in range(SWAP_MIB):
            f.write(bytes(1 << 20))
    path.chmod(0o600)
    subprocess.run(["mkswap", str(path)], check=True, capture_output=True)
    subprocess.run(["swapon", str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["swapoff", str(path)], check=True, capture_output=True)


@pytest.fixture
def swappable(page_layout_bin: Path, tmp_path: Path) -> Iterator[LayoutProcess]:
    """2,048 anon pages: 256 contents, each 4 to 12 times, and zero-filled ones."""
    rng = random.Random(20261127)
    contents = [random_page(rng) for _ in range(256)] + [fill_page(0)]
    pages = [c for c in contents for _ in range(rng.randrange(4, 12))]
    rng.shuffle(pages)
    pages = pages[:2048]
    lp = start_layout(page_layout_bin, tmp_path / "layout", {"anon.bin": pages})
    try:
        yield lp
    finally:
        stop(lp.proc)


def test_swapped_pages_are_hashed_from_the_swap_area(
    swap_file: Path, swappable: LayoutProcess
) -> None:
    pid = swappable.pid
    start, n = swappable.regions["anon.bin"]
    before = dedupx.scan(pid)
    want = dedupx.duplicates(before).row(0, named=True)
    assert before.stats["swap_slots"] == 0

    page_out(pid, start + (n // 2) * PAGE, n - n // 2)
    swap_kb = vm_swap_kb(pid)
    assert swap_kb >= (n - n // 2) * PAGE // 1024 * 0.9, swap_kb  # most of the half went out

    after = dedupx.scan(pid)
    assert vm_swap_kb(pid) == swap_kb  # the scan swapped nothing back in
    region = pl.col("vaddr").is_between(start, start + n * PAGE - 1)
    swapped = after.pages.filter(region & pl.col("swapped"))
    assert swapped.height == swap_kb // 4
    assert swapped["hash"].null_count() == 0
    # Each swapped page's hash is that of the content the test wrote there.
    want_hash = {
        start + i * PAGE: h
        for i, h in enumerate(before.pages.filter(region).sort("vaddr")["hash"].to_list())
    }
    assert all(want_hash[a] == h for a, h in swapped.select("vaddr", "hash").iter_rows())

    got = dedupx.duplicates(after).row(0, named=True)
    print(
        f"{swapped.height:,} pages swapped out; duplicates {got['total']:,} (all present:"
        f" {want['total']:,}); coverage {after.to_frames().provenance.coverage}"
    )
    assert {k: got[k] for k in ("anon_anon", "file_file", "anon_file", "total")} == {
        k: want[k] for k in ("anon_anon", "file_file", "anon_file", "total")
    }
    cov = after.to_frames().provenance.coverage
    slots = after.stats["swap_slots"]
    assert slots == swapped.select("pfn").n_unique() > 0
    assert cov["pages_in_scope"] == after.stats["distinct_pfns"] + slots
    assert cov["not_covered"]["swapped"] == 0 and cov["hashed_share"] == 1.0
    # The footprint still counts swapped pages as swap, not as resident.
    fp = dedupx.footprint(after).row(0, named=True)
    assert fp["swap_bytes"] == swap_kb * 1024


def test_swapped_pages_unhashed_without_a_readable_area(
    swap_file: Path, swappable: LayoutProcess, tmp_path: Path
) -> None:
    """A /proc whose swaps lists no area (as when the area cannot be read): the swapped
    pages are counted in coverage as not hashed, not left out of it."""
    pid = swappable.pid
    start, n = swappable.regions["anon.bin"]
    page_out(pid, start, n)
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / str(pid)).symlink_to(f"/proc/{pid}")
    for name in ("kpageflags", "kpagecount", "self"):
        (proc / name).symlink_to(f"/proc/{name}")
    (proc / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")
    scan = dedupx.scan(pid, proc_root=str(proc))
    cov = scan.to_frames().provenance.coverage
    slots = scan.stats["swap_slots"]
    assert slots > 0 and scan.stats["swap_hashed"] == 0
    assert cov["not_covered"]["swapped"] == slots
    assert cov["pages_hashed"] + sum(cov["not_covered"].values()) == cov["pages_in_scope"]
    assert cov["hashed_share"] < 1.0
