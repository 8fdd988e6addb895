"""Containers as the study counts them (chapter 6, Table 6.2): a container is the group of
processes in one cgroup, and its footprint the sum of its processes' RSS, PSS and USS.

Which processes are containers' is dedupx.model.process_kinds' rule (a container engine's
cgroup, or a PID namespace other than the host's); the group is the leaf of the cgroup, the
same key ``group_footprints`` uses, so the two always agree.
"""

from __future__ import annotations

import polars as pl

from dedupx.analysis.footprint import footprint
from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.process_kinds import cgroup_leaf

SUMS = ("rss_bytes", "pss_bytes", "uss_bytes", "swap_bytes")


def containers(data: Frames | HasFrames, fp: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per container: ``cgroup``, ``pids`` and ``comms`` (sorted by PID),
    ``processes`` and the summed ``rss_bytes``, ``pss_bytes``, ``uss_bytes``, ``swap_bytes``
    of its processes; largest PSS first. ``fp`` is ``footprint(data)`` when the caller has it
    already. A container process without pages (all its memory gone) still counts, as 0."""
    f = as_frames(data)
    f.require("containers", "pages", "processes")
    assert f.processes is not None
    fp = footprint(f) if fp is None else fp
    procs = (
        f.processes.filter(pl.col("kind") == "container")
        .select("pid", "comm", cgroup_leaf().alias("cgroup"))
        .collect()
    )
    return (
        procs.join(fp.select("pid", *SUMS), on="pid", how="left")
        .with_columns(pl.col(c).fill_null(0) for c in SUMS)
        .sort("pid")
        .group_by("cgroup", maintain_order=True)
        .agg(
            pl.col("pid").alias("pids"),
            pl.col("comm").alias("comms"),
            pl.len().alias("processes"),
            *(pl.col(c).sum() for c in SUMS),
        )
        .sort("pss_bytes", "cgroup", descending=[True, False])
    )


__all__ = ["containers"]
