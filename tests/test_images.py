"""Memory images built by hand, with known pages, give exact frames; bad ones one-line errors."""

from __future__ import annotations

import struct
from pathlib import Path

import blake3
import polars as pl
import pytest

import dedupx
from dedupx.analysis.compare import compare
from dedupx.exceptions import CorruptImage
from dedupx.sources.image import read_image
from helpers import PAGE, assert_one_line_error, elf_headers, fill_page, run_cli

A, B, C = fill_page(0xA1), fill_page(0xB2), fill_page(0xC3)
Z = bytes(PAGE)


def h(page: bytes) -> bytes:
    return blake3.blake3(page).digest()[:16]


def elf_core(loads: list[tuple[int, int, int, bytes]], data_at: int = PAGE) -> bytes:
    """ELF64 core with PT_LOADs (paddr, filesz, memsz, bytes); data laid out from data_at."""
    headers = []
    offset = data_at
    for paddr, filesz, memsz, data in loads:
        headers.append((0xFFFF_8880_0000_0000 + paddr, paddr, offset, filesz, memsz))
        offset += len(data)
    body = b"".join(data for *_, data in loads)
    head = elf_headers(headers)
    return head + bytes(data_at - len(head)) + body


def lime(ranges: list[tuple[int, bytes]]) -> bytes:
    out = b""
    for paddr, data in ranges:
        out += struct.pack("<IIQQQ", 0x4C694D45, 1, paddr, paddr + len(data) - 1, 0) + data
    return out


def frames_of(path: Path, **kw: str) -> list[tuple[int, bytes, bool]]:
    f = read_image(path, **kw).frames.sort("pfn")
    return list(zip(f["pfn"].to_list(), f["hash"].to_list(), f["zero"].to_list(), strict=True))


def test_raw_image(tmp_path: Path) -> None:
    p = tmp_path / "mem.raw"
    p.write_bytes(A + Z + B + A)
    img = read_image(p)
    assert img.format == "raw"
    assert frames_of(p) == [(0, h(A), False), (1, h(Z), True), (2, h(B), False), (3, h(A), False)]


def test_elf_core_image(tmp_path: Path) -> None:
    p = tmp_path / "mem.elf"
    # Segment 2 stores one page of three: the rest reads as zeros (p_memsz > p_filesz).
    p.write_bytes(elf_core([(0x100000, 2 * PAGE, 2 * PAGE, A + B), (0x200000, PAGE, 3 * PAGE, C)]))
    assert read_image(p).format == "elf"
    assert frames_of(p) == [
        (0x100, h(A), False),
        (0x101, h(B), False),
        (0x200, h(C), False),
        (0x201, h(Z), True),
        (0x202, h(Z), True),
    ]


def test_lime_image(tmp_path: Path) -> None:
    p = tmp_path / "mem.lime"
    p.write_bytes(lime([(0x3000, B + C), (0x10000, Z)]))
    assert read_image(p).format == "lime"
    assert frames_of(p) == [(3, h(B), False), (4, h(C), False), (0x10, h(Z), True)]


def test_sparse_raw_image_reads_holes_as_zero(tmp_path: Path) -> None:
    p = tmp_path / "sparse.raw"
    with open(p, "wb") as f:
        f.truncate(4096 * PAGE)
        f.seek(1000 * PAGE)
        f.write(A)
    f = read_image(p).frames
    assert f.height == 4096
    assert f["zero"].sum() == 4095
    assert f.filter(~pl.col("zero"))["pfn"].to_list() == [1000]


def test_image_snapshot_and_compare(tmp_path: Path) -> None:
    a, b = tmp_path / "a.raw", tmp_path / "b.lime"
    a.write_bytes(A + B + Z + Z)
    b.write_bytes(lime([(0, A + C + C + Z + B)]))
    res = run_cli("image", str(a), "-o", str(tmp_path / "a.snap"), "--quiet")
    assert res.returncode == 0, res.stderr
    snap = dedupx.open_snapshot(tmp_path / "a.snap")
    assert snap.provenance.manifest["source"] == "image:raw"
    assert snap.provenance.coverage["pages_hashed"] == 4
    assert snap.frames.collect().height == 4
    # B's A, Z and B are in A; its two Cs are not.
    row = compare(dedupx.load(tmp_path / "a.snap"), dedupx.load(b)).row(0, named=True)
    assert (row["a_frames"], row["b_frames"], row["shared"], row["b_only"]) == (4, 5, 3, 2)
    assert (row["b_contents"], row["shared_contents"], row["b_only_contents"]) == (4, 3, 1)
    res = run_cli("compare", str(a), str(b), "--json")
    assert res.returncode == 0, res.stderr
    assert '"b_only": 2' in res.stdout
    # The analysis of an image: total duplicates only (no flags to split anon and file).
    report = dedupx.snapshot_report(snap)
    assert report["duplicates"]["total"] == 1 and report["duplicates"]["anon_anon"] is None


@pytest.mark.parametrize(
    ("name", "content", "args", "words"),
    [
        ("truncated.elf", elf_core([(0, 2 * PAGE, 2 * PAGE, A + B)])[:-PAGE], (), ["truncated"]),
        ("overlap.elf", elf_core([(0, PAGE, PAGE, A), (0, PAGE, PAGE, B)]), (), ["overlapping"]),
        ("misaligned.elf", elf_core([(0x100, PAGE, PAGE, A)]), (), ["page-aligned"]),
        ("misaligned.raw", A + b"x" * 100, (), ["page-aligned"]),
        ("notelf.raw", A + B, ("--format", "elf"), ["not a valid elf image"]),
        (
            "badversion.lime",
            b"EMiL" + struct.pack("<IQQQ", 7, 0, PAGE - 1, 0) + A,
            (),
            ["LiME version 7"],
        ),
        ("truncated.lime", lime([(0, A + B)])[:-10], (), ["truncated"]),
        ("class32.elf", b"\x7fELF\x01\x01\x01" + bytes(PAGE - 7), (), ["not 64-bit"]),
    ],
)
def test_bad_images(
    tmp_path: Path, name: str, content: bytes, args: tuple[str, ...], words: list[str]
) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    fmt = args[1] if args else None
    with pytest.raises(CorruptImage):
        read_image(p, format=fmt)
    out = tmp_path / "out"
    res = run_cli("image", str(p), "-o", str(out), "--quiet", *args)
    assert_one_line_error(res, 8, *words)
    assert not out.exists()


def test_missing_image(tmp_path: Path) -> None:
    res = run_cli("image", str(tmp_path / "nope.raw"), "--quiet")
    assert_one_line_error(res, 1, "nope.raw", "No such file")
    with pytest.raises(dedupx.DedupxIOError):
        read_image(tmp_path / "nope.raw")
