"""`dedupx snapshot`: one capture of the whole host, streamed into a snapshot directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from dedupx import _dedupx
from dedupx.kpageflags import KPF_ANON, KPF_BUDDY, KPF_LRU, KPF_NOPAGE, KPF_SWAPBACKED, flag
from dedupx.parquet_output import write_frames
from dedupx.process_scan import ProgressCallback
from dedupx.snapshot import base_manifest

# PFNs per frames chunk, and pages rows per Parquet part: a few MiB of columns at a time,
# whatever the size of RAM or the number of processes.
FRAMES_CHUNK = 1 << 16
PAGES_PART_ROWS = 1 << 16

CONTAINER_CGROUP = r"docker|containerd|libpod|lxc|kubepods|crio|machine\.slice|podman"


def classify_processes(processes: pl.DataFrame) -> pl.DataFrame:
    """Adds ``kind``: ``vm`` for QEMU/KVM, ``container`` for processes in a container
    cgroup or another PID namespace than PID 1's, else ``process``."""
    init_ns = processes.filter(pl.col("pid") == 1)["pid_ns"]
    host_ns = init_ns[0] if init_ns.len() else None
    exe = pl.col("argv0").str.split("/").list.last()
    is_vm = (
        exe.str.starts_with("qemu-system")
        | exe.str.starts_with("qemu-kvm")
        | pl.col("comm").str.starts_with("qemu-system")
        | (pl.col("comm") == "kvm")
    )
    other_ns = pl.lit(False) if host_ns is None else (pl.col("pid_ns") != host_ns)
    is_container = pl.col("cgroup").str.contains(CONTAINER_CGROUP) | other_ns
    return processes.with_columns(
        pl.when(is_vm)
        .then(pl.lit("vm"))
        .when(is_container)
        .then(pl.lit("container"))
        .otherwise(pl.lit("process"))
        .alias("kind")
    )


class _Coverage:
    """Counts what the frames chunks cover, by class, as they stream past."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, chunk: pl.DataFrame) -> None:
        unhashed = pl.col("hash").is_null()
        row = chunk.select(
            pl.len().alias("pages_of_ram"),
            pl.col("hash").is_not_null().sum().alias("pages_hashed"),
            (unhashed & flag(KPF_NOPAGE)).sum().alias("no_page"),
            # Only the head page of a free block has KPF_BUDDY; its tails carry no flags.
            (unhashed & ~pl.col("mapped") & (flag(KPF_BUDDY) | (pl.col("kpageflags") == 0)))
            .sum()
            .alias("free"),
            (unhashed & ~pl.col("mapped") & flag(KPF_LRU) & ~flag(KPF_ANON) & ~flag(KPF_SWAPBACKED))
            .sum()
            .alias("unmapped_page_cache"),
            (unhashed & ~pl.col("mapped") & (flag(KPF_ANON) | flag(KPF_SWAPBACKED)))
            .sum()
            .alias("unmapped_anon_shmem"),
            (unhashed & pl.col("mapped")).sum().alias("mapped_unread"),
        ).row(0, named=True)
        for k, v in row.items():
            self.counts[k] = self.counts.get(k, 0) + int(v)

    def summary(self, source: str) -> dict[str, Any]:
        c = dict(self.counts)
        total, hashed = c.pop("pages_of_ram", 0), c.pop("pages_hashed", 0)
        named = sum(c.values())
        c["kernel_and_other"] = total - hashed - named
        return {
            "source": source,
            "pages_hashed": hashed,
            "pages_of_ram": total,
            "hashed_share": hashed / total if total else 0.0,
            "not_covered": c,
        }


def guest_files(proc_root: str = "/proc") -> list[str]:
    """The files the host's guests read through the page cache: their disk images and any
    other regular file a QEMU process holds open."""
    from dedupx.qemu.guests import find_guests

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
) -> Path:
    """Captures the whole host into the snapshot directory ``out`` (written atomically,
    mode 0600). Pages of every process are hashed, each distinct physical page once; with a
    readable /proc/kcore, /dev/crash or /dev/mem (or ``phys``), every page of RAM is.
    Without one, the cached pages of ``cached_files`` (default: the guests' disk images and
    open files) are hashed too, so that double caching shows."""
    files = guest_files(proc_root or "/proc") if cached_files is None else cached_files
    hs = _dedupx.HostSnapshot(
        proc_root=proc_root,
        threads=threads,
        phys=phys,
        iomem=iomem,
        cached_files=files,
        progress=progress,
    )
    stats = hs.stats()
    src = stats["physical_source"]
    source = f"{src[0]}:{src[1]}" if src else "process_vm_readv (mapped pages only)"
    processes = classify_processes(pl.DataFrame(hs.processes()))
    vmas = pl.DataFrame(hs.vmas())
    coverage = _Coverage()

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
        ranges = hs.ram_ranges()
        total = sum(b - a for a, b in ranges)
        done = 0
        for a, b in ranges:
            for start in range(a, b, FRAMES_CHUNK):
                end = min(b, start + FRAMES_CHUNK)
                if progress:
                    progress("frames", done, total)
                chunk = pl.DataFrame(hs.frames(start, end))
                coverage.add(chunk)
                done += end - start
                yield chunk

    def manifest() -> dict[str, Any]:
        m = base_manifest("host", source, coverage.summary(source))
        m["scan"] = {k: v for k, v in stats.items() if k != "ram_ranges"}
        m["processes"] = processes.height
        return m

    return write_frames(
        out,
        {"processes": processes, "vmas": vmas, "pages": pages(), "frames": frames()},
        manifest,
    )
