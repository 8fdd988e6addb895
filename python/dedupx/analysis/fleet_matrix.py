"""The fleet's sharing matrix: for every pair of instances (VMs, containers, hosts' own
pages) on any hosts, the distinct contents they would share if co-located, split as the
dedup matrix splits them (anon/anon, file/file, anon/file) with the part KSM could merge
(KSM-eligible on both sides).

The computation is additive over contents, so it runs the same on one node or many: the
contents are split into buckets by hash, each bucket gives ``pair_counts``, and the sums
are the matrix (``dedupx.fleet.cluster`` runs the buckets on Dask). Within a bucket,
contents are grouped by the exact set of instances (and classes) that hold them, so a
content every VM of an image holds costs one group, not one pair per content.

Sampled fingerprints (analysis/fingerprint.py) keep the same contents everywhere, so the
contents two of them share are a sample of what the instances share at the lower of their
two rates; ``matrix`` scales each pair by it and states the standard error.
"""

from __future__ import annotations

import polars as pl

from dedupx.analysis.fingerprint import ANON, FILE, KSM_ELIGIBLE

# A holder is one int: the instance's index x 4 + its class for the content.
CLASS_BITS = 2
PAIR_SCHEMA = {"a": pl.UInt32, "b": pl.UInt32, "ca": pl.UInt8, "cb": pl.UInt8, "n": pl.Int64}


def holder_sets(rows: pl.DataFrame) -> pl.DataFrame:
    """From fingerprint rows with an instance index ``idx`` (``hash``, ``idx``, ``class``):
    each distinct set of holders of a content held by two instances or more, with how many
    contents it holds (``holders``: sorted list of idx x 4 + class, ``n``)."""
    code = pl.col("idx").cast(pl.UInt32) * (1 << CLASS_BITS) + pl.col("class").cast(pl.UInt32)
    return (
        rows.lazy()
        .group_by("hash")
        .agg(code.sort().alias("holders"))
        .filter(pl.col("holders").list.len() > 1)
        .group_by("holders")
        .agg(pl.len().cast(pl.Int64).alias("n"))
        .collect()
    )


def pair_counts(sets: pl.DataFrame) -> pl.DataFrame:
    """Contents shared by each pair of instances, by the class each holds them in: ``a`` <
    ``b`` (instance indices), ``ca``, ``cb`` (classes), ``n`` (contents)."""
    if sets.is_empty():
        return pl.DataFrame(schema=PAIR_SCHEMA)
    exploded = sets.with_row_index("set").explode("holders")
    left = exploded.select("set", "n", pl.col("holders").alias("x"))
    right = exploded.select("set", pl.col("holders").alias("y"))
    pairs = left.lazy().join(right.lazy(), on="set").filter(pl.col("x") < pl.col("y"))
    mask = (1 << CLASS_BITS) - 1
    return (
        pairs.select(
            (pl.col("x") // (1 << CLASS_BITS)).cast(pl.UInt32).alias("a"),
            (pl.col("y") // (1 << CLASS_BITS)).cast(pl.UInt32).alias("b"),
            (pl.col("x") & mask).cast(pl.UInt8).alias("ca"),
            (pl.col("y") & mask).cast(pl.UInt8).alias("cb"),
            "n",
        )
        .group_by("a", "b", "ca", "cb")
        .agg(pl.col("n").sum())
        .collect()
    )


def add_pair_counts(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The sum of bucket results: what ``pair_counts`` gives on all contents at once."""
    return (
        pl.concat(parts)
        .group_by("a", "b", "ca", "cb")
        .agg(pl.col("n").sum())
        .sort("a", "b", "ca", "cb")
    )


def matrix(counts: pl.DataFrame, instances: pl.DataFrame) -> pl.DataFrame:
    """One row per pair of instances that share contents: ``instance_a``, ``host_a``,
    ``instance_b``, ``host_b``, ``same_host``, ``anon_anon``, ``file_file``, ``anon_file``,
    ``total`` and ``ksm`` (KSM-eligible on both sides), in pages, scaled by the pair's
    sampling rate, with ``rate`` and ``rel_error`` (the estimate's relative standard error,
    0 where both fingerprints are exact). ``instances`` maps ``idx`` to ``instance``,
    ``host`` and ``rate``."""
    anon = pl.col("ca") >= ANON
    anon_b = pl.col("cb") >= ANON
    per_pair = counts.group_by("a", "b").agg(
        pl.col("n").filter(anon & anon_b).sum().alias("anon_anon"),
        pl.col("n")
        .filter((pl.col("ca") == FILE) & (pl.col("cb") == FILE))
        .sum()
        .alias("file_file"),
        pl.col("n").filter(anon ^ anon_b).sum().alias("anon_file"),
        pl.col("n").sum().alias("total"),
        pl.col("n")
        .filter((pl.col("ca") == KSM_ELIGIBLE) & (pl.col("cb") == KSM_ELIGIBLE))
        .sum()
        .alias("ksm"),
    )
    side = instances.select("idx", "instance", "host", "rate")
    out = per_pair.join(side.rename(lambda c: f"{c}_a"), left_on="a", right_on="idx_a").join(
        side.rename(lambda c: f"{c}_b"), left_on="b", right_on="idx_b"
    )
    rate = pl.min_horizontal("rate_a", "rate_b")
    cells = ("anon_anon", "file_file", "anon_file", "total", "ksm")
    return out.select(
        "instance_a",
        "host_a",
        "instance_b",
        "host_b",
        (pl.col("host_a") == pl.col("host_b")).alias("same_host"),
        *[(pl.col(c) / rate).round().cast(pl.Int64).alias(c) for c in cells],
        rate.alias("rate"),
        # Binomial sampling of the shared contents: sqrt((1 - r) / (r x kept)).
        ((1 - rate) / (rate * pl.col("total").clip(lower_bound=1))).sqrt().alias("rel_error"),
    ).sort("instance_a", "instance_b")


def fleet_matrix(fingerprints: pl.DataFrame) -> pl.DataFrame:
    """The whole computation on one node (polars): what the Dask run must equal."""
    instances = instance_index(fingerprints)
    rows = fingerprints.join(instances.select("instance", "idx"), on="instance")
    counts = add_pair_counts([pair_counts(holder_sets(rows))])
    return matrix(counts, instances)


def instance_index(fingerprints: pl.DataFrame) -> pl.DataFrame:
    """Each instance of a fleet once, with a stable index (sorted by name)."""
    return (
        fingerprints.select("instance", "host", "kind", "name", "ram_bytes", "rate")
        .unique("instance")
        .sort("instance")
        .with_row_index("idx")
        .with_columns(pl.col("idx").cast(pl.UInt32))
    )


__all__ = [
    "add_pair_counts",
    "fleet_matrix",
    "holder_sets",
    "instance_index",
    "matrix",
    "pair_counts",
]
