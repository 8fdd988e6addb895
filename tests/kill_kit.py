"""`dedupx snapshot` killed with SIGKILL at random moments (tests/test_snapshot_kill.py,
bench/kill9.py).

Every trial writes the same target and is killed at a random moment: half the time drawn
uniformly from zero to a little past how long an unkilled write takes, half the time
uniformly over how long the temporary directory lived in that write, counted from when
this trial's appears (where most can go wrong). After each
kill:

- the target either does not exist, or opens whole (the write had finished: ``completed``);
- each temporary directory left (``left partial``) refuses to open (``CorruptSnapshot``);
- every temporary directory that was there before the trial and is gone after it was
  named on the trial's stderr (a killed write may die before it gets to clean up).

A last, unkilled write must name and remove every partial still there. Failures:
``opened incomplete``, ``removed silently``, ``not removed``, ``wrong exit``.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dedupx
from churn_kit import Outcomes
from dedupx.exceptions import CorruptSnapshot

FAILURES = ("opened incomplete", "removed silently", "not removed", "wrong exit")


def snapshot_cmd(target: Path, proc_root: Path | None) -> list[str]:
    root = ["--proc-root", str(proc_root)] if proc_root else []
    return [sys.executable, "-m", "dedupx", "snapshot", "-o", str(target), "-q", *root]


def timed_write(cmd: list[str], target: Path) -> tuple[float, float]:
    """Writes once unkilled: seconds until its temporary directory appeared, and in all."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    appeared = None
    while proc.poll() is None:
        if appeared is None and partials(target):
            appeared = time.monotonic() - t0
        time.sleep(0.002)
    whole = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited {proc.returncode}")
    return (appeared if appeared is not None else 0.0), whole


def partials(target: Path) -> set[Path]:
    return set(target.parent.glob(f".{target.name}.*.partial"))


def opens(path: Path) -> bool:
    try:
        dedupx.open_snapshot(path)
    except CorruptSnapshot:
        return False
    return True


def wait_then_kill(proc: subprocess.Popen[str], seconds: float) -> None:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)


def kill_trials(n: int, workdir: Path, seed: int = 1, proc_root: Path | None = None) -> Outcomes:
    """``n`` snapshots to ``workdir/snap`` (of the host seen in ``proc_root``, default
    /proc), each killed at a random moment, then one whole."""
    rng = random.Random(seed)
    out = Outcomes(failure_kinds=FAILURES)
    target = workdir / "snap"
    cmd = snapshot_cmd(target, proc_root)
    writing, whole = timed_write(cmd, target)
    shutil.rmtree(target)
    for _ in range(n):
        before = partials(target)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if rng.random() < 0.5:
            wait_then_kill(proc, rng.uniform(0, whole * 1.1))
        else:
            # Once this write's temporary directory exists, however long that took here.
            while proc.poll() is None and not partials(target) - before:
                time.sleep(0.002)
            wait_then_kill(proc, rng.uniform(0, whole - writing))
        _, err = proc.communicate()
        if proc.returncode not in (0, -signal.SIGKILL):
            out.add("wrong exit", f"exit {proc.returncode}: {err}")
        after = partials(target)
        for p in before - after:
            if f"removed {p}" not in err:
                out.add("removed silently", str(p))
        if any(opens(p) for p in after):
            out.add("opened incomplete", str(sorted(after)))
        if target.exists():
            if opens(target):
                out.add("completed")
                shutil.rmtree(target)
            else:
                out.add("opened incomplete", f"{target} exists but does not open")
        elif after - before:
            out.add("left partial")
        else:
            out.add("killed before writing")
    left = partials(target)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not opens(target):
        out.add("wrong exit", f"last write: exit {res.returncode}: {res.stderr}")
    for p in left:
        if p.exists() or f"removed {p}" not in res.stderr:
            out.add("not removed", str(p))
    out.counts["removed by the last write"] = len(left)
    return out
