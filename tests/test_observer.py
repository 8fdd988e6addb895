"""dedupx maps the same libraries as its target while it scans, raising their map counts;
it counts them as if it were not running, so that its PSS is the one `smaps_rollup` gives
once dedupx has exited (docs/metrics.md, "The observer")."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import rollup, run_cli, stop

# A ~50 MB Python process: the interpreter and a few extension modules (file pages it
# shares with dedupx, itself a Python process) and 40 MiB of private anonymous memory.
TARGET = """
import decimal, hashlib, json, sqlite3, ssl, sys
x = bytearray(b"\\x01") * (40 << 20)
print("ready", flush=True)
sys.stdin.read()
"""


def test_pss_as_if_dedupx_were_not_running() -> None:
    target = subprocess.Popen(
        [sys.executable, "-c", TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert target.stdout is not None and target.stdout.readline() == "ready\n"
        # The scan runs in its own process, which has exited when smaps_rollup is read.
        res = run_cli("scan", "--pid", str(target.pid), "--json")
        assert res.returncode == 0, res.stderr
        kernel = rollup(target.pid)
    finally:
        stop(target)
        if target.stdin:
            target.stdin.close()
    r = json.loads(res.stdout)
    assert r["observer_corrected_pfns"] > 0, "dedupx maps libpython too"
    assert r["rss_bytes"] == kernel["Rss"]
    assert abs(r["pss_bytes"] - kernel["Pss"]) <= 0.005 * kernel["Pss"], (
        r["pss_bytes"],
        kernel["Pss"],
    )
