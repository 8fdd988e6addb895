"""atheris fuzzing of the Python parsers of untrusted input: a snapshot's manifest, a
QEMU command line, `info mtree -f`, `x-query-ramblock`, a guest's /proc/meminfo, a guest
agent file's metadata, and everything a guest agent (QGA) or QMP peer can send (a scripted
peer replays the fuzzer's bytes as its replies). Each must return or raise a DedupxError;
anything else is a crash.

usage: python fuzz/python/fuzz_parsers.py [libFuzzer options, e.g. -runs=10000]
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import atheris

from dedupx.exceptions import DedupxError
from dedupx.qemu.cmdline import parse_qemu_cmdline
from dedupx.qemu.gpa_map import parse_mtree_ram
from dedupx.qemu.qga import Qga
from dedupx.qemu.ramblocks import parse_ramblocks
from dedupx.sources.guest_view import _meminfo_kb, _meta_problem
from dedupx.store.snapshot import parse_manifest


class ScriptedQga(Qga):
    """A guest agent whose every reply is the next piece of the fuzzer's input."""

    def __init__(self, replies: list[bytes]) -> None:  # no socket: nothing to connect
        self.path, self.what, self.timeout = Path("fuzz"), "guest agent", 1.0
        self.broken, self.buf, self.replies = False, bytearray(), replies

    def send(self, msg: dict[str, Any]) -> None:
        pass

    def recv_some(self, deadline: float) -> bytes:
        if not self.replies:
            raise self.broke("closed the connection")
        return self.replies.pop(0)


def qga_session(data: bytes) -> None:
    random.seed(0)  # the sync token: the fuzzer can learn to echo it
    qga = ScriptedQga(data.split(b"\x00\x00"))
    qga._sync()
    qga.execute("guest-info")
    qga.read_file("/proc/meminfo", max_bytes=1 << 16)


def agent_metadata(data: bytes) -> None:
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):
        return  # the reader turns these into DedupxError before looking at the shape
    _meta_problem(meta)


TARGETS = [
    lambda d: parse_manifest(d),
    lambda d: parse_qemu_cmdline([a.decode(errors="replace") for a in d.split(b"\0")]),
    lambda d: parse_mtree_ram(d.decode(errors="replace")),
    lambda d: parse_ramblocks(d.decode(errors="replace")),
    lambda d: _meminfo_kb(d.decode(errors="replace")),
    agent_metadata,
    qga_session,
]


def one_input(data: bytes) -> None:
    if not data:
        return
    with contextlib.suppress(DedupxError):
        TARGETS[data[0] % len(TARGETS)](data[1:])


def instrument() -> None:
    """Coverage feedback from every loaded function: dedupx's and the pure-Python parts of
    what it parses with. (`instrument_imports` gave a fifth of the coverage.) atheris
    names each function it cannot rewrite on stderr; those lines are dropped."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            atheris.instrument_all()
        finally:
            os.dup2(saved, 2)
            os.close(saved)


if __name__ == "__main__":
    sys.setrecursionlimit(1000)
    instrument()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
