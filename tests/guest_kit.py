"""Real QEMU guests (TCG) for tests: a Debian cloud kernel, a busybox initramfs, a QMP client.

Typical use from a fixture::

    ensure_packages()
    assets = guest_assets(Path("/var/cache/dedupx-tests"), variant="a")
    with Guest(assets, mem_mib=256, name="g1", workdir=tmp_path) as g:
        g.stop()
        g.dump_guest_memory(tmp_path / "g1.core")
        start, end = g.ram_vma()

Guest RAM (`pc.ram`) maps 1:1 from guest-physical to `ram_vma()[0] + gpa` for gpa below
0xa0000 and from 0x100000 up to the end of low memory (all of -m while -m < 3.5 GiB). In
between sit the VGA window and PAM-controlled ROM shadows: read `info mtree -f` before
assuming 1:1 there.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

DEFAULT_CACHE = Path("/var/cache/dedupx-tests")
READY_MARKER = "DEDUPX-GUEST-READY"
PACKAGES = ("qemu-system-x86", "busybox-static", "cpio")
KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")

# MiB of seeded pseudo-random data in /payload.bin, so that guests of different variants
# hold memory the others do not. The file stays in the initramfs root (a tmpfs): copying it
# elsewhere would leave a second, stale copy in freed guest pages.
VARIANT_PAYLOAD_MIB = {
    "a": 0,
    "b": 8,
    "agent": 0,
    "fill": 0,
    "qga": 0,
    "qga-agent": 0,
    "hostfiles": 0,
}
# The "hostfiles" variant carries copies of these host libraries (those that exist) in its
# initramfs root, a tmpfs: the guest then holds their pages, page for page. None of them is
# one QEMU links: a page QEMU maps itself would count within the guest's own row.
HOST_FILES = (
    "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0",
    "/usr/lib/x86_64-linux-gnu/libexpat.so.1",
    "/usr/lib/x86_64-linux-gnu/libbz2.so.1.0",
)


def host_files() -> list[Path]:
    return [Path(p).resolve() for p in HOST_FILES if Path(p).exists()]


# The variants that carry dedupx-agent in their initramfs.
AGENT_VARIANTS = ("agent", "qga-agent")

# Loads the virtio modules (the cloud kernel builds them as modules) and waits for the
# virtio serial port the agent variants talk through.
VIRTIO_RC = """\
#!/bin/sh
# Dependencies first whatever the order: a module whose symbols are not there yet loads on
# a later pass.
for pass in 1 2 3 4; do for m in /lib/modules/*.ko; do insmod "$m" 2>/dev/null; done; done
for i in $(seq 50); do [ -e /dev/vport0p1 ] || [ -e /dev/vport1p1 ] && break; sleep 0.1; done
"""

# The "qga" variant runs QEMU's guest agent on a virtio serial port (the host end is a
# socket: see QGA_ARGS). Debian's qemu-ga is dynamically linked: its libraries ride along.
QGA_RC = (
    VIRTIO_RC
    + """\
mkdir -p /var/run /tmp/qga
qemu-ga -m virtio-serial -p "$(ls /dev/vport*p1 | head -n 1)" -t /tmp/qga -d
"""
)


def qga_args(socket_path: Path) -> tuple[str, ...]:
    """QEMU arguments that put the guest agent's port on a host unix socket."""
    return (
        "-device",
        "virtio-serial-pci",
        "-chardev",
        f"socket,id=qga0,path={socket_path},server=on,wait=off",
        "-device",
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    )


# The "fill" variant fills about 1.2 GiB of guest RAM at boot (for benchmarks): copies of
# busybox in a tmpfs, so that much of what it fills is duplicated.
FILL_RC = """\
#!/bin/sh
mount -t tmpfs -o size=90% tmpfs /mnt
i=0
while [ $i -lt 600 ]; do cat /bin/busybox > /mnt/copy$i; i=$((i+1)); done
"""

# The "agent" variant runs dedupx-agent at boot and writes its file to a virtio serial port
# (binary-clean, unlike a tty), whose host end is a file. The cloud kernel builds virtio as
# modules, so they ride along in the initramfs.
AGENT_MODULES = (
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/char/virtio_console.ko",
)
AGENT_RC = (
    VIRTIO_RC
    + """\
port=$(ls /dev/vport*p1 | head -n 1)
/bin/dedupx-agent -o "$port"
echo "DEDUPX-AGENT-DONE rc=$?"
"""
)
AGENT_DONE_MARKER = "DEDUPX-AGENT-DONE"

# The "qga-agent" variant has both: QEMU's guest agent on the port named
# org.qemu.guest_agent.0 (see qga_args) and, once it runs, dedupx-agent writing its file
# to the port named dedupx.agent (see agent_port_args), to check one against the other.
# Two virtio serial devices each have a port 1: ports are found by name.
QGA_AGENT_RC = """\
#!/bin/sh
for pass in 1 2 3 4; do for m in /lib/modules/*.ko; do insmod "$m" 2>/dev/null; done; done
port() {
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && echo "/dev/${p##*/}"
  done
}
for i in $(seq 100); do
  [ -n "$(port org.qemu.guest_agent.0)" ] && [ -n "$(port dedupx.agent)" ] && break
  sleep 0.1
