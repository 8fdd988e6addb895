"""What a guest says about its own pages: from dedupx-agent's file or the QEMU guest agent.

Each guest page frame (gfn) carries its guest-side kpageflags and map count, a hash where
the guest could read the page (dedupx-agent only), and its ``class`` by the guest's flags
(``anon``, ``file``, ``free``, ``kernel``: see dedupx.model.page_classes.guest_class).
"""

from __future__ import annotations

import array
import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dedupx import _dedupx
from dedupx.exceptions import (
    CorruptAgentFile,
    DedupxError,
    DedupxIOError,
    ProcParseError,
    QmpError,
    UsageError,
)
from dedupx.model.page_classes import guest_class
from dedupx.qemu.qga import Qga
from dedupx.sources.agent_via_qga import agent_file_cap, agent_seconds, run_agent

# The cap on a text file read through the agent (meminfo is a few KiB).
TEXT_CAP = 1 << 20


@dataclass(frozen=True)
class GuestView:
    path: Path
    meta: dict[str, Any]
    frames: pl.DataFrame  # gfn, kpageflags, mapcount, hash, class

    @property
    def mglru(self) -> bool:
        """MGLRU on: it clears PG_active on every page, so ACTIVE says nothing."""
        v = self.meta.get("lru_gen")
        try:
            return v is not None and int(str(v), 0) != 0
        except ValueError:
            return True

    def guest_frames(self, pid: int) -> pl.DataFrame:
        """The ``guest_frames`` frame for the QEMU process ``pid``."""
        return self.frames.select(
            pl.lit(pid, dtype=pl.UInt32).alias("pid"), "gfn", "kpageflags", "mapcount", "class"
        )


def read_guest_agent(path: str | os.PathLike[str]) -> GuestView:
    """A file dedupx-agent wrote inside a guest (flags, counts, meminfo, MGLRU state and
    kcore page hashes). Raises ``CorruptAgentFile`` for a damaged one, its metadata
    included: the guest wrote it, so its shape is checked before any analysis reads it."""
    raw = _dedupx.read_agent_file(os.fspath(path))
    try:
        meta = json.loads(raw["meta_json"])
    except RecursionError:
        raise CorruptAgentFile(f"{path}: its metadata is JSON nested too deep") from None
    except ValueError:
        raise CorruptAgentFile(f"{path}: its metadata is not JSON") from None
    problem = _meta_problem(meta)
    if problem:
        raise CorruptAgentFile(f"{path}: its metadata {problem}")
    frames = pl.DataFrame(raw["frames"]).with_columns(guest_class().alias("class"))
    return GuestView(Path(path), meta, frames)


