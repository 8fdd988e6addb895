"""The fleet's sharing matrix: for every pair of instances (VMs, containers, hosts' own
pages) on any hosts, the distinct contents they would share if co-located, split as the
dedup matrix splits them (anon/anon, file/file, anon/file) with the part KSM could merge
(KSM-eligible on both sides).

The computation is additive over contents, so it runs the same on one node or many: the
contents are split into buckets by hash, each bucket gives ``pair_counts``, and the sums
are the matrix (``dedupx.fleet.cluster`` runs the buckets on Dask). Within a bucket, the
contents held by two instances or more are the columns of 0/1 matrices (instance x
content, one per class), and each count is a matrix product (BLAS), a chunk of columns at
a time: a content that a thousand VMs hold costs one column, not half a million pairs.
Products of 0/1 float32 matrices are exact integers up to 2^24, far above a chunk.

Sampled fingerprints (analysis/fingerprint.py) keep the same contents everywhere, so the
contents two of them share are a sample of what the instances share at the lower of their
two rates; ``matrix`` scales each pair by it and states the standard error.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from dedupx.analysis.fingerprint import ANON, FILE, KSM_ELIGIBLE

CELLS = ("total", "anon_anon", "file_file", "ksm")
PAIR_SCHEMA = {"a": pl.UInt32, "b": pl.UInt32, **{c: pl.Int64 for c in CELLS}}
CHUNK = 4096  # content columns per product: 4096 x instances x 4 bytes per matrix


def pair_counts(rows: pl.DataFrame, instances: int) -> pl.DataFrame:
    """From fingerprint rows with an instance index (``hash``, ``idx`` < ``instances``,
    ``class``), the contents each pair of instances ``a`` < ``b`` shares: ``total``, and
    held as anon by both (``anon_anon``), as file by both (``file_file``), KSM-eligible by
    both (``ksm``)."""
    shared = (
        rows.lazy()
        .select("hash", "idx", "class")
        .with_columns(pl.len().over("hash").alias("deg"))
        .filter(pl.col("deg") > 1)
        .with_columns((pl.col("hash").rank("dense").cast(pl.Int64) - 1).alias("col"))
        .collect()
    )
    sums = np.zeros((len(CELLS), instances, instances), dtype=np.int64)
    if shared.height:
        idx = shared["idx"].to_numpy().astype(np.int64)
        col = shared["col"].to_numpy()
        cls = shared["class"].to_numpy()
        held = {
            "total": np.ones(len(cls), dtype=bool),
            "anon_anon": cls >= ANON,
            "file_file": cls == FILE,
            "ksm": cls == KSM_ELIGIBLE,
        }
        for first in range(0, int(col.max()) + 1, CHUNK):
            here = (col >= first) & (col < first + CHUNK)
            for k, cell in enumerate(CELLS):
                take = here & held[cell]
                m = np.zeros((instances, CHUNK), dtype=np.float32)
                m[idx[take], col[take] - first] = 1.0
                sums[k] += (m @ m.T).astype(np.int64)
    a, b = np.triu_indices(instances, k=1)
    keep = sums[0][a, b] > 0
    return pl.DataFrame(
        {
            "a": a[keep].astype(np.uint32),
            "b": b[keep].astype(np.uint32),
            **{c: sums[k][a, b][keep] for k, c in enumerate(CELLS)},
        },
        schema=PAIR_SCHEMA,
    )


def add_pair_counts(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The sum of bucket results: what ``pair_counts`` gives on all contents at once."""
    return pl.concat(parts).group_by("a", "b").agg(pl.col(c).sum() for c in CELLS).sort("a", "b")


def matrix(counts: pl.DataFrame, instances: pl.DataFrame) -> pl.DataFrame:
    """One row per pair of instances that share contents: ``instance_a``, ``host_a``,
    ``instance_b``, ``host_b``, ``same_host``, ``anon_anon``, ``file_file``, ``anon_file``,
    ``total`` and ``ksm`` (KSM-eligible on both sides), in pages, scaled by the pair's
    sampling rate, with ``rate`` and ``rel_error`` (the estimate's relative standard error,
    0 where both fingerprints are exact). ``instances`` maps ``idx`` to ``instance``,
    ``host`` and ``rate``."""
    per_pair = counts.with_columns(
        (pl.col("total") - pl.col("anon_anon") - pl.col("file_file")).alias("anon_file")
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
    counts = add_pair_counts([pair_counts(rows, instances.height)])
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
    "instance_index",
    "matrix",
    "pair_counts",
]