done
mkdir -p /var/run /tmp/qga
qemu-ga -m virtio-serial -p "$(port org.qemu.guest_agent.0)" -t /tmp/qga -d
/bin/dedupx-agent -o "$(port dedupx.agent)"
echo "DEDUPX-AGENT-DONE rc=$?"
"""


def agent_port_args(out: Path) -> tuple[str, ...]:
    """QEMU arguments for the port dedupx-agent writes its file to; the host end is
    ``out``."""
    return (
        "-device",
        "virtio-serial-pci",
        "-chardev",
        f"file,id=ag,path={out}",
        "-device",
        "virtserialport,chardev=ag,name=dedupx.agent",
    )


# PID 1 of the guest.
INIT_SCRIPT = """\
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
[ -x /etc/rc.local ] && /etc/rc.local
echo "DEDUPX-GUEST-READY variant=$(cat /etc/dedupx-variant) kernel=$(uname -r)"
while :; do sleep 3600; done
"""

_apt_updated = False


def _apt(*args: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def _apt_update_once() -> None:
    global _apt_updated
    if not _apt_updated:
        _apt("update")
        _apt_updated = True


def _installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg", "-s", pkg], capture_output=True, text=True)
    # dpkg -s also succeeds for removed packages whose config files remain.
    return r.returncode == 0 and "Status: install ok installed" in r.stdout


def ensure_packages(packages: Sequence[str] = PACKAGES) -> None:
    missing = [p for p in packages if not _installed(p)]
    if missing:
        _apt_update_once()
        _apt("install", "-y", "--no-install-recommends", *missing)


class GuestAssets(NamedTuple):
    kernel: Path
    initrd: Path


def guest_assets(
    cache_dir: Path = DEFAULT_CACHE,
    variant: str = "a",
    agent: Path | None = None,
    generic_kernel: bool = False,
) -> GuestAssets:
    """Kernel and initramfs for `variant`, built into `cache_dir` only when missing. The
    "agent" and "qga-agent" variants need the static `dedupx-agent` binary.
    `generic_kernel` boots Debian's generic build of the same kernel version instead of the
    cloud one: a different kernel, for guests that must share less."""
    if variant not in VARIANT_PAYLOAD_MIB:
        raise ValueError(f"unknown guest variant {variant!r}; known: {list(VARIANT_PAYLOAD_MIB)}")
    if (variant in AGENT_VARIANTS) != (agent is not None):
        raise ValueError(f"the {AGENT_VARIANTS} variants, and only they, take the agent binary")
    cache_dir.mkdir(parents=True, exist_ok=True)
    kernel = _kernel(cache_dir)
    if generic_kernel:
        kernel = _generic_kernel(cache_dir, kernel)
    extra: list[tuple[str, int, bytes, int]] = []
    if variant == "agent" and agent is not None:
        extra = [
            *_virtio_entries(cache_dir, kernel),
            ("bin/dedupx-agent", 0o100755, agent.read_bytes(), 0),
            ("etc/rc.local", 0o100755, AGENT_RC.encode(), 0),
        ]
    if variant == "fill":
        extra = [("etc/rc.local", 0o100755, FILL_RC.encode(), 0)]
    if variant == "hostfiles":
        extra = [(f"hostfiles/{p.name}", 0o100644, p.read_bytes(), 0) for p in host_files()]
        extra.insert(0, ("hostfiles", 0o040755, b"", 0))
    if variant == "qga":
        extra = [
            *_virtio_entries(cache_dir, kernel),
            *_qga_files(cache_dir),
            ("etc/rc.local", 0o100755, QGA_RC.encode(), 0),
        ]
    if variant == "qga-agent" and agent is not None:
        extra = [
            *_virtio_entries(cache_dir, kernel),
            *_qga_files(cache_dir),
            ("bin/dedupx-agent", 0o100755, agent.read_bytes(), 0),
            ("etc/rc.local", 0o100755, QGA_AGENT_RC.encode(), 0),
        ]
    return GuestAssets(kernel, _initrd(cache_dir, variant, extra))


def _virtio_entries(cache_dir: Path, kernel: Path) -> list[tuple[str, int, bytes, int]]:
    """The virtio modules VIRTIO_RC loads, as initramfs entries."""
    mods = _modules(cache_dir, kernel)
    return [
        ("lib", 0o040755, b"", 0),
        ("lib/modules", 0o040755, b"", 0),
        *(
            (f"lib/modules/{i}-{Path(m).name}", 0o100644, (mods / Path(m).name).read_bytes(), 0)
            for i, m in enumerate(AGENT_MODULES)
        ),
    ]


@contextlib.contextmanager
def _extracted_package(cache_dir: Path, package: str) -> Iterator[Path]:
    """Downloads a Debian package into a temporary directory in `cache_dir` and yields where
    its files were extracted; all of it is removed afterwards (a kill leaves a hidden dir)."""
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{package}.") as tmp:
        cmd = ["apt-get", "-o", "APT::Sandbox::User=root", "download", package]
        try:
            subprocess.run(cmd, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        except subprocess.CalledProcessError:
            _apt_update_once()  # stale package lists may not name it yet
            subprocess.run(cmd, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        (deb,) = Path(tmp).glob("*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
        yield Path(tmp, "x")


def _qga_files(cache_dir: Path) -> list[tuple[str, int, bytes, int]]:
    """qemu-ga from Debian's package and the shared libraries it needs, as initramfs entries."""
    exe = cache_dir / "qemu-ga"
    if not exe.exists():
        with _extracted_package(cache_dir, "qemu-guest-agent") as x:
            os.replace(x / "usr" / "sbin" / "qemu-ga", exe)
    ldd = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=True).stdout
    libs = sorted({m for m in re.findall(r"(/\S+\.so[.\d]*)", ldd)})
    entries: list[tuple[str, int, bytes, int]] = [("bin/qemu-ga", 0o100755, exe.read_bytes(), 0)]
    dirs = sorted({str(Path(lib).parent).lstrip("/") for lib in libs})
    for d in dirs:
        parts = Path(d).parts
        for i in range(1, len(parts) + 1):
            entries.append(("/".join(parts[:i]), 0o040755, b"", 0))
    seen: set[str] = set()
    for lib in libs:
        name = lib.lstrip("/")
        if name not in seen:
            seen.add(name)
            entries.append((name, 0o100755, Path(lib).resolve().read_bytes(), 0))
    unique: dict[str, tuple[str, int, bytes, int]] = {}
    for e in entries:
        unique.setdefault(e[0], e)
    return [e for e in unique.values() if e[0] not in ("lib",)]


