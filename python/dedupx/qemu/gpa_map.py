"""The guest-physical → host map of a QEMU guest (what the study read from the EPT).

From QEMU itself when a QMP socket answers: the flat view of the "memory" address space
(`info mtree -f`) gives guest-physical ranges and their RAM blocks, and `gpa2hva` the host
address of each. Otherwise from the command line, under a stated assumption: a `pc`/`q35`
machine whose RAM is one mapping of exactly the `-m` size (anonymous, memfd, hugetlbfs, a
file), laid out as QEMU does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from dedupx.exceptions import NotAGuest, QmpError
from dedupx.model.units import PAGE_SIZE as PAGE
from dedupx.qemu.cmdline import QemuConfig
from dedupx.qemu.qmp import Qmp
from dedupx.qemu.ram_backing import guest_ram_rows
from dedupx.qemu.ramblocks import HostBlock, parse_ramblocks, place_unmapped

MTREE_LINE = re.compile(
    r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, (\w+(?:/\w+)?)\): (\S+)(?: @([0-9a-f]+))?"
)
GPA2HVA = re.compile(r"Host virtual address for 0x([0-9a-f]+) \((.*)\) is 0x([0-9a-f]+)")


@dataclass(frozen=True)
class GpaRange:
    """``size`` bytes of guest-physical memory from ``gpa`` at host address ``hva``."""

    gpa: int
    size: int
    hva: int
    block: str


@dataclass(frozen=True)
class GpaLayout:
    ranges: list[GpaRange]
    source: str  # "qmp:PATH" or "cmdline (assumed ...)"
    # RAM blocks no guest address maps (option ROMs once copied), where QEMU holds them.
    unmapped: list[HostBlock] = field(default_factory=list)


def parse_mtree_ram(text: str) -> list[tuple[int, int, str]]:
    """RAM and ROM ranges (start, end inclusive, region) of the flat view that serves the
    "memory" address space (the first flat view when none names it)."""
    views = [v for v in text.split("FlatView #") if v.strip()]
    if not views:
        raise QmpError("`info mtree -f` printed no flat view")
    chosen = next((v for v in views if 'AS "memory"' in v), views[0])
    out = []
    for line in chosen.splitlines():
        m = MTREE_LINE.match(line)
        if m and m.group(3).split("/")[0] in ("ram", "rom", "romd"):
            out.append((int(m.group(1), 16), int(m.group(2), 16), m.group(4)))
    if not out:
        raise QmpError("`info mtree -f` shows no RAM in the memory address space")
    return out


def layout_from_qmp(path: Path, vmas: pl.DataFrame | None = None) -> GpaLayout:
    """The guest ranges QEMU maps, and with the process's ``vmas`` the RAM blocks it holds
    without mapping them into the guest (``qemu/ramblocks.py``)."""
    ranges = []
    with Qmp(path) as q:
        for start, end, region in parse_mtree_ram(q.hmp("info mtree -f")):
            answer = q.hmp(f"gpa2hva {start:#x}")
            m = GPA2HVA.search(answer)
            if not m:
                continue  # a ROM device QEMU does not back with host memory
            if int(m.group(1), 16) != start:
                raise QmpError(f"gpa2hva answered for {m.group(1)} when asked for {start:#x}")
            ranges.append(GpaRange(start, end + 1 - start, int(m.group(3), 16), region))
        unmapped: list[HostBlock] = []
        if vmas is not None:
            try:
                text = q.execute("x-query-ramblock")
            except QmpError:
                text = None  # a QEMU before 6.2: the guest's own ranges only
            if isinstance(text, dict):
                text = text.get("human-readable-text")
            if isinstance(text, str):
                seen = {r.block for r in ranges}
                blocks = [b for b in parse_ramblocks(text) if b.name not in seen]
                unmapped = place_unmapped(blocks, [r.hva for r in ranges], vmas)
    return GpaLayout(_whole_pages(ranges), f"qmp:{path}", unmapped)


def _whole_pages(ranges: list[GpaRange]) -> list[GpaRange]:
    """Keeps whole guest pages; merges ranges that continue each other."""
    out: list[GpaRange] = []
    for r in sorted(ranges, key=lambda r: r.gpa):
        lo = -(-r.gpa // PAGE) * PAGE
        hi = (r.gpa + r.size) // PAGE * PAGE
        if hi <= lo:
            continue
        r = GpaRange(lo, hi - lo, r.hva + (lo - r.gpa), r.block)
        last = out[-1] if out else None
        if (
            last
            and last.block == r.block
            and last.gpa + last.size == r.gpa
            and last.hva + last.size == r.hva
        ):
            out[-1] = GpaRange(last.gpa, last.size + r.size, last.hva, last.block)
        else:
            out.append(r)
    return out


def layout_from_cmdline(cfg: QemuConfig, vmas: pl.DataFrame) -> GpaLayout:
    """QEMU's pc/q35 layout: RAM below the PCI hole (with the legacy VGA window at
    0xa0000-0xbffff left out), the rest from 4 GiB; host addresses from the one mapping
    that holds guest RAM (dedupx.qemu.ram_backing: anonymous, memfd, hugetlbfs or a file),
    named as QEMU names its block (``pc.ram``, or the one memory backend's id)."""
    size = cfg.mem_bytes
    exact = guest_ram_rows(cfg, vmas).filter(pl.col("end") - pl.col("start") == size)
    if exact.height != 1 or len(cfg.backends) > 1:
        raise NotAGuest(
            f"cannot find guest RAM: {exact.height} mappings have the -m size of {size} bytes"
            f"{' and there are several memory backends' if len(cfg.backends) > 1 else ''}; "
            "give the guest's QMP socket instead"
        )
    base = int(exact["start"][0])
    block = cfg.backends[0].id if cfg.backends else "pc.ram"
    q35 = (cfg.machine or "pc").startswith(("q35", "pc-q35"))
    if q35:
        lowmem = 0x80000000 if size >= 0xB0000000 else size
    else:
        lowmem = 0xE0000000 if size >= 0xE0000000 else size
    low = min(size, lowmem)
    ranges = [GpaRange(0, 0xA0000, base, block)]
    if low > 0xC0000:
        ranges.append(GpaRange(0xC0000, low - 0xC0000, base + 0xC0000, block))
    if size > low:
        ranges.append(GpaRange(1 << 32, size - low, base + low, block))
    machine = "q35" if q35 else "pc"
    backing = str(exact["backing"][0])
    return GpaLayout(
        _whole_pages(ranges),
        f"cmdline (assumed {machine} layout, RAM at the {size >> 20} MiB {backing} mapping)",
    )


# RAM blocks that are the guest's main memory; every other block (vga.vram, pc.bios, ROMs)
# belongs to an emulated device. A memory backend's block is named by its id.
MAIN_RAM_BLOCKS = ("pc.ram", "ram", "ept")


def main_ram_blocks(cfg: QemuConfig) -> list[str]:
    """The names the guest's main RAM goes by: QEMU's default block or its memory backends,
    each once (libvirt names a backend ``pc.ram``: listed twice, a join on the names
    counted that guest's RAM twice)."""
    return list(dict.fromkeys([*MAIN_RAM_BLOCKS, *(b.id for b in cfg.backends)]))


def layout_frame(pid: int, layout: GpaLayout) -> pl.DataFrame:
    """One row per guest page of a layout: ``pid``, ``gpa``, ``hva``, ``block``, ``source``
    (what a snapshot keeps; ``gpa_map`` adds each page's host frame). A block no guest
    address maps has its pages with a null ``gpa``."""
    parts = [
        pl.DataFrame(
            {
                "gpa": pl.int_range(r.gpa, r.gpa + r.size, PAGE, dtype=pl.UInt64, eager=True),
                "hva": pl.int_range(r.hva, r.hva + r.size, PAGE, dtype=pl.UInt64, eager=True),
            }
        ).with_columns(pl.lit(r.block).alias("block"))
        for r in layout.ranges
    ]
    parts += [
        pl.DataFrame(
            {
                "gpa": pl.Series([None] * (b.size // PAGE), dtype=pl.UInt64),
                "hva": pl.int_range(b.hva, b.hva + b.size, PAGE, dtype=pl.UInt64, eager=True),
            }
        ).with_columns(pl.lit(b.name).alias("block"))
        for b in layout.unmapped
    ]
    frame = (
        pl.concat(parts)
        if parts
        else pl.DataFrame(schema={"gpa": pl.UInt64, "hva": pl.UInt64, "block": pl.String})
    )
    return frame.select(
        pl.lit(pid, dtype=pl.UInt32).alias("pid"),
        "gpa",
        "hva",
        "block",
        pl.lit(layout.source).alias("source"),
    )


def with_host_frames(layout: pl.DataFrame, pages: pl.DataFrame) -> pl.DataFrame:
    """A layout frame with each guest page's host ``pfn`` (null where the host has no page:
    never touched, or swapped), from the QEMU process's pages."""
    present = pages.filter(pl.col("present")).select(pl.col("vaddr").alias("hva"), "pfn")
    extra = (c for c in ("source", "backing") if c in layout.columns)
    return layout.join(present, on="hva", how="left").select(
        "pid", "gpa", "hva", "pfn", "block", *extra
    )


def gpa_map(pid: int, layout: GpaLayout, pages: pl.DataFrame) -> pl.DataFrame:
    """One row per guest page: ``pid``, ``gpa``, ``hva``, ``pfn`` (null where the host has
    no page: never touched or swapped), ``block``, ``source``."""
    return with_host_frames(layout_frame(pid, layout), pages)


def gpa_map_from_ept(pid: int, path: str | Path) -> pl.DataFrame:
    """A gpa map from an external EPT dump: a CSV or Parquet file with ``gpa`` and ``hpa``
    columns (integers, or hex strings such as ``0x1000``), one row per guest page. ``pfn`` is
    hpa / 4096; there is no host virtual address (``hva`` null) and the block is "ept"."""
    path = Path(path)
    try:
        raw = (
            pl.read_parquet(path)
            if path.suffix == ".parquet"
            else pl.read_csv(path, infer_schema=False)
        )
    except FileNotFoundError:
        raise NotAGuest(f"no EPT dump at {path}") from None
    except Exception as e:  # polars raises several types for damaged files
        raise NotAGuest(f"{path} is not a readable CSV or Parquet EPT dump: {e}") from None
    missing = {"gpa", "hpa"} - set(raw.columns)
    if missing:
        raise NotAGuest(f"{path} lacks the column(s) {sorted(missing)}: it needs gpa and hpa")

    def as_int(col: str) -> pl.Expr:
        c = pl.col(col)
        if raw.schema[col] == pl.String:
            text = c.str.strip_chars().str.to_lowercase()
            return (
                pl.when(text.str.starts_with("0x"))
                .then(text.str.slice(2).str.to_integer(base=16, strict=False))
                .otherwise(text.str.to_integer(base=10, strict=False))
                .cast(pl.UInt64)
            )
        return c.cast(pl.UInt64, strict=False)

    out = raw.select(as_int("gpa").alias("gpa"), as_int("hpa").alias("hpa"))
    bad = out.filter(
        pl.col("gpa").is_null()
        | pl.col("hpa").is_null()
        | (pl.col("gpa") % PAGE != 0)
        | (pl.col("hpa") % PAGE != 0)
    )
    if bad.height:
        raise NotAGuest(f"{path}: {bad.height} rows are not page-aligned gpa/hpa numbers")
    return out.select(
        pl.lit(pid, dtype=pl.UInt32).alias("pid"),
        "gpa",
        pl.lit(None, dtype=pl.UInt64).alias("hva"),
        (pl.col("hpa") // PAGE).alias("pfn"),
        pl.lit("ept").alias("block"),
    )