# Metadata fields the analyses read, and the types they may have (None: the field is null).
_META_TEXT = ("created_by", "kernel", "lru_gen", "hash_source", "hash_error")
_META_COUNTS = ("meminfo_kb", "meminfo_before_kb")


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with the shape of agent metadata, or None if the analyses can use it."""
    if not isinstance(meta, dict):
        return "is not a JSON object"
    for key in _META_TEXT:
        v = meta.get(key)
        if v is not None and not isinstance(v, str):
            return f"field {key!r} is not text"
    for key in _META_COUNTS:
        v = meta.get(key)
        if v is None:
            continue
        if not isinstance(v, dict):
            return f"field {key!r} is not an object"
        for k, n in v.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                return f"field {key!r} has a non-count value for {str(k)[:40]!r}"
    return None


def _meminfo_kb(text: str) -> dict[str, int]:
    """/proc/meminfo's ``Key: value [kB]`` lines. Raises ``ProcParseError`` for a value
    that is not a plain decimal count (the text may come from a hostile guest)."""
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        words = v.split()
        if not words:
            continue
        if not (words[0].isascii() and words[0].isdigit() and len(words[0]) <= 20):
            raise ProcParseError(f"meminfo line {line[:60]!r} does not end in a count")
        out[k.strip()] = int(words[0])
    return out


def _kpage_cap(mem_total_kb: int | None, max_guest_ram: int) -> int:
    """The most bytes /proc/kpageflags (or kpagecount) of a guest may have: 8 per page
    frame up to its highest PFN. That is above its RAM by the holes below 4 GiB and what
    the kernel keeps back from MemTotal: allow twice MemTotal plus 4 GiB, and never more
    than ``max_guest_ram`` (MemTotal comes from the guest too) plus those 4 GiB."""
    ram = max_guest_ram if mem_total_kb is None else min(2 * mem_total_kb << 10, max_guest_ram)
    return 8 * ((ram + (4 << 30)) // 4096)


def _text(q: Qga, name: str) -> str:
    try:
        return q.read_file(name, max_bytes=TEXT_CAP).decode()
    except UnicodeDecodeError:
        raise q.fail(f"the guest's {name} is not UTF-8 text") from None


def _meminfo(q: Qga) -> dict[str, int]:
    try:
        return _meminfo_kb(_text(q, "/proc/meminfo"))
    except ProcParseError as e:
        raise q.fail(f"the guest's /proc/meminfo: {e}") from None


def read_guest_qga(
    path: str | os.PathLike[str],
    timeout: float = 30.0,
    max_guest_ram: int = 64 << 30,
    agent: str | os.PathLike[str] | None = None,
    agent_timeout: float | None = None,
) -> GuestView:
    """The guest's page flags and counts, meminfo (just before and just after) and MGLRU
    state, read through its QEMU guest agent (the agent's file commands, as root in the
    guest); a ``GuestView`` without hashes.

    With ``agent`` (the static dedupx-agent binary), that binary is copied into the guest
    and run there instead, and its file read back: the view then has kcore page hashes
    too, as ``read_guest_agent`` gives (dedupx.sources.agent_via_qga). It may run
    ``agent_timeout`` seconds, by default 60 plus 240 per GiB of guest RAM.

    The guest controls the agent, so each agent call must finish within ``timeout``
    seconds and the page arrays are capped at what ``max_guest_ram`` bytes of RAM need;
    whatever the guest does wrong raises ``QmpError`` naming the socket."""
    sock = Path(path)
    if agent is not None:
        return _read_via_agent(sock, Path(agent), timeout, max_guest_ram, agent_timeout)
    with Qga(sock, timeout=timeout) as q:
        kernel = _text(q, "/proc/sys/kernel/osrelease").strip()
        before = _meminfo(q)
        cap = _kpage_cap(before.get("MemTotal"), max_guest_ram)
        flags = q.read_file("/proc/kpageflags", max_bytes=cap)
        counts = q.read_file("/proc/kpagecount", max_bytes=cap)
        after = _meminfo(q)
        try:
            lru_gen: str | None = _text(q, "/sys/kernel/mm/lru_gen/enabled").strip()
        except QmpError:
            if q.broken:  # the channel failed, not just a kernel without MGLRU
                raise
            lru_gen = None
    if len(flags) % 8 or len(flags) != len(counts) or not flags:
        raise QmpError(f"guest agent on {sock} returned kpageflags/kpagecount of odd sizes")
    f, c = array.array("Q", flags), array.array("Q", counts)
    frames = pl.DataFrame(
        {
            "gfn": pl.int_range(0, len(f), dtype=pl.UInt64, eager=True),
            "kpageflags": pl.Series(f.tolist(), dtype=pl.UInt64),
            "mapcount": pl.Series(c.tolist(), dtype=pl.UInt64),
            "hash": pl.Series([None] * len(f), dtype=pl.Binary),
        }
    ).with_columns(guest_class().alias("class"))
    meta = {
        "created_by": "dedupx qga",
        "kernel": kernel,
        "meminfo_before_kb": before,
        "meminfo_kb": after,
        "lru_gen": lru_gen,
        "hash_source": None,
    }
    return GuestView(sock, meta, frames)


def _read_via_agent(
    sock: Path, agent: Path, timeout: float, max_guest_ram: int, seconds: float | None
) -> GuestView:
    """dedupx-agent run in the guest through its guest agent, its file parsed here."""
    try:
        binary = agent.read_bytes()
    except OSError as e:
        raise DedupxIOError(f"cannot read the agent binary {agent}: {e.strerror or e}") from None
    if not binary.startswith(b"\x7fELF"):
        raise UsageError(f"{agent} is not a program (ELF): give the static dedupx-agent")
    with Qga(sock, timeout=timeout) as q:
        mem_total = _meminfo(q).get("MemTotal")
        ram = max_guest_ram if mem_total is None else min(mem_total << 10, max_guest_ram)
        cap = agent_file_cap(_kpage_cap(mem_total, max_guest_ram))
        try:
            with tempfile.NamedTemporaryFile(prefix="dedupx-agent-", suffix=".ddx") as local:
                run_agent(q, binary, local, cap, seconds or agent_seconds(ram))
                local.flush()
                try:
                    view = read_guest_agent(local.name)
                except CorruptAgentFile as e:
                    detail = str(e).replace(local.name, "its file")
                    raise CorruptAgentFile(f"dedupx-agent run through {sock}: {detail}") from None
        except DedupxError:
            raise
        except OSError as e:  # this host's temporary directory, not the guest
            raise DedupxIOError(f"cannot keep dedupx-agent's file: {e.strerror or e}") from None
    return dataclasses.replace(view, path=sock)


__all__ = ["GuestView", "read_guest_agent", "read_guest_qga"]
