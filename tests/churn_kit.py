"""A churning host and scan trials against it (tests/test_churn.py, bench/churn.py).

``Churn`` starts worker processes that, continuously and at random, mmap anonymous private
and shared regions and touch them, munmap them whole or in part (splitting mappings),
mremap them larger, smaller or elsewhere, mprotect them, and fork children that dirty a
region (copy-on-write) and exit after a few milliseconds. Trials scan those processes with
the CLI and the Python API, or snapshot the whole host, and sort each outcome:

- ``ok``: a result, consistent, not flagged;
- ``flagged``: a result, consistent, flagged as changed while read;
- ``error N``: one error line, exit code N, of those a vanishing target may give;
- ``traceback``, ``wrong exit``, ``inconsistent``: the failures (with details kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

import dedupx
from dedupx.analysis.footprint import footprint
from dedupx.analysis.page_counts import page_counts
from dedupx.exceptions import DedupxError, ProcessGone, ProcessNotFound
from dedupx.model.frames import Frames
from dedupx.model.page_classes import is_mapped_file, is_private_anon, is_shmem, is_zero_page
from dedupx.model.read_changes import changed_expr
from helpers import small_proc_root

# What a scan of a process that exits under it may end with: not found, or gone.
EXPECTED_EXITS = {ProcessNotFound.exit_code, ProcessGone.exit_code}

WORKER = r"""
import ctypes, os, random, sys, time

libc = ctypes.CDLL(None, use_errno=True)
vp, sz = ctypes.c_void_p, ctypes.c_size_t
i32 = ctypes.c_int
libc.mmap.restype, libc.mmap.argtypes = vp, [vp, sz, i32, i32, i32, ctypes.c_long]
libc.mremap.restype, libc.mremap.argtypes = vp, [vp, sz, sz, ctypes.c_int]
libc.munmap.argtypes = [vp, sz]
libc.mprotect.argtypes = [vp, sz, ctypes.c_int]
PAGE, FAILED = 4096, ctypes.c_void_p(-1).value
rng = random.Random(int(sys.argv[1]))
pause = float(sys.argv[2])
regions = []  # [address, pages, writable, most pages]
children = []

def touch(r):
    if r[2]:
        for p in rng.sample(range(r[1]), min(r[1], rng.randint(1, 64))):
            ctypes.memset(r[0] + p * PAGE, rng.randrange(1, 256), 8)

def new_region():
    pages = rng.randint(1, 512)
    shared = rng.random() < 0.2
    a = libc.mmap(None, pages * PAGE, 3, 0x20 | (0x01 if shared else 0x02), -1, 0)
    if a != FAILED:
        # Shared memory is a file of the first size: pages past it would raise SIGBUS.
        regions.append([a, pages, True, pages if shared else 1024])
        touch(regions[-1])

