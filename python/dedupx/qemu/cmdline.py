"""What a QEMU command line says about a guest: name, RAM, machine, accelerator, KSM
merging, memory backends, QMP sockets and disk images."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dedupx.exceptions import ProcParseError

SIZE_SUFFIX = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "B": 1}


@dataclass(frozen=True)
class MemoryBackend:
    """An ``-object memory-backend-*``: where guest RAM lives when it is not plain anon."""

    id: str
    kind: str  # "ram", "memfd", "file"
    size: int | None
    share: bool
    path: str | None
    merge: bool
    prealloc: bool = False
    hugetlb: bool = False  # memory-backend-memfd,hugetlb=on

    @property
    def file_backed(self) -> bool:
        """Shared or file memory is page cache or shmem to the host: KSM cannot merge it."""
        return self.share or self.kind in ("memfd", "file")


@dataclass(frozen=True)
class QemuConfig:
    argv: list[str]
    name: str | None = None
    uuid: str | None = None
    mem_bytes: int = 128 << 20  # QEMU's default -m
    max_mem_bytes: int | None = None  # -m ...,maxmem=: the most RAM hotplug can reach
    machine: str | None = None
    accel: str = "tcg"
    mem_merge: bool = True
    qmp_sockets: list[Path] = field(default_factory=list)
    backends: list[MemoryBackend] = field(default_factory=list)
    drives: list[Path] = field(default_factory=list)
    mem_path: str | None = None  # the legacy -mem-path (a hugetlbfs mount, usually)
    mem_prealloc: bool = False  # -mem-prealloc, or prealloc=on on a memory backend


def ram_bound(cfg: QemuConfig) -> int:
    """The most RAM the guest can have, by QEMU's own command line (not by what the guest
    says): -m, its maxmem, or the memory backends' sizes, whichever is largest."""
    backends = sum(b.size or 0 for b in cfg.backends)
    return max(cfg.mem_bytes, cfg.max_mem_bytes or 0, backends)


def is_qemu(argv: list[str]) -> bool:
    exe = os.path.basename(argv[0]) if argv else ""
    return exe.startswith(("qemu-system-", "qemu-kvm")) or exe == "kvm"


def parse_size(text: str, default_unit: str = "M") -> int:
    """QEMU sizes: a number with an optional K/M/G/T suffix (MiB for -m without one).
    Raises ``ProcParseError`` (a ValueError) for anything else, 30 digits at most: a
    command line is read from /proc, and one that does not parse must not crash a scan."""
    size = r"\s*([0-9]{1,30}(?:\.[0-9]{1,30})?)\s*([KMGTB]?)i?[bB]?\s*"
    m = re.fullmatch(size, text, re.IGNORECASE)
    if not m:
        raise ProcParseError(f"not a size in a QEMU command line: {text[:40]!r}")
    unit = m.group(2).upper() or default_unit
    return int(float(m.group(1)) * SIZE_SUFFIX[unit])


def parse_opts(text: str, implied: str | None = None) -> dict[str, str]:
    """``a,b=c,d=e`` → {implied: a, b: c, d: e} (QEMU's option syntax; ",," escapes a comma)."""
    out: dict[str, str] = {}
    parts = [p.replace("\0", ",") for p in text.replace(",,", "\0").split(",")]
    for i, part in enumerate(parts):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
        elif i == 0 and implied:
            out[implied] = part
        elif part:
            out[part] = "on"
    return out


def on(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.lower() in ("on", "yes", "true", "1")


def parse_qemu_cmdline(argv: list[str]) -> QemuConfig:
    """Reads the options that matter to memory; unknown options are ignored."""
    name = machine = uuid = None
    mem = 128 << 20
    max_mem: int | None = None
    accel = "tcg"
    merge = True
    qmp: list[Path] = []
    chardev_paths: dict[str, Path] = {}
    monitors: list[str] = []
    backends: list[MemoryBackend] = []
    drives: list[Path] = []
    mem_path: str | None = None
    prealloc = False
    i = 1
    while i < len(argv):
        opt = argv[i].lstrip("-") if argv[i].startswith("-") else None
        val = argv[i + 1] if i + 1 < len(argv) else ""
        i += 1
        if opt is None:
            continue
        if opt in ("enable-kvm",):
            accel = "kvm"
            continue
        if opt == "mem-prealloc":
            prealloc = True
            continue
        if opt in ("nographic", "no-reboot", "S", "daemonize", "snapshot", "no-shutdown"):
            continue
        i += 1  # every other option we read takes a value
        if opt == "name":
            name = parse_opts(val, "guest").get("guest")
        elif opt == "uuid":
            uuid = val
        elif opt == "m":
            m_opts = parse_opts(val, "size")
            mem = parse_size(m_opts.get("size", "128"))
            if "maxmem" in m_opts:
                max_mem = parse_size(m_opts["maxmem"])
        elif opt in ("machine", "M"):
            o = parse_opts(val, "type")
            machine = o.get("type", machine)
            if "accel" in o:
                accel = o["accel"].split(":")[0]
            merge = on(o.get("mem-merge"), merge)
        elif opt == "mem-path":
            mem_path = val
        elif opt == "accel":
            accel = parse_opts(val, "accel").get("accel", accel)
        elif opt == "qmp" and val.startswith("unix:"):
            qmp.append(Path(val[5:].split(",")[0]))
        elif opt == "chardev":
            o = parse_opts(val, "backend")
            if o.get("backend") == "socket" and "path" in o and "id" in o:
                chardev_paths[o["id"]] = Path(o["path"])
        elif opt == "mon":
            o = parse_opts(val, "chardev")
            if o.get("mode") == "control" and "chardev" in o:
                monitors.append(o["chardev"])
        elif opt == "object" and val.startswith("memory-backend-"):
            o = parse_opts(val, "type")
            kind = o.get("type", "").removeprefix("memory-backend-")
            backends.append(
                MemoryBackend(
                    id=o.get("id", ""),
                    kind=kind,
                    size=parse_size(o["size"], "B") if "size" in o else None,
                    share=on(o.get("share"), kind == "memfd"),  # memfd shares by default
                    path=o.get("mem-path"),
                    merge=on(o.get("merge"), merge),
                    prealloc=on(o.get("prealloc"), False),
                    hugetlb=on(o.get("hugetlb"), False),
                )
            )
        elif opt == "drive":
            f = parse_opts(val).get("file")
            if f:
                drives.append(Path(f))
        elif opt == "blockdev":
            o = parse_opts(val)
            if o.get("driver") == "file" and "filename" in o:
                drives.append(Path(o["filename"]))
        elif opt in ("hda", "hdb", "hdc", "hdd", "cdrom"):
            drives.append(Path(val))
    qmp += [chardev_paths[m] for m in monitors if m in chardev_paths]
    return QemuConfig(
        argv=argv,
        name=name,
        uuid=uuid,
        mem_bytes=mem,
        max_mem_bytes=max_mem,
        machine=machine,
        accel=accel,
        mem_merge=merge,
        qmp_sockets=qmp,
        backends=backends,
        drives=drives,
        mem_path=mem_path,
        mem_prealloc=prealloc or any(b.prealloc for b in backends),
    )
