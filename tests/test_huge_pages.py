"""Which copies merging drops, and which hugetlb pages it frees whole (no guest needed)."""

from __future__ import annotations

import polars as pl

from dedupx.analysis.huge_pages import dropped_copies

SUB = 4  # subpages per "huge page" here: a page_size of 16 KiB keeps the frames small


def frames(rows: list[tuple[int, bytes, bool]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(pfn, h, huge, SUB * 4096 if huge else 4096) for pfn, h, huge in rows],
        schema={"pfn": pl.UInt64, "hash": pl.Binary, "hugetlb": pl.Boolean, "page_size": pl.UInt64},
        orient="row",
    )


def test_a_huge_page_is_freed_only_whole() -> None:
    a, b, c, d = b"a", b"b", b"c", b"d"
    f = frames(
        [
            # Huge page 0 (PFNs 0-3): every content also held outside it.
            (0, a, True), (1, b, True), (2, a, True), (3, c, True),
            # Huge page 1 (PFNs 4-7): one content (d) held nowhere else.
            (4, a, True), (5, b, True), (6, c, True), (7, d, True),
            # Small pages: one copy each of a, b, c, kept in preference to huge subpages.
            (100, a, False), (101, b, False), (102, c, False),
        ]
    )  # fmt: skip
    out = {r["pfn"]: r for r in dropped_copies(f).iter_rows(named=True)}
    assert {p for p, r in out.items() if r["kept"]} == {100, 101, 102, 7}
    assert {p for p, r in out.items() if r["whole"]} == {0, 1, 2, 3}
    assert sum(r["dropped"] for r in out.values()) == 11 - 4  # one copy of each content kept


def test_held_elsewhere_drops_the_kept_copy_too() -> None:
    f = frames([(0, b"a", True), (1, b"a", True), (2, b"b", True), (3, b"c", True)])
    partner = {b"a": True, b"b": True, b"c": True}
    f = f.with_columns(pl.col("hash").replace_strict(partner).alias("elsewhere"))
    out = dropped_copies(f, held_elsewhere=pl.col("elsewhere"))
    assert out["dropped"].all() and out["whole"].all()
    assert not dropped_copies(f)["whole"].any()  # without a partner, b and c stay
