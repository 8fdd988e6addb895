"""QEMU's RAM blocks that the guest does not see, and where they lie in QEMU's memory.

A device's option ROM (``e1000.rom``), ``vga.rom`` or a firmware table holds host memory
all the time, but once the firmware has copied it the guest address space no longer maps
it, so `info mtree -f` and `gpa2hva` cannot place it. `x-query-ramblock` names every block
with its size; QEMU allocates each anonymous block as its own mapping of exactly that size,
aligned to 2 MiB and followed by a one-page PROT_NONE guard (util/mmap-alloc.c), which is
how the block's mapping is found among the process's. A size that more than one unplaced
block has, or that several such mappings have, places none of them: the blocks are then
left out rather than guessed.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

import polars as pl

from dedupx.exceptions import QmpError
from dedupx.model.units import PAGE_SIZE as PAGE

RAMBLOCK_LINE = re.compile(
    r"^\s*(\S+)\s+(\d+)\s+([KMG])iB\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s*$"
)
# The device's PCI address QEMU puts before a block's name ("0000:00:03.0/e1000.rom");
# `info mtree` names the same region without it.
PCI_PREFIX = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]/")
ALIGN = 2 << 20  # QEMU_VMALLOC_ALIGN on x86-64 Linux
MAX_BLOCKS = 4096  # far beyond any machine; a reply with more is not QEMU's


@dataclass(frozen=True)
class RamBlock:
    name: str  # as `info mtree` names the region
    used: int  # bytes in use
    total: int  # bytes reserved (the mapping's size)


@dataclass(frozen=True)
class HostBlock:
    """A RAM block placed in QEMU's memory although no guest address maps it."""

    name: str
    hva: int
    size: int  # bytes in use, whole pages


def parse_ramblocks(text: str) -> list[RamBlock]:
    """The blocks of `x-query-ramblock` (the table `info ramblock` prints)."""
    out: list[RamBlock] = []
    for line in text.splitlines():
        m = RAMBLOCK_LINE.match(line)
        if not m:
            continue
        if len(out) >= MAX_BLOCKS:
            raise QmpError(f"`x-query-ramblock` lists more than {MAX_BLOCKS} RAM blocks")
        name = PCI_PREFIX.sub("", m.group(1))
        out.append(RamBlock(name, int(m.group(5), 16), int(m.group(6), 16)))
    if not out and text.strip():
        raise QmpError("`x-query-ramblock` printed no RAM block table")
    return out


def place_unmapped(
    blocks: list[RamBlock], mapped_hvas: list[int], vmas: pl.DataFrame
) -> list[HostBlock]:
    """Host addresses of ``blocks`` (those no guest range maps), found by QEMU's allocation
    signature among the process's mappings (``vmas``: ``start``, ``end``, ``perms``,
    ``path``) that hold none of the ``mapped_hvas``."""
    rows = vmas.sort("start").select("start", "end", "perms", "path").rows()
    candidates: dict[int, list[int]] = {}
    for (start, end, perms, path), nxt in pairwise(rows):
        guard = nxt[0] == end and nxt[1] - nxt[0] == PAGE and nxt[2].startswith("---")
        if start % ALIGN or not perms.startswith("rw") or path or not guard:
            continue
        if any(start <= h < end for h in mapped_hvas):
            continue
        candidates.setdefault(end - start, []).append(start)
    sizes = Counter(b.total for b in blocks)
    return [
        HostBlock(b.name, candidates[b.total][0], b.used // PAGE * PAGE)
        for b in blocks
        if sizes.get(b.total) == 1 and len(candidates.get(b.total, [])) == 1 and b.used >= PAGE
    ]


__all__ = ["HostBlock", "RamBlock", "parse_ramblocks", "place_unmapped"]
