"""The host's page cache without kcore: cached pages of files no process maps are hashed
(found with mincore, never read from disk), so the host row of the dedup matrix sees them."""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

import dedupx
from dedupx.model.kpageflags import KPF_ANON, KPF_LRU, KPF_SWAPBACKED, flag
from guest_kit import Guest, ensure_packages, guest_assets, host_files
from helpers import PAGE, ZERO_HASH, LayoutProcess, keep_warm, start_layout, stop

COPIES = 300  # pages of the fixture that copy pages of the cached file
FILE_PAGES = 1024


def residency(path: Path) -> list[bool]:
    """Which pages of ``path`` are in the page cache: mincore over a mapping of our own
    (mapping a file reads nothing; mincore faults nothing in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    vec = (ctypes.c_ubyte * (size // PAGE))()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value)
        try:
            assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return [bool(b & 1) for b in vec]


def sh(cmd: str) -> None:
    subprocess.run(["sh", "-c", cmd], check=True)


@pytest.fixture
def cached_file(tmp_path: Path) -> Path:
    """A file of random pages, cached (just written), mapped by nobody. Its bytes are made
    and copied by other processes: in the test's own memory they would be host copies."""
    path = tmp_path / "host-file.bin"
    sh(f"head -c {FILE_PAGES * PAGE} /dev/urandom > {path}")
    return path


@pytest.fixture
def kept_warm(cached_file: Path) -> Iterator[Path]:
    """The cached file, kept warm (see ``keep_warm``)."""
    with keep_warm([cached_file]):
        yield cached_file


@pytest.fixture
def copier(page_layout_bin: Path, tmp_path: Path, cached_file: Path) -> Iterator[LayoutProcess]:
    """A process whose anon memory holds copies of the file's first COPIES pages, and 100
    random pages of its own."""
    work = tmp_path / "layout"
    work.mkdir()
    sh(
        f"(head -c {COPIES * PAGE} {cached_file}; head -c {100 * PAGE} /dev/urandom)"
        f" > {work}/anon.bin"
    )
    lp = start_layout(page_layout_bin, work, {})
    # The layout's own copy of its pages goes with its file (unlinked, unmapped: freed).
    (work / "anon.bin").unlink()
    try:
        yield lp
    finally:
        stop(lp.proc)


def file_hashes(path: Path, whole_pages: bool = False) -> list[bytes]:
    """dedupx's hash (BLAKE3, first 16 bytes) of each page of ``path`` (with
    ``whole_pages``, the full pages only), computed in another process: bytes the test held
    would be host copies of the pages."""
    end = f"len(d) // {PAGE} * {PAGE}" if whole_pages else "len(d)"
    code = (
        "import sys, blake3\n"
        "d = open(sys.argv[1], 'rb').read()\n"
        f"for i in range(0, {end}, {PAGE}):\n"
        f"    print(blake3.blake3(d[i:i + {PAGE}]).digest()[:16].hex())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True
    )
    return [bytes.fromhex(h) for h in out.stdout.split()]


