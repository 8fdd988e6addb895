"""Fingerprints: each instance's distinct page contents, compact enough to gather from a
whole fleet (Memory Buddies' idea, with exact sets and a stated-error sample).

An instance is a VM (its QEMU process), a container (the processes of one cgroup) or the
host (every other page of the capture, unmapped page cache included). Its fingerprint is
one row per distinct non-zero content it holds, with the best way it holds it: ``class``
2 if some copy is KSM-eligible (private anon in a MADV_MERGEABLE region), 1 if some copy is
anon, else 0 (file). Zero-filled pages are left out: every instance has them, and the
zero page already shares them.

Large instances are sampled: a content is kept when the first 8 bytes of its BLAKE3 hash,
as a number, fall below ``rate`` x 2^64. The same contents are kept on every host, so two
sampled fingerprints intersect in a sample of their intersection; a count from them is
divided by the rate, with a relative standard error of sqrt((1 - rate) / (rate x n)) for
n contents (docs/fleet.md).
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

import polars as pl

from dedupx.analysis.hashed_frames import hashed_frames
from dedupx.exceptions import UsageError
from dedupx.model.content_key import KEY
from dedupx.model.frames import Frames, HasFrames, as_frames
from dedupx.model.page_classes import holds_frame
from dedupx.model.process_kinds import cgroup_leaf
from dedupx.model.units import PAGE_SIZE
from dedupx.qemu.cmdline import parse_qemu_cmdline

# An instance with more distinct contents than this is sampled down to about this many:
# 2^20 contents (4 GiB of distinct memory) is 17 MiB of fingerprint.
EXACT_LIMIT = 1 << 20
FILE, ANON, KSM_ELIGIBLE = 0, 1, 2
SCHEMA = {
    "host": pl.String,
    "instance": pl.String,
    "kind": pl.String,
    "name": pl.String,
    "uuid": pl.String,
    "ram_bytes": pl.Int64,
    "rate": pl.Float64,
    "hash": KEY,
    "class": pl.UInt8,
}


def in_sample(rate: pl.Expr) -> pl.Expr:
    """Whether a sample at ``rate`` keeps a row's content: its hash's first 8 bytes, as a
    number (the key's upper half), below rate x 2^64 (every content at rate 1)."""
    prefix = (pl.col("hash") // 2**64).cast(pl.UInt64)
    # As floats: the same rounding on every host, so every host keeps the same contents.
    return (rate >= 1.0) | (prefix.cast(pl.Float64) < rate * float(2**64))


def _instances(f: Frames) -> pl.DataFrame:
    """pid → instance, with kind, name, uuid and RAM (a VM's -m; 0 where none applies)."""
    assert f.processes is not None
    procs = f.processes.select("pid", "kind", "cmdline", cgroup_leaf().alias("cg")).collect()
    rows = []
    for pid, kind, argv, cg in procs.iter_rows():
        if kind == "vm":
            cfg = parse_qemu_cmdline(list(argv))
            ident = cfg.uuid or cfg.name or f"pid{pid}"
            rows.append((pid, f"vm:{ident}", "vm", cfg.name, cfg.uuid, cfg.mem_bytes))
        elif kind == "container":
            rows.append((pid, f"container:{cg}", "container", cg, None, 0))
    # Two QEMU processes with the same -name (or -uuid) are still two VMs.
    seen = Counter(r[1] for r in rows if r[2] == "vm")
    rows = [
        (p, f"{i}@{p}" if k == "vm" and seen[i] > 1 else i, k, n, u, m) for p, i, k, n, u, m in rows
    ]
    return pl.DataFrame(
        rows,
        schema={
            "pid": pl.UInt32,
            "instance": pl.String,
            "kind": pl.String,
            "name": pl.String,
            "uuid": pl.String,
            "ram_bytes": pl.Int64,
        },
        orient="row",
    )


def fingerprint(
    data: Frames | HasFrames,
    *,
    host: str | None = None,
    exact_limit: int = EXACT_LIMIT,
    rate: float | None = None,
) -> pl.DataFrame:
    """The fingerprints of every instance in a capture (schema ``SCHEMA``): exact where an
    instance holds at most ``exact_limit`` distinct contents, else sampled to about that
    many; ``rate`` forces one sampling rate on all. ``host`` names the capture's host
    (default: the snapshot's hostname, else this one's)."""
    f = as_frames(data)
    f.require("fingerprint", "pages", "vmas", "processes")
    assert f.pages is not None
    if rate is not None and not 0 < rate <= 1:
        raise UsageError(f"the sampling rate must be in (0, 1], not {rate}")
    host = host or str(f.provenance.manifest.get("hostname") or socket.gethostname())
    inst = _instances(f)
    # Each frame's class from hashed_frames, the one definition of anon (guest RAM is
    # anon whatever backs it) and of KSM-eligible.
    frames = (
        hashed_frames(f)
        .filter(~pl.col("zero").fill_null(False))
        .select(
            "pfn",
            "hash",
            pl.when(pl.col("ksm_eligible"))
            .then(pl.lit(KSM_ELIGIBLE))
            .when(pl.col("anon").fill_null(False))
            .then(pl.lit(ANON))
            .otherwise(pl.lit(FILE))
            .cast(pl.UInt8)
            .alias("class"),
        )
    )
    held = (
        f.pages.filter(holds_frame())
        .join(inst.lazy().select("pid", "instance"), on="pid")
        .select("instance", "pfn")
        .unique()
    )
    # The host's own pages: every hashed frame no instance maps (page cache, kernel, ...).
    mine = held.join(frames, on="pfn")
    host_own = frames.join(held.select("pfn"), on="pfn", how="anti").with_columns(
        pl.lit("host").alias("instance")
    )
    contents = (
        pl.concat(
            [mine.select("instance", "hash", "class"), host_own.select("instance", "hash", "class")]
        )
        .group_by("instance", "hash")
        .agg(pl.col("class").max())
        .collect()
    )
    sizes = contents.group_by("instance").agg(pl.len().alias("n"))
    rates = sizes.select(
        "instance",
        (pl.lit(rate) if rate is not None else (exact_limit / pl.col("n")).clip(upper_bound=1.0))
        .cast(pl.Float64)
        .alias("rate"),
    )
    meta = pl.concat(
        [
            inst.select("instance", "kind", "name", "uuid", "ram_bytes").unique("instance"),
            pl.DataFrame(
                {"instance": ["host"], "kind": ["host"], "name": [host], "uuid": [None]},
                schema={k: SCHEMA[k] for k in ("instance", "kind", "name", "uuid")},
            ).with_columns(_host_ram(f).alias("ram_bytes")),
        ]
    )
    out = (
        contents.join(rates, on="instance")
        .filter(in_sample(pl.col("rate")))
        .join(meta, on="instance", how="left")
        .with_columns(
            pl.lit(host).alias("host"),
            (pl.lit(f"{host}/") + pl.col("instance")).alias("instance"),
        )
    )
    return out.select([pl.col(k).cast(t) for k, t in SCHEMA.items()]).sort("instance", "hash")


def _host_ram(f: Frames) -> pl.Expr:
    cov = f.provenance.coverage
    pages = int(cov.get("pages_in_scope", 0)) if cov.get("scope") == "pages of RAM" else 0
    return pl.lit(pages * PAGE_SIZE, dtype=pl.Int64)


def summary(fp: pl.DataFrame) -> list[dict[str, Any]]:
    """Per instance: contents kept, rate, and the distinct contents they stand for."""
    return (
        fp.group_by("host", "instance", "kind", "name", "ram_bytes", "rate")
        .agg(pl.len().alias("kept"))
        .with_columns((pl.col("kept") / pl.col("rate")).round().cast(pl.Int64).alias("contents"))
        .sort("instance")
        .to_dicts()
    )


__all__ = [
    "ANON",
    "EXACT_LIMIT",
    "FILE",
    "KSM_ELIGIBLE",
    "SCHEMA",
    "fingerprint",
    "in_sample",
    "summary",
]
