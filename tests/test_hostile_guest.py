"""A hostile guest: a guest agent (QGA) or a dedupx-agent file that lies, stalls, floods or
sends garbage. dedupx must give up within its deadline, hold bounded memory, and fail with
one typed error (one line from the CLI), never hang, grow or print a traceback."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pytest

import dedupx
from dedupx.exceptions import CorruptAgentFile, QmpError
from fake_qga import agent_file_bytes, fake_qga
from helpers import assert_one_line_error, run_cli

TIMEOUT = 2.0  # the deadline passed to read_guest_qga
WITHIN = 5.0  # how long a hostile agent may hold dedupx, at most
PEAK = 100 << 20  # and how much memory

# behaviour -> what the error says
HOSTILE = {
    "silent": "no complete answer within 2 s",
    "no_sync": "without the 0xFF sync byte",
    "endless_line": "MiB without a newline",
    "endless_file": "longer than 1048576 bytes, the cap",
    "huge_kpageflags": "/proc/kpageflags is longer than",
    "wrong_types": "the reply is not an object",
    "bad_handle": "the handle is not an integer",
    "bad_base64": "buf-b64 is not base64",
    "non_utf8": "osrelease is not UTF-8",
    "bad_meminfo": "does not end in a count",
    "nested": "nested too deep",
    "slow_drip": "no complete answer within 2 s",
    "slow_rounds": "sent slower than 256 KiB/s",
}
# Those that fail at once, so the CLI (with its default deadline) is quick to check too.
FAST = sorted(set(HOSTILE) - {"silent", "slow_drip", "slow_rounds"})


def test_fake_agent_is_read_like_a_real_one() -> None:
    with fake_qga("good") as sock:
        view = dedupx.read_guest_qga(sock, timeout=TIMEOUT)
    assert view.meta["kernel"] == "6.1.0-fake-cloud-amd64"
    assert view.meta["meminfo_kb"]["MemTotal"] == 4096
    assert view.meta["lru_gen"] is None  # the fake has no MGLRU file: an agent error
    assert view.frames.height == 1024


@pytest.mark.parametrize("behaviour", sorted(HOSTILE))
def test_hostile_agent_fails_in_time_and_bounded(behaviour: str) -> None:
    with fake_qga(behaviour) as sock:
        tracemalloc.start()
        started = time.monotonic()
        try:
            with pytest.raises(QmpError) as err:
                dedupx.read_guest_qga(sock, timeout=TIMEOUT)
            seconds = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    msg = str(err.value)
    assert HOSTILE[behaviour] in msg, msg
    assert str(sock) in msg and "\n" not in msg
    assert seconds < WITHIN, seconds
    assert peak < PEAK, peak


@pytest.mark.parametrize("behaviour", FAST)
def test_hostile_agent_cli_one_line(behaviour: str, tmp_path: Path) -> None:
    """analyze reads --qga before it opens the snapshot: the cheapest real CLI path."""
    with fake_qga(behaviour) as sock:
        started = time.monotonic()
        res = run_cli("analyze", str(tmp_path / "no-snapshot"), "--qga", f"1={sock}")
    assert time.monotonic() - started < 30
    assert_one_line_error(res, QmpError.exit_code, HOSTILE[behaviour])


def agent_file(path: Path, meta_json: bytes, pages: int = 4) -> Path:
    """A dedupx-agent file with this metadata and no hashes (fake_qga.agent_file_bytes)."""
    path.write_bytes(agent_file_bytes(meta_json, pages))
    return path


def test_agent_file_built_here_reads(tmp_path: Path) -> None:
    """The builder above agrees with the Rust reader, so the hostile files below test the
    metadata, not the layout."""
    meta = {"kernel": "6.1", "meminfo_kb": {"MemTotal": 16}, "lru_gen": "0x0000"}
    path = agent_file(tmp_path / "ok.agent", json.dumps(meta).encode())
    view = dedupx.read_guest_agent(path)
    assert view.meta == meta and view.frames.height == 4 and not view.mglru


BAD_META = {
    "nested": (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
    "not_json": (b"{nope", "is not JSON"),
    "a_list": (b"[1, 2]", "is not a JSON object"),
    "meminfo_list": (b'{"meminfo_kb": [1]}', "'meminfo_kb' is not an object"),
    "meminfo_text": (b'{"meminfo_before_kb": {"MemTotal": "abc"}}', "non-count value"),
    "meminfo_negative": (b'{"meminfo_kb": {"MemTotal": -1}}', "non-count value"),
    "kernel_number": (b'{"kernel": 5}', "'kernel' is not text"),
    "lru_gen_object": (b'{"lru_gen": {"a": 1}}', "'lru_gen' is not text"),
    "hash_source_list": (b'{"hash_source": []}', "'hash_source' is not text"),
}


@pytest.mark.parametrize("case", sorted(BAD_META))
def test_hostile_agent_file(case: str, tmp_path: Path) -> None:
    meta, words = BAD_META[case]
    path = agent_file(tmp_path / "bad.agent", meta)
    with pytest.raises(CorruptAgentFile, match=words):
        dedupx.read_guest_agent(path)
    res = run_cli("analyze", str(tmp_path / "no-snapshot"), "--guest", f"1={path}")
    assert_one_line_error(res, CorruptAgentFile.exit_code, words)