def _generic_kernel(cache_dir: Path, cloud: Path) -> Path:
    """The generic (-amd64) build of the cached cloud kernel's version, fetched once."""
    version = cloud.name.removeprefix("vmlinuz-").removesuffix("-cloud-amd64") + "-amd64"
    dest = cache_dir / f"vmlinuz-{version}"
    if dest.exists():
        return dest
    with _extracted_package(cache_dir, f"linux-image-{version}") as x:
        os.replace(x / "boot" / f"vmlinuz-{version}", dest)
    return dest


def _modules(cache_dir: Path, kernel: Path) -> Path:
    """The virtio modules of the cached kernel, extracted from its package once."""
    version = kernel.name.removeprefix("vmlinuz-")
    dest = cache_dir / f"modules-{version}"
    if dest.is_dir():
        return dest
    with _extracted_package(cache_dir, f"linux-image-{version}") as x:
        out = x.parent / "out"
        out.mkdir()
        for m in AGENT_MODULES:
            os.replace(x / "lib" / "modules" / version / "kernel" / m, out / Path(m).name)
        os.replace(out, dest)
    return dest


def _atomic_write(dest: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the cache from non-root users
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def kernel_package() -> str:
    """The concrete linux-image-*-cloud-amd64 package the metapackage currently names."""
    r = subprocess.run(["apt-cache", "depends", KERNEL_META], capture_output=True, text=True)
    m = re.search(r"Depends: (linux-image-\S+-cloud-amd64)\b", r.stdout)
    if not m:
        raise RuntimeError(f"cannot resolve the package behind {KERNEL_META}:\n{r.stdout}")
    return m.group(1)


def _download_kernel(dest_dir: Path) -> Path:
    def download() -> Path:
        # As root into a root-owned dir: apt's _apt sandbox user could not write there.
        cmd = ["apt-get", "-o", "APT::Sandbox::User=root", "download", kernel_package()]
        subprocess.run(cmd, cwd=dest_dir, check=True, stdout=subprocess.DEVNULL)
        (deb,) = dest_dir.glob("*.deb")
        return deb

    try:
        return download()
    except (RuntimeError, subprocess.CalledProcessError):
        # Absent or stale package lists name no kernel, or one the mirror no longer has.
        if _apt_updated:
            raise
        _apt_update_once()
        return download()


def _kernel(cache_dir: Path) -> Path:
    # Whatever kernel is cached is used: tests must not change kernels behind the user's back.
    cached = sorted(
        cache_dir.glob("vmlinuz-*-cloud-amd64"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.name)],
    )
    if cached:
        return cached[-1]
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".kernel.") as tmp:
        deb = _download_kernel(Path(tmp))
        subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
        (vmlinuz,) = Path(tmp, "x", "boot").glob("vmlinuz-*")
        dest = cache_dir / vmlinuz.name
        os.replace(vmlinuz, dest)
    return dest


