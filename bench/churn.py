"""Scans and host snapshots under churn: processes that fork, mmap, mremap, munmap, mprotect
and exit continuously (tests/churn_kit.py). Counts each outcome: ok, flagged (changed while
read), a clean error with its exit code, and the failures: traceback, wrong exit code,
inconsistent figures (PSS > RSS, USS > PSS, classes that do not add up to RSS, coverage that
does not add up). Exits 1 if there is any failure.

usage: python bench/churn.py [--scans 1000] [--snapshots 100] [--seed 1] [--cli-share 0.25]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from churn_kit import run_trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=1000)
    ap.add_argument("--snapshots", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cli-share", type=float, default=0.25, help="share of scans via the CLI")
    args = ap.parse_args()
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % 50 == 0:
            print(f"{done}/{total} trials, {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    scans, snaps = run_trials(
        args.scans, args.snapshots, args.seed, args.cli_share, progress=progress
    )
    report = {
        "seconds": round(time.perf_counter() - t0),
        "scans": dict(scans.counts),
        "scans_by_target": dict(scans.by_target),
        "snapshots": dict(snaps.counts),
        "failures": scans.failures + snaps.failures,
    }
    print(json.dumps(report, indent=1))
    sys.exit(1 if scans.bad() or snaps.bad() else 0)


if __name__ == "__main__":
    main()
