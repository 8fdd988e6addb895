"""The binding hands numeric columns to Arrow consumers without copying them.

A `pages` table crosses from Rust through the Arrow PyCapsule stream. If neither pyarrow
nor polars copies it, both see the very buffer Rust allocated for a column, at the same
address; a copy anywhere on either path would show up as a different address.
"""

from __future__ import annotations

import os

import polars as pl
import pyarrow as pa

from dedupx import _dedupx


def _pyarrow_address(col: pa.ChunkedArray) -> int:
    assert col.num_chunks == 1
    return int(col.chunks[0].buffers()[1].address)


def _polars_address(s: pl.Series) -> int:
    # Exporting a single-chunk numeric Series to Arrow hands over its buffer as it is.
    assert s.n_chunks() == 1
    return int(s.to_arrow().buffers()[1].address)


def test_numeric_columns_reach_pyarrow_and_polars_without_a_copy() -> None:
    pages = _dedupx.scan_process_frames(os.getpid())["pages"]
    via_pyarrow = pa.table(pages)
    via_polars = pl.DataFrame(pages)
    assert via_pyarrow.num_rows == via_polars.height > 0

    for name in ("vaddr", "vma_id"):
        rust_buffer = _pyarrow_address(via_pyarrow[name])
        assert _polars_address(via_polars[name]) == rust_buffer, name

    # The comparison can tell a copy: the same values in a buffer of their own sit elsewhere.
    copied = pl.Series("vaddr", via_polars["vaddr"].to_list(), dtype=pl.UInt64)
    assert copied.equals(via_polars["vaddr"])
    assert _polars_address(copied) != _pyarrow_address(via_pyarrow["vaddr"])
    copied_pa = pa.chunked_array([pa.array(via_pyarrow["vaddr"].to_pylist(), pa.uint64())])
    assert _pyarrow_address(copied_pa) != _polars_address(via_polars["vaddr"])
