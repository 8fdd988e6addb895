"""Before and after in one run: a benchmark run against two git revisions of dedupx, turn
about, and the figures of each side by side.

Each revision is checked out into its own worktree, its binding built with cargo (release,
into a target directory of its own) and its Python package laid out beside the compiled
module; then the benchmark script (from the working tree, so both revisions run the same
script) runs `--rounds` times for each, alternating, so that both see the same host. The
last line a benchmark prints must be its JSON summary: numeric fields are shown as the best
value of each revision (lowest for seconds, milliseconds and bytes, highest for rates; the
median for a field named as a ratio) and their ratio.

usage: python bench/ab.py BEFORE AFTER [--rounds 3] -- SCRIPT [ARGS...]
   e.g. python bench/ab.py 9af3655 HEAD -- bench/scan_throughput.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = Path("/var/tmp/dedupx-ab")


def sh(*cmd: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def build(rev: str) -> Path:
    """A directory holding revision `rev`'s `dedupx` package with its compiled binding."""
    sha = sh("git", "rev-parse", "--verify", f"{rev}^{{commit}}", cwd=REPO)
    tree = WORK / f"tree-{sha[:12]}"
    pkg = WORK / f"pkg-{sha[:12]}"
    if (pkg / "dedupx" / "_dedupx.abi3.so").exists():
        return pkg
    if not tree.exists():
        sh("git", "worktree", "add", "--detach", str(tree), sha, cwd=REPO)
    print(f"building {rev} ({sha[:12]}) ...", file=sys.stderr, flush=True)
    # One target directory for all revisions: cargo rebuilds only what differs.
    env = {**os.environ, "CARGO_TARGET_DIR": str(WORK / "target")}
    sh("cargo", "build", "--release", "--quiet", "-p", "dedupx-py", cwd=tree, env=env)
    shutil.rmtree(pkg, ignore_errors=True)
    shutil.copytree(tree / "python" / "dedupx", pkg / "dedupx")
    shutil.copy(WORK / "target" / "release" / "lib_dedupx.so", pkg / "dedupx" / "_dedupx.abi3.so")
    return pkg


def run(pkg: Path, script: list[str]) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    out = subprocess.run(
        [sys.executable, *script], env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def lower_is_better(key: str) -> bool:
    return any(w in key for w in ("seconds", "_ms", "_s", "bytes", "peak", "mib"))


def pick(key: str, values: list[float]) -> float:
    """A side's figure over its rounds: the best value, but the median of a ratio. A ratio
    of two figures of one round is no figure's best: the round whose denominator ran slow
    gives the lowest (2.01 shown for a ratio of bests of 2.69)."""
    if "ratio" in key:
        return statistics.median(values)
    return (min if lower_is_better(key) else max)(values)


def numbers(d: dict[str, object], prefix: str = "") -> dict[str, float]:
    """The numeric fields of a summary, nested ones as `outer.inner`."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            out[prefix + k] = float(v)
        elif isinstance(v, dict):
            out.update(numbers(v, f"{prefix}{k}."))
    return out


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit(__doc__)
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv[:cut])
    script = argv[cut + 1 :]
    if not script:
        sys.exit("give the benchmark script after --")
    WORK.mkdir(parents=True, exist_ok=True)
    pkgs = {"before": build(args.before), "after": build(args.after)}
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for r in range(args.rounds):
        for side, pkg in pkgs.items():
            print(f"round {r + 1}/{args.rounds}: {side}", file=sys.stderr, flush=True)
            results[side].append(numbers(run(pkg, script)))
    keys = [k for k in results["before"][0] if all(k in x for x in results["after"])]
    best = {
        side: {k: pick(k, [x[k] for x in runs if k in x]) for k in keys}
        for side, runs in results.items()
    }
    print(f"{'':34} {args.before[:12]:>12} {args.after[:12]:>12} {'after/before':>12}")
    for k in keys:
        b, a = best["before"][k], best["after"][k]
        ratio = f"{a / b:12.3f}" if b else f"{'':>12}"
        print(f"{k[:34]:34} {b:12.4g} {a:12.4g} {ratio}")
    print(json.dumps({"before": args.before, "after": args.after, **best}))


if __name__ == "__main__":
    main()