def test_unmapped_page_cache_fills_the_host_row(
    kept_warm: Path, copier: LayoutProcess, tmp_path: Path
) -> None:
    """Every page of a cached file nobody maps (kept warm) is hashed as host page cache
    with the walk, none without; the fixture's copies of COPIES of them land in the host
    row's anon/file cell (beside other host copies, such as a guest's copy of libc)."""
    path = kept_warm
    want = file_hashes(path)
    assert len(set(want)) == FILE_PAGES and all(residency(path))
    with_cache = dedupx.open_snapshot(dedupx.snapshot(tmp_path / "with"))
    without = dedupx.open_snapshot(dedupx.snapshot(tmp_path / "without", page_cache=False))
    found: dict[str, set[bytes]] = {}
    for name, snap in (("with", with_cache), ("without", without)):
        frames = snap.frames.filter(pl.col("hash").is_in(want) & ~pl.col("mapped"))
        found[name] = set(frames.select(pl.col("hash").unique()).collect().to_series())
    # The host row's floor: copies of pages the walk hashed and that were still page cache
    # when their flags were read. Reclaim may free a page in between (then its PFN holds
    # something else: in one CI run 6 of the 300 had become anon).
    cached = (
        with_cache.frames.filter(pl.col("hash").is_in(want) & ~pl.col("mapped"))
        .filter(flag(KPF_LRU) & ~flag(KPF_ANON) & ~flag(KPF_SWAPBACKED))
        .select(pl.col("hash").unique())
        .collect()
        .to_series()
    )
    copies_found = sum(h in set(cached) for h in want[:COPIES])
    host = dedupx.group_matrix(with_cache, [copier.pid]).filter(pl.col("row") == "host")
    print(
        f"file pages hashed as unmapped page cache: {len(found['with'])} with the walk, "
        f"{len(found['without'])} without, of {FILE_PAGES}; host row anon/file "
        f"{host['anon_file'].item()} ({COPIES} copies of the file, {copies_found} of "
        "pages hashed and still cached)"
    )
    assert len(found["without"]) == 0
    assert 0.9 * FILE_PAGES <= len(found["with"]) <= FILE_PAGES
    assert host["anon_file"].item() >= copies_found
    cov = with_cache.provenance.coverage
    walk = with_cache.provenance.manifest["scan"]["page_cache"]
    print(f"coverage by source {cov['hashed_by_source']}; walk {walk}")
    assert cov["hashed_by_source"]["page cache"] >= FILE_PAGES
    assert walk["files"] >= walk["files_cached"] > 0


def test_walk_reads_nothing_from_disk(cached_file: Path, tmp_path: Path) -> None:
    """With the file evicted and every third page read back, the walk brings in no page of
    the file that was not cached (the kernel may evict some meanwhile: that is allowed)."""
    path = cached_file
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for i in range(0, FILE_PAGES, 3):
            os.pread(fd, PAGE, i * PAGE)
    finally:
        os.close(fd)
    before = residency(path)
    if all(before):
        pytest.skip("the kernel kept the file cached despite DONTNEED")
    snap = dedupx.snapshot(tmp_path / "s")
    after = residency(path)
    print(f"{sum(before)} of {len(before)} pages cached before the walk, {sum(after)} after")
    brought_in = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if a and not b]
    assert brought_in == []
    assert dedupx.open_snapshot(snap).provenance.manifest["scan"]["page_cache"]["pages_hashed"] > 0


def test_guest_holding_host_files_shows_in_the_vm_host_cell(tmp_path: Path) -> None:
    """A guest whose initramfs carries copies of host libraries holds their pages in its
    RAM; the host's page cache holds the files. Against a twin without them, its host row's
    anon/file cell grows by the libraries' distinct pages (computed from the files), within
    1%."""
    ensure_packages()
    files = host_files()
    if sum(p.stat().st_size for p in files) < 1 << 20:
        pytest.skip("fewer than 1 MiB of the host libraries the test copies exist here")
    want = set().union(*(set(file_hashes(p, whole_pages=True)) for p in files))
    want.discard(ZERO_HASH)
    for p in files:  # cached, as a host that runs programs linked to them has them
        subprocess.run(["cat", str(p)], check=True, stdout=subprocess.DEVNULL)
    plain, libs = guest_assets(variant="a"), guest_assets(variant="hostfiles")
    # The guests' kernels and initramfs files are host page cache their RAM copies too: kept
    # cached like the libraries, so that the two cells differ by the libraries alone.
    with (
        keep_warm([*files, *plain, *libs]),
        Guest(plain, mem_mib=256, name="plain", workdir=tmp_path) as a,
        Guest(libs, mem_mib=256, name="libs", workdir=tmp_path) as b,
    ):
        for g in (a, b):
            g.stop()
        snap = dedupx.open_snapshot(dedupx.snapshot(tmp_path / "snap"))
        cached = [sum(residency(p)) for p in files]
        cells = {}
        for g in (a, b):
            m = dedupx.dedup_matrix(snap, g.pid)
            cells[g.name] = m.filter(pl.col("row") == "host")["anon_file"].item()
    added = cells["libs"] - cells["plain"]
    print(
        f"VM-host anon/file: {cells['plain']:,} plain guest, {cells['libs']:,} with "
        f"{len(files)} host libraries ({len(want):,} distinct pages): {added:,} more; "
        f"library pages cached after the snapshot {cached}"
    )
    assert abs(added - len(want)) <= 0.01 * len(want)
