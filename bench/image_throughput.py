"""Hashing a memory image already in page cache: GB/s on all cores and on one.

The image: a raw dump of --mib MiB, 1/8 zero pages, half copies of 64 contents, the rest
unique (the same mix as the scan benchmark).

usage: python bench/image_throughput.py [--mib 2048] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import dedupx

PAGE = 4096


def make_image(path: Path, pages: int) -> None:
    pool = [os.urandom(PAGE) for _ in range(64)]
    zero = bytes(PAGE)
    with open(path, "wb") as f:
        for start in range(0, pages, 8192):
            block = bytearray()
            for i in range(start, min(pages, start + 8192)):
                k = i % 8
                block += zero if k == 0 else pool[i % 64] if k <= 4 else os.urandom(PAGE)
            f.write(block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        path = Path(d) / "bench.raw"
        make_image(path, args.mib * 1024 * 1024 // PAGE)
        with open(path, "rb") as f:  # into page cache
            while f.read(1 << 24):
                pass
        size = path.stat().st_size
        best = {}
        for threads in (1, 0):
            for _ in range(args.runs):
                t0 = time.perf_counter()
                img = dedupx.read_image(path, threads=threads)
                secs = time.perf_counter() - t0
                best[threads] = min(best.get(threads, secs), secs)
        assert img.pages == size // PAGE
        rate, rate1 = size / best[0] / 1e9, size / best[1] / 1e9
        print(f"image hashing, {os.cpu_count()} threads : {rate:6.3f} GB/s ({best[0]:.3f} s)")
        print(f"image hashing, 1 thread  : {rate1:6.3f} GB/s")
        print(
            json.dumps(
                {"image_mib": args.mib, "gbps": round(rate, 3), "gbps_1thread": round(rate1, 3)}
            )
        )


if __name__ == "__main__":
    main()
