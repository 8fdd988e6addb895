"""A process that changes while dedupx reads it is flagged, with how much changed, and its
figures stay consistent (tests/churn_kit.py makes the churn)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dedupx
from churn_kit import Churn, Outcomes, api_scan_trial, check_report, run_trials
from helpers import LayoutProcess, run_cli, small_proc_root


def test_quiet_process_is_not_flagged(layout: LayoutProcess) -> None:
    s = dedupx.scan(layout.pid)
    assert s.changed_while_read == {
        "changed": False,
        "vanished_pfns": 0,
        "changed_pages": 0,
        "vmas_appeared": 0,
        "vmas_vanished": 0,
        "exited": False,
    }
    res = run_cli("scan", "--pid", str(layout.pid))
    assert res.returncode == 0, res.stderr
    assert "Changed while read" not in res.stdout


def test_churning_process_is_flagged_and_consistent() -> None:
    with Churn(workers=1, seed=7) as churn:
        time.sleep(0.5)  # let it map a few dozen regions first
        worker = churn.procs[0].pid
        out = Outcomes()
        for _ in range(5):
            api_scan_trial(worker, out)
        # It maps, moves and unmaps every millisecond or so: no scan catches it still.
        assert out.counts == {"flagged": 5}, (out.counts, out.failures)
        res = run_cli("scan", "--pid", str(worker), "--json", "--threads", "1")
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        changes = report["changed_while_read"]
        assert changes["changed"] and changes["changed_pages"] + changes["vmas_appeared"] > 0
        assert check_report(report) == []
        res = run_cli("scan", "--pid", str(worker), "--threads", "1")
        assert res.returncode == 0, res.stderr
        assert "Changed while read:" in res.stdout


def test_churn_sample() -> None:
    """A small run of bench/churn.py (`make churn` runs 1,000 scans and 100 snapshots)."""
    # Snapshots of the churning processes alone: seconds each, whatever else the host runs.
    scans, snaps = run_trials(30, 3, seed=11, whole_host=False)
    print("scans", dict(scans.counts), "snapshots", dict(snaps.counts))
    assert scans.bad() == 0 and snaps.bad() == 0, scans.failures + snaps.failures
    assert sum(scans.counts.values()) == 30 and sum(snaps.counts.values()) == 3
    # The workers themselves never exit: a scan of one always gives figures.
    assert scans.by_target.keys() <= {
        "worker: ok",
        "worker: flagged",
        "child: ok",
        "child: flagged",
        "child: error 4",
        "child: error 5",
    }, scans.by_target


def test_snapshot_flags_the_churning_process(layout: LayoutProcess, tmp_path: Path) -> None:
    with Churn(workers=1, seed=5) as churn:
        time.sleep(0.5)
        worker = churn.procs[0].pid
        root = small_proc_root(tmp_path, [worker, layout.pid])
        res = run_cli("snapshot", "-o", str(tmp_path / "s"), "-q", "--proc-root", str(root))
        assert res.returncode == 0, res.stderr
    procs = dedupx.open_snapshot(tmp_path / "s").processes
    assert procs is not None
    rows = {r["pid"]: r for r in procs.collect().iter_rows(named=True)}
    assert rows[layout.pid]["changed_pages"] == rows[layout.pid]["vmas_appeared"] == 0
    w = rows[worker]
    assert w["changed_pages"] + w["vmas_appeared"] + w["vmas_vanished"] > 0
    res = run_cli("analyze", str(tmp_path / "s"), "--json")
    assert res.returncode == 0, res.stderr
    assert [c["pid"] for c in json.loads(res.stdout)["changed_while_read"]] == [worker]
