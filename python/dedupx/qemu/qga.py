"""A client of the QEMU guest agent (QGA): sync, commands, and reading a guest's files.

dedupx.sources.guest_view reads a guest's page flags through it (`--qga SOCKET`).

The agent runs inside the guest, so whatever it sends is treated as hostile: every call
has a deadline, a file read is capped in bytes and in rounds, and replies of the wrong
type, bad base64 and the like raise ``QmpError`` rather than a Python traceback.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import random
import time
from pathlib import Path
from typing import Any

from dedupx.exceptions import QmpError
from dedupx.qemu.json_socket import MAX_LINE, JsonLineSocket

CHUNK = 1 << 20
# A file read's default cap: far above any text file dedupx reads through the agent.
DEFAULT_FILE_CAP = 64 << 20
# The slowest a guest may send a file, on average: real agents send MiB/s even under TCG.
MIN_RATE = 256 << 10


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

    def read_file(self, path: str, max_bytes: int = DEFAULT_FILE_CAP) -> bytes:
        """The whole of the guest file ``path``. A guest that never reports EOF is stopped
        at ``max_bytes`` (and at as many rounds as reading that much can take), so a read
        costs at most that much memory. The whole read must also keep up ``MIN_RATE``: it
        gets ``timeout`` plus one second per ``MIN_RATE`` bytes received, so a guest that
        answers each round just before the deadline with a few bytes is cut off too."""
        handle = self.execute("guest-file-open", path=path, mode="r")
        if not isinstance(handle, int) or isinstance(handle, bool):
            raise self.fail(f"guest-file-open {path}: the handle is not an integer")
        out = bytearray()
        max_rounds = 4 * (max_bytes // CHUNK + 1) + 16
        started = time.monotonic()
        try:
            for _ in range(max_rounds):
                budget = started + self.timeout + len(out) / MIN_RATE
                args = {"handle": handle, "count": CHUNK}
                try:
                    r = self._call("guest-file-read", args, min(budget, self.deadline()))
                except QmpError:
                    if time.monotonic() < budget:
                        raise
                    raise self.broke(
                        f"{path}: sent slower than {MIN_RATE >> 10} KiB/s, the least accepted"
                    ) from None
                if not isinstance(r, dict):
                    raise self.fail(f"guest-file-read {path}: the reply is not an object")
                b64, eof, count = r.get("buf-b64", ""), r.get("eof", False), r.get("count", 0)
                if not isinstance(b64, str) or not isinstance(count, int):
                    raise self.fail(f"guest-file-read {path}: buf-b64 or count of the wrong type")
                if len(b64) // 4 * 3 > max_bytes - len(out) + 3:
                    raise self.fail(f"{path} is longer than {max_bytes} bytes, the cap")
                try:
                    out += base64.b64decode(b64, validate=True)
                except (binascii.Error, ValueError):
                    raise self.fail(f"guest-file-read {path}: buf-b64 is not base64") from None
                if len(out) > max_bytes:
                    raise self.fail(f"{path} is longer than {max_bytes} bytes, the cap")
                if eof or not count:
                    break
            else:
                raise self.fail(f"{path}: no end of file after {max_rounds} reads")
        except BaseException:
            if not self.broken:
                with contextlib.suppress(Exception):
                    self.execute("guest-file-close", handle=handle)
            raise
        self.execute("guest-file-close", handle=handle)
        return bytes(out)

    def __enter__(self) -> Qga:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
