"""The `dedupx scan` command: JSON for scripts, Parquet frames, a readable report."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import polars as pl

import dedupx
from helpers import LayoutProcess, rollup, run_cli


def test_json_report_matches_api(layout: LayoutProcess) -> None:
    res = run_cli("scan", "--pid", str(layout.pid), "--json")
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", "no progress output when stderr is not a terminal"
    report = json.loads(res.stdout)
    kernel = rollup(layout.pid)
    assert abs(report["rss_bytes"] - kernel["Rss"]) <= 0.005 * kernel["Rss"]
    # File PSS moves while the CLI itself maps the same libraries; anon PSS does not.
    anon_pss = report["footprint"]["anon_pss_bytes"]
    assert abs(anon_pss - kernel["Pss_Anon"]) <= 0.005 * kernel["Pss_Anon"]
    assert report["pss_bytes"] <= report["rss_bytes"]
    assert report["uss_bytes"] > 0
    api = dedupx.duplicates(dedupx.scan(layout.pid)).row(0, named=True)
    assert report["duplicates"] == api
    assert set(report["duplicates"]) >= {"anon_anon", "file_file", "anon_file", "total"}
    cov = report["coverage"]
    assert cov["pages_hashed"] == cov["pages_in_scope"] > 0
    assert cov["scope"] == "distinct present frames and swap slots" and cov["not_covered"] == {
        "unreadable": 0,
        "vanished": 0,
        "swapped": 0,
    }
    assert report["page_classes"]["zero_page"] == 3


def test_parquet_frames_written_whole(layout: LayoutProcess, tmp_path: Path) -> None:
    out = tmp_path / "scan-out"
    res = run_cli("scan", "--pid", str(layout.pid), "--parquet", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "frames.parquet",
        "manifest.json",
        "pages.parquet",
        "processes.parquet",
        "vmas.parquet",
    ]
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    pages = pl.read_parquet(out / "pages.parquet")
    assert pages["pid"].unique().to_list() == [layout.pid]
    assert {"vaddr", "pfn", "hash", "kpageflags", "mapcount"} <= set(pages.columns)
    # The saved scan opens as a snapshot and gives the same answer as a live scan.
    live = dedupx.duplicates(dedupx.scan(layout.pid)).row(0, named=True)
    saved = dedupx.open_snapshot(out)
    assert saved.provenance.kind == "process-scan"
    assert dedupx.duplicates(saved).row(0, named=True) == live
    assert not list(tmp_path.glob(".scan-out.*")), "no temporary directory left behind"
    # A second run refuses to write over it.
    res = run_cli("scan", "--pid", str(layout.pid), "--parquet", str(out), "--quiet")
    assert res.returncode == 7 and "exists" in res.stderr


def test_human_report(layout: LayoutProcess) -> None:
    res = run_cli("scan", "--pid", str(layout.pid))
    assert res.returncode == 0, res.stderr
    for heading in ("Footprint", "Duplicate contents", "KSM", "Top duplicated", "Coverage"):
        assert heading in res.stdout


def test_help_explains() -> None:
    res = run_cli("scan", "--help")
    assert res.returncode == 0
    for word in ("--pid", "--json", "--parquet", "--quiet", "anon/anon"):
        assert word in res.stdout


def test_scan_without_pid_takes_the_largest_readable_process() -> None:
    res = run_cli("scan", "--json", "--top", "1")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert f"scanning PID {report['pid']}" in res.stderr
    assert report["rss_bytes"] > 0
