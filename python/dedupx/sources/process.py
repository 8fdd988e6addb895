"""Scanning one live process into polars frames."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from dedupx import _dedupx
from dedupx.exceptions import (
    KernelUnsupported,
    NotAGuest,
    PermissionDenied,
    PfnHidden,
    ProcessGone,
    ProcessNotFound,
)
from dedupx.model.coverage import process_coverage
from dedupx.model.frames import Frames, Provenance
from dedupx.model.page_classes import holds_frame
from dedupx.model.process_kinds import classify_processes
from dedupx.model.read_changes import scan_changes
from dedupx.qemu.cmdline import is_qemu, parse_qemu_cmdline
from dedupx.qemu.gpa_map import gpa_map, gpa_map_from_ept
from dedupx.qemu.guests import guest_layout
from dedupx.qemu.ram_backing import with_backing

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ProcessScan:
    """What one scan saw of one process.

    ``pages`` has one row per mapped virtual page that is present or swapped; ``vmas`` one
    row per mapping (column contract in docs/frames.md). ``stats`` counts what was read:
    present pages, distinct PFNs, PFNs hashed, PFNs that could not be read, and the time
    of each stage. Analyses take it as it is (see ``to_frames``).
    """

    pid: int
    comm: str
    cmdline: list[str]
    ppid: int
    vmas: pl.DataFrame
    pages: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def is_guest(self) -> bool:
        """Whether this is a QEMU process (its guest can be mapped with ``guest_map``)."""
        return is_qemu(self.cmdline)

    def guest_map(
        self,
        qmp: str | os.PathLike[str] | None = None,
        ept: str | os.PathLike[str] | None = None,
    ) -> pl.DataFrame:
        """For a QEMU process: one row per guest page (``gpa`` → ``hva`` → ``pfn``) from
        QEMU's own memory map over QMP (``qmp``: a socket; else one its command line names,
        if it answers), from an external EPT dump (``ept``: CSV or Parquet of gpa, hpa), or
        from the command line, with the ``backing`` of each page's host mapping (anon,
        shmem, hugetlb, file). Talks to QEMU: a method, not a property. Raises
        ``NotAGuest`` for other processes."""
        if not self.is_guest:
            raise NotAGuest(f"PID {self.pid} ({self.comm}) is not a QEMU guest")
        if ept is not None:
            return gpa_map_from_ept(self.pid, Path(ept)).with_columns(
                pl.lit(f"ept:{ept}").alias("source")
            )
        cfg = parse_qemu_cmdline(self.cmdline)
        layout = guest_layout(cfg, self.vmas, Path(qmp) if qmp is not None else None)
        return with_backing(gpa_map(self.pid, layout, self.pages), self.vmas)

    @property
    def changed_while_read(self) -> dict[str, Any]:
        """How much the process changed while it was read (``changed`` true if at all; see
        dedupx.model.read_changes): such a scan's figures mix two moments."""
        return scan_changes(self.stats)

    @property
    def frames(self) -> pl.DataFrame:
        """One row per distinct physical page this process maps."""
        return frames_of(self.pages)

    def processes(self) -> pl.DataFrame:
        """The one process as a ``processes`` frame."""
        row = pl.DataFrame(
            {
                "pid": [self.pid],
                "ppid": [self.ppid],
                "comm": [self.comm],
                "cmdline": [self.cmdline],
                "argv0": [self.cmdline[0] if self.cmdline else ""],
                "cgroup": [None],
                "pid_ns": [None],
            },
            schema={
                "pid": pl.UInt32,
                "ppid": pl.UInt32,
                "comm": pl.String,
                "cmdline": pl.List(pl.String),
                "argv0": pl.String,
                "cgroup": pl.String,
                "pid_ns": pl.UInt64,
            },
        )
        return classify_processes(row)

    def to_frames(self) -> Frames:
        """This scan as the input every analysis takes."""
        return Frames(
            frames=self.frames.lazy(),
            pages=self.pages.lazy(),
            vmas=self.vmas.lazy(),
            processes=self.processes().lazy(),
            provenance=Provenance(
                kind="process-scan",
                source="process_vm_readv",
                coverage=process_coverage(self.stats),
            ),
        )

    def __repr__(self) -> str:
        return (
            f"ProcessScan(pid={self.pid}, comm={self.comm!r}, vmas={self.vmas.height}, "
            f"pages={self.pages.height})"
        )


def frames_of(pages: pl.DataFrame) -> pl.DataFrame:
    """Distinct frames of a pages frame (PFNs, and the swap slots of swapped pages) with
    their flags, mapcount, hash and zero flag."""
    return (
        pages.filter(holds_frame())
        .group_by("pfn")
        .agg(pl.col("hash", "kpageflags", "mapcount", "zero").first())
        .sort("pfn")
    )


def scan(
    pid: int,
    *,
    threads: int = 0,
    hash: bool = True,
    progress: ProgressCallback | None = None,
    proc_root: str = "/proc",
) -> ProcessScan:
    """Scan process ``pid``: its mappings, every present or swapped page, and a BLAKE3 hash
    of every distinct physical page it maps (unless ``hash=False``).

    Needs root. Raises ``ProcessNotFound``, ``ProcessGone``, ``PermissionDenied``,
    ``PfnHidden`` or ``KernelUnsupported`` (all ``DedupxError``). ``progress(stage, done,
    total)`` is called from time to time; Ctrl-C stops the scan with KeyboardInterrupt.
    """
    raw = _dedupx.scan_process_frames(
        pid, threads=threads, hash=hash, proc_root=proc_root, progress=progress
    )
    info = raw["info"]
    pages = pl.DataFrame(raw["pages"])
    pages = pages.select(pl.lit(info["pid"], dtype=pl.UInt32).alias("pid"), pl.all())
    return ProcessScan(
        pid=info["pid"],
        comm=info["comm"],
        cmdline=list(info["cmdline"]),
        ppid=info["ppid"],
        vmas=pl.DataFrame(raw["vmas"]),
        pages=pages,
        stats=dict(raw["stats"]),
    )


def scan_largest(
    *, threads: int = 0, progress: ProgressCallback | None = None, proc_root: str = "/proc"
) -> ProcessScan:
    """Scans the process with the largest resident set that dedupx may read (a protected
    init, say, is passed over; dedupx itself too)."""
    sizes = []
    for entry in os.listdir(proc_root):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                rss = int(Path(proc_root, entry, "statm").read_text().split()[1])
            except (OSError, ValueError, IndexError):
                continue
            sizes.append((rss, int(entry)))
    for _, pid in sorted(sizes, reverse=True):
        try:
            return scan(pid, threads=threads, progress=progress, proc_root=proc_root)
        except (PfnHidden, KernelUnsupported):
            raise
        except (PermissionDenied, ProcessGone, ProcessNotFound):
            continue
    raise ProcessNotFound("no process that dedupx may read: give one with --pid")


__all__ = ["ProcessScan", "ProgressCallback", "frames_of", "scan", "scan_largest"]
