"""The analyses on a large snapshot (bench/synthetic_snapshot.py writes one of 100 M frames,
a 400 GiB host with 100 VMs): wall time and peak memory of each, each in a fresh
interpreter (peak RSS is its VmHWM). Target: each within 10 s and the machine's memory.

usage: python bench/analyses_at_scale.py SNAPSHOT [--only NAME ...] [--timeout 900]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TARGET_SECONDS = 10.0

# The child goes first if memory runs out: not whatever else runs on the machine.
SETUP = """
import json, sys, time
open("/proc/self/oom_score_adj", "w").write("1000")
import polars as pl
import dedupx
f = dedupx.open_snapshot(sys.argv[1])
vm = int(f.processes.filter(pl.col("kind") == "vm").select(pl.col("pid").min()).collect().item())
t0 = time.perf_counter()
"""
REPORT = """
secs = time.perf_counter() - t0
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": secs, "peak_kib": int(hwm.split()[1])}))
"""
ANALYSES = {
    "dedup matrix, every VM": """
from dedupx.analysis.vm_matrices import vm_matrices
vm_matrices(f)
""",
    "dedup matrix, one VM": """
dedupx.dedup_matrix(f, vm)
""",
    "incremental cost, every VM": """
from dedupx.analysis.vm_costs import guest_maps, vm_incremental_costs
maps, _ = guest_maps(f, f.processes.filter(pl.col("kind") == "vm").collect()["pid"].to_list())
vm_incremental_costs(f, maps)
""",
    "incremental cost, one VM": """
dedupx.incremental_cost(f, vm)
""",
    "duplicates": """
dedupx.duplicates(f)
""",
    "density": """
dedupx.density(f)
""",
}


def run(name: str, snap: Path, timeout: float) -> dict[str, float] | str:
    code = SETUP + ANALYSES[name] + REPORT
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, str(snap)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"over {timeout:.0f} s"
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["killed"])[-1]
        return f"failed ({out.returncode}, {tail}) after {time.perf_counter() - t0:.0f} s"
    result: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("--only", action="append", choices=list(ANALYSES))
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    manifest = json.loads((args.snapshot / "manifest.json").read_text())
    rows = manifest["rows"]
    print(f"{args.snapshot}: {rows['frames']:,} frames, {rows['pages']:,} pages")
    print(f"{'analysis':28} {'seconds':>8} {'peak GiB':>9}  (target <= {TARGET_SECONDS:.0f} s)")
    for name in args.only or ANALYSES:
        r = run(name, args.snapshot, args.timeout)
        if isinstance(r, str):
            print(f"{name:28} {r}", flush=True)
        else:
            print(f"{name:28} {r['seconds']:8.1f} {r['peak_kib'] / 2**20:9.2f}", flush=True)


if __name__ == "__main__":
    main()
