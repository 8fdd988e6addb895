"""A client of the QEMU guest agent (QGA): sync, commands, reading and writing a guest's
files, and running a program in the guest.

dedupx.sources.guest_view reads a guest's page flags through it (`--qga SOCKET`), and
dedupx.sources.agent_via_qga runs dedupx-agent through it.

The agent runs inside the guest, so whatever it sends is treated as hostile: every call
has a deadline, a file read is capped in bytes and in rounds, a program's wait has a
deadline of its own, and replies of the wrong type, bad base64 and the like raise
``QmpError`` rather than a Python traceback.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeGuard

from dedupx.exceptions import QmpError
from dedupx.qemu.json_socket import MAX_LINE, JsonLineSocket

CHUNK = 1 << 20
# A guest agent holds a request several times over (its JSON text, the parsed string, the
# decoded bytes) and its allocator keeps the high-water mark: copying dedupx-agent in 1 MiB
# writes left qemu-ga about 2 MiB larger than 64 KiB ones did, in the very memory the agent
# then measures.
WRITE_CHUNK = 64 << 10
# A file read's default cap: far above any text file dedupx reads through the agent.
DEFAULT_FILE_CAP = 64 << 20
# The slowest a guest may send a file, on average: real agents send MiB/s even under TCG.
MIN_RATE = 256 << 10
# How much of a program's stdout and stderr is kept (the tail): enough for its error.
OUTPUT_TAIL = 4096


@dataclass(frozen=True)
class ExecResult:
    """How a program run in the guest ended: ``exitcode`` or ``signal`` (one of them is
    set), and the last ``OUTPUT_TAIL`` bytes of what it wrote to stdout and stderr."""

    exitcode: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes

    def failure(self) -> str | None:
        """Why the program failed, in one line, or None if it exited with 0."""
        if self.exitcode == 0:
            return None
        if self.signal is None:
            how = f"exited with {self.exitcode}"
        else:
            how = f"was killed by signal {self.signal}"
        lines = self.stderr.decode(errors="replace").strip().splitlines()
        said = "".join(c if c.isprintable() else "?" for c in lines[-1][:200]) if lines else ""
        return f"{how}: {said}" if said else how


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


class Qga(JsonLineSocket):
    """One connection to a guest agent; failures raise ``QmpError`` naming the socket.

    ``timeout`` bounds each call (request and whole answer), the sync included."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        super().__init__(path, "guest agent", timeout)
        try:
            self._sync()
        except BaseException:
            self.close()
            raise

    def _sync(self) -> None:
        """guest-sync-delimited: the agent answers after a 0xFF byte, which marks where
        whatever an earlier client left in the channel ends. What comes before it is
        discarded, up to ``MAX_LINE`` bytes and within one deadline."""
        deadline = self.deadline()
        token = random.randrange(1, 2**31)
        self.send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        discarded = 0
        while True:
            b = self.recv_some(deadline)
            if b"\xff" in b:
                self.buf = bytearray(b.split(b"\xff", 1)[1])
                break
            discarded += len(b)
            if discarded > MAX_LINE:
                raise self.broke(
                    f"sent {discarded >> 20} MiB without the 0xFF sync byte: not a guest agent"
                )
        if self._result(deadline) != token:
            raise self.broke("did not echo the sync token")

    def _result(self, deadline: float) -> Any:
        msg = self.read_message(deadline)
        if "error" in msg:
            err = msg["error"]
            desc = err.get("desc", err) if isinstance(err, dict) else err
            raise self.fail(str(desc)[:200])
        if "return" not in msg:
            raise self.broke("reply without a result")
        return msg["return"]

    def execute(self, command: str, **args: Any) -> Any:
        return self._call(command, args, self.deadline())

    def _call(self, command: str, args: dict[str, Any], deadline: float) -> Any:
        self.send({"execute": command, **({"arguments": args} if args else {})})
        return self._result(deadline)

    def _open(self, path: str, mode: str) -> int:
        handle = self.execute("guest-file-open", path=path, mode=mode)
        if not _is_int(handle):
            raise self.fail(f"guest-file-open {path}: the handle is not an integer")
        return int(handle)

    def _close_quietly(self, handle: int) -> None:
        """Closes ``handle`` after a failure, unless the channel itself failed."""
        if not self.broken:
            with contextlib.suppress(Exception):
                self.execute("guest-file-close", handle=handle)

    def _paced(self, what: str, args: dict[str, Any], budget: float, path: str, verb: str) -> Any:
        """One call that must answer by ``budget`` (the transfer's rate floor) as well as
        within ``timeout``."""
        try:
            return self._call(what, args, min(budget, self.deadline()))
        except QmpError:
            if time.monotonic() < budget:
                raise
            raise self.broke(
                f"{path}: {verb} slower than {MIN_RATE >> 10} KiB/s, the least accepted"
            ) from None

    def read_file(self, path: str, max_bytes: int = DEFAULT_FILE_CAP) -> bytes:
        """The whole of the guest file ``path``, held in memory: see ``copy_file``."""
        out = io.BytesIO()
        self.copy_file(path, out, max_bytes)
        return out.getvalue()

    def copy_file(self, path: str, out: IO[bytes], max_bytes: int = DEFAULT_FILE_CAP) -> int:
        """Copies the guest file ``path`` into ``out`` and returns its length. A guest that
        never reports EOF is stopped at ``max_bytes`` (and at as many rounds as reading
        that much can take). The whole read must also keep up ``MIN_RATE``: it gets
        ``timeout`` plus one second per ``MIN_RATE`` bytes received, so a guest that
        answers each round just before the deadline with a few bytes is cut off too."""
        handle = self._open(path, "r")
        n = 0
        max_rounds = 4 * (max_bytes // CHUNK + 1) + 16
        started = time.monotonic()
        try:
            for _ in range(max_rounds):
                budget = started + self.timeout + n / MIN_RATE
                args = {"handle": handle, "count": CHUNK}
                r = self._paced("guest-file-read", args, budget, path, "sent")
                if not isinstance(r, dict):
                    raise self.fail(f"guest-file-read {path}: the reply is not an object")
                b64, eof, count = r.get("buf-b64", ""), r.get("eof", False), r.get("count", 0)
                if not isinstance(b64, str) or not isinstance(count, int):
                    raise self.fail(f"guest-file-read {path}: buf-b64 or count of the wrong type")
                if len(b64) // 4 * 3 > max_bytes - n + 3:
                    raise self.fail(f"{path} is longer than {max_bytes} bytes, the cap")
                try:
                    chunk = base64.b64decode(b64, validate=True)
                except (binascii.Error, ValueError):
                    raise self.fail(f"guest-file-read {path}: buf-b64 is not base64") from None
                n += len(chunk)
                if n > max_bytes:
                    raise self.fail(f"{path} is longer than {max_bytes} bytes, the cap")
                out.write(chunk)
                if eof or not count:
                    break
            else:
                raise self.fail(f"{path}: no end of file after {max_rounds} reads")
        except BaseException:
            self._close_quietly(handle)
            raise
        self.execute("guest-file-close", handle=handle)
        return n

    def write_file(self, path: str, data: bytes) -> None:
        """Writes ``data`` to the guest file ``path`` (created, or truncated),
        ``WRITE_CHUNK`` bytes a call. The guest's count of bytes written must be a whole
        number no larger than what was sent, and the write must keep up ``MIN_RATE`` like
        a read."""
        handle = self._open(path, "w")
        view = memoryview(data)
        started = time.monotonic()
        try:
            # A guest may write less than it was sent; it must write something each time.
            while view:
                budget = started + self.timeout + (len(data) - len(view)) / MIN_RATE
                chunk = view[:WRITE_CHUNK]
                args = {"handle": handle, "buf-b64": base64.b64encode(chunk).decode()}
                r = self._paced("guest-file-write", args, budget, path, "written")
                count = r.get("count") if isinstance(r, dict) else None
                if not _is_int(count) or not 0 < count <= len(chunk):
                    raise self.fail(f"guest-file-write {path}: count is not 1 to {len(chunk)}")
                view = view[count:]
        except BaseException:
            self._close_quietly(handle)
            raise
        self.execute("guest-file-close", handle=handle)

    def exec(self, path: str, args: Sequence[str] = ()) -> int:
        """Starts ``path`` with ``args`` in the guest (its stdout and stderr captured) and
        returns its guest PID, for ``wait``."""
        r = self.execute("guest-exec", path=path, arg=list(args), **{"capture-output": True})
        pid = r.get("pid") if isinstance(r, dict) else None
        if not _is_int(pid) or pid <= 0:
            raise self.fail(f"guest-exec {path}: the reply has no PID")
        return int(pid)

    def exec_status(self, pid: int) -> ExecResult | None:
        """How the program ``pid`` ended, or None while it runs."""
        r = self.execute("guest-exec-status", pid=pid)
        if not isinstance(r, dict) or not isinstance(r.get("exited"), bool):
            raise self.fail(f"guest-exec-status {pid}: the reply is not a status")
        if not r["exited"]:
            return None
        code, sig = r.get("exitcode"), r.get("signal")
        if not (_is_int(code) or _is_int(sig)):
            raise self.fail(f"guest-exec-status {pid}: exited with no exit code or signal")

        def tail(key: str) -> bytes:
            b64 = r.get(key, "")
            try:
                if not isinstance(b64, str):
                    raise ValueError
                return base64.b64decode(b64, validate=True)[-OUTPUT_TAIL:]
            except (binascii.Error, ValueError):
                raise self.fail(f"guest-exec-status {pid}: {key} is not base64") from None

        return ExecResult(
            code if _is_int(code) else None,
            sig if _is_int(sig) and not _is_int(code) else None,
            tail("out-data"),
            tail("err-data"),
        )

    def run(self, path: str, args: Sequence[str] = (), seconds: float = 30.0) -> ExecResult:
        """Runs ``path`` in the guest and waits for it: see ``wait``."""
        return self.wait(self.exec(path, args), path, seconds)

    def wait(self, pid: int, what: str, seconds: float) -> ExecResult:
        """Waits for the program ``pid`` (``what``, for messages), polling its status, no
        longer than ``seconds``. One that overruns is killed (best effort: it would go on
        using the guest's CPU) and raises ``QmpError``."""
        deadline = time.monotonic() + seconds
        pause = 0.05
        while (done := self.exec_status(pid)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                if not self.broken:
                    with contextlib.suppress(QmpError):
                        self.exec("kill", ["-KILL", str(pid)])
                raise self.fail(f"{what} did not finish within {seconds:g} s")
            time.sleep(min(pause, left))
            pause = min(pause * 2, 1.0)  # quick for short commands, few calls for long ones
        return done

    def __enter__(self) -> Qga:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
