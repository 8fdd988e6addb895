"""`dedupx snapshot` killed at random moments never leaves a directory that opens as
complete, and the next write removes what it left, naming it (`make kill9` runs 100 on the
whole host; this sample, 10 on a host of one process)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import small_proc_root, stop
from kill_kit import kill_trials


def test_snapshot_killed_at_random_moments(tmp_path: Path) -> None:
    quiet = subprocess.Popen(["sleep", "600"], text=True)
    try:
        root = small_proc_root(tmp_path, [quiet.pid])
        out = kill_trials(10, tmp_path, seed=3, proc_root=root)
    finally:
        stop(quiet)
    print(dict(out.counts))
    assert out.bad() == 0, out.failures
    assert sum(out.counts[k] for k in ("completed", "left partial", "killed before writing")) == 10
    assert not list(tmp_path.glob(".snap.*.partial"))
