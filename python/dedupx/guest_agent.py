"""What a guest says about its own pages, from a file dedupx-agent wrote inside it.

Each guest page frame (gfn) is classed from its guest-side kpageflags: ``anon`` (anonymous
or swap-backed: shmem/tmpfs too), ``file`` (page cache), ``free`` (in the buddy allocator;
the tails of a free block carry no flags at all) or ``kernel`` (everything else: slab,
page tables, reserved, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dedupx import _dedupx
from dedupx.exceptions import CorruptAgentFile
from dedupx.kpageflags import (
    KPF_ACTIVE,
    KPF_ANON,
    KPF_BUDDY,
    KPF_LRU,
    KPF_REFERENCED,
    KPF_SWAPBACKED,
    flag,
)

PAGE = 4096


def guest_class() -> pl.Expr:
    anon = flag(KPF_ANON) | flag(KPF_SWAPBACKED)
    return (
        pl.when(anon)
        .then(pl.lit("anon"))
        .when(flag(KPF_LRU))
        .then(pl.lit("file"))
        .when(flag(KPF_BUDDY) | (pl.col("kpageflags") == 0))
        .then(pl.lit("free"))
        .otherwise(pl.lit("kernel"))
    )


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
        """DESIGN.md's ``guest_frames`` for the QEMU process ``pid``."""
        return self.frames.select(
            pl.lit(pid, dtype=pl.UInt32).alias("pid"), "gfn", "kpageflags", "mapcount", "class"
        )


def read_guest_agent(path: str | os.PathLike[str]) -> GuestView:
    raw = _dedupx.read_agent_file(os.fspath(path))
    try:
        meta = json.loads(raw["meta_json"])
    except ValueError:
        raise CorruptAgentFile(f"{path}: its metadata is not JSON") from None
    frames = pl.DataFrame(raw["frames"]).with_columns(guest_class().alias("class"))
    return GuestView(Path(path), meta, frames)


def lru_pages(view: GuestView) -> dict[str, dict[str, int]]:
    """Pages on each LRU list by the guest's flags, beside what its /proc/meminfo said."""
    f = view.frames
    lru, active, sb = flag(KPF_LRU), flag(KPF_ACTIVE), flag(KPF_SWAPBACKED)
    flags = f.select(
        (lru & active & sb).sum().alias("Active(anon)"),
        (lru & ~active & sb).sum().alias("Inactive(anon)"),
        (lru & active & ~sb).sum().alias("Active(file)"),
        (lru & ~active & ~sb).sum().alias("Inactive(file)"),
    ).row(0, named=True)
    mi = view.meta.get("meminfo_kb", {})
    return {k: {"flags": int(v), "meminfo": int(mi.get(k, 0)) // 4} for k, v in flags.items()}


def inactive_bloat(view: GuestView) -> dict[str, Any]:
    """Cold guest memory a balloon-like policy could return, as a lower bound: pages on the
    inactive LRU, not referenced, minus those whose content is duplicated elsewhere in the
    guest (they would be merged, not returned). Needs the agent's hashes for the second
    part; meaningless under MGLRU (reported as such)."""
    f = view.frames
    cold = f.filter(flag(KPF_LRU) & ~flag(KPF_ACTIVE) & ~flag(KPF_REFERENCED))
    out: dict[str, Any] = {"mglru": view.mglru, "cold_pages": cold.height}
    if f["hash"].null_count() < f.height:
        dup_hashes = (
            f.filter(pl.col("hash").is_not_null())
            .group_by("hash")
            .len()
            .filter(pl.col("len") > 1)
            .select("hash")
        )
        dup_cold = cold.join(dup_hashes, on="hash", how="semi").height
        out["cold_duplicated_pages"] = dup_cold
        out["bloat_pages"] = cold.height - dup_cold
    else:
        out["bloat_pages"] = None
    out["bloat_mib"] = None if out["bloat_pages"] is None else out["bloat_pages"] * PAGE / 2**20
    if view.mglru:
        out["warning"] = "MGLRU is on in the guest: ACTIVE is cleared on every page"
    return out
