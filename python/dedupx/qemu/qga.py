"""Reading a guest's page flags through the QEMU guest agent (`--qga SOCKET`).

The agent's file commands read /proc/kpageflags, /proc/kpagecount and /proc/meminfo inside
the guest (as the agent's user, root); no hashes come this way (that needs dedupx-agent).
"""

from __future__ import annotations

import array
import base64
import os
import random
from pathlib import Path
from typing import Any

import polars as pl

from dedupx.exceptions import QmpError
from dedupx.guest_agent import GuestView, guest_class
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


def _meminfo_kb(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if v.split():
            out[k.strip()] = int(v.split()[0])
    return out


def read_guest_qga(path: str | os.PathLike[str]) -> GuestView:
    """The guest's page flags and counts, meminfo (just before and just after) and MGLRU
    state, read through its guest agent; a ``GuestView`` without hashes."""
    sock = Path(path)
    with Qga(sock) as q:
        kernel = q.read_file("/proc/sys/kernel/osrelease").decode().strip()
        before = _meminfo_kb(q.read_file("/proc/meminfo").decode())
        flags = q.read_file("/proc/kpageflags")
        counts = q.read_file("/proc/kpagecount")
        after = _meminfo_kb(q.read_file("/proc/meminfo").decode())
        try:
            lru_gen: str | None = q.read_file("/sys/kernel/mm/lru_gen/enabled").decode().strip()
        except QmpError:
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
