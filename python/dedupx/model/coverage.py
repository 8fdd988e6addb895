"""The one coverage schema: how much of a capture's scope was hashed, and what the rest is.

Every capture states it in the same shape (docs/metrics.md, "Coverage"):

- ``source``: what read page contents (``process_vm_readv``, ``kcore:/proc/kcore``, ...);
- ``scope``: what the pages counted are (``distinct present frames``, ``pages of RAM``,
  ``pages of the image``);
- ``pages_in_scope`` and ``pages_hashed``, and ``hashed_share`` of one in the other;
- ``not_covered``: the unhashed pages by reason; ``pages_hashed`` plus these is
  ``pages_in_scope``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SCOPE_PROCESS = "distinct present frames and swap slots"
SCOPE_HOST = "pages of RAM"
SCOPE_IMAGE = "pages of the image"


def coverage(
    source: str, scope: str, pages_in_scope: int, pages_hashed: int, not_covered: dict[str, int]
) -> dict[str, Any]:
    return {
        "source": source,
        "scope": scope,
        "pages_in_scope": pages_in_scope,
        "pages_hashed": pages_hashed,
        "hashed_share": pages_hashed / pages_in_scope if pages_in_scope else 1.0,
        "not_covered": not_covered,
    }


def process_coverage(stats: dict[str, Any]) -> dict[str, Any]:
    """A process scan's coverage from the core's counters: distinct present frames and the
    swap slots of swapped pages, those hashed, and the rest as unreadable (no mapping can
    be copied: I/O, PFN maps), vanished (failed to copy or changed mapping while being
    read) or swapped (a slot its swap area could not give: zswap, an unreadable area)."""
    slots, swap_hashed = int(stats.get("swap_slots", 0)), int(stats.get("swap_hashed", 0))
    not_covered = {
        "unreadable": int(stats.get("unreadable_pfns", 0)),
        "vanished": int(stats.get("vanished_pfns", 0)),
        "swapped": slots - swap_hashed,
    }
    source = "process_vm_readv" + (" + swap area" if swap_hashed else "")
    return coverage(
        source,
        SCOPE_PROCESS,
        int(stats.get("distinct_pfns", 0)) + slots,
        int(stats.get("hashed_pfns", 0)) + swap_hashed,
        not_covered,
    )


def image_coverage(source: str, pages: int) -> dict[str, Any]:
    """An image's: every page it holds is read (holes read as zeros)."""
    return coverage(source, SCOPE_IMAGE, pages, pages, {})


class HostCoverage:
    """Adds up a host's PFNs by coverage class, as the core counts them for each chunk of
    RAM (``host_frames::ChunkCoverage``, the classes' one definition): rows and PFNs
    without a row alike."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, counts: Mapping[str, Any]) -> None:
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + int(v)

    def summary(self, source: str, unmapped_source: str = "page cache") -> dict[str, Any]:
        """The coverage, with ``hashed_by_source``: pages hashed through the processes that
        map them, and the others through ``unmapped_source`` (the page-cache walk, or a
        physical memory source such as kcore)."""
        c = dict(self.counts)
        total, hashed = c.pop("pages", 0), c.pop("hashed", 0)
        mapped = c.pop("hashed_mapped", 0)
        c["kernel_and_other"] = total - hashed - sum(c.values())
        out = coverage(source, SCOPE_HOST, total, hashed, c)
        out["hashed_by_source"] = {"process memory": mapped, unmapped_source: hashed - mapped}
        return out


def upgrade_v1(old: dict[str, Any]) -> dict[str, Any]:
    """Coverage as format 1 snapshots wrote it (``pages_of_ram``), in today's schema."""
    if "pages_of_ram" not in old:
        return old
    scope = SCOPE_IMAGE if str(old.get("source", "")).startswith("image:") else SCOPE_HOST
    return coverage(
        str(old.get("source", "unknown")),
        scope,
        int(old["pages_of_ram"]),
        int(old.get("pages_hashed", 0)),
        dict(old.get("not_covered", {})),
    )


__all__ = [
    "HostCoverage",
    "coverage",
    "image_coverage",
    "process_coverage",
    "upgrade_v1",
]
