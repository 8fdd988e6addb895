"""Whole-host snapshots: what they hold, how they are written, how damage is reported."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import blake3
import numpy as np
import polars as pl
import pytest

import dedupx
from dedupx.exceptions import CorruptSnapshot, SnapshotVersionError
from helpers import PAGE, assert_one_line_error, run_cli

MANIFEST_KEYS = {
    "format_version",
    "dedupx_version",
    "created",
    "hostname",
    "kernel",
    "page_size",
    "source",
    "coverage",
    "command",
    "files",
    "rows",
}


@pytest.fixture(scope="module")
def host_snapshot_dir(
    tmp_path_factory: pytest.TempPathFactory, page_layout_bin: Path, request: pytest.FixtureRequest
) -> tuple[Path, dict[int, bytes], int]:
    """One snapshot of this host taken while a layout process runs; returns the snapshot,
    the layout's vaddr -> content, and its PID."""
    from helpers import fixture_spec, start_layout, stop

    work = tmp_path_factory.mktemp("snap")
    lp = start_layout(page_layout_bin, work / "layout", fixture_spec(), zeroread=3)
    try:
        out = work / "host.snap"
        res = run_cli("snapshot", "-o", str(out), "--quiet")
        assert res.returncode == 0, res.stderr
        contents = {va: c for va, (_, c) in lp.page_contents().items()}
        return out, contents, lp.pid
    finally:
        stop(lp.proc)


