"""A fleet to test on, made from real captures: the fingerprints of real guests (templates)
re-labelled and remixed into many hosts and VMs. Each VM keeps a seeded share of its
template's contents and gains contents of its own, so what any two share is known from
how they were made, and equal (for the exact computation) to what dedupx must find."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import polars as pl

from dedupx.analysis.fingerprint import SCHEMA
from dedupx.model.content_key import KEY


def remix(
    templates: list[pl.DataFrame],
    hosts: int,
    vms_per_host: int,
    *,
    keep: float = 0.95,
    own: int = 200,
    seed: int = 1,
) -> pl.DataFrame:
    """Fingerprint rows for ``hosts`` x ``vms_per_host`` VMs: VM j of host h is template
    (h x vms_per_host + j) mod len(templates), keeping each content with probability
    ``keep`` (seeded by the VM) and adding ``own`` random contents."""
    rng = random.Random(seed)
    parts = []
    for h in range(hosts):
        for j in range(vms_per_host):
            t = templates[(h * vms_per_host + j) % len(templates)]
            name = f"vm{h:03d}-{j:02d}"
            # A seeded share of the template: by a hash of the content, seeded by the VM.
            vm_seed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest())
            unit = pl.col("hash").hash(seed=vm_seed).cast(pl.Float64) / 2.0**64
            kept = t.select("hash", "class").filter(unit < keep)
            mine = pl.DataFrame(
                {
                    "hash": [rng.getrandbits(128) for _ in range(own)],
                    "class": [1] * own,
                },
                schema={"hash": KEY, "class": pl.UInt8},
            )
            parts.append(
                pl.concat([kept, mine]).with_columns(
                    pl.lit(f"host{h:03d}").alias("host"),
                    pl.lit(f"host{h:03d}/vm:{name}").alias("instance"),
                    pl.lit("vm").alias("kind"),
                    pl.lit(name).alias("name"),
                    pl.lit(None, dtype=pl.String).alias("uuid"),
                    pl.lit(256 << 20).alias("ram_bytes"),
                    pl.lit(1.0).alias("rate"),
                )
            )
    return pl.concat(parts).select([pl.col(k).cast(t) for k, t in SCHEMA.items()])


def by_host(fleet: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {h: fleet.filter(pl.col("host") == h) for h in fleet["host"].unique().sort()}


def planted(
    template: pl.DataFrame, hosts: int, per_host: int, group_contents: int, seed: int = 2
) -> tuple[pl.DataFrame, int]:
    """``hosts`` hosts of ``per_host`` VMs, all copies of ``template``, in ``hosts`` planted
    groups of ``per_host`` VMs that share ``group_contents`` contents of their own; member k
    of group g runs on host (g + k) mod hosts, so no two members share a host. Each host's
    RAM fits exactly ``per_host`` VMs. Returns the fleet and the pages that co-locating
    every group would save beyond now: hosts x group_contents x (per_host - 1)."""
    rng = random.Random(seed)
    groups = {g: [rng.getrandbits(128) for _ in range(group_contents)] for g in range(hosts)}
    # Its own seed: remix draws the VMs' own contents from a generator of its own.
    fleet = remix([template], hosts, per_host, keep=1.0, own=50, seed=seed + 1000)
    extra = []
    for g in range(hosts):
        for k in range(per_host):
            h = (g + k) % hosts
            inst = f"host{h:03d}/vm:vm{h:03d}-{k:02d}"
            extra.append(
                fleet.filter(pl.col("instance") == inst)
                .head(1)
                .drop("hash", "class")
                .join(
                    pl.DataFrame(
                        {"hash": groups[g], "class": [1] * group_contents},
                        schema={"hash": KEY, "class": pl.UInt8},
                    ),
                    how="cross",
                )
                .select(fleet.columns)
            )
    host_rows = pl.DataFrame(
        {
            "host": [f"host{h:03d}" for h in range(hosts)],
            "instance": [f"host{h:03d}/host" for h in range(hosts)],
            "kind": ["host"] * hosts,
            "name": [f"host{h:03d}" for h in range(hosts)],
            "uuid": [None] * hosts,
            "ram_bytes": [per_host * (256 << 20)] * hosts,
            "rate": [1.0] * hosts,
            "hash": [rng.getrandbits(128) for _ in range(hosts)],
            "class": [0] * hosts,
        },
        schema=SCHEMA,
    )
    out = pl.concat([fleet, *extra, host_rows]).select(
        [pl.col(k).cast(t) for k, t in SCHEMA.items()]
    )
    return out, hosts * group_contents * (per_host - 1)


def as_format_1(snap: Path, out: Path, hostname: str) -> Path:
    """A copy of a snapshot as format 1 wrote it: coverage counted against
    ``pages_of_ram``, each command line one string joined with spaces; from ``hostname``."""
    shutil.copytree(snap, out)
    m = json.loads((out / "manifest.json").read_text())
    cov = m["coverage"]
    m["coverage"] = {
        "source": m["source"],
        "pages_hashed": cov["pages_hashed"],
        "pages_of_ram": cov["pages_in_scope"],
        "not_covered": cov["not_covered"],
    }
    m["format_version"], m["hostname"] = 1, hostname
    procs = out / m["files"]["processes"]
    pl.read_parquet(procs).with_columns(pl.col("cmdline").list.join(" ")).write_parquet(procs)
    (out / "manifest.json").write_text(json.dumps(m))
    return out
