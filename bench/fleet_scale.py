"""Fleet matrix at scale: a fleet remixed from real guests' fingerprints (a snapshot of a
host with guests), 100 and 1,000 hosts of 10 VMs, computed by polars on one node and on a
Dask LocalCluster; prints wall time, rows per second, and peak memory of the workers.

usage: python bench/fleet_scale.py SNAPSHOT_DIR [--hosts 100 1000] [--vms 10] [--workers 2]
                                   [--template-rate 0.25]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from distributed import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import dedupx
from dedupx.analysis.fingerprint import fingerprint
from dedupx.analysis.fleet_matrix import fleet_matrix
from dedupx.fleet.cluster import client_for, fleet_on_dask
from fleet_kit import by_host, remix


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_peak() -> tuple[int, float]:
    """(pid, peak RSS in MiB) of the process this runs in: VmHWM, its own high-water mark."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return os.getpid(), kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("--hosts", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--vms", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--template-rate", type=float, default=1.0, help="sample the templates (smaller rows)"
    )
    args = ap.parse_args()
    # Workers start before the fleet is built, so they hold only what they are given.
    with client_for(None, args.workers, timeout=10) as client:
        run(args, client)


def run(args: argparse.Namespace, client: Client) -> None:
    fp = fingerprint(dedupx.open_snapshot(args.snapshot), host="t", rate=args.template_rate)
    fp = fp.with_columns(pl.lit(1.0).alias("rate"))  # the remixed VMs are the fleet, exact
    templates = [fp.filter(pl.col("instance") == i) for i in fp["instance"].unique().sort()]
    templates = [t for t in templates if t["kind"][0] == "vm"]
    print(f"{len(templates)} guest templates, {sum(t.height for t in templates):,} contents")
    for hosts in args.hosts:
        fleet = remix(templates, hosts=hosts, vms_per_host=args.vms)
        with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
            paths = []
            for host, rows in by_host(fleet).items():
                paths.append(f"{d}/{host}.parquet")
                rows.write_parquet(paths[-1])
            t0 = time.perf_counter()
            one = fleet_matrix(fleet)
            t1 = time.perf_counter()
            client.restart()  # fresh workers: their memory is this run's alone
            t2 = time.perf_counter()
            res = fleet_on_dask(paths, client=client)
            t3 = time.perf_counter()
            workers = {pid: mib for pid, mib in client.run(worker_peak).values()}
        same = res.matrix.equals(one)
        print(
            f"{hosts:,} hosts, {hosts * args.vms:,} VMs, {fleet.height:,} rows, "
            f"{one.height:,} pairs: polars {t1 - t0:.1f} s ({fleet.height / (t1 - t0):,.0f} "
            f"rows/s), Dask {t3 - t2:.1f} s ({fleet.height / (t3 - t2):,.0f} rows/s); equal: "
            f"{same}; peak per worker {max(workers.values()):,.0f} MiB ({len(workers)} "
            f"worker processes, not this one: {os.getpid() not in workers}); this process "
            f"{peak_rss_mib():,.0f} MiB"
        )


if __name__ == "__main__":
    main()
