"""A fake QEMU guest agent on a unix socket, served from a thread, that can misbehave the
ways a hostile guest could: to check that dedupx gives up in time, with bounded memory and
one typed error, whatever the agent does.

``behaviour`` picks the misbehaviour; ``"good"`` is a well-behaved agent serving ``files``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PAGES = 1024  # a 4 MiB guest
MEMINFO = (
    b"MemTotal:           4096 kB\nMemFree:            1024 kB\nActive(anon):  0 kB\n"
    b"Inactive(anon):  0 kB\nActive(file):  0 kB\nInactive(file):  0 kB\n"
)
GOOD_FILES = {
    "/proc/sys/kernel/osrelease": b"6.1.0-fake-cloud-amd64\n",
    "/proc/meminfo": MEMINFO,
    "/proc/kpageflags": bytes(8 * PAGES),
    "/proc/kpagecount": bytes(8 * PAGES),
}
NESTED = "[" * 100_000 + "]" * 100_000

BEHAVIOURS = (
    "silent",  # never answers at all
    "no_sync",  # answers the sync with JSON forever, never the 0xFF byte
    "endless_line",  # answers the first command with bytes and no newline, forever
    "endless_file",  # guest-file-read never reports EOF
    "wrong_types",  # guest-file-read returns 5
    "bad_handle",  # guest-file-open returns a string
    "bad_base64",  # guest-file-read's buf-b64 is not base64
    "non_utf8",  # osrelease is not UTF-8
    "bad_meminfo",  # MemTotal: abc kB
    "nested",  # a reply nested 100k deep
    "slow_drip",  # the sync reply, one byte a second
    "huge_kpageflags",  # kpageflags far larger than MemTotal allows (EOF at the end)
    "slow_rounds",  # guest-file-read: 16 bytes, no EOF, each just inside a 2 s deadline
)


class FakeQga:
    def __init__(self, sock: Path, behaviour: str) -> None:
        assert behaviour in (*BEHAVIOURS, "good"), behaviour
        self.sock, self.behaviour = sock, behaviour
        self.files = dict(GOOD_FILES)
        if behaviour == "non_utf8":
            self.files["/proc/sys/kernel/osrelease"] = b"\xff\xfe\x80 kernel"
        if behaviour == "bad_meminfo":
            self.files["/proc/meminfo"] = b"MemTotal:  abc kB\n"
        self.stop = threading.Event()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(sock))
        self.server.listen(4)
        self.server.settimeout(0.2)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.server.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                self._session(conn)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        conn.settimeout(0.5)
        view = memoryview(data)
        while view and not self.stop.is_set():
            try:
                view = view[conn.send(view) :]
            except TimeoutError:
                continue  # the client is not reading; wait until it does or goes

    def _forever(self, conn: socket.socket, data: bytes) -> None:
        """Sends ``data`` over and over until the client hangs up (an OSError ends it)."""
        while not self.stop.is_set():
            self._send(conn, data)

    def _reply(self, conn: socket.socket, value: Any) -> None:
        self._send(conn, json.dumps({"return": value}).encode() + b"\n")

    def _session(self, conn: socket.socket) -> None:
        handles: dict[int, list[bytes | int]] = {}
        buf = b""
        conn.settimeout(0.2)
        while not self.stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self._command(conn, json.loads(line), handles)

    def _command(self, conn: socket.socket, msg: dict[str, Any], handles: dict[int, Any]) -> None:
        cmd, args, b = msg["execute"], msg.get("arguments", {}), self.behaviour
        if cmd == "guest-sync-delimited":
            reply = json.dumps({"return": args["id"]}).encode() + b"\n"
            if b == "silent":
                self.stop.wait()
            elif b == "no_sync":
                self._forever(conn, reply * 1000)
            elif b == "slow_drip":
                for byte in b"\xff" + reply:
                    if self.stop.wait(1.0):
                        return
                    self._send(conn, bytes([byte]))
            else:
                self._send(conn, b"\xff" + reply)
        elif b == "endless_line":
            self._forever(conn, b"x" * 65536)
        elif b == "nested":
            self._send(conn, b'{"return": ' + NESTED.encode() + b"}\n")
        elif cmd == "guest-file-open":
            if b == "bad_handle":
                self._reply(conn, "handle")
                return
            path = args["path"]
            if path not in self.files and b != "huge_kpageflags":
                msg = {"error": {"class": "GenericError", "desc": f"can't open {path}"}}
                self._send(conn, json.dumps(msg).encode() + b"\n")
                return
            h = len(handles) + 1000
            handles[h] = [path, 0]
            self._reply(conn, h)
        elif cmd == "guest-file-read":
            path, pos = handles[args["handle"]]
            data = self.files.get(path, b"")
            if b == "wrong_types":
                self._reply(conn, 5)
            elif b == "slow_rounds":
                time.sleep(1.5)
                out = {"count": 16, "eof": False, "buf-b64": base64.b64encode(bytes(16)).decode()}
                self._reply(conn, out)
            elif b == "bad_base64":
                self._reply(conn, {"count": 3, "buf-b64": "!!not base64!!", "eof": False})
            elif b == "endless_file" or (b == "huge_kpageflags" and "kpage" in path):
                chunk = bytes(args["count"])
                out = {"count": len(chunk), "eof": False}
                self._reply(conn, {**out, "buf-b64": base64.b64encode(chunk).decode()})
            else:
                chunk = data[pos : pos + args["count"]]
                handles[args["handle"]][1] = pos + len(chunk)
                eof = pos + len(chunk) >= len(data)
                out = {"count": len(chunk), "eof": eof}
                self._reply(conn, {**out, "buf-b64": base64.b64encode(chunk).decode()})
        elif cmd == "guest-file-close":
            handles.pop(args["handle"], None)
            self._reply(conn, {})
        else:
            self._send(conn, b'{"error": {"class": "CommandNotFound", "desc": "no"}}\n')


@contextmanager
def fake_qga(behaviour: str) -> Iterator[Path]:
    """A fake agent's socket path (short: unix socket paths are limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="fqga-") as d:
        sock = Path(d) / "qga.sock"
        agent = FakeQga(sock, behaviour)
        try:
            yield sock
        finally:
            agent.close()


def elapsed(since: float) -> float:
    return time.monotonic() - since
