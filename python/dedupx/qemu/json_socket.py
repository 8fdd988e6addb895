"""Newline-delimited JSON over a unix socket: what QMP and the guest agent both speak."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from dedupx.exceptions import QmpError


class JsonLineSocket:
    """A connection whose every failure raises ``QmpError`` naming ``what`` and the socket."""

    def __init__(self, path: Path, what: str, timeout: float) -> None:
        self.path, self.what = path, what
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as e:
            self.sock.close()
            raise QmpError(f"cannot connect to {what} socket {path}: {e.strerror or e}") from None
        self.buf = b""

    def fail(self, detail: str) -> QmpError:
        return QmpError(f"{self.what} socket {self.path}: {detail}")

    def send(self, msg: dict[str, Any]) -> None:
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise self.fail(str(e.strerror or e)) from None

    def recv_some(self) -> bytes:
        try:
            chunk = self.sock.recv(1 << 20)
        except OSError as e:
            raise self.fail(f"no answer ({e.strerror or e})") from None
        if not chunk:
            raise self.fail("closed the connection")
        return chunk

    def read_message(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            self.buf += self.recv_some()
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            raise self.fail("sent something that is not JSON") from None
        if not isinstance(msg, dict):
            raise self.fail("sent an unexpected message")
        return msg

    def close(self) -> None:
        self.sock.close()
