"""Helpers the tests share: a C process whose pages hold content the test chose, the CLI
run as a user runs it, and the kernel's own figures to check dedupx against."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import blake3
import polars as pl

import dedupx
from dedupx.analysis.guest_memory import lru_pages
from dedupx.model.kpageflags import KPF_ANON, KPF_SWAPBACKED, KPF_ZERO_PAGE

PAGE = 4096
# dedupx's hash (first 16 bytes of BLAKE3) of a zero-filled page.
ZERO_HASH = blake3.blake3(bytes(PAGE)).digest()[:16]
FIXTURES = Path(__file__).parent / "fixtures"
# The guest's lists move a little between meminfo and the flags (the agent's own pages
# among them): each list must lie within its meminfo values read just before and just after
# the flags, give or take 2% or 1 MiB.
LRU_TOLERANCE = (0.02, 256)


def random_page(rng: random.Random) -> bytes:
    return rng.randbytes(PAGE)


def fill_page(byte: int) -> bytes:
    return bytes([byte]) * PAGE


@dataclass
class LayoutProcess:
    proc: subprocess.Popen[str]
    regions: dict[str, tuple[int, int]]  # name -> (start address, pages)
    spec: dict[str, list[bytes]]  # name -> page contents as laid out

    @property
    def pid(self) -> int:
        return self.proc.pid

    def page_contents(self) -> dict[int, tuple[str, bytes]]:
        """vaddr -> (region, content) for every page the test laid out."""
        out: dict[int, tuple[str, bytes]] = {}
        for name, pages in self.spec.items():
            start, n = self.regions[name]
            assert n == len(pages)
            for i, content in enumerate(pages):
                out[start + i * PAGE] = (name, content)
        return out


def start_layout(
    binary: Path,
    workdir: Path,
    spec: dict[str, list[bytes]],
    zeroread: int = 0,
    populate_libs: bool = False,
) -> LayoutProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    for name, pages in spec.items():
        (workdir / name).write_bytes(b"".join(pages))
    if zeroread:
        (workdir / "zeroread.n").write_text(str(zeroread))
    if populate_libs:
        (workdir / "populate_libs").touch()
    proc = subprocess.Popen([str(binary), str(workdir)], stdout=subprocess.PIPE, text=True)
    regions: dict[str, tuple[int, int]] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "READY":
            break
        _, name, start, pages = line.split()
        regions[name] = (int(start, 16), int(pages))
    else:
        proc.wait(5)
        raise RuntimeError(f"page_layout exited with {proc.returncode}")
    return LayoutProcess(proc, regions, spec)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


def fixture_spec() -> dict[str, list[bytes]]:
    """The standard layout: unique, copied, all-equal, zero-filled, file and shmem pages."""
    rng = random.Random(20261126)
    u = [random_page(rng) for _ in range(5)]
    x, y, f, w = (random_page(rng) for _ in range(4))
    z, s, m = fill_page(0), fill_page(0xAB), fill_page(0x5C)
    return {
        "anon.bin": [u[0], u[1], x, x, x, z, z, s, s, s, s, y],
        "mergeable.bin": [x, m, m, u[2], z],
        "file.bin": [y, f, f, u[3], x],
        "shm.bin": [w, w, s, u[4]],
    }


def as_root() -> bool:
    return os.geteuid() == 0


def run_cli(
    *args: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "dedupx", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def snapshot_elsewhere(path: Path) -> Path:
    """A host snapshot taken by a dedupx process that has exited by the time the caller
    reads smaps_rollup: dedupx counts pages as if it were not running (the observer
    correction), so the oracle must not have it running either. This process, which maps
    the same libraries, is then just another process in the snapshot."""
    res = run_cli("snapshot", "-o", str(path), "--quiet")
    assert res.returncode == 0, res.stderr
    return path


def assert_one_line_error(res: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("dedupx: error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]


def rollup(pid: int) -> dict[str, int]:
    """The kernel's /proc/PID/smaps_rollup, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def small_proc_root(workdir: Path, pids: list[int]) -> Path:
    """A procfs that shows only ``pids`` (links into /proc): a host snapshot of a few
    processes, written by the same code, in a fraction of the time."""
    root = workdir / "proc"
    root.mkdir()
    for name in ("kpageflags", "kpagecount", "kpagecgroup", "iomem", "meminfo"):
        (root / name).symlink_to(f"/proc/{name}")
    for pid in pids:
        (root / str(pid)).symlink_to(f"/proc/{pid}")
    return root