def test_snapshot_manifest_and_modes(host_snapshot_dir: tuple[Path, dict[int, bytes], int]) -> None:
    out, _, _ = host_snapshot_dir
    m = json.loads((out / "manifest.json").read_text())
    assert set(m) >= MANIFEST_KEYS
    assert m["format_version"] == 2 and m["page_size"] == PAGE and m["kind"] == "host"
    assert m["kernel"] == os.uname().release
    cov = m["coverage"]
    # Every page of System RAM is in scope; only those mapped, hashed or in a page table
    # have a frames row (the rest are counted by class).
    assert cov["pages_in_scope"] == system_ram_pages()
    assert 0 < cov["pages_hashed"] <= m["rows"]["frames"] < cov["pages_in_scope"]
    assert cov["pages_hashed"] + sum(cov["not_covered"].values()) == cov["pages_in_scope"]
    if not Path("/proc/kcore").exists():
        assert "page cache (mincore)" in cov["source"]
        by = cov["hashed_by_source"]
        assert by["process memory"] + by["page cache"] == cov["pages_hashed"]
        assert by["page cache"] > 0  # the test itself runs from cached files
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for p in out.rglob("*"):
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def system_ram() -> list[tuple[int, int]]:
    """System RAM as (first PFN, end PFN) ranges, from the top-level ranges of /proc/iomem
    (whole pages only)."""
    ranges = []
    for line in Path("/proc/iomem").read_text().splitlines():
        m = re.fullmatch(r"([0-9a-f]+)-([0-9a-f]+) : System RAM", line)
        if m:
            first, end = -(-int(m[1], 16) // PAGE), (int(m[2], 16) + 1) // PAGE
            if end > first:
                ranges.append((first, end))
    return ranges


def system_ram_pages() -> int:
    return sum(end - first for first, end in system_ram())


def test_free_memory_is_counted_without_rows(
    host_snapshot_dir: tuple[Path, dict[int, bytes], int],
) -> None:
    """The free pages of RAM get no frames row; coverage still counts them, as the kernel's
    flags read by the test itself count them over System RAM (head of a free block, or no
    flags at all, and in no page table), within what a busy host frees or takes meanwhile
    (0.9% apart when read right after a snapshot on a quiet host)."""
    out, _, _ = host_snapshot_dir
    snap = dedupx.open_snapshot(out)
    free = snap.provenance.coverage["not_covered"]["free"]
    with open("/proc/kpageflags", "rb", buffering=0) as f:  # whole u64s at a time
        flags = np.frombuffer(b"".join(iter(lambda: f.read(1 << 20), b"")), dtype=np.uint64)
    buddy, mmap = np.uint64(1 << 10), np.uint64(1 << 11)
    free_pfn = (((flags & buddy) != 0) | (flags == 0)) & ((flags & mmap) == 0)
    mine = sum(int(np.count_nonzero(free_pfn[a:b])) for a, b in system_ram())
    # A page hashed (the page-cache walk) and freed before its flags were read keeps its
    # row: its hash is known. An unhashed free page never has one.
    free_rows = (
        snap.frames.filter((pl.col("kpageflags") & (1 << 10) != 0) & pl.col("hash").is_null())
        .collect()
        .height
    )
    print(
        f"free pages: {free:,} in coverage, {mine:,} by the test's own reading; "
        f"{free_rows} unhashed free pages have a row"
    )
    assert free_rows == 0
    assert abs(free - mine) <= 0.1 * mine


def test_snapshot_holds_the_process_pages(
    host_snapshot_dir: tuple[Path, dict[int, bytes], int],
) -> None:
    out, contents, pid = host_snapshot_dir
    snap = dedupx.open_snapshot(out)
    procs = snap.processes.collect() if snap.processes is not None else pl.DataFrame()
    me = procs.filter(pl.col("pid") == pid).row(0, named=True)
    assert me["comm"] == "page_layout" and me["kind"] == "process"
    assert snap.pages is not None
    pages = snap.pages.filter(pl.col("pid") == pid).collect()
    laid = pages.filter(pl.col("vaddr").is_in(list(contents)))
    assert laid.height == len(contents)
    for row in laid.iter_rows(named=True):
        assert row["hash"] == blake3.blake3(contents[row["vaddr"]]).digest()[:16]
    # frames: the same PFNs, the same hashes, marked mapped.
    f = snap.frames.join(laid.lazy().select("pfn", pl.col("hash").alias("h")), on="pfn").collect()
    assert f.height == laid["pfn"].n_unique()
    assert (f["hash"] == f["h"]).all() and f["mapped"].all()
    # The fixture's duplicates are among the host's.
    host = dedupx.duplicates(snap).row(0, named=True)
    assert host["anon_anon"] >= 11 and host["file_file"] >= 1


def test_analyze_reports_groups(host_snapshot_dir: tuple[Path, dict[int, bytes], int]) -> None:
    out, _, _ = host_snapshot_dir
    res = run_cli("analyze", str(out), "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["coverage"]["pages_hashed"] > 0
    assert {"anon_anon", "file_file", "anon_file", "total"} <= set(r["duplicates"])
    assert any(g["group"] == "host processes" for g in r["groups"])
    assert r["total_pss_bytes"] == sum(g["pss_bytes"] for g in r["groups"])
    res = run_cli("analyze", str(out))
    assert res.returncode == 0 and "Footprint by group" in res.stdout


def test_killed_snapshot_leaves_nothing_complete(tmp_path: Path) -> None:
    out = tmp_path / "killed.snap"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dedupx", "snapshot", "-o", str(out), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill it while it writes: as soon as its temporary directory has a file in it (after
    # pass 1 and the page-cache walk: tens of seconds on a busy host).
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        partial = list(tmp_path.glob(".killed.snap.*.partial"))
        if partial and any(partial[0].rglob("*.parquet")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the snapshot finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    partial = list(tmp_path.glob(".killed.snap.*.partial"))
    assert partial, "the temporary directory is where the kill found it"
    for p in [out, *partial]:
        with pytest.raises(CorruptSnapshot):
            dedupx.open_snapshot(p)
    # The next snapshot to the same place removes what the killed one left, and says so.
    res = run_cli("snapshot", "-o", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    assert f"removed {partial[0]}" in res.stderr
    assert not list(tmp_path.glob(".killed.snap.*.partial"))
    dedupx.open_snapshot(out)


def small_snapshot(tmp_path: Path) -> Path:
    img = tmp_path / "img.raw"
    img.write_bytes(bytes(PAGE) + b"\x01" * PAGE)
    return dedupx.image_snapshot(img, tmp_path / "s")


def test_newer_format_is_refused(tmp_path: Path) -> None:
    s = small_snapshot(tmp_path)
    m = json.loads((s / "manifest.json").read_text())
    m["format_version"] = 99
    (s / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SnapshotVersionError):
        dedupx.open_snapshot(s)
    assert_one_line_error(run_cli("analyze", str(s)), 9, "format 99", "upgrade dedupx")


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    s = small_snapshot(tmp_path)
    (frames,) = (s / "frames").glob("part-*.parquet")  # an image's frames come in windows
    data = frames.read_bytes()
    frames.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptSnapshot):
        dedupx.open_snapshot(s)
    assert_one_line_error(run_cli("analyze", str(s)), 9, "damaged")
    frames.unlink()
    assert_one_line_error(run_cli("analyze", str(s)), 9, "missing")
    (s / "manifest.json").unlink()
    assert_one_line_error(run_cli("analyze", str(s)), 9, "no manifest.json")
    assert_one_line_error(run_cli("analyze", str(tmp_path / "nothing")), 9, "not a snapshot")


def test_full_disk_leaves_nothing(tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        img = tmp_path / "img.raw"
        with open(img, "wb") as f:
            f.write(os.urandom(PAGE * 4096))  # 16 MiB of distinct pages: frames > 64 KiB
        res = run_cli("image", str(img), "-o", str(mnt / "s"), "--quiet")
        assert_one_line_error(res, 7, "cannot write")
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_unmapped_counts_need_only_kpf_mmap(
    host_snapshot_dir: tuple[Path, dict[int, bytes], int],
) -> None:
    """A snapshot reads the map count of a PFN no process maps only where its flags carry
    KPF_MMAP, and gives 0 elsewhere. That rests on the kernel never counting a mapping of a
    page without KPF_MMAP: checked here over every PFN of RAM, both files read a chunk at a
    time. A page mapped or unmapped between the two reads (a guest booting maps hundreds in
    the milliseconds between them) is read again, flags around its count, and counts only
    if its flags lacked KPF_MMAP both times. Then over the snapshot's own frames."""
    kpf_mmap = 11
    chunk = 1 << 15
    pfns = counted = without_flag = 0
    flags_fd = os.open("/proc/kpageflags", os.O_RDONLY)
    counts_fd = os.open("/proc/kpagecount", os.O_RDONLY)

    def mapped_flag(pfn: int) -> bool:
        return bool(os.pread(flags_fd, 8, pfn * 8)[1] >> (kpf_mmap - 8) & 1)

    try:
        while True:
            flags = os.pread(flags_fd, chunk * 8, pfns * 8)
            counts = os.pread(counts_fd, len(flags), pfns * 8)
            if not flags:
                break
            for i in range(0, min(len(flags), len(counts)), 8):
                if counts[i : i + 8] != bytes(8):
                    counted += 1
                    if not flags[i + 1] >> (kpf_mmap - 8) & 1:
                        pfn = pfns + i // 8
                        before = mapped_flag(pfn)
                        count = os.pread(counts_fd, 8, pfn * 8)
                        without_flag += not before and not mapped_flag(pfn) and count != bytes(8)
            pfns += len(flags) // 8
    finally:
        os.close(flags_fd)
        os.close(counts_fd)
    print(f"{pfns:,} PFNs, {counted:,} with a map count, {without_flag} of them without KPF_MMAP")
    assert counted > 1000 and without_flag == 0
    snap = dedupx.open_snapshot(host_snapshot_dir[0])
    unmapped = snap.frames.filter(~pl.col("mapped") & (pl.col("mapcount") > 0))
    bad = unmapped.filter(pl.col("kpageflags") & (1 << kpf_mmap) == 0).collect()
    assert bad.height == 0
