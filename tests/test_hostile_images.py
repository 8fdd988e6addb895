"""Hand-made hostile images: each ends in one CorruptImage line, quickly, in bounded memory.

dedupx runs as root on images a guest (or anyone) may have written. These are the
reproducers of the issue "A hostile guest, a crafted image": a 120-byte ELF core declaring
1 TiB or 64 TiB of zero-filled memory (it used to allocate 11.7 GB, or abort), ELF
segments whose addresses wrap around 2^64, and a LiME range over the whole address space.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

import dedupx
from helpers import PAGE, elf_headers

# Generous for Python with polars imported (about 150 MiB here); the 1 TiB core used to
# take 11.7 GB.
MAX_RSS_BYTES = 600 << 20
# The address space the child may map: an allocation sized by a hostile header fails
# (and is reported) rather than swapping the host.
AS_LIMIT_BYTES = 4 << 30
MAX_SECONDS = 5.0
CORRUPT_IMAGE_EXIT = 8


def core(loads: list[tuple[int, int, int, int]], size: int = 0) -> bytes:
    """ELF64 core with PT_LOADs (paddr, offset, filesz, memsz), zero-padded to size."""
    out = elf_headers([(0, paddr, offset, filesz, memsz) for paddr, offset, filesz, memsz in loads])
    return out + bytes(max(0, size - len(out)))


TOP = 2**64 - PAGE

HOSTILE = [
    ("tail-1tib.elf", core([(0, 0, 0, 1 << 40)]), ["zero-filled"]),
    ("tail-64tib.elf", core([(0, 0, 0, 64 << 40)]), ["zero-filled"]),
    (
        "wraps.elf",
        core([(TOP, PAGE, 2 * PAGE, 2 * PAGE), (0, PAGE, PAGE, PAGE)], size=3 * PAGE),
        ["wraps"],
    ),
    (
        "past-limit.elf",
        core([(2**52 - PAGE, PAGE, 2 * PAGE, 2 * PAGE)], size=3 * PAGE),
        ["physical address limit"],
    ),
    (
        # 300 ranges over the same 4 MiB of the file: 1.2 GiB declared, all "stored".
        "shared.elf",
        core(
            [(i << 22, 5 * PAGE, 1 << 22, 1 << 22) for i in range(300)],
            size=5 * PAGE + (1 << 22),
        ),
        ["share file bytes"],
    ),
    (
        "whole-space.lime",
        struct.pack("<IIQQQ", 0x4C694D45, 1, 0, 2**64 - 1, 0) + bytes(PAGE),
        ["whole address space"],
    ),
]


def limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT_BYTES, AS_LIMIT_BYTES))


def run_bounded(p: Path, tmp_path: Path) -> tuple[int, str, float, int]:
    """dedupx image P under RLIMIT_AS: exit code, stderr, seconds, peak RSS in bytes."""
    out = tmp_path / "out"
    err = tmp_path / "stderr"
    start = time.monotonic()
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dedupx", "image", str(p), "-o", str(out), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=limit_address_space,
        )
        # wait4 gives this child's own peak RSS, not the largest of all children.
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert not out.exists()
    return proc.returncode, err.read_text(), elapsed, usage.ru_maxrss * 1024  # maxrss: KiB


def assert_one_bounded_error(res: tuple[int, str, float, int], code: int, words: list[str]) -> None:
    got, text, elapsed, rss = res
    assert got == code, (got, text)
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("dedupx: error: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    assert elapsed < MAX_SECONDS, elapsed
    assert rss < MAX_RSS_BYTES, rss


@pytest.mark.parametrize(("name", "content", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_image_is_one_error_fast_and_small(
    tmp_path: Path, name: str, content: bytes, words: list[str]
) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    if name.startswith("tail-"):
        assert len(content) == 120
    assert_one_bounded_error(run_bounded(p, tmp_path), CORRUPT_IMAGE_EXIT, words)


def test_sparse_raw_declaring_too_much_is_an_error_not_an_abort(tmp_path: Path) -> None:
    """8 TiB of holes costs nothing on disk but 2^31 frame rows: refused before any is
    hashed (above --max-gib), in one line, without a SIGABRT."""
    p = tmp_path / "sparse.raw"
    try:
        with p.open("wb") as f:
            f.truncate(8 << 40)
    except OSError as e:
        pytest.skip(f"this filesystem holds no 8 TiB sparse file: {e}")
    try:
        # DedupxIOError (1): a valid image larger than allowed, not a corrupt one.
        result = run_bounded(p, tmp_path)
    finally:
        p.unlink()  # pytest keeps tmp_path; an 8 TiB file is no one's to keep
    assert_one_bounded_error(result, 1, ["declares 8,192 GiB", "--max-gib"])


def snapshot_peak_rss(image: Path, out: Path, window_pages: int) -> int:
    """Peak RSS in bytes of a child process that turns ``image`` into a snapshot."""
    code = (
        "import sys; from dedupx.sources.image import image_snapshot; "
        f"image_snapshot(sys.argv[1], sys.argv[2], window_pages={window_pages})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(image), str(out)])
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not all children's
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    return usage.ru_maxrss * 1024


def test_image_memory_is_bounded_by_the_window_not_the_image(tmp_path: Path) -> None:
    """A 4x larger image (sparse: holes and one written page) costs no more memory to
    turn into a snapshot, a window of pages at a time; the snapshot holds every page."""
    peaks = {}
    for gib in (8, 32):
        p = tmp_path / f"{gib}.raw"
        with p.open("wb") as f:
            f.truncate(gib << 30)
            f.seek(3 << 30)
            f.write(b"not zero".ljust(PAGE, b"!"))
        peaks[gib] = snapshot_peak_rss(p, tmp_path / f"{gib}.snap", window_pages=1 << 20)
        frames = dedupx.open_snapshot(tmp_path / f"{gib}.snap").frames.collect()
        assert frames.height == (gib << 30) // PAGE
        assert frames["pfn"].is_sorted() and frames["pfn"].n_unique() == frames.height
        assert int((~frames["zero"]).sum()) == 1
        assert frames.filter(~pl.col("zero"))["pfn"].item() == (3 << 30) // PAGE
        p.unlink()
    # The whole 32 GiB table at once would hold 25 bytes a page more: 200 MiB over 8 GiB.
    grown = peaks[32] - peaks[8]
    print(f"peak RSS: 8 GiB image {peaks[8] >> 20} MiB, 32 GiB image {peaks[32] >> 20} MiB")
    assert grown < 64 << 20, peaks
