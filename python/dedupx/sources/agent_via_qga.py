"""dedupx-agent run inside a guest through its QEMU guest agent (QGA), so that the guest's
own view comes with page hashes without rebuilding the guest's initramfs: the static
binary is copied in (guest-file-write), made executable and run (guest-exec), its file is
read back (guest-file-read) and both guest files are removed.

Whatever the guest answers is hostile (see dedupx.qemu.qga): the copy and the read are
capped and paced, the agent's run has a deadline that scales with guest RAM (it reads and
hashes every page of it through /proc/kcore, which under TCG takes tens of seconds for
256 MiB), and its exit code and output are checked before its file is read, by the
checked parser (dedupx.sources.guest_view.read_guest_agent).
"""

from __future__ import annotations

import contextlib
import secrets
from typing import IO

from dedupx.exceptions import QmpError
from dedupx.qemu.qga import Qga

# Where in the guest the agent and its file go, by preference. A directory that is missing
# or read-only, or from which the agent cannot be run (mounted noexec), gives way to the
# next: hardened guests mount /tmp and /var/tmp noexec.
GUEST_DIRS = ("/var/tmp", "/tmp", "/root")
# The deadline of small commands (chmod, rm).
SHORT_SECONDS = 30.0
# The agent's deadline: a base for starting up and writing its file, plus time per GiB of
# guest RAM to read and hash it. TCG reads and hashes at about 10 MiB/s on a slow host
# core; 240 s per GiB leaves room for a guest that is busy as well.
AGENT_BASE_SECONDS = 60.0
AGENT_SECONDS_PER_GIB = 240.0
# The most metadata (JSON: kernel, RAM ranges, meminfo, per-process sizes) an agent file
# may carry, beyond its per-page arrays.
META_CAP = 16 << 20


def agent_seconds(ram_bytes: int) -> float:
    """How long dedupx-agent may run in a guest of ``ram_bytes`` of RAM."""
    return AGENT_BASE_SECONDS + AGENT_SECONDS_PER_GIB * ram_bytes / (1 << 30)


def agent_file_cap(kpage_cap: int) -> int:
    """The most bytes an agent file may have when /proc/kpageflags may have ``kpage_cap``:
    per page frame, flags and counts (8 bytes each), a hash (16) and a bit saying it was
    hashed; and the header, metadata and trailer."""
    pfns = kpage_cap // 8
    return 32 * pfns + pfns // 8 + 1 + META_CAP + 4096


def run_agent(q: Qga, binary: bytes, out: IO[bytes], max_bytes: int, seconds: float) -> None:
    """Runs ``binary`` (dedupx-agent) in the guest behind ``q`` and copies the file it
    writes into ``out``, at most ``max_bytes`` of it; it may run ``seconds``. Raises
    ``QmpError`` naming the socket when no directory takes and runs it, when it fails or
    overruns, or when the guest answers out of turn."""
    name = f"dedupx-agent-{secrets.token_hex(6)}"
    tried: list[str] = []
    for d in GUEST_DIRS:
        exe = f"{d}/{name}"
        result = f"{exe}.ddx"
        # The agent writes beside its file and renames: a killed run leaves the .partial.
        leftovers = [exe, result, f"{exe}.partial"]
        try:
            pid = _start(q, exe, binary, result, tried)
            if pid is None:
                continue
            ended = q.wait(pid, "dedupx-agent", seconds)
            why = ended.failure()
            if why is not None:
                raise q.fail(f"dedupx-agent in the guest {why}")
            try:
                q.copy_file(result, out, max_bytes)
            except QmpError as e:
                raise q.fail(f"dedupx-agent's file: {_detail(q, e)}") from None
            return
        finally:
            _remove(q, leftovers)
    raise q.fail(f"cannot run dedupx-agent in the guest ({'; '.join(tried)})")


def _start(q: Qga, exe: str, binary: bytes, result: str, tried: list[str]) -> int | None:
    """Copies the agent to ``exe`` and starts it; None (the reason added to ``tried``)
    when its directory will not do, so that the next one is tried."""
    try:
        q.write_file(exe, binary)
        chmod = q.run("chmod", ["0700", exe], SHORT_SECONDS)
        if chmod.failure():
            raise q.fail(f"chmod {chmod.failure()}")
        return q.exec(exe, ["-o", result])
    except QmpError as e:
        if q.broken:
            raise
        tried.append(f"{exe}: {_detail(q, e)}"[:160])
        return None


def _detail(q: Qga, e: QmpError) -> str:
    """``e``'s message without the socket the final error names anyway."""
    return str(e).removeprefix(f"{q.what} socket {q.path}: ")


def _remove(q: Qga, paths: list[str]) -> None:
    """Removes ``paths`` in the guest, best effort: a guest that will not, or a channel
    out of step, leaves them (in a directory for temporary files)."""
    if q.broken:
        return
    with contextlib.suppress(QmpError):
        q.run("rm", ["-f", *paths], SHORT_SECONDS)


__all__ = ["agent_file_cap", "agent_seconds", "run_agent"]
