"""A fake QEMU guest agent on a unix socket, served from a thread, that can misbehave the
ways a hostile guest could: to check that dedupx gives up in time, with bounded memory and
one typed error, whatever the agent does.

``behaviour`` picks the misbehaviour; ``"good"`` is a well-behaved agent serving ``files``.
The agent's exec commands run no program: ``chmod``, ``rm`` and ``kill`` act on the fake's
files and records, and a program it was sent (dedupx-agent) "writes" ``agent_file_bytes``
to its ``-o`` file; ``AGENT_BEHAVIOURS`` misbehave there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import struct
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

# A dedupx-agent file the fake's "agent" writes: 1024 pages, each hashed.
AGENT_META = {
    "created_by": "fake dedupx-agent",
    "kernel": "6.1.0-fake-cloud-amd64",
    "meminfo_before_kb": {"MemTotal": 4096, "MemFree": 1024},
    "meminfo_kb": {"MemTotal": 4096, "MemFree": 1024},
    "lru_gen": None,
    "hash_source": "kcore",
}


def agent_file_bytes(meta_json: bytes, pages: int = 4, hashed: bool = False) -> bytes:
    """A dedupx-agent file laid out as rust/dedupx-core/src/agent_file.rs writes one
    (header of offsets, metadata, flags, counts, hashes when ``hashed``, trailer); page
    ``i`` is hashed as ``i`` in 16 bytes."""
    header_len = 8 + 4 + 4 + 8 * 8
    meta_off, meta_len = header_len, len(meta_json)
    flags_off = meta_off + meta_len
    counts_off = flags_off + 8 * pages
    end = counts_off + 8 * pages
    hashes_off = hashed_off = 0
    body = bytes(16 * pages)
    if hashed:
        hashes_off, hashed_off = end, end + 16 * pages
        end = hashed_off + (pages + 7) // 8
        body += b"".join(i.to_bytes(16, "little") for i in range(pages))
        body += b"\xff" * (pages // 8) + (bytes([(1 << (pages % 8)) - 1]) if pages % 8 else b"")
    total = end + 8
    head = b"DDXAGNT1" + struct.pack("<II", 1, 4096)
    head += struct.pack(
        "<8Q", pages, meta_off, meta_len, flags_off, counts_off, hashes_off, hashed_off, total
    )
    return head + meta_json + body + b"DDXEND!!"


AGENT_FILE = agent_file_bytes(json.dumps(AGENT_META).encode(), PAGES, hashed=True)

# How the fake's exec commands and the agent it runs misbehave.
AGENT_BEHAVIOURS = (
    "exec_forever",  # the agent never finishes
    "exec_status_wrong",  # guest-exec-status returns a list
    "exec_no_code",  # exited, with neither exit code nor signal
    "exec_bad_pid",  # guest-exec returns a text PID
    "agent_fails",  # exit code 1, after megabytes of stderr with escapes in it
    "agent_signal",  # killed by signal 9
    "endless_output",  # the agent's file never reports EOF
    "corrupt_output",  # the agent's file is not an agent file
    "write_stuck",  # guest-file-write writes nothing
    "noexec",  # no /var/tmp, /tmp mounted noexec: only /root runs the agent
)

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
        assert behaviour in (*BEHAVIOURS, *AGENT_BEHAVIOURS, "good"), behaviour
        self.sock, self.behaviour = sock, behaviour
        self.files = dict(GOOD_FILES)
        # Programs the exec commands ran, by PID: [argv, exit code or None while running]
        self.execs: dict[int, list[Any]] = {}
        self.killed: list[int] = []
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
            if args.get("mode", "r") == "w":
                if b == "noexec" and path.startswith("/var/tmp/"):
                    msg = {"error": {"class": "GenericError", "desc": f"can't open {path}"}}
                    self._send(conn, json.dumps(msg).encode() + b"\n")
                    return
                self.files[path] = b""
            elif path not in self.files and b != "huge_kpageflags":
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
            elif (
                b == "endless_file"
                or (b == "huge_kpageflags" and "kpage" in path)
                or (b == "endless_output" and path.endswith(".ddx"))
            ):
                chunk = bytes(args["count"])
                out = {"count": len(chunk), "eof": False}
                self._reply(conn, {**out, "buf-b64": base64.b64encode(chunk).decode()})
            else:
                chunk = data[pos : pos + args["count"]]
                handles[args["handle"]][1] = pos + len(chunk)
                eof = pos + len(chunk) >= len(data)
                out = {"count": len(chunk), "eof": eof}
                self._reply(conn, {**out, "buf-b64": base64.b64encode(chunk).decode()})
        elif cmd == "guest-file-write":
            path = handles[args["handle"]][0]
            data = base64.b64decode(args["buf-b64"])
            if b == "write_stuck":
                data = b""
            self.files[path] += data
            self._reply(conn, {"count": len(data), "eof": False})
        elif cmd == "guest-file-close":
            handles.pop(args["handle"], None)
            self._reply(conn, {})
        elif cmd == "guest-exec":
            self._exec(conn, args["path"], args.get("arg", []))
        elif cmd == "guest-exec-status":
            self._exec_status(conn, args["pid"])
        else:
            self._send(conn, b'{"error": {"class": "CommandNotFound", "desc": "no"}}\n')

    def _exec(self, conn: socket.socket, path: str, argv: list[str]) -> None:
        b, code = self.behaviour, 0
        if path == "chmod" or path == "kill":
            if path == "kill":
                self.killed.append(int(argv[-1]))
        elif path == "rm":
            for name in argv[1:]:
                self.files.pop(name, None)
        elif path in self.files:  # the program dedupx sent: dedupx-agent
            if b == "noexec" and path.startswith("/tmp/"):
                desc = f"Failed to execute child process {path} (Permission denied)"
                msg = {"error": {"class": "GenericError", "desc": desc}}
                self._send(conn, json.dumps(msg).encode() + b"\n")
                return
            if b == "exec_bad_pid":
                self._reply(conn, {"pid": "1234"})
                return
            out = argv[argv.index("-o") + 1]
            self.files[out] = b"garbage, not an agent file" if b == "corrupt_output" else AGENT_FILE
            code = None if b == "exec_forever" else 1 if b == "agent_fails" else 0
        else:
            msg = {"error": {"class": "GenericError", "desc": f"no program {path}"}}
            self._send(conn, json.dumps(msg).encode() + b"\n")
            return
        pid = 4000 + len(self.execs)
        self.execs[pid] = [[path, *argv], code]
        self._reply(conn, {"pid": pid})

    def _exec_status(self, conn: socket.socket, pid: int) -> None:
        b = self.behaviour
        argv, code = self.execs[pid]
        agent = argv[0] not in ("chmod", "rm", "kill")
        if b == "exec_status_wrong" and agent:
            self._reply(conn, [])
        elif code is None:
            self._reply(conn, {"exited": False})
        elif b == "exec_no_code" and agent:
            self._reply(conn, {"exited": True})
        elif b == "agent_signal" and agent:
            self._reply(conn, {"exited": True, "signal": 9})
        elif b == "agent_fails" and agent:
            err = b"x" * (8 << 20) + b"\ndedupx-agent: error: \x1b[31mno /proc/iomem\n"
            out = {"exited": True, "exitcode": code, "err-data": base64.b64encode(err).decode()}
            self._reply(conn, out)
        else:
            self._reply(conn, {"exited": True, "exitcode": code})


@contextmanager
def fake_qga_server(behaviour: str) -> Iterator[FakeQga]:
    """A fake agent, to look at what it was asked to do (its files, programs run)."""
    with tempfile.TemporaryDirectory(prefix="fqga-") as d:
        agent = FakeQga(Path(d) / "qga.sock", behaviour)
        try:
            yield agent
        finally:
            agent.close()


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
