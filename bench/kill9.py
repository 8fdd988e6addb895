"""`dedupx snapshot` of the whole host killed with SIGKILL at random moments: counts of
each outcome (completed, left a partial directory, killed before writing, removed by the
last write) and of the failures (a directory that opens though incomplete, a partial
removed without being named, one not removed, a wrong exit). Exits 1 on any failure.

usage: python bench/kill9.py [--kills 100] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kill_kit import kill_trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        out = kill_trials(args.kills, Path(d), args.seed)
    report = {
        "seconds": round(time.perf_counter() - t0),
        "outcomes": dict(out.counts),
        "failures": out.failures,
    }
    print(json.dumps(report, indent=1))
    sys.exit(1 if out.bad() else 0)


if __name__ == "__main__":
    main()