def _cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """newc archive of (name, mode, data, rdev major<<8|minor); fixed inodes and mtimes."""
    out = bytearray()

    def add(ino: int, name: str, mode: int, data: bytes, rdev: int) -> None:
        bname = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(bname), 0)
        out.extend(b"070701" + b"".join(b"%08x" % v for v in fields) + bname)
        out.extend(b"\0" * (-len(out) % 4) + data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        add(ino, name, mode, data, rdev)
    add(0, "TRAILER!!!", 0, b"", 0)
    return bytes(out)


def _initrd(cache_dir: Path, variant: str, extra: list[tuple[str, int, bytes, int]]) -> Path:
    busybox = BUSYBOX.read_bytes()
    payload_mib = VARIANT_PAYLOAD_MIB[variant]
    key = hashlib.sha256(
        INIT_SCRIPT.encode()
        + hashlib.sha256(busybox).digest()
        + f"{variant}:{payload_mib}".encode()
        + b"".join(hashlib.sha256(e[0].encode() + e[2]).digest() for e in extra)
    ).hexdigest()[:12]
    dest = cache_dir / f"initrd-{variant}-{key}.cpio.gz"
    if dest.exists():
        return dest
    d, f, lnk, chrdev = 0o040755, 0o100644, 0o120777, 0o020600
    entries = [
        *((p, d, b"", 0) for p in ("bin", "dev", "etc", "mnt", "proc", "sys", "tmp")),
        # The kernel opens /dev/console for PID 1 before /init can mount devtmpfs.
        ("dev/console", chrdev, b"", (5 << 8) | 1),
        ("bin/busybox", 0o100755, busybox, 0),
        ("bin/sh", lnk, b"busybox", 0),
        ("init", 0o100755, INIT_SCRIPT.encode(), 0),
        ("etc/dedupx-variant", f, variant.encode() + b"\n", 0),
        *extra,
    ]
    if payload_mib:
        rng = random.Random(f"dedupx-guest-{variant}")
        entries.append(("payload.bin", f, rng.randbytes(payload_mib << 20), 0))
    _atomic_write(dest, gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0))
    return dest


