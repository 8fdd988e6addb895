"""Placement at scale: planted fleets (groups of VMs that share contents of their own,
spread one member per host) of growing size; for each, the local search with the full
swap search and with the bounded (pruned) one. Prints wall time,
pages saved now / by Memory Buddies' greedy / proposed, and the share of the planted gain
recovered.

usage: python bench/placement_scale.py [--hosts 16 32 64] [--per-host 4] [--contents 2000]
                                       [--full-up-to 32]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dedupx.analysis.fingerprint import SCHEMA
from dedupx.analysis.placement import place
from fleet_kit import planted


def template(contents: int, seed: int = 7) -> pl.DataFrame:
    """One VM's fingerprint rows: ``contents`` random contents (the image every VM runs)."""
    rng = random.Random(seed)
    return pl.DataFrame(
        {
            "host": "h",
            "instance": "h/vm:t",
            "kind": "vm",
            "name": "t",
            "uuid": None,
            "ram_bytes": 256 << 20,
            "rate": 1.0,
            "hash": [rng.getrandbits(128) for _ in range(contents)],
            "class": 1,
        },
        schema=SCHEMA,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--per-host", type=int, default=4)
    ap.add_argument("--contents", type=int, default=2000)
    ap.add_argument("--group-contents", type=int, default=300)
    ap.add_argument(
        "--full-up-to", type=int, default=32, help="run the full search up to this many hosts"
    )
    a = ap.parse_args()
    t = template(a.contents)
    print(
        f"{'hosts':>5} {'VMs':>5} {'search':>8} {'seconds':>8} {'now':>9} {'greedy':>9} "
        f"{'proposed':>9} {'planted':>8}"
    )
    for hosts in a.hosts:
        fleet, gain = planted(t, hosts, a.per_host, a.group_contents)
        for label, prune in (("full", False), ("pruned", True)):
            if not prune and hosts > a.full_up_to:
                continue
            t0 = time.perf_counter()
            plan = place(fleet, prune=prune)
            dt = time.perf_counter() - t0
            got = (plan["proposed"] - plan["current"]) / gain
            print(
                f"{hosts:>5} {hosts * a.per_host:>5} {label:>8} {dt:>8.2f} {plan['current']:>9,} "
                f"{plan['greedy']:>9,} {plan['proposed']:>9,} {got:>8.1%}"
            )


if __name__ == "__main__":
    main()
