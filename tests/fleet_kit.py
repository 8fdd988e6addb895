"""A fleet to test on, made from real captures: the fingerprints of real guests (templates)
re-labelled and remixed into many hosts and VMs. Each VM keeps a seeded share of its
template's contents and gains contents of its own, so what any two share is known from
how they were made, and equal (for the exact computation) to what dedupx must find."""

from __future__ import annotations

import hashlib
import random

import polars as pl

from dedupx.analysis.fingerprint import SCHEMA


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
                    "hash": [rng.randbytes(16) for _ in range(own)],
                    "class": [1] * own,
                },
                schema={"hash": pl.Binary, "class": pl.UInt8},
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
