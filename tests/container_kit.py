"""Real containers for tests, without a container engine: namespaces, a cgroup, a chroot.

Each container is ``unshare`` (util-linux) with new PID, mount, UTS, IPC and network
namespaces, ``chroot`` into a busybox root, its processes in a cgroup v2 directory of its
own. Two flavours, as the study compares them (chapter 6, Table 6.2): a *full* container
(an init-like shell running syslogd, crond, httpd and two shell loops: 8 processes) and a
*single-application* container (one idle shell). Roots are *shared* (every container
chroots into one directory, so they map the same page cache of one busybox) or *copied*
(each its own copy: same content, other frames).

Typical use::

    with Containers(tmp_path) as kit:
        full = kit.start("web", FULL, root=kit.shared_root())
        app = kit.start("app", SINGLE, root=kit.copied_root("app"))
        full.pids, full.cgroup_path   # host PIDs (from cgroup.procs), "/dedupx-test-N/web"

How a container starts: the kit runs ``unshare ... chroot ROOT /bin/sh -c INIT`` with a pipe
on its stdin; INIT mounts /proc and waits for a line. The kit finds INIT's host PID (the
child of ``unshare``), writes it to the cgroup's ``cgroup.procs``, then sends the line, so
every process INIT starts is born in the cgroup. Closing the pipe ends INIT; the kernel then
kills the rest of its PID namespace. On exit the kit also kills whatever is left in its own
cgroups (``cgroup.kill``, else SIGKILL by PID), removes them and its roots.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

BUSYBOX = Path("/bin/busybox")
CGROUP_CANDIDATES = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# INIT waits for the kit's go line (its cgroup is set by then), starts the flavour's
# processes in the background, then blocks reading its stdin until the kit closes it.
_PRELUDE = "mount -t proc proc /proc; hostname {name}; read go; "
FULL = (
    "syslogd -n -O /var/log/messages & "
    "crond -f -c /var/spool/cron/crontabs & "
    "httpd -f -p 8080 -h /www & "
    "sh -c 'while :; do sleep 100000; done' & "
    "sh -c 'while :; do sleep 100001; done' & "
    "read stop"
)
FULL_PROCESSES = 8  # init sh, syslogd, crond, httpd, two sh loops and their sleeps
SINGLE = "read stop"
SINGLE_PROCESSES = 1  # the init shell itself, blocked in read
EXPECTED = {FULL: FULL_PROCESSES, SINGLE: SINGLE_PROCESSES}


class ContainerKitError(RuntimeError):
    """A container could not be started or stopped as the kit expects."""


def cgroup2_root() -> Path | None:
    """The cgroup v2 mount to use: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified
    on a hybrid one (v1 controllers plus an empty v2 tree, enough to group processes)."""
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        mounts[left.split()[4]] = right.split()[0]
    for path in CGROUP_CANDIDATES:
        if mounts.get(str(path)) == "cgroup2":
            return path
    return None


def unavailable() -> str | None:
    """Why the kit cannot run here, or None (for pytest.skip)."""
    if os.geteuid() != 0:
        return "containers need root"
    if not BUSYBOX.exists():
        return f"{BUSYBOX} missing (make setup installs busybox-static)"
    for tool in (UNSHARE, CHROOT):
        if not os.access(tool, os.X_OK):
            return f"{tool} (util-linux, coreutils) missing"
    if cgroup2_root() is None:
        return "/sys/fs/cgroup (or /sys/fs/cgroup/unified) is not a cgroup2 mount"
    return None


def drop_page_cache(path: Path) -> None:
    """Asks the kernel to drop a file's clean, unmapped page cache, so that only the pages a
    container faults in stay resident (and a copy's pages are not already in the cache from
    the copy itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def build_root(root: Path) -> Path:
    """A minimal busybox root: /bin/busybox (a copy, so it has page cache of its own) and a
    symlink per applet, and the directories the full flavour's daemons write to."""
    (root / "bin").mkdir(parents=True)
    shutil.copyfile(BUSYBOX, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()
    for name in applets:
        if name != "busybox":
            os.symlink("busybox", root / "bin" / name)
    for d in ("proc", "tmp", "dev", "var/log", "var/spool/cron/crontabs", "www", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for dev, minor in (("null", 3), ("zero", 5)):
        os.mknod(root / "dev" / dev, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    (root / "www" / "index.html").write_text("dedupx\n")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    drop_page_cache(root / "bin" / "busybox")
    drop_page_cache(BUSYBOX)
    return root


def children(pid: int) -> list[int]:
    """Host PIDs whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class Container:
    name: str
    root: Path
    cgroup_dir: Path  # e.g. /sys/fs/cgroup/dedupx-test-123/web
    cgroup_path: str  # as /proc/PID/cgroup's v2 line shows it: /dedupx-test-123/web
    proc: subprocess.Popen[bytes]
    init_pid: int
    expected: int
    pids: list[int] = field(default_factory=list)

    def cgroup_pids(self) -> list[int]:
        text = (self.cgroup_dir / "cgroup.procs").read_text()
        return sorted(int(p) for p in text.split())


class Containers:
    """Starts containers (``start``) and, on exit, stops and removes all it started."""

    def __init__(self, workdir: Path) -> None:
        why = unavailable()
        if why:
            raise ContainerKitError(why)
        cg = cgroup2_root()
        assert cg is not None
        self.cgroup_mount = cg
        self.parent = cg / f"dedupx-test-{os.getpid()}"
        self.workdir = workdir
        self.containers: list[Container] = []
        self.roots: list[Path] = []
        self._shared: Path | None = None

    def __enter__(self) -> Containers:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.parent.mkdir()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        errors = []
        for c in self.containers:
            try:
                self._stop(c)
            except ContainerKitError as e:
                errors.append(str(e))
        for root in self.roots:
            shutil.rmtree(root, ignore_errors=True)
        try:
            self.parent.rmdir()
        except OSError as e:
            errors.append(f"cannot remove {self.parent}: {e}")
        if errors and exc is None:
            raise ContainerKitError("; ".join(errors))

    def shared_root(self) -> Path:
        """The one root every caller of this method chroots into."""
        if self._shared is None:
            self._shared = build_root(self.workdir / "root-shared")
            self.roots.append(self._shared)
        return self._shared

    def copied_root(self, name: str) -> Path:
        """A root of one's own: same files, its own inodes and page cache."""
        root = build_root(self.workdir / f"root-{name}")
        self.roots.append(root)
        return root

    def start(self, name: str, flavour: str, root: Path) -> Container:
        """Starts one container and returns once all its processes run in its cgroup."""
        cgroup_dir = self.parent / name
        cgroup_dir.mkdir()
        cmd = [
            UNSHARE,
            "--fork",
            "--pid",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--propagation=private",
            CHROOT,
            str(root),
            "/bin/sh",
            "-c",
            _PRELUDE.format(name=name) + flavour,
        ]
        env = {"PATH": "/bin", "HOME": "/"}
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        rel = "/" + str(cgroup_dir.relative_to(self.cgroup_mount))
        c = Container(name, root, cgroup_dir, rel, proc, 0, EXPECTED.get(flavour, 1))
        self.containers.append(c)
        c.init_pid = self._wait_for_init(c)
        (cgroup_dir / "cgroup.procs").write_text(str(c.init_pid))
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        c.pids = self._wait_for_processes(c)
        return c

    def _wait_for_init(self, c: Container) -> int:
        """INIT's host PID: the child of unshare, once it has exec'd the busybox shell."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if c.proc.poll() is not None:
                raise ContainerKitError(
                    f"container {c.name}: unshare exited with {c.proc.returncode}"
                )
            kids = children(c.proc.pid)
            if len(kids) == 1 and comm(kids[0]) == "sh":
                return kids[0]
            time.sleep(0.02)
        raise ContainerKitError(f"container {c.name}: no init shell after {START_TIMEOUT} s")

    def _wait_for_processes(self, c: Container) -> list[int]:
        """The cgroup's PIDs once it holds the flavour's processes, each exec'd and stable."""
        deadline = time.monotonic() + START_TIMEOUT
        pids: list[int] = []
        while time.monotonic() < deadline:
            pids = c.cgroup_pids()
            # A forked shell shows as "sh" until it execs: wait for the daemons' names.
            comms = [comm(p) for p in pids]
            started = c.expected == 1 or ("httpd" in comms and comms.count("sleep") == 2)
            if len(pids) == c.expected and started:
                time.sleep(0.2)
                if c.cgroup_pids() == pids:
                    return pids
            if c.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise ContainerKitError(
            f"container {c.name}: {len(pids)} processes in {c.cgroup_dir} "
            f"({', '.join(comm(p) for p in pids)}), expected {c.expected}"
        )

    def _stop(self, c: Container) -> None:
        """Ends INIT by closing its stdin, then kills what is left in its cgroup, then
        removes the cgroup. Only this container's processes are signalled."""
        if c.proc.stdin is not None and not c.proc.stdin.closed:
            with contextlib.suppress(OSError):
                c.proc.stdin.close()
        if not self._wait_empty(c, STOP_TIMEOUT / 2):
            self._kill(c, c.cgroup_pids())
            if not self._wait_empty(c, STOP_TIMEOUT / 2):
                raise ContainerKitError(
                    f"container {c.name}: {c.cgroup_pids()} still in {c.cgroup_dir}"
                )
        try:
            c.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise ContainerKitError(f"container {c.name}: unshare did not exit") from e
        try:
            c.cgroup_dir.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ContainerKitError(f"container {c.name}: cannot remove {c.cgroup_dir}: {e}") from e

    @staticmethod
    def _wait_empty(c: Container, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not c.cgroup_dir.exists() or not c.cgroup_pids():
                return True
            time.sleep(0.05)
        return False

    @staticmethod
    def _kill(c: Container, pids: list[int]) -> None:
        kill_file = c.cgroup_dir / "cgroup.kill"
        if kill_file.exists():
            kill_file.write_text("1")
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


__all__ = [
    "FULL",
    "FULL_PROCESSES",
    "SINGLE",
    "SINGLE_PROCESSES",
    "Container",
    "ContainerKitError",
    "Containers",
    "cgroup2_root",
    "unavailable",
]
