"""Density: the average footprint per instance as N identical instances run (the study's
Figure 6.2), predicted from one capture of K ≥ 1 of them, under three merging policies.

The model (docs/density.md) sorts every page an instance maps into two kinds:

- **shared by identity**: page cache and other frames the kernel already shares (the QEMU
  binary, libraries, a shared container root). One frame serves every instance that maps
  it; an instance pays its PSS share, k / (N·k + h) per frame for k mappings of its own and
  h of the host's.
- **private**: anonymous frames only this instance maps, and each mapping of a KSM page
  (undone: KSM's merges are a policy, not a given). Each costs a frame unless a policy
  merges it with an equal content.

A content found in all K captured instances is *common*: N instances hold N copies. One
found in only j < K of them is *specific* to an instance: N instances hold N·j/K distinct
versions. Policies: ``none`` (no merging), ``ksm`` (KSM as configured: equal private
anonymous pages of MADV_MERGEABLE regions merge, at most ``max_page_sharing`` mappings per
KSM page, zero pages into the zero page when ``use_zero_pages`` is set) and ``perfect``
(every equal content, private or shared, host copies included, is one frame).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from dedupx.analysis.footprint import footprint
from dedupx.analysis.ksm import KSM_SYSFS, max_page_sharing
from dedupx.exceptions import UsageError
from dedupx.model.content_key import unique_by_frame
from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.page_classes import is_ksm, is_ksm_eligible, is_private_anon, is_zero_page
from dedupx.model.process_kinds import cgroup_leaf
from dedupx.model.units import MIB, PAGE_SIZE

POLICIES = ("none", "ksm", "perfect")


def use_zero_pages(sysfs: Path = KSM_SYSFS) -> bool:
    """KSM maps equal zero pages to the kernel's zero page (free in PSS) when set."""
    try:
        return (sysfs / "use_zero_pages").read_text().strip() == "1"
    except OSError:
        return False


def instances_of(f: Frames, kind: str) -> list[list[int]]:
    """The instances of ``kind`` in a capture: each VM's QEMU process, or each container's
    processes (grouped by cgroup)."""
    f.require("density", "processes")
    assert f.processes is not None
    procs = f.processes.filter(pl.col("kind") == kind).select("pid", cgroup_leaf().alias("group"))
    if kind == "vm":
        return [[int(p)] for p in procs.collect()["pid"]]
    groups = procs.collect().group_by("group", maintain_order=True).agg("pid")
    return [sorted(int(p) for p in pids) for pids in groups["pid"]]


def _content() -> pl.Expr:
    """A frame's content; one whose bytes were not read counts as a content of its own."""
    return pl.coalesce(pl.col("hash"), unique_by_frame(pl.col("pfn")))


def _mappings(f: Frames, instances: list[list[int]]) -> pl.LazyFrame:
    """One row per (frame, instance): the instance's mappings of it, the frame's flags,
    total map count and content, and whether any of those mappings is KSM-eligible."""
    assert f.pages is not None and f.vmas is not None
    owner = pl.DataFrame(
        {
            "pid": [p for ps in instances for p in ps],
            "inst": [i for i, ps in enumerate(instances) for _ in ps],
        },
        schema={"pid": pl.UInt32, "inst": pl.UInt32},
    ).lazy()
    return (
        f.pages.filter(pl.col("present") & ~is_zero_page())
        .join(owner, on="pid")
        .join(f.vmas.select("pid", "vma_id", "mergeable"), on=["pid", "vma_id"], how="left")
        .group_by("pfn", "inst")
        .agg(
            pl.len().alias("m"),
            pl.col("kpageflags", "mapcount", "hash", "zero").first(),
            is_ksm_eligible(pl.col("mergeable").fill_null(False)).any().alias("eligible"),
        )
        .with_columns(_content().alias("content"), pl.col("zero").fill_null(False))
    )


