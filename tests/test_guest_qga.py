"""The guest's page flags through the QEMU guest agent, against its own /proc/meminfo."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

import dedupx
from dedupx.exceptions import QmpError
from guest_kit import Guest, ensure_packages, guest_assets, qga_args
from helpers import assert_lru_within_meminfo, run_cli


def test_qga_classes_agree_with_meminfo(tmp_path: Path) -> None:
    ensure_packages()
    sock_dir = Path(tempfile.mkdtemp(prefix="dqga-"))  # unix socket paths must be short
    sock = sock_dir / "qga.sock"
    try:
        with Guest(
            guest_assets(variant="qga"),
            mem_mib=256,
            name="qga",
            workdir=tmp_path,
            extra_args=qga_args(sock),
        ) as g:
            view = dedupx.read_guest_qga(sock)
            assert view.meta["kernel"].endswith("cloud-amd64")
            assert not view.mglru
            assert_lru_within_meminfo(view)
            classes = dict(view.frames.group_by("class").len().iter_rows())
            assert sum(classes.values()) == view.frames.height
            assert classes["free"] > classes.get("anon", 0)  # an idle guest is mostly free
            res = run_cli("scan", "--pid", str(g.pid), "--qga", str(sock))
            assert res.returncode == 0, res.stderr
            assert "guest says free" in res.stdout
            snap = dedupx.snapshot(tmp_path / "snap")
            res = run_cli("analyze", str(snap), "--json", "--qga", f"{g.pid}={sock}")
            assert res.returncode == 0, res.stderr
            (vm,) = [v for v in json.loads(res.stdout)["vms"] if v["pid"] == g.pid]
            assert set(vm["guest_classes"]) == set(classes)
            assert vm["bloat"]["bloat_pages"] is None  # no hashes come through the agent
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_qga_socket_missing(tmp_path: Path) -> None:
    with pytest.raises(QmpError, match="cannot connect"):
        dedupx.read_guest_qga(tmp_path / "nope.sock")
