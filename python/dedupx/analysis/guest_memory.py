"""What a guest's own view says: its pages by class, its LRU lists, its cold memory."""

from __future__ import annotations

from typing import Any

import polars as pl

from dedupx.model.kpageflags import KPF_ACTIVE, KPF_LRU, KPF_SWAPBACKED, flag
from dedupx.model.page_classes import is_cold
from dedupx.model.units import pages_to_mib
from dedupx.sources.guest_view import GuestView


def guest_classes(view: GuestView) -> dict[str, int]:
    """Guest page frames by class (``anon``, ``file``, ``free``, ``kernel``)."""
    return dict(view.frames.group_by("class").len().sort("class").iter_rows())


def lru_pages(view: GuestView) -> dict[str, dict[str, int]]:
    """Pages on each LRU list by the guest's flags, beside what its /proc/meminfo said."""
    lru, active, sb = flag(KPF_LRU), flag(KPF_ACTIVE), flag(KPF_SWAPBACKED)
    flags = view.frames.select(
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
    cold = f.filter(is_cold())
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
    out["bloat_mib"] = None if out["bloat_pages"] is None else pages_to_mib(out["bloat_pages"])
    if view.mglru:
        out["warning"] = "MGLRU is on in the guest: ACTIVE is cleared on every page"
    return out


__all__ = ["guest_classes", "inactive_bloat", "lru_pages"]
