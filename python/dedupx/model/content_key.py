"""The key the analyses group and join contents by: a page's 16-byte hash read as one
unsigned 128-bit number. A join or group-by on it takes about half the time of one on
16-byte binary (polars hashes and compares a number in registers; binary goes through
byte views), and its column is 16 bytes a row, not 32. Big-endian, so keys sort as the
hashes' bytes do: every order, tie-break and sample is the one the bytes gave.

Snapshots, scans and images keep the hash as bytes (docs/frames.md); ``as_frames`` keys a
capture once, on its way into an analysis, and a hash is shown as hex again only where a
person reads it.
"""

from __future__ import annotations

import polars as pl

KEY = pl.UInt128


def content_key(hash_bytes: pl.Expr) -> pl.Expr:
    """The 16-byte hash ``hash_bytes`` as its key."""
    return hash_bytes.bin.reinterpret(dtype=KEY, endianness="big")


def keyed(lf: pl.LazyFrame, column: str = "hash") -> pl.LazyFrame:
    """``lf`` with its ``column`` of hashes as keys (as it is if keyed already or absent)."""
    if lf.collect_schema().get(column) != pl.Binary:
        return lf
    return lf.with_columns(content_key(pl.col(column)))


def unique_by_frame(pfn: pl.Expr) -> pl.Expr:
    """A key for an unhashed frame's content, unknown and so its own: the PFN. A hash whose
    first 11 bytes are zero would equal one: odds of 2^-88 per hash."""
    return pfn.cast(KEY)


def hex_of(key: int) -> str:
    """The hash a key came from, in hex, as people read hashes."""
    return key.to_bytes(16, "big").hex()


__all__ = ["KEY", "content_key", "hex_of", "keyed", "unique_by_frame"]
