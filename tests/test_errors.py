"""Expected failures: a typed DedupxError from the API, one line and an exit code from the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

import dedupx
from dedupx.exceptions import KernelUnsupported
from helpers import LayoutProcess, assert_one_line_error, run_cli


def fake_proc_root(tmp_path: Path, pid: int, *, kpage_mode: int | None) -> Path:
    """A procfs view with the real /proc/PID but kpageflags missing or unreadable."""
    root = tmp_path / "proc"
    root.mkdir()
    (root / str(pid)).symlink_to(f"/proc/{pid}")
    if kpage_mode is not None:
        for name in ("kpageflags", "kpagecount"):
            (root / name).write_bytes(b"")
            os.chmod(root / name, kpage_mode)
    return root


def test_no_such_pid() -> None:
    with pytest.raises(dedupx.ProcessNotFound) as e:
        dedupx.scan(2**22 + 12345)
    assert isinstance(e.value, ValueError)
    assert_one_line_error(run_cli("scan", "--pid", str(2**22 + 12345)), 4, "no process")


def test_kernel_without_kpageflags(layout: LayoutProcess, tmp_path: Path) -> None:
    root = fake_proc_root(tmp_path, layout.pid, kpage_mode=None)
    with pytest.raises(KernelUnsupported):
        dedupx.scan(layout.pid, proc_root=str(root))
    res = run_cli("scan", "--pid", str(layout.pid), "--proc-root", str(root))
    assert_one_line_error(res, 6, "kpageflags", "CONFIG_PROC_PAGE_MONITOR")


def test_not_root(layout: LayoutProcess, tmp_path: Path) -> None:
    # Without CAP_DAC_OVERRIDE a mode-0 kpageflags is as closed to us as the real one is to
    # an ordinary user: the same EACCES path.
    root = fake_proc_root(tmp_path, layout.pid, kpage_mode=0)
    drop = (
        "setpriv",
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
        "--",
    )
    res = run_cli("scan", "--pid", str(layout.pid), "--proc-root", str(root), prefix=drop)
    assert_one_line_error(res, 3, "permission denied", "as root")


def test_pfns_hidden_without_cap_sys_admin(layout: LayoutProcess) -> None:
    drop = ("setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--")
    res = run_cli("scan", "--pid", str(layout.pid), prefix=drop)
    assert_one_line_error(res, 3, "CAP_SYS_ADMIN")


def test_process_exits_mid_scan(layout: LayoutProcess) -> None:
    stages: list[str] = []

    def kill_on_pagemap(stage: str, done: int, total: int) -> None:
        stages.append(stage)
        if stage == "pagemap" and done == 0:
            os.kill(layout.pid, signal.SIGKILL)
            layout.proc.wait(10)

    with pytest.raises(dedupx.ProcessGone):
        dedupx.scan(layout.pid, progress=kill_on_pagemap)
    assert stages[0] == "pagemap"


def test_progress_callback_error_stops_the_scan(layout: LayoutProcess) -> None:
    class Stop(Exception):
        pass

    def stop_hashing(stage: str, done: int, total: int) -> None:
        if stage == "hash":
            raise Stop

    with pytest.raises(Stop):
        dedupx.scan(layout.pid, progress=stop_hashing)


def test_dead_pid_from_cli(page_layout_bin: Path, tmp_path: Path) -> None:
    # A PID that existed a moment ago and is now gone and reaped.
    p = subprocess.Popen(["true"])
    p.wait()
    res = run_cli("scan", "--pid", str(p.pid))
    assert_one_line_error(res, 4, str(p.pid))
