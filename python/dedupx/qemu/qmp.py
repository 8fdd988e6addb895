"""A minimal QMP client over a unix socket: enough to read a guest's memory map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dedupx.exceptions import QmpError
from dedupx.qemu.json_socket import JsonLineSocket


class Qmp(JsonLineSocket):
    """One QMP connection. Every failure (no socket, a refused or garbled answer) raises
    ``QmpError`` with a message that names the socket."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        super().__init__(path, "QMP", timeout)
        greeting = self.read_message()
        if "QMP" not in greeting:
            self.close()
            raise QmpError(f"{path} did not greet like a QMP monitor: {str(greeting)[:80]}")
        self.execute("qmp_capabilities")

    def execute(self, command: str, **args: Any) -> Any:
        """The answer to ``command``; events before it are skipped, all within one deadline
        (a stream of events must not hold the call open forever)."""
        deadline = self.deadline()
        self.send({"execute": command, **({"arguments": args} if args else {})})
        while True:
            msg = self.read_message(deadline)
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

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