# Pages grouped at once. The model groups every mapping by frame and by content: on a
# host of 80 M pages that took 20 GiB at once. No frame and no content spans two parts of
# the contents, so the pages are taken a part of the contents at a time, each part of at
# most about this many pages, and only the parts' distinct rows are kept.
PAGES_PER_PART = 10_000_000


def _parts(f: Frames, instances: list[list[int]]) -> dict[str, pl.DataFrame]:
    """The model's inputs (``_parts_of``) as distinct rows, each with ``w``, how many
    times it occurs."""
    assert f.pages is not None
    n = -(-f.pages.select(pl.len()).collect().item() // PAGES_PER_PART)
    # The model counts present pages other than the zero page. A part's are read once
    # (the instances' mappings and the host's each scanned the Parquet). A frame stays in
    # one part: every page of a PFN carries the one hash its frame has.
    counted = f.pages.filter(pl.col("present") & ~is_zero_page())

    def part(i: int) -> dict[str, pl.DataFrame]:
        pages = counted if n <= 1 else counted.filter(_content() % n == i)
        return _parts_of(dataclasses.replace(f, pages=pages.collect().lazy()), instances)

    if n <= 1:
        return {name: _alike(p) for name, p in part(0).items()}
    pieces = [part(i) for i in range(n)]
    out = {}
    for name in pieces[0]:
        alike = pl.concat([_alike(p[name]) for p in pieces])
        keys = [c for c in alike.columns if c != "w"]
        out[name] = alike.group_by(keys).agg(pl.col("w").sum())
    return out


def _parts_of(f: Frames, instances: list[list[int]]) -> dict[str, pl.DataFrame]:
    """The capture reduced to what the model needs: private contents (copies per instance,
    eligible or not), frames shared by identity, and every content with the host's
    mappings of it (for ``perfect``)."""
    assert f.pages is not None
    maps = _mappings(f, instances)
    per_frame = maps.group_by("pfn").agg(
        pl.col("inst").n_unique().alias("j"), pl.col("m").sum().alias("m_inst")
    )
    maps = maps.join(per_frame, on="pfn").with_columns(
        (pl.col("mapcount").cast(pl.Int64) - pl.col("m_inst").cast(pl.Int64)).clip(0).alias("h"),
    )
    # Private: each mapping of a KSM page (a copy again once merges are undone), or an
    # anonymous frame one instance alone maps. Everything else is shared by identity.
    maps = maps.with_columns(
        (is_ksm() | (is_private_anon() & (pl.col("j") == 1) & (pl.col("h") == 0))).alias("private"),
        pl.when(is_ksm()).then(pl.col("m")).otherwise(1).alias("copies"),
    )
    private = (
        maps.filter(pl.col("private"))
        .group_by("content", "inst")
        .agg(
            pl.col("copies").filter(pl.col("eligible")).sum().alias("eligible"),
            pl.col("copies").filter(~pl.col("eligible")).sum().alias("other"),
            pl.col("zero").first(),
        )
        .group_by("content")
        .agg(
            pl.len().alias("j"),
            pl.col("eligible").sum().cast(pl.Float64),
            pl.col("other").sum().cast(pl.Float64),
            pl.col("zero").first(),
        )
        .drop("content")
    )
    identity = (
        maps.filter(~pl.col("private"))
        .group_by("pfn")
        .agg(pl.col("j", "m_inst", "h").first())
        .select(
            "j",
            (pl.col("m_inst") / pl.col("j")).alias("k"),
            pl.col("h").cast(pl.Float64),
        )
    )
    # Perfect merging: every content the instances hold, private or shared, and how many
    # mappings the host has of frames that hold it.
    held = (
        maps.with_columns(
            pl.when(pl.col("private")).then(pl.col("copies")).otherwise(pl.col("m")).alias("k")
        )
        .group_by("content", "inst")
        .agg(pl.col("k").sum())
        .group_by("content")
        .agg(pl.len().alias("j"), pl.col("k").mean())
    )
    shared_host = (
        maps.filter(~pl.col("private"))
        .group_by("pfn")
        .agg(pl.col("content", "h").first())
        .select("content", "h")
    )
    host = (
        f.pages.filter(pl.col("present") & ~is_zero_page())
        .join(maps.select("pfn").unique(), on="pfn", how="anti")
        .with_columns(_content().alias("content"))
        .group_by("content")
        .agg(pl.len().cast(pl.Int64).alias("h"))
    )
    host_all = pl.concat([host, shared_host]).group_by("content").agg(pl.col("h").sum())
    perfect = held.join(host_all, on="content", how="left").select(
        "j", "k", pl.col("h").fill_null(0).cast(pl.Float64)
    )
    # Collected together, the mappings they share are computed once.
    parts = pl.collect_all([private, identity, perfect])
    return dict(zip(("private", "identity", "perfect"), parts, strict=True))


def _share(n: pl.Expr, k: pl.Expr, h: pl.Expr, j: pl.Expr, instances: int) -> pl.Expr:
    """Frames' worth the instances pay for one frame (or content) at N instances: its N·k
    mappings' share of N·k + h when common to all K captured instances, else N·j/K
    versions of it, each k / (k + h)."""
    common = n * k / (n * k + h)
    specific = n * j / instances * k / (k + h)
    return pl.when(j == instances).then(common).otherwise(specific)


def _alike(part: pl.DataFrame) -> pl.DataFrame:
    """Each distinct row of ``part`` once, with ``w``, how many times it occurs. Rows alike
    count alike: the products with every N stay small however large the capture."""
    return part.group_by(part.columns).agg(pl.len().cast(pl.Float64).alias("w"))


def _frames_needed(
    parts: dict[str, pl.DataFrame], n: pl.DataFrame, instances: int, m: int, zero_free: bool
) -> pl.DataFrame:
    """Frames the N instances pay for, per N, under each policy (``parts``: ``_parts``)."""
    big_n, j = pl.col("n").cast(pl.Float64), pl.col("j").cast(pl.Float64)
    w = pl.col("w")
    ident = (
        n.join(parts["identity"], how="cross")
        .group_by("n")
        .agg((w * _share(big_n, pl.col("k"), pl.col("h"), j, instances)).sum().alias("shared"))
    )
    common = pl.col("j") == instances
    # Copies of a content at N instances: common ones N per instance's mean, specific ones
    # N·j/K versions of the holding instances' mean.
    versions = pl.when(common).then(1.0).otherwise(big_n * j / instances)
    # (A private content's copies are ``eligible`` for KSM or ``other``; ``n`` is N.)
    eligible, other = pl.col("eligible"), pl.col("other")
    per_version_e = pl.when(common).then(big_n * eligible / instances).otherwise(eligible / j)
    per_version_n = pl.when(common).then(big_n * other / instances).otherwise(other / j)
    ksm_pages = (per_version_e / m).ceil()
    if zero_free:
        ksm_pages = pl.when(pl.col("zero")).then(0.0).otherwise(ksm_pages)
    priv = (
        n.join(parts["private"], how="cross")
        .group_by("n")
        .agg(
            (w * versions * (per_version_e + per_version_n)).sum().alias("none"),
            (w * versions * (ksm_pages + per_version_n)).sum().alias("ksm"),
        )
    )
    perfect = (
        n.join(parts["perfect"], how="cross")
        .group_by("n")
        .agg((w * _share(big_n, pl.col("k"), pl.col("h"), j, instances)).sum().alias("perfect"))
    )
    out = n.join(ident, on="n", how="left").join(priv, on="n", how="left")
    out = out.join(perfect, on="n", how="left").with_columns(pl.exclude("n").fill_null(0.0))
    return out.select(
        "n",
        (pl.col("shared") + pl.col("none")).alias("none"),
        (pl.col("shared") + pl.col("ksm")).alias("ksm"),
        "perfect",
    )


def density(
    data: Frames | HasFrames,
    *,
    kind: str = "vm",
    instances: Sequence[Sequence[int]] | None = None,
    n_max: int = 64,
    max_sharing: int | None = None,
    zero_pages_free: bool | None = None,
) -> pl.DataFrame:
    """The average footprint (PSS) per instance for N = 1 … ``n_max`` identical instances,
    predicted from a capture of K of them: one row per N and policy (``none``, ``ksm``,
    ``perfect``) with ``avg_pss_bytes``, ``avg_pss_mib`` and ``total_bytes``.

    ``instances`` are lists of PIDs, one list per instance (default: every process of
    ``kind`` ``vm``, each its own instance; for ``container``, the processes of each
    cgroup). KSM's ``max_page_sharing`` and ``use_zero_pages`` are read from this host
    unless given. The model: docs/density.md."""
    f = as_frames(data)
    f.require("density", "pages", "vmas", "processes")
    groups = [list(g) for g in instances] if instances is not None else instances_of(f, kind)
    if not groups:
        raise UsageError(f"this capture holds no {kind} to project: nothing to count")
    if n_max < 1:
        raise UsageError(f"n_max must be at least 1, not {n_max}")
    m = max_sharing or max_page_sharing()
    zero_free = use_zero_pages() if zero_pages_free is None else zero_pages_free
    parts = _parts(f, groups)
    n = pl.DataFrame({"n": pl.int_range(1, n_max + 1, eager=True, dtype=pl.Int64)})
    frames = _frames_needed(parts, n, len(groups), m, zero_free)
    long = frames.unpivot(index="n", variable_name="policy", value_name="frames")
    return long.select(
        "n",
        "policy",
        (pl.col("frames") * PAGE_SIZE).round().cast(pl.Int64).alias("total_bytes"),
        (pl.col("frames") * PAGE_SIZE / pl.col("n")).round().cast(pl.Int64).alias("avg_pss_bytes"),
        (pl.col("frames") * PAGE_SIZE / MIB / pl.col("n")).alias("avg_pss_mib"),
    ).sort("policy", "n")


def density_summary(
    data: Frames | HasFrames,
    curve: pl.DataFrame,
    *,
    kind: str = "vm",
    instances: Sequence[Sequence[int]] | None = None,
    ram_bytes: int | None = None,
) -> dict[str, Any]:
    """Beside a ``density`` curve: the instances it was made from, their measured average
    PSS now, and how many instances fit in RAM under each policy: the largest N whose
    total fits in ``ram_bytes`` (default: the capture's RAM less the PSS of everything
    that is not an instance)."""
    f = as_frames(data)
    groups = [list(g) for g in instances] if instances is not None else instances_of(f, kind)
    fp = footprint(f)
    pids = [p for g in groups for p in g]
    mine = int(fp.filter(pl.col("pid").is_in(pids))["pss_bytes"].sum())
    rest = int(fp.filter(~pl.col("pid").is_in(pids))["pss_bytes"].sum())
    cov = f.provenance.coverage
    if ram_bytes is None and cov.get("scope") == "pages of RAM":
        ram_bytes = int(cov["pages_in_scope"]) * PAGE_SIZE - rest
    fits: dict[str, int | None] = {}
    for policy in POLICIES:
        c = curve.filter(pl.col("policy") == policy)
        ok = c.filter(pl.col("total_bytes") <= (ram_bytes or 0))
        fits[policy] = None if ram_bytes is None else int(ok.select(pl.col("n").max()).item() or 0)
    return {
        "kind": kind if instances is None else "instance",
        "instances": groups,
        "measured_avg_pss_bytes": mine / len(groups) if groups else 0,
        "ram_for_instances_bytes": ram_bytes,
        "fits": fits,
        "n_max": int(curve.select(pl.col("n").max()).item() or 0),
    }


__all__ = ["POLICIES", "density", "density_summary", "instances_of", "use_zero_pages"]
