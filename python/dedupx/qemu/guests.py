"""Finding the QEMU guests on a host and how to map each one's memory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dedupx.exceptions import DedupxError, ProcessNotFound, QmpError
from dedupx.qemu.cmdline import QemuConfig, is_qemu, parse_qemu_cmdline, ram_bound
from dedupx.qemu.gpa_map import GpaLayout, layout_frame, layout_from_cmdline, layout_from_qmp
from dedupx.qemu.ram_backing import cmdline_ksm_barrier, hugetlbfs_mounts, with_backing


@dataclass(frozen=True)
class GuestProcess:
    pid: int
    config: QemuConfig
    rss_bytes: int
    pss_bytes: int
    hugetlbfs: tuple[str, ...] = ()

    def row(self) -> dict[str, Any]:
        c = self.config
        barrier = cmdline_ksm_barrier(c, list(self.hugetlbfs))
        return {
            "pid": self.pid,
            "name": c.name,
            "ram_bytes": c.mem_bytes,
            "machine": c.machine or "pc (default)",
            "accel": c.accel,
            # What QEMU asked, and apart from it what KSM can do with what backs the RAM.
            "mem_merge": c.mem_merge,
            "ksm_can_merge": barrier is None,
            "ksm_barrier": barrier,
            "backends": ",".join(
                f"{b.id}:{b.kind}{'/shared' if b.share else ''}" for b in c.backends
            ),
            "qmp": ",".join(str(p) for p in c.qmp_sockets),
            "rss_bytes": self.rss_bytes,
            "pss_bytes": self.pss_bytes,
        }


def read_argv(pid: int, proc_root: str = "/proc") -> list[str]:
    try:
        raw = Path(proc_root, str(pid), "cmdline").read_bytes()
    except FileNotFoundError:
        raise ProcessNotFound(f"no process with PID {pid}") from None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def guest_ram_bound(pid: int, default: int, proc_root: str = "/proc") -> int:
    """The most RAM the guest of QEMU process ``pid`` can have, by its command line (the
    guest cannot lie about that), or ``default`` when ``pid`` is no QEMU process."""
    argv = read_argv(pid, proc_root)
    return ram_bound(parse_qemu_cmdline(argv)) if is_qemu(argv) else default


def _rollup(pid: int, proc_root: str) -> tuple[int, int]:
    vals = {}
    try:
        for line in Path(proc_root, str(pid), "smaps_rollup").read_text().splitlines()[1:]:
            k, v = line.split(":", 1)
            vals[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError):
        return 0, 0
    return vals.get("Rss", 0), vals.get("Pss", 0)


def find_guests(proc_root: str = "/proc") -> list[GuestProcess]:
    out = []
    hugetlbfs = tuple(hugetlbfs_mounts(proc_root))
    for entry in sorted(os.listdir(proc_root)):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            argv = read_argv(pid, proc_root)
        except (ProcessNotFound, OSError):
            continue
        if is_qemu(argv):
            rss, pss = _rollup(pid, proc_root)
            out.append(GuestProcess(pid, parse_qemu_cmdline(argv), rss, pss, hugetlbfs))
    return out


def guest_layout(cfg: QemuConfig, vmas: pl.DataFrame, qmp: Path | None = None) -> GpaLayout:
    """From QEMU over QMP when it answers (``qmp``, else a socket its command line names),
    else from the command line. A socket the caller names must answer."""
    if qmp is not None:
        return layout_from_qmp(qmp, vmas)
    for path in cfg.qmp_sockets:
        try:
            return layout_from_qmp(path, vmas)
        except QmpError:
            continue  # busy (QMP takes one client at a time) or gone: fall back
    return layout_from_cmdline(cfg, vmas)


def guest_layouts(processes: pl.DataFrame, vmas: pl.DataFrame) -> pl.DataFrame | None:
    """Every guest's guest-physical layout (``pid``, ``gpa``, ``hva``, ``block``,
    ``source``, and the ``backing`` of the host mapping): from QEMU over QMP where a socket
    its command line names answers (RAM blocks of devices included), else from the command
    line; None without guests. A guest that cannot be mapped is left out (its analyses say
    why)."""
    parts = []
    for pid, argv in processes.filter(pl.col("kind") == "vm").select("pid", "cmdline").iter_rows():
        cfg = parse_qemu_cmdline(list(argv))
        mine = vmas.filter(pl.col("pid") == pid)
        try:
            layout = guest_layout(cfg, mine)
        except DedupxError:
            continue
        parts.append(with_backing(layout_frame(pid, layout), mine))
    return pl.concat(parts) if parts else None