class QMPError(RuntimeError):
    def __init__(self, command: str, error: dict[str, Any]) -> None:
        self.command = command
        self.error_class = str(error.get("class", "?"))
        self.desc = str(error.get("desc", error))
        super().__init__(f"QMP {command} failed: {self.error_class}: {self.desc}")


class Guest:
    """One QEMU/TCG guest booted to READY_MARKER; a context manager that kills only its QEMU."""

    def __init__(
        self,
        assets: GuestAssets,
        mem_mib: int = 256,
        name: str = "g1",
        workdir: Path | None = None,
        extra_args: Sequence[str] = (),
        boot_timeout: float = 120.0,
    ) -> None:
        self.assets = assets
        self.mem_mib = mem_mib
        self.name = name
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="dedupx-guest-"))
        self.extra_args = tuple(extra_args)
        self.boot_timeout = boot_timeout
        self.serial_log = self.workdir / f"{name}.serial.log"
        self.qemu_log = self.workdir / f"{name}.qemu.log"
        self._sockdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.boot_seconds = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "guest not started"
        return self.proc.pid

    @property
    def qmp_socket(self) -> Path:
        assert self._sockdir is not None, "guest not started"
        return self._sockdir / "qmp.sock"

    def command_line(self) -> list[str]:
        return [
            "qemu-system-x86_64", "-accel", "tcg", "-m", str(self.mem_mib),
            "-nographic", "-monitor", "none", "-no-reboot", "-name", self.name,
            "-kernel", str(self.assets.kernel), "-initrd", str(self.assets.initrd),
            "-append", "console=ttyS0 quiet panic=-1",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-serial", f"file:{self.serial_log}",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> Guest:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.serial_log.unlink(missing_ok=True)
        # unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
        self._sockdir = Path(tempfile.mkdtemp(prefix="dqmp-"))
        t0 = time.monotonic()
        with self.qemu_log.open("wb") as log:
            # QEMU must never read from, or set raw mode on, the test runner's terminal.
            self.proc = subprocess.Popen(
                self.command_line(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = t0 + self.boot_timeout
        while READY_MARKER not in self.serial_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited with {self.proc.returncode}{self._logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {READY_MARKER} after {self.boot_timeout} s{self._logs()}")
            time.sleep(0.05)
        self.boot_seconds = time.monotonic() - t0
        return self

    def serial_text(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _logs(self) -> str:
        qemu = self.qemu_log.read_text(errors="replace") if self.qemu_log.exists() else ""
        return f"\n--- qemu ---\n{qemu[-2000:]}\n--- serial ---\n{self.serial_text()[-2000:]}"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)

    def __enter__(self) -> Guest:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def qmp(self, command: str, **args: Any) -> Any:
        """Run one QMP command; return its "return" member (a dict, or a list for some queries).

        Arguments with dashes go through a dict: `qmp("x", **{"command-line": "..."})`.
        """
        return self._qmp(command, args, timeout=60.0)

    def _qmp(self, command: str, args: dict[str, Any], timeout: float) -> Any:
        # A fresh connection per command: QEMU serves one QMP client at a time, and no
        # connection state (pending events, capabilities mode) leaks between calls.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.qmp_socket))
            with s.makefile("rwb") as f:
                messages = (json.loads(line) for line in f if line.strip())
                greeting: Any = next(messages, None)
                if not isinstance(greeting, dict) or "QMP" not in greeting:
                    raise ConnectionError(f"unexpected QMP greeting {greeting!r}")
                reply: Any = None
                for cmd, arguments in (("qmp_capabilities", {}), (command, args)):
                    f.write(json.dumps({"execute": cmd, "arguments": arguments}).encode() + b"\n")
                    f.flush()
                    # Asynchronous events (STOP, RESUME, DUMP_COMPLETED...) interleave with replies.
                    reply = next((m for m in messages if "event" not in m), None)
                    if reply is None:
                        raise ConnectionError(f"QMP connection closed during {cmd}")
                    if "error" in reply:
                        raise QMPError(cmd, reply["error"])
                return reply["return"]

    def hmp(self, command_line: str) -> str:
        return str(self.qmp("human-monitor-command", **{"command-line": command_line}))

    def stop(self) -> None:
        self.qmp("stop")

    def cont(self) -> None:
        self.qmp("cont")

    def dump_guest_memory(self, path: Path, timeout: float = 600.0) -> Path:
        """ELF core of guest-physical memory (PT_LOAD p_paddr = gpa); returns when complete.

        QEMU pauses a running guest only for the dump: `stop()` first to compare with RAM.
        """
        path = Path(path).resolve()
        args = {"paging": False, "protocol": f"file:{path}", "detach": False}
        self._qmp("dump-guest-memory", args, timeout)
        status = self.qmp("query-dump")
        if status.get("status") != "completed":
            raise RuntimeError(f"dump-guest-memory did not complete: {status}")
        return path

    def ram_vma(self) -> tuple[int, int]:
        """(start, end) host address of guest RAM: the one anonymous VMA of exactly -m size."""
        size = self.mem_mib << 20
        found = []
        for line in Path(f"/proc/{self.pid}/maps").read_text().splitlines():
            fields = line.split()
            if len(fields) == 5:  # no pathname: anonymous
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if end - start == size:
                    found.append((start, end))
        if len(found) != 1:
            raise RuntimeError(f"expected one anonymous {self.mem_mib} MiB VMA, found {found}")
        return found[0]


class Load(NamedTuple):
    paddr: int
    offset: int
    filesz: int


def parse_elf_core_loads(path: Path) -> list[Load]:
    """PT_LOAD program headers of an ELF64 little-endian core as (p_paddr, p_offset, p_filesz)."""
    with open(path, "rb") as f:
        eh = f.read(64)
        if eh[:4] != b"\x7fELF" or eh[4] != 2 or eh[5] != 1:
            raise ValueError(f"{path}: not an ELF64 little-endian file")
        e_phoff, e_shoff = struct.unpack_from("<QQ", eh, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", eh, 0x36)
        if e_phnum == 0xFFFF:  # PN_XNUM: the real count is in section header 0's sh_info
            f.seek(e_shoff + 0x2C)
            (e_phnum,) = struct.unpack("<I", f.read(4))
        f.seek(e_phoff)
        table = f.read(e_phentsize * e_phnum)
    loads = []
    for i in range(e_phnum):
        p_type, _, p_offset, _, p_paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", table, i * e_phentsize
        )
        if p_type == 1:  # PT_LOAD
            loads.append(Load(p_paddr, p_offset, p_filesz))
    return loads
