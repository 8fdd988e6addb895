"""Writes a synthetic host snapshot: by default 100 M frames (a 400 GiB host) running 100
VMs, in the format `dedupx snapshot` writes (Parquet parts plus manifest.json, through
dedupx.store.parquet), for measuring the analyses at scale.

The duplicate structure, per VM: a quarter of its guest RAM zero pages, a kernel/libc-like
pool of contents every guest holds most of, the page cache of one of a few distro images
(shared by the VMs of that image), private pages with a few copies within the guest, and
QEMU's own heap and TCG buffers; QEMU's binary and libraries are file pages every VM maps.
Beside the VMs: host processes (anon, some of it libc-like content the guests hold too),
the host's page cache (part of it copies of the images' contents: double caching) and
free memory (unhashed). Guest RAM is laid out as `-m` says (no gpa map in the snapshot:
dedupx makes it from the command line), part of it in THPs.

Each VM, and every 1 M frames of the rest, is one chunk made from a seed of its own, so
the snapshot streams out in parts and the generator's memory is that of one chunk.

usage: python bench/synthetic_snapshot.py OUT [--frames 100000000] [--vms 100] [--seed 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from dedupx.model.coverage import SCOPE_HOST, coverage
from dedupx.model.units import MIB, PAGE_SIZE
from dedupx.store.parquet import write_frames
from dedupx.store.snapshot import base_manifest

# kpageflags as a real host shows them (KPF_* bits: see dedupx.model.kpageflags).
ANON = 17179891752  # uptodate lru mmap anon swapbacked
ANON_THP = 17184151592  # the same in a THP
FILE_MAPPED = 17179871340  # referenced uptodate lru active mmap
FILE_CACHE = 17179869292  # the same, unmapped page cache
FREE_HEAD, FREE_TAIL = 1024, 0  # buddy head; a free block's tails carry no flags
ZERO_HASH = bytes.fromhex("b6fb73fc46938c981e2b0b4b1ef282ad")

CHUNK = 1 << 20
# Content ids: 0 is the zero page's; each pool its own range.
COMMON, IMAGES, HOST_UNIQUE, PRIVATE = 1, 1 << 32, 2 << 32, 1 << 40
COMMON_POOL = 40_000  # kernel/libc-like pages every guest holds most of (160 MiB)
IMAGE_POOL = 120_000  # page cache of one distro image (470 MiB)
N_IMAGES = 4
QEMU_FILE_PAGES = 2_000  # QEMU's binary, mapped by every VM
LIBC_PAGES = 500  # libraries every process maps
QEMU_HEAP, QEMU_TCG = 1_000, 3_000
HOST_PROCESSES = 40
GUEST_SHARES = {"zero": 0.25, "common": 0.05, "image": 0.15, "copy": 0.02}  # rest private
PRESENT = 0.85  # of guest RAM, touched by the guest
THP_SHARE = 0.3  # of guest RAM's 2 MiB blocks

FRAME_SCHEMA = {
    "pfn": pl.UInt64,
    "hash": pl.Binary,
    "kpageflags": pl.UInt64,
    "mapcount": pl.UInt64,
    "zero": pl.Boolean,
    "mapped": pl.Boolean,
}
PAGE_SCHEMA = {
    "pid": pl.UInt32,
    "vma_id": pl.UInt32,
    "vaddr": pl.UInt64,
    "pfn": pl.UInt64,
    "present": pl.Boolean,
    "swapped": pl.Boolean,
    "file_shared": pl.Boolean,
    "exclusive": pl.Boolean,
    "kpageflags": pl.UInt64,
    "mapcount": pl.UInt64,
    "hash": pl.Binary,
    "zero": pl.Boolean,
}


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64: a content id to 64 bits that look like a hash's."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hashes(content: np.ndarray) -> pl.Series:
    """A 16-byte hash per content id (id 0: the zero page's real hash)."""
    c = content.astype(np.uint64)
    raw = np.stack([_mix(c), _mix(c ^ np.uint64(0x5851F42D4C957F2D))], axis=1)
    raw[c == 0] = np.frombuffer(ZERO_HASH, dtype=np.uint64)
    arr = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), len(c), [None, pa.py_buffer(raw.tobytes())]
    )
    return pl.Series("hash", arr.cast(pa.binary()))


