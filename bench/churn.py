"""Scans and host snapshots under churn: processes that fork, mmap, mremap, munmap, mprotect
and exit continuously (tests/churn_kit.py). Counts each outcome: ok, flagged (changed while
read), a clean error with its exit code, and the failures: traceback, wrong exit code,
inconsistent figures (PSS > RSS, USS > PSS, classes that do not add up to RSS, coverage that
does not add up). Exits 1 if there is any failure.

usage: python bench/churn.py [--scans 1000] [--snapshots 100] [--seed 1] [--cli-share 0.25]
                             [--churn-only]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from churn_kit import Outcomes, run_trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=1000)
    ap.add_argument("--snapshots", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cli-share", type=float, default=0.25, help="share of scans via the CLI")
    ap.add_argument(
        "--churn-only",
        action="store_true",
        help="snapshot a host that shows only the churning processes (seconds each), not all",
    )
    args = ap.parse_args()
    # A plain kill ends the run as Ctrl-C would: the churning processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    t0 = time.perf_counter()

    def progress(done: int, total: int, scans: Outcomes, snaps: Outcomes) -> None:
        if done % 50 == 0:
            secs = time.perf_counter() - t0
            print(
                f"{done}/{total} trials, {secs:.0f} s: scans {dict(scans.counts)}, "
                f"snapshots {dict(snaps.counts)}",
                file=sys.stderr,
                flush=True,
            )

    scans, snaps = run_trials(
        args.scans,
        args.snapshots,
        args.seed,
        args.cli_share,
        progress=progress,
        whole_host=not args.churn_only,
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
