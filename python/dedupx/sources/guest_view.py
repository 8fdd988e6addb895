"""What a guest says about its own pages: from dedupx-agent's file or the QEMU guest agent.

Each guest page frame (gfn) carries its guest-side kpageflags and map count, a hash where
the guest could read the page (dedupx-agent only), and its ``class`` by the guest's flags
(``anon``, ``file``, ``free``, ``kernel``: see dedupx.model.page_classes.guest_class).
"""

from __future__ import annotations

import array
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dedupx import _dedupx
from dedupx.exceptions import CorruptAgentFile, QmpError
from dedupx.model.page_classes import guest_class
from dedupx.qemu.qga import Qga


@dataclass(frozen=True)
class GuestView:
    path: Path
    meta: dict[str, Any]
    frames: pl.DataFrame  # gfn, kpageflags, mapcount, hash, class

    @property
    def mglru(self) -> bool:
        """MGLRU on: it clears PG_active on every page, so ACTIVE says nothing."""
        v = self.meta.get("lru_gen")
        try:
            return v is not None and int(str(v), 0) != 0
        except ValueError:
            return True

    def guest_frames(self, pid: int) -> pl.DataFrame:
        """The ``guest_frames`` frame for the QEMU process ``pid``."""
        return self.frames.select(
            pl.lit(pid, dtype=pl.UInt32).alias("pid"), "gfn", "kpageflags", "mapcount", "class"
        )


def read_guest_agent(path: str | os.PathLike[str]) -> GuestView:
    """A file dedupx-agent wrote inside a guest (flags, counts, meminfo, MGLRU state and
    kcore page hashes). Raises ``CorruptAgentFile`` for a damaged one."""
    raw = _dedupx.read_agent_file(os.fspath(path))
    try:
        meta = json.loads(raw["meta_json"])
    except ValueError:
        raise CorruptAgentFile(f"{path}: its metadata is not JSON") from None
    frames = pl.DataFrame(raw["frames"]).with_columns(guest_class().alias("class"))
    return GuestView(Path(path), meta, frames)


def _meminfo_kb(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if v.split():
            out[k.strip()] = int(v.split()[0])
    return out


def read_guest_qga(path: str | os.PathLike[str]) -> GuestView:
    """The guest's page flags and counts, meminfo (just before and just after) and MGLRU
    state, read through its QEMU guest agent (the agent's file commands, as root in the
    guest); a ``GuestView`` without hashes (those need dedupx-agent)."""
    sock = Path(path)
    with Qga(sock) as q:
        kernel = q.read_file("/proc/sys/kernel/osrelease").decode().strip()
        before = _meminfo_kb(q.read_file("/proc/meminfo").decode())
        flags = q.read_file("/proc/kpageflags")
        counts = q.read_file("/proc/kpagecount")
        after = _meminfo_kb(q.read_file("/proc/meminfo").decode())
        try:
            lru_gen: str | None = q.read_file("/sys/kernel/mm/lru_gen/enabled").decode().strip()
        except QmpError:
            lru_gen = None
    if len(flags) % 8 or len(flags) != len(counts) or not flags:
        raise QmpError(f"guest agent on {sock} returned kpageflags/kpagecount of odd sizes")
    f, c = array.array("Q", flags), array.array("Q", counts)
    frames = pl.DataFrame(
        {
            "gfn": pl.int_range(0, len(f), dtype=pl.UInt64, eager=True),
            "kpageflags": pl.Series(f.tolist(), dtype=pl.UInt64),
            "mapcount": pl.Series(c.tolist(), dtype=pl.UInt64),
            "hash": pl.Series([None] * len(f), dtype=pl.Binary),
        }
    ).with_columns(guest_class().alias("class"))
    meta = {
        "created_by": "dedupx qga",
        "kernel": kernel,
        "meminfo_before_kb": before,
        "meminfo_kb": after,
        "lru_gen": lru_gen,
        "hash_source": None,
    }
    return GuestView(sock, meta, frames)


__all__ = ["GuestView", "read_guest_agent", "read_guest_qga"]
