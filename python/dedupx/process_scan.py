"""Scanning one live process into polars frames."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl

from dedupx import _dedupx

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ProcessScan:
    """What one scan saw of one process.

    ``pages`` has one row per mapped virtual page that is present or swapped; ``vmas`` one
    row per mapping (see DESIGN.md for the column contract). ``stats`` counts what was
    read: present pages, distinct PFNs, PFNs hashed, PFNs that could not be read.
    """

    pid: int
    comm: str
    cmdline: list[str]
    ppid: int
    vmas: pl.DataFrame
    pages: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def gpa_map(self) -> pl.DataFrame:
        """For a QEMU process: one row per guest page (``gpa`` → ``hva`` → ``pfn``), from
        QEMU's own memory map over a QMP socket its command line names, else from the
        command line (see ``guest_map`` to name a socket). Raises ``NotAGuest`` otherwise."""
        return self.guest_map()

    def guest_map(
        self,
        qmp: str | os.PathLike[str] | None = None,
        ept: str | os.PathLike[str] | None = None,
    ) -> pl.DataFrame:
        """The gpa map from QMP (``qmp``: a socket; else one named on the command line),
        from an external EPT dump (``ept``: CSV or Parquet of gpa, hpa), or from the
        command line."""
        from dedupx.exceptions import NotAGuest
        from dedupx.qemu.cmdline import is_qemu, parse_qemu_cmdline
        from dedupx.qemu.gpa_map import gpa_map, gpa_map_from_ept
        from dedupx.qemu.guests import guest_layout

        if not is_qemu(self.cmdline):
            raise NotAGuest(f"PID {self.pid} ({self.comm}) is not a QEMU guest")
        if ept is not None:
            return gpa_map_from_ept(self.pid, Path(ept)).with_columns(
                pl.lit(f"ept:{ept}").alias("source")
            )
        cfg = parse_qemu_cmdline(self.cmdline)
        layout = guest_layout(cfg, self.vmas, Path(qmp) if qmp is not None else None)
        return gpa_map(self.pid, layout, self.pages).with_columns(
            pl.lit(layout.source).alias("source")
        )

    @property
    def frames(self) -> pl.DataFrame:
        """One row per distinct physical page this process maps."""
        return frames_of(self.pages)

    def __repr__(self) -> str:
        return (
            f"ProcessScan(pid={self.pid}, comm={self.comm!r}, vmas={self.vmas.height}, "
            f"pages={self.pages.height})"
        )


def frames_of(pages: pl.DataFrame) -> pl.DataFrame:
    """Distinct PFNs of a pages frame with their flags, mapcount, hash and zero flag."""
    return (
        pages.filter(pl.col("present"))
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
    raw: dict[str, Any] = _dedupx.scan_process_frames(
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
