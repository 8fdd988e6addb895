"""dedupx-agent run through a guest agent (QGA) that lies, stalls, floods or refuses:
dedupx must give up within its deadlines, hold bounded memory, fail with one typed error
naming the socket (one line from the CLI), and leave no file of its own in the guest."""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest

import dedupx
from dedupx.exceptions import CorruptAgentFile, DedupxError, DedupxIOError, QmpError, UsageError
from fake_qga import AGENT_META, PAGES, FakeQga, fake_qga_server
from helpers import assert_one_line_error, run_cli

TIMEOUT = 2.0  # each agent call's deadline
AGENT_TIMEOUT = 3.0  # the agent's run
WITHIN = 20.0  # how long a hostile guest may hold dedupx, at most
PEAK = 100 << 20  # and how much memory

# behaviour -> (error class, what the error says)
HOSTILE: dict[str, tuple[type[DedupxError], str]] = {
    "exec_forever": (QmpError, "dedupx-agent did not finish within 3 s"),
    "exec_status_wrong": (QmpError, "the reply is not a status"),
    "exec_no_code": (QmpError, "exited with no exit code or signal"),
    "exec_bad_pid": (QmpError, "the reply has no PID"),
    "agent_fails": (QmpError, "exited with 1: dedupx-agent: error: ?[31mno /proc/iomem"),
    "agent_signal": (QmpError, "dedupx-agent in the guest was killed by signal 9"),
    "endless_output": (QmpError, "dedupx-agent's file: /var/tmp/dedupx-agent-"),
    "corrupt_output": (CorruptAgentFile, "not a dedupx-agent file"),
    "write_stuck": (QmpError, "cannot run dedupx-agent in the guest"),
}


@pytest.fixture
def fake_agent(tmp_path: Path) -> Path:
    """Stands for dedupx-agent: the fake runs no program, but dedupx checks it is ELF."""
    path = tmp_path / "dedupx-agent"
    path.write_bytes(b"\x7fELF" + bytes(3 << 20))  # a few chunks, as the real one is
    return path


def own_files(agent: FakeQga) -> list[str]:
    """The files dedupx put in the guest that are still there."""
    return [p for p in agent.files if "dedupx-agent-" in p]


def test_agent_runs_and_cleans_up(fake_agent: Path) -> None:
    with fake_qga_server("good") as agent:
        view = dedupx.read_guest_qga(agent.sock, timeout=TIMEOUT, agent=fake_agent)
        leftovers = own_files(agent)
        programs = [argv[0] for argv, _ in agent.execs.values()]
    assert view.path == agent.sock
    assert view.meta["hash_source"] == "kcore" and view.meta["kernel"] == AGENT_META["kernel"]
    assert view.frames.height == PAGES and view.frames["hash"].null_count() == 0
    assert view.frames["hash"][5] == (5).to_bytes(16, "little")
    assert programs[0] == "chmod" and programs[1].startswith("/var/tmp/dedupx-agent-")
    assert programs[-1] == "rm"
    assert leftovers == []


def test_agent_tries_the_next_directory(fake_agent: Path) -> None:
    """No /var/tmp, and /tmp mounted noexec: /root runs it; nothing is left behind."""
    with fake_qga_server("noexec") as agent:
        view = dedupx.read_guest_qga(agent.sock, timeout=TIMEOUT, agent=fake_agent)
        leftovers = own_files(agent)
        ran = [argv[0] for argv, _ in agent.execs.values() if argv[0].startswith("/")]
    assert view.frames.height == PAGES
    assert len(ran) == 1 and ran[0].startswith("/root/dedupx-agent-"), ran
    assert leftovers == []


@pytest.mark.parametrize("behaviour", sorted(HOSTILE))
def test_hostile_agent_run_fails_in_time_and_bounded(behaviour: str, fake_agent: Path) -> None:
    kind, words = HOSTILE[behaviour]
    with fake_qga_server(behaviour) as agent:
        tracemalloc.start()
        started = time.monotonic()
        try:
            with pytest.raises(kind) as err:
                dedupx.read_guest_qga(
                    agent.sock, timeout=TIMEOUT, agent=fake_agent, agent_timeout=AGENT_TIMEOUT
                )
            seconds = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        leftovers = own_files(agent)
        killed = list(agent.killed)
    msg = str(err.value)
    assert words in msg, msg
    assert str(agent.sock) in msg and "\n" not in msg and len(msg) < 1000, msg
    assert seconds < WITHIN, seconds
    assert peak < PEAK, peak
    assert leftovers == [], leftovers
    if behaviour == "exec_forever":
        assert killed, "the overrunning agent was not killed"


def test_agent_binary_must_be_a_program(tmp_path: Path) -> None:
    not_elf = tmp_path / "agent.txt"
    not_elf.write_text("#!/bin/sh\n")
    with pytest.raises(UsageError, match="is not a program"):
        dedupx.read_guest_qga(tmp_path / "no.sock", agent=not_elf)


@pytest.mark.parametrize("behaviour", ["agent_fails", "corrupt_output", "exec_bad_pid"])
def test_hostile_agent_run_cli_one_line(behaviour: str, fake_agent: Path, tmp_path: Path) -> None:
    kind, words = HOSTILE[behaviour]
    with fake_qga_server(behaviour) as agent:
        res = run_cli(
            "analyze",
            str(tmp_path / "no-snapshot"),
            "--qga",
            f"1={agent.sock}",
            "--agent-binary",
            str(fake_agent),
        )
    assert_one_line_error(res, kind.exit_code, words)


def test_analyses_take_the_guest_view_or_its_frames_not_both(fake_agent: Path) -> None:
    with fake_qga_server("good") as agent:
        view = dedupx.read_guest_qga(agent.sock, timeout=TIMEOUT, agent=fake_agent)
    for analysis in (dedupx.incremental_cost, dedupx.uss_breakdown):
        with pytest.raises(UsageError, match="not both"):
            analysis(None, 1, view.guest_frames(1), guest=view)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="takes a GuestView"):
            analysis(None, 1, guest=view.frames)  # type: ignore[arg-type]


def test_local_temporary_directory_unusable(
    fake_agent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's file is kept in this host's temporary directory: one that is gone is a
    typed error, and the guest is still cleaned up."""
    with fake_qga_server("good") as agent:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
        with pytest.raises(DedupxIOError, match="cannot keep dedupx-agent's file"):
            dedupx.read_guest_qga(agent.sock, timeout=TIMEOUT, agent=fake_agent)
        leftovers = own_files(agent)
    assert leftovers == []
