"""Writes the small seed corpora of the fuzz targets (run from fuzz/; stdlib only).

The seeds are the files the unit tests build: valid cores, LiME and raw images of a few
pages, the issue's hostile reproducers, an agent file, and the recorded /proc samples.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

PAGE = 4096
HERE = Path(__file__).resolve().parent
TESTDATA = HERE.parent / "rust" / "dedupx-core" / "testdata"


def core(loads: list[tuple[int, int, int, int]], body: bytes = b"") -> bytes:
    """ELF64 core with PT_LOADs (paddr, offset, filesz, memsz), then body."""
    ehdr = bytearray(64)
    ehdr[:4] = b"\x7fELF"
    ehdr[4], ehdr[5], ehdr[6] = 2, 1, 1
    struct.pack_into("<HHI", ehdr, 16, 4, 62, 1)
    struct.pack_into("<Q", ehdr, 32, 64)
    struct.pack_into("<HHH", ehdr, 52, 64, 56, len(loads))
    phdrs = b"".join(
        struct.pack("<IIQQQQQQ", 1, 4, off, 0, paddr, filesz, memsz, PAGE)
        for paddr, off, filesz, memsz in loads
    )
    return bytes(ehdr) + phdrs + body


def lime(ranges: list[tuple[int, int, bytes]]) -> bytes:
    return b"".join(
        struct.pack("<IIQQQ", 0x4C694D45, 1, start, end, 0) + data for start, end, data in ranges
    )


def agent(n: int) -> bytes:
    meta = b'{"kernel":"6.1"}'
    head = 8 + 4 + 4 + 8 * 8
    flags = head + len(meta)
    counts = flags + 8 * n
    hashes = counts + 8 * n
    hashed = hashes + 16 * n
    end = hashed + (n + 7) // 8
    total = end + 8
    out = b"DDXAGNT1" + struct.pack("<II", 1, PAGE)
    out += struct.pack("<8Q", n, head, len(meta), flags, counts, hashes, hashed, total)
    out += meta + bytes(range(8 * n)) + bytes(8 * n) + bytes(range(16 * n)) + b"\x05"
    return out + b"DDXEND!!"


def main() -> None:
    hdr = 64 + 56
    one = core([(0x10_0000, hdr, PAGE, 3 * PAGE)], b"\x07" * PAGE)
    two_hdr = 64 + 2 * 56
    two = core([(0, two_hdr, 64, 64), (PAGE, two_hdr, 0, PAGE)], b"\x01" * 64)
    tail = core([(0, 0, 0, 1 << 40)])
    wraps = core([(2**64 - PAGE, 0, 0, 2 * PAGE), (0, 0, 0, PAGE)])
    small_lime = lime([(0, PAGE - 1, b"\x0a" * PAGE), (2 * PAGE, 3 * PAGE - 1, bytes(PAGE))])
    whole = lime([(0, 2**64 - 1, b"")])
    seeds = {
        "elf_core": {"one": one, "two": two, "tail-1tib": tail, "wraps": wraps},
        "lime": {"two": small_lime, "whole": whole},
        "image": {
            "elf-one": one,
            "elf-tail-1tib": tail,
            "elf-wraps": wraps,
            "lime-two": small_lime,
            "lime-whole": whole,
            "raw": b"\x03" * PAGE,
        },
        "agent_file": {"three": agent(3)},
        "iomem": {"top": b"0-ffffffffffffffff : System RAM\n"},
        "smaps": {},
    }
    for target, files in seeds.items():
        d = HERE / "corpus" / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
    shutil.copy(TESTDATA / "iomem_sample.txt", HERE / "corpus" / "iomem" / "sample")
    shutil.copy(TESTDATA / "smaps_sample.txt", HERE / "corpus" / "smaps" / "sample")


if __name__ == "__main__":
    main()
