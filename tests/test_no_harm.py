"""Reading a process must not change it: a scan leaves pages shared since fork (and KSM
pages) shared, so the kernel's PSS of the shared region is the same after the scan as
before. (Measured on the region alone: the two interpreters may touch pages of their own
heaps meanwhile, which has nothing to do with dedupx.)"""

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

PAGES = 1024
FORKED = f"""
import ctypes, mmap, os, time
m = mmap.mmap(-1, {PAGES} * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.write(os.urandom({PAGES} * 4096))   # present, and distinct from everything else
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
child = os.fork()
if child == 0:
    time.sleep(600)
    os._exit(0)
print(child, addr, flush=True)
time.sleep(600)
"""


def region_pss(pid: int, start: int) -> int:
    """The kernel's PSS (bytes) of the mapping of ``pid`` that starts at ``start``."""
    lines = iter(Path(f"/proc/{pid}/smaps").read_text().splitlines())
    for line in lines:
        if line.split("-", 1)[0] == f"{start:x}":
            for field in lines:
                if field.startswith("Pss:"):
                    return int(field.split()[1]) * 1024
    raise AssertionError(f"no mapping at {start:#x} in {pid}")


@pytest.fixture
def forked() -> Iterator[tuple[int, int, int]]:
    """A parent and its child sharing 4 MiB of anonymous pages copy-on-write, and where
    the region starts."""
    p = subprocess.Popen([sys.executable, "-c", FORKED], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    child, addr = (int(x) for x in p.stdout.readline().split())
    try:
        yield p.pid, child, addr
    finally:
        for pid in (child, p.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.wait(10)
        p.stdout.close()


def shared_pss(forked: tuple[int, int, int]) -> dict[int, int]:
    parent, child, addr = forked
    return {pid: region_pss(pid, addr) for pid in (parent, child)}


def test_scan_leaves_fork_shared_pages_shared(forked: tuple[int, int, int]) -> None:
    before = shared_pss(forked)
    # Each pays half of the 4 MiB they share.
    assert all(v == PAGES * 4096 // 2 for v in before.values()), before
    scan = dedupx.scan(forked[0])
    # A pinning read (process_vm_readv) would have given the parent private copies of the
    # shared pages: 4 MiB for it, 4 MiB for the child.
    assert shared_pss(forked) == before
    assert scan.stats["hashed_pfns"] == scan.stats["distinct_pfns"]


def test_host_snapshot_leaves_fork_shared_pages_shared(
    forked: tuple[int, int, int], tmp_path: Path
) -> None:
    """The same for a whole-host snapshot, which reads every process's pages."""
    before = shared_pss(forked)
    dedupx.snapshot(tmp_path / "snap")
    assert shared_pss(forked) == before
