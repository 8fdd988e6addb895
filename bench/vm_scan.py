"""Scanning a QEMU guest with 2 GiB of RAM (about 1.2 GiB of it filled at boot), and the
VM analyses on a snapshot of two such guests: GB/s and seconds.

usage: python bench/vm_scan.py [--mem-mib 2048]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import dedupx
from guest_kit import Guest, ensure_packages, guest_assets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mem-mib", type=int, default=2048)
    args = ap.parse_args()
    ensure_packages()
    assets = guest_assets(variant="fill")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        work = Path(d)
        with (
            Guest(assets, mem_mib=args.mem_mib, name="v1", workdir=work, boot_timeout=600) as g1,
            Guest(assets, mem_mib=args.mem_mib, name="v2", workdir=work, boot_timeout=600) as g2,
        ):
            for g in (g1, g2):
                g.stop()
            best = None
            for _ in range(3):
                t0 = time.perf_counter()
                s = dedupx.scan(g1.pid)
                secs = time.perf_counter() - t0
                best = secs if best is None else min(best, secs)
            present = s.stats["present_pages"]
            rate = present * 4096 / best / 1e9
            t0 = time.perf_counter()
            snap = dedupx.open_snapshot(dedupx.snapshot(work / "snap"))
            snap_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            m = dedupx.dedup_matrix(snap, g1.pid)
            matrix_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            cost = dedupx.incremental_cost(snap, g2.pid)
            cost_s = time.perf_counter() - t0
    print(f"guest scan: {present:,} present pages in {best:.3f} s: {rate:.3f} GB/s")
    print(f"snapshot of the host with two guests: {snap_s:.2f} s")
    print(f"dedup matrix: {matrix_s:.2f} s; incremental cost: {cost_s:.2f} s")
    print(m)
    print(
        json.dumps(
            {
                "present_pages": present,
                "scan_seconds": round(best, 3),
                "gbps": round(rate, 3),
                "snapshot_seconds": round(snap_s, 2),
                "matrix_seconds": round(matrix_s, 2),
                "cost_seconds": round(cost_s, 2),
                "incremental_cost_mib": round(cost["mib"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
