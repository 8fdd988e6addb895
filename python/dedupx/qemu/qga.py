"""A client of the QEMU guest agent (QGA): sync, commands, and reading a guest's files.

dedupx.sources.guest_view reads a guest's page flags through it (`--qga SOCKET`).
"""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

from dedupx.qemu.json_socket import JsonLineSocket

CHUNK = 1 << 20


class Qga(JsonLineSocket):
    """One connection to a guest agent; failures raise ``QmpError`` naming the socket."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        super().__init__(path, "guest agent", timeout)
        self._sync()

    def _sync(self) -> None:
        """guest-sync-delimited: the agent answers after a 0xFF byte, which marks where
        whatever an earlier client left in the channel ends."""
        token = random.randrange(1, 2**31)
        self.send({"execute": "guest-sync-delimited", "arguments": {"id": token}})
        while True:
            b = self.recv_some()
            if b"\xff" in b:
                self.buf = b.split(b"\xff", 1)[1]
                break
        if self._result() != token:
            raise self.fail("did not echo the sync token")

    def _result(self) -> Any:
        msg = self.read_message()
        if "error" in msg:
            err = msg["error"]
            raise self.fail(str(err.get("desc", err) if isinstance(err, dict) else err))
        if "return" not in msg:
            raise self.fail("reply without a result")
        return msg["return"]

    def execute(self, command: str, **args: Any) -> Any:
        self.send({"execute": command, **({"arguments": args} if args else {})})
        return self._result()

    def read_file(self, path: str) -> bytes:
        handle = self.execute("guest-file-open", path=path, mode="r")
        out = bytearray()
        try:
            while True:
                r = self.execute("guest-file-read", handle=handle, count=CHUNK)
                out += base64.b64decode(r.get("buf-b64", ""))
                if r.get("eof") or not r.get("count"):
                    break
        finally:
            self.execute("guest-file-close", handle=handle)
        return bytes(out)

    def __enter__(self) -> Qga:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
