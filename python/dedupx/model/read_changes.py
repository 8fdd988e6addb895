"""What changed in a process while dedupx read it, in one shape for scans and snapshots.

A scan reads a process in stages over milliseconds to seconds while the process runs on:
pages are faulted in, unmapped or moved, mappings appear and go. The core reads maps and
pagemap once more after everything else and counts what differs from the first reading
(``dedupx_core::read_changes``): such a process's figures mix two moments, and every
report flags it, with how much changed:

- ``vanished_pfns``: distinct PFNs that failed to copy or were no longer mapped where
  their flags had been read (their content is not hashed; a process scan only);
- ``changed_pages``: pages of the first reading's mappings whose PFN changed, went or
  came (compared page by page for a process scan, a lower bound in a host snapshot);
- ``vmas_appeared`` / ``vmas_vanished``: mappings found only at the re-check / only at
  the first reading;
- ``exited``: the process was gone at the re-check.
"""

from __future__ import annotations

from typing import Any

import polars as pl

# The columns a host snapshot's ``processes`` frame carries for this (snapshots written
# before them have none, and are read as unflagged).
CHANGE_COLUMNS = ("changed_pages", "vmas_appeared", "vmas_vanished", "exited_during_scan")


def scan_changes(stats: dict[str, Any]) -> dict[str, Any]:
    """A process scan's changes from the core's counters, with ``changed`` true if any."""
    c = {
        "vanished_pfns": int(stats.get("vanished_pfns", 0)),
        "changed_pages": int(stats.get("changed_pages", 0)),
        "vmas_appeared": int(stats.get("vmas_appeared", 0)),
        "vmas_vanished": int(stats.get("vmas_vanished", 0)),
        "exited": bool(stats.get("exited_during_scan", False)),
    }
    return {"changed": any(c.values()), **c}


def changed_expr() -> pl.Expr:
    """True for a row of a ``processes`` frame that changed while it was read."""
    return (
        (pl.col("changed_pages") > 0)
        | (pl.col("vmas_appeared") > 0)
        | (pl.col("vmas_vanished") > 0)
        | pl.col("exited_during_scan")
    )


def with_change_columns(processes: pl.DataFrame) -> pl.DataFrame:
    """``processes`` with the change columns (zero where a snapshot predates them) and
    ``changed``."""
    missing = [c for c in CHANGE_COLUMNS if c not in processes.columns]
    out = processes.with_columns(
        pl.lit(False if c == "exited_during_scan" else 0).alias(c) for c in missing
    )
    return out.with_columns(changed_expr().alias("changed"))


def describe(c: dict[str, Any]) -> str:
    """How much changed, in a few words ('' if nothing): '412 pages, +2/-1 mappings'."""
    if c.get("exited") or c.get("exited_during_scan"):
        return "exited during the scan"
    parts = []
    pages = int(c.get("changed_pages", 0)) + int(c.get("vanished_pfns", 0))
    if pages:
        parts.append(f"{pages:,} pages")
    if c.get("vmas_appeared") or c.get("vmas_vanished"):
        parts.append(f"+{c['vmas_appeared']}/-{c['vmas_vanished']} mappings")
    return ", ".join(parts)


__all__ = ["CHANGE_COLUMNS", "changed_expr", "describe", "scan_changes", "with_change_columns"]
