"""dedupx-agent inside a real guest: its page classes against the guest's own meminfo, its
kcore hashes against the host's view of the same guest-physical pages."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import dedupx
from dedupx.analysis.guest_memory import inactive_bloat
from dedupx.exceptions import CorruptAgentFile
from guest_kit import Guest, agent_port_args, ensure_packages, guest_assets
from helpers import assert_lru_within_meminfo, guest_ram_hashes, run_cli


def test_agent_in_guest(agent_binary: Path, tmp_path: Path) -> None:
    ensure_packages()
    assets = guest_assets(variant="agent", agent=agent_binary)
    out = tmp_path / "guest.agent"
    port = agent_port_args(out)
    with Guest(assets, mem_mib=256, name="agent", workdir=tmp_path, extra_args=port) as g:
        assert "DEDUPX-AGENT-DONE rc=0" in g.serial_text(), g.serial_text()[-2000:]
        g.stop()
        view = dedupx.read_guest_agent(out)
        assert view.meta["hash_source"] == "kcore", view.meta.get("hash_error")
        assert view.meta["kernel"].endswith("cloud-amd64")
        assert not view.mglru

        assert_lru_within_meminfo(view)

        # The guest's view of each guest-physical page against the host's.
        host = guest_ram_hashes(g.pid)
        both = host.join(
            view.frames.filter(pl.col("hash").is_not_null()).select("gfn", "hash"),
            on="gfn",
            suffix="_guest",
        )
        assert both.height > 60_000
        differ = both.filter(pl.col("hash") != pl.col("hash_guest")).join(
            view.frames.select("gfn", "class"), on="gfn"
        )
        print(
            "pages that changed after the agent read them:",
            dict(differ.group_by("class").len().iter_rows()),
        )
        # Pages the guest changed after the agent hashed them (the agent's own buffers, the
        # kernel's as it wrote the file out, freed pages reused) differ: about 4 MiB of a
        # 256 MiB guest. Every other page agrees.
        assert differ.height <= 2048, differ.height

        bloat = inactive_bloat(view)
        assert 0 <= bloat["bloat_pages"] <= bloat["cold_pages"]
        # The guest's classes join the host's view of its RAM.
        snap_dir = dedupx.snapshot(tmp_path / "snap")
        cost = dedupx.incremental_cost(
            dedupx.open_snapshot(snap_dir), g.pid, guest_frames=view.guest_frames(g.pid)
        )
        by_class = cost["guest_ram_by_class"]
        assert sum(by_class.values()) == cost["guest_ram_pages"]
        assert by_class.get("anon", 0) + by_class.get("file", 0) > 0

        # The same through the CLI, for scripts.
        res = run_cli("analyze", str(snap_dir), "--json", "--guest", f"{g.pid}={out}")
        assert res.returncode == 0, res.stderr
        (vm,) = [v for v in json.loads(res.stdout)["vms"] if v["pid"] == g.pid]
        assert vm["incremental_cost"]["guest_ram_by_class"] == by_class
        assert vm["bloat"] == {**bloat, "bloat_mib": vm["bloat"]["bloat_mib"]}
        assert [r["row"] for r in vm["dedup_matrix"]] == ["within", "host", "vm", "total"]
        res = run_cli("scan", "--pid", str(g.pid), "--guest", str(out))
        assert res.returncode == 0 and "cold inactive-LRU pages" in res.stdout


def test_damaged_agent_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.agent"
    bad.write_bytes(b"DDXAGNT1" + bytes(100))
    with pytest.raises(CorruptAgentFile, match=r"version 0|truncated"):
        dedupx.read_guest_agent(bad)
    bad.write_bytes(b"not an agent file at all, really not" * 4)
    with pytest.raises(CorruptAgentFile, match="magic"):
        dedupx.read_guest_agent(bad)
