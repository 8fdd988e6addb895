"""A process whose page contents we wrote must give exactly the counts docs/metrics.md defines."""

from __future__ import annotations

from collections import defaultdict

import blake3
import polars as pl

import dedupx
from dedupx.model.kpageflags import KPF_ANON, KPF_SWAPBACKED, KPF_ZERO_PAGE
from helpers import PAGE, LayoutProcess


def expected_savings(spec: dict[str, list[bytes]]) -> dict[str, int]:
    """The group rule, counted by hand over the laid-out pages (one frame per page)."""
    groups: dict[bytes, list[int]] = defaultdict(lambda: [0, 0, 0])  # anon, file, eligible
    for region, pages in spec.items():
        for content in pages:
            g = groups[content]
            g[1 if region == "file.bin" else 0] += 1
            g[2] += region == "mergeable.bin"
    out = {"anon_anon": 0, "file_file": 0, "anon_file": 0, "ksm_reachable": 0, "zero": 0}
    for content, (a, f, e) in groups.items():
        out["anon_anon"] += max(a - 1, 0)
        out["file_file"] += max(f - 1, 0)
        out["anon_file"] += int(a > 0 and f > 0)
        out["ksm_reachable"] += max(e - 1, 0)
        if content == bytes(PAGE):
            out["zero"] += max(a - 1, 0) + max(f - 1, 0) + int(a > 0 and f > 0)
    out["total"] = out["anon_anon"] + out["file_file"] + out["anon_file"]
    return out


def in_fixture(lp: LayoutProcess) -> pl.Expr:
    cond = pl.lit(False)
    for start, n in lp.regions.values():
        cond = cond | pl.col("vaddr").is_between(start, start + n * PAGE, closed="left")
    return cond


def fixture_pages(scan: dedupx.ProcessScan, lp: LayoutProcess) -> pl.DataFrame:
    return scan.pages.filter(in_fixture(lp))


def fixture_frames(scan: dedupx.ProcessScan, lp: LayoutProcess) -> dedupx.Frames:
    """The scan narrowed to the pages the test laid out (the interpreter's own aside)."""
    return scan.to_frames().restrict(in_fixture(lp))


def test_layout_hand_count_matches_rule(layout: LayoutProcess) -> None:
    # The rule applied to the layout, worked out on paper in conftest's comments' terms:
    # X: 4 anon + 1 file, Z: 3 anon, S: 5 anon, Y: 1+1, M: 2 mergeable, F: 2 file, W: 2 shm.
    assert expected_savings(layout.spec) == {
        "anon_anon": 11,
        "file_file": 1,
        "anon_file": 2,
        "total": 14,
        "ksm_reachable": 1,
        "zero": 2,
    }


def test_duplicates_exact(layout: LayoutProcess) -> None:
    scan = dedupx.scan(layout.pid)
    got = dedupx.duplicates(fixture_frames(scan, layout)).row(0, named=True)
    want = expected_savings(layout.spec)
    for key in ("anon_anon", "file_file", "anon_file", "total", "ksm_reachable"):
        assert got[key] == want[key], key
    assert got["zero_content"] == want["zero"]
    assert got["ksm_missed_file"] == want["file_file"] + want["anon_file"]
    assert got["ksm_missed_not_mergeable"] == want["anon_anon"] - want["ksm_reachable"]
    # Every laid-out page is its own frame; the zero-read pages are not frames at all.
    assert got["frames"] == sum(len(p) for p in layout.spec.values())


def test_hashes_equal_blake3_and_classes_are_right(layout: LayoutProcess) -> None:
    scan = dedupx.scan(layout.pid)
    pages = fixture_pages(scan, layout)
    contents = layout.page_contents()
    laid_out = pages.filter(pl.col("vaddr").is_in(list(contents)))
    assert laid_out.height == len(contents)
    for row in laid_out.iter_rows(named=True):
        region, content = contents[row["vaddr"]]
        assert row["present"], row
        assert row["hash"] == blake3.blake3(content).digest()[:16], (region, row["vaddr"])
        assert row["zero"] == (content == bytes(PAGE))
        flags = row["kpageflags"]
        is_anon = bool(flags & (1 << KPF_ANON))
        swapbacked = bool(flags & (1 << KPF_SWAPBACKED))
        if region == "file.bin":
            assert not is_anon and not swapbacked, "ext4 page cache"
        elif region == "shm.bin":
            assert swapbacked and not is_anon, "shmem"
        else:
            assert is_anon
    # Zero-read pages map the kernel zero page, and it is hashed as zeros without a read.
    start, n = layout.regions["zeroread"]
    zero = pages.filter(pl.col("vaddr").is_between(start, start + n * PAGE, closed="left"))
    assert zero.height == n
    assert (
        zero["kpageflags"]
        .map_elements(lambda f: bool(f & (1 << KPF_ZERO_PAGE)), return_dtype=pl.Boolean)
        .all()
    )
    assert zero["zero"].all()
    assert zero["pfn"].n_unique() == 1


def test_top_duplicates_name_where_content_lives(layout: LayoutProcess) -> None:
    scan = dedupx.scan(layout.pid)
    top = dedupx.top_duplicates(fixture_frames(scan, layout), n=3)
    s_hash = blake3.blake3(bytes([0xAB]) * PAGE).hexdigest()[:32]
    x_content = layout.spec["anon.bin"][2]
    x_hash = blake3.blake3(x_content).hexdigest()[:32]
    # S saves 4 pages, X saves 4 (3 anon/anon + 1 anon/file); ties order by hash.
    assert set(top["hash"][:2]) == {s_hash, x_hash}
    x = top.filter(pl.col("hash") == x_hash).row(0, named=True)
    assert (x["frames"], x["anon"], x["file"], x["total"]) == (5, 4, 1, 4)
    assert any(p.endswith("/file.bin") for p in x["paths"])
    assert "[anon]" in x["paths"]


def test_frames_are_distinct_pfns(layout: LayoutProcess) -> None:
    scan = dedupx.scan(layout.pid)
    frames = scan.frames
    assert frames["pfn"].is_unique().all()
    assert frames.height == scan.stats["distinct_pfns"]
    assert scan.stats["hashed_pfns"] == scan.stats["distinct_pfns"]
