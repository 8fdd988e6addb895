"""Reading a process must not change it: a scan leaves pages shared since fork (and KSM
pages) shared, so the kernel's PSS of the target is the same after the scan as before."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dedupx
from helpers import rollup

PAGES = 1024
FORKED = f"""
import mmap, os, time
m = mmap.mmap(-1, {PAGES} * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.write(os.urandom({PAGES} * 4096))   # present, and distinct from everything else
child = os.fork()
if child == 0:
    time.sleep(600)
    os._exit(0)
print(child, flush=True)
time.sleep(600)
"""


@pytest.fixture
def forked() -> Iterator[tuple[int, int]]:
    """A parent and its child sharing 4 MiB of anonymous pages copy-on-write."""
    p = subprocess.Popen([sys.executable, "-c", FORKED], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    child = int(p.stdout.readline())
    try:
        yield p.pid, child
    finally:
        for pid in (child, p.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.wait(10)
        p.stdout.close()


def test_scan_leaves_fork_shared_pages_shared(forked: tuple[int, int]) -> None:
    parent, _child = forked
    before = {pid: rollup(pid)["Pss"] for pid in forked}
    scan = dedupx.scan(parent)
    after = {pid: rollup(pid)["Pss"] for pid in forked}
    # A pinning read (process_vm_readv) would have given the parent private copies of the
    # 1024 shared pages: 2 MiB more PSS for it, 2 MiB less for the child. The interpreters
    # may touch a page or two of their own meanwhile.
    for pid in forked:
        assert abs(after[pid] - before[pid]) <= 16 * 4096, (before, after)
    assert scan.stats["hashed_pfns"] == scan.stats["distinct_pfns"]
    shared = dedupx.footprint(scan).row(0, named=True)
    assert abs(shared["pss_bytes"] - after[parent]) <= 0.005 * after[parent]


def test_host_snapshot_leaves_fork_shared_pages_shared(
    forked: tuple[int, int], tmp_path: Path
) -> None:
    """The same for a whole-host snapshot, which reads every process's pages."""
    before = {pid: rollup(pid)["Pss"] for pid in forked}
    dedupx.snapshot(tmp_path / "snap")
    after = {pid: rollup(pid)["Pss"] for pid in forked}
    for pid in forked:
        assert abs(after[pid] - before[pid]) <= 16 * 4096, (before, after)
