"""The analyses on a large snapshot (bench/synthetic_snapshot.py writes one of 100 M frames,
a 400 GiB host with 100 VMs): wall time and peak memory of each, each in a fresh
interpreter (peak RSS is its VmHWM). Target: each within 10 s and the machine's memory.

usage: python bench/analyses_at_scale.py SNAPSHOT [--only NAME ...] [--timeout 900]
       [--max-gib 16]
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


def rss_gib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((x for x in status.splitlines() if x.startswith("VmRSS")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 2**20


def run(name: str, snap: Path, timeout: float, max_gib: float) -> dict[str, float] | str:
    """One analysis in a fresh interpreter, stopped past ``timeout`` or ``max_gib`` of RSS
    (the machine is shared: the analysis goes before anything else does)."""
    code = SETUP + ANALYSES[name] + REPORT
    t0 = time.perf_counter()
    with subprocess.Popen(
        [sys.executable, "-c", code, str(snap)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        while child.poll() is None:
            took = time.perf_counter() - t0
            if took > timeout or rss_gib(child.pid) > max_gib:
                child.kill()
                child.wait()
                why = f"over {timeout:.0f} s" if took > timeout else f"over {max_gib:.0f} GiB"
                return f"stopped: {why} (after {took:.0f} s)"
            time.sleep(0.1)
        out, err = child.communicate()
    if child.returncode != 0:
        tail = (err.strip().splitlines() or ["killed"])[-1]
        return f"failed ({child.returncode}, {tail}) after {time.perf_counter() - t0:.0f} s"
    result: dict[str, float] = json.loads(out.splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("--only", action="append", choices=list(ANALYSES))
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--max-gib", type=float, default=16.0, help="Stop an analysis past this RSS.")
    args = ap.parse_args()
    manifest = json.loads((args.snapshot / "manifest.json").read_text())
    rows = manifest["rows"]
    print(f"{args.snapshot}: {rows['frames']:,} frames, {rows['pages']:,} pages")
    print(f"{'analysis':28} {'seconds':>8} {'peak GiB':>9}  (target <= {TARGET_SECONDS:.0f} s)")
    for name in args.only or ANALYSES:
        r = run(name, args.snapshot, args.timeout, args.max_gib)
        if isinstance(r, str):
            print(f"{name:28} {r}", flush=True)
        else:
            print(f"{name:28} {r['seconds']:8.1f} {r['peak_kib'] / 2**20:9.2f}", flush=True)


if __name__ == "__main__":
    main()