@dataclass(frozen=True)
class Plan:
    """Where everything sits in the PFN space, and how big it is."""

    frames: int
    vms: int
    seed: int

    @property
    def guest_pages(self) -> int:
        # Four fifths of the host's frames are the VMs', at PRESENT of their RAM touched;
        # -m in whole MiB, in whole 2 MiB blocks.
        per_vm = self.frames * 4 // 5 // max(self.vms, 1)
        return max(512, int(per_vm / PRESENT) // 512 * 512)

    @property
    def host_anon(self) -> int:
        return self.frames // 100 // HOST_PROCESSES

    @property
    def page_cache(self) -> int:
        return self.frames * 6 // 100

    def vm_pid(self, i: int) -> int:
        return 10_000 + i

    def host_pid(self, i: int) -> int:
        return 1_000 + i


def _rng(plan: Plan, *key: int) -> np.random.Generator:
    return np.random.default_rng([plan.seed, *key])


@dataclass
class Chunk:
    frames: pl.DataFrame
    pages: pl.DataFrame | None


def shared_files(plan: Plan, base: int) -> Chunk:
    """QEMU's binary (every VM maps it) and libraries (every process maps them)."""
    n = QEMU_FILE_PAGES + LIBC_PAGES
    pfn = np.arange(base, base + n, dtype=np.uint64)
    content = HOST_UNIQUE + np.arange(n, dtype=np.uint64)
    mapcount = np.full(n, plan.vms, dtype=np.uint64)
    mapcount[QEMU_FILE_PAGES:] += HOST_PROCESSES
    frames = pl.DataFrame(
        {
            "pfn": pfn,
            "hash": hashes(content),
            "kpageflags": np.full(n, FILE_MAPPED, dtype=np.uint64),
            "mapcount": mapcount,
            "zero": np.zeros(n, dtype=bool),
            "mapped": np.ones(n, dtype=bool),
        },
        schema=FRAME_SCHEMA,
    )
    return Chunk(frames, None)


def _frames_and_pages(
    pid: int,
    vma_id: np.ndarray,
    vaddr: np.ndarray,
    pfn: np.ndarray,
    content: np.ndarray,
    flags: np.ndarray,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Private pages, one frame each: the frames (in PFN order) and the pages."""
    n = len(pfn)
    h = hashes(content)
    zero = content == 0
    pages = pl.DataFrame(
        {
            "pid": np.full(n, pid, dtype=np.uint32),
            "vma_id": vma_id.astype(np.uint32),
            "vaddr": vaddr.astype(np.uint64),
            "pfn": pfn.astype(np.uint64),
            "present": np.ones(n, dtype=bool),
            "swapped": np.zeros(n, dtype=bool),
            "file_shared": np.zeros(n, dtype=bool),
            "exclusive": np.ones(n, dtype=bool),
            "kpageflags": flags.astype(np.uint64),
            "mapcount": np.ones(n, dtype=np.uint64),
            "hash": h,
            "zero": zero,
        },
        schema=PAGE_SCHEMA,
    )
    frames = (
        pages.select("pfn", "hash", "kpageflags", "mapcount", "zero", pl.lit(True).alias("mapped"))
        .sort("pfn")
        .cast(FRAME_SCHEMA)  # type: ignore[arg-type]
    )
    return frames, pages


def _shared_pages(
    plan: Plan, pid: int, vmas: list[tuple[int, int, int, int]], files_base: int
) -> pl.DataFrame:
    """A process's pages of the shared files: (vma_id, vaddr start, first file page, count)."""
    parts = []
    for vma_id, start, first, count in vmas:
        k = np.arange(count, dtype=np.uint64)
        parts.append(
            pl.DataFrame(
                {
                    "pid": np.full(count, pid, dtype=np.uint32),
                    "vma_id": np.full(count, vma_id, dtype=np.uint32),
                    "vaddr": np.uint64(start) + k * np.uint64(PAGE_SIZE),
                    "pfn": np.uint64(files_base + first) + k,
                }
            )
        )
    pages = pl.concat(parts)
    page = pages["pfn"].to_numpy() - np.uint64(files_base)
    content = HOST_UNIQUE + page
    # Every VM maps QEMU's binary; every process, the libraries.
    mapcount = np.where(page >= QEMU_FILE_PAGES, plan.vms + HOST_PROCESSES, plan.vms)
    return pages.with_columns(
        pl.lit(True).alias("present"),
        pl.lit(False).alias("swapped"),
        pl.lit(True).alias("file_shared"),
        pl.lit(False).alias("exclusive"),
        pl.lit(FILE_MAPPED, dtype=pl.UInt64).alias("kpageflags"),
        pl.Series("mapcount", mapcount, dtype=pl.UInt64),
        hashes(content),
        pl.lit(False).alias("zero"),
    ).cast(PAGE_SCHEMA)  # type: ignore[arg-type]


# A VM's mappings: (vma_id, start, end or size, perms, path, mergeable, kind, vm_flags).
QEMU_BIN = 0x5600_0000_0000
LIBC = 0x7F00_0000_0000
HEAP = 0x5600_1000_0000
RAM = 0x7E00_0000_0000
TCG = 0x7D00_0000_0000


def vm_chunk(plan: Plan, i: int, base: int, files_base: int) -> Chunk:
    """VM ``i``'s own frames from ``base``: its guest RAM and QEMU's heap and buffers."""
    rng = _rng(plan, 1, i)
    g = plan.guest_pages
    gfn = np.flatnonzero(rng.random(g) < PRESENT).astype(np.uint64)
    n = len(gfn)
    kind = rng.random(n)
    edges = np.cumsum(list(GUEST_SHARES.values()))
    content = PRIVATE + (np.uint64(i) << np.uint64(28)) + np.arange(n, dtype=np.uint64)
    common = (kind >= edges[0]) & (kind < edges[1])
    image = (kind >= edges[1]) & (kind < edges[2])
    copy = (kind >= edges[2]) & (kind < edges[3])
    content[kind < edges[0]] = 0
    content[common] = COMMON + rng.integers(0, COMMON_POOL, common.sum()).astype(np.uint64)
    img = np.uint64(IMAGES + (i % N_IMAGES) * IMAGE_POOL)
    content[image] = img + rng.integers(0, IMAGE_POOL, image.sum()).astype(np.uint64)
    private = np.flatnonzero(kind >= edges[3])
    content[copy] = content[rng.choice(private, copy.sum())]
    thp_block = rng.random(g // 512 + 1) < THP_SHARE
    flags = np.where(thp_block[gfn // np.uint64(512)], ANON_THP, ANON)
    m = QEMU_HEAP + QEMU_TCG
    qemu_content = PRIVATE + (np.uint64(i) << np.uint64(28)) + np.uint64(1 << 27)
    qemu_content = qemu_content + np.arange(m, dtype=np.uint64)
    qemu_content[rng.random(m) < 0.2] = 0
    vma_id = np.concatenate([np.full(n, 4), np.full(QEMU_HEAP, 3), np.full(QEMU_TCG, 5)])
    vaddr = np.concatenate(
        [
            RAM + gfn * np.uint64(PAGE_SIZE),
            HEAP + np.arange(QEMU_HEAP, dtype=np.uint64) * np.uint64(PAGE_SIZE),
            TCG + np.arange(QEMU_TCG, dtype=np.uint64) * np.uint64(PAGE_SIZE),
        ]
    )
    # Frames are handed out in no particular order of the guest's addresses.
    pfn = np.uint64(base) + rng.permutation(n + m).astype(np.uint64)
    frames, pages = _frames_and_pages(
        plan.vm_pid(i),
        vma_id,
        vaddr,
        pfn,
        np.concatenate([content, qemu_content]),
        np.concatenate([flags, np.full(m, ANON)]),
    )
    files = _shared_pages(
        plan,
        plan.vm_pid(i),
        [(0, QEMU_BIN, 0, QEMU_FILE_PAGES), (2, LIBC, QEMU_FILE_PAGES, LIBC_PAGES)],
        files_base,
    )
    return Chunk(frames, pl.concat([files, pages]).sort("vaddr"))


def host_chunk(plan: Plan, i: int, base: int, files_base: int) -> Chunk:
    """Host process ``i``'s anon memory (some zero, some the guests' libc-like content)."""
    rng = _rng(plan, 2, i)
    n = plan.host_anon
    content = HOST_UNIQUE + np.uint64(1 << 24) * np.uint64(i + 1) + np.arange(n, dtype=np.uint64)
    kind = rng.random(n)
    content[kind < 0.2] = 0
    common = (kind >= 0.2) & (kind < 0.3)
    content[common] = COMMON + rng.integers(0, COMMON_POOL, common.sum()).astype(np.uint64)
    pfn = np.uint64(base) + rng.permutation(n).astype(np.uint64)
    frames, pages = _frames_and_pages(
        plan.host_pid(i),
        np.full(n, 1),
        HEAP + np.arange(n, dtype=np.uint64) * np.uint64(PAGE_SIZE),
        pfn,
        content,
        np.full(n, ANON),
    )
    files = _shared_pages(
        plan, plan.host_pid(i), [(0, LIBC, QEMU_FILE_PAGES, LIBC_PAGES)], files_base
    )
    return Chunk(frames, pl.concat([files, pages]).sort("vaddr"))


def cache_chunk(plan: Plan, k: int, base: int, n: int) -> Chunk:
    """Unmapped page cache: files of the host, and the images' contents cached twice."""
    rng = _rng(plan, 3, k)
    content = HOST_UNIQUE + np.uint64(1 << 36) + np.uint64(base) + np.arange(n, dtype=np.uint64)
    kind = rng.random(n)
    image = kind < 0.4
    pool = rng.integers(0, N_IMAGES * IMAGE_POOL, image.sum()).astype(np.uint64)
    content[image] = IMAGES + pool
    content[kind > 0.99] = 0
    frames = pl.DataFrame(
        {
            "pfn": np.arange(base, base + n, dtype=np.uint64),
            "hash": hashes(content),
            "kpageflags": np.full(n, FILE_CACHE, dtype=np.uint64),
            "mapcount": np.zeros(n, dtype=np.uint64),
            "zero": content == 0,
            "mapped": np.zeros(n, dtype=bool),
        },
        schema=FRAME_SCHEMA,
    )
    return Chunk(frames, None)


def free_chunk(base: int, n: int) -> Chunk:
    pfn = np.arange(base, base + n, dtype=np.uint64)
    flags = np.where(pfn % np.uint64(8) == 0, FREE_HEAD, FREE_TAIL).astype(np.uint64)
    frames = pl.DataFrame(
        {
            "pfn": pfn,
            "hash": pl.Series([None] * n, dtype=pl.Binary),
            "kpageflags": flags,
            "mapcount": np.zeros(n, dtype=np.uint64),
            "zero": np.zeros(n, dtype=bool),
            "mapped": np.zeros(n, dtype=bool),
        },
        schema=FRAME_SCHEMA,
    )
    return Chunk(frames, None)


@dataclass
class Layout:
    """The chunks in PFN order, each a function of its seed and base: (what, index, base,
    size) with size in frames."""

    plan: Plan
    parts: list[tuple[str, int, int, int]]

    @classmethod
    def of(cls, plan: Plan) -> Layout:
        parts = []
        base = 1  # PFN 0 is never RAM
        n = QEMU_FILE_PAGES + LIBC_PAGES
        parts.append(("files", 0, base, n))
        base += n
        for i in range(plan.vms):
            # The same draw as vm_chunk's, for the count only.
            g = plan.guest_pages
            present = int((_rng(plan, 1, i).random(g) < PRESENT).sum())
            n = present + QEMU_HEAP + QEMU_TCG
            parts.append(("vm", i, base, n))
            base += n
        for i in range(HOST_PROCESSES):
            parts.append(("host", i, base, plan.host_anon))
            base += plan.host_anon
        left = plan.page_cache
        k = 0
        while left > 0:
            n = min(CHUNK, left)
            parts.append(("cache", k, base, n))
            base, left, k = base + n, left - n, k + 1
        while base <= plan.frames:  # PFNs 1 to frames
            n = min(CHUNK, plan.frames + 1 - base)
            parts.append(("free", 0, base, n))
            base += n
        return cls(plan, parts)

    def chunk(self, what: str, i: int, base: int, n: int) -> Chunk:
        files_base = self.parts[0][2]
        if what == "files":
            return shared_files(self.plan, base)
        if what == "vm":
            return vm_chunk(self.plan, i, base, files_base)
        if what == "host":
            return host_chunk(self.plan, i, base, files_base)
        if what == "cache":
            return cache_chunk(self.plan, i, base, n)
        return free_chunk(base, n)

    def frames(self) -> Iterator[pl.DataFrame]:
        for part in self.parts:
            yield self.chunk(*part).frames

    def pages(self) -> Iterator[pl.DataFrame]:
        # Made again from the same seeds: the frames went first, and neither is kept.
        for part in self.parts:
            if part[0] in ("vm", "host"):
                pages = self.chunk(*part).pages
                assert pages is not None
                yield pages

    def counts(self) -> dict[str, int]:
        by: dict[str, int] = {}
        for what, _, _, n in self.parts:
            by[what] = by.get(what, 0) + n
        return by


def processes(plan: Plan) -> pl.DataFrame:
    mem_mib = plan.guest_pages * PAGE_SIZE // MIB
    rows = [
        {
            "pid": plan.vm_pid(i),
            "comm": "qemu-system-x86",
            "cmdline": [
                "qemu-system-x86_64",
                "-accel",
                "kvm",
                "-m",
                str(mem_mib),
                "-name",
                f"vm{i}",
            ],
            "kind": "vm",
            "vmas": 6,
        }
        for i in range(plan.vms)
    ]
    rows += [
        {
            "pid": plan.host_pid(i),
            "comm": f"daemon{i}",
            "cmdline": [f"/usr/sbin/daemon{i}"],
            "kind": "process",
            "vmas": 2,
        }
        for i in range(HOST_PROCESSES)
    ]
    return pl.DataFrame(rows).select(
        pl.col("pid").cast(pl.UInt32),
        pl.lit(1, dtype=pl.UInt32).alias("ppid"),
        "comm",
        pl.col("cmdline").cast(pl.List(pl.String)),
        pl.col("cmdline").list.first().alias("argv0"),
        pl.lit("0::/").alias("cgroup"),
        pl.lit(4026531836, dtype=pl.UInt64).alias("pid_ns"),
        pl.col("vmas").cast(pl.UInt64),
        *(pl.lit(0, dtype=pl.UInt64).alias(c) for c in ("changed_pages", "vmas_appeared")),
        pl.lit(0, dtype=pl.UInt64).alias("vmas_vanished"),
        pl.lit(False).alias("exited_during_scan"),
        "kind",
    )


def vmas(plan: Plan) -> pl.DataFrame:
    page = PAGE_SIZE
    ram = plan.guest_pages * page
    anon = "rd wr mr mw me ac"
    vm = [
        (0, QEMU_BIN, QEMU_FILE_PAGES * page, "r-xp", "/usr/bin/qemu-system-x86_64", False, "file", "rd ex mr mw me"),  # noqa: E501
        (2, LIBC, LIBC_PAGES * page, "r-xp", "/usr/lib/x86_64-linux-gnu/libc.so.6", False, "file", "rd ex mr mw me"),  # noqa: E501
        (3, HEAP, QEMU_HEAP * page, "rw-p", "[heap]", False, "heap", anon),
        (4, RAM, ram, "rw-p", "", True, "anon", "rd wr mr mw me dc ac hg mg"),
        (5, TCG, QEMU_TCG * page, "rwxp", "", False, "anon", "rd wr ex mr mw me ac"),
    ]  # fmt: skip
    host = [
        (0, LIBC, LIBC_PAGES * page, "r-xp", "/usr/lib/x86_64-linux-gnu/libc.so.6", False, "file", "rd ex mr mw me"),  # noqa: E501
        (1, HEAP, plan.host_anon * page, "rw-p", "[heap]", False, "heap", anon),
    ]  # fmt: skip
    rows = [(plan.vm_pid(i), *v) for i in range(plan.vms) for v in vm]
    rows += [(plan.host_pid(i), *v) for i in range(HOST_PROCESSES) for v in host]
    cols = ["pid", "vma_id", "start", "size", "perms", "path", "mergeable", "kind", "vm_flags"]
    df = pl.DataFrame(rows, schema=cols, orient="row")
    return df.select(
        pl.col("pid").cast(pl.UInt32),
        pl.col("vma_id").cast(pl.UInt32),
        pl.col("start").cast(pl.UInt64),
        (pl.col("start") + pl.col("size")).cast(pl.UInt64).alias("end"),
        "perms",
        pl.lit(0, dtype=pl.UInt64).alias("offset"),
        pl.when(pl.col("kind") == "file").then(pl.lit("fe:00")).otherwise(pl.lit("00:00"))
        .alias("dev"),
        pl.lit(0, dtype=pl.UInt64).alias("inode"),
        "path",
        "mergeable",
        "kind",
        "vm_flags",
        *(
            pl.lit(0, dtype=pl.UInt64).alias(c)
            for c in ("rss_bytes", "pss_bytes", "swap_bytes", "anon_huge_bytes")
        ),
        pl.lit(PAGE_SIZE, dtype=pl.UInt64).alias("kernel_page_size"),
        *(pl.lit(0, dtype=pl.UInt64).alias(c) for c in ("shared_hugetlb_bytes", "private_hugetlb_bytes")),  # noqa: E501
    )  # fmt: skip


def write_snapshot(out: Path, plan: Plan) -> Path:
    layout = Layout.of(plan)
    counts = layout.counts()
    hashed = plan.frames - counts.get("free", 0)
    cov = coverage(
        "synthetic",
        SCOPE_HOST,
        plan.frames,
        hashed,
        {"free": counts.get("free", 0)},
    )
    manifest = base_manifest("host", "synthetic (bench/synthetic_snapshot.py)", cov)
    manifest["synthetic"] = {"frames": plan.frames, "vms": plan.vms, "seed": plan.seed}
    return write_frames(
        out,
        {
            "processes": processes(plan),
            "vmas": vmas(plan),
            "pages": layout.pages(),
            "frames": layout.frames(),
        },
        manifest,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--frames", type=int, default=100_000_000)
    ap.add_argument("--vms", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    plan = Plan(args.frames, args.vms, args.seed)
    t0 = time.perf_counter()
    write_snapshot(args.out, plan)
    mib = plan.guest_pages * PAGE_SIZE // MIB
    print(
        f"{args.out}: {plan.frames:,} frames, {plan.vms} VMs of {mib:,} MiB, "
        f"in {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