def footprint_from_elsewhere(pid: int) -> dict[str, int]:
    """``dedupx.footprint(dedupx.scan(pid))`` computed in a process that has exited on
    return: its PSS and USS count pages as if dedupx were not running (docs/metrics.md, "The
    observer"), and so does a ``smaps_rollup`` read now, with no dedupx mapping them."""
    code = (
        "import json, sys, dedupx\n"
        "fp = dedupx.footprint(dedupx.scan(int(sys.argv[1]))).row(0, named=True)\n"
        "print(json.dumps(fp))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(pid)], capture_output=True, text=True, check=True
    )
    return dict(json.loads(res.stdout))


def assert_lru_within_meminfo(view: dedupx.GuestView) -> None:
    """Each LRU list by the guest's flags lies within meminfo before and after, with slack."""
    before, after = view.meta["meminfo_before_kb"], view.meta["meminfo_kb"]
    for name, v in lru_pages(view).items():
        lo, hi = sorted((before[name] // 4, after[name] // 4))
        slack = max(LRU_TOLERANCE[0] * hi, LRU_TOLERANCE[1])
        assert lo - slack <= v["flags"] <= hi + slack, (name, v, lo, hi)


# KSM and THP knobs: a test that changes one puts it back, whatever happens.
KSM = Path("/sys/kernel/mm/ksm")
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def read(path: Path) -> str:
    text = path.read_text().strip()
    if "[" in text:  # "always [madvise] never": the bracketed one is in force
        return text.split("[", 1)[1].split("]", 1)[0]
    return text


@contextmanager
def sysfs(path: Path, value: str) -> Iterator[None]:
    """Sets a sysfs knob and puts the previous value back, whatever happens."""
    before = read(path)
    path.write_text(value)
    try:
        yield
    finally:
        path.write_text(before)


@contextmanager
def ksm_running() -> Iterator[None]:
    with ExitStack() as stack:
        stack.enter_context(sysfs(KSM / "pages_to_scan", "5000"))
        stack.enter_context(sysfs(KSM / "sleep_millisecs", "5"))
        stack.enter_context(sysfs(KSM / "run", "1"))
        try:
            yield
        finally:
            (KSM / "run").write_text("2")  # unmerge everything before `run` is restored


def merged_pages() -> int:
    return int(read(KSM / "pages_sharing")) + int(read(KSM / "ksm_zero_pages"))


def wait_converged(timeout: float = 180.0) -> int:
    """Until pages_sharing stops changing across two more full scans."""
    deadline = time.monotonic() + timeout
    last, since_scans = -1, 0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now, scans = merged_pages(), int(read(KSM / "full_scans"))
        if now != last:
            last, since_scans = now, scans
        elif now > 0 and scans >= since_scans + 2:
            return now
    raise TimeoutError(f"KSM did not converge in {timeout} s (at {last} pages)")


def matrix_by_hand(snap: dedupx.Frames, target: set[int], peer: str) -> dict[str, dict[str, int]]:
    """docs/metrics.md's matrix of a VM or a group of processes, one frame at a time: scope
    "v" if a target PID maps the frame, ``peer`` if another process of that kind (``vm``,
    ``container``) does, else host."""
    assert snap.pages is not None and snap.processes is not None and snap.vmas is not None
    kind = dict(snap.processes.select("pid", "kind").collect().iter_rows())
    mergeable = {
        (p, i): m
        for p, i, m in snap.vmas.select("pid", "vma_id", "mergeable").collect().iter_rows()
    }
    owners: dict[int, set[int]] = defaultdict(set)
    eligible: set[int] = set()
    for pid, vma_id, pfn, present, flags in (
        snap.pages.select("pid", "vma_id", "pfn", "present", "kpageflags").collect().iter_rows()
    ):
        if present:
            owners[pfn].add(pid)
            if flags & (1 << KPF_ANON) and mergeable[(pid, vma_id)]:
                eligible.add(pfn)
    scopes = ("v", "host", peer)
    groups: dict[bytes, dict[str, list[int]]] = defaultdict(lambda: {s: [0, 0, 0] for s in scopes})
    zero: set[bytes] = set()
    for pfn, h, flags, is_zero in (
        snap.frames.filter(pl.col("hash").is_not_null())
        .select("pfn", "hash", "kpageflags", "zero")
        .collect()
        .iter_rows()
    ):
        if flags & (1 << KPF_ZERO_PAGE):
            continue
        who = owners.get(pfn, set())
        scope = "v" if who & target else peer if any(kind.get(p) == peer for p in who) else "host"
        g = groups[h][scope]
        g[0 if flags & ((1 << KPF_ANON) | (1 << KPF_SWAPBACKED)) else 1] += 1
        g[2] += pfn in eligible
        if is_zero:
            zero.add(h)
    rows = {
        r: {"anon_anon": 0, "file_file": 0, "anon_file": 0, "zero": 0, "ksm": 0}
        for r in ("within", "host", peer)
    }
    for h, g in groups.items():
        a, f, e = g["v"]
        if a + f == 0:
            continue
        w = rows["within"]
        w["anon_anon"] += max(a - 1, 0)
        w["file_file"] += max(f - 1, 0)
        w["anon_file"] += int(a > 0 and f > 0)
        w["ksm"] += max(e - 1, 0)
        w["zero"] += (a + f - 1) if h in zero else 0
        for partner in ("host", peer):
            pa, pf, pe = g[partner]
            if pa + pf:
                r = rows[partner]
                col = "anon_anon" if a and pa else "file_file" if f and pf else "anon_file"
                r[col] += 1
                r["ksm"] += int(col == "anon_anon" and e > 0 and pe > 0)
                r["zero"] += h in zero
                break
    return rows


def elf_headers(loads: list[tuple[int, int, int, int, int]]) -> bytes:
    """An ELF64 core's header and program headers: one PT_LOAD per (vaddr, paddr, offset,
    filesz, memsz), as QEMU's dump-guest-memory writes them; the data is the caller's."""
    ehdr = bytearray(64)
    ehdr[:4] = b"\x7fELF"
    ehdr[4], ehdr[5], ehdr[6] = 2, 1, 1
    struct.pack_into("<HHI", ehdr, 16, 4, 62, 1)  # ET_CORE, EM_X86_64
    struct.pack_into("<Q", ehdr, 32, 64)  # e_phoff
    struct.pack_into("<HHH", ehdr, 52, 64, 56, len(loads))
    return bytes(ehdr) + b"".join(
        struct.pack("<IIQQQQQQ", 1, 4, offset, vaddr, paddr, filesz, memsz, PAGE)
        for vaddr, paddr, offset, filesz, memsz in loads
    )


def guest_ram_hashes(pid: int) -> pl.DataFrame:
    """gfn, hash of each page of guest ``pid``'s main RAM as the host reads it (a page the
    guest never touched is not there: it reads as zeros)."""
    scan = dedupx.scan(pid)
    return (
        scan.guest_map()
        .filter(pl.col("block") == "pc.ram")
        .join(
            scan.pages.filter(pl.col("present")).select(pl.col("vaddr").alias("hva"), "hash"),
            on="hva",
            how="left",
        )
        .select((pl.col("gpa") // PAGE).alias("gfn"), pl.col("hash").fill_null(ZERO_HASH))
    )


# Reads each file with read(), as cat does (a read marks the pages accessed; one stop-time
# CI run with sendfile instead still lost pages to reclaim), into a buffer zeroed after
# each read: no process keeps a copy of the file's bytes for the tests to count.
WARM_READER = """
import os, sys, time
buf = bytearray(1 << 17)
view = memoryview(buf)
zeros = bytes(len(buf))
while True:
    for path in sys.argv[1:]:
        fd = os.open(path, os.O_RDONLY)
        while os.readv(fd, [view]) > 0:
            view[:] = zeros
        os.close(fd)
    time.sleep(0.2)
"""


@contextmanager
def keep_warm(paths: list[Path]) -> Iterator[None]:
    """Read ``paths`` again every 0.2 s from another process, to keep them cached: this host
    runs DAMON's proactive reclaim, which evicts page cache left unread for seconds (loaded
    CI runs lost 11% of an unmapped file during the walk, and 5% of three host libraries
    while two guests booted). Reading marks the pages accessed and never maps them."""
    reader = subprocess.Popen([sys.executable, "-c", WARM_READER, *map(str, paths)], text=True)
    try:
        yield
    finally:
        stop(reader)
