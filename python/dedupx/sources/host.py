"""`dedupx snapshot`: one capture of the whole host, streamed into a snapshot directory."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from dedupx import _dedupx
from dedupx.model.coverage import HostCoverage
from dedupx.model.process_kinds import classify_processes
from dedupx.qemu.guests import find_guests, guest_layouts
from dedupx.sources.process import ProgressCallback
from dedupx.store.parquet import FrameSource, write_frames
from dedupx.store.snapshot import base_manifest

# PFNs per frames chunk read by the core, frames rows per Parquet part, and pages rows per
# part: a few MiB of columns at a time, whatever the size of RAM or the number of
# processes. Each part costs a write (~8 ms of fixed cost), a coverage query (~4 ms) and an
# fsync (a journal commit): 6.3 M frames in parts of 64 K rows spent 1.2 s on those alone.
FRAMES_CHUNK = 1 << 16
FRAMES_PART_ROWS = 1 << 18
PAGES_PART_ROWS = 1 << 16
FRAMES_AHEAD = 2


def guest_files(proc_root: str = "/proc") -> list[str]:
    """The files the host's guests read through the page cache: their disk images and any
    other regular file a QEMU process holds open."""
    files: set[str] = set()
    for g in find_guests(proc_root):
        files.update(str(d) for d in g.config.drives)
        fd_dir = Path(proc_root, str(g.pid), "fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("/") and not target.startswith(("/dev/", "/proc/", "/sys/")):
                files.add(target.removesuffix(" (deleted)"))
    return sorted(f for f in files if Path(f).is_file())


def snapshot(
    out: str | os.PathLike[str],
    *,
    threads: int = 0,
    progress: ProgressCallback | None = None,
    proc_root: str | None = None,
    phys: str | None = None,
    iomem: str | None = None,
    cached_files: list[str] | None = None,
    page_cache: bool = True,
) -> Path:
    """Captures the whole host into the snapshot directory ``out`` (written atomically,
    mode 0600) and returns its path (``dedupx.open_snapshot`` opens it). Pages of every
    process are hashed, each distinct physical page once; with a readable /proc/kcore,
    /dev/crash or /dev/mem (or ``phys``), every page of RAM is. Without one, the cached
    pages of ``cached_files`` (default: the guests' disk images and open files) are hashed
    too, so that double caching shows, and with ``page_cache`` the cached pages of every
    file of the local disk filesystems (found as ``fincore`` finds them; no page is read
    from disk), so that the host's page cache has contents to compare with."""
    files = guest_files(proc_root or "/proc") if cached_files is None else cached_files
    hs = _dedupx.HostSnapshot(
        proc_root=proc_root,
        threads=threads,
        phys=phys,
        iomem=iomem,
        cached_files=files,
        page_cache=page_cache,
        progress=progress,
    )
    stats = hs.stats()
    src = stats["physical_source"]
    source = f"{src[0]}:{src[1]}" if src else "process_vm_readv (mapped pages only)"
    if not src and page_cache:
        source = "process_vm_readv + page cache (mincore)"
    processes = classify_processes(pl.DataFrame(hs.processes()))
    vmas = pl.DataFrame(hs.vmas())
    layouts = guest_layouts(processes, vmas)
    coverage = HostCoverage()

    def pages() -> Iterator[pl.DataFrame]:
        pending: list[pl.DataFrame] = []
        rows = 0
        n = hs.process_count()
        for i in range(n):
            if progress:
                progress("pages", i, n)
            for start, end in hs.page_windows(i, PAGES_PART_ROWS):
                part = pl.DataFrame(hs.pages(i, start, end))
                pending.append(part)
                rows += part.height
                if rows >= PAGES_PART_ROWS:
                    yield pl.concat(pending)
                    pending, rows = [], 0
        if pending:
            yield pl.concat(pending)

    def frames() -> Iterator[pl.DataFrame]:
        spans = [
            (start, min(b, start + FRAMES_CHUNK))
            for a, b in hs.ram_ranges()
            for start in range(a, b, FRAMES_CHUNK)
        ]
        total = sum(end - start for start, end in spans)
        done = 0
        # The next chunks' flags are read (by the core, without the GIL) while this one is
        # converted and written: reading and writing each leave a core idle at times.
        part: list[pl.DataFrame] = []
        with ThreadPoolExecutor(FRAMES_AHEAD) as reader:
            ahead = deque(reader.submit(hs.frames, *span) for span in spans[:FRAMES_AHEAD])
            for i, (start, end) in enumerate(spans):
                if progress:
                    progress("frames", done, total)
                table, counts = ahead.popleft().result()
                if i + FRAMES_AHEAD < len(spans):
                    ahead.append(reader.submit(hs.frames, *spans[i + FRAMES_AHEAD]))
                coverage.add(counts)
                part.append(pl.DataFrame(table))
                done += end - start
                if sum(c.height for c in part) >= FRAMES_PART_ROWS or i + 1 == len(spans):
                    chunk = pl.concat(part, rechunk=False)
                    part = []
                    yield chunk

    def manifest() -> dict[str, Any]:
        by_source = "kcore" if src else "page cache"
        m = base_manifest("host", source, coverage.summary(source, unmapped_source=by_source))
        m["scan"] = {k: v for k, v in stats.items() if k != "ram_ranges"}
        m["processes"] = processes.height
        return m

    captured: dict[str, FrameSource] = {"processes": processes, "vmas": vmas}
    if layouts is not None:
        captured["gpa_map"] = layouts
    return write_frames(out, {**captured, "pages": pages(), "frames": frames()}, manifest)


__all__ = ["guest_files", "snapshot"]
