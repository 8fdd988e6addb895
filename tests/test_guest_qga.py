"""The guest's page flags through the QEMU guest agent, against its own /proc/meminfo; and
dedupx-agent run through it, against the same guest's agent file read over virtio-serial."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest

import dedupx
from dedupx.exceptions import QmpError
from dedupx.qemu.qga import Qga
from guest_kit import Guest, agent_port_args, ensure_packages, guest_assets, qga_args
from helpers import PAGE, ZERO_HASH, assert_lru_within_meminfo, guest_ram_hashes, run_cli

# The guest runs on while its two views are taken (QGA must answer, so it cannot be
# paused): pages may change in between (the agents' own buffers and files, freed pages
# reused). Classes, and hashes of the pages that held still, agree within 1%.
AGREE = 0.01


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
            # Flags only: no agent binary, even if the user's environment names one.
            flags_only = {"DEDUPX_AGENT": ""}
            res = run_cli("scan", "--pid", str(g.pid), "--qga", str(sock), env=flags_only)
            assert res.returncode == 0, res.stderr
            assert "guest says free" in res.stdout
            snap = dedupx.snapshot(tmp_path / "snap")
            res = run_cli(
                "analyze", str(snap), "--json", "--qga", f"{g.pid}={sock}", env=flags_only
            )
            assert res.returncode == 0, res.stderr
            (vm,) = [v for v in json.loads(res.stdout)["vms"] if v["pid"] == g.pid]
            assert set(vm["guest_classes"]) == set(classes)
            assert vm["bloat"]["bloat_pages"] is None  # no hashes come through the agent
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_qga_socket_missing(tmp_path: Path) -> None:
    with pytest.raises(QmpError, match="cannot connect"):
        dedupx.read_guest_qga(tmp_path / "nope.sock")


def class_counts(view: dedupx.GuestView) -> dict[str, int]:
    return dict(view.frames.group_by("class").len().iter_rows())


def test_agent_through_qga_matches_virtio_serial(agent_binary: Path, tmp_path: Path) -> None:
    """One command (scan --qga --agent-binary) gives the guest's classes and hashes
    through QGA alone, checked against the agent file the same guest wrote at boot over
    virtio-serial, and against the host's reading of the pages that did not change."""
    ensure_packages()
    sock_dir = Path(tempfile.mkdtemp(prefix="dqga-"))
    sock = sock_dir / "qga.sock"
    reference = tmp_path / "serial.agent"
    copy_pages = -(-agent_binary.stat().st_size // PAGE)
    try:
        with Guest(
            guest_assets(variant="qga-agent", agent=agent_binary),
            mem_mib=256,
            name="qgaagent",
            workdir=tmp_path,
            extra_args=(*qga_args(sock), *agent_port_args(reference)),
        ) as g:
            assert "DEDUPX-AGENT-DONE rc=0" in g.serial_text(), g.serial_text()[-2000:]
            ref = dedupx.read_guest_agent(reference)
            assert ref.meta["hash_source"] == "kcore", ref.meta.get("hash_error")
            before = guest_ram_hashes(g.pid)

            started = time.monotonic()
            view = dedupx.read_guest_qga(sock, agent=agent_binary)
            seconds = time.monotonic() - started
            assert view.path == sock and view.meta["hash_source"] == "kcore"
            assert view.frames.height == ref.frames.height
            frames = ref.frames.height

            # Classes: the copy of the agent dedupx put in the guest's /tmp (a tmpfs: anon
            # to the guest's flags) was free memory when the guest ran the one it booted
            # with; beyond that, each class agrees within 1% of the guest's page frames.
            ours, theirs = class_counts(view), class_counts(ref)
            expected = {"anon": copy_pages, "free": -copy_pages}
            for c in set(ours) | set(theirs):
                moved = ours.get(c, 0) - theirs.get(c, 0) - expected.get(c, 0)
                assert abs(moved) <= AGREE * frames, (c, ours, theirs, copy_pages)

            # Hashes: against the host's reading of each page before dedupx-agent ran
            # through QGA and after (the guest stopped: QGA is done), on the pages that
            # were the same both times: there, what the agent read in the guest must be
            # what the host read, and what the agent wrote to virtio-serial at boot.
            with Qga(sock) as q:
                listing = q.run("ls", ["-a", "/tmp", "/var/tmp", "/root"]).stdout.decode()
            g.stop()
            after = guest_ram_hashes(g.pid)
            g.cont()
            steady = before.join(after, on="gfn", suffix="_after").filter(
                pl.col("hash") == pl.col("hash_after")
            )
            both = (
                steady.select("gfn", pl.col("hash").alias("host"))
                .join(view.frames.select("gfn", pl.col("hash").alias("qga")), on="gfn")
                .join(ref.frames.select("gfn", pl.col("hash").alias("serial")), on="gfn")
                .filter(pl.col("qga").is_not_null() & pl.col("serial").is_not_null())
            )
            off = both.filter(pl.col("qga") != pl.col("host"))
            vs_host = off.height
            off_by = off.join(view.frames.select("gfn", "class", "mapcount"), on="gfn")
            off_by = off_by.with_columns(pl.col("host") == ZERO_HASH, pl.col("qga") == ZERO_HASH)
            off_by = off_by.group_by("class", "host", "qga").len().rows()
            vs_serial = both.filter(pl.col("qga") != pl.col("serial")).height
            all_hashed = view.frames.join(ref.frames, on="gfn", suffix="_ref").filter(
                pl.col("hash").is_not_null() & pl.col("hash_ref").is_not_null()
            )
            anywhere = all_hashed.filter(pl.col("hash") != pl.col("hash_ref")).height
            print(
                f"\nagent through QGA: {seconds:.1f} s; classes {ours} vs over "
                f"virtio-serial {theirs} (agent copy {copy_pages} pages); pages unchanged "
                f"on the host: {both.height} of {frames}, hash differs from the host's on "
                f"{vs_host} (class, host zero, qga zero, n: {off_by}), from "
                f"virtio-serial's on {vs_serial}; on all hashed pages "
                f"{anywhere} of {all_hashed.height} differ"
            )
            assert both.height > 0.9 * frames  # an idle guest: most of its RAM held still
            assert both["qga"].n_unique() > 1_000  # contents, not one repeated value
            # A page may change and change back while the agent runs: what the agent used
            # itself, zeroed again by the programs run after it (rm, ls). About 0.2%.
            assert vs_host <= 0.005 * both.height, vs_host
            assert vs_serial <= AGREE * both.height, vs_serial
            assert "dedupx-agent-" not in listing, listing  # nothing of dedupx's is left

            # The one command, as a user runs it.
            res = run_cli(
                "scan", "--pid", str(g.pid), "--json",
                "--qga", str(sock), "--agent-binary", str(agent_binary),
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
            guest = json.loads(res.stdout)["guest"]
            assert guest["guest_classes"].keys() == ours.keys()
            for c, n in guest["guest_classes"].items():
                assert abs(n - ours[c]) <= AGREE * frames, (c, guest["guest_classes"], ours)
            assert guest["bloat"]["bloat_pages"] is not None  # the hashes came through

            # analyze takes the same view per guest, and the Python API as guest=.
            snap = dedupx.open_snapshot(dedupx.snapshot(tmp_path / "snap"))
            cost = dedupx.incremental_cost(snap, g.pid, guest=view)
            by_class = cost["guest_ram_by_class"]
            assert sum(by_class.values()) == cost["guest_ram_pages"]
            told = dedupx.incremental_cost(snap, g.pid, guest_frames=view.guest_frames(g.pid))
            assert told == cost
            uss = dedupx.uss_breakdown(snap, g.pid, guest=view)
            assert sum(uss["guest_ram_by_class"].values()) == uss["guest_ram_pages"]
            res = run_cli(
                "analyze", str(tmp_path / "snap"), "--json",
                "--qga", f"{g.pid}={sock}", "--agent-binary", str(agent_binary),
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
            (vm,) = [v for v in json.loads(res.stdout)["vms"] if v["pid"] == g.pid]
            assert vm["bloat"]["bloat_pages"] is not None
            assert set(vm["incremental_cost"]["guest_ram_by_class"]) == set(by_class)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
