"""A minimal QMP client over a unix socket: enough to read a guest's memory map."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from dedupx.exceptions import QmpError


class Qmp:
    """One QMP connection. Every failure (no socket, a refused or garbled answer) raises
    ``QmpError`` with a message that names the socket."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as e:
            self.sock.close()
            raise QmpError(f"cannot connect to QMP socket {path}: {e.strerror or e}") from None
        self.buf = b""
        greeting = self._read()
        if "QMP" not in greeting:
            self.close()
            raise QmpError(f"{path} did not greet like a QMP monitor: {str(greeting)[:80]}")
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except OSError as e:
                raise QmpError(f"QMP socket {self.path}: {e.strerror or e}") from None
            if not chunk:
                raise QmpError(f"QMP socket {self.path} closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            raise QmpError(f"QMP socket {self.path} sent something that is not JSON") from None
        if not isinstance(msg, dict):
            raise QmpError(f"QMP socket {self.path} sent an unexpected message")
        return msg

    def execute(self, command: str, **args: Any) -> Any:
        req: dict[str, Any] = {"execute": command}
        if args:
            req["arguments"] = args
        try:
            self.sock.sendall(json.dumps(req).encode() + b"\n")
        except OSError as e:
            raise QmpError(f"QMP socket {self.path}: {e.strerror or e}") from None
        while True:
            msg = self._read()
            if "event" in msg:
                continue
            if "error" in msg:
                err = msg["error"]
                desc = err.get("desc", err) if isinstance(err, dict) else err
                raise QmpError(f"QMP {command} failed on {self.path}: {desc}")
            if "return" not in msg:
                raise QmpError(f"QMP {command} on {self.path}: reply without a result")
            return msg["return"]

    def hmp(self, command_line: str) -> str:
        out = self.execute("human-monitor-command", **{"command-line": command_line})
        if not isinstance(out, str):
            raise QmpError(f"HMP {command_line!r} on {self.path}: reply is not text")
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
