"""How `dedupx analyze` grows with the number of VMs: snapshots of a host running 2, 5 and
10 QEMU/TCG guests of 192 MiB, and on each the VM analyses computed per VM, one pass over
the frames for each (before), and for every VM at once (`dedupx analyze` now), in seconds,
with the ratio of 10 VMs to 2. Target: analyze with 10 VMs within 2x its time with 2.

usage: python bench/analyze_vms.py [--mem-mib 192] [--counts 2,5,10] [--keep DIR]
       python bench/analyze_vms.py --snapshots DIR   (reuses the snapshots --keep wrote)
  (--synthetic DIR adds a snapshot bench/synthetic_snapshot.py wrote, e.g. its 100-VM host)

Each timing is the best of `--runs` (3) fresh interpreters, so that no cache of an earlier
one helps it; the ratio is that of the best times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import dedupx
from guest_kit import Guest, ensure_packages, guest_assets

TARGET_RATIO = 2.0

# The two ways, each in a fresh interpreter; it prints its seconds.
PER_VM = """
import sys, time
import polars as pl
import dedupx
from dedupx.analysis.dedup_matrix import dedup_matrix
from dedupx.analysis.device_cost import device_costs
from dedupx.analysis.incremental_cost import incremental_cost, uss_breakdown
from dedupx.exceptions import DedupxError
t0 = time.perf_counter()
f = dedupx.open_snapshot(sys.argv[1])
pids = f.processes.filter(pl.col("kind") == "vm").collect()["pid"]
for pid in pids:
    dedup_matrix(f, pid)
    try:
        uss_breakdown(f, pid)
        incremental_cost(f, pid)
        device_costs(f, pid)
    except DedupxError:
        pass
print(time.perf_counter() - t0)
"""
ONE_PASS = """
import sys, time
import dedupx
from dedupx.report.snapshot import vm_reports
t0 = time.perf_counter()
vm_reports(dedupx.open_snapshot(sys.argv[1]))
print(time.perf_counter() - t0)
"""
ANALYZE = """
import sys, time
import dedupx
from dedupx.report.snapshot import snapshot_report
t0 = time.perf_counter()
snapshot_report(dedupx.open_snapshot(sys.argv[1]))
print(time.perf_counter() - t0)
"""


def timed(code: str, snap: Path, runs: int) -> float:
    """The best of ``runs`` fresh interpreters."""
    best = float("inf")
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code, str(snap)], check=True, capture_output=True, text=True
        )
        best = min(best, float(out.stdout.split()[-1]))
    return best


def take_snapshots(counts: list[int], mem_mib: int, keep: Path) -> dict[int, Path]:
    """Boots guests up to the largest count and snapshots the host at each count (no
    page-cache walk: the VMs are what is measured)."""
    ensure_packages()
    assets = guest_assets()
    snaps = {}
    with ExitStack() as stack:
        guests: list[Guest] = []
        for n in counts:
            while len(guests) < n:
                g = Guest(
                    assets, mem_mib=mem_mib, name=f"v{len(guests)}", workdir=keep, boot_timeout=900
                )
                guests.append(stack.enter_context(g))
            snaps[n] = dedupx.snapshot(keep / f"vms-{n}", page_cache=False, cached_files=[])
            print(f"snapshot with {n} guests: {snaps[n]}", flush=True)
    return snaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mem-mib", type=int, default=192)
    ap.add_argument("--counts", default="2,5,10")
    ap.add_argument("--keep", type=Path, help="Write the snapshots here and keep them.")
    ap.add_argument("--snapshots", type=Path, help="Reuse the snapshots of an earlier --keep.")
    ap.add_argument("--synthetic", type=Path, help="Also time this (synthetic) snapshot.")
    ap.add_argument("--no-before", action="store_true", help="Skip the per-VM way.")
    ap.add_argument("--runs", type=int, default=3, help="Each timing: the best of this many.")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        if args.snapshots:
            snaps = {n: args.snapshots / f"vms-{n}" for n in counts}
        else:
            keep = args.keep or Path(d)
            keep.mkdir(parents=True, exist_ok=True)
            snaps = take_snapshots(counts, args.mem_mib, keep)
        if args.synthetic:
            snaps[-1] = args.synthetic
        rows = {}
        print(f"{'VMs':>9} {'per VM':>8} {'one pass':>9} {'analyze':>8}  (seconds)")
        for n, snap in snaps.items():
            before = None if args.no_before else timed(PER_VM, snap, args.runs)
            after = timed(ONE_PASS, snap, args.runs)
            whole = timed(ANALYZE, snap, args.runs)
            rows[n] = (before, after, whole)
            label = "synthetic" if n < 0 else str(n)
            b = "-" if before is None else f"{before:.2f}"
            print(f"{label:>9} {b:>8} {after:>9.2f} {whole:>8.2f}", flush=True)
    lo, hi = min(c for c in counts), max(c for c in counts)
    if lo in rows and hi in rows and lo != hi:
        b_lo, a_lo, w_lo = rows[lo]
        b_hi, a_hi, w_hi = rows[hi]
        if b_lo and b_hi:
            print(f"per VM ratio {hi}/{lo} VMs: {b_hi / b_lo:.2f}")
        print(f"one pass ratio {hi}/{lo} VMs: {a_hi / a_lo:.2f}")
        print(f"analyze ratio {hi}/{lo} VMs: {w_hi / w_lo:.2f} (target <= {TARGET_RATIO:.0f})")
    summary: dict[str, float] = {}
    for n, (before, after, whole) in rows.items():
        label = "synthetic" if n < 0 else f"{n}_vms"
        if before is not None:
            summary[f"per_vm_seconds_{label}"] = round(before, 3)
        summary[f"one_pass_seconds_{label}"] = round(after, 3)
        summary[f"analyze_seconds_{label}"] = round(whole, 3)
    if lo in rows and hi in rows and lo != hi:
        summary["analyze_seconds_ratio"] = round(rows[hi][2] / rows[lo][2], 2)
    print(json.dumps(summary))  # last line: bench/ab.py reads it


if __name__ == "__main__":
    main()
