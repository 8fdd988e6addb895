"""The fleet matrix on Dask `distributed`: a ``LocalCluster`` by default, or the scheduler
at an address. Inputs are loaded on the workers; each fingerprint is split there into
buckets by hash; each bucket's pair counts (matrix products over its contents) are
computed where its pieces are; the client adds them up. Integer sums in any order: the
result equals the one-node computation (``dedupx.analysis.fleet_matrix.fleet_matrix``)
cell for cell.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import getitem

import polars as pl
from distributed import Client, LocalCluster

from dedupx.analysis.fleet_matrix import add_pair_counts, instance_index, matrix, pair_counts
from dedupx.exceptions import DedupxError
from dedupx.fleet.inputs import Loaded, load

BUCKETS = 16


class FleetError(DedupxError):
    """The fleet cannot be analysed at all (no scheduler, no readable input)."""


@dataclass
class FleetResult:
    matrix: pl.DataFrame
    instances: pl.DataFrame
    errors: list[str] = field(default_factory=list)  # inputs left out, each with why
    fingerprints: pl.DataFrame | None = None  # all rows, when asked to gather them


def _instances(loaded: Loaded) -> pl.DataFrame | None:
    if loaded.rows is None:
        return None
    return loaded.rows.select("instance", "host", "kind", "name", "ram_bytes", "rate").unique()


def _split(loaded: Loaded, index: pl.DataFrame, buckets: int) -> list[pl.DataFrame]:
    """This input's rows with their instance index, one frame per hash bucket (by the
    hash's first byte), in one pass."""
    assert loaded.rows is not None
    first_byte = (pl.col("hash") // 2**120).cast(pl.UInt8)
    rows = loaded.rows.join(index.select("instance", "idx"), on="instance").select(
        "hash", "idx", "class", (first_byte.cast(pl.UInt32) % buckets).alias("b")
    )
    parts = rows.partition_by("b", as_dict=True, include_key=False)
    empty = rows.clear().drop("b")
    return [parts.get((k,), empty) for k in range(buckets)]


def _bucket_pairs(instances: int, *pieces: pl.DataFrame) -> pl.DataFrame:
    return pair_counts(pl.concat(pieces), instances)


@contextmanager
def client_for(scheduler: str | None, workers: int, timeout: float) -> Iterator[Client]:
    """A client of the scheduler at ``scheduler``, or of a new LocalCluster of
    ``workers`` processes, closed on leaving (a LocalCluster with its workers: closing a
    client alone leaves the cluster's processes running). An unreachable scheduler is a
    FleetError naming it."""
    if scheduler is None:
        # A free port for the scheduler's HTTP server: another cluster may hold 8787.
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise FleetError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
    with client:
        yield client


def fleet_on_dask(
    paths: list[str],
    *,
    client: Client,
    buckets: int = BUCKETS,
    gather: bool = False,
) -> FleetResult:
    """The fleet matrix of ``paths`` (fingerprint files or snapshot directories); with
    ``gather``, also every fingerprint row on the client (placement needs them)."""
    loaded = client.map(load, paths, pure=False)
    metas = client.gather(client.map(_instances, loaded))
    errors = [r.error for r in client.gather(client.map(_error_of, loaded)) if r is not None]
    tables = [m for m in metas if m is not None]
    if not tables:
        raise FleetError("no input could be read: " + "; ".join(errors))
    index = instance_index(pl.concat(tables))
    index_f = client.scatter(index, broadcast=True)
    ok = [f for f, m in zip(loaded, metas, strict=True) if m is not None]
    parts = client.map(_split, ok, index=index_f, buckets=buckets)
    pieces = [[client.submit(getitem, p, k) for p in parts] for k in range(buckets)]
    per_bucket = [client.submit(_bucket_pairs, index.height, *ps) for ps in pieces]
    counts = add_pair_counts(client.gather(per_bucket))
    rows = None
    if gather:
        rows = pl.concat([r.rows for r in client.gather(ok) if r.rows is not None])
    return FleetResult(matrix(counts, index), index, errors, rows)


def _error_of(loaded: Loaded) -> Loaded | None:
    return loaded if loaded.error is not None else None


__all__ = ["BUCKETS", "FleetError", "FleetResult", "client_for", "fleet_on_dask"]
