"""A whole-host snapshot while a 1 GiB (then an 8 GiB) process runs: GB/s of pages hashed,
seconds, and the peak memory of the snapshot per hashed page (measured in a fresh process).

Without --page-cache the snapshot leaves out the walk of the host's page cache (as
`dedupx snapshot --no-page-cache`): the same content as before the walk existed, whose
goal is 1 s on a 2-core host. With it, the walk's own seconds and files are printed too.

At 1 GiB and 8 GiB (the default) it also prints how the peak grows with the pages hashed:
memory bounded by a window would grow less than the pages do.

usage: python bench/snapshot_throughput.py [--mib 1024,8192] [--page-cache] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from scan_throughput import TARGET

CHILD = r"""
import json, os, sys, time, dedupx
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
out, walk = sys.argv[1], sys.argv[2] == "1"
dedupx.snapshot(out + ".warm", page_cache=walk)  # page in the code first: not counted
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
t0 = time.perf_counter()
dedupx.snapshot(out, page_cache=walk)
secs = time.perf_counter() - t0
m = json.load(open(os.path.join(out, "manifest.json")))
c = m["coverage"]
# The floor a frames table with one row per PFN of RAM sets: the kernel's CPU time for
# the flags of every PFN, read in large blocks (one thread).
cpu0 = time.process_time()
with open("/proc/kpageflags", "rb", buffering=0) as kf:
    while kf.read(1 << 18):
        pass
flags_cpu = time.process_time() - cpu0
print(json.dumps({"seconds": secs, "peak": status("VmHWM") - before,
                  "all_flags_cpu_seconds": flags_cpu,
                  "hashed": c["pages_hashed"],
                  "ram": c.get("pages_in_scope", c.get("pages_of_ram")),
                  "mapped_pages": m["rows"]["pages"], "frames": m["rows"]["frames"],
                  "stage_ms": m["scan"]["stage_ms"],
                  "walk": m["scan"].get("page_cache")}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mib",
        default="1024,8192",
        help="sizes of the target process, comma-separated (default 1024,8192: memory per "
        "page at both, and how it grows)",
    )
    ap.add_argument("--page-cache", action="store_true", help="walk the host's page cache too")
    ap.add_argument("--runs", type=int, default=3, help="snapshots; the fastest counts")
    args = ap.parse_args()
    results = {}
    for mib in (int(m) for m in args.mib.split(",")):
        r = measure(mib, args.page_cache, args.runs)
        results[f"mib_{mib}"] = r
        print(
            f"{mib} MiB target: snapshot {r['seconds']:.2f} s (best of {args.runs}), "
            f"{r['hashed']:,} pages hashed of {r['ram']:,} ({r['mapped_pages']:,} mapped pages "
            f"rows, {r['frames']:,} frames rows); pass 1 stages (ms) {r['stage_ms']}"
        )
        if r["walk"]:
            w = r["walk"]
            print(f"  page-cache walk: {w['seconds']:.2f} s, {w['files']:,} files")
        print(
            f"  hashed pages: {r['gbps']:6.3f} GB/s; peak memory {r['peak'] / 2**20:.1f} MiB, "
            f"{r['peak_bytes_per_hashed_page']:.1f} bytes per hashed page"
        )
        print(
            f"  kpageflags of every PFN alone: {r['all_flags_cpu_seconds']:.2f} s of CPU, "
            f"{r['all_flags_cpu_seconds'] / 2:.2f} s on two threads: the floor of a frames "
            "table with a row per PFN of RAM, with nothing else done"
        )
    summary: dict[str, Any] = dict(results)
    if len(results) > 1:
        first, last = results[next(iter(results))], results[list(results)[-1]]
        summary["hashed_growth"] = round(last["hashed"] / first["hashed"], 2)
        summary["peak_growth"] = round(last["peak"] / first["peak"], 2)
        print(
            f"{summary['hashed_growth']:.2f}x the hashed pages took "
            f"{summary['peak_growth']:.2f}x the memory"
        )
    print(json.dumps(summary))


def measure(mib: int, page_cache: bool, runs: int) -> dict[str, Any]:
    """The fastest of ``runs`` snapshots of this host while a ``mib`` MiB target runs."""
    pages = mib * 1024 * 1024 // 4096
    target = subprocess.Popen(
        [sys.executable, "-c", TARGET, str(pages)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert target.stdout is not None
        target.stdout.readline()
        results = []
        for _ in range(runs):
            with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
                res = subprocess.run(
                    [sys.executable, "-c", CHILD, os.path.join(d, "s"), str(int(page_cache))],
                    capture_output=True,
                    text=True,
                    check=True,
                )
            results.append(json.loads(res.stdout))
    finally:
        target.kill()
        target.wait()
    r = min(results, key=lambda r: r["seconds"])
    rate = r["hashed"] * 4096 / r["seconds"] / 1e9
    return {
        **r,
        "gbps": round(rate, 3),
        "peak_bytes_per_hashed_page": round(r["peak"] / r["hashed"], 1),
    }


if __name__ == "__main__":
    main()
