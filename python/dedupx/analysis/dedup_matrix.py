"""The dedup matrix of a target (the study's Table 6.4), as docs/metrics.md defines it.

The target V is a VM's QEMU process (``dedup_matrix``) or a group of processes such as a
container's (``group_matrix``); its *peers* are the other processes of a kind (other VMs,
other containers). V's frames are the PFNs V's processes map; peer frames are the PFNs a
peer maps that are not V's; host frames are all other hashed PFNs. For each content among
V's frames: V's own extra copies count in ``within`` (split anon/anon, file/file,
anon/file); V's remaining copy counts once in ``host`` if the host holds the content, else
in the peers' row if a peer does (the precedence is ``order``). KSM can reach a saving only
where both copies are KSM-eligible (private anon in a mergeable VMA).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import polars as pl

from dedupx.analysis.hashed_frames import hashed_frames
from dedupx.analysis.huge_pages import dropped_copies
from dedupx.exceptions import NotAGuest, ProcessNotFound, UsageError
from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.page_classes import holds_frame, is_thp
from dedupx.model.units import MIB, PAGE_SIZE

COLUMNS = ("anon_anon", "file_file", "anon_file", "total")


def scoped_frames(f: Frames, pids: Collection[int], peer: str = "vm") -> pl.LazyFrame:
    """Hashed frames with ``scope``: "v" (one of V's ``pids`` maps it), ``peer`` (a process
    of that kind outside V does), "host"; and ``thp`` (KSM-eligible and held in a THP). A
    scan of V's process alone has only V's frames: its host and peer rows stay empty."""
    f.require("dedup_matrix", "pages", "processes")
    assert f.pages is not None and f.processes is not None
    kinds = f.processes.select("pid", "kind")
    target = pl.col("pid").is_in(list(pids))
    owners = (
        f.pages.filter(holds_frame())
        .select("pid", "pfn")
        .join(kinds, on="pid", how="left")
        .group_by("pfn")
        .agg(
            target.any().alias("in_v"),
            ((pl.col("kind") == peer) & ~target).any().alias("in_peer"),
        )
    )
    return (
        hashed_frames(f)
        .join(owners, on="pfn", how="left")
        .with_columns(
            pl.when(pl.col("in_v").fill_null(False))
            .then(pl.lit("v"))
            .when(pl.col("in_peer").fill_null(False))
            .then(pl.lit(peer))
            .otherwise(pl.lit("host"))
            .alias("scope"),
            (pl.col("ksm_eligible") & is_thp().fill_null(False)).alias("thp"),
        )
    )


def narrowed_to_contents_of(f: Frames, pids: Collection[int]) -> Frames:
    """The capture narrowed to the frames that hold a content one of ``pids`` holds, and
    the pages that map them: a matrix of those PIDs counts no other content, and on a
    large host the rest is almost everything (a VM of 100 holds about 1% of the frames)."""
    assert f.pages is not None
    theirs = f.pages.filter(holds_frame() & pl.col("pid").is_in(list(pids))).select("pfn")
    view = f.hashed if f.hashed is not None else f.frames
    hashes = view.join(theirs, on="pfn", how="semi").select("hash").drop_nulls().unique()
    held = view.join(hashes, on="hash", how="semi").select("pfn")
    return f.narrowed_to(held.collect(engine="streaming").lazy())


def missing_pids(f: Frames, pids: Collection[int]) -> list[int]:
    """Those of ``pids`` the capture has no process record of."""
    assert f.processes is not None
    have = set(f.processes.filter(pl.col("pid").is_in(list(pids))).select("pid").collect()["pid"])
    return sorted(set(pids) - have)


def dedup_matrix(
    data: Frames | HasFrames, pid: int, order: tuple[str, str] = ("host", "vm")
) -> pl.DataFrame:
    """Rows ``within``, ``host``, ``vm`` and their ``total`` (column ``row``); columns
    ``anon_anon``, ``file_file``, ``anon_file``, ``total`` (pages), ``mib`` (total in MiB), ``zero``
    (pages of it with all-zero content), ``ksm_reachable``, ``missed_file`` (a file-backed
    copy is involved), ``missed_not_mergeable`` (anon copies KSM does not scan; of them
    ``missed_hugetlb`` and ``missed_shared_backend``, on backends KSM never scans),
    ``ksm_reachable_thp`` (of the reachable, copies of V held in a THP KSM must split),
    ``hugetlb`` (copies of V in hugetlb pages) and ``hugetlb_whole`` (of those, what is
    reachable without splitting a huge page): docs/metrics.md."""
    f = as_frames(data)
    f.require("dedup_matrix", "pages", "processes")
    if missing_pids(f, [pid]):
        raise NotAGuest(f"PID {pid} is not in this capture")
    return matrix(f, [pid], "vm", order)


def group_matrix(
    data: Frames | HasFrames,
    pids: Collection[int],
    peer: str = "container",
    order: tuple[str, str] | None = None,
) -> pl.DataFrame:
    """The same matrix for a group of processes taken as one target (a container: every
    PID of its cgroup); its peers are the processes of kind ``peer`` outside the group, and
    its rows ``within``, ``host``, ``<peer>``, ``total`` (``order`` defaults to host first).
    A frame any of the group's processes maps is the group's, so frames its processes
    share among themselves are no duplicates."""
    f = as_frames(data)
    f.require("group_matrix", "pages", "processes")
    if not pids:
        raise UsageError("group_matrix needs at least one PID")
    gone = missing_pids(f, pids)
    if gone:
        raise ProcessNotFound(f"PIDs {gone} are not in this capture")
    return matrix(f, pids, peer, order or ("host", peer))


def matrix(f: Frames, pids: Collection[int], peer: str, order: tuple[str, str]) -> pl.DataFrame:
    """The one computation behind both entry points (docs/metrics.md's rule)."""
    if peer in ("v", "host"):
        raise UsageError(f"peer must be a process kind other than 'host', not {peer!r}")
    if sorted(order) != sorted(("host", peer)):
        raise UsageError(f"order must name 'host' and {peer!r}, not {order!r}")
    frames = scoped_frames(narrowed_to_contents_of(f, pids), pids, peer).collect()
    per = (
        frames.lazy()
        .group_by("hash")
        .agg(
            *(c for s in ("v", "host", peer) for c in scope_counts(pl.col("scope") == s, s)),
            (pl.col("thp") & (pl.col("scope") == "v")).sum().alias("t_v"),
            pl.col("zero").first(),
        )
        .filter(pl.col("a_v") + pl.col("f_v") > 0)
        .with_columns(pl.lit(0).alias("target"))
        .collect()
    )
    v = frames.filter(pl.col("scope") == "v")
    return matrix_rows(per, {0: v}, peer, order)[0]


def scope_counts(in_scope: pl.Expr, s: str) -> list[pl.Expr]:
    """Per content, the frames of scope ``s`` (those matching ``in_scope``): anon
    (``a_s``), file (``f_s``), KSM-eligible (``e_s``), and anon ones KSM cannot merge on a
    hugetlb (``h_s``) or shared backend (``s_s``)."""
    barrier = {"h": "hugetlb", "s": "shared backend"}
    return [
        (pl.col("anon") & in_scope).sum().alias(f"a_{s}"),
        (~pl.col("anon") & in_scope).sum().alias(f"f_{s}"),
        (pl.col("ksm_eligible") & in_scope).sum().alias(f"e_{s}"),
        *(
            (pl.col("anon") & ~pl.col("ksm_eligible") & in_scope & (pl.col("ksm_barrier") == why))
            .sum()
            .alias(f"{b}_{s}")
            for b, why in barrier.items()
        ),
    ]


def matrix_rows(
    per: pl.DataFrame,
    v_frames: dict[int, pl.DataFrame],
    peer: str,
    order: tuple[str, str],
) -> dict[int, pl.DataFrame]:
    """Each target's matrix from ``per``: one row per (content, ``target``) the target holds,
    with ``scope_counts`` for "v" (the target), "host" and ``peer``, ``t_v`` and ``zero``.
    ``v_frames`` holds each target's own frames (for its hugetlb savings)."""
    first, second = order
    cast = {c: pl.Int64 for c in per.columns if c[:2] in ("a_", "f_", "e_", "t_", "h_", "s_")}
    per = per.cast(cast)  # type: ignore[arg-type]
    held = {s: (pl.col(f"a_{s}") + pl.col(f"f_{s}")) > 0 for s in (first, second)}
    partner = pl.when(held[first]).then(pl.lit(first)).when(held[second]).then(pl.lit(second))
    per = per.with_columns(partner.alias("partner"))
    a_p = (
        pl.when(pl.col("partner") == first)
        .then(pl.col(f"a_{first}"))
        .otherwise(pl.col(f"a_{second}"))
    )
    f_p = (
        pl.when(pl.col("partner") == first)
        .then(pl.col(f"f_{first}"))
        .otherwise(pl.col(f"f_{second}"))
    )
    e_p = (
        pl.when(pl.col("partner") == first)
        .then(pl.col(f"e_{first}"))
        .otherwise(pl.col(f"e_{second}"))
    )
    h_p, s_p = (
        pl.when(pl.col("partner") == first)
        .then(pl.col(f"{b}_{first}"))
        .otherwise(pl.col(f"{b}_{second}"))
        for b in ("h", "s")
    )
    # Why KSM misses a copy it cannot merge: V's side first, then the partner's.
    side_v = pl.col("e_v") == 0
    reason = (
        pl.when(side_v & (pl.col("h_v") > 0))
        .then(pl.lit("h"))
        .when(side_v & (pl.col("s_v") > 0))
        .then(pl.lit("s"))
        .when(side_v)
        .then(pl.lit("n"))
        .when(h_p > 0)
        .then(pl.lit("h"))
        .when(s_p > 0)
        .then(pl.lit("s"))
        .otherwise(pl.lit("n"))
    )
    per = per.with_columns(
        reason.alias("reason"),
        ((pl.col("a_v") > 0) & (a_p > 0)).alias("p_aa"),
        (((pl.col("a_v") == 0) | (a_p == 0)) & (pl.col("f_v") > 0) & (f_p > 0)).alias("p_ff"),
        ((pl.col("e_v") > 0) & (e_p > 0)).alias("p_ksm"),
    )

    missed = (pl.col("a_v") - 1).clip(0) - (pl.col("e_v") - 1).clip(0)
    missed_h = pl.min_horizontal(pl.col("h_v"), missed)
    within = per.group_by("target").agg(
        (pl.col("a_v") - 1).clip(0).sum().alias("anon_anon"),
        (pl.col("f_v") - 1).clip(0).sum().alias("file_file"),
        ((pl.col("a_v") > 0) & (pl.col("f_v") > 0)).sum().alias("anon_file"),
        (pl.col("e_v") - 1).clip(0).sum().alias("ksm_reachable"),
        pl.min_horizontal(pl.col("t_v"), (pl.col("e_v") - 1).clip(0)).sum().alias("thp"),
        (pl.col("a_v") + pl.col("f_v") - 1).filter(pl.col("zero")).sum().alias("zero"),
        missed_h.sum().alias("missed_hugetlb"),
        pl.min_horizontal(pl.col("s_v"), missed - missed_h).sum().alias("missed_shared"),
    )
    col = (
        pl.when(pl.col("p_aa"))
        .then(pl.lit("aa"))
        .when(pl.col("p_ff"))
        .then(pl.lit("ff"))
        .otherwise(pl.lit("af"))
    )
    partners = (
        per.filter(pl.col("partner").is_not_null())
        .with_columns(col.alias("col"))
        .group_by("target", "partner")
        .agg(
            (pl.col("col") == "aa").sum().alias("anon_anon"),
            (pl.col("col") == "ff").sum().alias("file_file"),
            (pl.col("col") == "af").sum().alias("anon_file"),
            ((pl.col("col") == "aa") & pl.col("p_ksm")).sum().alias("ksm_reachable"),
            ((pl.col("col") == "aa") & pl.col("p_ksm") & (pl.col("t_v") >= pl.col("e_v")))
            .sum()
            .alias("thp"),
            pl.col("zero").sum().alias("zero"),
            *(
                ((pl.col("col") == "aa") & ~pl.col("p_ksm") & (pl.col("reason") == b))
                .sum()
                .alias(name)
                for b, name in (("h", "missed_hugetlb"), ("s", "missed_shared"))
            ),
        )
    )
    by_target = {r.pop("target"): r for r in within.iter_rows(named=True)}
    by_partner = {(r.pop("target"), r.pop("partner")): r for r in partners.iter_rows(named=True)}
    out = {}
    for target, v in v_frames.items():
        hugetlb = huge_page_savings(v, per, target)
        rows = [_row("within", {**by_target.get(target, {}), **hugetlb["within"]})]
        for scope in ("host", peer):
            r = by_partner.get((target, scope), {})
            rows.append(_row(scope, {**r, **hugetlb["partner"].get(scope, {})}))
        # Each page of V counts in one row at most, so the rows add up.
        total = {k: sum(r[k] for r in rows) for k in rows[0] if k != "row"}
        rows.append({"row": "total", **total})
        out[target] = pl.DataFrame(rows).with_columns(
            (pl.col("total") * PAGE_SIZE / MIB).alias("mib")
        )
    return out


def _row(name: str, r: dict[str, Any]) -> dict[str, Any]:
    aa, ff, af = (int(r.get(k) or 0) for k in ("anon_anon", "file_file", "anon_file"))
    reach = int(r.get("ksm_reachable") or 0)
    return {
        "row": name,
        "anon_anon": aa,
        "file_file": ff,
        "anon_file": af,
        "total": aa + ff + af,
        "zero": int(r.get("zero") or 0),
        "ksm_reachable": reach,
        "missed_file": ff + af,
        "missed_not_mergeable": aa - reach,
        "missed_hugetlb": int(r.get("missed_hugetlb") or 0),
        "missed_shared_backend": int(r.get("missed_shared") or 0),
        "ksm_reachable_thp": int(r.get("thp") or 0),
        "hugetlb": int(r.get("hugetlb") or 0),
        "hugetlb_whole": int(r.get("hugetlb_whole") or 0),
    }


def huge_page_savings(v: pl.DataFrame, per: pl.DataFrame, target: int) -> dict[str, Any]:
    """Of each row's savings, V's copies held in hugetlb pages (``hugetlb``), and of those
    the ones in huge pages freed whole (``hugetlb_whole``: dedupx.analysis.huge_pages). Of
    a content V holds ``n`` times, ``n - 1`` copies count in ``within``, and the one V
    keeps, if a partner holds the content, in the partner's row. ``v``: V's frames; ``per``:
    the contents with their ``partner``, V's where ``target`` is ``target``."""
    v = v.select("pfn", "hash", "hugetlb", "page_size")
    if v.height == 0 or not v["hugetlb"].any():
        return {"within": {}, "partner": {}}
    partners = per.filter(pl.col("target") == target).select("hash", "partner")
    v = dropped_copies(
        v.join(partners, on="hash", how="left"),
        held_elsewhere=pl.col("partner").is_not_null(),
    )
    row = pl.when(pl.col("kept")).then(pl.col("partner")).otherwise(pl.lit("within"))
    counts = (
        v.filter(pl.col("dropped") & pl.col("hugetlb"))
        .group_by(row.alias("row"))
        .agg(pl.len().alias("hugetlb"), pl.col("whole").sum().alias("hugetlb_whole"))
    )
    by_row = {r.pop("row"): r for r in counts.iter_rows(named=True)}
    return {"within": by_row.pop("within", {}), "partner": by_row}
