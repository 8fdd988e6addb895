"""Newline-delimited JSON over a unix socket: what QMP and the guest agent both speak.

The far end may be hostile (the guest agent runs inside the guest, which its owner
controls), so every read is bounded: by an overall deadline per call, not per ``recv`` (a
peer that drips one byte a second would reset a per-``recv`` timeout forever), and by the
length of one line (a peer that never sends a newline would grow the buffer without end).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from dedupx.exceptions import QmpError

# The longest line a peer may send. The largest legitimate one is a guest-file-read reply
# (1 MiB read, 1.4 MiB in base64, plus the JSON around it) or an HMP `info mtree` of a big
# VM (a few MiB); 16 MiB leaves room for both and bounds what a peer can make us hold.
MAX_LINE = 16 << 20
RECV = 1 << 20


class JsonLineSocket:
    """A connection whose every failure raises ``QmpError`` naming ``what`` and the socket.

    ``timeout`` is the deadline of one call (a request and its whole answer). After a
    failure of the channel itself (timeout, closed, overlong or garbled line) ``broken`` is
    set: the stream is out of step and nothing more should be asked on it.
    """

    def __init__(self, path: Path, what: str, timeout: float) -> None:
        self.path, self.what, self.timeout = path, what, timeout
        self.broken = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as e:
            self.sock.close()
            raise QmpError(f"cannot connect to {what} socket {path}: {e.strerror or e}") from None
        self.buf = bytearray()

    def fail(self, detail: str) -> QmpError:
        return QmpError(f"{self.what} socket {self.path}: {detail}")

    def broke(self, detail: str) -> QmpError:
        """A failure after which the stream cannot be trusted to be in step."""
        self.broken = True
        return self.fail(detail)

    def deadline(self) -> float:
        """The ``time.monotonic()`` by which a call started now must have its answer."""
        return time.monotonic() + self.timeout

    def send(self, msg: dict[str, Any]) -> None:
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise self.broke(f"cannot send ({e.strerror or e})") from None

    def recv_some(self, deadline: float) -> bytes:
        """Whatever arrives next, waiting no later than ``deadline``."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise self.broke(f"no complete answer within {self.timeout:g} s")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(RECV)
        except TimeoutError:
            raise self.broke(f"no complete answer within {self.timeout:g} s") from None
        except OSError as e:
            raise self.broke(f"no answer ({e.strerror or e})") from None
        if not chunk:
            raise self.broke("closed the connection")
        return chunk

    def read_message(self, deadline: float | None = None) -> dict[str, Any]:
        """The next JSON object, complete by ``deadline`` (default: ``timeout`` from now)."""
        if deadline is None:
            deadline = self.deadline()
        seen = 0  # bytes of buf already searched for a newline
        while (nl := self.buf.find(b"\n", seen)) < 0:
            if len(self.buf) > MAX_LINE:
                raise self.broke(f"sent more than {MAX_LINE >> 20} MiB without a newline")
            seen = len(self.buf)
            self.buf += self.recv_some(deadline)
        if nl > MAX_LINE:
            raise self.broke(f"sent a line longer than {MAX_LINE >> 20} MiB")
        line = bytes(self.buf[:nl])
        del self.buf[: nl + 1]
        try:
            msg = json.loads(line)
        except RecursionError:
            raise self.broke("sent JSON nested too deep to read") from None
        except ValueError:  # UnicodeDecodeError among them
            raise self.broke("sent something that is not JSON") from None
        if not isinstance(msg, dict):
            raise self.broke("sent an unexpected message")
        return msg

    def close(self) -> None:
        self.sock.close()