while True:
    op = rng.random()
    if len(regions) < 4 or (op < 0.25 and sum(r[1] for r in regions) < 16384):
        new_region()
    elif op < 0.40:
        r = regions.pop(rng.randrange(len(regions)))
        if r[1] > 2 and rng.random() < 0.5:  # a hole in the middle splits the mapping
            libc.munmap(r[0] + PAGE, PAGE)
            libc.munmap(r[0], PAGE)
            libc.munmap(r[0] + 2 * PAGE, (r[1] - 2) * PAGE)
        else:
            libc.munmap(r[0], r[1] * PAGE)
    elif op < 0.60:
        r = rng.choice(regions)
        pages = max(1, min(r[3], r[1] + rng.randint(-r[1] // 2, r[1])))
        a = libc.mremap(r[0], r[1] * PAGE, pages * PAGE, 1)  # MREMAP_MAYMOVE
        if a != FAILED:
            r[0], r[1] = a, pages
            touch(r)
    elif op < 0.70:
        r = rng.choice(regions)
        r[2] = not r[2]
        libc.mprotect(r[0], r[1] * PAGE, 3 if r[2] else 1)
    elif op < 0.78 and len(children) < 8:
        ms = rng.uniform(0, 0.05)
        pid = os.fork()
        if pid == 0:
            for r in regions[:4]:
                touch(r)
            time.sleep(ms)
            os._exit(0)
        children.append(pid)
    else:
        touch(rng.choice(regions))
    for c in list(children):
        if os.waitpid(c, os.WNOHANG)[0]:
            children.remove(c)
    time.sleep(pause)
"""


class Churn:
    """``workers`` churning processes (each pausing ``pause`` s between operations), stopped
    on exit with their children, by PID."""

    def __init__(self, workers: int = 2, seed: int = 1, pause: float = 0.0005) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(seed * 1000 + i), str(pause)],
                start_new_session=True,
            )
            for i in range(workers)
        ]

    def pids(self) -> list[int]:
        """The workers and their children alive now."""
        out = []
        for p in self.procs:
            out.append(p.pid)
            try:
                kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
            except OSError:
                continue
            out.extend(int(k) for k in kids)
        return out

    def __enter__(self) -> Churn:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            # Each worker leads its own session: its children go with it, and nothing else.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@dataclass
class Outcomes:
    """Counts of each outcome, and what each failure was."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    # The same counts split by what was scanned (a worker, a short-lived child, the host).
    by_target: Counter[str] = field(default_factory=Counter)
    target: str = ""
    failure_kinds: tuple[str, ...] = ("traceback", "wrong exit", "inconsistent")

    def add(self, outcome: str, detail: str = "") -> None:
        self.counts[outcome] += 1
        self.by_target[f"{self.target}: {outcome}"] += 1
        if outcome in self.failure_kinds:
            self.failures.append(f"{outcome}: {detail}"[:2000])

    def bad(self) -> int:
        return sum(self.counts[k] for k in self.failure_kinds)


def inconsistencies(fp: dict[str, Any], classes: dict[str, int]) -> list[str]:
    """What is wrong with one process's figures: PSS ≤ RSS, USS ≤ PSS for it and for each
    class, and classes that add up to RSS."""
    bad = []
    for prefix in ("", "anon_", "file_", "shmem_"):
        rss, pss, uss = (fp[f"{prefix}{m}_bytes"] for m in ("rss", "pss", "uss"))
        if not uss <= pss <= rss:
            bad.append(f"{prefix or 'all '}RSS {rss} PSS {pss} USS {uss}")
    parts = sum(fp[f"{c}_{m}_bytes"] for c in ("anon", "file", "shmem") for m in ("rss",))
    if parts != fp["rss_bytes"]:
        bad.append(f"anon+file+shmem RSS {parts} != RSS {fp['rss_bytes']}")
    pages = classes["anon"] + classes["shmem"] + classes["file"]
    if pages * 4096 != fp["rss_bytes"]:
        bad.append(f"class counts {pages} pages != RSS {fp['rss_bytes']}")
    return bad


def coverage_adds_up(c: dict[str, Any]) -> bool:
    return bool(c["pages_hashed"] + sum(c["not_covered"].values()) == c["pages_in_scope"])


def check_report(r: dict[str, Any]) -> list[str]:
    """A `dedupx scan --json` report's inconsistencies."""
    bad = inconsistencies({**r["footprint"], "rss_bytes": r["rss_bytes"]}, r["page_classes"])
    if not coverage_adds_up(r["coverage"]):
        bad.append(f"coverage {r['coverage']}")
    return bad


def cli_scan_trial(pid: int, out: Outcomes) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "dedupx", "scan", "--pid", str(pid), "--json", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "Traceback" in res.stderr:
        out.add("traceback", res.stderr)
    elif res.returncode == 0:
        r = json.loads(res.stdout)
        bad = check_report(r)
        if bad:
            out.add("inconsistent", f"pid {pid}: {bad}")
        else:
            out.add("flagged" if r["changed_while_read"]["changed"] else "ok")
    elif res.returncode in EXPECTED_EXITS and len(res.stderr.strip().splitlines()) == 1:
        out.add(f"error {res.returncode}")
    else:
        out.add("wrong exit", f"pid {pid}: exit {res.returncode}: {res.stderr}")


def api_scan_trial(pid: int, out: Outcomes) -> None:
    try:
        s = dedupx.scan(pid, threads=1)
        fp = footprint(s).to_dicts()
        classes = page_counts(s)
    except DedupxError as e:
        code = e.exit_code
        if code in EXPECTED_EXITS:
            out.add(f"error {code}")
        else:
            out.add("wrong exit", f"pid {pid}: {type(e).__name__}: {e}")
        return
    except Exception as e:  # the very thing a trial looks for
        out.add("traceback", f"pid {pid}: {type(e).__name__}: {e}")
        return
    empty = {
        f"{p}{m}_bytes": 0 for p in ("", "anon_", "file_", "shmem_") for m in ("rss", "pss", "uss")
    }
    bad = inconsistencies(fp[0] if fp else empty, classes)
    frames = s.to_frames()
    if not coverage_adds_up(frames.provenance.coverage):
        bad.append("coverage does not add up")
    if outside := pages_outside_their_vma(frames):
        bad.append(f"{outside} pages outside the mapping they are listed under")
    if bad:
        out.add("inconsistent", f"pid {pid}: {bad}")
    else:
        out.add("flagged" if s.changed_while_read["changed"] else "ok")


def pages_outside_their_vma(f: Frames) -> int:
    """Pages whose address is not within the mapping their row names: a scan that listed
    its pages under one reading's mappings and described another's would show some."""
    assert f.pages is not None and f.vmas is not None
    return (
        f.pages.join(f.vmas.select("pid", "vma_id", "start", "end"), on=["pid", "vma_id"])
        .filter((pl.col("vaddr") < pl.col("start")) | (pl.col("vaddr") >= pl.col("end")))
        .select(pl.len())
        .collect()
        .item()
    )


def snapshot_trial(workdir: Path, out: Outcomes, pids: list[int] | None = None) -> int:
    """One `dedupx snapshot` of the whole host, or of a host that shows only ``pids``; every
    process's figures checked. Returns how many processes it flagged as changed while read."""
    trial = Path(tempfile.mkdtemp(dir=workdir))
    target = trial / "snap"
    root = ["--proc-root", str(small_proc_root(trial, pids))] if pids is not None else []
    res = subprocess.run(
        [sys.executable, "-m", "dedupx", "snapshot", "-o", str(target), "-q", *root],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if "Traceback" in res.stderr:
        out.add("traceback", res.stderr)
        return 0
    if res.returncode != 0:
        out.add("wrong exit", f"snapshot exit {res.returncode}: {res.stderr}")
        return 0
    snap = dedupx.open_snapshot(target)
    assert snap.pages is not None and snap.processes is not None
    present = pl.col("present")
    classes = {
        row["pid"]: row
        for row in snap.pages.filter(present)
        .group_by("pid")
        .agg(
            is_private_anon().sum().alias("anon"),
            is_shmem().sum().alias("shmem"),
            (is_mapped_file() & ~is_zero_page()).sum().alias("file"),
        )
        .collect()
        .iter_rows(named=True)
    }
    bad = []
    for row in footprint(snap).iter_rows(named=True):
        c = classes.get(row["pid"], {"anon": 0, "shmem": 0, "file": 0})
        bad += [f"pid {row['pid']}: {b}" for b in inconsistencies(row, c)]
    if not coverage_adds_up(snap.provenance.coverage):
        bad.append(f"coverage {snap.provenance.coverage}")
    flagged = snap.processes.filter(changed_expr()).collect().height
    if bad:
        out.add("inconsistent", "; ".join(bad))
    else:
        out.add("flagged" if flagged else "ok")
    shutil.rmtree(trial)
    return flagged


def run_trials(
    scans: int,
    snapshots: int,
    seed: int = 1,
    cli_share: float = 0.25,
    workdir: Path | None = None,
    progress: Callable[[int, int, Outcomes, Outcomes], None] | None = None,
    whole_host: bool = True,
) -> tuple[Outcomes, Outcomes]:
    """``scans`` scans of random churning processes (a ``cli_share`` of them through the
    CLI, the rest through the API) and ``snapshots`` host snapshots, all under churn: of the
    whole host, or (``whole_host=False``) of a host that shows only the churning processes
    (a procfs of links, made afresh for each), which takes seconds whatever else runs."""
    rng = random.Random(seed)
    scan_out, snap_out = Outcomes(), Outcomes()
    with Churn(seed=seed) as churn, tempfile.TemporaryDirectory(dir=workdir) as d:
        plan = ["scan"] * scans + ["snapshot"] * snapshots
        rng.shuffle(plan)
        for done, kind in enumerate(plan):
            if progress:
                progress(done, len(plan), scan_out, snap_out)
            if kind == "snapshot":
                snap_out.target = "host" if whole_host else "churning processes"
                snapshot_trial(Path(d), snap_out, None if whole_host else churn.pids())
                continue
            pids = churn.pids()
            pid = rng.choice(pids)
            workers = {p.pid for p in churn.procs}
            scan_out.target = "worker" if pid in workers else "child"
            if rng.random() < cli_share:
                cli_scan_trial(pid, scan_out)
            else:
                api_scan_trial(pid, scan_out)
    return scan_out, snap_out
